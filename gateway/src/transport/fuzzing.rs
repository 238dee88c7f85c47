//! Thin wrappers over the transport's crate-private parsers for the
//! cargo-fuzz targets in `fuzz/`, re-exported as `gateway::fuzzing` when the
//! `fuzzing` feature is on. Not an API: each wrapper only forwards.

use super::frame_reader::{self, Incoming, ReadError};
use super::longpoll::{http, relay, session, token};
use crate::protocol::{Message, Vsn};
use bytes::Bytes;
use tokio::io::AsyncRead;

/// A client message or control frame, as the frame reader yields it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete text message (valid UTF-8).
    Text(Bytes),
    /// A complete binary message.
    Binary(Bytes),
    /// A ping and its payload.
    Ping(Bytes),
    /// A close frame and its status code.
    Close(Option<u16>),
}

/// Why the frame reader stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The stream ended.
    Eof,
    /// The stream failed.
    Io,
    /// A message over the limit.
    TooLarge,
    /// An RFC 6455 framing violation (1002).
    Protocol,
    /// Text or a close reason that is not UTF-8 (1007).
    InvalidUtf8,
}

/// The WebSocket frame reader of `transport/frame_reader.rs`.
pub struct FrameReader<R>(frame_reader::FrameReader<frame_reader::Plain<R>>);

impl<R> std::fmt::Debug for FrameReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrameReader(..)")
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader refusing messages over `max` bytes.
    pub fn new(io: R, max: usize) -> Self {
        FrameReader(frame_reader::FrameReader::new(frame_reader::Plain(io), max))
    }

    /// The next message or control frame (cancel-safe, like the original).
    pub async fn next(&mut self) -> Result<Frame, Stop> {
        match self.0.next().await {
            Ok(Incoming::Text(b)) => Ok(Frame::Text(b)),
            Ok(Incoming::Binary(b)) => Ok(Frame::Binary(b)),
            Ok(Incoming::Ping(b)) => Ok(Frame::Ping(b)),
            Ok(Incoming::Close(code)) => Ok(Frame::Close(code)),
            Err(ReadError::Eof) => Err(Stop::Eof),
            Err(ReadError::Io) => Err(Stop::Io),
            Err(ReadError::TooLarge) => Err(Stop::TooLarge),
            Err(ReadError::Protocol(_)) => Err(Stop::Protocol),
            Err(ReadError::InvalidUtf8(_)) => Err(Stop::InvalidUtf8),
        }
    }

    /// The read buffer's length and capacity, and the bytes of a fragmented
    /// message so far.
    pub fn held(&self) -> (usize, usize, usize) {
        self.0.held()
    }
}

/// A long-poll POST body as `http.rs` splits it into lines; `None` when it
/// is not UTF-8 (answered 400).
pub fn longpoll_body(body: &[u8], ndjson: bool) -> Option<Vec<String>> {
    let body = String::from_utf8(body.to_vec()).ok()?;
    Some(http::body_lines(body, ndjson))
}

/// One POSTed line as the session decodes it; the error is the
/// disconnect it causes, in words.
pub fn longpoll_line(vsn: Vsn, line: &str, max: usize) -> Result<Option<Message>, String> {
    session::line_message(vsn, 0, line, max).map_err(|d| format!("{d:?}"))
}

/// The long-poll session token signer and the relay seal, one secret.
#[derive(Debug, Clone)]
pub struct Signer(token::Signer);

impl Signer {
    /// A signer for `secret`.
    pub fn new(secret: &[u8]) -> Self {
        Signer(token::Signer::new(secret))
    }

    /// The token for a session of `node`.
    pub fn sign(&self, node: &str, session: u128, ack: u64) -> String {
        self.0.sign(&token::SessionToken {
            node: node.to_owned(),
            session,
            ack,
        })
    }

    /// `(node, session, ack)` if this secret signed `token`.
    pub fn verify(&self, token: &str) -> Option<(String, u128, u64)> {
        self.0.verify(token).map(|t| (t.node, t.session, t.ack))
    }

    /// Whether `token` has the shape of a session token, whoever signed it.
    pub fn is_session_token(token: &str) -> bool {
        token::is_session_token(token)
    }

    /// A relay MAC over `data`.
    pub fn mac(&self, data: &[u8]) -> String {
        self.0.mac(data)
    }

    /// Whether `mac` is the relay MAC of `data`.
    pub fn check_mac(&self, data: &[u8], mac: &str) -> bool {
        self.0.check_mac(data, mac)
    }

    /// A relay message, sealed.
    pub fn seal(&self, msg: &RelayMessage) -> Bytes {
        relay::seal(&self.0, &msg.0)
    }

    /// A sealed relay message as a pod's inbox opens it.
    pub fn open(&self, data: &[u8]) -> Option<RelayMessage> {
        relay::open(&self.0, data).map(RelayMessage)
    }
}

/// A message between pods of the long-poll relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayMessage(relay::Message);

impl RelayMessage {
    /// The message written as JSON, if it is one.
    pub fn from_json(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok().map(RelayMessage)
    }
}
