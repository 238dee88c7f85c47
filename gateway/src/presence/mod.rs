//! Presence: who is in a topic, on every pod, as `Phoenix.Presence` tells
//! it to phoenix.js.
//!
//! Channels track presences through their
//! [`ChannelContext`](crate::ChannelContext) (`track`, `update`, `untrack`,
//! `push_presence_state`); a presence ends with its channel at the latest.
//! Each pod runs one actor (`actor`) that writes entries to a store (`store`:
//! this process, or Redis shared by all pods), publishes the changes of a
//! topic to the other pods as one `presence_diff` per batch window through
//! the broker, and keeps the state of every topic it serves in memory
//! (`local`), from which joins get their `presence_state` and this pod's
//! clients one `presence_diff` per window. In Redis every pod keeps a
//! liveness key; survivors remove the entries of a pod whose key expired and
//! publish their `leaves`; every pod reconciles its states with Redis
//! periodically.
//!
//! This module must not block channels: tracking only queues a command, and
//! only the first listing of a topic waits for the store. It sits above the
//! pubsub: it publishes like any publisher, and takes presence diffs and
//! vacated topics from the hub through `PresenceTap`, an interface the hub
//! owns.

mod actor;
mod diff;
mod local;
mod store;
mod timing;

pub use timing::MIN_BATCH;

use crate::conn::ConnHandle;
use crate::pubsub::{Hub, PubSub};
use actor::{Actor, Cmd, Tap};
use parking_lot::Mutex;
use serde_json::{Map, Value};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use timing::Timing;
use tokio::sync::{mpsc, oneshot, watch};

use store::{MemoryStore, RedisStore, Store, Unsupported};

/// Presence settings (`[presence]` in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceConfig {
    /// Changes of a topic are collected this long and published as one
    /// `presence_diff`, so a storm of joins costs one broadcast per window,
    /// not one per join, and each client gets at most one diff per window.
    /// At least [`MIN_BATCH`] (shorter counts as that). Default 100 ms.
    pub batch: Duration,
    /// A pod that dies without cleaning up has its presences removed and
    /// their `leaves` published within this time. Default 30 s.
    pub pod_timeout: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            batch: MIN_BATCH,
            pod_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a presence call failed.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// This channel already tracks this key (use `update`).
    #[error("presence key {0:?} is already tracked by this channel")]
    AlreadyTracked(String),
    /// This channel does not track this key.
    #[error("presence key {0:?} is not tracked by this channel")]
    NotTracked(String),
    /// Metas are JSON objects.
    #[error("presence meta must be a JSON object")]
    InvalidMeta,
    /// The store cannot answer (Redis is down); try again later.
    #[error("presence unavailable: {0}")]
    Unavailable(String),
}

/// This pod's liveness refreshes so far, as presence's heartbeat made them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Liveness {
    /// Successful refreshes of the liveness key.
    pub(crate) beats: u64,
    /// Refreshes that found the key gone after it had been set (Redis lost
    /// it, or this pod stalled past its lifetime and may have been reaped).
    pub(crate) lapses: u64,
}

/// Identifies one tracked presence of this pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TrackId(u64);

/// This pod's presence service, shared by every channel of an endpoint.
/// Cheap to clone.
#[derive(Clone)]
pub struct Presence {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::UnboundedSender<Cmd>,
    /// The actor, until the first command starts it: building a pubsub
    /// needs no runtime, using it does.
    idle: Mutex<Option<(Actor, mpsc::UnboundedReceiver<Cmd>)>>,
    /// Where the actor takes presence diffs and vacated topics from.
    hub: Arc<Hub>,
    started: AtomicBool,
    next_id: AtomicU64,
    liveness: watch::Receiver<Liveness>,
}

impl fmt::Debug for Presence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Presence")
            .field("started", &self.inner.started.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Presence {
    /// Presence over `pubsub`: kept in Redis and shared by every pod when
    /// the pubsub runs on Redis (a single server or a cluster), in this
    /// process otherwise (it covers this node only, whatever the broker).
    /// Its actor starts on first use, so building one needs no runtime.
    pub fn new(pubsub: &PubSub, config: PresenceConfig) -> Self {
        let shared = pubsub.redis_broker().is_some();
        let store: Arc<dyn Store> = match pubsub.redis_broker() {
            Some(redis) => match RedisStore::new(redis.bus(), redis.node()) {
                Ok(s) => Arc::new(s),
                Err(e) => Arc::new(Unsupported(e.0)),
            },
            None => Arc::new(MemoryStore::default()),
        };
        let timing = Timing::new(config.batch, config.pod_timeout);
        let (liveness_tx, liveness) = watch::channel(Liveness::default());
        let actor = Actor::new(
            store,
            pubsub.hub().clone(),
            pubsub.broker().clone(),
            timing,
            shared,
            liveness_tx,
        );
        let (tx, rx) = mpsc::unbounded_channel();
        Presence {
            inner: Arc::new(Inner {
                tx,
                idle: Mutex::new(Some((actor, rx))),
                hub: pubsub.hub().clone(),
                started: AtomicBool::new(false),
                next_id: AtomicU64::new(1),
                liveness,
            }),
        }
    }

    /// This pod's liveness refreshes, starting the actor (and with it the
    /// heartbeat and the reaper) if nothing did yet: lifecycle events rely on
    /// the liveness key even where no rule uses presence.
    pub(crate) fn liveness(&self) -> watch::Receiver<Liveness> {
        self.start();
        self.inner.liveness.clone()
    }

    fn send(&self, cmd: Cmd) {
        if !self.start() {
            return;
        }
        let _ = self.inner.tx.send(cmd);
    }

    /// Starts the actor on first use; false outside a tokio runtime.
    fn start(&self) -> bool {
        if !self.inner.started.load(Ordering::Acquire) {
            if let Some((actor, rx)) = self.inner.idle.lock().take() {
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(actor.run(rx));
                        self.inner
                            .hub
                            .set_presence_tap(Box::new(Tap(self.inner.tx.downgrade())));
                    }
                    Err(_) => {
                        tracing::error!("presence used outside a tokio runtime");
                        return false;
                    }
                }
            }
            self.inner.started.store(true, Ordering::Release);
        }
        true
    }

    /// Tracks a presence of `key` in `topic` with `meta` (an object, to which
    /// `phx_ref` is added).
    pub(crate) fn track(&self, topic: Arc<str>, key: String, meta: Map<String, Value>) -> TrackId {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.send(Cmd::Track {
            id,
            topic,
            key,
            meta,
        });
        TrackId(id)
    }

    /// Replaces the meta of a tracked presence (new `phx_ref`, the old one in
    /// `phx_ref_prev`).
    pub(crate) fn update(&self, id: TrackId, meta: Map<String, Value>) {
        self.send(Cmd::Update { id: id.0, meta });
    }

    /// Ends a tracked presence.
    pub(crate) fn untrack(&self, id: TrackId) {
        self.send(Cmd::Untrack { id: id.0 });
    }

    /// Ends every presence of this pod and publishes their leaves, for a
    /// clean stop; presence does nothing afterwards. Resolves when the leaves
    /// are published (or could not be).
    ///
    /// # Cancel safety
    /// Cancel-safe: the removal goes on without the caller.
    pub async fn shutdown(&self) {
        let (done, rx) = oneshot::channel();
        self.send(Cmd::Shutdown(done));
        let _ = rx.await;
    }

    /// Everyone present in `topic`, on every pod, in the `presence_state`
    /// shape `{"key": {"metas": [...]}}`. Includes every change this pod
    /// made before the call.
    ///
    /// # Errors
    /// [`PresenceError::Unavailable`] when the store cannot answer.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future drops only the answer.
    pub async fn list(&self, topic: &str) -> Result<Map<String, Value>, PresenceError> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::List {
            topic: Arc::from(topic),
            reply,
        });
        let state = rx
            .await
            .map_err(|_| PresenceError::Unavailable("presence stopped".into()))?
            .map_err(|e| PresenceError::Unavailable(e.0))?;
        serde_json::from_slice(&state).map_err(|e| PresenceError::Unavailable(e.to_string()))
    }

    /// Queues `topic`'s `presence_state` on `conn` (with `join_ref`), from
    /// this pod's local state of the topic, before any diff dispatched
    /// after it. Resolves once it is queued.
    pub(crate) async fn push_state(
        &self,
        topic: Arc<str>,
        conn: ConnHandle,
        join_ref: Option<Arc<str>>,
    ) -> Result<(), PresenceError> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::PushState {
            topic,
            conn,
            join_ref,
            reply,
        });
        rx.await
            .map_err(|_| PresenceError::Unavailable("presence stopped".into()))?
            .map_err(|e| PresenceError::Unavailable(e.0))
    }
}

/// **For benchmarks only** (`gateway/benches/hot_paths.rs`); not part of
/// the API and may change or vanish at any time.
///
/// A topic's local state, as a pod keeps it, to time what a join and a
/// received diff cost in a large topic.
#[doc(hidden)]
pub mod bench {
    use super::local::{decode_diff, Change, TopicState};
    use std::sync::Arc;

    /// A topic's local state.
    #[derive(Debug, Default)]
    pub struct Topic {
        state: TopicState,
        seq: u64,
    }

    /// A meta as the rule channels write it.
    fn change(key: &str, r: &str) -> Change {
        let meta = format!(r#"{{"online_at":"1763790000","phx_ref":"{r}"}}"#);
        (Arc::from(r), Arc::from(key), Arc::from(meta))
    }

    impl Topic {
        /// A topic of `n` presences, keys `user{i}`.
        pub fn with(n: usize) -> Topic {
            let mut t = Topic::default();
            for i in 0..n {
                t.seq += 1;
                let c = change(&format!("user{i}"), &format!("ref{i:018}"));
                t.state.join(c, t.seq, false);
            }
            t.state.loaded = true;
            t
        }

        /// Presences held.
        pub fn len(&self) -> usize {
            self.state.len()
        }

        /// Whether it holds none.
        pub fn is_empty(&self) -> bool {
            self.state.len() == 0
        }

        /// Encodes the `presence_state` afresh (as the first join after a
        /// window does); its size in bytes.
        pub fn encode_state(&mut self) -> usize {
            self.state.encode().len()
        }

        /// Applies a `presence_diff` payload as a pod receives it, then
        /// takes the diff its clients get; that diff's size in bytes.
        /// Forgets the refs that left two diffs ago (a pod does so per
        /// reconcile), so that memory stays flat over many iterations.
        pub fn apply_diff(&mut self, payload: &[u8]) -> usize {
            self.state.rotate();
            let Ok((joins, leaves)) = decode_diff(payload) else {
                return 0;
            };
            for c in joins {
                self.seq += 1;
                self.state.join(c, self.seq, true);
            }
            for (r, _, _) in leaves {
                self.state.leave(&r);
            }
            self.state.take_pending().map_or(0, |p| p.len())
        }
    }

    /// A `presence_diff` payload with `n` joins of fresh refs (from `from`)
    /// and the leaves of the `n` refs before them, as a busy topic's pod
    /// publishes per window.
    pub fn diff(from: usize, n: usize) -> Vec<u8> {
        let side = |range: std::ops::Range<usize>| {
            let mut m = serde_json::Map::new();
            for i in range {
                let meta = serde_json::json!({"online_at": "1763790000", "phx_ref": format!("ref{i:018}")});
                m.insert(format!("user{i}"), serde_json::json!({"metas": [meta]}));
            }
            serde_json::Value::Object(m)
        };
        serde_json::to_vec(&serde_json::json!({
            "joins": side(from..from + n),
            "leaves": side(from.saturating_sub(n)..from),
        }))
        .unwrap_or_default()
    }
}
