//! How often presence does what, derived from the two settings operators
//! give (the diff window and the pod timeout), so a dead pod's presences
//! are always gone within the timeout.

use std::time::Duration;

/// The periods derived from the configured window and pod timeout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// How long diffs of a topic are collected before one is published.
    pub(crate) batch: Duration,
    /// Lifetime of this pod's liveness key.
    pub(super) ttl: Duration,
    /// How often the liveness key is refreshed: a third of its lifetime, so
    /// two missed refreshes are survived.
    pub(super) heartbeat: Duration,
    /// Mean period between checks for dead pods (jittered ±50%).
    pub(super) reap: Duration,
    /// After the store lost data, how long until local clients get a fresh
    /// `presence_state`: long enough for every live pod to re-announce.
    pub(super) resync: Duration,
}

impl Timing {
    /// Leaves of a dead pod are published within `ttl + 1.5 * reap + batch`
    /// = 7/8 of `pod_timeout` plus the window.
    pub(crate) fn new(batch: Duration, pod_timeout: Duration) -> Timing {
        Timing {
            batch,
            ttl: pod_timeout / 2,
            heartbeat: pod_timeout / 6,
            reap: pod_timeout / 4,
            resync: pod_timeout / 3 + batch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_bounds_the_pod_timeout() {
        let t = Timing::new(Duration::from_millis(50), Duration::from_secs(30));
        assert!(t.ttl + t.reap.mul_f64(1.5) + t.batch < Duration::from_secs(30));
        assert!(t.heartbeat * 3 <= t.ttl);
    }
}
