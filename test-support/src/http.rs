//! The HTTP/1.1 client: a request is written byte for byte as built (method,
//! target, headers, body; `Connection: close` or keep-alive; a chunked body;
//! or raw bytes at the caller's pace for a trickled one), so tests control
//! exactly what the server reads and see exactly what it answers: status,
//! headers (names lowercased) and body (de-chunked).

use crate::wait::TIMEOUT;
use serde_json::Value;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A request to build, then [`Request::send`] on a connection of its own or
/// [`HttpConn::send`] on a kept-alive one.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    keep_alive: bool,
    chunk: Option<usize>,
}

impl Request {
    /// `method target`, with `Connection: close` and an empty body.
    pub fn new(method: &str, target: &str) -> Request {
        Request {
            method: method.to_owned(),
            target: target.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            keep_alive: false,
            chunk: None,
        }
    }

    pub fn get(target: &str) -> Request {
        Request::new("GET", target)
    }

    pub fn post(target: &str) -> Request {
        Request::new("POST", target)
    }

    /// Adds a header, written as given after `Host` (and `Connection`).
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// `Authorization: Bearer {key}`.
    pub fn bearer(self, key: &str) -> Request {
        self.header("Authorization", &format!("Bearer {key}"))
    }

    /// A JSON body, with `Content-Type: application/json`.
    pub fn json(self, body: &str) -> Request {
        self.header("Content-Type", "application/json").body(body)
    }

    pub fn body(mut self, body: impl AsRef<[u8]>) -> Request {
        self.body = body.as_ref().to_vec();
        self
    }

    /// No `Connection: close`: the connection stays open for the next one.
    pub fn keep_alive(mut self) -> Request {
        self.keep_alive = true;
        self
    }

    /// Sends the body as `Transfer-Encoding: chunked`, `size` bytes a chunk.
    pub fn chunked(mut self, size: usize) -> Request {
        self.chunk = Some(size.max(1));
        self
    }

    /// The exact bytes this request is, `Host: {host}` included.
    pub fn to_bytes(&self, host: SocketAddr) -> Vec<u8> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {host}\r\n",
            self.method, self.target
        );
        if !self.keep_alive {
            head.push_str("Connection: close\r\n");
        }
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let mut out = match self.chunk {
            Some(_) => head + "Transfer-Encoding: chunked\r\n\r\n",
            None => head + &format!("Content-Length: {}\r\n\r\n", self.body.len()),
        }
        .into_bytes();
        match self.chunk {
            Some(size) => {
                for c in self.body.chunks(size) {
                    out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
            None => out.extend_from_slice(&self.body),
        }
        out
    }

    /// Sends on a new connection and reads the answer, within [`TIMEOUT`].
    pub async fn send(self, addr: SocketAddr) -> Response {
        self.send_within(addr, TIMEOUT).await
    }

    /// [`Request::send`] bounded by `within` (a long poll).
    pub async fn send_within(self, addr: SocketAddr, within: Duration) -> Response {
        let what = format!("{} {} to {addr}", self.method, self.target);
        match tokio::time::timeout(within, self.exchange(addr)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => panic!("{what}: {e}"),
            Err(_) => panic!("{what}: no answer within {within:?}"),
        }
    }

    /// [`Request::send`], or `None` when nothing answers (connection
    /// refused, closed, or no answer within [`TIMEOUT`]).
    pub async fn try_send(self, addr: SocketAddr) -> Option<Response> {
        tokio::time::timeout(TIMEOUT, self.exchange(addr))
            .await
            .ok()?
            .ok()
    }

    async fn exchange(self, addr: SocketAddr) -> io::Result<Response> {
        let mut conn = HttpConn::try_connect(addr).await?;
        conn.write(&self.to_bytes(addr)).await?;
        conn.read(&self.method).await
    }
}

/// An HTTP answer: status, headers (names lowercased) and body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The first header called `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} (HTTP {})", self.body, self.status))
    }
}

/// One connection, for several requests (keep-alive) or raw bytes.
#[derive(Debug)]
pub struct HttpConn {
    stream: BufReader<TcpStream>,
    addr: SocketAddr,
}

impl HttpConn {
    pub async fn connect(addr: SocketAddr) -> HttpConn {
        tokio::time::timeout(TIMEOUT, HttpConn::try_connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connecting to {addr} timed out"))
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
    }

    async fn try_connect(addr: SocketAddr) -> io::Result<HttpConn> {
        let stream = TcpStream::connect(addr).await?;
        Ok(HttpConn {
            stream: BufReader::new(stream),
            addr,
        })
    }

    /// The connection, with anything read past the last answer still
    /// buffered (what a server sent after `101 Switching Protocols`).
    pub fn into_stream(self) -> BufReader<TcpStream> {
        self.stream
    }

    /// Writes raw bytes (part of a request, at the caller's pace).
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.get_mut().write_all(bytes).await
    }

    /// Writes `bytes` one at a time, one every `every`, the way a slowloris
    /// client trickles a request, until the server answers (or closes);
    /// returns the answer and how many bytes were written. Panics if all
    /// were written or nothing came within [`TIMEOUT`] after the last one.
    pub async fn trickle(&mut self, bytes: &[u8], every: Duration) -> (Option<Response>, usize) {
        let mut written = 0;
        let mut tick = tokio::time::interval(every);
        loop {
            let (stream, addr) = (&mut self.stream, self.addr);
            let mut probe = [0u8; 1];
            tokio::select! {
                // Readable: the answer has started (or the connection ended).
                peeked = stream.get_ref().peek(&mut probe) => {
                    return match peeked {
                        Ok(n) if n > 0 => (Some(self.read_response().await), written),
                        _ => (None, written),
                    };
                }
                _ = tick.tick() => {
                    assert!(written < bytes.len(), "all {written} bytes written to {addr}, no answer");
                    if stream.get_mut().write_all(&bytes[written..=written]).await.is_err() {
                        return (None, written);
                    }
                    written += 1;
                }
            }
        }
    }

    /// Whether the server closes this connection within `within` (reading
    /// and dropping anything it sends first).
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let mut sink = Vec::new();
        tokio::time::timeout(within, self.stream.read_to_end(&mut sink))
            .await
            .is_ok()
    }

    /// Writes `req` and reads its answer, within [`TIMEOUT`].
    pub async fn send(&mut self, req: &Request) -> Response {
        let bytes = req.to_bytes(self.addr);
        self.write(&bytes).await.unwrap();
        self.read_response_to(&req.method).await
    }

    /// The next answer, within [`TIMEOUT`].
    pub async fn read_response(&mut self) -> Response {
        self.read_response_to("GET").await
    }

    async fn read_response_to(&mut self, method: &str) -> Response {
        tokio::time::timeout(TIMEOUT, self.read(method))
            .await
            .unwrap_or_else(|_| panic!("no answer from {} within {TIMEOUT:?}", self.addr))
            .unwrap_or_else(|e| panic!("reading an answer from {}: {e}", self.addr))
    }

    /// Reads one answer to a `method` request: the head, then a body framed
    /// by `Content-Length`, chunked, or up to the end of the connection.
    async fn read(&mut self, method: &str) -> io::Result<Response> {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let status_line = self.line().await?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("no HTTP status line: {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let has = |name: &str, value: &str| {
            headers
                .iter()
                .any(|(k, v)| k == name && v.to_ascii_lowercase().contains(value))
        };
        let length = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let mut body = Vec::new();
        if method == "HEAD" || status / 100 == 1 || status == 204 || status == 304 {
        } else if has("transfer-encoding", "chunked") {
            loop {
                let size = self.line().await?;
                let size = size.split(';').next().unwrap_or("").trim();
                let n = usize::from_str_radix(size, 16)
                    .map_err(|_| bad(format!("bad chunk size {size:?}")))?;
                if n == 0 {
                    while !self.line().await?.is_empty() {}
                    break;
                }
                let mut chunk = vec![0; n + 2];
                self.stream.read_exact(&mut chunk).await?;
                body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            self.stream.read_exact(&mut body).await?;
        } else {
            self.stream.read_to_end(&mut body).await?;
        }
        Ok(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// One line without its CRLF; an error at the end of the stream.
    async fn line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.stream.read_line(&mut line).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }
}
