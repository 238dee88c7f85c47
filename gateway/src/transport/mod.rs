//! Transports: bytes on the wire ↔ protocol frames. No topic logic here;
//! decoded messages go to the socket's [`Connection`](crate::socket).

mod frame_reader;
pub(crate) mod longpoll;
pub(crate) mod websocket;
mod writer;
