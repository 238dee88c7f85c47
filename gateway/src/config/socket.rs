//! `[[socket]]` with its `[socket.jwt]` and `[socket.longpoll]`: one mount
//! path, its limits as [`SocketConfig`] (whose defaults these are, as are
//! [`LongPollConfig`]'s), and its authentication as [`SocketAuth`], with
//! the token verifier built once, here.

use super::hooks::SocketHooks;
use super::{millis, ConfigError, Key};
use crate::auth::{Algorithm, DecodingKey, JwtSettings, SocketAuth, TokenVerifier, MAX_LEEWAY};
use crate::backend::hooks::ConnectHookSettings;
use crate::channel::TopicPattern;
use crate::socket::{CheckOrigin, LongPollConfig, OriginRule, PushRate, SocketConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// The mount path of a socket that names none, and the demo page's socket.
pub(super) const DEFAULT_PATH: &str = "/socket";

/// phoenix.js aborts a long-poll request after 20 s (`longpollerTimeout`).
const CLIENT_TIMEOUT_MS: u64 = 20_000;

/// `[[socket]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketSection {
    /// Mount path. Default `/socket`.
    pub path: String,
    /// Refuse connections without a valid token (HTTP 403). Default false.
    pub require_token: bool,
    /// Connect param that carries the token. Default `token`.
    pub token_param: String,
    /// Socket id template such as `users_socket:{sub}`; none by default.
    pub socket_id: Option<String>,
    /// A claim listing the topic patterns a token may join; none by default.
    pub topics_claim: Option<String>,
    /// Claims a token must carry with exactly these values (e.g. `{ admin = true }`).
    pub require_claims: toml::Table,
    /// `false` (default) or a list of allowed origins.
    pub check_origin: OriginSetting,
    /// `[socket.jwt]`: how tokens are verified.
    pub jwt: Option<JwtConfig>,
    /// Largest inbound message, bytes. Default 1048576.
    pub max_frame_size: usize,
    /// Channels per connection. Default 100.
    pub max_channels: usize,
    /// Outbound frames queued per connection before it is dropped as a slow
    /// consumer. Default 1024.
    pub outbound_queue: usize,
    /// Outbound bytes held per connection (queued, being written, or
    /// unconfirmed on long-poll) before it is dropped as a slow consumer;
    /// at least `max_frame_size`. Default 4194304.
    pub outbound_queue_bytes: usize,
    /// Messages per second a connection may send (heartbeats excepted);
    /// more get an error reply. Default 100; 0: no limit.
    pub push_rate: u32,
    /// Messages allowed at once; also the refusals in a row after which the
    /// connection is closed (1008 "rate limited"). Default 200.
    pub push_burst: u32,
    /// Close connections silent for this long, milliseconds. Default 60000.
    pub idle_timeout_ms: u64,
    /// `[socket.longpoll]`: the long-poll transport; off by default.
    pub longpoll: LongPollSection,
    /// `[socket.hooks]`: the HTTP connect hook; off by default.
    pub hooks: Option<SocketHooks>,
}

impl Default for SocketSection {
    fn default() -> Self {
        let lib = SocketConfig::default();
        // A whole number of messages per second in the library's default.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let (push_rate, push_burst) = lib
            .push_rate
            .map_or((0, 0), |r| (r.per_second as u32, r.burst));
        SocketSection {
            path: DEFAULT_PATH.into(),
            require_token: false,
            token_param: "token".into(),
            socket_id: None,
            topics_claim: None,
            require_claims: toml::Table::new(),
            check_origin: OriginSetting::default(),
            jwt: None,
            max_frame_size: lib.max_frame_size,
            max_channels: lib.max_channels,
            outbound_queue: lib.outbound_queue,
            outbound_queue_bytes: lib.outbound_queue_bytes,
            push_rate,
            push_burst,
            idle_timeout_ms: millis(lib.idle_timeout),
            longpoll: LongPollSection::default(),
            hooks: None,
        }
    }
}

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

/// `[socket.longpoll]`: the socket's long-poll transport.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LongPollSection {
    /// Serve `{path}/longpoll`. Default false (as Phoenix 1.8).
    pub enabled: bool,
    /// How long a GET waits for messages, milliseconds. Default 10000.
    pub window_ms: u64,
    /// A session with no GET started for this long ends, milliseconds.
    /// Default 15000.
    pub session_timeout_ms: u64,
    /// A session that has not polled yet ends this long after it opened,
    /// milliseconds; until it polls it does not count against
    /// `max_connections`. Default 5000.
    pub unpolled_timeout_ms: u64,
    /// Messages buffered per session between GETs; more ends the session.
    /// Default 1024.
    pub max_buffer: usize,
    /// Largest POST body, bytes. Default 8388608.
    pub max_body: usize,
}

impl Default for LongPollSection {
    fn default() -> Self {
        let lib = LongPollConfig::default();
        LongPollSection {
            enabled: false,
            window_ms: millis(lib.window),
            session_timeout_ms: millis(lib.session_timeout),
            unpolled_timeout_ms: millis(lib.unpolled_timeout),
            max_buffer: lib.max_buffer,
            max_body: lib.max_body,
        }
    }
}

/// `[socket.jwt]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// `HS256` (default), `HS384`, `HS512`, `RS256`, `RS384`, `RS512`, `ES256`, `ES384`.
    pub algorithm: String,
    /// Shared secret for HS*; `GATEWAY_JWT_SECRET` overrides it.
    pub secret: Option<String>,
    /// PEM public key file for RS*/ES*.
    pub public_key_file: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`, seconds. Default 5; at most 86400.
    pub leeway_secs: u64,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud`, if set.
    pub audience: Option<String>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            algorithm: "HS256".into(),
            secret: None,
            public_key_file: None,
            leeway_secs: 5,
            issuer: None,
            audience: None,
        }
    }
}

/// `[[socket]]`, converted.
#[derive(Debug, Clone)]
pub struct SocketSettings {
    /// The mount path.
    pub path: String,
    /// Limits, origins and transports.
    pub config: SocketConfig,
    /// Who connects.
    pub auth: SocketAuth,
    /// The claim listing the topic patterns a token may join, which
    /// `[[channel]]` rules check on join.
    pub topics_claim: Option<String>,
    /// The connect hook, if any.
    pub hooks: Option<ConnectHookSettings>,
    /// The HS* secret is config/example.toml's [`DEMO_JWT_SECRET`], which
    /// anyone can read: the pod warns at start.
    pub demo_secret: bool,
}

impl SocketSection {
    /// `relay_timeout_ms` is `[longpoll]`'s: with the poll window it must
    /// fit in phoenix.js' request timeout. `dev` is `server.dev`: short JWT
    /// secrets are accepted.
    pub(super) fn settings(
        &self,
        key: &Key,
        relay_timeout_ms: u64,
        dev: bool,
    ) -> Result<SocketSettings, ConfigError> {
        let field = |name: &str| key.field(name);
        if !self.path.starts_with('/') || self.path.len() < 2 || self.path.ends_with('/') {
            return Err(field("path").invalid(format!("{:?} must look like /socket", self.path)));
        }
        if self.require_token && self.jwt.is_none() {
            return Err(field("jwt").invalid("required when require_token = true"));
        }
        if (!self.require_claims.is_empty() || self.topics_claim.is_some()) && self.jwt.is_none() {
            return Err(field("jwt").invalid("required when require_claims or topics_claim is set"));
        }
        let verifier = match &self.jwt {
            Some(jwt) => Some(jwt.verifier(&field("jwt"), dev)?),
            None => None,
        };
        if let Some(t) = &self.socket_id {
            TopicPattern::parse(t).map_err(|e| field("socket_id").invalid(e.reason))?;
            if t.contains('*') {
                return Err(field("socket_id").invalid("a socket id template cannot contain '*'"));
            }
        }
        if self.max_frame_size < 64 {
            return Err(field("max_frame_size").invalid("must be at least 64 bytes"));
        }
        if self.max_channels == 0 {
            return Err(field("max_channels").invalid("must be at least 1"));
        }
        if self.push_rate > 0 && self.push_burst == 0 {
            return Err(field("push_burst").invalid("must be at least 1 when push_rate is set"));
        }
        if self.outbound_queue == 0 {
            return Err(field("outbound_queue").invalid("must be at least 1"));
        }
        // A client's push comes back to it as a frame of about its own size:
        // a budget below that would close every sender of a large message.
        if self.outbound_queue_bytes < self.max_frame_size {
            return Err(field("outbound_queue_bytes").invalid(format!(
                "must be at least max_frame_size ({})",
                self.max_frame_size
            )));
        }
        if self.idle_timeout_ms < 1000 {
            return Err(field("idle_timeout_ms").invalid("must be at least 1000"));
        }
        let longpoll = self
            .longpoll
            .settings(&field("longpoll"), relay_timeout_ms)?;
        let check_origin = self.check_origin.settings(&field("check_origin"))?;
        let require_claims = match serde_json::to_value(&self.require_claims) {
            Ok(Value::Object(claims)) => claims,
            _ => return Err(field("require_claims").invalid("must be a table of claims")),
        };
        Ok(SocketSettings {
            path: self.path.clone(),
            config: SocketConfig {
                max_frame_size: self.max_frame_size,
                max_channels: self.max_channels,
                outbound_queue: self.outbound_queue,
                outbound_queue_bytes: self.outbound_queue_bytes,
                push_rate: (self.push_rate > 0).then_some(PushRate {
                    per_second: f64::from(self.push_rate),
                    burst: self.push_burst,
                }),
                idle_timeout: Duration::from_millis(self.idle_timeout_ms),
                check_origin,
                longpoll: self.longpoll.enabled.then_some(longpoll),
            },
            auth: SocketAuth {
                verifier,
                require_token: self.require_token,
                token_param: self.token_param.clone(),
                socket_id: self.socket_id.clone(),
                require_claims,
            },
            topics_claim: self.topics_claim.clone(),
            demo_secret: self.jwt.as_ref().is_some_and(JwtConfig::uses_demo_secret),
            hooks: self
                .hooks
                .as_ref()
                .map(|h| h.settings(&field("hooks")))
                .transpose()?,
        })
    }
}

impl LongPollSection {
    /// Checked even while disabled, so enabling it later cannot surprise.
    fn settings(&self, key: &Key, relay_timeout_ms: u64) -> Result<LongPollConfig, ConfigError> {
        let field = |name: &str| key.field(name);
        if self.window_ms < 100 {
            return Err(field("window_ms").invalid("must be at least 100"));
        }
        if self.window_ms.saturating_add(relay_timeout_ms) >= CLIENT_TIMEOUT_MS {
            return Err(field("window_ms").invalid(format!(
                "window_ms plus longpoll.relay_timeout_ms must stay below \
                 phoenix.js' {CLIENT_TIMEOUT_MS} ms request timeout"
            )));
        }
        if self.session_timeout_ms < self.window_ms {
            return Err(field("session_timeout_ms").invalid("must be at least window_ms"));
        }
        if self.unpolled_timeout_ms < 100 || self.unpolled_timeout_ms > self.session_timeout_ms {
            return Err(field("unpolled_timeout_ms")
                .invalid("must be at least 100 and at most session_timeout_ms"));
        }
        if self.max_buffer == 0 {
            return Err(field("max_buffer").invalid("must be at least 1"));
        }
        if self.max_body < 1024 {
            return Err(field("max_body").invalid("must be at least 1024"));
        }
        Ok(LongPollConfig {
            window: Duration::from_millis(self.window_ms),
            session_timeout: Duration::from_millis(self.session_timeout_ms),
            unpolled_timeout: Duration::from_millis(self.unpolled_timeout_ms),
            max_buffer: self.max_buffer,
            max_body: self.max_body,
        })
    }
}

impl OriginSetting {
    fn settings(&self, key: &Key) -> Result<CheckOrigin, ConfigError> {
        match self {
            OriginSetting::Flag(false) => Ok(CheckOrigin::Off),
            OriginSetting::Flag(true) => Err(key.invalid("use false or a list of allowed origins")),
            OriginSetting::List(list) => list
                .iter()
                .map(|o| OriginRule::parse(o).map_err(|m| key.invalid(m)))
                .collect::<Result<_, _>>()
                .map(CheckOrigin::Allow),
        }
    }
}

/// config/example.toml's JWT secret: public, so only for development.
pub const DEMO_JWT_SECRET: &str = "dev-only-secret-change-me";

/// Shortest HS* secret outside development mode, bytes: RFC 7518 (3.2)
/// wants a key at least as long as the hash (32 bytes for HS256), and a
/// shorter one can be guessed offline from any token.
pub const MIN_JWT_SECRET: usize = 32;

impl JwtConfig {
    fn is_hmac(&self) -> bool {
        self.algorithm.to_ascii_uppercase().starts_with("HS")
    }

    /// An HS* socket whose secret is [`DEMO_JWT_SECRET`].
    fn uses_demo_secret(&self) -> bool {
        self.is_hmac() && self.secret.as_deref() == Some(DEMO_JWT_SECRET)
    }

    /// The verifier: the algorithm parsed and the key read, once. `dev`
    /// accepts secrets shorter than [`MIN_JWT_SECRET`].
    fn verifier(&self, key: &Key, dev: bool) -> Result<TokenVerifier, ConfigError> {
        if self.leeway_secs > MAX_LEEWAY.as_secs() {
            return Err(key.field("leeway_secs").invalid(format!(
                "{} is more than a day ({} s)",
                self.leeway_secs,
                MAX_LEEWAY.as_secs()
            )));
        }
        let algorithm: Algorithm = self.algorithm.to_ascii_uppercase().parse().map_err(|_| {
            key.field("algorithm")
                .invalid(format!("{:?} is not a supported algorithm", self.algorithm))
        })?;
        let decoding = match algorithm {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let secret = self
                    .secret
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        key.field("secret")
                            .invalid("missing: set jwt.secret or GATEWAY_JWT_SECRET")
                    })?;
                if secret.len() < MIN_JWT_SECRET && !dev {
                    return Err(key.field("secret").invalid(format!(
                        "{} bytes is too short: use at least {MIN_JWT_SECRET} random bytes \
                         (GATEWAY_JWT_SECRET=\"$(openssl rand -base64 48)\"), or turn on \
                         development mode (GATEWAY_DEV=1 or server.dev = true)",
                        secret.len()
                    )));
                }
                DecodingKey::from_secret(secret.as_bytes())
            }
            _ => {
                let file = key.field("public_key_file");
                let path = self.public_key_file.as_ref().ok_or_else(|| {
                    file.invalid(format!(
                        "missing: {} needs a PEM public key",
                        self.algorithm
                    ))
                })?;
                let bad =
                    |e: &dyn std::fmt::Display| file.invalid(format!("{}: {e}", path.display()));
                let pem = std::fs::read(path).map_err(|e| bad(&e))?;
                match algorithm {
                    Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                    _ => DecodingKey::from_rsa_pem(&pem),
                }
                .map_err(|e| bad(&e))?
            }
        };
        Ok(TokenVerifier::new(JwtSettings {
            algorithm,
            key: decoding,
            leeway: Duration::from_secs(self.leeway_secs),
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
        }))
    }
}
