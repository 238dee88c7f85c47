//! Connection counts of the fleet: each pod reports its own count and reads
//! everyone's in one round trip. Rebalancing after a scale-out reads them,
//! and the admin API's roster of pods, which names the pods that did not
//! answer a fleet-wide question.
//!
//! Keys (under the bus prefix, `phx:` by default):
//!
//! | key | type | content |
//! |---|---|---|
//! | `{prefix}rebalance` | hash | field = pod id, value = `count:ms` (the count, and Redis' clock in ms when it was written) |
//! | `{prefix}admin:pods` | hash | the same, for the pods that serve the admin API |
//!
//! One key, so one slot: the script runs as it is on a Redis Cluster. The
//! timestamps are Redis' own (`TIME`), so pods' clocks never matter. An
//! entry older than the caller's `stale` is not counted and is deleted by
//! whoever sees it, so a pod that died drops out within `stale`; the whole
//! hash expires `stale` after the last report, so a fleet that is gone
//! leaves nothing behind.

use crate::{Error, RedisBus};
use std::time::Duration;

/// Rebalancing's hash, under the prefix.
const REBALANCE: &str = "rebalance";

/// Writes (or removes, when ARGV[2] is empty) this pod's entry, drops stale
/// ones, and returns the fresh ones as field/count pairs. KEYS: the hash.
/// ARGV: pod id, count or "", stale in ms.
const REPORT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale = tonumber(ARGV[3])
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. now)
end
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local c, at = string.match(all[i + 1], '^(%d+):(%d+)$')
  if c and now - tonumber(at) <= stale then
    out[#out + 1] = all[i]
    out[#out + 1] = c
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
if #out > 0 then
  redis.call('PEXPIRE', KEYS[1], stale)
end
return out
";

/// One pod's reported connection count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLoad {
    /// The id the pod reported under.
    pub pod: String,
    /// Its open connections when it reported.
    pub connections: u64,
}

impl RedisBus {
    /// Reports that pod `pod` holds `connections` and returns every pod's
    /// count reported within `stale` (this one's included), in one script.
    /// Entries older than `stale` are deleted on the way.
    ///
    /// # Errors
    /// When Redis is unreachable or refuses the script.
    pub async fn report_load(
        &self,
        pod: &str,
        connections: u64,
        stale: Duration,
    ) -> Result<Vec<PodLoad>, Error> {
        self.report_in(REBALANCE, pod, connections, stale).await
    }

    /// As [`report_load`](Self::report_load), in the roster `hash` (a name
    /// under the prefix) rather than rebalancing's.
    ///
    /// # Errors
    /// When Redis is unreachable or refuses the script.
    pub async fn report_in(
        &self,
        hash: &str,
        pod: &str,
        connections: u64,
        stale: Duration,
    ) -> Result<Vec<PodLoad>, Error> {
        self.run_report(hash, pod, &connections.to_string(), stale)
            .await
    }

    /// Removes pod `pod`'s count (it is draining or stopping, so its
    /// connections are about to move) and returns the others' as
    /// [`report_load`](Self::report_load) does.
    ///
    /// # Errors
    /// When Redis is unreachable or refuses the script.
    pub async fn withdraw_load(&self, pod: &str, stale: Duration) -> Result<Vec<PodLoad>, Error> {
        self.run_report(REBALANCE, pod, "", stale).await
    }

    async fn run_report(
        &self,
        hash: &str,
        pod: &str,
        count: &str,
        stale: Duration,
    ) -> Result<Vec<PodLoad>, Error> {
        let stale_ms = stale.as_millis().max(1).to_string();
        // EVAL rather than EVALSHA: the script is small and runs once a
        // round (seconds) per pod.
        let mut eval = redis::cmd("EVAL");
        eval.arg(REPORT)
            .arg(1)
            .arg(self.channel(hash))
            .arg(pod)
            .arg(count)
            .arg(stale_ms);
        let pairs: Vec<(String, u64)> = self.query(&eval).await?;
        Ok(pairs
            .into_iter()
            .map(|(pod, connections)| PodLoad { pod, connections })
            .collect())
    }
}
