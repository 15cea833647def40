//! Time is an input: use cases and background threads take `now` from a `Clock`, so tests can
//! move time instead of sleeping until a wall-clock moment.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use chrono::Utc;

use crate::domain::Timestamp;

pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

pub type SharedClock = Arc<dyn Clock>;

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_datetime(Utc::now())
    }
}

/// A clock that only moves when told to. For tests.
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock(Mutex::new(start))
    }

    pub fn set(&self, t: Timestamp) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    pub fn advance_ms(&self, ms: i64) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t = t.plus_millis(ms);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Wakes a sleeping background thread early: on shutdown, or when new work is due sooner.
#[derive(Default)]
pub struct Wakeup {
    state: Mutex<WakeState>,
    cond: Condvar,
}

#[derive(Default)]
struct WakeState {
    nudged: bool,
    stopping: bool,
}

impl Wakeup {
    pub fn nudge(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).nudged = true;
        self.cond.notify_all();
    }

    pub fn stop(&self) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stopping = true;
        self.cond.notify_all();
    }

    pub fn is_stopping(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stopping
    }

    /// Sleeps up to `timeout`, returning early on a nudge or stop. Returns false when stopping.
    pub fn sleep(&self, timeout: Duration) -> bool {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (mut guard, _) = self
            .cond
            .wait_timeout_while(guard, timeout, |s| !s.nudged && !s.stopping)
            .unwrap_or_else(|p| p.into_inner());
        guard.nudged = false;
        !guard.stopping
    }
}
