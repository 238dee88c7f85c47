//! The way in: what clients send that backends decide, in any language.
//!
//! A `[[channel]]` rule with `mode = "forward"` appends its pushes to a
//! Redis stream, where backends read them with consumer groups and publish
//! their answers to the pod's reply channel (docs/backends.md).
//!
//! # Layout
//! - `forward`: the stream append, the pending pushes and their answers,
//!   and a channel's budget of pushes.
//! - `answer`: reading a backend's answer.

mod answer;
mod forward;

pub(crate) use forward::{Budget, Forwarder, Push};
