//! Reads client WebSocket messages: frame headers, unmasking, control frames,
//! fragment reassembly, the size limit and UTF-8 validation of text.
//!
//! The read buffer starts empty and is released whenever it drains, so an
//! idle connection holds no buffer at all (fastwebsockets keeps an 8 KiB one
//! per connection, which dominated the memory of idle connections). All state
//! lives in the reader, so [`FrameReader::next`] is cancel-safe.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes requested from the socket when the buffer has no room.
const READ_CHUNK: usize = 1024;

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
    /// The bytes break RFC 6455 (unmasked, reserved bits, bad fragments,
    /// invalid UTF-8, bad close frame).
    Protocol(&'static str),
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

pub(super) struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    max: usize,
    /// A fragmented message being assembled: its opcode and bytes so far.
    partial: Option<(u8, BytesMut)>,
}

#[cfg(feature = "fuzzing")]
impl<R> FrameReader<R> {
    /// What the reader holds: the read buffer's length and capacity, and the
    /// bytes of a fragmented message so far (the fuzz target bounds them).
    pub(super) fn held(&self) -> (usize, usize, usize) {
        let partial = self.partial.as_ref().map_or(0, |(_, p)| p.len());
        (self.buf.len(), self.buf.capacity(), partial)
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
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
        if control && (!fin || len > 125) {
            return Err(ReadError::Protocol("invalid control frame"));
        }
        let so_far = self.partial.as_ref().map_or(0, |(_, p)| p.len());
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
                let Some((_, data)) = self.partial.as_mut() else {
                    return Err(ReadError::Protocol("continuation without a message"));
                };
                data.extend_from_slice(&frame.payload);
                if !frame.fin {
                    return Ok(None);
                }
                let Some((opcode, data)) = self.partial.take() else {
                    return Ok(None);
                };
                message(opcode, data).map(Some)
            }
            opcode => {
                if self.partial.is_some() {
                    return Err(ReadError::Protocol("new message inside a fragmented one"));
                }
                if frame.fin {
                    message(opcode, frame.payload).map(Some)
                } else {
                    self.partial = Some((opcode, frame.payload));
                    Ok(None)
                }
            }
        }
    }
}

fn message(opcode: u8, data: BytesMut) -> Result<Incoming, ReadError> {
    if opcode == TEXT {
        if std::str::from_utf8(&data).is_err() {
            return Err(ReadError::Protocol("text is not utf-8"));
        }
        Ok(Incoming::Text(data.freeze()))
    } else {
        Ok(Incoming::Binary(data.freeze()))
    }
}

/// The status code of a close frame, checked as RFC 6455 §7.4 requires.
fn close(payload: &[u8]) -> Result<Option<u16>, ReadError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(ReadError::Protocol("close frame of one byte")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let allowed = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !allowed {
                return Err(ReadError::Protocol("invalid close code"));
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(ReadError::Protocol("close reason is not utf-8"));
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

    #[tokio::test]
    async fn refusals() {
        let first = |v: Vec<Result<Incoming, ReadError>>| v.into_iter().next().unwrap();
        assert_eq!(
            first(read_all(masked(0x81, &[0xFF]), 100).await),
            Err(ReadError::Protocol("text is not utf-8"))
        );
        assert_eq!(
            first(read_all(masked(0x81, &[b'a'; 101]), 100).await),
            Err(ReadError::TooLarge)
        );
        let mut frags = masked(0x01, &[b'a'; 60]);
        frags.extend(masked(0x80, &[b'a'; 60]));
        assert_eq!(first(read_all(frags, 100).await), Err(ReadError::TooLarge));
        assert_eq!(
            first(read_all(masked(0x80, b"x"), 100).await),
            Err(ReadError::Protocol("continuation without a message"))
        );
        assert_eq!(
            first(read_all(vec![0x81, 0x01, b'a'], 100).await),
            Err(ReadError::Protocol("client frames must be masked"))
        );
        assert_eq!(
            first(read_all(masked(0xC1, b"a"), 100).await),
            Err(ReadError::Protocol("reserved bits set"))
        );
        assert_eq!(
            first(read_all(masked(0x09, b"a"), 100).await),
            Err(ReadError::Protocol("invalid control frame"))
        );
        assert_eq!(
            first(read_all(masked(0x88, &[0x03]), 100).await),
            Err(ReadError::Protocol("close frame of one byte"))
        );
        assert_eq!(
            first(read_all(masked(0x88, &[0x03, 0xED]), 100).await),
            Err(ReadError::Protocol("invalid close code"))
        );
        assert_eq!(
            first(read_all(masked(0x83, b"a"), 100).await),
            Err(ReadError::Protocol("unknown opcode"))
        );
        // A message of exactly the limit is accepted.
        assert!(matches!(
            first(read_all(masked(0x82, &[0; 100]), 100).await),
            Ok(Incoming::Binary(_))
        ));
    }
}
