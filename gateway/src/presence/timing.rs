//! How often presence does what, derived from the two settings operators
//! give (the diff window and the pod timeout), so a dead pod's presences
//! are always gone within the timeout.

use std::time::Duration;

/// The shortest window: a client receives at most one `presence_diff` per
/// window and topic, so at most ten a second however fast people join.
pub const MIN_BATCH: Duration = Duration::from_millis(100);

/// The periods derived from the configured window and pod timeout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// How long diffs of a topic are collected before one is published to
    /// the other pods and one is dispatched to this pod's clients.
    pub(crate) batch: Duration,
    /// Lifetime of this pod's liveness key.
    pub(super) ttl: Duration,
    /// How often the liveness key is refreshed: a third of its lifetime, so
    /// two missed refreshes are survived.
    pub(super) heartbeat: Duration,
    /// Mean period between checks for dead pods (jittered ±50%).
    pub(super) reap: Duration,
    /// Mean period between reconciles of the local states with the store
    /// (jittered ±50%): a missed diff is corrected within half the timeout.
    pub(super) reconcile: Duration,
    /// After the store lost data, how long until the local states are
    /// reconciled: long enough for every live pod to re-announce.
    pub(super) resync: Duration,
}

impl Timing {
    /// Leaves of a dead pod are published within `ttl + 1.5 * reap` = 7/8 of
    /// `pod_timeout`, and reach clients within the next window.
    pub(crate) fn new(batch: Duration, pod_timeout: Duration) -> Timing {
        let batch = batch.max(MIN_BATCH);
        Timing {
            batch,
            ttl: pod_timeout / 2,
            heartbeat: pod_timeout / 6,
            reap: pod_timeout / 4,
            reconcile: pod_timeout / 3,
            resync: pod_timeout / 3 + batch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_bounds_the_pod_timeout() {
        for timeout in [Duration::from_secs(1), Duration::from_secs(30)] {
            let t = Timing::new(Duration::from_millis(100), timeout);
            assert!(t.ttl + t.reap.mul_f64(1.5) + t.batch < timeout);
            assert!(t.reconcile.mul_f64(1.5) + t.batch < timeout);
            assert!(t.heartbeat * 3 <= t.ttl);
        }
        let t = Timing::new(Duration::ZERO, Duration::from_secs(30));
        assert_eq!(t.batch, MIN_BATCH, "clamped");
    }
}
