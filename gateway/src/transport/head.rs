//! The first request of a new connection, read before hyper sees it, so a
//! WebSocket handshake (nearly every new connection) is answered without
//! it. Serving it through hyper cost a connection dispatcher and its
//! buffers, the upgrade's hand-over of the stream, and copies of the head;
//! a connect storm pays that tens of thousands of times a second.
//!
//! Only a complete, plain head is taken this way; anything else (a request
//! with a body, a head hyper would refuse, a connection that stalls or
//! ends early) is handed to hyper with the bytes read so far in front of
//! the stream ([`Prefixed`]), so hyper answers it exactly as before.

use bytes::{Buf, Bytes, BytesMut};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Request, Uri, Version};
use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// First read buffer: a browser's handshake is 0.4–2 kB.
const INITIAL: usize = 2048;
/// Past this without a complete head, hyper reads the rest (it takes up to
/// ~400 kB of head and answers what it cannot take).
const MAX_HEAD: usize = 16 * 1024;
/// Headers parsed here; hyper's limit too, so more is its answer to give.
const MAX_HEADERS: usize = 100;

/// How reading the first head ended.
#[derive(Debug)]
pub(crate) enum Head {
    /// The buffer holds the blank line that ends a head.
    Complete,
    /// Hyper's to read on: no head within [`MAX_HEAD`] bytes, or the
    /// connection ended (or failed) before one was complete.
    Other,
    /// Not complete before the deadline: hyper closes such a connection
    /// without an answer, and so does the caller.
    TimedOut,
}

/// Reads into `buf` until it holds the end of a request head, or
/// [`Head::Other`] / [`Head::TimedOut`].
pub(crate) async fn read(stream: &mut TcpStream, buf: &mut BytesMut, deadline: Instant) -> Head {
    loop {
        if buf.capacity() == buf.len() {
            if buf.len() >= MAX_HEAD {
                return Head::Other;
            }
            buf.reserve(buf.len().max(INITIAL));
        }
        let from = buf.len().saturating_sub(2);
        // The request is usually there by the time this task runs: read it
        // without arming the header timer.
        match stream.try_read_buf(buf) {
            Ok(0) => return Head::Other,
            Ok(_) => {
                if ends_head(&buf[from..]) {
                    return Head::Complete;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match tokio::time::timeout_at(deadline, stream.readable()).await {
                    Err(_) => return Head::TimedOut,
                    Ok(Err(_)) => return Head::Other,
                    Ok(Ok(())) => {}
                }
            }
            Err(_) => return Head::Other,
        }
    }
}

/// Whether `bytes` holds a blank line: `\n\n` or `\n\r\n`, the end of a
/// head for httparse (which takes bare `\n` line ends too).
fn ends_head(bytes: &[u8]) -> bool {
    bytes
        .windows(2)
        .enumerate()
        .any(|(i, w)| w[0] == b'\n' && (w[1] == b'\n' || bytes.get(i + 1..i + 3) == Some(b"\r\n")))
}

/// A new, empty buffer for [`read`].
pub(crate) fn buffer() -> BytesMut {
    BytesMut::with_capacity(INITIAL)
}

/// The complete head at the start of `bytes` as a bodiless `GET` request of
/// HTTP/1.1 in origin form, the only kind a WebSocket handshake is, and the
/// head's length; `None` for anything else (hyper's to answer). Header
/// values and the URI share `bytes` rather than copying it.
pub(crate) fn get_request(bytes: &Bytes) -> Option<(Request<()>, usize)> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let Ok(httparse::Status::Complete(len)) = parsed.parse_with_uninit_headers(bytes, &mut headers)
    else {
        return None;
    };
    if parsed.method != Some("GET") || parsed.version != Some(1) {
        return None;
    }
    let path = parsed.path.filter(|p| p.starts_with('/'))?;
    let uri = Uri::from_maybe_shared(bytes.slice_ref(path.as_bytes())).ok()?;
    let mut map = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        // A body (or a claim of one) is for hyper's framing rules.
        if name == hyper::header::CONTENT_LENGTH || name == hyper::header::TRANSFER_ENCODING {
            return None;
        }
        let value = HeaderValue::from_maybe_shared(bytes.slice_ref(h.value)).ok()?;
        map.append(name, value);
    }
    let mut req = Request::new(());
    *req.method_mut() = Method::GET;
    *req.version_mut() = Version::HTTP_11;
    *req.uri_mut() = uri;
    *req.headers_mut() = map;
    Some((req, len))
}

/// A TCP stream with bytes already read from it in front: what hyper reads
/// first when the connection is handed to it.
#[derive(Debug)]
pub(crate) struct Prefixed {
    pub(crate) prefix: Bytes,
    pub(crate) stream: TcpStream,
}

impl Prefixed {
    pub(crate) fn new(prefix: Bytes, stream: TcpStream) -> Self {
        Prefixed { prefix, stream }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

thread_local! {
    /// The `date` header of this second, as hyper caches it.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Calls `f` with the `date` header value hyper would send now
/// (`Sat, 05 Dec 2026 04:02:51 GMT`), formatted once a second per thread.
pub(crate) fn with_date<R>(f: impl FnOnce(&str) -> R) -> R {
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut date = cell.borrow_mut();
        if date.0 != secs {
            *date = (secs, httpdate::fmt_http_date(now));
        }
        f(&date.1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    const HANDSHAKE: &str = "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\n\
        Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Custom: a\r\nX-Custom: b\r\n\r\n";

    #[test]
    fn a_plain_get_becomes_a_request_sharing_the_bytes() {
        let b = bytes(&format!("{HANDSHAKE}after"));
        let (req, len) = get_request(&b).unwrap();
        assert_eq!(len, HANDSHAKE.len());
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.uri().path(), "/socket/websocket");
        assert_eq!(req.uri().query(), Some("vsn=2.0.0"));
        assert_eq!(req.headers()["upgrade"], "websocket");
        assert_eq!(req.headers()["sec-websocket-version"], "13");
        let custom: Vec<_> = req.headers().get_all("x-custom").iter().collect();
        assert_eq!(custom, ["a", "b"]);
    }

    #[test]
    fn anything_else_is_left_to_hyper() {
        for head in [
            HANDSHAKE.replace("GET", "POST"),
            HANDSHAKE.replace("HTTP/1.1", "HTTP/1.0"),
            HANDSHAKE.replace("/socket/websocket", "http://x/socket/websocket"),
            HANDSHAKE.replace("Host: x", "Content-Length: 0"),
            HANDSHAKE.replace("Host: x", "Transfer-Encoding: chunked"),
            HANDSHAKE.replace("\r\n\r\n", "\r\n"),
            "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n".to_owned(),
        ] {
            assert!(get_request(&bytes(&head)).is_none(), "{head:?}");
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("h{i}: v\r\n"))
            .collect();
        let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(get_request(&bytes(&head)).is_none());
    }

    #[test]
    fn blank_lines_end_heads() {
        assert!(ends_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(ends_head(b"GET / HTTP/1.1\nHost: x\n\n"));
        assert!(ends_head(b"\n\r\n"));
        assert!(!ends_head(b"GET / HTTP/1.1\r\nHost: x\r\n"));
        assert!(!ends_head(b"\r\n\r"));
        assert!(!ends_head(b""));
    }

    #[tokio::test]
    async fn heads_are_read_whole_and_the_rest_goes_first_to_hyper() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut c = TcpStream::connect(addr).await.unwrap();
            let (a, b) = HANDSHAKE.split_at(20);
            c.write_all(a.as_bytes()).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            c.write_all(b.as_bytes()).await.unwrap();
            c.write_all(b"extra").await.unwrap();
            let mut back = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut c, &mut back)
                .await
                .unwrap();
            back
        });
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = buffer();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let Head::Complete = read(&mut s, &mut buf, deadline).await else {
            panic!("incomplete")
        };
        let n = HANDSHAKE.len();
        // What was read goes first, then the stream.
        let mut p = Prefixed {
            prefix: buf.freeze(),
            stream: s,
        };
        let mut all = vec![0; HANDSHAKE.len() + 5];
        tokio::io::AsyncReadExt::read_exact(&mut p, &mut all)
            .await
            .unwrap();
        assert_eq!(&all[..n], HANDSHAKE.as_bytes());
        assert_eq!(&all[n..], b"extra");
        tokio::io::AsyncWriteExt::write_all(&mut p, b"ok")
            .await
            .unwrap();
        drop(p);
        assert_eq!(client.await.unwrap(), b"ok");

        // A stalled head times out.
        let c = TcpStream::connect(addr).await.unwrap();
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = buffer();
        let soon = Instant::now() + std::time::Duration::from_millis(30);
        assert!(matches!(read(&mut s, &mut buf, soon).await, Head::TimedOut));
        drop(c);
    }

    #[test]
    fn the_date_is_an_http_date() {
        let d = with_date(str::to_owned);
        assert!(httpdate::parse_http_date(&d).is_ok(), "{d}");
        assert!(d.ends_with(" GMT") && d.len() == 29, "{d}");
    }
}
