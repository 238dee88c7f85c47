//! The `gateway` binary's configuration: a TOML file plus environment
//! overrides, parsed and validated in full before anything binds.
//!
//! Every error names the key it is about, so a bad deployment fails at start
//! with a message an operator can act on. `docs/configuration.md` is the
//! reference for every key.

mod env;

pub use env::{Env, ENV_VARS};

use crate::channel::TopicPattern;
use crate::socket::OriginRule;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`.
    #[serde(default)]
    pub server: ServerConfig,
    /// `[log]`.
    #[serde(default)]
    pub log: LogConfig,
    /// `[redis]`.
    #[serde(default)]
    pub redis: RedisConfig,
    /// `[api]`: the HTTP publish API.
    #[serde(default)]
    pub api: ApiConfig,
    /// `[demo]`: the chat page at `/`.
    #[serde(default)]
    pub demo: DemoConfig,
    /// `[presence]`: timing of presence diffs and dead-pod cleanup.
    #[serde(default)]
    pub presence: PresenceSection,
    /// `[longpoll]`: what every pod's long-poll transport shares.
    #[serde(default)]
    pub longpoll: LongPollShared,
    /// `[[socket]]` entries; one at `/socket` when none is given.
    #[serde(default, rename = "socket")]
    pub sockets: Vec<SocketSection>,
    /// `[[channel]]` rules, matched in order.
    #[serde(default, rename = "channel")]
    pub channels: Vec<ChannelRule>,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address. Default `127.0.0.1:4000`; `PORT` replaces the port.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// This node's name, shown to channels. Default `gateway@$HOSTNAME`.
    #[serde(default)]
    pub node_name: Option<String>,
    /// After SIGTERM, how long new connections are still accepted while
    /// `/readyz` already fails (balancers notice at their next probe). Default 2000.
    #[serde(default = "default_drain_delay_ms")]
    pub drain_delay_ms: u64,
    /// Open connections close at random points of this period after SIGTERM,
    /// so clients reconnect elsewhere gradually. Default 30000.
    #[serde(default = "default_drain_period_ms")]
    pub drain_period_ms: u64,
    /// The process exits this long after SIGTERM at the latest, whatever is
    /// still open; keep it below Kubernetes' terminationGracePeriodSeconds.
    /// Default 45000.
    #[serde(default = "default_shutdown_deadline_ms")]
    pub shutdown_deadline_ms: u64,
    /// Open connections (WebSocket and long-poll sessions) past which new
    /// ones are refused (503) and `/readyz` fails. Default 50000; 0: no limit.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Resident memory in MiB past which new connections are refused and
    /// `/readyz` fails, below the container's limit. Default 0: no threshold.
    #[serde(default)]
    pub max_memory_mb: u64,
    /// Serve `GET /metrics` on this address instead of the main port, so
    /// the public port does not expose it. Default: unset (main port).
    #[serde(default)]
    pub metrics_listen: Option<String>,
}

fn default_max_connections() -> usize {
    50_000
}

fn default_drain_delay_ms() -> u64 {
    2000
}

fn default_drain_period_ms() -> u64 {
    30_000
}

fn default_shutdown_deadline_ms() -> u64 {
    45_000
}

fn default_listen() -> String {
    "127.0.0.1:4000".into()
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            node_name: None,
            drain_delay_ms: default_drain_delay_ms(),
            drain_period_ms: default_drain_period_ms(),
            shutdown_deadline_ms: default_shutdown_deadline_ms(),
            max_connections: default_max_connections(),
            max_memory_mb: 0,
            metrics_listen: None,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (default).
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `human` (default) or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as `info` or `info,gateway=debug`. Default `info`.
    #[serde(default = "default_level")]
    pub level: String,
}

fn default_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: default_level(),
        }
    }
}

/// `[redis]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db`; unset means the in-memory broker.
    #[serde(default)]
    pub url: Option<String>,
    /// Prefix of every Redis channel. Default `phx:`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Use sharded pub/sub on a Redis Cluster. Default false.
    #[serde(default)]
    pub cluster: bool,
    /// How long a topic stays subscribed after its last local subscriber
    /// left, milliseconds, so leave-and-rejoin does not flap. Default 2000.
    #[serde(default = "default_linger")]
    pub linger_ms: u64,
}

fn default_linger() -> u64 {
    2000
}

impl RedisConfig {
    /// The bus settings, when a URL is set.
    pub fn bus_config(&self) -> Option<pubsub_redis::Config> {
        let mut c = pubsub_redis::Config::new(self.url.clone()?);
        c.prefix = self.prefix.clone();
        c.linger = std::time::Duration::from_millis(self.linger_ms);
        c.cluster = self.cluster;
        Some(c)
    }
}

fn default_prefix() -> String {
    "phx:".into()
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            prefix: default_prefix(),
            cluster: false,
            linger_ms: default_linger(),
        }
    }
}

/// `[api]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer key for `POST {path}`; the API is off when unset.
    #[serde(default)]
    pub key: Option<String>,
    /// Path of the broadcast endpoint. Default `/api/broadcast`.
    #[serde(default = "default_api_path")]
    pub path: String,
    /// Largest accepted request body, bytes. Default 1 MiB.
    #[serde(default = "default_api_body")]
    pub max_body: usize,
}

fn default_api_path() -> String {
    "/api/broadcast".into()
}

fn default_api_body() -> usize {
    1 << 20
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            key: None,
            path: default_api_path(),
            max_body: default_api_body(),
        }
    }
}

/// `[demo]`.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    /// Serve the demo chat page at `/` and phoenix.js at `/assets/phoenix.js`.
    /// Default false.
    #[serde(default)]
    pub enabled: bool,
    /// The socket path the page connects to. Default `/socket`.
    #[serde(default)]
    pub socket: Option<String>,
}

/// `[presence]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceSection {
    /// Changes of a topic are published as one `presence_diff` per window
    /// this long, milliseconds. Default 50.
    #[serde(default = "default_presence_batch")]
    pub batch_ms: u64,
    /// A pod that dies without cleaning up has its presences removed and
    /// `leaves` broadcast within this time, milliseconds. Default 30000.
    #[serde(default = "default_pod_timeout")]
    pub pod_timeout_ms: u64,
}

fn default_presence_batch() -> u64 {
    50
}

fn default_pod_timeout() -> u64 {
    30_000
}

impl Default for PresenceSection {
    fn default() -> Self {
        PresenceSection {
            batch_ms: default_presence_batch(),
            pod_timeout_ms: default_pod_timeout(),
        }
    }
}

/// `[longpoll]`: settings every pod of a deployment must share.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LongPollShared {
    /// Signs session tokens and pod-to-pod relay messages; at least 16 bytes;
    /// `GATEWAY_LONGPOLL_SECRET` overrides it. Unset: derived from the Redis
    /// URL, prefix and JWT secrets (the same on pods configured alike), or
    /// random without Redis.
    #[serde(default)]
    pub secret: Option<String>,
    /// How long a pod waits for a session's owner to pick up a relayed
    /// request, beyond the poll window, milliseconds. Default 2000.
    #[serde(default = "default_relay_timeout")]
    pub relay_timeout_ms: u64,
}

fn default_relay_timeout() -> u64 {
    2000
}

impl Default for LongPollShared {
    fn default() -> Self {
        LongPollShared {
            secret: None,
            relay_timeout_ms: default_relay_timeout(),
        }
    }
}

impl PresenceSection {
    /// The settings of [`crate::presence`].
    pub fn settings(&self) -> crate::presence::PresenceConfig {
        crate::presence::PresenceConfig {
            batch: std::time::Duration::from_millis(self.batch_ms),
            pod_timeout: std::time::Duration::from_millis(self.pod_timeout_ms),
        }
    }
}

/// `[socket.longpoll]`: the socket's long-poll transport.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LongPollSection {
    /// Serve `{path}/longpoll`. Default false (as Phoenix 1.8).
    #[serde(default)]
    pub enabled: bool,
    /// How long a GET waits for messages, milliseconds. Default 10000.
    #[serde(default = "default_window")]
    pub window_ms: u64,
    /// A session with no GET started for this long ends, milliseconds.
    /// Default 15000.
    #[serde(default = "default_session_timeout")]
    pub session_timeout_ms: u64,
    /// Messages buffered per session between GETs; more ends the session.
    /// Default 1024.
    #[serde(default = "default_queue")]
    pub max_buffer: usize,
    /// Largest POST body, bytes. Default 8388608.
    #[serde(default = "default_lp_body")]
    pub max_body: usize,
}

fn default_window() -> u64 {
    10_000
}
fn default_session_timeout() -> u64 {
    15_000
}
fn default_lp_body() -> usize {
    8 << 20
}

impl Default for LongPollSection {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("an empty table always parses"))
    }
}

/// phoenix.js aborts a long-poll request after 20 s (`longpollerTimeout`).
const CLIENT_TIMEOUT_MS: u64 = 20_000;

/// `check_origin`: `false`, or a list of allowed origins.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum OriginSetting {
    /// `false` (or `true`, which is refused: name the origins instead).
    Flag(bool),
    /// Allowed origins such as `https://example.com` or `//*.example.com`.
    List(Vec<String>),
}

impl Default for OriginSetting {
    fn default() -> Self {
        OriginSetting::Flag(false)
    }
}

/// `[[socket]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SocketSection {
    /// Mount path. Default `/socket`.
    #[serde(default = "default_socket_path")]
    pub path: String,
    /// Refuse connections without a valid token (HTTP 403). Default false.
    #[serde(default)]
    pub require_token: bool,
    /// Connect param that carries the token. Default `token`.
    #[serde(default = "default_token_param")]
    pub token_param: String,
    /// Socket id template such as `users_socket:{sub}`; none by default.
    #[serde(default)]
    pub socket_id: Option<String>,
    /// A claim listing the topic patterns a token may join; none by default.
    #[serde(default)]
    pub topics_claim: Option<String>,
    /// Claims a token must carry with exactly these values (e.g. `{ admin = true }`).
    #[serde(default)]
    pub require_claims: toml::Table,
    /// `false` (default) or a list of allowed origins.
    #[serde(default)]
    pub check_origin: OriginSetting,
    /// `[socket.jwt]`: how tokens are verified.
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// Largest inbound message, bytes. Default 1048576.
    #[serde(default = "default_max_frame")]
    pub max_frame_size: usize,
    /// Channels per connection. Default 100.
    #[serde(default = "default_max_channels")]
    pub max_channels: usize,
    /// Outbound frames queued per connection before it is dropped as a slow
    /// consumer. Default 1024.
    #[serde(default = "default_queue")]
    pub outbound_queue: usize,
    /// Messages per second a connection may send (heartbeats excepted);
    /// more get an error reply. Default 100; 0: no limit.
    #[serde(default = "default_push_rate")]
    pub push_rate: u32,
    /// Messages allowed at once; also the refusals in a row after which the
    /// connection is closed (1008 "rate limited"). Default 200.
    #[serde(default = "default_push_burst")]
    pub push_burst: u32,
    /// Close connections silent for this long, milliseconds. Default 60000.
    #[serde(default = "default_idle")]
    pub idle_timeout_ms: u64,
    /// `[socket.longpoll]`: the long-poll transport; off by default.
    #[serde(default)]
    pub longpoll: LongPollSection,
}

fn default_socket_path() -> String {
    "/socket".into()
}
fn default_token_param() -> String {
    "token".into()
}
fn default_max_frame() -> usize {
    1 << 20
}
fn default_max_channels() -> usize {
    100
}
fn default_push_rate() -> u32 {
    100
}

fn default_push_burst() -> u32 {
    200
}

fn default_queue() -> usize {
    1024
}
fn default_idle() -> u64 {
    60_000
}

impl Default for SocketSection {
    fn default() -> Self {
        // Deserializing an empty table applies every field default.
        toml::from_str("").unwrap_or_else(|_| unreachable!("an empty socket section always parses"))
    }
}

/// `[socket.jwt]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// `HS256` (default), `HS384`, `HS512`, `RS256`, `RS384`, `RS512`, `ES256`, `ES384`.
    #[serde(default = "default_alg")]
    pub algorithm: String,
    /// Shared secret for HS*; `GATEWAY_JWT_SECRET` overrides it.
    #[serde(default)]
    pub secret: Option<String>,
    /// PEM public key file for RS*/ES*.
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`, seconds. Default 5.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Required `iss`, if set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Required `aud`, if set.
    #[serde(default)]
    pub audience: Option<String>,
}

fn default_alg() -> String {
    "HS256".into()
}
fn default_leeway() -> u64 {
    5
}

/// Who may join a rule's topics.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Anyone, with or without a token (default).
    #[default]
    Public,
    /// Connections with a valid token; placeholders must equal its claims.
    Token,
}

/// What happens to events clients push.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Broadcast to every subscriber of the topic, then reply ok (default).
    #[default]
    Broadcast,
}

/// `[[channel]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelRule {
    /// Topic pattern: `room:*`, `user:{sub}`, or an exact topic.
    pub pattern: String,
    /// `public` (default) or `token`.
    #[serde(default)]
    pub policy: Policy,
    /// Socket paths this rule applies to; all sockets by default.
    #[serde(default)]
    pub sockets: Option<Vec<String>>,
    /// Events clients may push. None by default.
    #[serde(default)]
    pub events: Vec<String>,
    /// What pushed events do. Default `broadcast`.
    #[serde(default)]
    pub mode: Mode,
    /// Whether a pushed event is also sent back to its sender. Default true.
    #[serde(default = "default_true")]
    pub include_sender: bool,
    /// `[channel.presence]`: track every joined client's presence. Off by
    /// default.
    #[serde(default)]
    pub presence: Option<PresenceRule>,
}

/// `[channel.presence]`: who a joined client is, and what others see of it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PresenceRule {
    /// The token claim (e.g. `sub`) that is the presence key. Set exactly
    /// one of `key_claim` and `key_param`.
    #[serde(default)]
    pub key_claim: Option<String>,
    /// The join param that is the presence key: chosen by the client, so
    /// anyone can claim any key. Set exactly one of `key_claim` and
    /// `key_param`.
    #[serde(default)]
    pub key_param: Option<String>,
    /// Join params copied into the meta (beside `online_at`). None by default.
    #[serde(default)]
    pub meta_params: Vec<String>,
    /// An event clients push to change their own meta: the `meta_params` in
    /// its payload replace theirs. None by default.
    #[serde(default)]
    pub update_event: Option<String>,
}

fn default_true() -> bool {
    true
}

impl Config {
    /// Loads `path` (or the defaults when `None`), applies `env`, and validates.
    ///
    /// # Errors
    /// Any problem, naming the key.
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
        config.validate()?;
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

    /// The listen address.
    ///
    /// # Errors
    /// When `server.listen` is not `host:port`.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.listen.parse().map_err(|_| {
            invalid(
                "server.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:4000",
                    self.server.listen
                ),
            )
        })
    }

    /// The address of the separate metrics listener, if one is configured.
    ///
    /// # Errors
    /// `server.metrics_listen` is not an address.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let Some(addr) = &self.server.metrics_listen else {
            return Ok(None);
        };
        addr.parse().map(Some).map_err(|_| {
            invalid(
                "server.metrics_listen",
                format!("{addr:?} is not an address like 0.0.0.0:9090"),
            )
        })
    }

    /// Checks everything that parsing cannot.
    ///
    /// # Errors
    /// The first problem found, naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        self.metrics_addr()?;
        let s = &self.server;
        if s.drain_delay_ms.saturating_add(s.drain_period_ms) > s.shutdown_deadline_ms {
            return Err(invalid(
                "server.shutdown_deadline_ms",
                format!(
                    "{} is shorter than drain_delay_ms + drain_period_ms ({} + {})",
                    s.shutdown_deadline_ms, s.drain_delay_ms, s.drain_period_ms
                ),
            ));
        }
        if let Some(url) = &self.redis.url {
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("unix://"))
            {
                return Err(invalid(
                    "redis.url",
                    format!("{url:?} must start with redis:// or rediss://"),
                ));
            }
        }
        if self.redis.prefix.contains(['*', '?', '[', ']']) {
            return Err(invalid(
                "redis.prefix",
                "must not contain Redis glob characters",
            ));
        }
        if !self.api.path.starts_with('/') {
            return Err(invalid("api.path", "must start with '/'"));
        }
        if self.api.key.as_deref() == Some("") {
            return Err(invalid(
                "api.key",
                "must not be empty (unset it to disable the API)",
            ));
        }
        let mut paths = Vec::new();
        for (i, s) in self.sockets.iter().enumerate() {
            let key = |k: &str| format!("socket[{i}].{k}");
            if !s.path.starts_with('/') || s.path.len() < 2 || s.path.ends_with('/') {
                return Err(invalid(
                    key("path"),
                    format!("{:?} must look like /socket", s.path),
                ));
            }
            if paths.contains(&s.path) {
                return Err(invalid(
                    key("path"),
                    format!("{:?} is used by two sockets", s.path),
                ));
            }
            paths.push(s.path.clone());
            if s.require_token && s.jwt.is_none() {
                return Err(invalid(key("jwt"), "required when require_token = true"));
            }
            if (!s.require_claims.is_empty() || s.topics_claim.is_some()) && s.jwt.is_none() {
                return Err(invalid(
                    key("jwt"),
                    "required when require_claims or topics_claim is set",
                ));
            }
            if let Some(jwt) = &s.jwt {
                crate::app::auth::TokenVerifier::from_config(jwt)
                    .map_err(|(k, m)| invalid(key(&format!("jwt.{k}")), m))?;
            }
            if let Some(t) = &s.socket_id {
                TopicPattern::parse(t).map_err(|e| invalid(key("socket_id"), e.reason))?;
                if t.contains('*') {
                    return Err(invalid(
                        key("socket_id"),
                        "a socket id template cannot contain '*'",
                    ));
                }
            }
            if s.max_frame_size < 64 {
                return Err(invalid(key("max_frame_size"), "must be at least 64 bytes"));
            }
            if s.max_channels == 0 {
                return Err(invalid(key("max_channels"), "must be at least 1"));
            }
            if s.push_rate > 0 && s.push_burst == 0 {
                return Err(invalid(
                    key("push_burst"),
                    "must be at least 1 when push_rate is set",
                ));
            }
            if s.outbound_queue == 0 {
                return Err(invalid(key("outbound_queue"), "must be at least 1"));
            }
            if s.idle_timeout_ms < 1000 {
                return Err(invalid(key("idle_timeout_ms"), "must be at least 1000"));
            }
            let lp = &s.longpoll;
            if lp.window_ms < 100 {
                return Err(invalid(key("longpoll.window_ms"), "must be at least 100"));
            }
            if lp.window_ms + self.longpoll.relay_timeout_ms >= CLIENT_TIMEOUT_MS {
                return Err(invalid(
                    key("longpoll.window_ms"),
                    format!(
                        "window_ms plus longpoll.relay_timeout_ms must stay below \
                         phoenix.js' {CLIENT_TIMEOUT_MS} ms request timeout"
                    ),
                ));
            }
            if lp.session_timeout_ms < lp.window_ms {
                return Err(invalid(
                    key("longpoll.session_timeout_ms"),
                    "must be at least window_ms",
                ));
            }
            if lp.max_buffer == 0 {
                return Err(invalid(key("longpoll.max_buffer"), "must be at least 1"));
            }
            if lp.max_body < 1024 {
                return Err(invalid(key("longpoll.max_body"), "must be at least 1024"));
            }
            match &s.check_origin {
                OriginSetting::Flag(false) => {}
                OriginSetting::Flag(true) => {
                    return Err(invalid(
                        key("check_origin"),
                        "use false or a list of allowed origins",
                    ))
                }
                OriginSetting::List(list) => {
                    for o in list {
                        OriginRule::parse(o).map_err(|m| invalid(key("check_origin"), m))?;
                    }
                }
            }
        }
        for (i, c) in self.channels.iter().enumerate() {
            let key = |k: &str| format!("channel[{i}].{k}");
            let pattern =
                TopicPattern::parse(&c.pattern).map_err(|e| invalid(key("pattern"), e.reason))?;
            if pattern.placeholders().next().is_some() && c.policy != Policy::Token {
                return Err(invalid(
                    key("policy"),
                    "patterns with {claim} placeholders need policy = \"token\"",
                ));
            }
            if let Some(sockets) = &c.sockets {
                for p in sockets {
                    if !paths.contains(p) {
                        return Err(invalid(
                            key("sockets"),
                            format!("no [[socket]] has path {p:?}"),
                        ));
                    }
                }
            }
            for e in &c.events {
                if e.is_empty() || e.starts_with("phx_") || e == "access_token" {
                    return Err(invalid(
                        key("events"),
                        format!("{e:?} is reserved or empty"),
                    ));
                }
            }
            if let Some(p) = &c.presence {
                self.validate_presence(p, c.policy, &format!("channel[{i}].presence"))?;
            }
        }
        if self.presence.batch_ms > 10_000 {
            return Err(invalid("presence.batch_ms", "must be at most 10000"));
        }
        if self.presence.pod_timeout_ms < 1000 {
            return Err(invalid("presence.pod_timeout_ms", "must be at least 1000"));
        }
        if let Some(secret) = &self.longpoll.secret {
            if secret.len() < 16 {
                return Err(invalid(
                    "longpoll.secret",
                    "must be at least 16 bytes (all pods must share it)",
                ));
            }
        }
        if self.longpoll.relay_timeout_ms < 100 {
            return Err(invalid("longpoll.relay_timeout_ms", "must be at least 100"));
        }
        if self.demo.enabled {
            let path = self.demo.socket.clone().unwrap_or_else(default_socket_path);
            if !paths.contains(&path) {
                return Err(invalid(
                    "demo.socket",
                    format!("no [[socket]] has path {path:?}"),
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_presence(
        &self,
        p: &PresenceRule,
        policy: Policy,
        base: &str,
    ) -> Result<(), ConfigError> {
        let key = |k: &str| format!("{base}.{k}");
        match (&p.key_claim, &p.key_param) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(invalid(
                    key("key_claim"),
                    "set exactly one of key_claim and key_param",
                ))
            }
            (Some(c), None) if c.is_empty() => {
                return Err(invalid(key("key_claim"), "must not be empty"))
            }
            (None, Some(k)) if k.is_empty() => {
                return Err(invalid(key("key_param"), "must not be empty"))
            }
            (Some(_), None) if policy != Policy::Token => {
                return Err(invalid(
                    key("key_claim"),
                    "a claim as presence key needs policy = \"token\"",
                ))
            }
            _ => {}
        }
        if let Some(e) = &p.update_event {
            if e.is_empty() || e.starts_with("phx_") || e == "access_token" {
                return Err(invalid(
                    key("update_event"),
                    format!("{e:?} is reserved or empty"),
                ));
            }
        }
        for m in &p.meta_params {
            if m.is_empty() || m.starts_with("phx_") || m == "online_at" {
                return Err(invalid(
                    key("meta_params"),
                    format!("{m:?} is reserved or empty"),
                ));
            }
        }
        if self.redis.url.is_some() && self.redis.cluster {
            return Err(invalid(
                base,
                "presence needs a single Redis server; it is not supported with redis.cluster = true",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
