//! Rebalancing's metrics (`docs/rebalancing.md`), registered with the
//! process's registry when rebalancing starts, so pods without it scrape
//! none of these series.

use super::{counter, metrics};
use prometheus::{Gauge, IntCounter, IntGauge};
use std::sync::LazyLock;

/// Rebalancing's counters and gauges.
pub(crate) struct RebalanceMetrics {
    shed: IntCounter,
    failed: IntCounter,
    pods: IntGauge,
    average: Gauge,
    ceiling: IntGauge,
}

impl std::fmt::Debug for RebalanceMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RebalanceMetrics").finish_non_exhaustive()
    }
}

static REBALANCE: LazyLock<RebalanceMetrics> = LazyLock::new(|| {
    let r = &metrics().registry;
    let average = Gauge::new(
        "gateway_rebalance_fleet_average",
        "Mean connections per pod over the pods that reported to Redis in the last round.",
    )
    .expect("metric options are static and valid");
    RebalanceMetrics {
        shed: counter(
            r,
            "gateway_rebalance_shed_total",
            "WebSocket connections this pod closed (1012) to hand their clients to less loaded pods.",
        ),
        failed: counter(
            r,
            "gateway_rebalance_rounds_failed_total",
            "Rounds that could not report to or read from Redis, and so shed nothing.",
        ),
        pods: super::gauge(
            r,
            "gateway_rebalance_fleet_pods",
            "Pods that reported their connection count to Redis in the last round, this one included.",
        ),
        average: super::register(r, average),
        ceiling: super::gauge(
            r,
            "gateway_rebalance_ceiling",
            "Connections above which this pod sheds: the fleet average plus the margin.",
        ),
    }
});

/// Rebalancing's metrics, registered (at zero) on first use.
pub(crate) fn rebalance_metrics() -> &'static RebalanceMetrics {
    &REBALANCE
}

impl RebalanceMetrics {
    /// A connection was shed.
    pub(crate) fn shed(&self) {
        self.shed.inc();
    }

    /// A round found nothing in Redis it could use.
    pub(crate) fn failed(&self) {
        self.failed.inc();
    }

    /// What the last round found: the pods that reported, their average,
    /// and this pod's ceiling.
    pub(crate) fn round(&self, pods: usize, average: f64, ceiling: u64) {
        self.pods.set(i64::try_from(pods).unwrap_or(i64::MAX));
        self.average.set(average);
        self.ceiling.set(i64::try_from(ceiling).unwrap_or(i64::MAX));
    }
}
