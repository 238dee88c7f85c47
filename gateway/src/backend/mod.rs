//! The way in: what clients send that backends decide, in any language
//! (docs/backends.md).
//!
//! Two ways, for the `gateway` binary's rules: through Redis, where a rule
//! with `mode = "forward"` appends its pushes to a stream that backends
//! read with consumer groups, answering on the pod's reply channel; and
//! over HTTP, where signed hooks decide connects, joins and pushes.
//!
//! Above the socket and channel layers, below `config` (which converts its
//! tables into these settings) and `app` (which calls them from its rule
//! channels and mounts the connect hook's socket handler).
//!
//! # Layout
//! - `forward`: the stream append, the pending pushes and their answers,
//!   and a channel's budget of pushes.
//! - `answer`: a backend's answer to a push, either way: the reply and the
//!   broadcasts it asks for.
//! - [`hooks`]: the HTTP hooks.

mod answer;
mod forward;
pub mod hooks;

pub(crate) use forward::{Budget, Forwarder, Push};
pub use forward::{Forward, ReplyMode};
