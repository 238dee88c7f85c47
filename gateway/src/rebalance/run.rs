//! The rebalancing task of a pod: each round it reports its count and reads
//! the fleet's in one script, plans, and closes its quota spaced evenly over
//! the round; until the pod drains, when it withdraws its count and stops.

use super::plan::Planner;
use super::RebalanceConfig;
use crate::metrics::rebalance_metrics;
use crate::transport::drain::Drain;
use crate::transport::http::Slots;
use crate::transport::shed::Sheddable;
use pubsub_redis::RedisBus;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// Rounds a report stays counted: a pod missing that many is gone.
const STALE_ROUNDS: u32 = 3;

/// What the task reads and acts on.
struct Shedder {
    config: RebalanceConfig,
    bus: RedisBus,
    /// The id this pod reports under (its bus's node id).
    pod: String,
    /// Connections counted against `max_connections`: the pod's load.
    connections: Slots,
    drain: Drain,
    /// Gone when the endpoint is: the task ends then.
    sheddable: Weak<Sheddable>,
}

/// Starts rebalancing for a pod whose connections `connections` counts and
/// `sheddable` lists, reporting as `pod` on `bus`; false outside a tokio
/// runtime.
pub(crate) fn start(
    config: RebalanceConfig,
    bus: RedisBus,
    pod: &str,
    connections: Slots,
    drain: Drain,
    sheddable: &Arc<Sheddable>,
) -> bool {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    rebalance_metrics();
    let shedder = Shedder {
        config,
        bus,
        pod: pod.to_owned(),
        connections,
        drain,
        sheddable: Arc::downgrade(sheddable),
    };
    rt.spawn(shedder.run());
    true
}

impl Shedder {
    fn stale(&self) -> Duration {
        self.config.interval * STALE_ROUNDS
    }

    async fn run(self) {
        let metrics = rebalance_metrics();
        let mut planner = Planner::new(self.config);
        let (mut failing, mut shedding) = (false, false);
        while !self.drain.has_started() {
            let Some(sheddable) = self.sheddable.upgrade() else {
                return;
            };
            let start = Instant::now();
            let own = self.connections.open() as u64;
            let reported = tokio::time::timeout(
                self.config.interval,
                self.bus.report_load(&self.pod, own, self.stale()),
            )
            .await;
            let fleet = match reported {
                Ok(Ok(fleet)) => fleet,
                Ok(Err(e)) => {
                    metrics.failed();
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(error = %e, "rebalance: reporting the connection count to Redis failed; not shedding until it works");
                    }
                    self.pause_until(start + self.config.interval).await;
                    continue;
                }
                Err(_) => {
                    metrics.failed();
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!("rebalance: Redis did not answer the connection count report in time; not shedding until it does");
                    }
                    continue;
                }
            };
            if std::mem::replace(&mut failing, false) {
                tracing::info!("rebalance: reporting to Redis again");
            }
            let counts: Vec<u64> = fleet.iter().map(|p| p.connections).collect();
            let round = planner.round(own, &counts);
            metrics.round(round.pods, round.average, round.ceiling);
            if (round.quota > 0) != shedding {
                shedding = round.quota > 0;
                tracing::info!(
                    connections = own,
                    pods = round.pods,
                    average = round.average,
                    ceiling = round.ceiling,
                    "rebalance: {}",
                    if shedding {
                        "above the fleet's average plus margin, shedding connections"
                    } else {
                        "within the fleet's band, not shedding"
                    }
                );
            }
            self.shed(&sheddable, round.quota, round.ceiling, start)
                .await;
            drop(sheddable);
            self.pause_until(start + self.config.interval).await;
        }
        // Its clients are about to move: the others' average should not
        // count them here. Expiry removes it anyway if this fails.
        let stale = self.stale();
        let _ = tokio::time::timeout(
            self.config.interval,
            self.bus.withdraw_load(&self.pod, stale),
        )
        .await;
    }

    /// Closes up to `quota` connections, the first at `start` and the rest
    /// evenly through the round, while the pod still holds more than
    /// `ceiling` (clients leave by themselves too) and is not draining.
    async fn shed(&self, sheddable: &Sheddable, quota: u64, ceiling: u64, start: Instant) {
        let step = self.config.interval.div_f64(quota.max(1) as f64);
        for i in 0..quota {
            if i > 0 {
                self.pause_until(start + step.mul_f64(i as f64)).await;
            }
            if self.drain.has_started() || self.connections.open() as u64 <= ceiling {
                return;
            }
            if !sheddable.shed_oldest() {
                return;
            }
            rebalance_metrics().shed();
        }
    }

    /// Waits until `at`, or until the drain starts.
    async fn pause_until(&self, at: Instant) {
        tokio::select! {
            () = tokio::time::sleep_until(at) => {}
            () = self.drain.started() => {}
        }
    }
}
