//! RFC 6455 as Autobahn|Testsuite checks it: the suite's server cases of
//! sections 1–7 and 9 (scaled to `max_frame_size`), ported case by case and
//! named by their Autobahn numbers, run with raw frames (`test_support::RawWs`) against a
//! real `gateway` process; plus the opening handshake (§4.2.1). Results per
//! group, and why some cases differ: docs/websocket.md.
//!
//! The gateway is a Phoenix server, not an echo server, so a message that
//! Autobahn expects echoed is a heartbeat carrying the case's payload as its
//! ref, and the echo is the heartbeat's reply with that ref (which proves
//! the message arrived intact). Autobahn's waits become events: a pong
//! proves the server read everything before its ping. Each test has a
//! canary client that must still be answered at the end.

mod case;
mod close;
mod framing;
mod handshake;
mod limits;
mod utf8;
