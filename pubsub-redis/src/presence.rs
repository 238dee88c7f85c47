//! Presence storage in Redis, with per-pod liveness so that the entries of a
//! pod that died without cleaning up are removed by the survivors.
//!
//! Keys (all under the bus prefix, `phx:` by default):
//!
//! | key | type | content |
//! |---|---|---|
//! | `{prefix}presence:{topic}` | hash | field = entry ref, value = opaque entry (the gateway's JSON) |
//! | `{prefix}presence-pod:{pod}` | hash | field = entry ref, value = topic: what a pod holds |
//! | `{prefix}presence-alive:{pod}` | string with a TTL | exists while the pod refreshes it |
//! | `{prefix}presence-pods` | set | every pod that may hold entries |
//!
//! A write is O(1) per entry (two hash fields, on a connection of its own),
//! a listing is one HGETALL of the topic, and reaping a dead pod is one Lua script that first checks the
//! pod's liveness key, so a pod that came back in time is never reaped and
//! only one survivor receives (and announces) the removed entries.
//!
//! This module stores bytes; it knows nothing of Phoenix's presence shapes.

use crate::dedicated::Dedicated;
use crate::{Error, RedisBus};
use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::Value;
use std::time::Duration;

/// One change to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Stores `value` under `entry` in `topic`, held by this pod.
    Put {
        /// The topic.
        topic: String,
        /// The entry's unique ref.
        entry: String,
        /// The opaque entry.
        value: Bytes,
    },
    /// Removes `entry` from `topic`.
    Delete {
        /// The topic.
        topic: String,
        /// The entry's unique ref.
        entry: String,
    },
}

/// Removes a dead pod's entries if, and only if, its liveness key is gone.
/// KEYS: alive key, pod index, pods set. ARGV: topic hash prefix, pod id.
/// Returns `[topic, value, topic, value, ...]` of what it removed.
const REAP: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return {} end
local idx = redis.call('HGETALL', KEYS[2])
local out = {}
for i = 1, #idx, 2 do
  local h = ARGV[1] .. idx[i + 1]
  local v = redis.call('HGET', h, idx[i])
  if v then
    redis.call('HDEL', h, idx[i])
    out[#out + 1] = idx[i + 1]
    out[#out + 1] = v
  end
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[2])
return out
";

/// The liveness key of `pod`, which presence refreshes and lifecycle reads.
pub(crate) fn alive_key(prefix: &str, pod: &str) -> String {
    format!("{prefix}presence-alive:{pod}")
}

/// Presence storage for one pod.
#[derive(Clone)]
pub struct PresenceStore {
    /// The liveness refresh has a connection of its own: queued behind
    /// large listings in a busy pool it could miss its deadline, and the pod
    /// would be reaped although alive.
    liveness: Dedicated,
    /// Writes have one too: every checkout of a pooled connection costs two
    /// more commands (deadpool's UNWATCH and PING), as many as a join's
    /// write itself.
    writer: Dedicated,
    /// And listings: a large topic's HGETALL takes longer than a pooled
    /// connection waits for a reply (redis-rs's 500 ms), and must not hold
    /// up the writes behind it.
    reader: Dedicated,
    prefix: String,
    pod: String,
}

impl std::fmt::Debug for PresenceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceStore")
            .field("prefix", &self.prefix)
            .field("pod", &self.pod)
            .finish_non_exhaustive()
    }
}

impl PresenceStore {
    /// Storage for pod `pod` (unique per process start, so a restarted pod
    /// never inherits the entries of its previous life) on `bus`'s Redis.
    ///
    /// # Errors
    /// [`Error::Config`] on a Redis Cluster: reaping runs one script over
    /// keys of many slots, which a cluster refuses.
    pub fn new(bus: &RedisBus, pod: impl Into<String>) -> Result<Self, Error> {
        let client = Dedicated::single_server(bus, "presence")?;
        Ok(PresenceStore {
            liveness: Dedicated::new(&client, bus.timeout, "liveness refresh"),
            writer: Dedicated::new(&client, bus.timeout, "presence command"),
            reader: Dedicated::new(&client, bus.timeout, "presence command"),
            prefix: bus.prefix.to_string(),
            pod: pod.into(),
        })
    }

    /// This pod's id.
    pub fn pod(&self) -> &str {
        &self.pod
    }

    fn topic_key(&self, topic: &str) -> String {
        format!("{}presence:{topic}", self.prefix)
    }

    fn index_key(&self, pod: &str) -> String {
        format!("{}presence-pod:{pod}", self.prefix)
    }

    fn alive_key(&self, pod: &str) -> String {
        alive_key(&self.prefix, pod)
    }

    fn pods_key(&self) -> String {
        format!("{}presence-pods", self.prefix)
    }

    /// Runs `cmd` on the connection for listings and reaping.
    async fn read<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Error> {
        self.reader.query(cmd).await
    }

    /// Applies `ops` in order, in one round trip.
    ///
    /// # Errors
    /// When Redis is unreachable or refuses; the ops may be partly applied,
    /// and are safe to apply again (they are idempotent).
    ///
    /// # Cancel safety
    /// Not atomic: a cancelled call may have applied some ops. Apply them
    /// again.
    pub async fn write(&self, ops: &[Op]) -> Result<(), Error> {
        if ops.is_empty() {
            return Ok(());
        }
        let index = self.index_key(&self.pod);
        let mut pipe = redis::pipe();
        for op in ops {
            match op {
                Op::Put {
                    topic,
                    entry,
                    value,
                } => {
                    pipe.hset(self.topic_key(topic), entry, value.as_ref())
                        .ignore()
                        .hset(&index, entry, topic)
                        .ignore();
                }
                Op::Delete { topic, entry } => {
                    pipe.hdel(self.topic_key(topic), entry)
                        .ignore()
                        .hdel(&index, entry)
                        .ignore();
                }
            }
        }
        self.writer.query_pipe::<()>(&pipe).await
    }

    /// Publishes `envelope` on `topic`'s channel (`{prefix}{topic}`, as the
    /// bus does) over the write connection: a pooled checkout would add two
    /// commands to each of presence's per-window publications.
    ///
    /// # Errors
    /// When Redis is unreachable or refuses.
    pub async fn publish(&self, topic: &str, envelope: &[u8]) -> Result<(), Error> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(format!("{}{topic}", self.prefix)).arg(envelope);
        self.writer.query::<i64>(&cmd).await.map(|_| ())
    }

    /// Every entry of `topic`: (ref, value). One HGETALL, O(entries), on a
    /// connection of its own that waits as long as the bus's timeout.
    ///
    /// # Errors
    /// When Redis is unreachable or refuses.
    pub async fn list(&self, topic: &str) -> Result<Vec<(String, Bytes)>, Error> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.topic_key(topic));
        let map: Vec<(String, Vec<u8>)> = self.read(&cmd).await?;
        Ok(map.into_iter().map(|(k, v)| (k, Bytes::from(v))).collect())
    }

    /// Refreshes this pod's liveness for `ttl`. Returns `false` when the key
    /// had expired or vanished (first call, a Redis restart, or a stall
    /// longer than `ttl`): survivors may have reaped this pod's entries, so
    /// the caller must write everything it holds again. The key is set again
    /// either way, so reapers stop considering this pod dead.
    ///
    /// # Errors
    /// When Redis is unreachable or refuses.
    pub async fn heartbeat(&self, ttl: Duration) -> Result<bool, Error> {
        self.liveness
            .run(|mut conn| async move { self.refresh(&mut conn, ttl).await })
            .await
    }

    async fn refresh(
        &self,
        conn: &mut MultiplexedConnection,
        ttl: Duration,
    ) -> Result<bool, Error> {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let alive = self.alive_key(&self.pod);
        let refreshed: i64 = redis::cmd("PEXPIRE")
            .arg(&alive)
            .arg(ttl_ms)
            .query_async(conn)
            .await?;
        if refreshed == 1 {
            return Ok(true);
        }
        redis::pipe()
            .cmd("SET")
            .arg(&alive)
            .arg(1)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .sadd(self.pods_key(), &self.pod)
            .ignore()
            .query_async::<()>(conn)
            .await?;
        Ok(false)
    }

    /// Other pods listed as holding entries whose liveness key is gone.
    ///
    /// # Errors
    /// When Redis is unreachable or refuses.
    pub async fn dead_pods(&self) -> Result<Vec<String>, Error> {
        let mut smembers = redis::cmd("SMEMBERS");
        smembers.arg(self.pods_key());
        let pods: Vec<String> = self.read(&smembers).await?;
        let others: Vec<String> = pods.into_iter().filter(|p| *p != self.pod).collect();
        if others.is_empty() {
            return Ok(others);
        }
        let mut pipe = redis::pipe();
        for p in &others {
            pipe.exists(self.alive_key(p));
        }
        let alive: Vec<bool> = self.reader.query_pipe(&pipe).await?;
        Ok(others
            .into_iter()
            .zip(alive)
            .filter(|(_, alive)| !alive)
            .map(|(p, _)| p)
            .collect())
    }

    /// Removes the entries of `pod` if its liveness key is still gone, and
    /// returns them as (topic, value). Exactly one caller gets them; others
    /// (and calls for a pod that came back) get nothing.
    ///
    /// # Errors
    /// When Redis is unreachable or refuses.
    ///
    /// # Cancel safety
    /// A call cancelled after Redis ran the script loses the removed entries
    /// (nobody announces their leaves); the caller should not cancel it.
    pub async fn reap(&self, pod: &str) -> Result<Vec<(String, Bytes)>, Error> {
        // EVAL rather than EVALSHA: the script is small and reaping is rare.
        let mut eval = redis::cmd("EVAL");
        eval.arg(REAP)
            .arg(3)
            .arg(self.alive_key(pod))
            .arg(self.index_key(pod))
            .arg(self.pods_key())
            .arg(format!("{}presence:", self.prefix))
            .arg(pod);
        let out: Vec<Value> = self.read(&eval).await?;
        let mut removed = Vec::with_capacity(out.len() / 2);
        let mut it = out.into_iter();
        while let (Some(Value::BulkString(topic)), Some(Value::BulkString(value))) =
            (it.next(), it.next())
        {
            removed.push((
                String::from_utf8_lossy(&topic).into_owned(),
                Bytes::from(value),
            ));
        }
        Ok(removed)
    }
}
