//! `[longpoll]`: what every pod's long-poll transport must share, the
//! secret that signs session tokens and relays, and how long a relay waits.
//! Each socket's own long-poll keys are `[socket.longpoll]`.

use super::{millis, ConfigError, Key, RedisConfig, SocketSection};
use crate::endpoint::DEFAULT_RELAY_TIMEOUT;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// `[longpoll]`: settings every pod of a deployment must share.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LongPollShared {
    /// Signs session tokens and pod-to-pod relay messages; at least 16 bytes;
    /// `GATEWAY_LONGPOLL_SECRET` overrides it. Unset: derived from the Redis
    /// URL, prefix and JWT secrets (the same on pods configured alike), or
    /// random without Redis.
    pub secret: Option<String>,
    /// How long a pod waits for a session's owner to pick up a relayed
    /// request, beyond the poll window, milliseconds. Default 2000.
    pub relay_timeout_ms: u64,
}

impl Default for LongPollShared {
    fn default() -> Self {
        LongPollShared {
            secret: None,
            relay_timeout_ms: millis(DEFAULT_RELAY_TIMEOUT),
        }
    }
}

/// `[longpoll]`, converted.
#[derive(Debug, Clone)]
pub struct LongPollSettings {
    /// Beyond the poll window, for a relayed request's answer.
    pub relay_timeout: Duration,
    /// Signs session tokens and relays.
    pub secret: LongPollSecret,
}

/// Where the long-poll secret comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum LongPollSecret {
    /// `longpoll.secret` or `GATEWAY_LONGPOLL_SECRET`.
    Configured(Vec<u8>),
    /// Unset, with Redis: derived from what pods of one deployment share
    /// (Redis URL and prefix, JWT secrets), so a round-robin balancer works
    /// out of the box.
    Derived(Vec<u8>),
    /// Unset, on the single-node in-memory broker: random per process.
    Random,
}

impl LongPollSecret {
    /// The secret's bytes, unless it is random per process.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            LongPollSecret::Configured(b) | LongPollSecret::Derived(b) => Some(b),
            LongPollSecret::Random => None,
        }
    }
}

/// Without the bytes, which must not reach logs.
impl fmt::Debug for LongPollSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LongPollSecret::Configured(_) => "Configured(..)",
            LongPollSecret::Derived(_) => "Derived(..)",
            LongPollSecret::Random => "Random",
        })
    }
}

impl LongPollShared {
    pub(super) fn settings(
        &self,
        key: &Key,
        redis: &RedisConfig,
        sockets: &[SocketSection],
    ) -> Result<LongPollSettings, ConfigError> {
        let secret = match &self.secret {
            Some(secret) if secret.len() < 16 => {
                return Err(key
                    .field("secret")
                    .invalid("must be at least 16 bytes (all pods must share it)"))
            }
            Some(secret) => LongPollSecret::Configured(secret.as_bytes().to_vec()),
            None => derived_secret(redis, sockets),
        };
        if self.relay_timeout_ms < 100 {
            return Err(key
                .field("relay_timeout_ms")
                .invalid("must be at least 100"));
        }
        Ok(LongPollSettings {
            relay_timeout: Duration::from_millis(self.relay_timeout_ms),
            secret,
        })
    }
}

/// A digest of what pods configured alike share; random without Redis.
fn derived_secret(redis: &RedisConfig, sockets: &[SocketSection]) -> LongPollSecret {
    let Some(url) = &redis.url else {
        return LongPollSecret::Random;
    };
    let mut material = format!("gateway longpoll v1\n{url}\n{}\n", redis.prefix);
    for s in sockets {
        if let Some(secret) = s.jwt.as_ref().and_then(|j| j.secret.as_ref()) {
            material.push_str(secret);
            material.push('\n');
        }
    }
    LongPollSecret::Derived(
        ring::digest::digest(&ring::digest::SHA256, material.as_bytes())
            .as_ref()
            .to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::LongPollSecret;
    use crate::config::Config;

    fn secret(toml: &str) -> LongPollSecret {
        Config::parse(toml, "test.toml")
            .unwrap()
            .validate()
            .unwrap()
            .longpoll
            .secret
    }

    #[test]
    fn the_secret_is_shared_by_pods_configured_alike() {
        let redis = "[redis]\nurl = \"redis://10.0.0.1:6379\"\n";
        let a = secret(redis);
        assert!(matches!(a, LongPollSecret::Derived(_)));
        assert_eq!(a, secret(redis));
        let other_prefix = format!("{redis}prefix = \"x:\"\n");
        assert_ne!(a, secret(&other_prefix));
        let set = secret(&format!(
            "{redis}[longpoll]\nsecret = \"0123456789abcdef-x\"\n"
        ));
        assert_eq!(set.bytes(), Some(&b"0123456789abcdef-x"[..]));
        assert_eq!(secret(""), LongPollSecret::Random, "random without Redis");
    }
}
