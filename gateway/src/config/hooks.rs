//! `[hooks]`, `[socket.hooks]` and `[channel.hooks]`: the HTTP hooks a
//! backend answers (docs/hooks.md), converted into
//! [`HookSettings`](crate::hooks::HookSettings) with their URLs parsed.

use super::{millis, ConfigError, Key};
use crate::hooks::{
    ConnectHookSettings, HookSecret, HookSettings, DEFAULT_MAX_CONCURRENCY, DEFAULT_TIMEOUT,
};
use hyper::header::HeaderName;
use hyper::Uri;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Shortest `hooks.secret`, bytes: it is an HMAC key.
const MIN_SECRET: usize = 16;
/// Longest `timeout_ms`: a client waits this long for its join or push.
const MAX_TIMEOUT_MS: u64 = 60_000;

/// `[hooks]`: what every hook shares.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HooksSection {
    /// Signs every hook request (HMAC-SHA256); at least 16 bytes; required
    /// when any hook is configured. `GATEWAY_HOOK_SECRET` overrides it.
    pub secret: Option<String>,
}

/// `[socket.hooks]`: the connect hook of a socket.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketHooks {
    /// `http://host:port/path` of the connect hook; required.
    pub connect: Option<String>,
    /// Request headers forwarded to the hook (lower-case names). None by default.
    pub headers: Vec<String>,
    /// Whole-call bound, milliseconds. Default 2000.
    pub timeout_ms: u64,
    /// Calls in flight at once; more are refused. Default 64.
    pub max_concurrency: usize,
}

impl Default for SocketHooks {
    fn default() -> Self {
        SocketHooks {
            connect: None,
            headers: Vec::new(),
            timeout_ms: millis(DEFAULT_TIMEOUT),
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
        }
    }
}

/// `[channel.hooks]`: the join and push hooks of a rule.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelHooks {
    /// URL of the join hook, asked after the rule's policy admits a join.
    pub join: Option<String>,
    /// URL of the push hook, asked for each allowed event; needs `mode = "hook"`.
    pub push: Option<String>,
    /// Whole-call bound of each hook, milliseconds. Default 2000.
    pub timeout_ms: u64,
    /// Calls in flight at once, per hook; more are refused. Default 64.
    pub max_concurrency: usize,
}

impl Default for ChannelHooks {
    fn default() -> Self {
        ChannelHooks {
            join: None,
            push: None,
            timeout_ms: millis(DEFAULT_TIMEOUT),
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
        }
    }
}

/// `[channel.hooks]`, converted.
#[derive(Debug, Clone, Default)]
pub struct ChannelHookSettings {
    /// The join hook.
    pub join: Option<HookSettings>,
    /// The push hook.
    pub push: Option<HookSettings>,
}

impl HooksSection {
    /// The secret, required when `any_hook`.
    pub(super) fn settings(
        &self,
        key: &Key,
        any_hook: bool,
    ) -> Result<Option<HookSecret>, ConfigError> {
        let field = key.field("secret");
        match &self.secret {
            Some(s) if s.len() < MIN_SECRET => {
                Err(field.invalid(format!("must be at least {MIN_SECRET} bytes")))
            }
            Some(s) => Ok(Some(HookSecret::new(s.as_bytes()))),
            None if any_hook => Err(field.invalid(
                "missing: hooks are configured, so requests must be signed; \
                 set hooks.secret or GATEWAY_HOOK_SECRET",
            )),
            None => Ok(None),
        }
    }
}

/// The timeout and concurrency of a hook table, checked.
fn limits(
    key: &Key,
    timeout_ms: u64,
    max_concurrency: usize,
) -> Result<(Duration, usize), ConfigError> {
    if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(key
            .field("timeout_ms")
            .invalid(format!("must be 1 to {MAX_TIMEOUT_MS}")));
    }
    if max_concurrency == 0 {
        return Err(key.field("max_concurrency").invalid("must be at least 1"));
    }
    Ok((Duration::from_millis(timeout_ms), max_concurrency))
}

/// A hook URL: plain `http://` with a host (TLS to a hook is a sidecar's or
/// a mesh's job).
fn url(key: &Key, text: &str) -> Result<Uri, ConfigError> {
    let uri: Uri = text
        .parse()
        .map_err(|e| key.invalid(format!("{text:?} is not a URL: {e}")))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(key.invalid(format!(
            "{text:?}: use http://host:port/path (for TLS, put a sidecar or mesh in front)"
        )));
    }
    Ok(uri)
}

impl SocketHooks {
    pub(super) fn settings(&self, key: &Key) -> Result<ConnectHookSettings, ConfigError> {
        let connect = self
            .connect
            .as_deref()
            .ok_or_else(|| key.field("connect").invalid("required in [socket.hooks]"))?;
        let url = url(&key.field("connect"), connect)?;
        let (timeout, max_concurrency) = limits(key, self.timeout_ms, self.max_concurrency)?;
        for h in &self.headers {
            if h.is_empty()
                || *h != h.to_ascii_lowercase()
                || HeaderName::try_from(h.as_str()).is_err()
            {
                return Err(key
                    .field("headers")
                    .invalid(format!("{h:?} is not a lower-case header name")));
            }
        }
        Ok(ConnectHookSettings {
            hook: HookSettings {
                url,
                timeout,
                max_concurrency,
            },
            headers: self.headers.clone(),
        })
    }
}

impl ChannelHooks {
    pub(super) fn settings(&self, key: &Key) -> Result<ChannelHookSettings, ConfigError> {
        if self.join.is_none() && self.push.is_none() {
            return Err(key.invalid("set join, push or both"));
        }
        let (timeout, max_concurrency) = limits(key, self.timeout_ms, self.max_concurrency)?;
        let hook = |name: &str, text: &Option<String>| {
            text.as_deref()
                .map(|t| {
                    url(&key.field(name), t).map(|url| HookSettings {
                        url,
                        timeout,
                        max_concurrency,
                    })
                })
                .transpose()
        };
        Ok(ChannelHookSettings {
            join: hook("join", &self.join)?,
            push: hook("push", &self.push)?,
        })
    }
}
