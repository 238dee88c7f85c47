//! The parent's view of the workers: which are ready, their latest
//! counters (summed with the parent's own publisher counters into the
//! progress line printed once a second), and their final results.
//!
//! It only listens and prints progress; it must not send workers anything,
//! nor merge histograms or judge the run (`stats` and `report` do).

use crate::stats::{Counters, Stats, WorkerResult};
use crate::worker::Out;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Collects worker messages, printing a progress line once a second.
pub(crate) struct Collector {
    rx: mpsc::UnboundedReceiver<(usize, Out)>,
    progress: Vec<Counters>,
    ready: Vec<bool>,
    results: Vec<Option<WorkerResult>>,
    pub(crate) started: Instant,
    last_print: Instant,
    last_ops: u64,
    /// The parent's own counters (the fan-out publisher's), so progress
    /// shows what was published next to what was delivered.
    parent: Arc<Stats>,
}

impl Collector {
    pub(crate) fn new(
        rx: mpsc::UnboundedReceiver<(usize, Out)>,
        count: u64,
        parent: Arc<Stats>,
    ) -> Collector {
        Collector {
            rx,
            progress: vec![Counters::default(); count as usize],
            ready: vec![false; count as usize],
            results: (0..count).map(|_| None).collect(),
            started: Instant::now(),
            last_print: Instant::now(),
            last_ops: 0,
            parent,
        }
    }

    pub(crate) fn all_ready(&self) -> bool {
        self.ready.iter().all(|r| *r)
    }

    pub(crate) fn all_reported(&self) -> bool {
        self.results.iter().all(|r| r.is_some())
    }

    /// The parent's counters plus every worker's latest.
    pub(crate) fn total(&self) -> Counters {
        let mut t = self.parent.live.snapshot();
        for p in &self.progress {
            t.add(p);
        }
        t
    }

    pub(crate) fn print(&mut self) {
        let t = self.total();
        let ops = t.joins_ok + t.deliveries;
        let dt = self.last_print.elapsed().as_secs_f64().max(0.001);
        let errors =
            t.connect_errors + t.join_errors + t.disconnects + t.push_errors + t.publish_errors;
        eprintln!(
            "[{:>5.1}s] open {} joins {} published {} deliveries {} ({:.0} ops/s) dup {} errors {}",
            self.started.elapsed().as_secs_f64(),
            t.open,
            t.joins_ok,
            t.published + t.pushes_sent,
            t.deliveries,
            (ops - self.last_ops.min(ops)) as f64 / dt,
            t.duplicates,
            errors
        );
        self.last_ops = ops;
        self.last_print = Instant::now();
    }

    /// Handles messages until `done` holds, `until` passes or every worker
    /// is gone.
    pub(crate) async fn pump(&mut self, until: Option<Instant>, done: impl Fn(&Collector) -> bool) {
        loop {
            if done(self) {
                return;
            }
            let now = Instant::now();
            if let Some(u) = until {
                if now >= u {
                    return;
                }
            }
            let next_print =
                (self.last_print + Duration::from_secs(1)).min(now + Duration::from_millis(50));
            let wake = until.map_or(next_print, |u| u.min(next_print));
            tokio::select! {
                m = self.rx.recv() => match m {
                    Some((i, Out::Ready)) => self.ready[i] = true,
                    Some((i, Out::Progress(c))) => self.progress[i] = c,
                    Some((i, Out::Result(r))) => { self.progress[i] = r.counters.clone(); self.results[i] = Some(*r); }
                    None => return,
                },
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            if self.last_print.elapsed() >= Duration::from_secs(1) {
                self.print();
            }
        }
    }

    /// Keeps the progress line going while something else (the publisher)
    /// runs; its answer, or None if it went away without one.
    pub(crate) async fn pump_until<T>(&mut self, mut rx: oneshot::Receiver<T>) -> Option<T> {
        loop {
            self.pump(Some(Instant::now() + Duration::from_millis(100)), |_| false)
                .await;
            match rx.try_recv() {
                Ok(r) => return Some(r),
                Err(oneshot::error::TryRecvError::Empty) => {}
                Err(oneshot::error::TryRecvError::Closed) => return None,
            }
        }
    }

    /// Every worker's result, in worker order, or an error naming how many
    /// never reported.
    pub(crate) fn take_results(&mut self) -> anyhow::Result<Vec<WorkerResult>> {
        let count = self.results.len();
        let results: Vec<WorkerResult> = self.results.iter_mut().filter_map(|r| r.take()).collect();
        if results.len() != count {
            anyhow::bail!("only {} of {count} workers reported results", results.len());
        }
        Ok(results)
    }
}
