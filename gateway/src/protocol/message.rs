//! The protocol's messages, independent of how they are serialized.

use super::Payload;
use bytes::Bytes;

/// A message from a client: `[join_ref, ref, topic, event, payload]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The join_ref of the channel the client believes it talks to.
    pub join_ref: Option<String>,
    /// The client's reference for this message, echoed in the reply.
    pub ref_: Option<String>,
    /// Topic, e.g. `room:lobby`; `phoenix` for heartbeats.
    pub topic: String,
    /// Event name, e.g. `phx_join` or an application event.
    pub event: String,
    /// The body.
    pub payload: Payload,
}

/// A message to a client, borrowed so that it can be encoded without copies.
#[derive(Clone, Copy, Debug)]
pub enum Outbound<'a> {
    /// A push, broadcast, `phx_close` or `phx_error`.
    Message {
        /// Channel join_ref; `None` for fastlane broadcasts.
        join_ref: Option<&'a str>,
        /// `None` for pushes and broadcasts; the join_ref for close/error.
        ref_: Option<&'a str>,
        /// Topic.
        topic: &'a str,
        /// Event.
        event: &'a str,
        /// Body.
        payload: &'a Payload,
    },
    /// A `phx_reply`: `{"status": status, "response": response}`.
    Reply {
        /// Channel join_ref (`None` for heartbeat and unmatched-topic replies).
        join_ref: Option<&'a str>,
        /// The ref of the message being answered.
        ref_: Option<&'a str>,
        /// Topic.
        topic: &'a str,
        /// `ok`, `error`, or any status the channel chose.
        status: &'a str,
        /// The response body.
        response: &'a Payload,
    },
}

impl Outbound<'_> {
    /// Bytes of the variable parts, to size the encode buffer once.
    pub(crate) fn size_hint(&self) -> usize {
        let (jr, r, topic, word, body) = match *self {
            Outbound::Message {
                join_ref,
                ref_,
                topic,
                event,
                payload,
            } => (join_ref, ref_, topic, event, payload),
            Outbound::Reply {
                join_ref,
                ref_,
                topic,
                status,
                response,
            } => (join_ref, ref_, topic, status, response),
        };
        let body = match body {
            Payload::Json(j) => j.bytes().len(),
            Payload::Binary(b) => b.len(),
        };
        jr.map_or(0, str::len) + r.map_or(0, str::len) + topic.len() + word.len() + body
    }
}

/// An encoded frame, ready for any transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A text frame (JSON).
    Text(Bytes),
    /// A binary frame (V2 binary layout).
    Binary(Bytes),
}

impl Frame {
    /// The encoded bytes.
    pub fn bytes(&self) -> &Bytes {
        match self {
            Frame::Text(b) | Frame::Binary(b) => b,
        }
    }
}

/// Topics may not smuggle Redis glob characters, whitespace or control
/// characters, and fit the one-byte length of V2 binary frames.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 255
        && topic.chars().all(|c| {
            !c.is_control()
                && !c.is_whitespace()
                && !matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\')
        })
}
