//! The pod's one lifecycle task: takes events in order from channels,
//! writes them to Redis in batches (each batch one atomic script with the
//! hash changes that go with it, run only while the pod's liveness key
//! exists; batches wait for it otherwise), reports dead pods' connections,
//! and writes the hash again when it may be wrong.

use super::event::{now_ms, Event};
use super::state::{State, Typed};
use crate::metrics::lifecycle_metrics;
use crate::presence::{Liveness, Presence};
use pubsub_redis::lifecycle::Record;
use pubsub_redis::LifecycleStore;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Events written per round trip at most.
const MAX_BATCH: usize = 512;
/// Events held for the liveness key at most; later ones are dropped.
const MAX_HELD: usize = 65_536;
/// Warnings about failed writes, at most one per this period.
const WARN_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(super) struct Writer {
    pub(super) store: LifecycleStore,
    pub(super) state: State,
    /// Join events queued and not yet taken, shared with the senders.
    pub(super) queued_joins: Arc<AtomicUsize>,
    /// Whose heartbeat keeps this pod's liveness key.
    pub(super) presence: Presence,
    /// Mean period between checks for dead pods (jittered ±50%).
    pub(super) reap: Duration,
    /// A write failed: the hash may not say what the pod holds.
    pub(super) dirty: bool,
    /// Events waiting, in order, for this pod's liveness key (Redis came
    /// back and the heartbeat has not set it again yet).
    pub(super) held: Vec<Typed>,
    pub(super) warned: Option<Instant>,
}

impl Writer {
    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        // Starts presence's heartbeat and reaper if no rule did.
        let mut watch = self.presence.liveness();
        live(&mut watch).await;
        let mut lapses = watch.borrow_and_update().lapses;
        let mut liveness = true;
        let mut reap_at = Instant::now() + jittered(self.reap);
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, MAX_BATCH) => {
                    if n == 0 {
                        return;
                    }
                    self.apply(&mut batch).await;
                }
                _ = tokio::time::sleep_until(reap_at) => {
                    self.tick().await;
                    reap_at = Instant::now() + jittered(self.reap);
                }
                changed = watch.changed(), if liveness => {
                    if changed.is_err() {
                        liveness = false;
                        continue;
                    }
                    let now = watch.borrow_and_update().lapses;
                    if now != lapses {
                        lapses = now;
                        self.restore().await;
                    } else if !self.held.is_empty() {
                        self.write(Vec::new()).await;
                    }
                }
            }
        }
    }

    async fn apply(&mut self, batch: &mut Vec<Event>) {
        let joins = batch
            .iter()
            .filter(|e| matches!(e, Event::Join { .. }))
            .count();
        self.queued_joins.fetch_sub(joins, Ordering::Relaxed);
        let mut flushed = Vec::new();
        let mut records: Vec<Typed> = Vec::with_capacity(batch.len());
        for event in batch.drain(..) {
            match event {
                Event::Flush(done) => flushed.push(done),
                e => records.extend(self.state.apply(e)),
            }
        }
        self.write(records).await;
        for done in flushed {
            let _ = done.send(());
        }
    }

    /// Writes what is held, then `records`, in order and in batches.
    async fn write(&mut self, records: Vec<Typed>) {
        let mut all = std::mem::take(&mut self.held);
        all.extend(records);
        while !all.is_empty() {
            let chunk: Vec<Typed> = all.drain(..all.len().min(MAX_BATCH)).collect();
            if let Some(chunk) = self.write_batch(chunk).await {
                // Not live: hold this batch and the rest for the next beat.
                let mut held = chunk;
                held.append(&mut all);
                if held.len() > MAX_HELD {
                    let over = held.len() - MAX_HELD;
                    held.truncate(MAX_HELD);
                    lifecycle_metrics().dropped(over as u64);
                    self.dirty = true;
                }
                self.held = held;
                return;
            }
        }
    }

    /// Writes one batch; gives it back when this pod's liveness key is
    /// missing. A failed batch is dropped and counted.
    async fn write_batch(&mut self, batch: Vec<Typed>) -> Option<Vec<Typed>> {
        let mut counts = [0u64; 3];
        for (kind, _) in &batch {
            if let Some(c) = counts.get_mut(*kind) {
                *c += 1;
            }
        }
        let records: Vec<&Record> = batch.iter().map(|(_, r)| r).collect();
        match self.store.write(&records).await {
            Ok(true) => {
                for (kind, n) in counts.into_iter().enumerate() {
                    lifecycle_metrics().written(kind, n);
                }
                None
            }
            Ok(false) => Some(batch),
            Err(e) => {
                lifecycle_metrics().dropped(batch.len() as u64);
                self.dirty = true;
                self.warn(&e, batch.len());
                None
            }
        }
    }

    fn warn(&mut self, e: &pubsub_redis::Error, lost: usize) {
        let now = Instant::now();
        if self.warned.is_none_or(|at| now >= at + WARN_EVERY) {
            self.warned = Some(now);
            tracing::warn!(error = %e, lost, "lifecycle events not written to Redis (dropped)");
        }
    }

    /// Writes what is held, the hash again if a write failed, then reports
    /// dead pods.
    async fn tick(&mut self) {
        if !self.held.is_empty() {
            self.write(Vec::new()).await;
        }
        if self.dirty && self.held.is_empty() {
            match self.store.rewrite(&self.state.hash()).await {
                Ok(live) => self.dirty = !live,
                Err(e) => tracing::debug!(error = %e, "lifecycle hash rewrite failed"),
            }
        }
        let dead = match self.store.dead_pods().await {
            Ok(dead) => dead,
            Err(e) => {
                tracing::debug!(error = %e, "lifecycle dead-pod check failed");
                return;
            }
        };
        for pod in dead {
            match self.store.reap(&pod, now_ms()).await {
                Ok(0) => {}
                Ok(n) => {
                    lifecycle_metrics().pod_down(n);
                    tracing::info!(
                        pod,
                        connections = n,
                        "reported a dead pod's connections as disconnected"
                    );
                }
                Err(e) => {
                    tracing::warn!(pod, error = %e, "reporting a dead pod failed; will retry")
                }
            }
        }
    }

    /// After this pod's liveness lapsed (Redis lost it, or the pod stalled
    /// and survivors may have reported its connections down): writes the
    /// hash again and announces every held topic again as a `join` with
    /// reason `restored`.
    async fn restore(&mut self) {
        tracing::warn!("lifecycle: liveness had lapsed; writing this pod's connections again");
        // What is held first: the rewrite is the state after it.
        self.write(Vec::new()).await;
        match self.store.rewrite(&self.state.hash()).await {
            Ok(live) => self.dirty = !live,
            Err(e) => {
                self.dirty = true;
                tracing::debug!(error = %e, "lifecycle hash rewrite failed");
            }
        }
        self.write(self.state.restored(now_ms())).await;
    }
}

/// Waits for this pod's first liveness refresh: a hash written before the
/// liveness key exists could be reported as a dead pod's.
async fn live(watch: &mut watch::Receiver<Liveness>) {
    if watch.wait_for(|l| l.beats > 0).await.is_err() {
        tracing::warn!("lifecycle: presence's liveness refresh is not running");
    }
}

/// `mean` ± 50%, so pods do not check in step.
fn jittered(mean: Duration) -> Duration {
    let r = RandomState::new().hash_one(Instant::now()) % 1000;
    mean.mul_f64(0.5 + r as f64 / 1000.0)
}
