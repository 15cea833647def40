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

/// How fast, beyond a step of `WALL_LEAP_MS_MAX`, the reckoning may gain on the monotonic clock
/// by following a wall clock that is ahead of it, in parts per million of monotonic time. NTP
/// slews at most 500 ppm (and slews the monotonic clock with the wall clock); a wall clock
/// gaining faster than this for long is being set, step by step.
pub const WALL_SLEW_PPM: i64 = 500;

/// How far the reckoning may still step ahead to follow the wall clock: a budget of
/// `WALL_LEAP_MS_MAX` that each forward step spends, a step back returns, and time refills at
/// `WALL_SLEW_PPM`. Over any stretch of time the reckoning thus gains at most
/// `WALL_LEAP_MS_MAX` plus `WALL_SLEW_PPM` of it on the monotonic clock.
#[derive(Debug, Clone, Copy)]
struct Credit {
    micros: i64,
    as_of_mono: i64,
}

impl Credit {
    fn at(&self, mono: i64) -> i64 {
        let earned = (mono - self.as_of_mono)
            .max(0)
            .saturating_mul(WALL_SLEW_PPM)
            / 1_000_000;
        self.micros.saturating_add(earned).min(WALL_LEAP_MICROS_MAX)
    }

    fn spend(&mut self, micros: i64, mono: i64) {
        self.micros = (self.at(mono) - micros).max(0);
        self.as_of_mono = mono;
    }

    fn give_back(&mut self, micros: i64, mono: i64) {
        self.micros = self
            .at(mono)
            .saturating_add(micros)
            .min(WALL_LEAP_MICROS_MAX);
        self.as_of_mono = mono;
    }
}

/// No offset recorded (`GuardedClock::offset_before_step_micros`).
const NO_OFFSET: i64 = i64::MIN;

/// The clock the server runs on: the wall clock, as long as it agrees with the monotonic
/// reckoning (see the module's comment and ARCHITECTURE.md, "Time").
///
/// The reckoning is `monotonic + offset`, where `offset` is `wall − monotonic` at the last
/// reading that agreed. Each reading compares the wall clock with it:
/// - behind by at most `WALL_LEAP_MS_MAX`, or ahead by at most what `Credit` allows: the wall
///   clock is believed, and the offset follows it;
/// - ahead by more: the reckoning is returned instead, and an alert stands (`alert`) until a
///   reading agrees again. So a single step ahead of up to `WALL_LEAP_MS_MAX` is followed, but
///   a wall clock that keeps gaining (say 4 s every second) is followed no faster than
///   `WALL_SLEW_PPM` once the first step has spent the budget;
/// - behind by more (the clock was set back): the wall clock is believed, as before; the
///   writer keeps its stamps increasing. The old offset is kept, so that setting the clock
///   forward again onto the old time line is recognised as undoing that step, not as a leap.
pub struct GuardedClock {
    source: SharedClock,
    offset_micros: AtomicI64,
    offset_before_step_micros: AtomicI64,
    /// Taken to change the offset (rare: a step of over a millisecond); readings that agree
    /// and leaps beyond `WALL_LEAP_MS_MAX` don't take it.
    credit: Mutex<Credit>,
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
        let mono = source.monotonic_micros();
        let offset = source.now().micros() - mono;
        GuardedClock {
            source,
            offset_micros: AtomicI64::new(offset),
            offset_before_step_micros: AtomicI64::new(NO_OFFSET),
            credit: Mutex::new(Credit {
                micros: WALL_LEAP_MICROS_MAX,
                as_of_mono: mono,
            }),
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

    /// Ends a standing alert: the wall clock is believed again.
    fn agreed(&self, wall: i64) {
        if self.wall_ahead_micros.load(Ordering::Relaxed) != 0
            && self.wall_ahead_micros.swap(0, Ordering::Relaxed) != 0
        {
            crate::log::info(&format!(
                "clock: the wall clock ({}) agrees with the reckoning again; following it",
                stamp(wall)
            ));
        }
    }

    fn stepped_back(&self, wall: i64, mono: i64, offset: i64) {
        self.offset_before_step_micros
            .store(offset, Ordering::Relaxed);
        self.steps_back.fetch_add(1, Ordering::Relaxed);
        crate::log::error(&format!(
            "clock: the wall clock was set back {:.3} s, to {}; new time stamps stay after the newest one",
            (mono + offset - wall) as f64 / 1e6,
            stamp(wall)
        ));
        if self.wall_ahead_micros.swap(0, Ordering::Relaxed) != 0 {
            crate::log::info("clock: the wall clock no longer leads the reckoning; following it");
        }
    }

    /// A reading more than `REANCHOR_MICROS_MIN` off the reckoning: moves the offset to the
    /// wall clock if it may, under the lock, so that the credit is spent once per step.
    fn reanchor(&self, wall_ts: Timestamp, mono: i64) -> Timestamp {
        let wall = wall_ts.micros();
        let mut credit = self.credit.lock().unwrap_or_else(|p| p.into_inner());
        // Read again under the lock: another reading may have moved it already.
        let offset = self.offset_micros.load(Ordering::Relaxed);
        let reckoned = mono + offset;
        let ahead = wall - reckoned;
        if ahead.abs() <= REANCHOR_MICROS_MIN {
            self.agreed(wall);
            return wall_ts;
        }
        if ahead < 0 {
            // Behind: followed. A step back within the bound gives its amount back to the
            // credit (a clock set back and then forward again by mistake is no leap); one
            // beyond it is remembered instead, and undone below.
            if -ahead > WALL_LEAP_MICROS_MAX {
                self.stepped_back(wall, mono, offset);
            } else {
                credit.give_back(-ahead, mono);
                self.agreed(wall);
            }
            self.offset_micros.store(wall - mono, Ordering::Relaxed);
            return wall_ts;
        }
        let before = self.offset_before_step_micros.load(Ordering::Relaxed);
        if ahead > WALL_LEAP_MICROS_MAX
            && before != NO_OFFSET
            && (wall - (mono + before)).abs() <= WALL_LEAP_MICROS_MAX
        {
            // Back onto the time line the clock was on before it was set back; only what lies
            // beyond that line is spent.
            self.offset_before_step_micros
                .store(NO_OFFSET, Ordering::Relaxed);
            credit.spend((wall - (mono + before)).max(0), mono);
            self.offset_micros.store(wall - mono, Ordering::Relaxed);
            self.agreed(wall);
            crate::log::info(&format!(
                "clock: the wall clock ({}) returned to the time it showed before it was set back; following it",
                stamp(wall)
            ));
            return wall_ts;
        }
        if ahead <= credit.at(mono) {
            credit.spend(ahead, mono);
            self.offset_micros.store(wall - mono, Ordering::Relaxed);
            self.agreed(wall);
            return wall_ts;
        }
        drop(credit);
        self.leapt(wall, reckoned);
        Timestamp::from_micros(reckoned).unwrap_or(wall_ts)
    }
}

fn stamp(micros: i64) -> String {
    Timestamp::from_micros(micros).map_or_else(|| format!("{micros} µs"), Timestamp::to_text)
}

impl GuardedClock {
    /// The wall clock, if it agrees with the reckoning, is behind it, or is ahead of it by no
    /// more than the reckoning may follow; else the reckoning.
    pub fn now(&self) -> Timestamp {
        let wall_ts = self.source.now();
        let wall = wall_ts.micros();
        let mono = self.source.monotonic_micros();
        let offset = self.offset_micros.load(Ordering::Relaxed);
        let reckoned = mono + offset;
        let ahead = wall - reckoned;
        if ahead.abs() <= REANCHOR_MICROS_MIN {
            // The common case: no write, no lock.
            self.agreed(wall);
            return wall_ts;
        }
        if ahead > WALL_LEAP_MICROS_MAX
            && self.offset_before_step_micros.load(Ordering::Relaxed) == NO_OFFSET
        {
            // Beyond any credit, and no step back to undo: a leap, without the lock.
            self.leapt(wall, reckoned);
            return Timestamp::from_micros(reckoned).unwrap_or(wall_ts);
        }
        self.reanchor(wall_ts, mono)
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
        self.wait(timeout) != Woken::Stopping
    }

    /// `sleep`, saying why it ended.
    pub fn wait(&self, timeout: Duration) -> Woken {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (mut guard, _) = self
            .cond
            .wait_timeout_while(guard, timeout, |s| !s.nudged && !s.stopping)
            .unwrap_or_else(|p| p.into_inner());
        let nudged = std::mem::take(&mut guard.nudged);
        match (guard.stopping, nudged) {
            (true, _) => Woken::Stopping,
            (false, true) => Woken::Nudged,
            (false, false) => Woken::TimedOut,
        }
    }
}

/// Why `Wakeup::wait` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    TimedOut,
    Nudged,
    Stopping,
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
    fn a_wall_clock_gaining_seconds_every_second_is_not_followed() {
        // Each step is under the leap bound, but the wall clock gains 4 s every second for
        // 10 s. The first step is followed (a step within the bound is); the rest is a leap:
        // time goes on at the monotonic clock's pace, with one alert.
        let (wall, clock) = guarded();
        for second in 1..=10 {
            wall.advance_ms(1_000);
            wall.set(wall.now().plus_millis(4_000));
            let now = clock.now();
            assert!(
                now <= at(START).plus_millis(second * 1_000 + 4_001),
                "second {second}: {}",
                now.to_text()
            );
        }
        assert_eq!(wall.now(), at(START).plus_millis(50_000));
        assert_eq!(clock.now(), at(START).plus_millis(14_000));
        let report = clock.report();
        assert_eq!(report.leaps, 1, "{report:?}");
        assert_eq!(report.wall_ahead_micros, 36_000_000);
    }

    #[test]
    fn a_wall_clock_gaining_at_ntp_slew_rates_is_followed() {
        // 2 ms ahead every 5 s (400 ppm) for an hour, after a first step of the full bound:
        // followed all the way, no leap.
        let (wall, clock) = guarded();
        wall.set(at(START).plus_millis(WALL_LEAP_MS_MAX));
        assert_eq!(clock.now(), at(START).plus_millis(WALL_LEAP_MS_MAX));
        for _ in 0..720 {
            wall.advance_ms(5_000);
            wall.set(wall.now().plus_millis(2));
            assert_eq!(clock.now(), wall.now());
        }
        assert_eq!(clock.report().leaps, 0);
        // The hour earned 1.8 s and spent 1.44 s of it: a step of 0.5 s now is a leap.
        wall.set(wall.now().plus_millis(500));
        assert!(clock.now() < wall.now());
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
