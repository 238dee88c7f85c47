//! `[[channel]]` with its `[channel.presence]` and `[channel.history]`: a topic pattern, who may
//! join it, what clients may push, and presence. Converted with the pattern
//! parsed once; `app` turns the result into a channel.

use super::hooks::{ChannelHookSettings, ChannelHooks};
use super::{ConfigError, Key};
use crate::backend::{Forward, ReplyMode};
use crate::channel::TopicPattern;
use crate::pubsub::History;
use serde::{Deserialize, Serialize};
use std::time::Duration;

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
    /// Ask the rule's push hook (`[channel.hooks] push`), which replies and
    /// may broadcast.
    Hook,
    /// Append to a Redis stream for backends (`[channel.forward]`); the
    /// reply is the backend's answer, or the append's.
    Forward,
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
    /// Largest payload of a client push, bytes; larger gets an error reply
    /// (`payload too large`) and is not broadcast. Default 65536; 0: only
    /// the socket's `max_frame_size` bounds it.
    #[serde(default = "default_max_payload")]
    pub max_payload: usize,
    /// `[channel.presence]`: track every joined client's presence. Off by
    /// default.
    #[serde(default)]
    pub presence: Option<PresenceRule>,
    /// `[channel.history]`: keep the topics' recent messages so clients
    /// recover what they missed. Off by default.
    #[serde(default)]
    pub history: Option<HistoryRule>,
    /// `[channel.hooks]`: HTTP join and push hooks. Off by default.
    #[serde(default)]
    pub hooks: Option<ChannelHooks>,
    /// `[channel.forward]`: where `mode = "forward"` sends pushes.
    #[serde(default)]
    pub forward: Option<ForwardRule>,
    /// `[channel.lifecycle]`: joins, leaves and disconnects to a Redis
    /// stream for backends. Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<LifecycleRule>,
}

/// `[channel.lifecycle]`: where a rule's lifecycle events go
/// (docs/lifecycle.md).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LifecycleRule {
    /// The stream's key after `redis.prefix`. Default `events`.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// About this many events are kept (`XADD MAXLEN ~`). Default 100000.
    #[serde(default = "default_max_len")]
    pub max_len: u64,
}

fn default_stream() -> String {
    "events".into()
}

fn default_max_len() -> u64 {
    100_000
}

/// Longest `max_len`: a stream's memory is the backend's to bound.
const MAX_STREAM_LEN: u64 = 100_000_000;

impl LifecycleRule {
    fn check(&self, key: &Key) -> Result<(), ConfigError> {
        let s = &self.stream;
        if s.is_empty()
            || s.len() > 200
            || s.contains(|c: char| c.is_whitespace() || c.is_control())
        {
            return Err(key
                .field("stream")
                .invalid("must be 1 to 200 characters without spaces"));
        }
        if !(1..=MAX_STREAM_LEN).contains(&self.max_len) {
            return Err(key
                .field("max_len")
                .invalid(format!("must be 1 to {MAX_STREAM_LEN}")));
        }
        Ok(())
    }
}

/// `[channel.history]`: how much of each topic's history is kept.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HistoryRule {
    /// Messages kept per topic. Default 100.
    #[serde(default = "default_history_size")]
    pub size: usize,
    /// Seconds a topic's messages are kept after its last message. Default
    /// 300.
    #[serde(default = "default_history_ttl")]
    pub ttl: u64,
    /// Most messages a join replays (for `since` and `last`); a client
    /// further behind is told to refetch. Default: `size`.
    #[serde(default)]
    pub max_recover: Option<usize>,
}

/// `[channel.forward]`: the stream pushes go to, and how they are answered.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ForwardRule {
    /// The stream's name after the Redis prefix and `in:`: `chat` is the
    /// stream `phx:in:chat`. Letters, digits, `_`, `-`, `.` and `:`.
    pub stream: String,
    /// `worker` (default): the client's reply is a backend's answer.
    /// `on_store`: the client is answered once the push is in the stream.
    #[serde(default)]
    pub reply: ReplyMode,
    /// How long a backend may take to answer, milliseconds; then the client
    /// is answered `{"reason":"timeout"}`. Default 5000.
    #[serde(default = "default_reply_timeout_ms")]
    pub reply_timeout_ms: u64,
    /// The token claims a forwarded push carries. Default: all of them.
    #[serde(default)]
    pub claims: Option<Vec<String>>,
    /// About how many entries the stream keeps (`XADD MAXLEN ~`): the oldest
    /// are trimmed, read or not. Default 100000.
    #[serde(default = "default_stream_max_len")]
    pub max_len: usize,
    /// Pushes of one joined channel that may await their answer at once;
    /// more get `{"reason":"too many pending pushes"}`. Default 16.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// Pushes per second one joined channel may forward, after a burst of
    /// as many; more get `{"reason":"rate limited"}`. Default 50.
    #[serde(default = "default_forward_rate")]
    pub rate: u32,
}

fn default_reply_timeout_ms() -> u64 {
    5000
}

fn default_stream_max_len() -> usize {
    100_000
}

fn default_max_pending() -> usize {
    16
}

fn default_forward_rate() -> u32 {
    50
}

/// Longest `reply_timeout_ms`: a pending push holds a little memory and a
/// timer, and a client waits no longer than this for its reply.
const MAX_REPLY_TIMEOUT_MS: u64 = 120_000;

impl ForwardRule {
    fn settings(&self, key: &Key) -> Result<Forward, ConfigError> {
        let field = |name: &str| key.field(name);
        let valid = |c: char| c.is_ascii_alphanumeric() || "_-.:".contains(c);
        if self.stream.is_empty() || self.stream.len() > 200 || !self.stream.chars().all(valid) {
            return Err(
                field("stream").invalid("must be 1 to 200 letters, digits, '_', '-', '.' or ':'")
            );
        }
        if !(1..=MAX_REPLY_TIMEOUT_MS).contains(&self.reply_timeout_ms) {
            return Err(field("reply_timeout_ms")
                .invalid(format!("must be 1 to {MAX_REPLY_TIMEOUT_MS} milliseconds")));
        }
        if self.max_len == 0 {
            return Err(field("max_len").invalid("must be at least 1"));
        }
        if !(1..=10_000).contains(&self.max_pending) {
            return Err(field("max_pending").invalid("must be 1 to 10000"));
        }
        if self.rate == 0 {
            return Err(field("rate").invalid("must be at least 1"));
        }
        if let Some(c) = self.claims.iter().flatten().find(|c| c.is_empty()) {
            return Err(field("claims").invalid(format!("{c:?} is empty")));
        }
        Ok(Forward {
            stream: format!("in:{}", self.stream),
            reply: self.reply,
            reply_timeout: Duration::from_millis(self.reply_timeout_ms),
            claims: self.claims.clone(),
            max_len: self.max_len,
            max_pending: self.max_pending,
            rate: self.rate,
        })
    }
}

/// Most messages a topic may keep: a replay is queued on the connection at
/// once, so this stays within what one client may hold.
pub(crate) const MAX_HISTORY_SIZE: usize = 10_000;
/// Longest `ttl`, seconds: 30 days.
pub(crate) const MAX_HISTORY_TTL: u64 = 30 * 24 * 3600;

fn default_history_size() -> usize {
    100
}

fn default_history_ttl() -> u64 {
    300
}

impl HistoryRule {
    fn settings(&self, key: &Key) -> Result<History, ConfigError> {
        let field = |name: &str| key.field(name);
        if !(1..=MAX_HISTORY_SIZE).contains(&self.size) {
            return Err(field("size").invalid(format!("must be 1 to {MAX_HISTORY_SIZE} messages")));
        }
        if !(1..=MAX_HISTORY_TTL).contains(&self.ttl) {
            return Err(field("ttl").invalid(format!("must be 1 to {MAX_HISTORY_TTL} seconds")));
        }
        let max_recover = self.max_recover.unwrap_or(self.size);
        if !(1..=self.size).contains(&max_recover) {
            return Err(field("max_recover").invalid("must be 1 to size"));
        }
        Ok(History::new(self.size, Duration::from_secs(self.ttl)).max_recover(max_recover))
    }
}

fn default_true() -> bool {
    true
}

/// 64 KiB: a chat message or a JSON document, not a file upload.
pub const DEFAULT_MAX_PAYLOAD: usize = 64 << 10;

fn default_max_payload() -> usize {
    DEFAULT_MAX_PAYLOAD
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

/// `[[channel]]`, converted.
#[derive(Debug, Clone)]
pub struct ChannelSettings {
    /// The topics the rule serves.
    pub pattern: TopicPattern,
    /// Who may join.
    pub policy: Policy,
    /// The socket paths the rule applies to; `None`: all.
    pub sockets: Option<Vec<String>>,
    /// Events clients may push.
    pub events: Vec<String>,
    /// What pushed events do.
    pub mode: Mode,
    /// Whether a pushed event is also sent back to its sender.
    pub include_sender: bool,
    /// Largest payload of a client push, bytes; `None`: no limit of its own.
    pub max_payload: Option<usize>,
    /// Presence, when tracked.
    pub presence: Option<PresenceRule>,
    /// History, when kept.
    pub history: Option<History>,
    /// The join and push hooks.
    pub hooks: ChannelHookSettings,
    /// Where pushes go, with `mode = "forward"`.
    pub forward: Option<Forward>,
    /// Lifecycle events, when reported.
    pub lifecycle: Option<LifecycleRule>,
}

impl ChannelSettings {
    /// Whether the rule serves the socket at `path`.
    pub fn applies_to(&self, path: &str) -> bool {
        self.sockets
            .as_ref()
            .is_none_or(|list| list.iter().any(|p| p == path))
    }
}

/// Client events that are the protocol's own (presence's included), or empty.
fn reserved_event(e: &str) -> bool {
    e.is_empty() || crate::protocol::reserved_event(e).is_some() || e == "access_token"
}

impl ChannelRule {
    /// `socket_paths`: the configured sockets. `redis`: whether a Redis URL
    /// is set.
    pub(super) fn settings(
        &self,
        key: &Key,
        socket_paths: &[&str],
        redis: bool,
    ) -> Result<ChannelSettings, ConfigError> {
        let field = |name: &str| key.field(name);
        let pattern =
            TopicPattern::parse(&self.pattern).map_err(|e| field("pattern").invalid(e.reason))?;
        if pattern.placeholders().next().is_some() && self.policy != Policy::Token {
            return Err(field("policy")
                .invalid("patterns with {claim} placeholders need policy = \"token\""));
        }
        for p in self.sockets.iter().flatten() {
            if !socket_paths.contains(&p.as_str()) {
                return Err(field("sockets").invalid(format!("no [[socket]] has path {p:?}")));
            }
        }
        if let Some(e) = self.events.iter().find(|e| reserved_event(e)) {
            return Err(field("events").invalid(format!("{e:?} is reserved or empty")));
        }
        if let Some(p) = &self.presence {
            p.check(&field("presence"), self.policy)?;
        }
        if let Some(l) = &self.lifecycle {
            l.check(&field("lifecycle"))?;
        }
        let hooks = match &self.hooks {
            Some(h) => h.settings(&field("hooks"))?,
            None => ChannelHookSettings::default(),
        };
        match (self.mode == Mode::Hook, hooks.push.is_some()) {
            (true, false) => {
                return Err(field("mode").invalid("mode = \"hook\" needs [channel.hooks] push"))
            }
            (false, true) => {
                return Err(field("hooks.push").invalid("needs mode = \"hook\" on the rule"))
            }
            _ => {}
        }
        let forward = match (self.mode, &self.forward) {
            (Mode::Forward, None) => {
                return Err(
                    field("mode").invalid("mode = \"forward\" needs a [channel.forward] table")
                )
            }
            (Mode::Forward, Some(_)) if !redis => {
                return Err(
                    field("forward").invalid("forwarding needs Redis: set [redis] url (REDIS_URL)")
                )
            }
            (Mode::Forward, Some(_)) if self.events.is_empty() => {
                return Err(field("events").invalid("list the events to forward"))
            }
            (Mode::Forward, Some(f)) => Some(f.settings(&field("forward"))?),
            (_, Some(_)) => {
                return Err(field("forward").invalid("[channel.forward] needs mode = \"forward\""))
            }
            (_, None) => None,
        };
        Ok(ChannelSettings {
            pattern,
            policy: self.policy,
            sockets: self.sockets.clone(),
            events: self.events.clone(),
            mode: self.mode,
            include_sender: self.include_sender,
            max_payload: (self.max_payload > 0).then_some(self.max_payload),
            presence: self.presence.clone(),
            history: self
                .history
                .map(|h| h.settings(&key.field("history")))
                .transpose()?,
            hooks,
            forward,
            lifecycle: self.lifecycle.clone(),
        })
    }
}

impl PresenceRule {
    fn check(&self, key: &Key, policy: Policy) -> Result<(), ConfigError> {
        let field = |name: &str| key.field(name);
        match (&self.key_claim, &self.key_param) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(field("key_claim").invalid("set exactly one of key_claim and key_param"))
            }
            (Some(c), None) if c.is_empty() => {
                return Err(field("key_claim").invalid("must not be empty"))
            }
            (None, Some(k)) if k.is_empty() => {
                return Err(field("key_param").invalid("must not be empty"))
            }
            (Some(_), None) if policy != Policy::Token => {
                return Err(
                    field("key_claim").invalid("a claim as presence key needs policy = \"token\"")
                )
            }
            _ => {}
        }
        if let Some(e) = self.update_event.as_deref().filter(|e| reserved_event(e)) {
            return Err(field("update_event").invalid(format!("{e:?} is reserved or empty")));
        }
        if let Some(m) = self
            .meta_params
            .iter()
            .find(|m| m.is_empty() || m.starts_with("phx_") || *m == "online_at")
        {
            return Err(field("meta_params").invalid(format!("{m:?} is reserved or empty")));
        }
        Ok(())
    }
}
