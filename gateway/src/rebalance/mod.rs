//! Rebalancing after a scale-out: WebSocket connections stay on the pod
//! they opened on for hours, so pods a HorizontalPodAutoscaler adds get
//! only new users while the old pods stay loaded. With rebalancing on,
//! every pod reports its connection count to Redis each round; a pod above
//! the fleet's average by more than the margin closes some of its oldest
//! WebSocket connections (1012, which phoenix.js reconnects from, through
//! the balancer), a few each round, spread over a period, and never below
//! the average plus margin. It stops at once when the pod drains, and a
//! draining pod withdraws its count: its clients are moving anyway.
//!
//! Long-poll sessions count in a pod's load but are never shed: every
//! request of theirs already goes through the balancer, and they are few.
//!
//! # Layout
//! - `plan`: how many to shed in a round, from the counts.
//! - `run`: the task: report, read, shed, at its pace.

mod plan;
mod run;

pub(crate) use run::start;

use std::time::Duration;

/// When and how much a pod sheds; the same on every pod.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RebalanceConfig {
    /// How often the pod reports its count, reads the fleet's and plans a
    /// round. A pod that has not reported for three rounds is left out of
    /// the average (it died).
    pub interval: Duration,
    /// Over how long an excess is shed, so clients reconnect gradually
    /// rather than in a storm.
    pub period: Duration,
    /// How far above the average a pod may stay, as a fraction of the
    /// average: a pod sheds only what it holds above
    /// `average + max(margin × average, margin_min)`.
    pub margin: f64,
    /// The smallest margin, in connections, so a small fleet does not
    /// churn over a handful of connections.
    pub margin_min: u64,
    /// At most this many connections are closed in one round, whatever
    /// the excess.
    pub max_per_round: u64,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig {
            interval: Duration::from_secs(5),
            period: Duration::from_secs(300),
            margin: 0.1,
            margin_min: 20,
            max_per_round: 500,
        }
    }
}

impl RebalanceConfig {
    /// The count above which a pod sheds, when the fleet's average is
    /// `average`: never below the average.
    pub(crate) fn ceiling(&self, average: f64) -> u64 {
        let band = (average * self.margin).max(self.margin_min as f64);
        (average + band).ceil() as u64
    }
}
