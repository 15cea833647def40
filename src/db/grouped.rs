//! Requests of one kind gathered into one write: a set-based function writes a group of them
//! in one transaction (`ledger::batch::writes` on PostgreSQL), and each one it does not
//! write goes back to its caller to be written alone.
//!
//! A lane thread takes whatever requests are waiting (up to `group_max`) and runs them as one
//! job on the writer, so a group forms by itself under load and is a single request when
//! idle: no request waits for others to arrive. A request the group could not take up now (a
//! row it needs is busy in another transaction) goes first into the next group, a few times
//! at most, and then is written alone.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use super::Writer;
use crate::domain::Timestamp;
use crate::error::AppError;
use crate::store::Sql;

/// Writes a group in the writer's transaction: per item, in order, what the group did with it.
/// An `Err` rolls the whole group back.
pub type Many<I, O> = fn(&dyn Sql, Timestamp, &[I]) -> Result<Vec<Fate<O>>, AppError>;

/// What a group did with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate<O> {
    /// Written, with this result (once the group commits).
    Written(O),
    /// Not the group's to write: the caller writes it alone.
    Alone,
    /// Not written now (a row it needs was busy): the next group tries it again.
    Again,
}

/// How many groups in a row may try a request: after this many tries, each ending in
/// `Fate::Again` (so `GROUP_TRIES_MAX - 1` put-offs), it is written alone, where it waits for
/// its rows like any single write. With two processes on one database, 3 tries left some
/// 430 requests a run to be written alone and 6 left about 8, for 0.4% to 5.7% more
/// transfers/s (README, "On PostgreSQL"); a put-off costs its request one group's time, a
/// few ms.
pub const GROUP_TRIES_MAX: u8 = 6;

/// What became of a request sent to a group.
pub enum Grouping<I, O> {
    /// Written with its group (committed), or the group's commit failed with this error.
    Done(Result<O, AppError>),
    /// Not written: the caller writes it alone.
    Alone(I),
    /// Not written because a row it needs stayed busy through `GROUP_TRIES_MAX` groups: the
    /// caller writes it alone, waiting for that row only so long (`batch::write_one_busy`),
    /// so that requests for a row a stuck transaction holds cannot take every writer.
    Busy(I),
}

struct Pending<I, O> {
    item: I,
    answer: SyncSender<Grouping<I, O>>,
    /// Groups that put it off so far.
    tries: u8,
}

#[derive(Clone)]
pub struct Grouped<I, O> {
    queue: SyncSender<Pending<I, O>>,
    stats: Arc<GroupStats>,
}

/// What the lanes did, for `/metrics`.
#[derive(Default)]
pub struct GroupStats {
    /// Groups committed.
    pub groups: AtomicU64,
    /// Requests written by a committed group.
    pub written: AtomicU64,
    /// Requests handed back to be written alone.
    pub handed_back: AtomicU64,
    /// Times a group put a request off to the next one (a row it needs was busy).
    pub put_off: AtomicU64,
}

/// Lane threads per group kind. One: while its group commits, the next one gathers in the
/// queue. Two lanes (a group gathered while the one before commits) measured 10% fewer
/// transfers/s in one series and the same within noise in another (their groups lock many of
/// the same wallets and wait on each other), so the simpler one stays.
pub const GROUP_LANES: usize = 1;

impl<I, O> Grouped<I, O>
where
    I: Clone + Send + Sync + 'static,
    O: Send + 'static,
{
    /// Starts the lanes. They end when every `Grouped` clone is dropped.
    pub fn start(
        name: &str,
        writer: Writer,
        (group_max, queue_max): (usize, usize),
        many: Many<I, O>,
    ) -> Grouped<I, O> {
        assert!(group_max >= 1 && queue_max >= 1);
        let (queue, rx) = sync_channel::<Pending<I, O>>(queue_max);
        let rx = Arc::new(Mutex::new(rx));
        let stats = Arc::new(GroupStats::default());
        for i in 0..GROUP_LANES {
            let (rx, writer, stats) = (rx.clone(), writer.clone(), stats.clone());
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || run(&writer, &rx, (group_max, &stats), many))
                .expect("spawn a group lane");
        }
        Grouped { queue, stats }
    }

    pub fn stats(&self) -> &GroupStats {
        &self.stats
    }

    /// Sends `item` to be written with a group, and waits for what became of it. When the
    /// lanes are busy beyond their queue, it is handed back at once to be written alone (the
    /// writer's own queue then decides whether there is room).
    pub fn submit(&self, item: I) -> Grouping<I, O> {
        let (answer, rx) = sync_channel(1);
        match self.queue.try_send(Pending {
            item,
            answer,
            tries: 0,
        }) {
            Ok(()) => rx.recv().unwrap_or_else(|_| {
                Grouping::Done(Err(AppError::Internal("a group of writes panicked".into())))
            }),
            Err(TrySendError::Full(p) | TrySendError::Disconnected(p)) => Grouping::Alone(p.item),
        }
    }
}

fn run<I, O>(
    writer: &Writer,
    rx: &Mutex<Receiver<Pending<I, O>>>,
    (group_max, stats): (usize, &GroupStats),
    many: Many<I, O>,
) where
    I: Clone + Send + Sync + 'static,
    O: Send + 'static,
{
    // Requests the last group put off: they go first into the next one.
    let mut put_off: Vec<Pending<I, O>> = Vec::new();
    loop {
        let mut group = std::mem::take(&mut put_off);
        {
            let Ok(queue) = rx.lock() else { return };
            if group.is_empty() {
                match queue.recv() {
                    Ok(p) => group.push(p),
                    Err(_) => return,
                }
            }
            while group.len() < group_max {
                match queue.try_recv() {
                    Ok(p) => group.push(p),
                    Err(_) => break,
                }
            }
        }
        let tries: Vec<u8> = group.iter().map(|p| p.tries).collect();
        let (items, answers): (Vec<I>, Vec<_>) =
            group.into_iter().map(|p| (p.item, p.answer)).unzip();
        let items = Arc::new(items);
        let failed_inside = Arc::new(AtomicBool::new(false));
        let written = {
            let (items, failed_inside) = (items.clone(), failed_inside.clone());
            writer.execute(move |conn, now| {
                // A panic or a result per request missing fails the group inside its own
                // transaction, which rolls back: every request is then written alone.
                let written = catch_unwind(AssertUnwindSafe(|| many(conn, now, &items)))
                    .unwrap_or_else(|_| Err(AppError::internal("a group of writes", "panicked")))
                    .and_then(|results| match results.len() == items.len() {
                        true => Ok(results),
                        false => Err(AppError::internal(
                            "a group of writes",
                            "a result per request",
                        )),
                    });
                written.inspect_err(|_| failed_inside.store(true, Ordering::SeqCst))
            })
        };
        let items = Arc::try_unwrap(items).unwrap_or_else(|shared| (*shared).clone());
        match written {
            Ok(results) => {
                stats.groups.fetch_add(1, Ordering::Relaxed);
                let each = items.into_iter().zip(answers).zip(tries).zip(results);
                for (((item, answer), tries), result) in each {
                    let _ = answer.send(match result {
                        Fate::Written(done) => {
                            stats.written.fetch_add(1, Ordering::Relaxed);
                            Grouping::Done(Ok(done))
                        }
                        Fate::Again if tries + 1 < GROUP_TRIES_MAX => {
                            stats.put_off.fetch_add(1, Ordering::Relaxed);
                            put_off.push(Pending {
                                item,
                                answer,
                                tries: tries + 1,
                            });
                            continue;
                        }
                        Fate::Alone => {
                            stats.handed_back.fetch_add(1, Ordering::Relaxed);
                            Grouping::Alone(item)
                        }
                        Fate::Again => {
                            stats.handed_back.fetch_add(1, Ordering::Relaxed);
                            Grouping::Busy(item)
                        }
                    });
                }
            }
            // Rolled back by the group itself: each is written alone and gets the answer it
            // would have had without the group.
            Err(_) if failed_inside.load(Ordering::SeqCst) => {
                for (item, answer) in items.into_iter().zip(answers) {
                    stats.handed_back.fetch_add(1, Ordering::Relaxed);
                    let _ = answer.send(Grouping::Alone(item));
                }
            }
            // Not run (no room, no database), or the commit failed: that is every one's answer.
            Err(e) => {
                for answer in answers {
                    let _ = answer.send(Grouping::Done(Err(e.clone())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    /// A group writer over a table `t`: it writes the even numbers, leaves the odd ones alone,
    /// puts off multiples of 1000 (every time), and fails the whole group (after writing)
    /// when one is negative.
    fn evens(conn: &dyn Sql, _: Timestamp, items: &[i64]) -> Result<Vec<Fate<i64>>, AppError> {
        let mut out = Vec::new();
        for &v in items {
            if v != 0 && v % 1000 == 0 {
                conn.execute("INSERT INTO tries (v) VALUES (?1)", &[&v])?;
                out.push(Fate::Again);
            } else if v % 2 == 0 {
                conn.execute("INSERT INTO t (v) VALUES (?1)", &[&v])?;
                out.push(Fate::Written(v * 10));
            } else {
                out.push(Fate::Alone);
            }
        }
        if items.iter().any(|v| *v < 0) {
            return Err(AppError::internal("test", "a negative number"));
        }
        Ok(out)
    }

    fn writer() -> Writer {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (v INTEGER NOT NULL); CREATE TABLE tries (v INTEGER NOT NULL)",
        )
        .unwrap();
        Writer::start(conn, Arc::new(SystemClock), 64, 64).0
    }

    fn stored(w: &Writer) -> Vec<i64> {
        w.execute(|c, _| {
            c.query("SELECT v FROM t ORDER BY v", &[])?
                .into_iter()
                .map(|r| r.get(0))
                .collect()
        })
        .unwrap()
    }

    /// Sends `items` at once from threads of their own, and returns what became of each: its
    /// result, or how it was handed back.
    fn send_together(
        g: &Grouped<i64, i64>,
        items: &[i64],
    ) -> Vec<Result<i64, (i64, &'static str)>> {
        let barrier = Arc::new(std::sync::Barrier::new(items.len()));
        let handles: Vec<_> = items
            .iter()
            .map(|&v| {
                let (g, barrier) = (g.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    match g.submit(v) {
                        Grouping::Done(r) => Ok(r.unwrap()),
                        Grouping::Alone(v) => Err((v, "alone")),
                        Grouping::Busy(v) => Err((v, "busy")),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn each_request_is_written_by_the_group_or_handed_back_whole() {
        let w = writer();
        let g = Grouped::start("test-group", w.clone(), (4, 64), evens);
        let items: Vec<i64> = (1..=20).collect();
        let got = send_together(&g, &items);
        for (v, r) in items.iter().zip(&got) {
            match r {
                Ok(done) => assert!(v % 2 == 0 && *done == v * 10, "{v}: {r:?}"),
                Err(back) => assert!(v % 2 == 1 && *back == (*v, "alone"), "{v}: {r:?}"),
            }
        }
        assert_eq!(stored(&w), (1..=10).map(|v| v * 2).collect::<Vec<_>>());
    }

    #[test]
    fn a_group_that_fails_keeps_nothing_and_hands_every_request_back() {
        let w = writer();
        let g = Grouped::start("test-group", w.clone(), (64, 64), evens);
        // A group of one negative number fails after writing it: rolled back, handed back.
        assert!(matches!(g.submit(-2), Grouping::Alone(-2)));
        assert!(stored(&w).is_empty());
        // An even number alone is written by its group of one.
        assert!(matches!(g.submit(4), Grouping::Done(Ok(40))));
        assert_eq!(stored(&w), [4]);
    }

    #[test]
    fn a_request_put_off_goes_into_the_next_groups_then_is_written_alone() {
        let w = writer();
        let g = Grouped::start("test-group", w.clone(), (64, 64), evens);
        // 2000 is put off by every group: tried by `GROUP_TRIES_MAX` groups in a row (each
        // commits the try it records), then handed back as busy. The others sent with it are
        // written as usual.
        let got = send_together(&g, &[2000, 4, 6]);
        assert_eq!(got, [Err((2000, "busy")), Ok(40), Ok(60)]);
        let tried = w
            .execute(|c, _| {
                c.query_one("SELECT count(*) FROM tries", &[])?
                    .get::<i64>(0)
            })
            .unwrap();
        assert_eq!(tried, i64::from(GROUP_TRIES_MAX));
        assert_eq!(
            g.stats().put_off.load(Ordering::Relaxed),
            u64::from(GROUP_TRIES_MAX - 1)
        );
        assert_eq!(stored(&w), [4, 6]);
    }
}
