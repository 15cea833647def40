//! Time is an input: use cases and background threads take `now` from a `Clock`, so tests can
//! move time instead of sleeping until a wall-clock moment.
//!
//! The server never uses the wall clock raw. `GuardedClock` reckons time as the wall clock read
//! at start-up plus the monotonic time elapsed since, and follows the wall clock only while
//! the two agree: a wall clock that leaps ahead of that reckoning by more than
//! `WALL_LEAP_MS_MAX` is not believed (an alert instead, until it agrees again), so a clock set
//! two years ahead for a second cannot stamp the ledger in the future for good.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use chrono::Utc;

use crate::domain::Timestamp;

/// How far the wall clock may run ahead of the monotonic reckoning, and the newest stored
/// entry ahead of the wall clock at start-up, before either is refused. NTP slews by at most
/// 0.5 ms per second, so honest drift needs hours to reach this between two reads; a step
/// beyond it is a clock being set.
pub const WALL_LEAP_MS_MAX: i64 = 5_000;
const WALL_LEAP_MICROS_MAX: i64 = WALL_LEAP_MS_MAX * 1_000;
const _: () = assert!(WALL_LEAP_MS_MAX > 0 && WALL_LEAP_MS_MAX <= 60_000);

pub trait Clock: Send + Sync {
    /// The time of day.
    fn now(&self) -> Timestamp;
    /// Microseconds on a clock that is never set (from an arbitrary origin), to measure how
    /// much time really passed between two readings of `now`.
    fn monotonic_micros(&self) -> i64;
}

pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clocks: the wall clock, and the boot-time clock as the monotonic
/// one (unlike CLOCK_MONOTONIC it keeps counting while the machine is suspended, so a resume
/// does not look like the wall clock leaping ahead). Both are read without a system call.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_datetime(Utc::now())
    }

    fn monotonic_micros(&self) -> i64 {
        #[cfg(target_os = "linux")]
        {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes the timespec we pass and nothing else.
            if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } == 0 {
                return ts.tv_sec * 1_000_000 + ts.tv_nsec / 1_000;
            }
        }
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let origin = *ORIGIN.get_or_init(std::time::Instant::now);
        i64::try_from(origin.elapsed().as_micros()).unwrap_or(i64::MAX)
    }
}

/// A clock that only moves when told to. For tests. `advance_ms` is time passing (both the
/// wall clock and the monotonic clock move); `set` is someone setting the wall clock (the
/// monotonic clock does not move).
pub struct ManualClock(Mutex<(Timestamp, i64)>);

impl ManualClock {
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock(Mutex::new((start, 0)))
    }

    /// Sets the wall clock, as an operator or a bad NTP server would: no time passes.
    pub fn set(&self, t: Timestamp) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).0 = t;
    }

    /// Lets `ms` milliseconds pass.
    pub fn advance_ms(&self, ms: i64) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        t.0 = t.0.plus_millis(ms);
        t.1 += ms * 1_000;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    fn monotonic_micros(&self) -> i64 {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).1
    }
}

/// How far the wall clock may drift from the reckoning before the reckoning follows it.
const REANCHOR_MICROS_MIN: i64 = 1_000;

/// No offset recorded (`GuardedClock::offset_before_step_micros`).
const NO_OFFSET: i64 = i64::MIN;

/// The clock the server runs on: the wall clock, as long as it agrees with the monotonic
/// reckoning (see the module's comment and ARCHITECTURE.md, "Time").
///
/// The reckoning is `monotonic + offset`, where `offset` is `wall − monotonic` at the last
/// reading that agreed. Each reading compares the wall clock with it:
/// - within `WALL_LEAP_MS_MAX` either way: the wall clock is believed (and the offset follows
///   it, which absorbs NTP's slow corrections);
/// - ahead by more: the reckoning is returned instead, and an alert stands (`alert`) until a
///   reading agrees again;
/// - behind by more (the clock was set back): the wall clock is believed, as before; the
///   writer keeps its stamps increasing. The old offset is kept, so that setting the clock
///   forward again onto the old time line is recognised as undoing that step, not as a leap.
pub struct GuardedClock {
    source: SharedClock,
    offset_micros: AtomicI64,
    offset_before_step_micros: AtomicI64,
    /// How far the wall clock is ahead of the reckoning while it is not believed; 0 otherwise.
    wall_ahead_micros: AtomicI64,
    leaps: AtomicU64,
    steps_back: AtomicU64,
}

/// What `/health` and `/metrics` show about the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockReport {
    /// How far the wall clock is ahead of the reckoning while it is not believed, else 0.
    pub wall_ahead_micros: i64,
    /// Forward leaps not believed, since start.
    pub leaps: u64,
    /// Backward steps beyond the bound, since start.
    pub steps_back: u64,
}

impl GuardedClock {
    /// Anchors on the wall clock as it reads now: at start-up it is the only reference there
    /// is (start-up separately refuses a ledger stamped far ahead of it).
    pub fn new(source: SharedClock) -> GuardedClock {
        let offset = source.now().micros() - source.monotonic_micros();
        GuardedClock {
            source,
            offset_micros: AtomicI64::new(offset),
            offset_before_step_micros: AtomicI64::new(NO_OFFSET),
            wall_ahead_micros: AtomicI64::new(0),
            leaps: AtomicU64::new(0),
            steps_back: AtomicU64::new(0),
        }
    }

    pub fn report(&self) -> ClockReport {
        ClockReport {
            wall_ahead_micros: self.wall_ahead_micros.load(Ordering::Relaxed),
            leaps: self.leaps.load(Ordering::Relaxed),
            steps_back: self.steps_back.load(Ordering::Relaxed),
        }
    }

    fn leapt(&self, wall: i64, reckoned: i64) {
        let ahead = wall - reckoned;
        if self.wall_ahead_micros.swap(ahead, Ordering::Relaxed) == 0 {
            self.leaps.fetch_add(1, Ordering::Relaxed);
            crate::log::error(&format!(
                "clock: the wall clock ({}) leapt {:.3} s ahead of the time reckoned from the monotonic clock ({}); \
                 time stamps follow the reckoning until the wall clock agrees again \
                 (if the wall clock is right, restart the server to adopt it)",
                stamp(wall),
                ahead as f64 / 1e6,
                stamp(reckoned)
            ));
        }
    }

    fn agreed(&self, wall: i64, mono: i64, offset: i64) {
        if self.wall_ahead_micros.load(Ordering::Relaxed) != 0
            && self.wall_ahead_micros.swap(0, Ordering::Relaxed) != 0
        {
            crate::log::info(&format!(
                "clock: the wall clock ({}) agrees with the reckoning again; following it",
                stamp(wall)
            ));
        }
        // Only a difference worth a write: every request reads the clock, and an atomic write
        // on each read would bounce the cache line between CPUs. A lost race only means
        // another reader's (equally good) offset wins.
        if (wall - mono - offset).abs() > REANCHOR_MICROS_MIN {
            let _ = self.offset_micros.compare_exchange(
                offset,
                wall - mono,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    fn stepped_back(&self, wall: i64, mono: i64, offset: i64) {
        if self
            .offset_micros
            .compare_exchange(offset, wall - mono, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.offset_before_step_micros
                .store(offset, Ordering::Relaxed);
            self.steps_back.fetch_add(1, Ordering::Relaxed);
            crate::log::error(&format!(
                "clock: the wall clock was set back {:.3} s, to {}; new time stamps stay after the newest one",
                (mono + offset - wall) as f64 / 1e6,
                stamp(wall)
            ));
        }
        if self.wall_ahead_micros.swap(0, Ordering::Relaxed) != 0 {
            crate::log::info("clock: the wall clock no longer leads the reckoning; following it");
        }
    }
}

fn stamp(micros: i64) -> String {
    Timestamp::from_micros(micros).map_or_else(|| format!("{micros} µs"), Timestamp::to_text)
}

impl GuardedClock {
    /// The wall clock, if it agrees with the reckoning or is behind it; else the reckoning.
    pub fn now(&self) -> Timestamp {
        let wall_ts = self.source.now();
        let wall = wall_ts.micros();
        let mono = self.source.monotonic_micros();
        let offset = self.offset_micros.load(Ordering::Relaxed);
        let reckoned = mono + offset;
        if wall - reckoned > WALL_LEAP_MICROS_MAX {
            let before = self.offset_before_step_micros.load(Ordering::Relaxed);
            if before != NO_OFFSET && (wall - (mono + before)).abs() <= WALL_LEAP_MICROS_MAX {
                // Back onto the time line the clock was on before it was set back.
                self.offset_before_step_micros
                    .store(NO_OFFSET, Ordering::Relaxed);
                self.agreed(wall, mono, offset);
                crate::log::info(&format!(
                    "clock: the wall clock ({}) returned to the time it showed before it was set back; following it",
                    stamp(wall)
                ));
                return wall_ts;
            }
            self.leapt(wall, reckoned);
            return Timestamp::from_micros(reckoned).unwrap_or(wall_ts);
        }
        if reckoned - wall > WALL_LEAP_MICROS_MAX {
            self.stepped_back(wall, mono, offset);
        } else {
            self.agreed(wall, mono, offset);
        }
        wall_ts
    }
}

impl Clock for GuardedClock {
    fn now(&self) -> Timestamp {
        GuardedClock::now(self)
    }

    fn monotonic_micros(&self) -> i64 {
        self.source.monotonic_micros()
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

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = "2026-11-30T10:00:00Z";

    fn at(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    fn guarded() -> (Arc<ManualClock>, GuardedClock) {
        let wall = Arc::new(ManualClock::new(at(START)));
        let clock = GuardedClock::new(wall.clone());
        (wall, clock)
    }

    #[test]
    fn a_wall_clock_that_leaps_ahead_is_not_believed_until_it_agrees_again() {
        // The wall clock jumps two years ahead for a second, then is corrected. Meanwhile time
        // follows the monotonic reckoning, strictly on, with one alert; then the wall clock
        // is followed again and the alert is gone.
        let (wall, clock) = guarded();
        wall.advance_ms(1_000);
        assert_eq!(clock.now(), at("2026-11-30T10:00:01Z"));
        wall.set(at("2028-11-30T10:00:01Z"));
        assert_eq!(clock.now(), at("2026-11-30T10:00:01Z"));
        let report = clock.report();
        assert_eq!(report.leaps, 1);
        assert!(
            report.wall_ahead_micros > 700 * 86_400 * 1_000_000,
            "{report:?}"
        );
        wall.advance_ms(1_000);
        assert_eq!(clock.now(), at("2026-11-30T10:00:02Z"));
        assert_eq!(clock.report().leaps, 1, "one leap, one alert");
        wall.set(at("2026-11-30T10:00:02.5Z"));
        assert_eq!(clock.now(), at("2026-11-30T10:00:02.5Z"));
        assert_eq!(clock.report().wall_ahead_micros, 0);
        wall.set(at("2027-01-01T00:00:00Z"));
        clock.now();
        assert_eq!(clock.report().leaps, 2);
    }

    #[test]
    fn steps_within_the_bound_are_followed() {
        // Exactly WALL_LEAP_MS_MAX ahead is believed; a microsecond more is not.
        let (wall, clock) = guarded();
        wall.set(at(START).plus_millis(WALL_LEAP_MS_MAX));
        assert_eq!(clock.now(), at(START).plus_millis(WALL_LEAP_MS_MAX));
        assert_eq!(clock.report().leaps, 0);
        // Re-anchored there: the next step is measured from it.
        wall.set(at(START).plus_millis(2 * WALL_LEAP_MS_MAX).plus_micros(1));
        assert_eq!(clock.now(), at(START).plus_millis(WALL_LEAP_MS_MAX));
        assert_eq!(clock.report().leaps, 1);
    }

    #[test]
    fn a_clock_set_back_is_followed_and_setting_it_forward_again_is_no_leap() {
        // Set back two years: followed (the writer keeps stamps increasing), counted, no alert.
        // Set forward again onto the old time line: the step is undone, not a leap.
        let (wall, clock) = guarded();
        wall.set(at("2024-11-30T10:00:00Z"));
        assert_eq!(clock.now(), at("2024-11-30T10:00:00Z"));
        let report = clock.report();
        assert_eq!(
            (report.steps_back, report.leaps, report.wall_ahead_micros),
            (1, 0, 0)
        );
        wall.advance_ms(3_000);
        wall.set(at("2026-11-30T10:00:03Z"));
        assert_eq!(clock.now(), at("2026-11-30T10:00:03Z"));
        assert_eq!(clock.report().leaps, 0);
        // The old line is forgotten once used: a leap beyond it again is a leap.
        wall.set(at("2028-11-30T10:00:03Z"));
        assert_eq!(clock.now(), at("2026-11-30T10:00:03Z"));
        assert_eq!(clock.report().leaps, 1);
    }

    #[test]
    fn the_system_monotonic_clock_moves_with_time() {
        let clock = SystemClock;
        let a = clock.monotonic_micros();
        std::thread::sleep(Duration::from_millis(5));
        let b = clock.monotonic_micros();
        assert!(b - a >= 5_000, "{a} {b}");
    }
}
