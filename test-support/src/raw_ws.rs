//! `RawWs`, a WebSocket client over raw TCP for tests of the framing itself:
//! it writes frames byte for byte as built ([`RawFrame`]: any opcode, RSV
//! bits, FIN, unmasked, in chops of any size), where a WebSocket library
//! would refuse to, and reports every server frame as it came ([`Event`]),
//! pings, pongs and close reasons included, checking that the server framed
//! it as RFC 6455 requires. The handshake goes through the [`crate::http`]
//! client, so tests can also send broken ones.

use crate::http::{HttpConn, Request, Response};
use crate::wait::TIMEOUT;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// The nonce of every handshake (RFC 6455 §1.3's example).
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A valid opening handshake for `target` (`/socket/websocket?vsn=2.0.0`).
pub fn upgrade_request(target: &str) -> Request {
    Request::get(target)
        .keep_alive()
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", KEY)
}

/// A client frame to write exactly as described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    /// RSV1..RSV3 as the three low bits (0..=7).
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
    /// `None` sends the frame unmasked, which servers must refuse.
    pub mask: Option<[u8; 4]>,
}

impl RawFrame {
    /// A final, masked frame.
    pub fn new(opcode: u8, payload: impl Into<Vec<u8>>) -> RawFrame {
        RawFrame {
            fin: true,
            rsv: 0,
            opcode,
            payload: payload.into(),
            mask: Some([0x37, 0xfa, 0x21, 0x3d]),
        }
    }

    pub fn text(payload: impl Into<Vec<u8>>) -> RawFrame {
        RawFrame::new(TEXT, payload)
    }

    pub fn binary(payload: impl Into<Vec<u8>>) -> RawFrame {
        RawFrame::new(BINARY, payload)
    }

    /// A final continuation frame.
    pub fn cont(payload: impl Into<Vec<u8>>) -> RawFrame {
        RawFrame::new(CONTINUATION, payload)
    }

    pub fn ping(payload: impl Into<Vec<u8>>) -> RawFrame {
        RawFrame::new(PING, payload)
    }

    pub fn pong(payload: impl Into<Vec<u8>>) -> RawFrame {
        RawFrame::new(PONG, payload)
    }

    /// A close frame: no body without a code, else the code and `reason`.
    pub fn close(code: Option<u16>, reason: &[u8]) -> RawFrame {
        let mut payload = Vec::new();
        if let Some(code) = code {
            payload.extend_from_slice(&code.to_be_bytes());
            payload.extend_from_slice(reason);
        }
        RawFrame::new(CLOSE, payload)
    }

    /// FIN cleared: a fragment that more will follow.
    pub fn more(mut self) -> RawFrame {
        self.fin = false;
        self
    }

    pub fn rsv(mut self, rsv: u8) -> RawFrame {
        self.rsv = rsv;
        self
    }

    pub fn unmasked(mut self) -> RawFrame {
        self.mask = None;
        self
    }

    /// The frame on the wire, with the shortest length encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut f = vec![u8::from(self.fin) << 7 | (self.rsv & 7) << 4 | (self.opcode & 0xF)];
        let masked = if self.mask.is_some() { 0x80 } else { 0 };
        let n = self.payload.len();
        if n < 126 {
            f.push(masked | n as u8);
        } else if let Ok(n) = u16::try_from(n) {
            f.push(masked | 126);
            f.extend_from_slice(&n.to_be_bytes());
        } else {
            f.push(masked | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
        match self.mask {
            Some(mask) => {
                f.extend_from_slice(&mask);
                f.extend(
                    self.payload
                        .iter()
                        .enumerate()
                        .map(|(i, b)| b ^ mask[i & 3]),
                );
            }
            None => f.extend_from_slice(&self.payload),
        }
        f
    }
}

/// The bytes of `frames`, back to back.
pub fn wire(frames: &[RawFrame]) -> Vec<u8> {
    frames.iter().flat_map(RawFrame::to_bytes).collect()
}

/// What the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// A close frame: its code (if any) and reason.
    Close(Option<u16>, String),
    /// The server closed the TCP connection.
    End,
}

/// A WebSocket connection that sends raw frames.
#[derive(Debug)]
pub struct RawWs {
    stream: BufReader<TcpStream>,
}

impl RawWs {
    /// Opens `target` on `addr` with [`upgrade_request`], asserting the server
    /// switched protocols with the right `Sec-WebSocket-Accept`.
    pub async fn connect(addr: SocketAddr, target: &str) -> RawWs {
        let mut conn = HttpConn::connect(addr).await;
        let resp = conn.send(&upgrade_request(target)).await;
        assert_eq!(resp.status, 101, "handshake refused: {resp:?}");
        assert_eq!(
            resp.header("sec-websocket-accept"),
            Some(derive_accept_key(KEY.as_bytes()).as_str()),
            "{resp:?}"
        );
        let stream = conn.into_stream();
        // Chops must leave as written, not coalesced.
        stream.get_ref().set_nodelay(true).unwrap();
        RawWs { stream }
    }

    /// Sends an opening handshake made of `request` (raw bytes, to send what
    /// [`Request`] cannot build: HTTP/1.0, no `Host`) and returns the answer.
    pub async fn handshake_answer(addr: SocketAddr, request: &[u8]) -> Response {
        let mut conn = HttpConn::connect(addr).await;
        conn.write(request).await.unwrap();
        conn.read_response().await
    }

    /// Writes `frames` with one write.
    pub async fn send(&mut self, frames: &[RawFrame]) {
        self.send_bytes(&wire(frames)).await;
    }

    /// Writes each frame on its own.
    pub async fn send_frame_wise(&mut self, frames: &[RawFrame]) {
        for f in frames {
            self.send_bytes(&f.to_bytes()).await;
        }
    }

    /// Writes `frames` in writes of `chop` bytes.
    pub async fn send_chopped(&mut self, frames: &[RawFrame], chop: usize) {
        for c in wire(frames).chunks(chop.max(1)) {
            self.send_bytes(c).await;
        }
    }

    /// Writes raw bytes. A server that already closed may have reset the
    /// connection; what it sent before is still read by [`RawWs::next`].
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        let _ = self.stream.get_mut().write_all(bytes).await;
    }

    /// The next server frame (or the end of the connection) within [`TIMEOUT`].
    pub async fn next(&mut self) -> Event {
        self.next_within(TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("no frame from the server within {TIMEOUT:?}"))
    }

    /// The next server frame within `within`, or `None`.
    pub async fn next_within(&mut self, within: Duration) -> Option<Event> {
        tokio::time::timeout(within, self.read_frame()).await.ok()
    }

    /// Every frame up to the server's close frame, and that frame's code and
    /// reason; asserts the server then ends the TCP connection.
    pub async fn until_close(&mut self) -> (Vec<Event>, Option<u16>, String) {
        let mut events = Vec::new();
        loop {
            match self.next().await {
                Event::Close(code, reason) => {
                    assert_eq!(self.next().await, Event::End, "data after the close frame");
                    return (events, code, reason);
                }
                Event::End => panic!("connection ended without a close frame after {events:?}"),
                e => events.push(e),
            }
        }
    }

    async fn read_frame(&mut self) -> Event {
        let mut head = [0u8; 2];
        if self.stream.read_exact(&mut head).await.is_err() {
            return Event::End;
        }
        assert_eq!(head[0] & 0x70, 0, "server frame with RSV bits: {head:?}");
        assert_eq!(head[1] & 0x80, 0, "server frames must not be masked");
        assert!(head[0] & 0x80 != 0, "the gateway never fragments: {head:?}");
        let opcode = head[0] & 0x0F;
        let len = match head[1] & 0x7F {
            126 => u64::from(self.stream.read_u16().await.unwrap()),
            127 => self.stream.read_u64().await.unwrap(),
            n => u64::from(n),
        };
        if opcode & 0x8 != 0 {
            assert!(len <= 125, "control frame of {len} bytes");
        }
        let mut payload = vec![0; usize::try_from(len).unwrap()];
        self.stream.read_exact(&mut payload).await.unwrap();
        match opcode {
            TEXT => Event::Text(String::from_utf8(payload).expect("server text is UTF-8")),
            BINARY => Event::Binary(payload),
            PING => Event::Ping(payload),
            PONG => Event::Pong(payload),
            CLOSE => {
                assert_ne!(payload.len(), 1, "close frame of one byte");
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                let reason = payload.get(2..).unwrap_or_default();
                let reason = String::from_utf8(reason.to_vec()).expect("close reason is UTF-8");
                Event::Close(code, reason)
            }
            op => panic!("server frame with opcode {op}"),
        }
    }
}
