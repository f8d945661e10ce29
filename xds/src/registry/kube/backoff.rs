//! How every Kubernetes watch of the control plane reconnects after an error.
//!
//! kube-runtime's default follows client-go: 0.8 s doubling to 30 s, with up to 100% jitter.
//! After an API server outage of 30 s that leaves a watch waiting up to ~50 s more, each
//! watch at its own random time, so discovery, the webhook's config and the operator come
//! back one kind at a time, long after the API server has. A ceiling of 5 s (≤ 10 s with
//! jitter) brings every watch back within seconds, at a cost to a struggling API server of
//! one request per watch every 5–10 s, which a few dozen watches per process keep small.

use std::time::Duration;

use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::ExponentialBackoff;

/// The first delay after a watch fails.
const FIRST_DELAY: Duration = Duration::from_millis(500);
/// The longest delay before jitter (jitter adds up to as much again).
const LONGEST_DELAY: Duration = Duration::from_secs(5);
/// A watch that has run this long without an error starts again from [`FIRST_DELAY`].
const RESET_AFTER: Duration = Duration::from_secs(60);

/// The reconnect backoff for a watch (`WatchStreamExt::backoff`, `Controller::trigger_backoff`).
pub fn reconnect_backoff() -> ResetTimerBackoff<ExponentialBackoff> {
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(FIRST_DELAY)
        .with_max_delay(LONGEST_DELAY)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(exponential.into(), RESET_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_from_half_a_second_and_never_exceed_ten_seconds() {
        let delays: Vec<Duration> = reconnect_backoff().take(40).collect();
        assert_eq!(delays.len(), 40, "a watch never gives up");
        assert!(delays[0] >= FIRST_DELAY && delays[0] < 2 * FIRST_DELAY, "{:?}", delays[0]);
        assert!(delays.iter().all(|d| *d < 2 * LONGEST_DELAY), "{delays:?}");
        // Over an outage of 30 s the waits add up to little more than the outage.
        let mut waited = Duration::ZERO;
        let after_outage = delays.iter().find(|d| {
            waited += **d;
            waited > Duration::from_secs(30)
        });
        assert!(waited < Duration::from_secs(40), "waited {waited:?} ({after_outage:?} last)");
    }
}
