//! Writes on PostgreSQL: several writer connections, each running one job per transaction
//! (or, with `--db-batch-max`, several jobs per transaction, each in a savepoint).
//!
//! SQLite has one writer thread and group commit (`db::writer`). PostgreSQL takes row locks
//! and commits many transactions at once itself (its WAL flush covers every transaction
//! waiting for it), so here several connections write side by side and the database decides
//! between them: the balance's row lock serialises two debits of one wallet, a unique index
//! two uses of one reference. A job moves the wallets it touches in key order
//! (`ledger::transfer`), so two jobs never wait on each other in a cycle; jobs batched in one
//! transaction can (each holds its wallets until the batch commits), which is why batches
//! are off by default.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::WriterStats;
use crate::clock::SharedClock;
use crate::domain::Timestamp;
use crate::error::{AppError, StorageFault};
use crate::store::postgres::PgConn;
use crate::store::Sql;

/// A write: runs on a connection inside a transaction at the given time, and says whether
/// the transaction should commit. Given `None` (no connection could run it), it only answers.
type Job = Box<dyn FnOnce(Option<(&dyn Sql, Timestamp)>) -> Ran + Send>;

/// What a job did: whether to commit, and how to answer once the commit's fate is known.
pub struct Ran {
    pub keep: bool,
    /// The job was refused because the database would not take its writes (a full disk, a
    /// read-only standby): `/health` says so until a write commits again.
    pub fault: Option<StorageFault>,
    pub answer: Answer,
}

/// Delivers a job's result once its transaction's fate (commit or not) is known.
type Answer = Box<dyn FnOnce(Result<(), AppError>) + Send>;

#[derive(Clone)]
pub struct PgWriter {
    queue: SyncSender<Job>,
    stats: Arc<WriterStats>,
    /// The newest stamp this process gave a write, in microseconds (stamps never go back
    /// within one process; across processes, `wallets.stamp_floor` orders a wallet's entries).
    last_stamp_micros: Arc<AtomicI64>,
}

impl PgWriter {
    /// Starts `connections.len()` writer threads, one per connection. They end when every
    /// `PgWriter` clone is dropped.
    pub fn start(
        url: &str,
        connections: Vec<PgConn>,
        clock: SharedClock,
        (queue_max, batch_max): (usize, usize),
        (stats, newest): (Arc<WriterStats>, Option<Timestamp>),
    ) -> (PgWriter, Vec<JoinHandle<()>>) {
        assert!(!connections.is_empty() && queue_max >= 1 && batch_max >= 1);
        let (queue, rx) = sync_channel::<Job>(queue_max);
        let rx = Arc::new(Mutex::new(rx));
        // Stamps start after the newest entry stored (`--accept-future-stamps` starts on a
        // ledger stamped ahead of the clock), as SQLite's writer does.
        if let Some(newest) = newest {
            stats.note_stamp(newest);
        }
        let last_stamp_micros = Arc::new(AtomicI64::new(newest.map_or(0, Timestamp::micros)));
        let connected = Arc::new(AtomicUsize::new(connections.len()));
        let handles = connections
            .into_iter()
            .enumerate()
            .map(|(i, conn)| {
                let rx = rx.clone();
                let clock = clock.clone();
                let last = last_stamp_micros.clone();
                let stats = stats.clone();
                let url = Link {
                    url: url.to_string(),
                    connected: connected.clone(),
                };
                std::thread::Builder::new()
                    .name(format!("pg-writer-{i}"))
                    .spawn(move || run(&url, conn, &rx, (&clock, &last), (&stats, batch_max)))
                    .expect("spawn a writer thread")
            })
            .collect();
        (
            PgWriter {
                queue,
                stats,
                last_stamp_micros,
            },
            handles,
        )
    }

    pub fn last_stamp(&self) -> Option<Timestamp> {
        match self.last_stamp_micros.load(Ordering::Relaxed) {
            0 => None,
            micros => Timestamp::from_micros(micros),
        }
    }

    /// Runs `f` in a transaction of its own and returns its result once committed. An `Err`
    /// from `f` rolls the transaction back. A full queue is 503, not a longer wait.
    pub fn execute<T, F>(&self, f: F) -> Result<T, AppError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Sql, Timestamp) -> Result<T, AppError> + Send + 'static,
    {
        let (tx, rx) = sync_channel::<Result<T, AppError>>(1);
        let job: Job = Box::new(move |run| {
            let Some((conn, now)) = run else {
                return Ran {
                    keep: false,
                    fault: None,
                    answer: Box::new(move |outcome| {
                        let _ = tx.send(outcome.and(Err(AppError::Unavailable(
                            "the database is not available; try again",
                        ))));
                    }),
                };
            };
            let result = f(conn, now);
            Ran {
                keep: result.is_ok(),
                fault: match &result {
                    Err(AppError::Storage(fault)) => Some(*fault),
                    _ => None,
                },
                answer: Box::new(move |outcome| {
                    let _ = tx.send(outcome.and(result));
                }),
            }
        });
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                return Err(AppError::Unavailable(
                    "the server is at capacity; try again",
                ));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(AppError::Unavailable("the server is shutting down"))
            }
        }
        rx.recv()
            .unwrap_or_else(|_| Err(AppError::Internal("a write job panicked".into())))
    }
}

/// Where a writer connects, and how many writers of this process are connected now.
struct Link {
    url: String,
    connected: Arc<AtomicUsize>,
}

fn run(
    url: &Link,
    mut conn: PgConn,
    rx: &Mutex<Receiver<Job>>,
    (clock, last): (&SharedClock, &AtomicI64),
    (stats, batch_max): (&WriterStats, usize),
) {
    let mut batch: Vec<Job> = Vec::with_capacity(batch_max);
    loop {
        {
            let Ok(queue) = rx.lock() else { return };
            // While writes are refused for a storage fault, no client write may come (a load
            // balancer sends none to a node whose /health is 503): the writer waiting for
            // the next job probes the database once a second to learn by itself when it
            // takes writes again. (It looks at the fault each time its wait ends: the fault
            // may have been recorded by another writer while it waited.)
            match queue.recv_timeout(super::writer::STORAGE_PROBE_INTERVAL) {
                Ok(job) => batch.push(job),
                Err(RecvTimeoutError::Timeout) => {
                    drop(queue);
                    if stats.storage_fault().is_some() {
                        if probe(&conn).is_ok() {
                            stats.wrote();
                        }
                        if conn.is_closed() {
                            match reconnect(url, rx) {
                                Some(c) => conn = c,
                                None => return,
                            }
                        }
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while batch.len() < batch_max {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        // Each write's time is later than every earlier write's of this process, even when
        // the wall clock stalls or steps back (and than the newest entry stored at start).
        let now = clock.now();
        let next = |last: i64| now.micros().max(last + 1);
        let micros = match last.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| Some(next(l)))
        {
            Ok(prev) | Err(prev) => next(prev),
        };
        let now = Timestamp::from_micros(micros).unwrap_or(now);
        stats.note_stamp(now);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.jobs.fetch_add(batch.len() as u64, Ordering::Relaxed);
        run_batch(&conn, now, &mut batch, stats);
        if conn.is_closed() {
            match reconnect(url, rx) {
                Some(c) => conn = c,
                None => return,
            }
        }
    }
}

/// One transaction for the batch; with more than one job, each in its own savepoint, so a
/// job that fails rolls back alone. Every job is answered once the commit's fate is known.
fn run_batch(conn: &PgConn, now: Timestamp, batch: &mut Vec<Job>, stats: &WriterStats) {
    let jobs = batch.len();
    let savepoints = jobs > 1;
    // Statements without results travel together: ending one job's savepoint and opening
    // the next one's is one round trip, not two.
    let begin = if savepoints {
        "BEGIN; SAVEPOINT job"
    } else {
        "BEGIN"
    };
    if let Err(e) = conn.batch(begin) {
        stats.commit_failures.fetch_add(1, Ordering::Relaxed);
        let _ = conn.batch("ROLLBACK");
        for job in batch.drain(..) {
            (job(None).answer)(Err(e.clone()));
        }
        return;
    }
    let mut answers = Vec::with_capacity(jobs);
    let mut broken: Option<AppError> = None;
    let mut fault: Option<StorageFault> = None;
    for (i, job) in batch.drain(..).enumerate() {
        if broken.is_some() {
            answers.push(job(None).answer);
            continue;
        }
        let ran = catch_unwind(AssertUnwindSafe(|| job(Some((conn as &dyn Sql, now)))));
        let keep = matches!(&ran, Ok(r) if r.keep);
        if !keep {
            stats.jobs_rolled_back.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(ran) = ran {
            fault = ran.fault.or(fault);
            answers.push(ran.answer);
        }
        if !savepoints {
            if !keep {
                // A lone job that failed: rolled back, and answered with its own error.
                if let Some(fault) = fault {
                    stats.refused(fault, 1);
                }
                let _ = conn.batch("ROLLBACK");
                for answer in answers {
                    answer(Ok(()));
                }
                return;
            }
            break;
        }
        let next = i + 1 < jobs;
        let end = match (keep, next) {
            (true, true) => "RELEASE job; SAVEPOINT job",
            (true, false) => "RELEASE job",
            (false, true) => "ROLLBACK TO job; RELEASE job; SAVEPOINT job",
            (false, false) => "ROLLBACK TO job; RELEASE job",
        };
        if let Err(e) = conn.batch(end) {
            broken = Some(e);
        }
    }
    let outcome = match broken {
        Some(e) => {
            let _ = conn.batch("ROLLBACK");
            Err(e)
        }
        None => conn.batch("COMMIT").inspect_err(|_| {
            let _ = conn.batch("ROLLBACK");
        }),
    };
    match &outcome {
        Err(e) => {
            stats.commit_failures.fetch_add(1, Ordering::Relaxed);
            if let AppError::Storage(f) = e {
                stats.refused(*f, jobs as u64);
            }
        }
        Ok(()) => match fault {
            Some(f) => stats.refused(f, 1),
            None => stats.wrote(),
        },
    }
    for answer in answers {
        answer(outcome.clone());
    }
}

/// A write that needs the database to take writes: a row inserted into `storage_probe` and
/// deleted again in one transaction, so the table stays empty.
fn probe(conn: &PgConn) -> Result<(), AppError> {
    let wrote = conn.batch(
        "BEGIN; INSERT INTO storage_probe (filler) VALUES ('\\x00'); DELETE FROM storage_probe; COMMIT",
    );
    if wrote.is_err() {
        let _ = conn.batch("ROLLBACK");
    }
    wrote
}

/// A new connection for a writer whose connection broke (the server restarted, a failover),
/// tried once a second until it succeeds; `None` when the writer is stopping meanwhile. While
/// other writers are connected they take the jobs. While none is, jobs would wait in the
/// queue for as long as the database is away and then run long after their clients gave up:
/// they are answered 503 at once instead, without running.
fn reconnect(link: &Link, rx: &Mutex<Receiver<Job>>) -> Option<PgConn> {
    link.connected.fetch_sub(1, Ordering::SeqCst);
    crate::log::error("pg writer: the connection to PostgreSQL broke; reconnecting");
    loop {
        let retry_at = std::time::Instant::now() + RECONNECT_INTERVAL;
        while std::time::Instant::now() < retry_at {
            if link.connected.load(Ordering::SeqCst) > 0 {
                std::thread::sleep(RECONNECT_POLL);
                continue;
            }
            let Ok(rx) = rx.lock() else { return None };
            match rx.recv_timeout(RECONNECT_POLL) {
                Ok(job) => (job(None).answer)(Err(AppError::Unavailable(
                    "the database is not available; try again",
                ))),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
        if let Ok(conn) = PgConn::connect(&link.url) {
            link.connected.fetch_add(1, Ordering::SeqCst);
            crate::log::info("pg writer: reconnected to PostgreSQL");
            return Some(conn);
        }
    }
}

/// How often a writer whose connection broke tries to connect again.
const RECONNECT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// How often, meanwhile, it looks whether another writer is connected or a job waits.
const RECONNECT_POLL: std::time::Duration = std::time::Duration::from_millis(100);
