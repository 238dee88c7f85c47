//! The presence actor: one task per pod that owns the presences tracked on
//! this pod, writes them to the store, batches diffs per topic and publishes
//! them, keeps the pod alive in the store, reaps dead pods, and re-announces
//! what it holds when the store lost it.
//!
//! Ordering that keeps every client's list right: an entry is written to the
//! store before its diff is published, and a listing is read after the
//! writes queued before it. A client subscribes before it lists, so each
//! change is either in its `presence_state` or in a diff it receives (or
//! both, which phoenix.js applies idempotently: it matches metas by ref).

use super::diff::{state, Diff, Entry};
use super::store::{Store, StoreError};
use super::timing::Timing;
use crate::protocol::Payload;
use crate::pubsub::{Broadcast, Broker, Hub};
use base64::Engine;
use bytes::Bytes;
use indexmap::IndexMap;
use pubsub_redis::presence::Op;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Commands from channels (through [`super::Presence`]).
#[derive(Debug)]
pub(crate) enum Cmd {
    Track {
        id: u64,
        topic: Arc<str>,
        key: String,
        meta: Map<String, Value>,
    },
    Update {
        id: u64,
        meta: Map<String, Value>,
    },
    Untrack {
        id: u64,
    },
    List {
        topic: String,
        reply: oneshot::Sender<Result<Vec<Entry>, StoreError>>,
    },
    /// Removes every local presence, publishes the leaves and stops.
    Shutdown(oneshot::Sender<()>),
}

/// Commands handled per batch at most; more wait for the next round.
const MAX_BATCH: usize = 4096;
/// How soon a diff that could not be published is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// One presence tracked on this pod.
#[derive(Debug)]
struct Local {
    topic: Arc<str>,
    entry: Entry,
}

/// Unique `phx_ref`s: this pod's random seed and a counter, URL-safe base64.
#[derive(Debug)]
struct RefGen {
    seed: u64,
    next: u64,
}

impl RefGen {
    fn next(&mut self) -> String {
        self.next += 1;
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.seed.to_be_bytes());
        b[8..].copy_from_slice(&self.next.to_be_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }
}

/// A random 64-bit value, different in every process and call.
pub(crate) fn random() -> u64 {
    RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()))
}

#[derive(Debug)]
pub(crate) struct Actor {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) broker: Arc<dyn Broker>,
    timing: Timing,
    refs: RefGen,
    local: HashMap<u64, Local>,
    /// Writes that failed, to apply again before the next ones; the latest
    /// op per (topic, ref) wins.
    backlog: IndexMap<(String, String), Op>,
    pending: HashMap<String, Diff>,
    flush_at: Option<Instant>,
    resync_at: Option<Instant>,
    /// The first heartbeat succeeded: a lapsed liveness key now means lost data.
    announced: bool,
    epoch: u64,
}

fn put(topic: &str, entry: &Entry) -> Op {
    Op::Put {
        topic: topic.to_owned(),
        entry: entry.phx_ref().to_owned(),
        // A map with string keys always serializes.
        value: Bytes::from(serde_json::to_vec(entry).unwrap_or_default()),
    }
}

fn delete(topic: &str, entry: &Entry) -> Op {
    Op::Delete {
        topic: topic.to_owned(),
        entry: entry.phx_ref().to_owned(),
    }
}

fn decode(values: Vec<(String, Bytes)>) -> Vec<Entry> {
    values
        .into_iter()
        .filter_map(|(r, v)| match serde_json::from_slice::<Entry>(&v) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(entry = r, error = %e, "skipping a malformed presence entry");
                None
            }
        })
        .collect()
}

/// A successful liveness refresh.
#[derive(Debug)]
struct Beat {
    /// False when the liveness key had lapsed.
    alive: bool,
    /// The store's epoch at that time.
    epoch: u64,
}

/// Refreshes this pod's liveness on its own task, so a busy actor (a join
/// storm, a large listing) never delays it past the key's lifetime and gets
/// the pod reaped although it is alive. Ends with the actor.
async fn heartbeat(store: Arc<dyn Store>, timing: Timing, beats: mpsc::UnboundedSender<Beat>) {
    let mut tick = tokio::time::interval(timing.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if beats.is_closed() {
            return;
        }
        match store.heartbeat(timing.ttl).await {
            Ok(alive) => {
                let _ = beats.send(Beat {
                    alive,
                    epoch: store.epoch(),
                });
            }
            Err(e) => tracing::debug!(error = %e, "presence heartbeat failed"),
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn jittered(mean: Duration) -> Duration {
    let frac = (random() % 1000) as f64 / 1000.0;
    mean.mul_f64(0.5 + frac)
}

impl Actor {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        broker: Arc<dyn Broker>,
        timing: Timing,
    ) -> Actor {
        Actor {
            store,
            hub,
            broker,
            timing,
            refs: RefGen {
                seed: random(),
                next: 0,
            },
            local: HashMap::new(),
            backlog: IndexMap::new(),
            pending: HashMap::new(),
            flush_at: None,
            resync_at: None,
            announced: false,
            epoch: 0,
        }
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        self.epoch = self.store.epoch();
        let (beat_tx, mut beats) = mpsc::unbounded_channel();
        tokio::spawn(heartbeat(self.store.clone(), self.timing, beat_tx));
        let mut reap_at = Instant::now() + jittered(self.timing.reap);
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None => {
                        self.flush().await;
                        return;
                    }
                    Some(cmd) => {
                        let mut cmds = vec![cmd];
                        while cmds.len() < MAX_BATCH {
                            match rx.try_recv() {
                                Ok(c) => cmds.push(c),
                                Err(_) => break,
                            }
                        }
                        if let Some(done) = self.apply(cmds).await {
                            self.shutdown().await;
                            let _ = done.send(());
                            return;
                        }
                    }
                },
                _ = sleep_until(self.flush_at) => self.flush().await,
                Some(beat) = beats.recv() => self.beat(beat).await,
                _ = tokio::time::sleep_until(reap_at) => {
                    self.reap().await;
                    reap_at = Instant::now() + jittered(self.timing.reap);
                }
                _ = sleep_until(self.resync_at) => self.resync().await,
            }
        }
    }

    fn diff(&mut self, topic: &str) -> &mut Diff {
        if self.flush_at.is_none() {
            self.flush_at = Some(Instant::now() + self.timing.batch);
        }
        self.pending.entry(topic.to_owned()).or_default()
    }

    /// Applies commands; returns the shutdown's reply channel if one came
    /// (commands after it are dropped).
    async fn apply(&mut self, cmds: Vec<Cmd>) -> Option<oneshot::Sender<()>> {
        let mut ops = Vec::new();
        let mut lists = Vec::new();
        let mut shutdown = None;
        for cmd in cmds {
            if shutdown.is_some() {
                break;
            }
            match cmd {
                Cmd::Track {
                    id,
                    topic,
                    key,
                    mut meta,
                } => {
                    meta.insert("phx_ref".into(), Value::String(self.refs.next()));
                    let entry = Entry { key, meta };
                    ops.push(put(&topic, &entry));
                    self.diff(&topic).join(entry.clone());
                    self.local.insert(id, Local { topic, entry });
                }
                Cmd::Update { id, mut meta } => {
                    let new_ref = self.refs.next();
                    let Some(local) = self.local.get_mut(&id) else {
                        continue;
                    };
                    let old = local.entry.clone();
                    meta.insert("phx_ref".into(), Value::String(new_ref));
                    meta.insert("phx_ref_prev".into(), Value::String(old.phx_ref().into()));
                    local.entry.meta = meta;
                    let (topic, new) = (local.topic.clone(), local.entry.clone());
                    ops.push(delete(&topic, &old));
                    ops.push(put(&topic, &new));
                    let diff = self.diff(&topic);
                    diff.join(new);
                    diff.leave(old);
                }
                Cmd::Untrack { id } => {
                    if let Some(local) = self.local.remove(&id) {
                        ops.push(delete(&local.topic, &local.entry));
                        self.diff(&local.topic).leave(local.entry);
                    }
                }
                Cmd::List { topic, reply } => lists.push((topic, reply)),
                Cmd::Shutdown(done) => shutdown = Some(done),
            }
        }
        self.write(ops).await;
        // Listings run beside the actor (a large topic takes a while) but
        // only now, after the writes queued before them.
        for (topic, reply) in lists {
            let store = self.store.clone();
            tokio::spawn(async move {
                let listed = store.list(&topic).await.map(decode);
                let _ = reply.send(listed);
            });
        }
        shutdown
    }

    /// Removes every presence of this pod and publishes the leaves, so a pod
    /// that stops cleanly leaves no one waiting for the reaper.
    async fn shutdown(&mut self) {
        let mut ops = Vec::with_capacity(self.local.len());
        for (_, local) in std::mem::take(&mut self.local) {
            ops.push(delete(&local.topic, &local.entry));
            self.diff(&local.topic).leave(local.entry);
        }
        self.write(ops).await;
        self.flush().await;
    }

    /// Writes the backlog and `ops`; on failure keeps them all for later.
    async fn write(&mut self, ops: Vec<Op>) {
        if ops.is_empty() && self.backlog.is_empty() {
            return;
        }
        let mut all: Vec<Op> = self.backlog.values().cloned().collect();
        all.extend(ops);
        match self.store.write(&all).await {
            Ok(()) => self.backlog.clear(),
            Err(e) => {
                tracing::warn!(error = %e, ops = all.len(), "presence write failed; will retry");
                for op in all {
                    let id = match &op {
                        Op::Put { topic, entry, .. } | Op::Delete { topic, entry } => {
                            (topic.clone(), entry.clone())
                        }
                    };
                    self.backlog.shift_remove(&id);
                    self.backlog.insert(id, op);
                }
            }
        }
    }

    /// Publishes one `presence_diff` per topic with changes.
    async fn flush(&mut self) {
        self.flush_at = None;
        let pending = std::mem::take(&mut self.pending);
        let mut failed = Vec::new();
        for (topic, diff) in pending {
            if diff.is_empty() {
                continue;
            }
            let msg = Broadcast {
                topic: topic.clone(),
                event: "presence_diff".into(),
                payload: Payload::json(&diff.payload()),
                from: None,
            };
            if let Err(e) = self.broker.publish(msg).await {
                tracing::warn!(topic, error = %e, "presence_diff not published; will retry");
                failed.push((topic, diff));
            }
        }
        if !failed.is_empty() {
            for (topic, diff) in failed {
                self.pending.entry(topic).or_default().prepend(diff);
            }
            self.flush_at = Some(Instant::now() + RETRY.max(self.timing.batch));
        }
    }

    /// After a successful liveness refresh: re-announce if it had lapsed,
    /// retry failed writes, and resync clients if messages may have been lost.
    async fn beat(&mut self, beat: Beat) {
        if !beat.alive && self.announced {
            tracing::warn!(
                presences = self.local.len(),
                "presence liveness had lapsed (Redis restarted or this pod stalled); re-announcing"
            );
            self.reannounce().await;
            self.resync_at = Some(Instant::now() + self.timing.resync);
        } else {
            self.write(Vec::new()).await;
        }
        self.announced = true;
        if beat.epoch != self.epoch {
            // The subscriber reconnected: diffs may have been missed.
            self.epoch = beat.epoch;
            self.resync_at = Some(Instant::now() + self.timing.resync);
        }
    }

    /// Writes every local presence again under a new ref, and announces the
    /// change as leaves of the old refs and joins of the new ones. New refs
    /// make it safe against a survivor that reaped this pod meanwhile: its
    /// leaves name only the old refs, whatever order the diffs arrive in.
    async fn reannounce(&mut self) {
        let mut ops = Vec::with_capacity(self.local.len() * 2);
        let mut changes = Vec::with_capacity(self.local.len());
        for local in self.local.values_mut() {
            let old = local.entry.clone();
            local
                .entry
                .meta
                .insert("phx_ref".into(), Value::String(self.refs.next()));
            local.entry.meta.remove("phx_ref_prev");
            ops.push(delete(&local.topic, &old));
            ops.push(put(&local.topic, &local.entry));
            changes.push((local.topic.clone(), old, local.entry.clone()));
        }
        for (topic, old, new) in changes {
            let diff = self.diff(&topic);
            diff.leave(old);
            diff.join(new);
        }
        self.write(ops).await;
    }

    /// Sends this pod's clients of every topic it tracks presences in a fresh
    /// `presence_state` (with no join_ref, which phoenix.js accepts on the
    /// current join), correcting whatever diffs they missed.
    async fn resync(&mut self) {
        self.resync_at = None;
        let topics: HashSet<Arc<str>> = self.local.values().map(|l| l.topic.clone()).collect();
        for topic in topics {
            match self.store.list(&topic).await {
                Ok(values) => {
                    let entries = decode(values);
                    self.hub.dispatch(&Broadcast {
                        topic: topic.to_string(),
                        event: "presence_state".into(),
                        payload: Payload::json(&state(&entries)),
                        from: None,
                    });
                }
                Err(e) => {
                    tracing::warn!(topic = %topic, error = %e, "presence resync failed; will retry");
                    self.resync_at = Some(Instant::now() + self.timing.resync);
                }
            }
        }
    }

    async fn reap(&mut self) {
        match self.store.reap().await {
            Ok(removed) => {
                for (topic, entry) in removed {
                    match serde_json::from_slice::<Entry>(&entry) {
                        Ok(e) => self.diff(&topic).leave(e),
                        Err(e) => {
                            tracing::warn!(topic, error = %e, "reaped a malformed presence entry")
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "presence reap failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_are_unique_and_url_safe() {
        let mut g = RefGen { seed: 7, next: 0 };
        let (a, b) = (g.next(), g.next());
        assert_ne!(a, b);
        assert_eq!(a.len(), 22);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }
}
