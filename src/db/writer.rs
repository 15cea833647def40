//! The single writer: one thread, one connection, group commit.
//!
//! Every write in the server is a closure sent here through a bounded queue. The writer takes
//! every job waiting (up to `write_batch_max`), runs them in one `BEGIN IMMEDIATE … COMMIT`,
//! each inside its own `SAVEPOINT` so a failing job (insufficient funds, a reference conflict)
//! rolls back alone, and answers every job only after `COMMIT` has returned. With one writer,
//! SQLite never spins in its busy handler, and one fsync covers a whole batch.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use rusqlite::Connection;

use crate::clock::SharedClock;
use crate::domain::Timestamp;
use crate::error::AppError;

/// What a job gives back after running: whether to keep its savepoint, and how to answer its
/// caller once the batch's fate (commit or not) is known.
struct Ran {
    keep: bool,
    answer: Box<dyn FnOnce(Result<(), AppError>) + Send>,
}

type Job = Box<dyn FnOnce(&Connection, Timestamp) -> Ran + Send>;

/// Counters for `/metrics` and the benchmark.
#[derive(Default)]
pub struct WriterStats {
    pub batches: AtomicU64,
    pub jobs: AtomicU64,
    pub jobs_rolled_back: AtomicU64,
    pub commit_failures: AtomicU64,
    pub queue_full: AtomicU64,
}

#[derive(Clone)]
pub struct Writer {
    queue: SyncSender<Job>,
    pub stats: Arc<WriterStats>,
}

impl Writer {
    /// Starts the writer thread on `conn`. The thread ends when every `Writer` clone is dropped.
    pub fn start(
        conn: Connection,
        clock: SharedClock,
        batch_max: usize,
        queue_max: usize,
    ) -> (Writer, JoinHandle<()>) {
        assert!(batch_max >= 1 && queue_max >= 1);
        let (queue, rx) = sync_channel::<Job>(queue_max);
        let stats = Arc::new(WriterStats::default());
        let thread_stats = stats.clone();
        let handle = std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || run(conn, rx, clock, batch_max, &thread_stats))
            .expect("spawn the writer thread");
        (Writer { queue, stats }, handle)
    }

    /// Runs `f` inside the writer's transaction and returns its result once committed. An
    /// `Err` from `f` rolls back only what `f` wrote. A full queue is 503, not a longer wait.
    pub fn execute<T, F>(&self, f: F) -> Result<T, AppError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, Timestamp) -> Result<T, AppError> + Send + 'static,
    {
        let (tx, rx) = sync_channel::<Result<T, AppError>>(1);
        let job: Job = Box::new(move |conn, now| {
            let result = f(conn, now);
            Ran {
                keep: result.is_ok(),
                answer: Box::new(move |batch| {
                    let _ = tx.send(batch.and(result));
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
        // The sender is dropped without an answer only if the job panicked.
        rx.recv()
            .unwrap_or_else(|_| Err(AppError::Internal("a write job panicked".into())))
    }
}

fn run(
    conn: Connection,
    rx: Receiver<Job>,
    clock: SharedClock,
    batch_max: usize,
    stats: &WriterStats,
) {
    let mut last_now = clock.now();
    let mut batch: Vec<Job> = Vec::with_capacity(batch_max);
    let mut answers: Vec<Box<dyn FnOnce(Result<(), AppError>) + Send>> =
        Vec::with_capacity(batch_max);
    // Blocks for the first job, then takes whatever else is already waiting: under light load
    // a job is committed at once, under heavy load many share one commit.
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Entry times never go backwards, even if the wall clock does.
        last_now = last_now.max(clock.now());
        let now = last_now;

        let outcome = run_batch(&conn, now, &mut batch, &mut answers, stats);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &outcome {
            stats.commit_failures.fetch_add(1, Ordering::Relaxed);
            crate::log::error(&format!(
                "writer: batch of {} not committed: {e:?}",
                answers.len()
            ));
        }
        for answer in answers.drain(..) {
            answer(outcome.clone());
        }
    }
}

fn run_batch(
    conn: &Connection,
    now: Timestamp,
    batch: &mut Vec<Job>,
    answers: &mut Vec<Box<dyn FnOnce(Result<(), AppError>) + Send>>,
    stats: &WriterStats,
) -> Result<(), AppError> {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        batch.clear();
        return Err(e.into());
    }
    for job in batch.drain(..) {
        stats.jobs.fetch_add(1, Ordering::Relaxed);
        let step = conn.execute_batch("SAVEPOINT job");
        let ran = step
            .is_ok()
            .then(|| catch_unwind(AssertUnwindSafe(|| job(conn, now))));
        let keep = matches!(&ran, Some(Ok(r)) if r.keep);
        let end = if keep {
            conn.execute_batch("RELEASE job")
        } else {
            stats.jobs_rolled_back.fetch_add(1, Ordering::Relaxed);
            conn.execute_batch("ROLLBACK TO job; RELEASE job")
        };
        if let Some(Ok(ran)) = ran {
            answers.push(ran.answer);
        }
        if let Err(e) = step.and(end) {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
    }
    if let Err(e) = conn.execute_batch("COMMIT") {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e.into());
    }
    Ok(())
}
