//! `[redis]`: the broker. A URL selects the Redis bus
//! ([`pubsub_redis::Config`], whose defaults these are); none, the
//! in-memory broker. TLS files are read and Sentinel's settings checked
//! here, so `gateway --check` finds what the start would trip on.

use super::{millis, ConfigError, Key};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
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
    /// PEM file of the CAs that sign the server's certificate, for a
    /// private CA; unset: the system's trust store. Needs `rediss://`.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers that require one; with
    /// `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Accept any server certificate. Development only. Default false.
    pub tls_insecure: bool,
    /// `[redis.sentinel]`: find the master through Redis Sentinel.
    pub sentinel: Option<SentinelConfig>,
}

/// `[redis.sentinel]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SentinelConfig {
    /// The master's name, as in `sentinel monitor <name> ...`.
    pub master: String,
    /// The sentinels, `host:port`, asked in order.
    pub nodes: Vec<String>,
    /// The sentinels' ACL user, if any.
    pub username: Option<String>,
    /// The sentinels' password, if any (`REDIS_SENTINEL_PASSWORD`
    /// replaces it); the master's comes from the URL.
    pub password: Option<String>,
    /// Speak TLS to the sentinels too. Default false.
    pub tls: bool,
}

impl Default for RedisConfig {
    fn default() -> Self {
        let bus = pubsub_redis::Config::new(String::new());
        RedisConfig {
            url: None,
            prefix: bus.prefix,
            cluster: bus.cluster,
            linger_ms: millis(bus.linger),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_insecure: false,
            sentinel: None,
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
        let Some(url) = &self.url else {
            if self.sentinel.is_some() || self.tls_ca_file.is_some() || self.tls_cert_file.is_some()
            {
                return Err(key
                    .field("url")
                    .invalid("TLS files and [redis.sentinel] need a Redis URL (with Sentinel, for the master's scheme, password and database)"));
            }
            return Ok(None);
        };
        let mut bus = pubsub_redis::Config::new(url.clone());
        bus.prefix = self.prefix.clone();
        bus.linger = Duration::from_millis(self.linger_ms);
        bus.cluster = self.cluster;
        bus.tls.insecure = self.tls_insecure;
        bus.tls.ca = self
            .tls_ca_file
            .as_ref()
            .map(|p| read(key, "tls_ca_file", p))
            .transpose()?;
        bus.tls.client = match (&self.tls_cert_file, &self.tls_key_file) {
            (None, None) => None,
            (Some(cert), Some(k)) => Some((
                read(key, "tls_cert_file", cert)?,
                read(key, "tls_key_file", k)?,
            )),
            _ => {
                return Err(key
                    .field("tls_cert_file")
                    .invalid("set both tls_cert_file and tls_key_file, or neither"))
            }
        };
        if let Some(s) = &self.sentinel {
            let skey = key.field("sentinel");
            if s.master.is_empty() {
                return Err(skey.field("master").invalid("must name the master"));
            }
            if s.nodes.is_empty() {
                return Err(skey
                    .field("nodes")
                    .invalid("must list at least one sentinel"));
            }
            if self.cluster {
                return Err(skey.invalid("Sentinel and redis.cluster exclude each other"));
            }
            bus.sentinel = Some(pubsub_redis::Sentinel {
                master: s.master.clone(),
                nodes: s.nodes.clone(),
                username: s.username.clone(),
                password: s.password.clone(),
                tls: s.tls,
            });
        }
        // Everything the bus would refuse at start, refused now.
        pubsub_redis::check(&bus).map_err(|e| key.field("url").invalid(e.to_string()))?;
        Ok(Some(bus))
    }
}

fn read(key: &Key, field: &str, path: &PathBuf) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| {
        key.field(field)
            .invalid(format!("cannot read {}: {e}", path.display()))
    })
}
