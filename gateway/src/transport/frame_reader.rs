//! Reads client WebSocket messages: frame headers, unmasking, control frames,
//! fragment reassembly, the size limit and UTF-8 validation of text, with
//! every rule of RFC 6455 §5 a server must check (docs/websocket.md lists
//! them against the Autobahn|Testsuite cases).
//!
//! Text is validated fragment by fragment, so a fragmented message fails as
//! soon as the fragment that makes it invalid arrives; within one frame, once
//! the frame is complete.
//!
//! The read buffer starts empty, is allocated only once the socket has
//! bytes to read ([`Readable`]) and is released whenever it drains, so an
//! idle connection holds no buffer at all (fastwebsockets keeps an 8 KiB one
//! per connection, which dominated the memory of idle connections). All state
//! lives in the reader, so [`FrameReader::next`] is cancel-safe.

use bytes::{Buf, Bytes, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;

/// Bytes requested from the socket when the buffer has no room.
const READ_CHUNK: usize = 1024;

/// A byte stream that can tell when it has bytes without being lent a
/// buffer, so a reader waiting for its client holds none.
pub(crate) trait Readable: AsyncRead + Unpin {
    /// Ready once a read would not wait. The default is always ready: the
    /// read then waits holding its buffer.
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        Poll::Ready(Ok(()))
    }
}

impl Readable for &[u8] {}

/// Any stream, read the plain way (the buffer is lent while waiting).
#[derive(Debug)]
pub(crate) struct Plain<R>(pub(crate) R);

impl<R: AsyncRead + Unpin> AsyncRead for Plain<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<R: AsyncRead + Unpin> Readable for Plain<R> {}

/// The read half of an upgraded TCP connection, behind the bytes the HTTP
/// server had already read past the handshake (usually none).
#[derive(Debug)]
pub(crate) struct TcpIn {
    rest: Bytes,
    half: OwnedReadHalf,
}

impl TcpIn {
    pub(crate) fn new(rest: Bytes, half: OwnedReadHalf) -> Self {
        TcpIn { rest, half }
    }
}

impl AsyncRead for TcpIn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.rest.is_empty() {
            return Pin::new(&mut self.half).poll_read(cx, buf);
        }
        let n = self.rest.len().min(buf.remaining());
        buf.put_slice(&self.rest[..n]);
        self.rest.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl Readable for TcpIn {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.rest.is_empty() {
            return Poll::Ready(Ok(()));
        }
        self.half.as_ref().poll_read_ready(cx)
    }
}

/// A complete client message or control frame.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Incoming {
    Text(Bytes),
    Binary(Bytes),
    /// Answer with a pong carrying the same bytes.
    Ping(Bytes),
    /// The client's close frame and its status code, if it gave one.
    Close(Option<u16>),
}

/// Why reading stopped.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ReadError {
    /// The peer closed the TCP stream.
    Eof,
    /// The socket failed.
    Io,
    /// A message exceeded the size limit.
    TooLarge,
    /// The bytes break RFC 6455's framing (unmasked, reserved bits or
    /// opcodes, bad fragments or control frames, a bad close code): 1002.
    Protocol(&'static str),
    /// A text message or close reason is not UTF-8: 1007.
    InvalidUtf8(&'static str),
}

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// One parsed frame.
struct Frame {
    fin: bool,
    opcode: u8,
    payload: BytesMut,
}

/// A fragmented message being assembled.
struct Partial {
    opcode: u8,
    data: BytesMut,
    /// How many bytes of a text message are known to be UTF-8; the rest is
    /// at most an incomplete code point that the next fragment completes.
    checked: usize,
}

pub(super) struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    max: usize,
    partial: Option<Partial>,
}

#[cfg(feature = "fuzzing")]
impl<R> FrameReader<R> {
    /// What the reader holds: the read buffer's length and capacity, and the
    /// bytes of a fragmented message so far (the fuzz target bounds them).
    pub(super) fn held(&self) -> (usize, usize, usize) {
        let partial = self.partial.as_ref().map_or(0, |p| p.data.len());
        (self.buf.len(), self.buf.capacity(), partial)
    }
}

impl<R: Readable> FrameReader<R> {
    /// Messages over `max` bytes are refused.
    pub(super) fn new(io: R, max: usize) -> Self {
        FrameReader {
            io,
            buf: BytesMut::new(),
            max,
            partial: None,
        }
    }

    /// The next message or control frame.
    ///
    /// # Cancel safety
    /// Cancel-safe: bytes read so far stay in the reader.
    pub(super) async fn next(&mut self) -> Result<Incoming, ReadError> {
        loop {
            while let Some(frame) = self.parse()? {
                if let Some(incoming) = self.accept(frame)? {
                    if self.buf.is_empty() {
                        // Release the buffer; the next read allocates afresh.
                        self.buf = BytesMut::new();
                    }
                    return Ok(incoming);
                }
            }
            if self.buf.is_empty() {
                // Wait for bytes before taking a buffer to put them in.
                std::future::poll_fn(|cx| self.io.poll_readable(cx))
                    .await
                    .map_err(|_| ReadError::Io)?;
            }
            if self.buf.capacity() == self.buf.len() {
                self.buf.reserve(READ_CHUNK);
            }
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) => return Err(ReadError::Eof),
                Ok(_) => {}
                Err(_) => return Err(ReadError::Io),
            }
        }
    }

    /// Takes one complete frame off the buffer, if there is one.
    fn parse(&mut self) -> Result<Option<Frame>, ReadError> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let (fin, rsv, opcode) = (b[0] & 0x80 != 0, b[0] & 0x70, b[0] & 0x0F);
        if rsv != 0 {
            return Err(ReadError::Protocol("reserved bits set"));
        }
        if b[1] & 0x80 == 0 {
            return Err(ReadError::Protocol("client frames must be masked"));
        }
        let control = opcode & 0x8 != 0;
        if control && !matches!(opcode, CLOSE | PING | PONG) || !control && opcode > BINARY {
            return Err(ReadError::Protocol("unknown opcode"));
        }
        if control && !fin {
            return Err(ReadError::Protocol("fragmented control frame"));
        }
        let (len, at) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        if control && len > 125 {
            return Err(ReadError::Protocol("control frame over 125 bytes"));
        }
        if len >> 63 != 0 {
            return Err(ReadError::Protocol("length's most significant bit set"));
        }
        let so_far = self.partial.as_ref().map_or(0, |p| p.data.len());
        let len = usize::try_from(len).map_err(|_| ReadError::TooLarge)?;
        if !control && len.saturating_add(so_far) > self.max {
            return Err(ReadError::TooLarge);
        }
        let total = at + 4 + len;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        self.buf.advance(at + 4);
        let mut payload = self.buf.split_to(len);
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i & 3];
        }
        Ok(Some(Frame {
            fin,
            opcode,
            payload,
        }))
    }

    /// Applies a frame: control frames come out at once, data frames once
    /// their message is complete.
    fn accept(&mut self, frame: Frame) -> Result<Option<Incoming>, ReadError> {
        match frame.opcode {
            PING => Ok(Some(Incoming::Ping(frame.payload.freeze()))),
            PONG => Ok(None),
            CLOSE => close(&frame.payload).map(|code| Some(Incoming::Close(code))),
            CONTINUATION => {
                let Some(partial) = self.partial.as_mut() else {
                    return Err(ReadError::Protocol("continuation without a message"));
                };
                partial.data.extend_from_slice(&frame.payload);
                partial.check(frame.fin)?;
                if !frame.fin {
                    return Ok(None);
                }
                let Some(Partial { opcode, data, .. }) = self.partial.take() else {
                    return Ok(None);
                };
                Ok(Some(message(opcode, data)))
            }
            opcode => {
                if self.partial.is_some() {
                    return Err(ReadError::Protocol("new message inside a fragmented one"));
                }
                let mut partial = Partial {
                    opcode,
                    data: frame.payload,
                    checked: 0,
                };
                partial.check(frame.fin)?;
                if frame.fin {
                    Ok(Some(message(opcode, partial.data)))
                } else {
                    self.partial = Some(partial);
                    Ok(None)
                }
            }
        }
    }
}

impl Partial {
    /// Validates the text received since the last check: invalid bytes fail
    /// at once, an incomplete code point only at the end of the message.
    fn check(&mut self, fin: bool) -> Result<(), ReadError> {
        if self.opcode != TEXT {
            return Ok(());
        }
        match std::str::from_utf8(&self.data[self.checked..]) {
            Ok(_) => {
                self.checked = self.data.len();
                Ok(())
            }
            Err(e) if e.error_len().is_none() && !fin => {
                self.checked += e.valid_up_to();
                Ok(())
            }
            Err(_) => Err(ReadError::InvalidUtf8("text is not utf-8")),
        }
    }
}

/// A complete message; text was validated as it arrived.
fn message(opcode: u8, data: BytesMut) -> Incoming {
    if opcode == TEXT {
        Incoming::Text(data.freeze())
    } else {
        Incoming::Binary(data.freeze())
    }
}

/// The status code of a close frame, checked as RFC 6455 §7.4 requires.
fn close(payload: &[u8]) -> Result<Option<u16>, ReadError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(ReadError::Protocol("close frame of one byte")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            // 1004–1006 and 1015 are reserved or must never be sent, 1016–2999
            // are unassigned, 1012–1014 were registered by IANA after the RFC.
            let allowed = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !allowed {
                return Err(ReadError::Protocol("invalid close code"));
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(ReadError::InvalidUtf8("close reason is not utf-8"));
            }
            Ok(Some(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![b0];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        f
    }

    async fn read_all(bytes: Vec<u8>, max: usize) -> Vec<Result<Incoming, ReadError>> {
        let mut r = FrameReader::new(&bytes[..], max);
        let mut out = Vec::new();
        loop {
            let item = r.next().await;
            let done = item.is_err();
            out.push(item);
            if done {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn messages_fragments_and_control_frames() {
        let mut wire = masked(0x81, b"hello");
        wire.extend(masked(0x01, b"he"));
        wire.extend(masked(0x89, b"p")); // a ping between fragments
        wire.extend(masked(0x80, b"llo"));
        wire.extend(masked(0x82, &[0xDE, 0xAD]));
        wire.extend(masked(0x81, &vec![b'x'; 70_000]));
        wire.extend(masked(0x88, &[0x03, 0xE8]));
        let out = read_all(wire, 1 << 20).await;
        assert_eq!(out[0], Ok(Incoming::Text(Bytes::from_static(b"hello"))));
        assert_eq!(out[1], Ok(Incoming::Ping(Bytes::from_static(b"p"))));
        assert_eq!(out[2], Ok(Incoming::Text(Bytes::from_static(b"hello"))));
        assert_eq!(
            out[3],
            Ok(Incoming::Binary(Bytes::from_static(&[0xDE, 0xAD])))
        );
        assert!(matches!(&out[4], Ok(Incoming::Text(t)) if t.len() == 70_000));
        assert_eq!(out[5], Ok(Incoming::Close(Some(1000))));
        assert_eq!(out[6], Err(ReadError::Eof));
    }

    /// Hands out one byte per read, as a client sending octet-wise chops.
    struct OneByte<'a>(&'a [u8]);

    impl AsyncRead for OneByte<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some((first, rest)) = self.0.split_first() {
                buf.put_slice(&[*first]);
                self.0 = rest;
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    impl super::Readable for OneByte<'_> {}

    #[tokio::test]
    async fn octet_wise_chops_read_the_same() {
        let mut wire = masked(0x01, b"frag");
        wire.extend(masked(0x89, &[0xFE; 125]));
        wire.extend(masked(0x80, "κόσμε".as_bytes()));
        wire.extend(masked(0x82, &[7; 300]));
        let mut r = FrameReader::new(OneByte(&wire), 1 << 20);
        assert_eq!(
            r.next().await,
            Ok(Incoming::Ping(Bytes::from(vec![0xFE; 125])))
        );
        assert_eq!(r.next().await, Ok(Incoming::Text(Bytes::from("fragκόσμε"))));
        assert_eq!(
            r.next().await,
            Ok(Incoming::Binary(Bytes::from(vec![7; 300])))
        );
        assert_eq!(r.buf.capacity(), 0, "a drained buffer is released");
        assert_eq!(r.next().await, Err(ReadError::Eof));
    }

    fn first_of(bytes: Vec<u8>) -> Result<Incoming, ReadError> {
        let mut r = FrameReader::new(&bytes[..], 100);
        futures_util::FutureExt::now_or_never(r.next()).unwrap()
    }

    #[test]
    fn framing_errors_are_protocol_errors() {
        let protocol = |why| Err(ReadError::Protocol(why));
        let mut unmasked = vec![0x81, 0x01, b'a'];
        assert_eq!(
            first_of(unmasked.clone()),
            protocol("client frames must be masked")
        );
        unmasked[0] = 0x89;
        assert_eq!(first_of(unmasked), protocol("client frames must be masked"));
        for rsv in [0x10, 0x20, 0x40, 0x70] {
            for op in [0x1, 0x2, 0x8, 0x9] {
                let got = first_of(masked(0x80 | rsv | op, b"a"));
                assert_eq!(got, protocol("reserved bits set"), "rsv {rsv:#x} op {op}");
            }
        }
        for op in [3, 4, 5, 6, 7, 11, 12, 13, 14, 15] {
            let got = first_of(masked(0x80 | op, b"a"));
            assert_eq!(got, protocol("unknown opcode"), "opcode {op}");
        }
        for op in [0x8, 0x9, 0xA] {
            let got = first_of(masked(op, b"a"));
            assert_eq!(got, protocol("fragmented control frame"), "opcode {op}");
            let got = first_of(masked(0x80 | op, &[0x03; 126]));
            assert_eq!(got, protocol("control frame over 125 bytes"), "opcode {op}");
        }
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert_eq!(
            first_of(huge),
            protocol("length's most significant bit set")
        );
        assert_eq!(
            first_of(masked(0x80, b"x")),
            protocol("continuation without a message")
        );
        let mut cont = masked(0x00, b"x");
        cont.extend(masked(0x81, b"y"));
        assert_eq!(first_of(cont), protocol("continuation without a message"));
        let mut nested = masked(0x01, b"x");
        nested.extend(masked(0x81, b"y"));
        assert_eq!(
            first_of(nested),
            protocol("new message inside a fragmented one")
        );
        let mut nested = masked(0x02, b"x");
        nested.extend(masked(0x02, b"y"));
        assert_eq!(
            first_of(nested),
            protocol("new message inside a fragmented one")
        );
    }

    #[test]
    fn close_frames() {
        let close = |code: u16, reason: &[u8]| {
            let mut p = code.to_be_bytes().to_vec();
            p.extend_from_slice(reason);
            first_of(masked(0x88, &p))
        };
        assert_eq!(first_of(masked(0x88, b"")), Ok(Incoming::Close(None)));
        let valid = [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
        ];
        for code in valid.into_iter().chain([3000, 3999, 4000, 4999]) {
            assert_eq!(
                close(code, b"bye"),
                Ok(Incoming::Close(Some(code))),
                "{code}"
            );
        }
        let invalid = [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ];
        for code in invalid {
            assert_eq!(
                close(code, b""),
                Err(ReadError::Protocol("invalid close code")),
                "{code}"
            );
        }
        assert_eq!(
            first_of(masked(0x88, &[0x03])),
            Err(ReadError::Protocol("close frame of one byte"))
        );
        assert_eq!(close(1000, &[b'*'; 123]), Ok(Incoming::Close(Some(1000))));
        assert_eq!(
            close(1000, &[b'*'; 124]),
            Err(ReadError::Protocol("control frame over 125 bytes"))
        );
        assert_eq!(
            close(1000, &[0xce, 0xba, 0xed, 0xa0, 0x80]),
            Err(ReadError::InvalidUtf8("close reason is not utf-8"))
        );
    }

    #[test]
    fn utf8_is_checked_fragment_by_fragment() {
        let bad = Err(ReadError::InvalidUtf8("text is not utf-8"));
        assert_eq!(first_of(masked(0x81, &[0xFF])), bad);
        // A code point split across fragments is fine.
        let mut split = masked(0x01, &[0xCE]);
        split.extend(masked(0x80, &[0xBA]));
        assert_eq!(first_of(split), Ok(Incoming::Text(Bytes::from("κ"))));
        // One left incomplete at the end of the message is not.
        assert_eq!(first_of(masked(0x81, &[b'a', 0xCE])), bad);
        let mut unfinished = masked(0x01, &[0xCE]);
        unfinished.extend(masked(0x80, b""));
        assert_eq!(first_of(unfinished), bad);
        // Fail fast: the fragment that makes the text invalid fails it, with
        // the rest of the message still to come (Autobahn 6.4.1, 6.4.2).
        let mut fast = masked(0x01, "κόσμε".as_bytes());
        fast.extend(masked(0x00, &[0xF4, 0x90, 0x80, 0x80]));
        assert_eq!(first_of(fast), bad);
        let mut fast = masked(0x01, &"κόσμε".as_bytes()[..10]);
        fast.extend(masked(0x00, &[0xF4]));
        fast.extend(masked(0x00, &[0x90]));
        assert_eq!(first_of(fast), bad);
        // Binary is never checked.
        let mut bin = masked(0x02, &[0xCE]);
        bin.extend(masked(0x80, &[0xFF]));
        assert_eq!(
            first_of(bin),
            Ok(Incoming::Binary(Bytes::from_static(&[0xCE, 0xFF])))
        );
    }

    #[tokio::test]
    async fn size_limit() {
        let first = |v: Vec<Result<Incoming, ReadError>>| v.into_iter().next().unwrap();
        assert_eq!(
            first(read_all(masked(0x81, &[b'a'; 101]), 100).await),
            Err(ReadError::TooLarge)
        );
        let mut frags = masked(0x01, &[b'a'; 60]);
        frags.extend(masked(0x80, &[b'a'; 60]));
        assert_eq!(first(read_all(frags, 100).await), Err(ReadError::TooLarge));
        // A message of exactly the limit is accepted.
        assert!(matches!(
            first(read_all(masked(0x82, &[0; 100]), 100).await),
            Ok(Incoming::Binary(_))
        ));
    }
}
