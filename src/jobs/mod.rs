//! Background threads: the nightly snapshot (`snapshot`) and the payout worker (`payout`).

pub mod holds;
pub mod payout;
pub mod sealer;
pub mod snapshot;

use std::time::Duration;

use crate::clock::{Clock, Wakeup};
use crate::domain::Timestamp;

/// Longest single sleep: a wall clock that jumps is noticed within this, and a test clock
/// that moves is too. Sleeps end early on a nudge or on shutdown.
pub const SLEEP_SLICE_MS: u64 = 1_000;

/// Sleeps until the clock reaches `until`, or a nudge, or shutdown. False when stopping.
pub fn sleep_until(clock: &dyn Clock, wakeup: &Wakeup, until: Timestamp) -> bool {
    let left_ms = (until.micros() - clock.now().micros()).max(0) / 1000;
    let slice = Duration::from_millis((left_ms as u64).clamp(1, SLEEP_SLICE_MS));
    wakeup.sleep(slice)
}
