//! Environment overrides for what operators change per deployment.

use super::{Config, ConfigError, Key, LogFormat};
use std::collections::HashMap;

/// The environment variables the binary reads, with what they do; printed by
/// `gateway --help`.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("GATEWAY_CONFIG", "config file (same as --config)"),
    ("PORT", "listen port; replaces the port of server.listen"),
    ("GATEWAY_LISTEN", "listen address; replaces server.listen"),
    (
        "GATEWAY_METRICS_LISTEN",
        "address of a separate /metrics listener; replaces server.metrics_listen",
    ),
    (
        "REDIS_URL",
        "Redis URL; replaces redis.url and selects the Redis broker",
    ),
    (
        "REDIS_SENTINEL_PASSWORD",
        "the sentinels' password; replaces redis.sentinel.password",
    ),
    (
        "GATEWAY_JWT_SECRET",
        "HS256/384/512 secret; replaces jwt.secret of every socket using HS*",
    ),
    (
        "GATEWAY_API_KEY",
        "bearer key of the HTTP publish API; replaces api.key",
    ),
    (
        "GATEWAY_ADMIN_KEY",
        "bearer key of the admin API and page; replaces admin.key",
    ),
    ("GATEWAY_LOG_FORMAT", "human or json; replaces log.format"),
    (
        "GATEWAY_LOG",
        "log filter such as info or debug; replaces log.level",
    ),
    ("GATEWAY_NODE_NAME", "node name; replaces server.node_name"),
    (
        "GATEWAY_LONGPOLL_SECRET",
        "long-poll token secret, the same on every pod; replaces longpoll.secret",
    ),
    (
        "GATEWAY_HOOK_SECRET",
        "HMAC secret that signs HTTP hook requests; replaces hooks.secret",
    ),
    (
        "GATEWAY_DEV",
        "1 or 0: development mode (short JWT secrets accepted); replaces server.dev",
    ),
];

/// A snapshot of environment variables, so tests can inject their own.
#[derive(Debug, Clone, Default)]
pub struct Env(HashMap<String, String>);

impl Env {
    /// The process environment (only the variables in [`ENV_VARS`]).
    pub fn from_process() -> Self {
        Env(ENV_VARS
            .iter()
            .filter_map(|(k, _)| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect())
    }

    /// An environment from pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Env(pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    /// A variable's value; empty values count as unset.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

impl Config {
    pub(super) fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        if let Some(listen) = env.get("GATEWAY_LISTEN") {
            self.server.listen = listen.to_owned();
        }
        if let Some(listen) = env.get("GATEWAY_METRICS_LISTEN") {
            self.server.metrics_listen = Some(listen.to_owned());
        }
        if let Some(port) = env.get("PORT") {
            let port: u16 = port
                .parse()
                .map_err(|_| Key::root("PORT").invalid(format!("{port:?} is not a port number")))?;
            let host = match self.server.listen.rsplit_once(':') {
                Some((host, _)) => host.to_owned(),
                None => "127.0.0.1".to_owned(),
            };
            self.server.listen = format!("{host}:{port}");
        }
        if let Some(url) = env.get("REDIS_URL") {
            self.redis.url = Some(url.to_owned());
        }
        if let Some(password) = env.get("REDIS_SENTINEL_PASSWORD") {
            if let Some(s) = &mut self.redis.sentinel {
                s.password = Some(password.to_owned());
            }
        }
        if let Some(secret) = env.get("GATEWAY_JWT_SECRET") {
            for s in &mut self.sockets {
                if let Some(jwt) = &mut s.jwt {
                    if jwt.algorithm.to_ascii_uppercase().starts_with("HS") {
                        jwt.secret = Some(secret.to_owned());
                    }
                }
            }
        }
        if let Some(key) = env.get("GATEWAY_API_KEY") {
            self.api.key = Some(key.to_owned());
        }
        if let Some(key) = env.get("GATEWAY_ADMIN_KEY") {
            self.admin.key = Some(key.to_owned());
        }
        if let Some(format) = env.get("GATEWAY_LOG_FORMAT") {
            self.log.format = match format {
                "human" => LogFormat::Human,
                "json" => LogFormat::Json,
                other => {
                    return Err(Key::root("GATEWAY_LOG_FORMAT")
                        .invalid(format!("{other:?}: use human or json")))
                }
            };
        }
        if let Some(level) = env.get("GATEWAY_LOG") {
            self.log.level = level.to_owned();
        }
        if let Some(secret) = env.get("GATEWAY_LONGPOLL_SECRET") {
            self.longpoll.secret = Some(secret.to_owned());
        }
        if let Some(secret) = env.get("GATEWAY_HOOK_SECRET") {
            self.hooks.secret = Some(secret.to_owned());
        }
        if let Some(dev) = env.get("GATEWAY_DEV") {
            self.server.dev = match dev {
                "1" | "true" => true,
                "0" | "false" => false,
                other => {
                    return Err(Key::root("GATEWAY_DEV").invalid(format!("{other:?}: use 1 or 0")))
                }
            };
        }
        if let Some(node) = env.get("GATEWAY_NODE_NAME") {
            self.server.node_name = Some(node.to_owned());
        }
        Ok(())
    }
}
