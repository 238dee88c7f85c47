//! Metrics of forwarded pushes (docs/metrics.md, "Backends").

use super::label::LATENCY_BUCKETS;
use super::{counter_vec, gauge, register};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

/// How a forwarded push ended, for the client: the `result` label of
/// `gateway_forward_pushes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forwarded {
    /// A backend answered `ok`.
    Ok,
    /// A backend answered `error`.
    Error,
    /// In the stream, answered at once (`reply = "on_store"`).
    Stored,
    /// No answer in time.
    Timeout,
    /// Redis could not take it.
    Unavailable,
    /// The backend's answer was malformed.
    BadReply,
    /// Over the channel's rate.
    RateLimited,
    /// Over the channel's pending pushes.
    TooManyPending,
    /// Over the pod's pending pushes.
    Busy,
}

const FORWARDED: [&str; 9] = [
    "ok",
    "error",
    "stored",
    "timeout",
    "unavailable",
    "bad_reply",
    "rate_limited",
    "too_many_pending",
    "busy",
];

/// What became of an answer a backend published: the `result` label of
/// `gateway_forward_answers_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answered {
    /// It answered a waiting push.
    Accepted,
    /// It came after the push's timeout: its broadcasts were sent, its reply
    /// dropped.
    Late,
    /// No push waits for it: a second answer, or one long after its push.
    Unknown,
    /// Not an answer this pod can read.
    Malformed,
}

const ANSWERED: [&str; 4] = ["accepted", "late", "unknown", "malformed"];

pub(crate) struct ForwardMetrics {
    pushes: [IntCounter; FORWARDED.len()],
    answers: [IntCounter; ANSWERED.len()],
    pending: IntGauge,
    round_trip: Histogram,
}

impl ForwardMetrics {
    pub(super) fn new(r: &Registry) -> Self {
        let pushes = counter_vec(
            r,
            "gateway_forward_pushes_total",
            "Client pushes forwarded to backends through a Redis stream, by how the client was answered.",
            &["result"],
        );
        let answers = counter_vec(
            r,
            "gateway_forward_answers_total",
            "Answers backends published to this pod's reply channel, by what became of them.",
            &["result"],
        );
        let round_trip = HistogramOpts::new(
            "gateway_forward_reply_seconds",
            "From a forwarded push appended to its stream to its backend's answer read.",
        )
        .buckets(LATENCY_BUCKETS.to_vec());
        ForwardMetrics {
            pushes: FORWARDED.map(|l| pushes.with_label_values(&[l])),
            answers: ANSWERED.map(|l| answers.with_label_values(&[l])),
            pending: gauge(
                r,
                "gateway_forward_pending",
                "Forwarded pushes awaiting their backend's answer.",
            ),
            round_trip: register(
                r,
                Histogram::with_opts(round_trip).expect("metric options are static and valid"),
            ),
        }
    }

    pub(crate) fn push(&self, result: Forwarded) {
        self.pushes[result as usize].inc();
    }

    pub(crate) fn answer(&self, result: Answered) {
        self.answers[result as usize].inc();
    }

    /// The pod's pending pushes, as its table counts them.
    pub(crate) fn set_pending(&self, n: usize) {
        self.pending.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub(crate) fn round_trip(&self, seconds: f64) {
        self.round_trip.observe(seconds);
    }
}
