//! Channels: the per-topic conversation between a client and the server,
//! modelled on `Phoenix.Channel`.
//!
//! Each joined channel is handled apart from the others, as each Phoenix
//! channel runs in its own process: a slow callback stalls only its own
//! channel, and a panic ends only that channel (the client receives
//! `phx_error` and may rejoin). A channel has a task only while it has
//! something to do; between messages it rests in its slot.
//!
//! Below the socket, above the pubsub: a channel subscribes, broadcasts and
//! tracks presence; it knows nothing of transports or of the connection's
//! state machine, which starts it through the [`Router`].
//!
//! # Layout
//! - `context`: what a callback can do (`ChannelContext`, `ReplyRef`).
//! - `runner`: one joined channel's join, messages and end.
//! - `slot`: where a channel rests between messages, and its queue.
//! - `inline`: a config rule's join and end on the connection's task.
//! - `router`, `pattern`: topic patterns → channel factories.

mod context;
mod inline;
mod pattern;
pub(crate) mod queue;
pub(crate) mod registry;
mod router;
mod runner;
mod slot;

pub use context::{ChannelContext, InfoSender, ReplyRef};
pub use pattern::{PatternError, TopicPattern};
pub use router::Router;
pub(crate) use runner::{Previous, Start};
pub(crate) use slot::Inbox;

use crate::conn::{ConnHandle, Inbound};
use crate::metrics::metrics;
use crate::presence::Presence;
use crate::protocol::Payload;
use crate::pubsub::PubSub;
use async_trait::async_trait;
use std::sync::Arc;

/// Socket assigns: what `connect` learned about the client (for example JWT
/// claims). Every channel of the connection sees them.
pub type Assigns = serde_json::Map<String, serde_json::Value>;

/// What every channel of an endpoint shares: where broadcasts go, presence,
/// and this node's name. One per endpoint, behind an `Arc`.
#[derive(Debug)]
pub(crate) struct Services {
    pub(crate) pubsub: PubSub,
    pub(crate) presence: Presence,
    pub(crate) node: Arc<str>,
    /// Where joins wait for their turn, one lane per client address.
    pub(crate) joins: queue::Joins,
    /// Where connections register for the admin API, when it is on.
    pub(crate) registry: Option<Arc<registry::Registry>>,
}

/// Facts about the connection shared by all its channels.
#[derive(Debug)]
pub(crate) struct SocketInfo {
    pub(crate) assigns: Assigns,
    pub(crate) id: Option<String>,
}

/// Logs and counts the answer to a `phx_join`: `ok`, or why it was refused
/// (the `result` label of `gateway_joins_total`).
pub(crate) fn join_answered(conn: &ConnHandle, topic: &str, result: &'static str) {
    if result == "ok" {
        tracing::debug!(conn = conn.id(), topic, "channel joined");
    } else {
        tracing::debug!(conn = conn.id(), topic, result, "join refused");
    }
    metrics().join(topic, result);
}

/// The outcome of [`Channel::join`]: `Ok(reply)` admits the client (use
/// [`Payload::empty`] for no reply), `Err(reply)` refuses it.
pub type JoinResult = Result<Payload, Payload>;

/// How a channel ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A normal end: the client receives `phx_close` and does not rejoin.
    Normal,
    /// A shutdown with a reason: `phx_close` too.
    Shutdown(String),
    /// An abnormal end: the client receives `phx_error` and rejoins.
    Error(String),
}

/// Why [`Channel::terminate`] is called.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Terminate {
    /// The channel stopped itself.
    Stop(StopReason),
    /// The client left the topic (`phx_leave`).
    Leave,
    /// The client joined the same topic again; this instance is replaced.
    DuplicateJoin,
    /// The connection closed.
    Closed,
    /// The topic's live messages skipped offsets: the channel ends with an
    /// error so its client rejoins from its last position and recovers.
    Lost,
}

/// The answer to a client event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandleIn {
    /// Reply with a status (`"ok"`, `"error"`, …) and a response.
    Reply(String, Payload),
    /// No reply now; the channel may answer later through a [`ReplyRef`].
    NoReply,
    /// Stop the channel, sending the reply first if one is given.
    Stop(StopReason, Option<(String, Payload)>),
}

impl HandleIn {
    /// Reply `ok` with `response`.
    pub fn ok(response: impl Into<Payload>) -> Self {
        HandleIn::Reply("ok".into(), response.into())
    }

    /// Reply `error` with `response`.
    pub fn error(response: impl Into<Payload>) -> Self {
        HandleIn::Reply("error".into(), response.into())
    }
}

/// What to do after `handle_out` or `handle_info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Keep going.
    Continue,
    /// Stop the channel.
    Stop(StopReason),
}

/// A channel implementation. One instance serves one joined topic on one
/// connection; the [`Router`] makes a fresh one for every join.
#[async_trait]
pub trait Channel: Send + 'static {
    /// Messages the channel sends itself with [`ChannelContext::send_after`]
    /// or an [`InfoSender`]; use `()` when unused.
    type Info: Send + 'static;

    /// Authorizes the join of `topic` with the client's params.
    async fn join(
        &mut self,
        topic: &str,
        payload: Payload,
        ctx: &mut ChannelContext<Self::Info>,
    ) -> JoinResult;

    /// Handles an event pushed by the client. The default refuses every event
    /// with an error reply, so nothing is dropped silently.
    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext<Self::Info>,
    ) -> HandleIn {
        let _ = (payload, ctx);
        HandleIn::error(Payload::reason(format_args!("unhandled event {event}")))
    }

    /// Broadcast events this channel wants to see in [`Channel::handle_out`]
    /// instead of having them sent straight to the client.
    fn intercept(&self) -> Vec<String> {
        Vec::new()
    }

    /// Handles an intercepted broadcast; the default pushes it unchanged.
    async fn handle_out(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext<Self::Info>,
    ) -> Next {
        ctx.push(event, payload);
        Next::Continue
    }

    /// Handles a message the channel sent itself.
    async fn handle_info(
        &mut self,
        info: Self::Info,
        ctx: &mut ChannelContext<Self::Info>,
    ) -> Next {
        let _ = (info, ctx);
        Next::Continue
    }

    /// Called after the socket assigns changed (a client refreshed its token);
    /// [`ChannelContext::assigns`] holds the new ones. Return
    /// `Next::Stop(StopReason::Normal)` to end a channel the new credentials
    /// no longer allow (the client receives `phx_close`).
    async fn handle_assigns(&mut self, ctx: &mut ChannelContext<Self::Info>) -> Next {
        let _ = ctx;
        Next::Continue
    }

    /// Called once when the channel ends, except after a panic.
    async fn terminate(&mut self, reason: Terminate, ctx: &mut ChannelContext<Self::Info>) {
        let _ = (reason, ctx);
    }
}

/// What the socket and the hub send to a channel task.
#[derive(Debug)]
pub(crate) enum ChannelMsg {
    /// A client event, counted against the connection's byte budget until
    /// handled.
    In {
        event: String,
        ref_: Option<String>,
        payload: Payload,
        held: Inbound,
    },
    /// The client left; reply to `ref_`.
    Leave {
        join_ref: Option<String>,
        ref_: Option<String>,
    },
    /// An intercepted broadcast.
    Out { event: String, payload: Payload },
    /// A newer join of the same topic replaces this channel.
    Replace,
    /// The socket assigns changed.
    Assigns(Arc<SocketInfo>),
    /// The connection closed.
    Closed,
    /// The topic's live messages skipped offsets: the channel ends with an
    /// error so its client rejoins from its last position and recovers.
    Lost,
    /// An operator removed the client from the topic (the admin API): the
    /// channel ends and the client receives `phx_close`.
    Removed,
}
