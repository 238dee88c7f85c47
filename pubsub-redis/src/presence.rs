//! Presence storage in Redis, with per-pod liveness so that the entries of a
//! pod that died without cleaning up are removed by the survivors. Works on
//! a single Redis and on a Redis Cluster alike: every command, pipeline and
//! script touches keys of one slot.
//!
//! Keys (all under the bus prefix, `phx:` by default; `{pod}` is the pod's
//! id, `{alive}` its liveness key's full name, and braces in `{{...}}` are
//! literal: a hash tag, so a cluster keeps a pod's keys in one slot):
//!
//! | key | type | content |
//! |---|---|---|
//! | `{prefix}presence:{{topic}}` | hash | field = entry ref, value = opaque entry (the gateway's JSON) |
//! | `{prefix}presence-alive:{pod}` | string with a TTL | exists while the pod refreshes it (lifecycle reads it too) |
//! | `{prefix}presence-pod:{{alive}}` | hash | field = entry ref, value = topic: what a pod holds |
//! | `{prefix}presence-reaping:{{alive}}` | hash | as the previous one: a dead pod's, moved here by a survivor reaping it |
//! | `{prefix}presence-holders` | set | every pod that may hold entries |
//!
//! A write is O(1) per entry (one hash field of the topic and one of the
//! pod's index, pipelined per key on a connection of its own), a listing is
//! one HGETALL of the topic. Reaping a dead pod takes steps, each in one
//! slot: a script that checks the pod's liveness key and moves its index to
//! its reaping hash (so a pod that came back in time is never reaped), then
//! per topic a script that removes the listed entries and returns those it
//! removed (so each is returned to one survivor only, however many reap at
//! once), then the pod leaves the holders set unless it holds something
//! again. A pod that comes back after it was reaped finds its liveness key
//! gone and writes its entries again under new refs.
//!
//! This module stores bytes; it knows nothing of Phoenix's presence shapes.

use crate::store_conn::{StoreClient, StoreConn};
use crate::{Error, RedisBus};
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use std::collections::HashMap;
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

/// What reaping a dead pod removed, and why it stopped early if it did.
#[derive(Debug, Default)]
pub struct Reaped {
    /// (topic, value) of every entry this call removed, which no other
    /// call returns: its caller announces them.
    pub removed: Vec<(String, Bytes)>,
    /// Set when a step failed: the pod stays listed, and the next call
    /// takes up what is left.
    pub error: Option<Error>,
}

/// Moves a dead pod's index into its reaping hash if, and only if, its
/// liveness key is gone, and returns the reaping hash (ref, topic, ...);
/// nil when the pod is alive. KEYS: alive key, index, reaping hash (one
/// slot). An earlier reaper that stopped midway left the hash: what the
/// index gained since is added to it.
const CLAIM: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
if redis.call('EXISTS', KEYS[2]) == 1 then
  if redis.call('EXISTS', KEYS[3]) == 0 then
    redis.call('RENAME', KEYS[2], KEYS[3])
  else
    local idx = redis.call('HGETALL', KEYS[2])
    for i = 1, #idx, 2 do redis.call('HSET', KEYS[3], idx[i], idx[i + 1]) end
    redis.call('DEL', KEYS[2])
  end
end
return redis.call('HGETALL', KEYS[3])
";

/// Removes the entries ARGV from the topic hash KEYS[1] and returns the
/// values of those it removed: a removed entry is returned once.
const REMOVE: &str = r"
local out = {}
for i = 1, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if v then
    redis.call('HDEL', KEYS[1], ARGV[i])
    out[#out + 1] = v
  end
end
return out
";

/// Refs per removal script: bounds how long one script holds Redis.
const REMOVE_CHUNK: usize = 500;
/// Removal scripts in flight at once while reaping.
const REMOVE_PARALLEL: usize = 16;

/// The liveness key of `pod`, which presence refreshes and lifecycle reads.
/// Not hash-tagged: the pod's other keys are tagged with its full name.
pub(crate) fn alive_key(prefix: &str, pod: &str) -> String {
    format!("{prefix}presence-alive:{pod}")
}

/// Presence storage for one pod.
#[derive(Clone)]
pub struct PresenceStore {
    /// The liveness refresh has a connection of its own: queued behind
    /// large listings it could miss its deadline, and the pod would be
    /// reaped although alive.
    liveness: StoreConn,
    /// Writes have one too, so they never wait behind the publish pool.
    writer: StoreConn,
    /// And listings: a large topic's HGETALL must not hold up the writes
    /// behind it.
    reader: StoreConn,
    /// Diffs go out with `SPUBLISH` on a cluster, as the bus's do.
    cluster: bool,
    prefix: String,
    pod: String,
}

impl std::fmt::Debug for PresenceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceStore")
            .field("prefix", &self.prefix)
            .field("pod", &self.pod)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl PresenceStore {
    /// Storage for pod `pod` (unique per process start, so a restarted pod
    /// never inherits the entries of its previous life) on `bus`'s Redis,
    /// a single server or a cluster.
    ///
    /// # Errors
    /// [`Error::Config`] for a malformed URL, or on a cluster when the
    /// prefix or pod id holds `{` or `}`, which would break the hash tags
    /// that keep a pod's keys in one slot.
    pub fn new(bus: &RedisBus, pod: impl Into<String>) -> Result<Self, Error> {
        let client = StoreClient::of(bus, "presence")?;
        let (prefix, pod) = (bus.prefix.to_string(), pod.into());
        if client.is_cluster() && (prefix.contains(['{', '}']) || pod.contains(['{', '}'])) {
            return Err(Error::Config(
                "presence on a Redis Cluster needs a prefix and pod id without { or }".into(),
            ));
        }
        Ok(PresenceStore {
            liveness: client.connection(bus.timeout, "liveness refresh"),
            writer: client.connection(bus.timeout, "presence command"),
            reader: client.connection(bus.timeout, "presence command"),
            cluster: client.is_cluster(),
            prefix,
            pod,
        })
    }

    /// This pod's id.
    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// The hash of `topic`'s entries, tagged with the topic.
    fn topic_key(&self, topic: &str) -> String {
        format!("{}presence:{{{topic}}}", self.prefix)
    }

    fn alive_key(&self, pod: &str) -> String {
        alive_key(&self.prefix, pod)
    }

    /// What `pod` holds, tagged with its liveness key's name so that both
    /// are in one slot.
    fn index_key(&self, pod: &str) -> String {
        format!("{}presence-pod:{{{}}}", self.prefix, self.alive_key(pod))
    }

    /// A dead pod's index while survivors reap it; in the same slot.
    fn reaping_key(&self, pod: &str) -> String {
        format!(
            "{}presence-reaping:{{{}}}",
            self.prefix,
            self.alive_key(pod)
        )
    }

    fn holders_key(&self) -> String {
        format!("{}presence-holders", self.prefix)
    }

    /// Applies `ops`, in order for each entry, in one pipeline per key (the
    /// topics' hashes and this pod's index), sent at once.
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
        let mut index = redis::pipe();
        let index_key = self.index_key(&self.pod);
        let mut topics: HashMap<&str, redis::Pipeline> = HashMap::new();
        for op in ops {
            match op {
                Op::Put {
                    topic,
                    entry,
                    value,
                } => {
                    topics
                        .entry(topic)
                        .or_insert_with(redis::pipe)
                        .hset(self.topic_key(topic), entry, value.as_ref())
                        .ignore();
                    index.hset(&index_key, entry, topic).ignore();
                }
                Op::Delete { topic, entry } => {
                    topics
                        .entry(topic)
                        .or_insert_with(redis::pipe)
                        .hdel(self.topic_key(topic), entry)
                        .ignore();
                    index.hdel(&index_key, entry).ignore();
                }
            }
        }
        let pipes = topics.values().chain(std::iter::once(&index));
        futures_util::future::try_join_all(pipes.map(|p| self.writer.query_pipe::<()>(p)))
            .await
            .map(|_| ())
    }

    /// Publishes `envelope` on `topic`'s channel (`{prefix}{topic}`, as the
    /// bus does: `SPUBLISH` on a cluster) over the write connection, so
    /// that presence's per-window publications never wait for the pool.
    ///
    /// # Errors
    /// When Redis is unreachable or refuses.
    pub async fn publish(&self, topic: &str, envelope: &[u8]) -> Result<(), Error> {
        let mut cmd = redis::cmd(if self.cluster { "SPUBLISH" } else { "PUBLISH" });
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
        let map: Vec<(String, Vec<u8>)> = self.reader.query(&cmd).await?;
        Ok(map.into_iter().map(|(k, v)| (k, Bytes::from(v))).collect())
    }

    /// Refreshes this pod's liveness for `ttl`. Returns `false` when the key
    /// had expired or vanished (first call, a Redis restart, or a stall
    /// longer than `ttl`): survivors may have reaped this pod's entries, so
    /// the caller must write everything it holds again, under new refs. The
    /// key is set again either way, so reapers stop considering this pod
    /// dead, and the pod is (again) listed among the holders, every time:
    /// a reaper that raced this pod's return may have unlisted it.
    ///
    /// # Errors
    /// When Redis is unreachable or refuses.
    pub async fn heartbeat(&self, ttl: Duration) -> Result<bool, Error> {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let alive = self.alive_key(&self.pod);
        let mut pexpire = redis::cmd("PEXPIRE");
        pexpire.arg(&alive).arg(ttl_ms);
        let refreshed: i64 = self.liveness.query(&pexpire).await?;
        if refreshed != 1 {
            // A reaping hash left by a survivor that stopped midway is
            // stale now: this pod writes its entries again under new refs.
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(&alive)
                .arg(1)
                .arg("PX")
                .arg(ttl_ms)
                .ignore()
                .del(self.reaping_key(&self.pod))
                .ignore();
            self.liveness.query_pipe::<()>(&pipe).await?;
        }
        // After the liveness key is set: a reaper that unlists this pod
        // afterwards sees the key and lists it again.
        let mut sadd = redis::cmd("SADD");
        sadd.arg(self.holders_key()).arg(&self.pod);
        self.liveness.query::<i64>(&sadd).await?;
        Ok(refreshed == 1)
    }

    /// Other pods listed as holding entries whose liveness key is gone.
    ///
    /// # Errors
    /// When Redis is unreachable or refuses.
    pub async fn dead_pods(&self) -> Result<Vec<String>, Error> {
        let mut smembers = redis::cmd("SMEMBERS");
        smembers.arg(self.holders_key());
        let pods: Vec<String> = self.reader.query(&smembers).await?;
        let others: Vec<String> = pods.into_iter().filter(|p| *p != self.pod).collect();
        // One EXISTS per pod, each to its key's slot, all sent at once.
        let exists = others.iter().map(|p| {
            let mut cmd = redis::cmd("EXISTS");
            cmd.arg(self.alive_key(p));
            cmd
        });
        let exists: Vec<redis::Cmd> = exists.collect();
        let alive: Vec<bool> =
            futures_util::future::try_join_all(exists.iter().map(|c| self.reader.query::<bool>(c)))
                .await?;
        Ok(others
            .into_iter()
            .zip(alive)
            .filter(|(_, alive)| !alive)
            .map(|(p, _)| p)
            .collect())
    }

    /// Removes the entries of `pod` if its liveness key is still gone, and
    /// returns them as (topic, value). Each removed entry is returned by
    /// one call only, however many survivors reap at once; a pod that came
    /// back before this call looked is left alone.
    ///
    /// # Cancel safety
    /// A call cancelled after a removal step ran loses the entries that
    /// step removed (nobody announces their leaves); the caller should not
    /// cancel it.
    pub async fn reap(&self, pod: &str) -> Reaped {
        let mut reaped = Reaped::default();
        let claimed = match self.claim(pod).await {
            Ok(Some(c)) => c,
            Ok(None) => return reaped,
            Err(e) => {
                reaped.error = Some(e);
                return reaped;
            }
        };
        let mut by_topic: HashMap<String, Vec<String>> = HashMap::new();
        for (entry, topic) in claimed {
            by_topic.entry(topic).or_default().push(entry);
        }
        let chunks: Vec<(String, Vec<String>)> = by_topic
            .into_iter()
            .flat_map(|(topic, entries)| {
                entries
                    .chunks(REMOVE_CHUNK)
                    .map(|c| (topic.clone(), c.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut steps = stream::iter(chunks)
            .map(|(topic, entries)| async move {
                let removed = self.remove(pod, &topic, &entries).await;
                (topic, removed)
            })
            .buffer_unordered(REMOVE_PARALLEL);
        while let Some((topic, removed)) = steps.next().await {
            match removed {
                Ok(values) => reaped
                    .removed
                    .extend(values.into_iter().map(|v| (topic.clone(), Bytes::from(v)))),
                Err(e) => {
                    reaped.error.get_or_insert(e);
                }
            }
        }
        drop(steps);
        if reaped.error.is_none() {
            if let Err(e) = self.unlist(pod).await {
                reaped.error = Some(e);
            }
        }
        reaped
    }

    /// The first step of [`reap`](Self::reap): `None` when `pod` is alive,
    /// else its claimed entries as (ref, topic).
    async fn claim(&self, pod: &str) -> Result<Option<Vec<(String, String)>>, Error> {
        // EVAL rather than EVALSHA: the script is small and reaping is rare.
        let mut eval = redis::cmd("EVAL");
        eval.arg(CLAIM)
            .arg(3)
            .arg(self.alive_key(pod))
            .arg(self.index_key(pod))
            .arg(self.reaping_key(pod));
        self.reader.query(&eval).await
    }

    /// Removes `entries` of a dead `pod` from `topic`, returning the values
    /// this call removed, then crosses them off the pod's reaping hash.
    async fn remove(
        &self,
        pod: &str,
        topic: &str,
        entries: &[String],
    ) -> Result<Vec<Vec<u8>>, Error> {
        let mut eval = redis::cmd("EVAL");
        eval.arg(REMOVE)
            .arg(1)
            .arg(self.topic_key(topic))
            .arg(entries);
        let values: Vec<Vec<u8>> = self.reader.query(&eval).await?;
        let mut hdel = redis::cmd("HDEL");
        hdel.arg(self.reaping_key(pod)).arg(entries);
        // Crossed off or not, what was removed is returned: a later reaper
        // finds those entries gone and returns nothing for them.
        if let Err(e) = self.reader.query::<i64>(&hdel).await {
            tracing::debug!(pod, error = %e, "crossing reaped presences off failed");
        }
        Ok(values)
    }

    /// The last step of [`reap`](Self::reap): unlists `pod`, then lists it
    /// again if it holds anything meanwhile (it came back, or wrote while
    /// dead): its keys are checked after the SREM, and a pod that came back
    /// sets its liveness key before it lists itself.
    async fn unlist(&self, pod: &str) -> Result<(), Error> {
        let mut srem = redis::cmd("SREM");
        srem.arg(self.holders_key()).arg(pod);
        self.reader.query::<i64>(&srem).await?;
        let mut exists = redis::cmd("EXISTS");
        exists
            .arg(self.alive_key(pod))
            .arg(self.index_key(pod))
            .arg(self.reaping_key(pod));
        let held: i64 = self.reader.query(&exists).await?;
        if held > 0 {
            let mut sadd = redis::cmd("SADD");
            sadd.arg(self.holders_key()).arg(pod);
            self.reader.query::<i64>(&sadd).await?;
        }
        Ok(())
    }
}
