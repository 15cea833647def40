//! The request gate: bounded places for handling requests (`Gate`, a `Permit` per request
//! handled), and the budget of body bytes being read and handled at once (`BodyBudget`, a
//! `Reserved` per request).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// Bounds the requests handled at once: `--threads` places for most routes, and a gate of its
/// own for logins and registrations. Each request runs on the thread that read it from its
/// connection (a tiny_http patch), so the gates are the bound on concurrent handlers, under
/// `--connections-max`.
pub(super) struct Gate {
    state: Mutex<GateState>,
    /// Signalled when the last place is given back, for `drain`.
    idle: Condvar,
    max: usize,
}

#[derive(Default)]
struct GateState {
    busy: usize,
    /// Requests waiting for a place, oldest first. A place given back goes straight to the
    /// oldest: first come, first served, and one thread woken per place (waking every waiter
    /// for each place made 256 clients slower than 64).
    waiting: std::collections::VecDeque<Arc<Waiter>>,
    /// Whether `drain` is waiting (only then is the last place's return signalled).
    draining: bool,
}

struct Waiter {
    thread: std::thread::Thread,
    granted: AtomicBool,
}

impl Gate {
    pub(super) fn new(max: usize) -> Gate {
        Gate {
            state: Mutex::new(GateState::default()),
            idle: Condvar::new(),
            max: max.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn enter(&self) -> Permit<'_> {
        let waiter = {
            let mut state = self.lock();
            if state.busy < self.max && state.waiting.is_empty() {
                state.busy += 1;
                return Permit(self);
            }
            let waiter = Arc::new(Waiter {
                thread: std::thread::current(),
                granted: AtomicBool::new(false),
            });
            state.waiting.push_back(waiter.clone());
            waiter
        };
        // `park` may return spuriously; the place is ours once `granted` is set.
        while !waiter.granted.load(Ordering::Acquire) {
            std::thread::park();
        }
        Permit(self)
    }

    /// A place if one is free now.
    pub(super) fn try_enter(&self) -> Option<Permit<'_>> {
        let mut state = self.lock();
        if state.busy >= self.max || !state.waiting.is_empty() {
            return None;
        }
        state.busy += 1;
        Some(Permit(self))
    }

    /// Gives a place back: to the oldest waiter if there is one, else to the pool.
    fn release(&self) {
        let mut state = self.lock();
        match state.waiting.pop_front() {
            Some(next) => {
                next.granted.store(true, Ordering::Release);
                next.thread.unpark();
            }
            None => {
                state.busy -= 1;
                if state.busy == 0 && state.draining {
                    self.idle.notify_all();
                }
            }
        }
    }

    /// Waits until no request is being handled, or `deadline`; says whether none is.
    pub(super) fn drain(&self, deadline: Instant) -> bool {
        let mut state = self.lock();
        state.draining = true;
        while state.busy > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .idle
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// A place in a `Gate`, given back when dropped.
pub(super) struct Permit<'a>(&'a Gate);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Bytes of bodies being read or handled, against `REQUEST_BODIES_BYTES_MAX`.
pub(super) struct BodyBudget {
    reserved_bytes: Mutex<usize>,
    bytes_max: usize,
}

/// A reservation in the `BodyBudget`, given back when the request is done.
pub(super) struct Reserved<'a>(&'a BodyBudget, usize);

impl Reserved<'_> {
    /// Reserves `bytes` more for this request; false when the budget has no room for them.
    pub(super) fn grow(&mut self, bytes: usize) -> bool {
        let mut reserved = self
            .0
            .reserved_bytes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match reserved.checked_add(bytes) {
            Some(after) if after <= self.0.bytes_max => {
                *reserved = after;
                self.1 += bytes;
                true
            }
            _ => false,
        }
    }
}

impl BodyBudget {
    pub(super) fn new(bytes_max: usize) -> BodyBudget {
        BodyBudget {
            reserved_bytes: Mutex::new(0),
            bytes_max,
        }
    }

    /// A reservation of nothing yet, grown as the body arrives (`Reserved::grow`).
    pub(super) fn nothing_reserved(&self) -> Reserved<'_> {
        Reserved(self, 0)
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        let mut reserved = self
            .0
            .reserved_bytes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *reserved -= self.1;
    }
}

#[cfg(test)]
mod tests {
    use super::BodyBudget;

    #[test]
    fn the_body_budget_bounds_what_is_reserved_at_once() {
        let budget = BodyBudget::new(100);
        let mut a = budget.nothing_reserved();
        let mut b = budget.nothing_reserved();
        assert!(a.grow(60));
        assert!(!b.grow(41), "past the budget");
        assert!(b.grow(40));
        assert!(!a.grow(1));
        drop(a);
        assert!(b.grow(60), "a reservation is given back when dropped");
        drop(b);
        assert_eq!(*budget.reserved_bytes.lock().unwrap(), 0);
    }
}
