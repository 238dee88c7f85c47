//! The counters of lifecycle events (`docs/lifecycle.md`), registered with
//! the process's registry when a rule first configures lifecycle events, so
//! pods without them scrape none of these series.

use super::{counter, metrics};
use prometheus::{IntCounter, IntCounterVec, Opts};
use std::sync::LazyLock;

/// Lifecycle's counters.
pub(crate) struct LifecycleMetrics {
    /// Written to Redis: `join`, `leave`, `disconnect`.
    events: [IntCounter; 3],
    dropped: IntCounter,
    pod_down: IntCounter,
}

impl std::fmt::Debug for LifecycleMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LifecycleMetrics").finish_non_exhaustive()
    }
}

/// The event types, the `type` label.
const TYPES: [&str; 3] = ["join", "leave", "disconnect"];

static LIFECYCLE: LazyLock<LifecycleMetrics> = LazyLock::new(|| {
    let r = &metrics().registry;
    let vec = IntCounterVec::new(
        Opts::new(
            "gateway_lifecycle_events_total",
            "Lifecycle events this pod wrote to Redis, by type.",
        ),
        &["type"],
    )
    .expect("metric options are static and valid");
    let events = super::register(r, vec);
    LifecycleMetrics {
        events: TYPES.map(|t| events.with_label_values(&[t])),
        dropped: counter(
            r,
            "gateway_lifecycle_dropped_total",
            "Lifecycle events lost: the queue to Redis was full, or Redis failed the write.",
        ),
        pod_down: counter(
            r,
            "gateway_lifecycle_pod_down_total",
            "Connections of dead pods this pod reported as disconnected (reason pod_down).",
        ),
    }
});

/// Lifecycle's counters, registered (at zero) on first use.
pub(crate) fn lifecycle_metrics() -> &'static LifecycleMetrics {
    &LIFECYCLE
}

impl LifecycleMetrics {
    /// `n` events of type `TYPES[kind]` were written.
    pub(crate) fn written(&self, kind: usize, n: u64) {
        if let Some(c) = self.events.get(kind) {
            c.inc_by(n);
        }
    }

    /// `n` events were lost.
    pub(crate) fn dropped(&self, n: u64) {
        self.dropped.inc_by(n);
    }

    /// `n` connections of dead pods were reported.
    pub(crate) fn pod_down(&self, n: u64) {
        self.pod_down.inc_by(n);
    }
}
