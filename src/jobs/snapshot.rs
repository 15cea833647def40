//! The snapshot thread: sleeps until the cron schedule's next fire time (UTC), runs
//! `ledger::snapshot::run` through the writer, and catches up once at start-up when a run
//! was due while the server was down.

use std::sync::Arc;
use std::thread::JoinHandle;

use crate::clock::{SharedClock, Wakeup};
use crate::db::{Pool, Writer};
use crate::domain::Timestamp;
use crate::error::AppError;
use crate::ledger::snapshot;
use crate::metrics::Metrics;

pub struct SnapshotJob {
    pub schedule: cron::Schedule,
    pub writer: Writer,
    pub pool: Pool,
    pub clock: SharedClock,
    pub wakeup: Arc<Wakeup>,
    pub metrics: Arc<Metrics>,
}

impl SnapshotJob {
    pub fn spawn(self) -> JoinHandle<()> {
        std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || self.run())
            .expect("spawn the snapshot thread")
    }

    fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        self.schedule
            .after(&t.datetime())
            .next()
            .map(Timestamp::from_datetime)
    }

    fn run(self) {
        match self.missed_run() {
            Ok(Some(due)) => self.take(due),
            Ok(None) => {}
            Err(e) => crate::log::error(&format!(
                "snapshot: cannot tell whether a run was missed: {e:?}"
            )),
        }
        while !self.wakeup.is_stopping() {
            let Some(next) = self.next_after(self.clock.now()) else {
                crate::log::info("snapshot: the schedule has no further fire times");
                return;
            };
            while self.clock.now() < next {
                if !super::sleep_until(self.clock.as_ref(), &self.wakeup, next) {
                    return;
                }
            }
            self.take(next);
        }
    }

    /// The first fire time that passed since the last run (or since the first wallet existed).
    fn missed_run(&self) -> Result<Option<Timestamp>, AppError> {
        let conn = self.pool.get()?;
        let since = match snapshot::last_cutoff(&*conn)? {
            Some(t) => Some(t),
            None => snapshot::first_wallet_at(&*conn)?,
        };
        Ok(since
            .and_then(|t| self.next_after(t))
            .filter(|due| *due <= self.clock.now()))
    }

    /// Runs the snapshot for the fire time `due`, unless another process serving the same
    /// database has run it or is running it.
    fn take(&self, due: Timestamp) {
        let cutoff = self.clock.now();
        match snapshot::run_once(&self.writer, cutoff, Some(due)) {
            Ok(None) => crate::log::info(&format!(
                "snapshot: the run for {} was taken by another process",
                due.to_text()
            )),
            Ok(Some(report)) => {
                self.metrics.snapshot_runs.inc();
                self.metrics
                    .snapshot_mismatches
                    .add(report.mismatches.len() as u64);
                crate::log::info(&format!(
                    "snapshot: run {} at {} covered {} wallets, {} mismatches",
                    report.run_id,
                    report.cutoff.to_text(),
                    report.wallets,
                    report.mismatches.len()
                ));
            }
            Err(e) => crate::log::error(&format!("snapshot: run failed: {e:?}")),
        }
    }
}
