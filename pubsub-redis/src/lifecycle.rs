//! Lifecycle events in Redis streams, and the per-pod record that lets a
//! survivor report a dead pod's connections as disconnected.
//!
//! Keys (all under the bus prefix, `phx:` by default):
//!
//! | key | type | content |
//! |---|---|---|
//! | `{prefix}{stream}` | stream | the events (XADD `MAXLEN ~`) |
//! | `{prefix}lifecycle:{pod}` | hash | field = the pod's own name for a connection and stream, value = JSON (below) |
//! | `{prefix}lifecycle-pods` | set | every pod that may hold such a hash |
//! | `{prefix}presence-alive:{pod}` | string with a TTL | presence's liveness key, read here, never written |
//!
//! A hash value is a JSON object of strings (`stream`, `max_len`, `conn`,
//! `socket_id`, `pod`, `claims`, `topics`), so that the reaping script can
//! copy them into a `disconnect` event without re-encoding JSON.
//!
//! Every write is one Lua script holding the events and the hash changes
//! that go with them, so the hash never disagrees with what the stream
//! says; it writes only while the pod's liveness key exists, so no survivor
//! takes a live pod's fresh hash for a dead pod's. Reaping is one Lua script
//! that first checks the dead pod's liveness key, so exactly one survivor
//! reports it.

use crate::dedicated::Dedicated;
use crate::{Error, RedisBus};
use std::sync::Arc;

/// A change of the pod's hash that goes with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOp {
    /// Sets `field` to `value`.
    Put {
        /// The field.
        field: String,
        /// The JSON value (see the module docs).
        value: String,
    },
    /// Removes `field`.
    Delete {
        /// The field.
        field: String,
    },
}

/// One event to append, and the hash change that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The stream's key, without the prefix.
    pub stream: Arc<str>,
    /// `XADD MAXLEN ~` bound.
    pub max_len: u64,
    /// The event's fields, in order.
    pub fields: Vec<(&'static str, String)>,
    /// What the pod's hash becomes.
    pub hash: Option<HashOp>,
}

/// Reports a dead pod's connections if, and only if, its liveness key is
/// gone: one `disconnect` event per hash entry, then deletes the hash and
/// forgets the pod. KEYS: alive key, the pod's hash, the pods set.
/// ARGV: pod id, the bus prefix, unix ms. Returns how many it reported.
const REAP: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local h = redis.call('HGETALL', KEYS[2])
local n = 0
for i = 1, #h, 2 do
  local ok, e = pcall(cjson.decode, h[i + 1])
  if ok and type(e) == 'table' and type(e.stream) == 'string' then
    redis.call('XADD', ARGV[2] .. e.stream, 'MAXLEN', '~', tostring(e.max_len or 100000), '*',
      'type', 'disconnect', 'conn', tostring(e.conn), 'socket_id', tostring(e.socket_id or ''),
      'pod', tostring(e.pod or ''), 'claims', tostring(e.claims or '{}'),
      'topics', tostring(e.topics or '[]'), 'reason', 'pod_down', 'at', ARGV[3])
    n = n + 1
  end
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
return n
";

/// Appends events and changes the pod's hash, only while the pod's liveness
/// key exists. KEYS: alive key, the pod's hash, the pods set. ARGV: pod id,
/// prefix, then per record: stream, max_len, n, n field/value items, and
/// `put` field value | `del` field | `-`. Returns 1, or 0 if not live.
const WRITE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local i = 3
while i <= #ARGV do
  local n = tonumber(ARGV[i + 2])
  local args = {'XADD', ARGV[2] .. ARGV[i], 'MAXLEN', '~', ARGV[i + 1], '*'}
  for j = 1, n do args[#args + 1] = ARGV[i + 2 + j] end
  redis.call(unpack(args))
  i = i + 3 + n
  if ARGV[i] == 'put' then
    redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif ARGV[i] == 'del' then
    redis.call('HDEL', KEYS[2], ARGV[i + 1])
    i = i + 2
  else
    i = i + 1
  end
end
redis.call('SADD', KEYS[3], ARGV[1])
return 1
";

/// Replaces the pod's hash, only while its liveness key exists. KEYS as
/// [`WRITE`]; ARGV: pod id, prefix, then field/value pairs.
const REWRITE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[2])
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('SADD', KEYS[3], ARGV[1])
return 1
";

/// Lifecycle storage for one pod.
#[derive(Clone)]
pub struct LifecycleStore {
    /// A connection of its own: a batch of events is one round trip that
    /// never waits behind the publishing connections.
    conn: Dedicated,
    prefix: String,
    pod: String,
}

impl std::fmt::Debug for LifecycleStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LifecycleStore")
            .field("prefix", &self.prefix)
            .field("pod", &self.pod)
            .finish_non_exhaustive()
    }
}

impl LifecycleStore {
    /// Storage for pod `pod` (the id presence's liveness key names) on
    /// `bus`'s Redis.
    ///
    /// # Errors
    /// [`Error::Config`] on a Redis Cluster: reaping runs one script over
    /// keys of many slots, which a cluster refuses.
    pub fn new(bus: &RedisBus, pod: impl Into<String>) -> Result<Self, Error> {
        let client = Dedicated::single_server(bus, "lifecycle events")?;
        Ok(LifecycleStore {
            conn: Dedicated::new(&client, bus.timeout, "lifecycle command"),
            prefix: bus.prefix.to_string(),
            pod: pod.into(),
        })
    }

    /// This pod's id.
    pub fn pod(&self) -> &str {
        &self.pod
    }

    fn hash_key(&self, pod: &str) -> String {
        format!("{}lifecycle:{pod}", self.prefix)
    }

    fn alive_key(&self, pod: &str) -> String {
        crate::presence::alive_key(&self.prefix, pod)
    }

    fn pods_key(&self) -> String {
        format!("{}lifecycle-pods", self.prefix)
    }

    /// Appends `records` and applies their hash changes, atomically, in one
    /// round trip — if this pod's liveness key exists. Returns `false`, having
    /// written nothing, when it does not (Redis restarted and the pod's
    /// heartbeat has not set it again): a hash written then could be taken
    /// for a dead pod's.
    ///
    /// # Errors
    /// When Redis is unreachable or refuses; nothing was applied unless
    /// Redis ran the script before the error (a timeout).
    pub async fn write(&self, records: &[&Record]) -> Result<bool, Error> {
        if records.is_empty() {
            return Ok(true);
        }
        let mut eval = self.script(WRITE);
        for r in records {
            eval.arg(&*r.stream).arg(r.max_len).arg(r.fields.len() * 2);
            for (k, v) in &r.fields {
                eval.arg(*k).arg(v);
            }
            match &r.hash {
                Some(HashOp::Put { field, value }) => eval.arg("put").arg(field).arg(value),
                Some(HashOp::Delete { field }) => eval.arg("del").arg(field),
                None => eval.arg("-"),
            };
        }
        self.run(&eval).await
    }

    /// Replaces the pod's hash with `entries` (field, value), atomically,
    /// if its liveness key exists (else `false`): after writes failed, or
    /// Redis lost the hash, so it says again what the pod holds.
    ///
    /// # Errors
    /// When Redis is unreachable or refuses.
    pub async fn rewrite(&self, entries: &[(String, String)]) -> Result<bool, Error> {
        let mut eval = self.script(REWRITE);
        for (f, v) in entries {
            eval.arg(f).arg(v);
        }
        self.run(&eval).await
    }

    /// `EVAL script` over this pod's keys (its liveness key, hash and the
    /// pods set) with its id and the prefix as the first arguments.
    fn script(&self, script: &str) -> redis::Cmd {
        let mut eval = redis::cmd("EVAL");
        eval.arg(script)
            .arg(3)
            .arg(self.alive_key(&self.pod))
            .arg(self.hash_key(&self.pod))
            .arg(self.pods_key())
            .arg(&self.pod)
            .arg(&self.prefix);
        eval
    }

    /// Other pods listed as holding a hash whose liveness key is gone.
    ///
    /// # Errors
    /// When Redis is unreachable or refuses.
    pub async fn dead_pods(&self) -> Result<Vec<String>, Error> {
        // An idle pod's only commands: a failure opens a fresh connection.
        let mut smembers = redis::cmd("SMEMBERS");
        smembers.arg(self.pods_key());
        let pods: Vec<String> = self.conn.query(&smembers).await?;
        let others: Vec<String> = pods.into_iter().filter(|p| *p != self.pod).collect();
        if others.is_empty() {
            return Ok(others);
        }
        let mut pipe = redis::pipe();
        for p in &others {
            pipe.exists(self.alive_key(p));
        }
        let alive: Vec<bool> = self.conn.query_pipe(&pipe).await?;
        Ok(others
            .into_iter()
            .zip(alive)
            .filter(|(_, alive)| !alive)
            .map(|(p, _)| p)
            .collect())
    }

    /// Reports the connections of `pod` as `disconnect` events with reason
    /// `pod_down` (stamped `at_ms`) if its liveness key is still gone, and
    /// returns how many. Exactly one caller reports them; others (and calls
    /// for a pod that came back) get 0.
    ///
    /// # Errors
    /// When Redis is unreachable or refuses.
    pub async fn reap(&self, pod: &str, at_ms: u64) -> Result<u64, Error> {
        // EVAL rather than EVALSHA: the script is small and reaping is rare.
        let mut eval = redis::cmd("EVAL");
        eval.arg(REAP)
            .arg(3)
            .arg(self.alive_key(pod))
            .arg(self.hash_key(pod))
            .arg(self.pods_key())
            .arg(pod)
            .arg(&self.prefix)
            .arg(at_ms);
        self.conn.query::<u64>(&eval).await
    }

    /// Runs a script that answers 1 (done) or 0 (this pod is not live);
    /// once more on a fresh connection when the kept one turns out dead
    /// (Redis restarted since the last command), which would otherwise cost
    /// the first batch after every restart.
    async fn run(&self, eval: &redis::Cmd) -> Result<bool, Error> {
        let kept = self.conn.is_open().await;
        let result = match self.conn.query::<i64>(eval).await {
            Err(Error::Redis(e)) if kept && e.is_connection_dropped() => {
                self.conn.query::<i64>(eval).await
            }
            other => other,
        };
        result.map(|done| done == 1)
    }
}
