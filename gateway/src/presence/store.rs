//! Where presence entries live: in this process (one pod, the in-memory
//! broker) or in Redis (every pod, `pubsub_redis::PresenceStore`).
//!
//! A store holds opaque entries by topic and ref. Writes are idempotent, so
//! a batch that failed can be written again as a whole.

use async_trait::async_trait;
use bytes::Bytes;
use indexmap::IndexMap;
use parking_lot::Mutex;
use pubsub_redis::presence::Op;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// A store failure; presence retries writes and refuses listings.
#[derive(Debug, thiserror::Error)]
#[error("presence store unavailable: {0}")]
pub(crate) struct StoreError(pub(crate) String);

impl From<pubsub_redis::Error> for StoreError {
    fn from(e: pubsub_redis::Error) -> Self {
        StoreError(e.to_string())
    }
}

/// Storage of presence entries shared by every pod that uses it.
#[async_trait]
pub(crate) trait Store: Send + Sync + fmt::Debug + 'static {
    /// Applies `ops` in order.
    async fn write(&self, ops: &[Op]) -> Result<(), StoreError>;

    /// Every entry of `topic` as (ref, value).
    async fn list(&self, topic: &str) -> Result<Vec<(String, Bytes)>, StoreError>;

    /// Refreshes this pod's liveness; `false` when it had lapsed, so the
    /// entries this pod holds may be gone and must be written again.
    async fn heartbeat(&self, ttl: Duration) -> Result<bool, StoreError>;

    /// Removes the entries of pods whose liveness lapsed and returns them as
    /// (topic, value); each removed entry is returned to one caller only.
    async fn reap(&self) -> Result<Vec<(String, Bytes)>, StoreError>;

    /// Changes whenever messages may have been lost (the Redis subscriber
    /// reconnected), so local states need a reconcile.
    fn epoch(&self) -> u64;

    /// Publishes a `presence_diff` payload of `topic` to every pod itself;
    /// `Ok(false)` when it cannot, and the broker must.
    async fn publish_diff(&self, _topic: &str, _payload: &[u8]) -> Result<bool, StoreError> {
        Ok(false)
    }
}

/// Entries in this process: the single-pod case.
#[derive(Debug, Default)]
pub(crate) struct MemoryStore {
    topics: Mutex<HashMap<String, IndexMap<String, Bytes>>>,
}

#[async_trait]
impl Store for MemoryStore {
    async fn write(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut topics = self.topics.lock();
        for op in ops {
            match op {
                Op::Put {
                    topic,
                    entry,
                    value,
                } => {
                    topics
                        .entry(topic.clone())
                        .or_default()
                        .insert(entry.clone(), value.clone());
                }
                Op::Delete { topic, entry } => {
                    if let Some(t) = topics.get_mut(topic) {
                        t.swap_remove(entry);
                        if t.is_empty() {
                            topics.remove(topic);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn list(&self, topic: &str) -> Result<Vec<(String, Bytes)>, StoreError> {
        Ok(self
            .topics
            .lock()
            .get(topic)
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    async fn heartbeat(&self, _ttl: Duration) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn reap(&self) -> Result<Vec<(String, Bytes)>, StoreError> {
        Ok(Vec::new())
    }

    fn epoch(&self) -> u64 {
        0
    }
}

/// Entries in Redis, shared by every pod.
#[derive(Debug)]
pub(crate) struct RedisStore {
    store: pubsub_redis::PresenceStore,
    stats: Arc<pubsub_redis::Stats>,
}

impl RedisStore {
    pub(crate) fn new(bus: &pubsub_redis::RedisBus, pod: &str) -> Result<Self, StoreError> {
        Ok(RedisStore {
            store: pubsub_redis::PresenceStore::new(bus, pod)?,
            stats: bus.stats().clone(),
        })
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn write(&self, ops: &[Op]) -> Result<(), StoreError> {
        Ok(self.store.write(ops).await?)
    }

    async fn list(&self, topic: &str) -> Result<Vec<(String, Bytes)>, StoreError> {
        Ok(self.store.list(topic).await?)
    }

    async fn heartbeat(&self, ttl: Duration) -> Result<bool, StoreError> {
        Ok(self.store.heartbeat(ttl).await?)
    }

    async fn reap(&self) -> Result<Vec<(String, Bytes)>, StoreError> {
        let mut removed = Vec::new();
        for pod in self.store.dead_pods().await? {
            let reaped = self.store.reap(&pod).await;
            if !reaped.removed.is_empty() {
                tracing::info!(
                    pod,
                    entries = reaped.removed.len(),
                    "removed the presences of a dead pod"
                );
            }
            // What was already removed must be returned, or its leaves are lost.
            removed.extend(reaped.removed);
            if let Some(e) = reaped.error {
                tracing::warn!(pod, error = %e, "reaping a dead pod failed; will retry");
                break;
            }
        }
        Ok(removed)
    }

    fn epoch(&self) -> u64 {
        self.stats.reconnects.load(Ordering::Relaxed)
    }

    /// On the store's own connection, in the envelope the broker would
    /// write, marked as presence's.
    async fn publish_diff(&self, topic: &str, payload: &[u8]) -> Result<bool, StoreError> {
        let envelope = pubsub_redis::Envelope::encode_marked("presence_diff", payload, None, true);
        self.store.publish(topic, &envelope).await?;
        Ok(true)
    }
}

/// A store that refuses everything, for a Redis presence cannot use (its
/// store could not be made): joins that need a presence list fail with its
/// reason.
#[derive(Debug)]
pub(crate) struct Unsupported(pub(crate) String);

#[async_trait]
impl Store for Unsupported {
    /// Nothing is kept (a failure would only pile the ops up for retries);
    /// listing fails, so no channel gets a presence list.
    async fn write(&self, _ops: &[Op]) -> Result<(), StoreError> {
        Ok(())
    }

    async fn list(&self, _topic: &str) -> Result<Vec<(String, Bytes)>, StoreError> {
        Err(StoreError(self.0.clone()))
    }

    async fn heartbeat(&self, _ttl: Duration) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn reap(&self) -> Result<Vec<(String, Bytes)>, StoreError> {
        Ok(Vec::new())
    }

    fn epoch(&self) -> u64 {
        0
    }
}
