//! The Phoenix wire protocol: messages, the V1 and V2 serializers, `vsn`
//! negotiation, and the vocabulary every layer shares (which transport a
//! connection uses, which topics are valid, the gateway's refusals). Imports
//! nothing from the rest of the crate; knows nothing of sockets, channels or
//! how bytes travel.

use bytes::Bytes;

mod binary;
mod event;
mod message;
mod payload;
mod refusal;
mod v1;
mod v2;

pub use event::{is_presence_event, reserved_event, ReservedEvent};
pub use message::{valid_topic, Frame, Message, Outbound};
pub use payload::{Json, Payload};
pub use refusal::Refusal;

/// The transport a connection arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `{path}/websocket`.
    WebSocket,
    /// `{path}/longpoll`.
    LongPoll,
}

impl Transport {
    /// Both transports, in the order of their index.
    pub const ALL: [Transport; 2] = [Transport::WebSocket, Transport::LongPoll];

    /// A dense index, for per-transport counters.
    pub fn index(self) -> usize {
        match self {
            Transport::WebSocket => 0,
            Transport::LongPoll => 1,
        }
    }

    /// The name in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::LongPoll => "longpoll",
        }
    }
}

/// A message that could not be decoded; the connection is closed with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The frame is not valid JSON.
    #[error("invalid json: {0}")]
    Json(String),
    /// The JSON has the wrong shape (arity, types, missing keys).
    #[error("invalid message: {0}")]
    Shape(&'static str),
    /// A binary frame is truncated or of a kind clients may not send.
    #[error("invalid binary frame: {0}")]
    Binary(&'static str),
    /// The serializer in use cannot carry binary frames.
    #[error("binary frames are not supported by serializer {0}")]
    BinaryUnsupported(&'static str),
}

/// A message that cannot be represented by the connection's serializer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    /// V1 JSON has no way to carry binary payloads.
    #[error("serializer 1.0.0 cannot carry binary payloads")]
    BinaryOnV1,
    /// A V2 binary header field is longer than 255 bytes.
    #[error("binary frame field {0} is longer than 255 bytes")]
    FieldTooLong(&'static str),
}

/// A `vsn` the gateway does not speak.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unsupported serializer vsn {0:?}: use 1.0.0 or 2.0.0")]
pub struct UnsupportedVsn(pub String);

/// The serializer chosen for a connection by its `vsn` param.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Vsn {
    /// `1.0.0`: JSON objects, no join_ref on the way out, no binary.
    V1,
    /// `2.0.0`: JSON arrays plus binary frames.
    V2,
}

impl Vsn {
    /// Both serializers, in the order of their index.
    pub const ALL: [Vsn; 2] = [Vsn::V1, Vsn::V2];

    /// Picks the serializer as Phoenix does: a missing `vsn` means 1.0.0,
    /// `~> 1.0.0` selects V1, `~> 2.0.0` selects V2; anything else is refused.
    pub fn negotiate(vsn: Option<&str>) -> Result<Vsn, UnsupportedVsn> {
        let Some(vsn) = vsn else { return Ok(Vsn::V1) };
        let refuse = || UnsupportedVsn(vsn.to_owned());
        let core = vsn.split(['-', '+']).next().unwrap_or("");
        let parts: Vec<&str> = core.split('.').collect();
        if parts.len() != 3
            || parts
                .iter()
                .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(refuse());
        }
        match (parts[0].parse::<u64>(), parts[1].parse::<u64>()) {
            (Ok(1), Ok(0)) => Ok(Vsn::V1),
            (Ok(2), Ok(0)) => Ok(Vsn::V2),
            _ => Err(refuse()),
        }
    }

    /// A dense index, for per-serializer caches.
    pub fn index(self) -> usize {
        match self {
            Vsn::V1 => 0,
            Vsn::V2 => 1,
        }
    }

    /// The version string.
    pub fn as_str(self) -> &'static str {
        match self {
            Vsn::V1 => "1.0.0",
            Vsn::V2 => "2.0.0",
        }
    }

    /// Decodes a text frame.
    pub fn decode_text(self, text: &Bytes) -> Result<Message, ProtocolError> {
        match self {
            Vsn::V1 => v1::decode(text),
            Vsn::V2 => v2::decode(text),
        }
    }

    /// Decodes a binary frame (V2 kind 0 push only).
    pub fn decode_binary(self, data: &Bytes) -> Result<Message, ProtocolError> {
        match self {
            Vsn::V1 => Err(ProtocolError::BinaryUnsupported("1.0.0")),
            Vsn::V2 => binary::decode(data),
        }
    }

    /// Encodes an outbound message. Binary payloads become V2 binary frames.
    pub fn encode(self, out: &Outbound<'_>) -> Result<Frame, EncodeError> {
        let binary = match out {
            Outbound::Message { payload, .. } => matches!(payload, Payload::Binary(_)),
            Outbound::Reply { response, .. } => matches!(response, Payload::Binary(_)),
        };
        match (self, binary) {
            (Vsn::V1, true) => Err(EncodeError::BinaryOnV1),
            (Vsn::V1, false) => Ok(Frame::Text(v1::encode(out))),
            (Vsn::V2, false) => Ok(Frame::Text(v2::encode(out))),
            (Vsn::V2, true) => binary::encode(out).map(Frame::Binary),
        }
    }
}

/// Writes a JSON string literal (escaped) or `null`.
fn write_opt_str(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(buf, s),
        None => buf.extend_from_slice(b"null"),
    }
}

fn write_str(buf: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

fn write_payload(buf: &mut Vec<u8>, p: &Payload) {
    match p {
        Payload::Json(j) => buf.extend_from_slice(j.bytes()),
        // Callers route binary payloads to the binary encoder.
        Payload::Binary(_) => buf.extend_from_slice(b"null"),
    }
}

fn reply_body(buf: &mut Vec<u8>, status: &str, response: &Payload) {
    buf.extend_from_slice(b"{\"status\":");
    write_str(buf, status);
    buf.extend_from_slice(b",\"response\":");
    write_payload(buf, response);
    buf.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_like_phoenix() {
        assert_eq!(Vsn::negotiate(None), Ok(Vsn::V1));
        assert_eq!(Vsn::negotiate(Some("1.0.0")), Ok(Vsn::V1));
        assert_eq!(Vsn::negotiate(Some("2.0.0")), Ok(Vsn::V2));
        assert_eq!(Vsn::negotiate(Some("2.0.7")), Ok(Vsn::V2));
        for bad in [
            "2", "2.0", "3.0.0", "2.1.0", "", "x.y.z", "2.0.0.0", "1.1.0",
        ] {
            assert!(Vsn::negotiate(Some(bad)).is_err(), "{bad}");
        }
    }
}
