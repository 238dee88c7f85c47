//! The soak: the same fan-out for a long time with connection churn (every
//! subscriber leaves after a while and comes back on the next pod), no
//! fault; per interval, latency percentiles, deliveries, churn, and each
//! pod's memory and descriptors — do they stay flat, does latency drift?

use crate::analysis::{self, Affected, Losses};
use crate::fleet::{Fleet, FleetSpec, Snapshot};
use crate::probes::{Sample, Sampler};
use crate::publisher::{self, Publisher};
use crate::rig::{Rig, RigSpec};
use loadtest::stats::now_ns;
use serde::Serialize;
use std::time::Duration;
use tokio::time::{sleep_until, Instant};

#[derive(Debug, Clone, Serialize)]
pub(crate) struct SoakShape {
    pub(crate) duration: Duration,
    pub(crate) interval: Duration,
    pub(crate) pods: usize,
    pub(crate) subscribers: usize,
    pub(crate) topics: usize,
    pub(crate) rate: f64,
    pub(crate) connect_rate: f64,
    /// A connection lives between these, then reconnects.
    pub(crate) churn: (Duration, Duration),
    pub(crate) sample_every: Duration,
}

/// One interval of the soak.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Interval {
    /// Seconds since the start of publishing, at the interval's end.
    pub(crate) t: f64,
    pub(crate) deliveries: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
    /// Per pod, at the interval's end.
    pub(crate) rss_mb: Vec<f64>,
    pub(crate) fds: Vec<u64>,
    pub(crate) clients: Snapshot,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct SoakOutcome {
    pub(crate) shape: SoakShape,
    pub(crate) intervals: Vec<Interval>,
    pub(crate) losses: Losses,
    pub(crate) clients: Snapshot,
    /// Per pod: least-squares slope of VmRSS over the run after the first
    /// interval (MB per hour), and of descriptors (per hour).
    pub(crate) rss_slope_mb_per_h: Vec<f64>,
    pub(crate) fds_slope_per_h: Vec<f64>,
    pub(crate) crashed: Vec<usize>,
}

/// Least-squares slope of `(x, y)` points, per unit of x.
pub(crate) fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

pub(crate) async fn run(shape: &SoakShape, rig: &RigSpec) -> anyhow::Result<SoakOutcome> {
    let spec = RigSpec {
        pods: shape.pods,
        cluster: false,
        proxied: None,
        ..rig.clone()
    };
    let mut rig = Rig::start(&spec).await?;
    let names: Vec<String> = (0..shape.topics)
        .map(|i| format!("room:soak:{i}"))
        .collect();
    let fleet = Fleet::start(FleetSpec {
        subscribers: shape.subscribers,
        topics: names.clone(),
        pods: rig.addrs(),
        connect_rate: shape.connect_rate,
        churn: Some(shape.churn),
    });
    let setup = Duration::from_secs(60)
        + Duration::from_secs_f64(shape.subscribers as f64 / shape.connect_rate);
    anyhow::ensure!(
        fleet.joined(shape.subscribers as u64, setup).await,
        "soak: not every subscriber joined"
    );
    let sampler = Sampler::start(rig.probes(), shape.sample_every);
    let publisher = Publisher::start(publisher::Spec {
        redis: rig.publish_target(),
        channels: names.iter().map(|t| rig.channel(t)).collect(),
        rate: shape.rate,
    })?;
    let start = Instant::now();
    let start_ns = now_ns();
    let first = fleet.shared.counters.snapshot();
    fleet.shared.take_interval();
    let mut intervals = Vec::new();
    let mut last = first;
    let n = (shape.duration.as_secs_f64() / shape.interval.as_secs_f64()).ceil() as u32;
    for k in 1..=n.max(1) {
        sleep_until(start + (shape.interval * k).min(shape.duration)).await;
        let h = fleet.shared.take_interval();
        let now = fleet.shared.counters.snapshot();
        // Each pod now (the sampler's samples give the slopes at the end).
        let pods = rig.probes();
        let rss_mb = pods
            .iter()
            .map(|p| loadtest::procfs::rss(p.pid).map_or(0.0, |b| b as f64 / (1024.0 * 1024.0)))
            .collect();
        let fds = pods
            .iter()
            .map(|p| loadtest::procfs::fds(p.pid).unwrap_or(0))
            .collect();
        let ms = |us: u64| us as f64 / 1000.0;
        let iv = Interval {
            t: start.elapsed().as_secs_f64(),
            deliveries: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            rss_mb,
            fds,
            clients: now.since(&last),
        };
        eprintln!(
            "soak {:>6.0}s: {} deliveries, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, rss {:?} MB, fds {:?}, churned {}, disconnects {}",
            iv.t, iv.deliveries, iv.p50_ms, iv.p99_ms, iv.max_ms,
            iv.rss_mb.iter().map(|m| m.round()).collect::<Vec<_>>(),
            iv.fds, iv.clients.churned, iv.clients.disconnects
        );
        intervals.push(iv);
        last = now;
    }
    let log = publisher.stop().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stop_ns = now_ns();
    let clients = fleet.shared.counters.snapshot().since(&first);
    let records = fleet.stop().await;
    let samples = sampler.stop().await;
    let mut crashed = Vec::new();
    for (i, p) in rig.pods.iter_mut().enumerate() {
        if !p.alive() {
            crashed.push(i);
        }
    }
    // Slopes after the first interval (connections still settling).
    let from = start_ns + shape.interval.as_nanos() as u64;
    let series = |p: usize, f: &dyn Fn(&Sample) -> Option<u64>, scale: f64| {
        let pts: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.pod == p && s.t_ns >= from)
            .filter_map(|s| f(s).map(|v| ((s.t_ns - start_ns) as f64 / 3.6e12, v as f64 / scale)))
            .collect();
        slope(&pts)
    };
    Ok(SoakOutcome {
        shape: shape.clone(),
        intervals,
        losses: analysis::losses(&log, &records, None, &Affected::All, stop_ns),
        clients,
        rss_slope_mb_per_h: (0..shape.pods)
            .map(|p| series(p, &|s| s.rss, 1024.0 * 1024.0))
            .collect(),
        fds_slope_per_h: (0..shape.pods)
            .map(|p| series(p, &|s| s.fds, 1.0))
            .collect(),
        crashed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_and_of_flat_noise() {
        let line: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 3.0 * x as f64 + 1.0)).collect();
        assert!((slope(&line) - 3.0).abs() < 1e-9);
        let flat = [(0.0, 5.0), (1.0, 6.0), (2.0, 5.0), (3.0, 6.0)];
        assert!(slope(&flat).abs() < 0.5);
        assert_eq!(slope(&[(1.0, 1.0)]), 0.0);
    }
}
