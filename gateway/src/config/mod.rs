//! The `gateway` binary's configuration: a TOML file plus environment
//! overrides, checked in full before anything binds.
//!
//! Each section has its own module, which owns its keys, their defaults
//! (taken from the library's own where it has one, so a number is written
//! once) and its conversion into the library's types. Validating a section
//! *is* converting it, so nothing is parsed twice: [`Config::validate`]
//! returns the [`Settings`] the binary runs with. This module ties the
//! sections together, passing each the name of its key so every
//! [`ConfigError`] names the key it is about, exactly as an operator wrote
//! it (`socket[0].jwt.secret`). `docs/configuration.md` is the reference for
//! every key; a test keeps it in step with the parser.
//!
//! It must not depend on `app`, which assembles the endpoint from the
//! [`Settings`]: config sits below it, on the library and [`auth`](crate::auth).

mod admin;
mod api;
mod channel;
mod demo;
mod env;
mod hooks;
mod log;
mod longpoll;
mod presence;
mod rebalance;
mod redis;
mod server;
mod socket;

pub use crate::backend::{Forward, ReplyMode};
pub use admin::{AdminConfig, AdminSettings};
pub use api::{ApiConfig, ApiSettings};
pub use channel::{
    ChannelRule, ChannelSettings, ForwardRule, HistoryRule, LifecycleRule, Mode, Policy,
    PresenceRule, DEFAULT_MAX_PAYLOAD,
};
pub use demo::DemoConfig;
pub use env::{Env, ENV_VARS};
pub use hooks::{ChannelHookSettings, ChannelHooks, HooksSection, SocketHooks};
pub use log::{LogConfig, LogFormat};
pub use longpoll::{LongPollSecret, LongPollSettings, LongPollShared};
pub use presence::PresenceSection;
pub use rebalance::RebalanceSection;
pub use redis::{RedisConfig, SentinelConfig};
pub use server::{Lowered, ServerConfig, ServerSettings, Shutdown, FD_MARGIN};
pub use socket::{
    JwtConfig, LongPollSection, OriginSetting, SocketSection, SocketSettings, DEMO_JWT_SECRET,
    MIN_JWT_SECRET,
};

use crate::backend::hooks::HookSecret;
use crate::presence::PresenceConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or a wrong type.
    #[error("invalid config {origin}: {message}")]
    Parse {
        /// The file, or "(defaults)".
        origin: String,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// A value is not acceptable.
    #[error("invalid config key `{key}`: {message}")]
    Invalid {
        /// The key, e.g. `socket[0].jwt.secret`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The full name of a key as an operator wrote it (`socket[0].jwt`), so a
/// section's checks can name keys without knowing where the section sits.
#[derive(Debug, Clone)]
struct Key(String);

impl Key {
    fn root(name: impl Into<String>) -> Key {
        Key(name.into())
    }

    /// The key `name` inside this one.
    fn field(&self, name: &str) -> Key {
        Key(format!("{}.{name}", self.0))
    }

    /// An error about this key.
    fn invalid(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: self.0.clone(),
            message: message.into(),
        }
    }
}

/// A duration as the `*_ms` keys write it, for defaults taken from the
/// library's `Duration`s.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The whole configuration, as written.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[log]`.
    pub log: LogConfig,
    /// `[redis]`.
    pub redis: RedisConfig,
    /// `[api]`: the HTTP publish API.
    pub api: ApiConfig,
    /// `[admin]`: the operators' API and page.
    pub admin: AdminConfig,
    /// `[demo]`: the chat page at `/`.
    pub demo: DemoConfig,
    /// `[presence]`: timing of presence diffs and dead-pod cleanup.
    pub presence: PresenceSection,
    /// `[longpoll]`: what every pod's long-poll transport shares.
    pub longpoll: LongPollShared,
    /// `[hooks]`: what every HTTP hook shares.
    pub hooks: HooksSection,
    /// `[rebalance]`: shedding connections after a scale-out.
    pub rebalance: RebalanceSection,
    /// `[[socket]]` entries; one at `/socket` when none is given.
    #[serde(rename = "socket")]
    pub sockets: Vec<SocketSection>,
    /// `[[channel]]` rules, matched in order.
    #[serde(rename = "channel")]
    pub channels: Vec<ChannelRule>,
}

/// The configuration converted into the library's types: what
/// [`Config::validate`] returns and `app::assemble` builds the endpoint
/// from.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[server]`: addresses, limits, drain timings.
    pub server: ServerSettings,
    /// `[log]`.
    pub log: LogConfig,
    /// `[redis]`: the bus, or `None` for the in-memory broker.
    pub redis: Option<pubsub_redis::Config>,
    /// `[api]`: the publish API, when a key is set.
    pub api: Option<ApiSettings>,
    /// `[admin]`: the operators' API, when a key is set.
    pub admin: Option<AdminSettings>,
    /// `[demo]`: the socket path the page connects to, when it is served.
    pub demo: Option<String>,
    /// `[presence]`.
    pub presence: PresenceConfig,
    /// `[longpoll]`.
    pub longpoll: LongPollSettings,
    /// `[[socket]]`, in order.
    pub sockets: Vec<SocketSettings>,
    /// `[[channel]]`, in order.
    pub channels: Vec<ChannelSettings>,
    /// `[hooks]`: the secret that signs hook requests, when any hook is set.
    pub hook_secret: Option<HookSecret>,
    /// `[rebalance]`, when enabled.
    pub rebalance: Option<crate::rebalance::RebalanceConfig>,
}

impl Config {
    /// Reads `path` (the defaults when `None`) and applies `env`. The result
    /// is not checked yet: [`fit_to_fd_limit`](Self::fit_to_fd_limit), if
    /// the process has a limit, then [`validate`](Self::validate).
    ///
    /// # Errors
    /// An unreadable file, malformed TOML, unknown keys, wrong types, or a
    /// malformed environment variable.
    pub fn load(path: Option<&Path>, env: &Env) -> Result<Config, ConfigError> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?,
                p.display().to_string(),
            ),
            None => (String::new(), "(defaults)".to_owned()),
        };
        let mut config = Config::parse(&text, &origin)?;
        config.apply_env(env)?;
        Ok(config)
    }

    /// Parses TOML without applying the environment or validating.
    ///
    /// # Errors
    /// Malformed TOML, unknown keys or wrong types.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        if config.sockets.is_empty() {
            config.sockets.push(SocketSection::default());
        }
        Ok(config)
    }

    /// Lowers `server.max_connections` to what `open_files` descriptors can
    /// hold; see [`ServerConfig::fit_to_fd_limit`]. Before validation, so
    /// what is validated is what runs.
    pub fn fit_to_fd_limit(&mut self, open_files: u64) -> Option<Lowered> {
        self.server.fit_to_fd_limit(open_files)
    }

    /// Checks everything parsing cannot, converting each section into what
    /// the library takes.
    ///
    /// # Errors
    /// The first problem found, naming its key.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        self.log.check(&Key::root("log"))?;
        let server = self.server.settings(&Key::root("server"))?;
        let redis = self.redis.settings(&Key::root("redis"))?;
        let api = self.api.settings(&Key::root("api"))?;
        let mut sockets: Vec<SocketSettings> = Vec::with_capacity(self.sockets.len());
        for (i, s) in self.sockets.iter().enumerate() {
            let key = Key::root(format!("socket[{i}]"));
            // Earlier sockets are valid, so an equal path is well formed.
            if sockets.iter().any(|other| other.path == s.path) {
                return Err(key
                    .field("path")
                    .invalid(format!("{:?} is used by two sockets", s.path)));
            }
            // A broadcast bigger than a subscriber's budget would close every
            // subscriber it reaches as a slow consumer.
            if s.outbound_queue_bytes < self.server.max_publish_bytes {
                return Err(key.field("outbound_queue_bytes").invalid(format!(
                    "must be at least server.max_publish_bytes ({})",
                    self.server.max_publish_bytes
                )));
            }
            sockets.push(s.settings(&key, self.longpoll.relay_timeout_ms, self.server.dev)?);
        }
        let paths: Vec<&str> = sockets.iter().map(|s| s.path.as_str()).collect();
        let channels = self
            .channels
            .iter()
            .enumerate()
            .map(|(i, c)| {
                c.settings(
                    &Key::root(format!("channel[{i}]")),
                    &paths,
                    self.redis.url.is_some(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(i) = channels.iter().position(|c| c.lifecycle.is_some()) {
            // Reported through Redis; dead pods are found by the liveness
            // keys presence keeps, with a script over keys of many slots.
            let key = Key::root(format!("channel[{i}]")).field("lifecycle");
            if self.redis.url.is_none() {
                return Err(key.invalid("lifecycle events need Redis: set [redis] url"));
            }
            if self.redis.cluster {
                return Err(key.invalid(
                    "lifecycle events need a single Redis server; not supported with redis.cluster = true",
                ));
            }
        }
        let presence = self.presence.settings(&Key::root("presence"))?;
        let longpoll =
            self.longpoll
                .settings(&Key::root("longpoll"), &self.redis, &self.sockets)?;
        let demo = self.demo.settings(&Key::root("demo"), &paths)?;
        let admin = self.admin.settings(&Key::root("admin"), &paths)?;
        let any_hook = sockets.iter().any(|s| s.hooks.is_some())
            || channels
                .iter()
                .any(|c| c.hooks.join.is_some() || c.hooks.push.is_some());
        let hook_secret = self.hooks.settings(&Key::root("hooks"), any_hook)?;
        let rebalance = self
            .rebalance
            .settings(&Key::root("rebalance"), redis.is_some())?;
        Ok(Settings {
            server,
            log: self.log.clone(),
            redis,
            api,
            admin,
            demo,
            presence,
            longpoll,
            sockets,
            channels,
            hook_secret,
            rebalance,
        })
    }
}

#[cfg(test)]
mod tests;
