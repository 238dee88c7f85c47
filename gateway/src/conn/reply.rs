//! The one way messages addressed to a client's own requests and channels
//! are queued: replies, the gateway's refusals, pushes, and the
//! `phx_close`/`phx_error` a channel ends with. Broadcasts are queued by the
//! hub, already encoded.

use super::ConnHandle;
use crate::protocol::{Outbound, Payload, Refusal};

/// The message a reply answers: its topic, the join_ref of the channel it
/// was sent to, and its own ref.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReplyTo<'a> {
    pub(crate) topic: &'a str,
    pub(crate) join_ref: Option<&'a str>,
    pub(crate) ref_: Option<&'a str>,
}

/// How a channel ends, as the client sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// `phx_close`: the channel is closed and the client does not rejoin.
    Close,
    /// `phx_error`: the channel crashed and the client rejoins.
    Error,
}

impl ConnHandle {
    /// Queues a `phx_reply` with `status` (`ok`, `error`, or a channel's own).
    /// Returns false if the connection is closing.
    pub(crate) fn reply(&self, to: ReplyTo<'_>, status: &str, response: &Payload) -> bool {
        self.send(&Outbound::Reply {
            join_ref: to.join_ref,
            ref_: to.ref_,
            topic: to.topic,
            status,
            response,
        })
    }

    /// Queues the `error` reply of one of the gateway's own refusals.
    pub(crate) fn refuse(&self, to: ReplyTo<'_>, refusal: Refusal) -> bool {
        self.reply(to, "error", &refusal.payload())
    }

    /// Answers a message for a topic this connection has not joined, as
    /// Phoenix does: a leave is acknowledged (echoing the client's join_ref),
    /// anything else gets `unmatched topic` with a null join_ref.
    pub(crate) fn reply_unjoined(&self, event: &str, to: ReplyTo<'_>) {
        if event == "phx_leave" {
            self.reply(to, "ok", &Payload::empty());
        } else {
            let to = ReplyTo {
                join_ref: None,
                ..to
            };
            self.refuse(to, Refusal::UnmatchedTopic);
        }
    }

    /// Queues a push of `event` on a joined channel.
    pub(crate) fn push(&self, topic: &str, join_ref: Option<&str>, event: &str, payload: &Payload) {
        self.send(&Outbound::Message {
            join_ref,
            ref_: None,
            topic,
            event,
            payload,
        });
    }

    /// Queues the end of a channel; `phx_close` and `phx_error` carry the
    /// join_ref as both refs.
    pub(crate) fn end(&self, topic: &str, join_ref: Option<&str>, end: End) {
        let (event, payload) = match end {
            End::Close => ("phx_close", Payload::empty()),
            End::Error => ("phx_error", Refusal::ChannelCrash.payload()),
        };
        self.send(&Outbound::Message {
            join_ref,
            ref_: join_ref,
            topic,
            event,
            payload: &payload,
        });
    }
}
