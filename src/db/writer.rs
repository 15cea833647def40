//! The single writer: one thread, one connection, group commit.
//!
//! Every write in the server is a closure sent here through a bounded queue. The writer takes
//! every job waiting (up to `write_batch_max`), runs them in one `BEGIN IMMEDIATE … COMMIT`,
//! each inside its own `SAVEPOINT` so a failing job (insufficient funds, a reference conflict)
//! rolls back alone, and answers every job only after `COMMIT` has returned. With one writer,
//! SQLite never spins in its busy handler, and one fsync covers a whole batch.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::store::Sql;

use crate::clock::SharedClock;
use crate::domain::Timestamp;
use crate::error::{AppError, StorageFault};

/// What a job gives back after running: whether to keep its savepoint, and how to answer its
/// caller once the batch's fate (commit or not) is known.
struct Ran {
    keep: bool,
    /// The job was refused because the storage would not take its writes.
    fault: Option<StorageFault>,
    answer: Answer,
}

/// Delivers a job's result once the batch's commit (or failure) is known.
type Answer = Box<dyn FnOnce(Result<(), AppError>) + Send>;

/// Runs a write on the connection at the batch's time, or, given `None` (the batch's
/// transaction could not start), only returns the answer, which then carries the batch's error.
type Job = Box<dyn FnOnce(Option<(&Connection, Timestamp)>) -> Ran + Send>;

/// Counters for `/metrics` and the benchmark.
#[derive(Default)]
pub struct WriterStats {
    pub batches: AtomicU64,
    pub jobs: AtomicU64,
    pub jobs_rolled_back: AtomicU64,
    pub commit_failures: AtomicU64,
    pub queue_full: AtomicU64,
    /// Write transactions that could not start because another process held the lock past
    /// the busy timeout (the server itself never waits on its own writes).
    pub busy: AtomicU64,
    /// Writes refused because the disk was full (503), and because the database was read-only.
    pub refused_full: AtomicU64,
    pub refused_read_only: AtomicU64,
    /// The storage fault standing since the last refused write (`NO_FAULT`, `FULL`,
    /// `READ_ONLY`): set when a write is refused for it, cleared when a write commits again,
    /// a client's or the writer's own probe (`probe`, once a second while the fault stands).
    storage_fault: AtomicU8,
    /// The newest time stamp the writer has given (or started after), in microseconds; 0 before.
    last_stamp_micros: AtomicI64,
}

const NO_FAULT: u8 = 0;
const FULL: u8 = 1;
const READ_ONLY: u8 = 2;

impl WriterStats {
    /// The newest time stamp given to a batch, or the newest stored entry's at start.
    pub fn last_stamp(&self) -> Option<Timestamp> {
        match self.last_stamp_micros.load(Ordering::Relaxed) {
            0 => None,
            micros => Timestamp::from_micros(micros),
        }
    }

    /// Why writes are being refused right now, if they are.
    pub fn storage_fault(&self) -> Option<StorageFault> {
        match self.storage_fault.load(Ordering::Relaxed) {
            FULL => Some(StorageFault::Full),
            READ_ONLY => Some(StorageFault::ReadOnly),
            _ => None,
        }
    }

    pub(crate) fn refused(&self, fault: StorageFault, jobs: u64) {
        let (counter, code) = match fault {
            StorageFault::Full => (&self.refused_full, FULL),
            StorageFault::ReadOnly => (&self.refused_read_only, READ_ONLY),
        };
        counter.fetch_add(jobs, Ordering::Relaxed);
        if self.storage_fault.swap(code, Ordering::Relaxed) != code {
            crate::log::error(&format!(
                "writer: the database's storage is {}: writes are refused with 503 until it takes them again (reads go on)",
                match fault {
                    StorageFault::Full => "full (free space on its disk)",
                    StorageFault::ReadOnly => "read-only",
                }
            ));
        }
    }

    /// Records the newest stamp given (PostgreSQL's writers, which keep no batch state).
    pub(crate) fn note_stamp(&self, stamp: Timestamp) {
        self.last_stamp_micros
            .fetch_max(stamp.micros(), Ordering::Relaxed);
    }

    pub(crate) fn wrote(&self) {
        if self.storage_fault.swap(NO_FAULT, Ordering::Relaxed) != NO_FAULT {
            crate::log::info("writer: the database takes writes again");
        }
    }
}

/// Where a `Writer` sends its jobs: SQLite's one writer thread, or PostgreSQL's writers.
#[derive(Clone)]
enum Engine {
    Sqlite(SyncSender<Job>),
    Postgres(super::pg_writer::PgWriter),
}

#[derive(Clone)]
pub struct Writer {
    engine: Engine,
    pub stats: Arc<WriterStats>,
    /// The time stamp of the batch being written (its entries are not yet committed), in
    /// microseconds; `IDLE` between batches.
    in_flight_micros: Arc<AtomicI64>,
}

const IDLE: i64 = i64::MAX;

impl Writer {
    /// Starts the writer thread on `conn`. The thread ends when every `Writer` clone is dropped.
    pub fn start(
        conn: Connection,
        clock: SharedClock,
        batch_max: usize,
        queue_max: usize,
    ) -> (Writer, JoinHandle<()>) {
        Writer::start_on(conn, clock, batch_max, queue_max, None)
    }

    /// `start`, with the writer thread confined to `cpu` when given (`sys::reserve_cpu_for_writer`).
    pub fn start_on(
        conn: Connection,
        clock: SharedClock,
        batch_max: usize,
        queue_max: usize,
        cpu: Option<usize>,
    ) -> (Writer, JoinHandle<()>) {
        assert!(batch_max >= 1 && queue_max >= 1);
        let (queue, rx) = sync_channel::<Job>(queue_max);
        let stats = Arc::new(WriterStats::default());
        let thread_stats = stats.clone();
        let in_flight_micros = Arc::new(AtomicI64::new(IDLE));
        let thread_in_flight = in_flight_micros.clone();
        let handle = std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || {
                run(
                    conn,
                    rx,
                    clock,
                    batch_max,
                    cpu,
                    &thread_stats,
                    &thread_in_flight,
                )
            })
            .expect("spawn the writer thread");
        (
            Writer {
                engine: Engine::Sqlite(queue),
                stats,
                in_flight_micros,
            },
            handle,
        )
    }

    /// A writer on PostgreSQL's writer connections (`pg_writer`), with their shared counters.
    pub fn postgres(pg: super::pg_writer::PgWriter, stats: Arc<WriterStats>) -> Writer {
        Writer {
            engine: Engine::Postgres(pg),
            stats,
            in_flight_micros: Arc::new(AtomicI64::new(IDLE)),
        }
    }

    /// Which engine the writes go to.
    pub fn engine(&self) -> crate::store::Engine {
        match self.engine {
            Engine::Sqlite(_) => crate::store::Engine::Sqlite,
            Engine::Postgres(_) => crate::store::Engine::Postgres,
        }
    }

    /// A moment up to which every entry is committed, when a batch is being written: entries
    /// stamped before that batch's time were committed by earlier batches. `None` between
    /// batches, when everything written is committed.
    pub fn settled_before(&self) -> Option<Timestamp> {
        match self.in_flight_micros.load(Ordering::SeqCst) {
            IDLE => None,
            micros => Timestamp::from_micros(micros - 1),
        }
    }

    /// Runs `f` inside the writer's transaction and returns its result once committed. An
    /// `Err` from `f` rolls back only what `f` wrote. A full queue is 503, not a longer wait.
    pub fn execute<T, F>(&self, f: F) -> Result<T, AppError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Sql, Timestamp) -> Result<T, AppError> + Send + 'static,
    {
        let queue = match &self.engine {
            Engine::Sqlite(queue) => queue,
            Engine::Postgres(pg) => return pg.execute(f),
        };
        let (tx, rx) = sync_channel::<Result<T, AppError>>(1);
        let job: Job = Box::new(move |run| {
            let Some((conn, now)) = run else {
                return Ran {
                    keep: false,
                    fault: None,
                    answer: Box::new(move |batch| {
                        let _ =
                            tx.send(batch.and(Err(AppError::Internal("a write not run".into()))));
                    }),
                };
            };
            let result = match f(conn, now) {
                // An I/O error's cause is known only to the connection: out of space is an
                // operator's problem, not a bug.
                Err(AppError::Internal(cause)) => match io_fault(conn) {
                    Some(fault) => Err(AppError::Storage(fault)),
                    None => Err(AppError::Internal(cause)),
                },
                result => result,
            };
            Ran {
                keep: result.is_ok(),
                fault: match &result {
                    Err(AppError::Storage(fault)) => Some(*fault),
                    _ => None,
                },
                answer: Box::new(move |batch| {
                    let _ = tx.send(batch.and(result));
                }),
            }
        });
        match queue.try_send(job) {
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
        // The sender is dropped without an answer only if the job panicked.
        rx.recv()
            .unwrap_or_else(|_| Err(AppError::Internal("a write job panicked".into())))
    }
}

/// Answers to deliver, and the fate of the batch they belong to.
type Replies = (Vec<Answer>, Result<(), AppError>);

fn run(
    conn: Connection,
    rx: Receiver<Job>,
    clock: SharedClock,
    batch_max: usize,
    cpu: Option<usize>,
    stats: &WriterStats,
    in_flight: &AtomicI64,
) {
    let mut last_now = first_stamp(&conn, &*clock, stats);
    let mut batch: Vec<Job> = Vec::with_capacity(batch_max);
    let (replies, replier) = start_replier();
    // Pinned only now, so that the reply thread (started above) stays on the other CPUs.
    if let Some(cpu) = cpu {
        if !crate::sys::pin_current_thread(&[cpu]) {
            crate::log::error(&format!("writer: could not keep CPU {cpu} to itself"));
        }
    }
    // While a storage fault stands: when the writer next probes the storage.
    let mut next_probe: Option<Instant> = None;
    // Blocks for the first job, then takes whatever else is already waiting: under light load
    // a job is committed at once, under heavy load many share one commit.
    loop {
        let first = match next_job(&conn, &rx, stats, &mut next_probe) {
            Next::Job(job) => job,
            Next::Again => continue,
            Next::Closed => break,
        };
        batch.push(first);
        take_waiting(&rx, &mut batch, batch_max);
        let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
        // Only while writes are being refused: whether this batch wrote anything.
        let faulted = stats.storage_fault.load(Ordering::Relaxed) != NO_FAULT;
        let changes_before = if faulted { conn.total_changes() } else { 0 };
        let mut refused = Refused::default();
        let outcome = run_batch(
            &conn,
            &*clock,
            &mut last_now,
            &mut batch,
            (&mut answers, &mut refused),
            stats,
            in_flight,
        );
        in_flight.store(IDLE, Ordering::SeqCst);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        let wrote = || faulted && conn.total_changes() > changes_before;
        record_outcome(stats, &outcome, &refused, answers.len(), wrote);
        if let Err(unsent) = replies.send((answers, outcome)) {
            // The reply thread is gone only if an answer panicked; answer here instead.
            answer_all(unsent.0);
        }
    }
    drop(replies);
    let _ = replier.join();
}

/// Waking each caller is a system call per job (8% of the writer's time in a profile), so a
/// second thread delivers the answers while the writer starts on the next batch.
fn start_replier() -> (std::sync::mpsc::Sender<Replies>, JoinHandle<()>) {
    let (replies, to_answer) = std::sync::mpsc::channel::<Replies>();
    let replier = std::thread::Builder::new()
        .name("writer-replies".into())
        .spawn(move || to_answer.into_iter().for_each(answer_all))
        .expect("spawn the writer's reply thread");
    (replies, replier)
}

fn answer_all((answers, outcome): Replies) {
    for answer in answers {
        answer(outcome.clone());
    }
}

/// The time stamp the writer starts after: the clock's, or the newest entry already stored
/// if that is later, in case the clock stepped back across a restart (start-up refuses one
/// far in the future unless told to accept it).
fn first_stamp(
    conn: &Connection,
    clock: &dyn crate::clock::Clock,
    stats: &WriterStats,
) -> Timestamp {
    let newest = super::newest_entry_stamp(conn).ok().flatten();
    let now = newest.map_or(clock.now(), |t| clock.now().max(t));
    stats
        .last_stamp_micros
        .store(now.micros(), Ordering::Relaxed);
    now
}

/// Adds the jobs already waiting to `batch`, up to `batch_max`, without waiting for more.
fn take_waiting(rx: &Receiver<Job>, batch: &mut Vec<Job>, batch_max: usize) {
    while batch.len() < batch_max {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// What the writer does next.
enum Next {
    /// Start a batch with this job.
    Job(Job),
    /// Nothing came (or the storage was probed): look again.
    Again,
    /// Every `Writer` is gone: stop.
    Closed,
}

/// Waits for the first job of the next batch. While a storage fault stands, no client write
/// may come (a load balancer stops sending to a node whose /health is 503), so the wait ends
/// once a second for the writer to probe the storage and find out by itself when it takes
/// writes again.
fn next_job(
    conn: &Connection,
    rx: &Receiver<Job>,
    stats: &WriterStats,
    next_probe: &mut Option<Instant>,
) -> Next {
    if stats.storage_fault.load(Ordering::Relaxed) == NO_FAULT {
        *next_probe = None;
        return match rx.recv() {
            Ok(job) => Next::Job(job),
            Err(_) => Next::Closed,
        };
    }
    let due = *next_probe.get_or_insert_with(|| Instant::now() + STORAGE_PROBE_INTERVAL);
    if Instant::now() >= due {
        *next_probe = Some(Instant::now() + STORAGE_PROBE_INTERVAL);
        if probe(conn).is_ok() {
            stats.wrote();
        }
        return Next::Again;
    }
    match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
        Ok(job) => Next::Job(job),
        Err(RecvTimeoutError::Timeout) => Next::Again,
        Err(RecvTimeoutError::Disconnected) => Next::Closed,
    }
}

/// Counts a batch's fate and keeps the standing storage fault up to date: set when a write is
/// refused for it, cleared when a batch wrote while it stood (`wrote`, asked only then).
fn record_outcome(
    stats: &WriterStats,
    outcome: &Result<(), AppError>,
    refused: &Refused,
    jobs: usize,
    wrote: impl FnOnce() -> bool,
) {
    match outcome {
        Ok(()) => {
            if let Some(fault) = refused.fault {
                stats.refused(fault, refused.jobs);
            } else if wrote() {
                stats.wrote();
            }
        }
        Err(AppError::Storage(fault)) => {
            // Logged once when it starts (`refused`), not once per batch.
            stats.commit_failures.fetch_add(1, Ordering::Relaxed);
            stats.refused(*fault, jobs as u64);
        }
        Err(e) => {
            stats.commit_failures.fetch_add(1, Ordering::Relaxed);
            crate::log::error(&format!("writer: batch of {jobs} not committed: {e:?}"));
        }
    }
}

/// How often the writer probes the storage while a fault stands.
pub const STORAGE_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Bytes the probe writes (more than a page), beyond what the file holds free.
pub const STORAGE_PROBE_BYTES: i64 = 4096;
/// Most free space in the file that the probe writes past: a file with more free than this
/// takes writes without growing for a good while.
const STORAGE_PROBE_FREE_BYTES_MAX: i64 = 1 << 20;

/// A write that needs space, made while writes are refused for a storage fault: a row of a few
/// KiB inserted into `storage_probe` and deleted again, in one transaction, so the table stays
/// empty and nothing else changes. It commits once the storage takes writes again (space was
/// freed, the file became writable), and the fault is then cleared without waiting for a
/// client's write. Free pages inside the file would take the row without the file growing,
/// so the row is larger than they are. The delete runs inside a savepoint, which makes SQLite
/// write the freed pages too instead of skipping them.
fn probe(conn: &Connection) -> rusqlite::Result<()> {
    let free_bytes: i64 = conn.query_row(
        "SELECT freelist_count * page_size FROM pragma_freelist_count, pragma_page_size",
        [],
        |r| r.get(0),
    )?;
    let bytes = STORAGE_PROBE_BYTES + free_bytes.min(STORAGE_PROBE_FREE_BYTES_MAX);
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let wrote = conn
        .execute_batch("SAVEPOINT probe")
        .and_then(|()| {
            conn.execute(
                "INSERT INTO storage_probe (filler) VALUES (randomblob(?1))",
                [bytes],
            )
        })
        .and_then(|_| conn.execute("DELETE FROM storage_probe", []))
        .and_then(|_| conn.execute_batch("RELEASE probe; COMMIT"));
    if wrote.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    wrote
}

/// Jobs of a batch refused for a storage fault, and the last such fault.
#[derive(Default)]
struct Refused {
    jobs: u64,
    fault: Option<StorageFault>,
}

fn run_batch(
    conn: &Connection,
    clock: &dyn crate::clock::Clock,
    last_now: &mut Timestamp,
    batch: &mut Vec<Job>,
    (answers, refused): (&mut Vec<Answer>, &mut Refused),
    stats: &WriterStats,
    in_flight: &AtomicI64,
) -> Result<(), AppError> {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) {
            stats.busy.fetch_add(1, Ordering::Relaxed);
        }
        // Every caller hears why (a busy database is 503), rather than a dropped job.
        let e = batch_error(conn, e, None);
        answers.extend(batch.drain(..).map(|job| job(None).answer));
        return Err(e);
    }
    // The batch's time is read once the write lock is held, and each batch's time is strictly
    // later than the one before, even if the wall clock stalls or steps back. So every entry
    // committed after a transaction that read the time `t` carries a time after `t`: a
    // snapshot with cut-off `t - 1µs` has seen every entry at or before its cut-off.
    *last_now = clock.now().max(last_now.plus_micros(1));
    let now = *last_now;
    in_flight.store(now.micros(), Ordering::SeqCst);
    stats
        .last_stamp_micros
        .store(now.micros(), Ordering::Relaxed);
    for job in batch.drain(..) {
        stats.jobs.fetch_add(1, Ordering::Relaxed);
        let step = exec_cached(conn, "SAVEPOINT job");
        let ran = step
            .is_ok()
            .then(|| catch_unwind(AssertUnwindSafe(|| job(Some((conn, now))))));
        let keep = matches!(&ran, Some(Ok(r)) if r.keep);
        let end = if keep {
            exec_cached(conn, "RELEASE job")
        } else {
            stats.jobs_rolled_back.fetch_add(1, Ordering::Relaxed);
            exec_cached(conn, "ROLLBACK TO job").and_then(|()| exec_cached(conn, "RELEASE job"))
        };
        if let Some(Ok(ran)) = ran {
            if ran.fault.is_some() {
                refused.jobs += 1;
                refused.fault = ran.fault;
            }
            answers.push(ran.answer);
        }
        if let Err(e) = step.and(end) {
            // Read before the rollback, which replaces the connection's last error.
            let e = batch_error(conn, e, refused.fault);
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    if let Err(e) = conn.execute_batch("COMMIT") {
        let e = batch_error(conn, e, refused.fault);
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e);
    }
    Ok(())
}

/// Why a batch failed. A full disk can end the whole transaction (SQLite then rolls it back
/// itself, and the next savepoint step fails for want of one): that is the storage's fault,
/// not a bug, whatever the failing step's own message.
fn batch_error(conn: &Connection, e: rusqlite::Error, job_fault: Option<StorageFault>) -> AppError {
    match AppError::from(e) {
        AppError::Internal(cause) => match io_fault(conn).or(job_fault) {
            Some(fault) => AppError::Storage(fault),
            None => AppError::Internal(cause),
        },
        other => other,
    }
}

/// A storage fault behind the writer connection's last error: SQLite reports a short write for
/// lack of space as `SQLITE_FULL`, but a failed `fsync`, truncate or shared-memory extension as
/// an I/O error whose cause only the operating system's error number tells. `SQLITE_READONLY`
/// here means the file became read-only: this connection was opened read-write.
fn io_fault(conn: &Connection) -> Option<StorageFault> {
    // SAFETY: the handle is valid while `conn` lives; both calls only read the connection's
    // last error.
    let (code, errno) = unsafe {
        let db = conn.handle();
        (
            rusqlite::ffi::sqlite3_errcode(db),
            rusqlite::ffi::sqlite3_system_errno(db),
        )
    };
    // Extended result codes are on: the primary code is the low byte.
    match code & 0xff {
        rusqlite::ffi::SQLITE_FULL => Some(StorageFault::Full),
        rusqlite::ffi::SQLITE_READONLY => Some(StorageFault::ReadOnly),
        rusqlite::ffi::SQLITE_IOERR if errno == libc::ENOSPC || errno == libc::EDQUOT => {
            Some(StorageFault::Full)
        }
        _ => None,
    }
}

/// Runs a statement from the connection's statement cache: savepoints run once per job, and
/// parsing them each time showed up in profiles.
fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use std::time::Duration;

    fn writer() -> (Writer, JoinHandle<()>) {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER NOT NULL)")
            .unwrap();
        Writer::start(conn, Arc::new(SystemClock), 64, 64)
    }

    fn count(w: &Writer) -> i64 {
        w.execute(|c, _| c.query_one("SELECT count(*) FROM t", &[])?.get::<i64>(0))
            .unwrap()
    }

    #[test]
    fn a_failing_job_rolls_back_alone() {
        // Three jobs share one batch (one COMMIT); the middle one writes and then fails. Its
        // write is rolled back to its savepoint; the other two are committed.
        let (w, _h) = writer();
        // Hold the writer busy so the next three jobs queue up and form one batch.
        let blocker = {
            let w = w.clone();
            std::thread::spawn(move || {
                w.execute(|_, _| {
                    std::thread::sleep(Duration::from_millis(300));
                    Ok(())
                })
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        let batches_before = w.stats.batches.load(Ordering::SeqCst);
        let jobs: Vec<_> = [1, 2, 3]
            .into_iter()
            .map(|v| {
                let w = w.clone();
                std::thread::spawn(move || {
                    w.execute(move |c, _| {
                        c.execute("INSERT INTO t (v) VALUES (?1)", &[&v])?;
                        if v == 2 {
                            return Err(AppError::Conflict("job 2 fails after writing".into()));
                        }
                        Ok(v)
                    })
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        blocker.join().unwrap().unwrap();
        let results: Vec<_> = jobs.into_iter().map(|j| j.join().unwrap()).collect();
        assert_eq!(results[0], Ok(1));
        assert!(matches!(results[1], Err(AppError::Conflict(_))));
        assert_eq!(results[2], Ok(3));
        // Counted after `batches_before` was read: the blocker's batch (still running then),
        // plus exactly one batch for the three jobs.
        assert_eq!(w.stats.batches.load(Ordering::SeqCst) - batches_before, 2);
        assert_eq!(w.stats.jobs_rolled_back.load(Ordering::SeqCst), 1);
        let values: Vec<i64> = w
            .execute(|c, _| {
                c.query("SELECT v FROM t ORDER BY v", &[])?
                    .iter()
                    .map(|r| r.get(0))
                    .collect::<Result<Vec<i64>, _>>()
            })
            .unwrap();
        assert_eq!(values, vec![1, 3]);
        assert_eq!(count(&w), 2);
    }

    #[test]
    fn settled_before_is_earlier_than_a_batch_in_flight() {
        // While a batch is being written, readers are told a moment before its time stamp;
        // between batches, everything is settled.
        let (w, _h) = writer();
        assert_eq!(w.settled_before(), None);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let busy = {
            let w = w.clone();
            std::thread::spawn(move || {
                w.execute(move |_, now| {
                    started_tx.send(now).unwrap();
                    release_rx.recv().unwrap();
                    Ok(())
                })
            })
        };
        let stamp = started_rx.recv().unwrap();
        assert_eq!(w.settled_before(), Some(stamp.plus_micros(-1)));
        release_tx.send(()).unwrap();
        busy.join().unwrap().unwrap();
        assert_eq!(w.settled_before(), None);
    }

    #[test]
    fn a_panicking_job_is_an_internal_error_and_the_writer_lives_on() {
        // A bug in one job costs that job only.
        let (w, _h) = writer();
        let r: Result<(), AppError> = w.execute(|_, _| panic!("boom"));
        assert!(matches!(r, Err(AppError::Internal(_))));
        w.execute(|c, _| c.execute("INSERT INTO t (v) VALUES (1)", &[]).map(drop))
            .unwrap();
        assert_eq!(count(&w), 1);
    }

    #[test]
    fn a_batch_that_cannot_begin_is_unavailable_not_a_bug() {
        // Another process holds the write lock past the busy timeout: the writer's caller gets
        // 503 `unavailable` (an operator's matter), not a 500, and the next write succeeds.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (v INTEGER NOT NULL)")
            .unwrap();
        conn.busy_timeout(Duration::from_millis(50)).unwrap();
        let (w, _h) = Writer::start(conn, Arc::new(SystemClock), 8, 8);
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let refused = w.execute(|c, _| c.execute("INSERT INTO t (v) VALUES (1)", &[]));
        assert!(
            matches!(refused, Err(AppError::Unavailable(_))),
            "{refused:?}"
        );
        assert_eq!(w.stats.busy.load(Ordering::SeqCst), 1);
        other.execute_batch("ROLLBACK").unwrap();
        assert_eq!(
            w.execute(|c, _| c.execute("INSERT INTO t (v) VALUES (2)", &[])),
            Ok(1)
        );
    }

    #[test]
    fn a_database_that_turned_read_only_is_a_storage_fault_not_a_bug() {
        // The writer's connection can't write (here: opened read-only, as SQLite does when the
        // file's permissions or mount changed): a write is refused as a storage fault, which
        // /health and /metrics then report, not as an internal error.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (v INTEGER NOT NULL)")
            .unwrap();
        let conn =
            Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let (w, _h) = Writer::start(conn, Arc::new(SystemClock), 8, 8);
        let refused = w.execute(|c, _| c.execute("INSERT INTO t (v) VALUES (1)", &[]));
        assert_eq!(refused, Err(AppError::Storage(StorageFault::ReadOnly)));
        assert_eq!(w.stats.storage_fault(), Some(StorageFault::ReadOnly));
        assert_eq!(w.stats.refused_read_only.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_full_queue_is_unavailable_not_a_longer_wait() {
        // With a queue of one and the writer busy, the third caller is refused at once.
        let conn = Connection::open_in_memory().unwrap();
        let (w, _h) = Writer::start(conn, Arc::new(SystemClock), 1, 1);
        let busy = {
            let w = w.clone();
            std::thread::spawn(move || {
                w.execute(|_, _| {
                    std::thread::sleep(Duration::from_millis(300));
                    Ok(())
                })
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        let queued = {
            let w = w.clone();
            std::thread::spawn(move || w.execute(|_, _| Ok(())))
        };
        std::thread::sleep(Duration::from_millis(50));
        let refused = w.execute(|_, _| Ok(()));
        assert!(
            matches!(refused, Err(AppError::Unavailable(_))),
            "{refused:?}"
        );
        assert!(busy.join().unwrap().is_ok() && queued.join().unwrap().is_ok());
    }
}
