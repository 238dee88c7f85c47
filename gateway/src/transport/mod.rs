//! Transports: bytes on the wire ↔ protocol messages. A transport admits a
//! client (`admission`, the same steps for both), reads its frames, decodes
//! them into [`Message`]s for the socket's connection state machine, and
//! hands the connection's outbound queue to a writer. No topic logic here.
//!
//! # Layout
//! - `admission`: who may connect; the per-pod limits, stop signal, drain.
//! - `drain`: when each connection closes during a graceful drain.
//! - `shed`: the WebSocket connections rebalancing may close, oldest first.
//! - `source`: per-source limits and who the source of a request is.
//! - `websocket`, `frame_reader`: `{path}/websocket`.
//! - `longpoll`: `{path}/longpoll`, its sessions and their relay between pods.
//! - `response`: the HTTP answers both give.
//! - `http`: plain HTTP connections: timeouts, their count, reading bodies.
//! - `head`: a new connection's first request head, read before hyper so a
//!   WebSocket handshake skips it.

pub(crate) mod admission;
pub(crate) mod drain;
mod frame_reader;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;
pub(crate) mod head;
pub(crate) mod http;
pub(crate) mod longpoll;
pub(crate) mod response;
pub(crate) mod shed;
pub(crate) mod source;
pub(crate) mod websocket;

use crate::conn::Disconnect;
use crate::protocol::{Message, Vsn};
use bytes::Bytes;

/// A client frame's data, before decoding.
#[derive(Debug, Clone, Copy)]
enum Data<'a> {
    Text(&'a Bytes),
    Binary(&'a Bytes),
}

/// Decodes one client frame with the connection's serializer; a frame that
/// is not a Phoenix message closes the connection (1007).
fn decode(vsn: Vsn, conn: u64, data: Data<'_>) -> Result<Message, Disconnect> {
    let decoded = match data {
        Data::Text(text) => vsn.decode_text(text),
        Data::Binary(bytes) => vsn.decode_binary(bytes),
    };
    decoded.map_err(|e| {
        tracing::debug!(conn, error = %e, "malformed frame");
        Disconnect::Malformed
    })
}
