//! `[redis]`: the broker. A URL selects the Redis bus
//! ([`pubsub_redis::Config`], whose defaults these are); none, the
//! in-memory broker.

use super::{millis, ConfigError, Key};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[redis]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db`; unset means the in-memory broker.
    pub url: Option<String>,
    /// Prefix of every Redis channel. Default `phx:`.
    pub prefix: String,
    /// Use sharded pub/sub on a Redis Cluster. Default false.
    pub cluster: bool,
    /// How long a topic stays subscribed after its last local subscriber
    /// left, milliseconds, so leave-and-rejoin does not flap. Default 2000.
    pub linger_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        let bus = pubsub_redis::Config::new(String::new());
        RedisConfig {
            url: None,
            prefix: bus.prefix,
            cluster: bus.cluster,
            linger_ms: millis(bus.linger),
        }
    }
}

impl RedisConfig {
    /// The bus settings, when a URL is set.
    pub(super) fn settings(&self, key: &Key) -> Result<Option<pubsub_redis::Config>, ConfigError> {
        if let Some(url) = &self.url {
            if !["redis://", "rediss://", "unix://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
            {
                return Err(key
                    .field("url")
                    .invalid(format!("{url:?} must start with redis:// or rediss://")));
            }
        }
        if self.prefix.contains(['*', '?', '[', ']']) {
            return Err(key
                .field("prefix")
                .invalid("must not contain Redis glob characters"));
        }
        if self.cluster && self.prefix.contains(['{', '}']) {
            // A hash tag in the prefix would put every channel and key in
            // one slot, and break presence's per-topic and per-pod tags.
            return Err(key
                .field("prefix")
                .invalid("must not contain { or } with cluster = true"));
        }
        Ok(self.url.as_ref().map(|url| {
            let mut bus = pubsub_redis::Config::new(url.clone());
            bus.prefix = self.prefix.clone();
            bus.linger = Duration::from_millis(self.linger_ms);
            bus.cluster = self.cluster;
            bus
        }))
    }
}
