//! HTTP hooks: a backend decides connects, joins and pushes over plain
//! HTTP, for teams that would rather answer a JSON `POST` than write Rust
//! (Centrifugo's proxies). The contract — bodies, answers, the signature,
//! what clients read when a hook fails — is docs/hooks.md.
//!
//! Above the socket and channel layers, below `config` (which converts its
//! tables into [`HookSettings`]) and `app` (which calls the join and push
//! hooks from its rule channels and mounts [`connect`]'s socket handler).
//!
//! # Layout
//! - `client`: one hook URL — pool, signature, timeout, concurrency limit,
//!   retry, metrics.
//! - `wire`: the request bodies and the answers, checked.
//! - `connect`: the socket handler that asks the connect hook.
//! - `channel`: the join and push hooks as steps of a rule channel.

mod channel;
mod client;
mod connect;
mod wire;

pub(crate) use channel::{join, push};
pub(crate) use client::{Hook, HookPool};
pub(crate) use connect::HookSocket;

use hyper::{StatusCode, Uri};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Default `timeout_ms` of a hook.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(2000);
/// Default `max_concurrency` of a hook.
pub const DEFAULT_MAX_CONCURRENCY: usize = 64;

/// Where one hook is and how long and how often it may be waited on.
#[derive(Debug, Clone)]
pub struct HookSettings {
    /// `http://host:port/path`.
    pub url: Uri,
    /// Whole-call bound: connect, send, answer, and the retry.
    pub timeout: Duration,
    /// Calls in flight at once; more are refused as `hook busy`.
    pub max_concurrency: usize,
}

/// A socket's connect hook.
#[derive(Debug, Clone)]
pub struct ConnectHookSettings {
    /// URL, timeout, concurrency.
    pub hook: HookSettings,
    /// Request headers forwarded to the hook, lower-case names.
    pub headers: Vec<String>,
}

/// The secret that signs every hook request, so a backend can tell the
/// gateway from anyone else who reaches its port.
#[derive(Clone)]
pub struct HookSecret(Arc<[u8]>);

impl HookSecret {
    /// A secret of these bytes.
    pub fn new(bytes: &[u8]) -> Self {
        HookSecret(Arc::from(bytes))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Without the secret, which must not reach logs.
impl fmt::Debug for HookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HookSecret(..)")
    }
}

/// Why a hook gave no usable answer; its [`reason`](Self::reason) is what
/// the client reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HookError {
    /// No answer within the hook's timeout.
    #[error("timeout")]
    Timeout,
    /// The hook server is down, unreachable, or answered 5xx.
    #[error("hook unavailable")]
    Unavailable,
    /// The answer broke the contract.
    #[error("bad hook response")]
    BadResponse,
    /// The hook's `max_concurrency` calls are in flight.
    #[error("hook busy")]
    Busy,
}

impl HookError {
    /// The `reason` of the error reply a join or push gets.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            HookError::Timeout => "timeout",
            HookError::Unavailable => "hook unavailable",
            HookError::BadResponse => "bad hook response",
            HookError::Busy => "hook busy",
        }
    }

    /// The HTTP status a connect gets: the hook's fault, not the client's.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            HookError::BadResponse => StatusCode::BAD_GATEWAY,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn result(self) -> crate::metrics::HookResult {
        use crate::metrics::HookResult;
        match self {
            HookError::Timeout => HookResult::Timeout,
            HookError::Unavailable => HookResult::Unavailable,
            HookError::BadResponse => HookResult::BadResponse,
            HookError::Busy => HookResult::Busy,
        }
    }
}
