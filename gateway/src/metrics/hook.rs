//! The metrics of HTTP hooks (docs/hooks.md): every call by hook and
//! result, and how long the calls that were sent took. Kept apart from the
//! rest so the hook vocabulary lives in one place.

use super::{counter_vec, register};
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, Registry};
use std::time::Duration;

/// Which hook was called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HookName {
    Connect,
    Join,
    Push,
}

const NAMES: [&str; 3] = ["connect", "join", "push"];

impl HookName {
    /// The `hook` label, also the `x-gateway-hook` header.
    pub(crate) fn label(self) -> &'static str {
        NAMES[self as usize]
    }
}

/// How a hook call ended, for `gateway_hook_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HookResult {
    /// The hook accepted (connect, join) or replied `ok` (push).
    Ok,
    /// The hook answered with a refusal, or a push's `error` status.
    Refused,
    /// No answer within the hook's `timeout_ms`.
    Timeout,
    /// The hook server could not be reached, or answered 5xx.
    Unavailable,
    /// The answer was not what the contract says.
    BadResponse,
    /// `max_concurrency` calls were already in flight.
    Busy,
}

const RESULTS: [&str; 6] = [
    "ok",
    "refused",
    "timeout",
    "unavailable",
    "bad_response",
    "busy",
];

/// Hook call durations, seconds: a hook answers in milliseconds, and the
/// default timeout is 2 s.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The series of both hook metrics, resolved once.
pub(super) struct HookMetrics {
    requests: [[IntCounter; RESULTS.len()]; NAMES.len()],
    duration: [Histogram; NAMES.len()],
}

impl HookMetrics {
    pub(super) fn new(r: &Registry) -> Self {
        let requests = counter_vec(
            r,
            "gateway_hook_requests_total",
            "HTTP hook calls, by hook and result.",
            &["hook", "result"],
        );
        let opts = HistogramOpts::new(
            "gateway_hook_duration_seconds",
            "How long HTTP hook calls that were sent took, retries included, by hook.",
        )
        .buckets(BUCKETS.to_vec());
        let duration = register(
            r,
            HistogramVec::new(opts, &["hook"]).expect("metric options are static and valid"),
        );
        HookMetrics {
            requests: NAMES.map(|n| RESULTS.map(|res| requests.with_label_values(&[n, res]))),
            duration: NAMES.map(|n| duration.with_label_values(&[n])),
        }
    }

    pub(super) fn counted(&self, hook: HookName, result: HookResult) {
        self.requests[hook as usize][result as usize].inc();
    }

    pub(super) fn observed(&self, hook: HookName, took: Duration) {
        self.duration[hook as usize].observe(took.as_secs_f64());
    }
}

impl super::Metrics {
    /// A hook call ended with `result`.
    pub(crate) fn hook(&self, hook: HookName, result: HookResult) {
        self.hooks.counted(hook, result);
    }

    /// A hook call that was sent took `took`, retries included.
    pub(crate) fn hook_took(&self, hook: HookName, took: Duration) {
        self.hooks.observed(hook, took);
    }
}
