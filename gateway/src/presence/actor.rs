//! The presence actor: one task per pod that owns the presences tracked on
//! this pod, writes them to the store, publishes their changes to the other
//! pods once per window, keeps the local state of every topic this pod
//! serves (`local`) and dispatches its changes to this pod's clients once
//! per window, keeps the pod alive in the store, reaps dead pods, reconciles
//! the local states with the store, and re-announces what it holds when the
//! store lost it.
//!
//! Ordering that keeps every client's list right: a client subscribes before
//! it asks for its `presence_state`; the state comes from the local state of
//! the topic, which has every change this pod applied, and every change
//! applied after it was encoded reaches the client in a later diff (both are
//! queued on the connection by this task, in that order). A topic's local
//! state is built from a listing of the store requested after the pod
//! subscribed, so a change is in the listing, in a diff received since, or
//! both; leaves win over joins of the same ref whatever their order.

use super::diff::{Diff, Entry};
use super::local::{decode_diff, decode_listing, Change, TopicState};
use super::store::{Store, StoreError};
use super::timing::Timing;
use super::Liveness;
use crate::conn::ConnHandle;
use crate::protocol::{Json, Payload};
use crate::pubsub::{Broadcast, Broker, Hub, PresenceTap};
use base64::Engine;
use bytes::Bytes;
use indexmap::IndexMap;
use pubsub_redis::presence::Op;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// Commands from channels (through [`super::Presence`]) and from the hub.
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
    /// The topic's state as it is now, encoded.
    List {
        topic: Arc<str>,
        reply: oneshot::Sender<Result<Bytes, StoreError>>,
    },
    /// Queues the topic's `presence_state` on `conn`.
    PushState {
        topic: Arc<str>,
        conn: ConnHandle,
        join_ref: Option<Arc<str>>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// A `presence_diff` some pod (this one included) published.
    Remote {
        topic: String,
        payload: Bytes,
    },
    /// The topic's last local subscriber left.
    Vacated(String),
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

/// Hands the hub's presence diffs and vacated topics to the actor. Holds a
/// weak sender, so the hub does not keep the actor alive.
#[derive(Debug)]
pub(crate) struct Tap(pub(crate) mpsc::WeakUnboundedSender<Cmd>);

impl PresenceTap for Tap {
    fn diff(&self, topic: &str, payload: Bytes) {
        if let Some(tx) = self.0.upgrade() {
            let _ = tx.send(Cmd::Remote {
                topic: topic.to_owned(),
                payload,
            });
        }
    }

    fn vacated(&self, topic: &str) {
        if let Some(tx) = self.0.upgrade() {
            let _ = tx.send(Cmd::Vacated(topic.to_owned()));
        }
    }
}

/// Who waits for a topic's state to be built.
#[derive(Debug)]
enum Waiter {
    List(oneshot::Sender<Result<Bytes, StoreError>>),
    Push {
        conn: ConnHandle,
        join_ref: Option<Arc<str>>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// A topic's local state, and whether a listing of it is under way.
#[derive(Debug, Default)]
struct Cached {
    state: TopicState,
    waiters: Vec<Waiter>,
    listing: bool,
    /// Tells this state's listings from those of one dropped before.
    gen: u64,
}

/// A listing of the store, back from its task.
#[derive(Debug)]
struct Listed {
    topic: Arc<str>,
    gen: u64,
    /// The sequence when it was requested.
    since: u64,
    result: Result<Vec<(String, Bytes)>, StoreError>,
}

#[derive(Debug)]
pub(crate) struct Actor {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) broker: Arc<dyn Broker>,
    /// Other pods share the store: changes are published to them, and local
    /// states are reconciled with the store.
    shared: bool,
    timing: Timing,
    refs: RefGen,
    local: HashMap<u64, Local>,
    /// Writes that failed, to apply again before the next ones; the latest
    /// op per (topic, ref) wins.
    backlog: IndexMap<(String, String), Op>,
    /// This pod's changes not yet published to the other pods.
    pending: HashMap<String, Diff>,
    /// The local state of every topic this pod serves.
    topics: HashMap<Arc<str>, Cached>,
    /// Topics whose local state has changes for this pod's clients.
    dirty: HashSet<Arc<str>>,
    /// States created whose listing has not started yet.
    unlisted: Vec<(Arc<str>, u64)>,
    /// Increases with every change applied to a local state.
    seq: u64,
    /// Where listing tasks hand their results back.
    listed: mpsc::UnboundedSender<Listed>,
    listed_rx: Option<mpsc::UnboundedReceiver<Listed>>,
    flush_at: Option<Instant>,
    resync_at: Option<Instant>,
    /// The first heartbeat succeeded: a lapsed liveness key now means lost data.
    announced: bool,
    epoch: u64,
    /// Told of every liveness refresh, for lifecycle events (which read
    /// this pod's liveness key too).
    liveness: watch::Sender<Liveness>,
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

/// An entry as a local state holds it.
fn change(entry: &Entry) -> Change {
    let meta = serde_json::to_string(&entry.meta).unwrap_or_else(|_| "{}".into());
    (
        Arc::from(entry.phx_ref()),
        Arc::from(entry.key.as_str()),
        Arc::from(meta),
    )
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

/// Lists `topics` one after the other (a burst of large listings would take
/// every pooled connection), handing each result back to the actor.
fn spawn_listings(
    store: Arc<dyn Store>,
    topics: Vec<(Arc<str>, u64)>,
    since: u64,
    tx: mpsc::UnboundedSender<Listed>,
) {
    tokio::spawn(async move {
        for (topic, gen) in topics {
            let result = store.list(&topic).await;
            if tx
                .send(Listed {
                    topic,
                    gen,
                    since,
                    result,
                })
                .is_err()
            {
                return;
            }
        }
    });
}

impl Actor {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        broker: Arc<dyn Broker>,
        timing: Timing,
        shared: bool,
        liveness: watch::Sender<Liveness>,
    ) -> Actor {
        let listed = mpsc::unbounded_channel();
        Actor {
            store,
            hub,
            broker,
            shared,
            timing,
            refs: RefGen {
                seed: random(),
                next: 0,
            },
            local: HashMap::new(),
            backlog: IndexMap::new(),
            pending: HashMap::new(),
            topics: HashMap::new(),
            dirty: HashSet::new(),
            unlisted: Vec::new(),
            seq: 0,
            listed: listed.0,
            listed_rx: Some(listed.1),
            flush_at: None,
            resync_at: None,
            announced: false,
            epoch: 0,
            liveness,
        }
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        self.epoch = self.store.epoch();
        let (beat_tx, mut beats) = mpsc::unbounded_channel();
        tokio::spawn(heartbeat(self.store.clone(), self.timing, beat_tx));
        let mut reap_at = Instant::now() + jittered(self.timing.reap);
        let mut reconcile_at = Instant::now() + jittered(self.timing.reconcile);
        let Some(mut listed) = self.listed_rx.take() else {
            return;
        };
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
                Some(l) = listed.recv() => self.on_listed(l),
                _ = sleep_until(self.flush_at) => self.flush().await,
                Some(beat) = beats.recv() => self.beat(beat).await,
                _ = tokio::time::sleep_until(reap_at) => {
                    self.reap().await;
                    reap_at = Instant::now() + jittered(self.timing.reap);
                }
                _ = tokio::time::sleep_until(reconcile_at) => {
                    self.reconcile();
                    reconcile_at = Instant::now() + jittered(self.timing.reconcile);
                }
                _ = sleep_until(self.resync_at) => {
                    self.resync_at = None;
                    self.reconcile();
                }
            }
        }
    }

    fn schedule(&mut self) {
        if self.flush_at.is_none() {
            self.flush_at = Some(Instant::now() + self.timing.batch);
        }
    }

    /// This pod's pending publication for `topic` (shared stores only).
    fn publishing(&mut self, topic: &str) -> Option<&mut Diff> {
        if !self.shared {
            return None;
        }
        self.schedule();
        Some(self.pending.entry(topic.to_owned()).or_default())
    }

    /// The local state of `topic`, created if this pod had none (its
    /// listing starts with [`Actor::list_new`]).
    fn cached(&mut self, topic: &Arc<str>) -> &mut Cached {
        if !self.topics.contains_key(topic) {
            self.seq += 1;
            let gen = self.seq;
            self.unlisted.push((topic.clone(), gen));
            let cached = Cached {
                listing: true,
                gen,
                ..Cached::default()
            };
            self.topics.insert(topic.clone(), cached);
        }
        // Inserted above if it was missing.
        self.topics.entry(topic.clone()).or_default()
    }

    /// Starts the listings of the states created since the last call: after
    /// the writes queued with them, so each listing holds this pod's changes
    /// made before it.
    fn list_new(&mut self) {
        let topics = std::mem::take(&mut self.unlisted);
        if !topics.is_empty() {
            spawn_listings(self.store.clone(), topics, self.seq, self.listed.clone());
        }
    }

    /// Applies a join to the local state of `topic`.
    fn local_join(&mut self, topic: &Arc<str>, c: Change) {
        self.seq += 1;
        let seq = self.seq;
        if self.cached(topic).state.join(c, seq, true) {
            self.changed(topic);
        }
    }

    /// Applies a leave to the local state of `topic`, if there is one.
    fn local_leave(&mut self, topic: &str, r: &str) {
        let Some((topic, _)) = self.topics.get_key_value(topic) else {
            return;
        };
        let topic = topic.clone();
        let left = self
            .topics
            .get_mut(&topic)
            .is_some_and(|c| c.state.leave(&Arc::from(r)));
        if left {
            self.changed(&topic);
        }
    }

    fn changed(&mut self, topic: &Arc<str>) {
        self.dirty.insert(topic.clone());
        self.schedule();
    }

    /// Applies commands; returns the shutdown's reply channel if one came
    /// (commands after it are dropped).
    async fn apply(&mut self, cmds: Vec<Cmd>) -> Option<oneshot::Sender<()>> {
        let mut ops = Vec::new();
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
                    if let Some(d) = self.publishing(&topic) {
                        d.join(entry.clone());
                    }
                    self.local_join(&topic, change(&entry));
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
                    self.local_join(&topic, change(&new));
                    self.local_leave(&topic, old.phx_ref());
                    if let Some(d) = self.publishing(&topic) {
                        d.join(new);
                        d.leave(old);
                    }
                }
                Cmd::Untrack { id } => {
                    if let Some(local) = self.local.remove(&id) {
                        ops.push(delete(&local.topic, &local.entry));
                        self.local_leave(&local.topic, local.entry.phx_ref());
                        if let Some(d) = self.publishing(&local.topic) {
                            d.leave(local.entry);
                        }
                    }
                }
                Cmd::List { topic, reply } => {
                    if self.hub.subscribers(&topic) == 0
                        && self
                            .topics
                            .get(&topic)
                            .is_some_and(|c| c.waiters.is_empty())
                    {
                        // No diffs arrive for a topic this pod does not
                        // subscribe: list it afresh.
                        self.topics.remove(&topic);
                    }
                    let cached = self.cached(&topic);
                    if cached.state.loaded {
                        let _ = reply.send(Ok(cached.state.encode()));
                    } else {
                        cached.waiters.push(Waiter::List(reply));
                    }
                }
                Cmd::PushState {
                    topic,
                    conn,
                    join_ref,
                    reply,
                } => {
                    let cached = self.cached(&topic);
                    if cached.state.loaded {
                        push_state(&topic, &mut cached.state, &conn, join_ref.as_deref());
                        let _ = reply.send(Ok(()));
                    } else {
                        cached.waiters.push(Waiter::Push {
                            conn,
                            join_ref,
                            reply,
                        });
                    }
                }
                Cmd::Remote { topic, payload } => self.remote(&topic, &payload),
                Cmd::Vacated(topic) => {
                    // Every topic's last leave comes here; most have no state.
                    if self.topics.contains_key(topic.as_str()) && self.hub.subscribers(&topic) == 0
                    {
                        self.topics.remove(topic.as_str());
                        self.dirty.remove(topic.as_str());
                    }
                }
                Cmd::Shutdown(done) => shutdown = Some(done),
            }
        }
        self.write(ops).await;
        self.list_new();
        shutdown
    }

    /// A diff from the pubsub: applied to the topic's local state, which is
    /// created if this pod has subscribers of the topic but no state yet.
    fn remote(&mut self, topic: &str, payload: &[u8]) {
        let (joins, leaves) = match decode_diff(payload) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(topic, error = %e, "skipping a malformed presence_diff");
                return;
            }
        };
        let topic: Arc<str> = match self.topics.get_key_value(topic) {
            Some((t, _)) => t.clone(),
            None if self.hub.subscribers(topic) > 0 => Arc::from(topic),
            // Lingering in Redis after its last local subscriber left.
            None => return,
        };
        for c in joins {
            self.local_join(&topic, c);
        }
        for (r, _, _) in leaves {
            self.local_leave(&topic, &r);
        }
    }

    /// A listing came back: the first builds the topic's state and answers
    /// who waited for it; later ones correct it (reconcile).
    fn on_listed(&mut self, listed: Listed) {
        let Listed {
            topic,
            gen,
            since,
            result,
        } = listed;
        let Some(cached) = self.topics.get_mut(&topic).filter(|c| c.gen == gen) else {
            return;
        };
        cached.listing = false;
        let values = match result {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(topic = %topic, error = %e, "presence listing failed");
                if cached.state.loaded {
                    self.resync_at
                        .get_or_insert(Instant::now() + self.timing.resync);
                } else {
                    for w in cached.waiters.drain(..) {
                        match w {
                            Waiter::List(reply) => {
                                let _ = reply.send(Err(StoreError(e.0.clone())));
                            }
                            Waiter::Push { reply, .. } => {
                                let _ = reply.send(Err(StoreError(e.0.clone())));
                            }
                        }
                    }
                    self.topics.remove(&topic);
                }
                return;
            }
        };
        self.seq += 1;
        let first = !cached.state.loaded;
        let (added, removed) = cached
            .state
            .merge(decode_listing(&values), since, self.seq, !first);
        cached.state.loaded = true;
        if !first && added + removed > 0 {
            tracing::info!(topic = %topic, added, removed, "presence reconciled with the store");
            self.changed(&topic);
        }
        let Some(cached) = self.topics.get_mut(&topic) else {
            return;
        };
        for w in cached.waiters.drain(..) {
            match w {
                Waiter::List(reply) => {
                    let _ = reply.send(Ok(cached.state.encode()));
                }
                Waiter::Push {
                    conn,
                    join_ref,
                    reply,
                } => {
                    push_state(&topic, &mut cached.state, &conn, join_ref.as_deref());
                    let _ = reply.send(Ok(()));
                }
            }
        }
    }

    /// Lists every topic this pod holds a state of again, to correct what
    /// missed diffs got wrong; drops the states of topics without local
    /// subscribers. Only a shared store can differ from the local states.
    fn reconcile(&mut self) {
        let hub = self.hub.clone();
        self.topics
            .retain(|t, c| !c.waiters.is_empty() || c.listing || hub.subscribers(t) > 0);
        let mut topics = Vec::new();
        for (t, c) in &mut self.topics {
            c.state.rotate();
            if self.shared && c.state.loaded && !c.listing {
                c.listing = true;
                topics.push((t.clone(), c.gen));
            }
        }
        if !topics.is_empty() {
            spawn_listings(self.store.clone(), topics, self.seq, self.listed.clone());
        }
    }

    /// Removes every presence of this pod and publishes the leaves, so a pod
    /// that stops cleanly leaves no one waiting for the reaper.
    async fn shutdown(&mut self) {
        let mut ops = Vec::with_capacity(self.local.len());
        for (_, local) in std::mem::take(&mut self.local) {
            ops.push(delete(&local.topic, &local.entry));
            self.local_leave(&local.topic, local.entry.phx_ref());
            if let Some(d) = self.publishing(&local.topic) {
                d.leave(local.entry);
            }
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

    /// The end of a window: this pod's changes to the other pods, and every
    /// topic's changes to this pod's clients, one `presence_diff` each.
    async fn flush(&mut self) {
        self.flush_at = None;
        self.dispatch();
        self.publish().await;
    }

    /// Queues each changed topic's pending diff on its local subscribers.
    fn dispatch(&mut self) {
        for topic in std::mem::take(&mut self.dirty) {
            let Some(c) = self.topics.get_mut(&topic) else {
                continue;
            };
            if let Some(payload) = c.state.take_pending() {
                self.hub.dispatch(&Broadcast {
                    topic: topic.to_string(),
                    event: "presence_diff".into(),
                    payload: Payload::Json(Json::from_trusted(payload)),
                    from: None,
                });
            }
        }
    }

    /// Publishes one `presence_diff` per topic with changes of this pod.
    async fn publish(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let mut failed = Vec::new();
        for (topic, diff) in pending {
            if diff.is_empty() {
                continue;
            }
            let payload = Payload::json(&diff.payload());
            let Payload::Json(json) = &payload else {
                continue;
            };
            let published = match self.store.publish_diff(&topic, json.bytes()).await {
                Ok(true) => Ok(()),
                Ok(false) => {
                    let msg = Broadcast {
                        topic: topic.clone(),
                        event: "presence_diff".into(),
                        payload,
                        from: None,
                    };
                    self.broker.publish(msg).await.map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = published {
                tracing::warn!(topic, error = %e, "presence_diff not published; will retry");
                failed.push((topic, diff));
            }
        }
        if !failed.is_empty() {
            for (topic, diff) in failed {
                self.pending.entry(topic).or_default().prepend(diff);
            }
            let retry = Instant::now() + RETRY.max(self.timing.batch);
            self.flush_at = Some(self.flush_at.map_or(retry, |at| at.max(retry)));
        }
    }

    /// After a successful liveness refresh: re-announce if it had lapsed,
    /// retry failed writes, and reconcile if messages may have been lost.
    async fn beat(&mut self, beat: Beat) {
        let lapsed = !beat.alive && self.announced;
        self.liveness.send_modify(|l| {
            l.beats += 1;
            l.lapses += u64::from(lapsed);
        });
        if lapsed {
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
            self.local_leave(&topic, old.phx_ref());
            self.local_join(&topic, change(&new));
            if let Some(d) = self.publishing(&topic) {
                d.leave(old);
                d.join(new);
            }
        }
        self.write(ops).await;
        self.list_new();
    }

    /// Removes the presences of dead pods and publishes their leaves at once
    /// (other pods still hold them for their clients' next window).
    async fn reap(&mut self) {
        match self.store.reap().await {
            Ok(removed) if !removed.is_empty() => {
                for (topic, entry) in removed {
                    match serde_json::from_slice::<Entry>(&entry) {
                        Ok(e) => {
                            self.local_leave(&topic, e.phx_ref());
                            if let Some(d) = self.publishing(&topic) {
                                d.leave(e);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(topic, error = %e, "reaped a malformed presence entry")
                        }
                    }
                }
                self.publish().await;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "presence reap failed"),
        }
    }
}

/// Queues the topic's `presence_state` on a client's connection, from this
/// task so that it precedes every diff dispatched after it.
fn push_state(topic: &str, state: &mut TopicState, conn: &ConnHandle, join_ref: Option<&str>) {
    let payload = Payload::Json(Json::from_trusted(state.state()));
    conn.push(topic, join_ref, "presence_state", &payload);
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
