//! The hold expiry thread: sleeps until the next HELD hold's `expires_at` (read from the
//! database, so expiry survives restarts), expires every hold whose time has come through the
//! writer, and sleeps again. A new hold nudges it, since it may expire before the one it
//! waits for.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::clock::{SharedClock, Wakeup, Woken};
use crate::db::{Pool, Writer};
use crate::domain::Timestamp;
use crate::error::AppError;
use crate::ledger::holds;

/// How long to wait before trying again after an error (the database away, say).
const ERROR_BACKOFF_MS: u64 = 1_000;
/// The pause when a due hold is being decided by another process.
const BUSY_PAUSE_MS: u64 = 50;
/// The longest sleep when no hold is HELD; a nudge ends it sooner.
const IDLE_MS: i64 = 60_000;

pub struct HoldExpiry {
    pub writer: Writer,
    pub pool: Pool,
    pub clock: SharedClock,
    pub wakeup: Arc<Wakeup>,
}

impl HoldExpiry {
    pub fn spawn(self) -> JoinHandle<()> {
        std::thread::Builder::new()
            .name("holds".into())
            .spawn(move || self.run())
            .expect("spawn the hold expiry thread")
    }

    fn run(self) {
        while !self.wakeup.is_stopping() {
            match self.step() {
                Ok(n) if n == holds::EXPIRE_BATCH_HOLDS_MAX as usize => {}
                Ok(n) => {
                    // Nothing expired, yet a hold may be due: one another process has locked
                    // (capturing or expiring it). A short pause, not a spin.
                    if n == 0
                        && self.next_expiry() <= self.clock.now()
                        && !self.wakeup.sleep(Duration::from_millis(BUSY_PAUSE_MS))
                    {
                        return;
                    }
                    if !self.sleep_until_next() {
                        return;
                    }
                }
                Err(e) => {
                    crate::log::error(&format!("holds: cannot expire holds: {e:?}"));
                    if !self.wakeup.sleep(Duration::from_millis(ERROR_BACKOFF_MS)) {
                        return;
                    }
                }
            }
        }
    }

    /// Sleeps until the earliest HELD hold expires, or a nudge (a new hold), waking once a
    /// second to notice a moved clock. On PostgreSQL, other processes make holds this one is
    /// not told of: the earliest expiry is read again at each of those wake-ups (an indexed
    /// read, no write). False when stopping.
    fn sleep_until_next(&self) -> bool {
        let shared = matches!(self.pool, Pool::Postgres(_));
        let mut until = self.next_expiry();
        loop {
            let now = self.clock.now();
            if now >= until {
                return true;
            }
            let left_ms = u64::try_from((until.micros() - now.micros()) / 1000).unwrap_or(0);
            match self.wakeup.wait(Duration::from_millis(
                left_ms.clamp(1, super::SLEEP_SLICE_MS),
            )) {
                Woken::Stopping => return false,
                Woken::Nudged => return true,
                Woken::TimedOut if shared => until = self.next_expiry(),
                Woken::TimedOut => {}
            }
        }
    }

    /// When the earliest HELD hold expires (a minute from now when none is, or on an error).
    fn next_expiry(&self) -> Timestamp {
        let next = self
            .pool
            .get()
            .map_err(AppError::from)
            .and_then(|c| holds::next_expiry(&*c));
        match next {
            Ok(Some(t)) => t,
            _ => self.clock.now().plus_millis(IDLE_MS),
        }
    }

    /// Expires one batch of due holds; how many (a full batch: more may be due).
    fn step(&self) -> Result<usize, AppError> {
        self.writer.execute(holds::expire_due)
    }
}
