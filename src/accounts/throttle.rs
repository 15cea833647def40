//! Failed-login throttling per username and per client address.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::domain::username_key;
use crate::error::AppError;

/// Distinct throttling keys counted one by one; attempts under keys beyond it share one count.
pub const THROTTLE_KEYS_MAX: usize = 100_000;

/// The login throttle's key for a username as typed: its `username_key`, so every spelling of
/// one name shares one count, hashed, so a 64 KiB "username" costs the table 64 bytes.
pub fn throttle_key_for_username(username: &str) -> String {
    let digest = Sha256::digest(username_key(username).as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("u:{hex}")
}

/// Failed logins per key (a username's key or a client address) within a window.
///
/// An attempt is reserved against every one of its keys' limits, under one lock, before its
/// password is hashed (`begin`), so concurrent guesses can't overtake the count: at most
/// `failures_max` passwords are checked per key and window, however many arrive at once
/// (attempts beyond what the limit leaves wait for those in flight to settle). A
/// key's count is dropped only when its window has ended (or, for a username, when its owner
/// logs in), never to make room. When the table holds `keys_max` keys and none has expired,
/// attempts under keys it can't hold share one global count with the same limit, so a flood
/// of new addresses can't switch the throttle off; it makes new clients wait instead.
pub struct LoginThrottle {
    failures_max: u32,
    window: Duration,
    keys_max: usize,
    reserve_wait: Duration,
    state: Mutex<ThrottleState>,
    /// Signalled whenever attempts settle, for those waiting in `begin`.
    settled: std::sync::Condvar,
}

struct ThrottleState {
    keys: HashMap<String, ThrottleSlot>,
    /// The shared count of attempts whose key the full table could not hold.
    overflow: ThrottleSlot,
    /// When a full table was last searched for expired keys: at most once a second, so a
    /// flood of new keys does not cost a pass over the whole table per attempt.
    swept_at: Option<Instant>,
}

#[derive(Clone, Copy)]
struct ThrottleSlot {
    /// Failed attempts in the window that began at `start`.
    failures: u32,
    /// Attempts reserved and not yet settled (their passwords are being checked).
    pending: u32,
    start: Instant,
}

impl ThrottleSlot {
    fn new(now: Instant) -> ThrottleSlot {
        ThrottleSlot {
            failures: 0,
            pending: 0,
            start: now,
        }
    }

    fn expired(&self, now: Instant, window: Duration) -> bool {
        now.saturating_duration_since(self.start) >= window
    }

    fn idle(&self, now: Instant, window: Duration) -> bool {
        self.pending == 0 && (self.failures == 0 || self.expired(now, window))
    }
}

/// How often at most a full throttle table is searched for expired keys.
pub const THROTTLE_SWEEP_INTERVAL_MS: u64 = 1_000;

enum Verdict {
    Room,
    Busy,
    Limited { retry_after_s: u64 },
}

/// How long an attempt waits for the attempts in flight under its keys to settle, when they
/// alone could use up the limit, before it is refused with 503 (try again): longer than a
/// full hashing queue takes to drain.
pub const LOGIN_RESERVE_WAIT_MS: u64 = 2_000;

/// Which count an attempt was reserved against.
#[derive(Clone, PartialEq, Eq)]
enum Counted {
    Key(String),
    Overflow,
}

impl LoginThrottle {
    /// `keys_max` is the size of the table of per-key counts (`THROTTLE_KEYS_MAX` in the
    /// server; tests use a small one).
    pub fn new(failures_max: u32, window: Duration, keys_max: usize) -> LoginThrottle {
        LoginThrottle {
            failures_max,
            window,
            keys_max,
            reserve_wait: Duration::from_millis(LOGIN_RESERVE_WAIT_MS),
            state: Mutex::new(ThrottleState {
                keys: HashMap::new(),
                overflow: ThrottleSlot::new(Instant::now()),
                swept_at: None,
            }),
            settled: std::sync::Condvar::new(),
        }
    }

    /// Sets how long `begin` waits for attempts in flight (`LOGIN_RESERVE_WAIT_MS`).
    pub fn with_reserve_wait(mut self, wait: Duration) -> LoginThrottle {
        self.reserve_wait = wait;
        self
    }

    /// Reserves one attempt under every key, or `RateLimited` (reserving nothing) when any of
    /// them has used up its failures in the current window. While the attempts already in
    /// flight under a key could use up its limit by failing, it waits for them to settle (so a
    /// burst of correct logins is slowed, not refused), up to `reserve_wait`, then gives 503.
    pub fn begin(&self, keys: &[String], now: Instant) -> Result<LoginAttempt<'_>, AppError> {
        if self.failures_max == 0 {
            return Ok(LoginAttempt {
                throttle: self,
                counted: Vec::new(),
            });
        }
        let deadline = Instant::now() + self.reserve_wait;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let counted = self.place(&mut state, keys, now);
            match self.verdict(&state, &counted, now) {
                Verdict::Limited { retry_after_s } => {
                    return Err(AppError::RateLimited { retry_after_s })
                }
                Verdict::Room => {
                    self.reserve(&mut state, &counted, now);
                    return Ok(LoginAttempt {
                        throttle: self,
                        counted,
                    });
                }
                Verdict::Busy => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(AppError::Unavailable("too many logins at once; try again"));
                    }
                    state = self
                        .settled
                        .wait_timeout(state, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }

    /// Where each key's attempt is counted: its own slot, a new one while the table has room,
    /// or else the shared overflow count.
    fn place(&self, state: &mut ThrottleState, keys: &[String], now: Instant) -> Vec<Counted> {
        let missing = keys
            .iter()
            .filter(|k| !state.keys.contains_key(k.as_str()))
            .count();
        if state.keys.len() + missing > self.keys_max {
            self.sweep(state, now);
        }
        let mut room = self.keys_max.saturating_sub(state.keys.len());
        let mut counted = Vec::with_capacity(keys.len());
        for key in keys {
            let c = if state.keys.contains_key(key.as_str()) {
                Counted::Key(key.clone())
            } else if room > 0 {
                room -= 1;
                Counted::Key(key.clone())
            } else {
                Counted::Overflow
            };
            if !counted.contains(&c) {
                counted.push(c);
            }
        }
        counted
    }

    /// Refused when a count has used up its failures in the window; busy when the attempts
    /// in flight would reach the limit if they all failed.
    fn verdict(&self, state: &ThrottleState, counted: &[Counted], now: Instant) -> Verdict {
        let mut busy = false;
        for c in counted {
            let slot = match c {
                Counted::Key(key) => state.keys.get(key.as_str()).copied(),
                Counted::Overflow => Some(state.overflow),
            };
            let Some(slot) = slot else { continue };
            let failures = if slot.expired(now, self.window) {
                0
            } else {
                slot.failures
            };
            if failures >= self.failures_max {
                let elapsed = now.saturating_duration_since(slot.start);
                let retry_after_s = self.window.saturating_sub(elapsed).as_secs().max(1);
                return Verdict::Limited { retry_after_s };
            }
            busy |= failures + slot.pending >= self.failures_max;
        }
        if busy {
            Verdict::Busy
        } else {
            Verdict::Room
        }
    }

    fn reserve(&self, state: &mut ThrottleState, counted: &[Counted], now: Instant) {
        for c in counted {
            let slot = match c {
                Counted::Key(key) => state
                    .keys
                    .entry(key.clone())
                    .or_insert_with(|| ThrottleSlot::new(now)),
                Counted::Overflow => &mut state.overflow,
            };
            if slot.expired(now, self.window) {
                slot.failures = 0;
                slot.start = now;
            }
            slot.pending += 1;
        }
    }

    /// Drops the keys whose window has ended and which have nothing in flight.
    fn sweep(&self, state: &mut ThrottleState, now: Instant) {
        let due = state.swept_at.is_none_or(|at| {
            now.saturating_duration_since(at) >= Duration::from_millis(THROTTLE_SWEEP_INTERVAL_MS)
        });
        if due {
            let window = self.window;
            state.keys.retain(|_, slot| !slot.idle(now, window));
            state.swept_at = Some(now);
        }
    }

    /// Settles `attempt`'s reservations: as failures, or given back; `clear` (a username's
    /// key, after its owner logged in) also forgets that key's failures.
    fn settle(&self, counted: &[Counted], failed: bool, clear: Option<&str>) {
        if counted.is_empty() {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for c in counted {
            let slot = match c {
                Counted::Key(key) => match state.keys.get_mut(key.as_str()) {
                    Some(slot) => slot,
                    None => continue,
                },
                Counted::Overflow => &mut state.overflow,
            };
            slot.pending = slot.pending.saturating_sub(1);
            if failed {
                slot.failures += 1;
            }
            if let Counted::Key(key) = c {
                if clear == Some(key.as_str()) {
                    slot.failures = 0;
                }
                if slot.pending == 0 && slot.failures == 0 {
                    state.keys.remove(key.as_str());
                }
            }
        }
        drop(state);
        self.settled.notify_all();
    }
}

/// One login attempt, reserved under each of its keys. `failed` counts it; `succeeded`
/// gives it back; dropped unsettled (the password was never checked: the hashing queue was
/// full, the database failed) it is given back too.
pub struct LoginAttempt<'a> {
    throttle: &'a LoginThrottle,
    counted: Vec<Counted>,
}

impl LoginAttempt<'_> {
    pub fn failed(mut self) {
        let counted = std::mem::take(&mut self.counted);
        self.throttle.settle(&counted, true, None);
    }

    /// The password was right: gives the attempt back and forgets `clear_key`'s failures
    /// (the username's, not the address's).
    pub fn succeeded(mut self, clear_key: &str) {
        let counted = std::mem::take(&mut self.counted);
        self.throttle.settle(&counted, false, Some(clear_key));
    }
}

impl Drop for LoginAttempt<'_> {
    fn drop(&mut self) {
        let counted = std::mem::take(&mut self.counted);
        self.throttle.settle(&counted, false, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|k| k.to_string()).collect()
    }

    fn limited(r: &Result<LoginAttempt<'_>, AppError>) -> bool {
        matches!(r, Err(AppError::RateLimited { .. }))
    }

    #[test]
    fn throttle_blocks_after_max_failures_and_a_login_clears_the_username() {
        // Two failures use up a limit of two; the owner's successful login (from an address
        // with room left) forgets the username's failures but not the other address's.
        let t = LoginThrottle::new(2, WINDOW, 100);
        let now = Instant::now();
        let alice = keys(&["u:alice", "ip:1"]);
        t.begin(&alice, now).unwrap().failed();
        t.begin(&alice, now).unwrap().failed();
        let refused = t.begin(&alice, now);
        assert!(limited(&refused));
        drop(refused);
        t.begin(&keys(&["u:alice", "ip:2"]), now)
            .err()
            .expect("the username is throttled from any address");
        // The window ends: both keys start again.
        let later = now + WINDOW;
        t.begin(&alice, later).unwrap().failed();
        t.begin(&keys(&["u:alice", "ip:3"]), later)
            .unwrap()
            .succeeded("u:alice");
        t.begin(&alice, later).unwrap().failed();
        assert!(
            t.begin(&keys(&["u:alice", "ip:4"]), later).is_ok(),
            "the login forgot alice's earlier failure"
        );
        assert!(
            limited(&t.begin(&keys(&["u:bob", "ip:1"]), later)),
            "but not ip:1's: it has two"
        );
    }

    #[test]
    fn an_attempt_never_checked_is_given_back() {
        // A reservation dropped without a verdict (the hashing queue was full) costs nothing.
        let t = LoginThrottle::new(1, WINDOW, 100);
        let now = Instant::now();
        for _ in 0..5 {
            drop(t.begin(&keys(&["u:carol"]), now).unwrap());
        }
        t.begin(&keys(&["u:carol"]), now).unwrap().failed();
        assert!(limited(&t.begin(&keys(&["u:carol"]), now)));
    }

    #[test]
    fn a_full_table_falls_back_to_a_global_limit() {
        // A table of 4 keys filled by 4 addresses: attempts under keys it can't hold share one
        // count with the same limit, so rotating addresses can't switch the throttle off, and
        // keys already in the table keep their own counts.
        let t = LoginThrottle::new(2, WINDOW, 4);
        let now = Instant::now();
        for i in 0..4 {
            t.begin(&keys(&[&format!("ip:{i}")]), now).unwrap().failed();
        }
        t.begin(&keys(&["ip:new-1"]), now).unwrap().failed();
        t.begin(&keys(&["ip:new-2"]), now).unwrap().failed();
        for fresh in ["ip:new-3", "u:victim", "ip:new-1"] {
            assert!(
                limited(&t.begin(&keys(&[fresh]), now)),
                "{fresh} shares the full table's global count"
            );
        }
        t.begin(&keys(&["ip:0"]), now).unwrap().failed();
        assert!(
            limited(&t.begin(&keys(&["ip:0"]), now)),
            "ip:0 keeps its own"
        );
        // Once their windows end, the old keys make room again (swept at most once a second).
        let later = now + WINDOW;
        t.begin(&keys(&["u:victim"]), later).unwrap().failed();
        t.begin(&keys(&["u:victim"]), later).unwrap().failed();
        assert!(limited(&t.begin(&keys(&["u:victim"]), later)));
    }

    #[test]
    fn a_username_count_is_never_dropped_to_make_room() {
        // A victim's count survives a flood of other keys filling the table, so the flood can't
        // flush it; the flood itself is held to the global limit.
        let t = LoginThrottle::new(3, WINDOW, 8);
        let now = Instant::now();
        let victim = keys(&["u:victim"]);
        t.begin(&victim, now).unwrap().failed();
        t.begin(&victim, now).unwrap().failed();
        let mut admitted = 0;
        for i in 0..10_000 {
            if let Ok(a) = t.begin(&keys(&[&format!("ip:{i}")]), now + Duration::from_millis(i)) {
                a.failed();
                admitted += 1;
            }
        }
        assert_eq!(admitted, 7 + 3, "7 free places, then the global limit of 3");
        let late = now + Duration::from_secs(30);
        t.begin(&victim, late).unwrap().failed();
        assert!(limited(&t.begin(&victim, late)));
    }

    #[test]
    fn correct_logins_beyond_the_limit_wait_instead_of_being_refused() {
        // Six logins of one user at once, limit two: the attempts in flight could use up the
        // limit, so the later ones wait for them; they succeed, so every one gets through.
        let t = LoginThrottle::new(2, WINDOW, 100);
        let barrier = std::sync::Barrier::new(6);
        std::thread::scope(|scope| {
            for _ in 0..6 {
                scope.spawn(|| {
                    barrier.wait();
                    let attempt = t.begin(&keys(&["u:erin", "ip:5"]), Instant::now());
                    let attempt = attempt.expect("a correct login is not refused");
                    std::thread::sleep(Duration::from_millis(10));
                    attempt.succeeded("u:erin");
                });
            }
        });
    }

    #[test]
    fn an_attempt_that_waits_too_long_for_a_place_is_told_to_retry() {
        // One attempt in flight uses up a limit of one until it settles; another gives up
        // after the reserve wait with 503, and gets its place once the first is settled.
        let t = LoginThrottle::new(1, WINDOW, 100).with_reserve_wait(Duration::from_millis(30));
        let now = Instant::now();
        let first = t.begin(&keys(&["u:finn"]), now).unwrap();
        let second = t.begin(&keys(&["u:finn"]), now);
        assert!(matches!(second, Err(AppError::Unavailable(_))));
        drop(second);
        first.succeeded("u:finn");
        assert!(t.begin(&keys(&["u:finn"]), now).is_ok());
    }

    #[test]
    fn concurrent_attempts_cannot_exceed_the_limit() {
        // 40 threads reserve at once against a limit of 10 while every password check is
        // still running: 10 get through, the rest wait for them to fail and are then refused.
        let t = LoginThrottle::new(10, WINDOW, 100);
        let barrier = std::sync::Barrier::new(40);
        let admitted = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|scope| {
            for _ in 0..40 {
                scope.spawn(|| {
                    barrier.wait();
                    if let Ok(attempt) = t.begin(&keys(&["u:dave", "ip:9"]), Instant::now()) {
                        admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        attempt.failed();
                    }
                });
            }
        });
        assert_eq!(admitted.into_inner(), 10);
    }
}
