//! The WebSocket transport at `{path}/websocket`: the handshake (RFC 6455
//! §4.2.1 checks, vsn, `authToken` subprotocol, connect), then a reader loop
//! that feeds the connection and a writer task that drains its queue.
//!
//! fastwebsockets answers the upgrade; frames are read by our own
//! [`FrameReader`], whose buffer is released whenever it drains.

use super::admission::{Admission, Admitted, Refused, Slot};
use super::drain::Drain;
use super::frame_reader::{FrameReader, Incoming as Read, Plain, ReadError, Readable, TcpIn};
use super::head::{self, Prefixed};
use super::response::{text, too_many, Body};
use super::shed::{Registered, Sheddable};
use super::source::SourcePermit;
use super::{decode, Data};
use crate::channel::Services;
use crate::conn::{writer, ConnHandle, Disconnect, Out};
use crate::protocol::Transport;
use crate::socket::connection::Connection;
use crate::socket::{ConnectInfo, Params, Socket};
use base64::Engine;
use bytes::Bytes;
use futures_util::future::Either;
use futures_util::FutureExt as _;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, HOST, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION,
};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::time::Instant;

const AUTH_PREFIX: &str = "base64url.bearer.phx.";

/// Answers a WebSocket handshake and, when accepted, spawns the connection.
pub(crate) async fn handshake(
    admission: &Admission,
    services: Arc<Services>,
    socket: Arc<Socket>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<Body> {
    if let Err(bad) = check_handshake(&req) {
        return bad.response();
    }
    let (phoenix_offered, auth_token) = match subprotocols(&req) {
        Ok(p) => p,
        Err(msg) => return text(StatusCode::BAD_REQUEST, msg),
    };
    let params = Params::from_query(req.uri().query().unwrap_or(""));
    let origin = req
        .headers()
        .get(hyper::header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    let info = ConnectInfo {
        peer: Some(peer),
        uri: req.uri().clone(),
        headers: req.headers().clone(),
        auth_token,
        transport: Transport::WebSocket,
    };
    let admitted = match admission.admit(&socket, &params, origin, &info).await {
        Ok(admitted) => admitted,
        Err(refused) => return refusal(refused),
    };
    // Slot against max_connections from here until the task ends.
    let counted = admission.connections().hold();
    let (resp, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let drain = admission.drain().clone();
    let sheddable = admission.sheddable().cloned();
    admission.drain().spawn(async move {
        match upgrade.await {
            Ok(ws) => {
                let open = Open {
                    drain: drain.clone(),
                    services,
                    socket,
                    admitted,
                    _counted: counted,
                    sheddable,
                };
                // A task of its own, sized for the connection alone rather
                // than for the handshake's state as well.
                run(ws.into_inner(), open).await;
            }
            Err(e) => tracing::debug!(%peer, error = %e, "websocket upgrade failed"),
        }
    });
    let mut resp = resp.map(|_| Body::default());
    if phoenix_offered {
        // Clients fail the handshake when they offered subprotocols and the
        // server selects none, so always select `phoenix` when offered.
        resp.headers_mut()
            .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("phoenix"));
    }
    resp
}

/// What [`direct`] leaves to hyper: the connection with every byte read from
/// it in front, the answer to its first request when admission gave one, and
/// the caller's hold on its HTTP connection slot.
#[derive(Debug)]
pub(crate) struct Declined<H> {
    pub(crate) io: Prefixed,
    pub(crate) first: Option<Response<Body>>,
    pub(crate) held: H,
}

/// [`handshake`] for a handshake read off the socket by
/// [`head`](super::head) rather than through hyper: `bytes` holds the head
/// (`req`, parsed from its first `head_len` bytes) and what followed it.
/// Returns the upgraded connection for the caller to run in its own task,
/// having released `held` (the HTTP connection's slot) at the upgrade as
/// hyper did; `Err(None)` when the client went away during the upgrade.
///
/// Every request this would answer otherwise than 101 is left to hyper,
/// which answers it as before: the checks of a handshake failing, or (with
/// the answer given in `first`, as admission counts once) admission refusing.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn direct<H>(
    admission: &Admission,
    services: &Arc<Services>,
    socket: Arc<Socket>,
    peer: SocketAddr,
    req: Request<()>,
    mut stream: TcpStream,
    bytes: Bytes,
    head_len: usize,
    held: H,
) -> Result<Upgraded, Option<Declined<H>>> {
    let decline = |stream, bytes, first, held| {
        Some(Declined {
            io: Prefixed {
                prefix: bytes,
                stream,
            },
            first,
            held,
        })
    };
    if check_handshake(&req).is_err() {
        return Err(decline(stream, bytes, None, held));
    }
    let Ok((phoenix_offered, auth_token)) = subprotocols(&req) else {
        return Err(decline(stream, bytes, None, held));
    };
    let (parts, ()) = req.into_parts();
    let params = Params::from_query(parts.uri.query().unwrap_or(""));
    // The request's own headers and URI, not clones: nothing else needs them.
    let info = ConnectInfo {
        peer: Some(peer),
        uri: parts.uri,
        headers: parts.headers,
        auth_token,
        transport: Transport::WebSocket,
    };
    let origin = info
        .headers
        .get(hyper::header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    let admitted = match admission.admit(&socket, &params, origin, &info).await {
        Ok(admitted) => admitted,
        Err(refused) => return Err(decline(stream, bytes, Some(refusal(refused)), held)),
    };
    // Slot against max_connections from here until the task ends.
    let counted = admission.connections().hold();
    // check_handshake found exactly one key.
    let key = info
        .headers
        .get(SEC_WEBSOCKET_KEY)
        .map(HeaderValue::as_bytes);
    let response = switching_protocols(key.unwrap_or_default(), phoenix_offered);
    // What the client sent after its handshake, copied so the head's buffer
    // is not held for the connection's life.
    let rest = Bytes::copy_from_slice(bytes.get(head_len..).unwrap_or_default());
    drop((info, params, bytes));
    if let Err(e) = stream.write_all(&response).await {
        tracing::debug!(%peer, error = %e, "websocket upgrade failed");
        return Err(None);
    }
    drop(held);
    Ok(Upgraded {
        stream,
        rest,
        open: Open {
            drain: admission.drain().clone(),
            services: services.clone(),
            socket,
            admitted,
            _counted: counted,
            sheddable: admission.sheddable().cloned(),
        },
    })
}

/// Opening a directly upgraded connection, boxed apart from its life.
type Opening = Pin<Box<dyn Future<Output = Option<Live<TcpIn, OwnedWriteHalf>>> + Send>>;

/// A connection [`direct`] upgraded, to run in the caller's task.
pub(crate) struct Upgraded {
    stream: TcpStream,
    rest: Bytes,
    open: Open,
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl Upgraded {
    /// The connection, to run until it ends, counted by the drain as the
    /// connection tasks it spawns are. Not an `async fn`: that would keep
    /// `self` beside the connection's own state for its whole life.
    pub(crate) fn run(self) -> impl std::future::Future<Output = ()> + Send {
        let Upgraded { stream, rest, open } = self;
        let drain = open.drain.clone();
        let (r, w) = stream.into_split();
        // Boxed, and gone once the connection is open: only `serve`'s state
        // stays in the task for the connection's life.
        let opening: Opening = Box::pin(open_live(TcpIn::new(rest, r), w, open));
        drain.track(opening.then(|live| match live {
            Some(live) => Either::Left(serve(live)),
            None => Either::Right(std::future::ready(())),
        }))
    }
}

/// The 101 answer to a handshake with `key`, byte for byte as hyper wrote
/// it for [`handshake`]'s response (header order and case, `date`).
fn switching_protocols(key: &[u8], phoenix_offered: bool) -> Vec<u8> {
    let mut response = Vec::with_capacity(192);
    response.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
        sec-websocket-accept: ",
    );
    response.extend_from_slice(&accept_key(key));
    if phoenix_offered {
        // As in `handshake`: clients that offered subprotocols need one back.
        response.extend_from_slice(b"\r\nsec-websocket-protocol: phoenix");
    }
    response.extend_from_slice(b"\r\ndate: ");
    head::with_date(|date| response.extend_from_slice(date.as_bytes()));
    response.extend_from_slice(b"\r\n\r\n");
    response
}

/// What [`direct`] computes before admission, for the benchmark
/// (`server::bench_handshake`): the head parsed, the handshake checked,
/// the params read and the 101 written; `None` where hyper would answer.
pub(crate) fn bench_handshake(bytes: &Bytes) -> Option<Vec<u8>> {
    let (req, _) = head::get_request(bytes)?;
    check_handshake(&req).ok()?;
    let (phoenix_offered, _token) = subprotocols(&req).ok()?;
    let params = Params::from_query(req.uri().query().unwrap_or(""));
    std::hint::black_box(&params);
    let key = req.headers().get(SEC_WEBSOCKET_KEY)?;
    Some(switching_protocols(key.as_bytes(), phoenix_offered))
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2, item 5.4).
fn accept_key(key: &[u8]) -> [u8; 28] {
    use sha1::Digest;
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    // The `sha1` crate rather than ring's: it uses the CPU's SHA
    // instructions where there are some (ring's SHA-1 is portable code,
    // 2 % of a connection's CPU).
    let mut sha1 = sha1::Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    let mut out = [0u8; 28];
    // 20 bytes always encode to 28.
    let _ = base64::engine::general_purpose::STANDARD.encode_slice(sha1.finalize(), &mut out);
    out
}

/// Why a request is not an opening handshake as RFC 6455 §4.2.1 describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadHandshake {
    /// 400, with this reason.
    Malformed(&'static str),
    /// A `Sec-WebSocket-Version` other than 13: 426, naming 13.
    Version,
}

impl BadHandshake {
    fn response(self) -> Response<Body> {
        match self {
            BadHandshake::Malformed(why) => text(StatusCode::BAD_REQUEST, why),
            BadHandshake::Version => {
                let why = "unsupported Sec-WebSocket-Version, expected 13";
                let mut resp = text(StatusCode::UPGRADE_REQUIRED, why);
                resp.headers_mut()
                    .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
                resp
            }
        }
    }
}

/// Checks the opening handshake before admission runs, so a request that
/// is not one is refused whatever the socket's handler would say.
fn check_handshake<B>(req: &Request<B>) -> Result<(), BadHandshake> {
    let bad = |why| Err(BadHandshake::Malformed(why));
    if req.method() != Method::GET {
        return bad("websocket endpoint accepts GET only");
    }
    if req.version() < Version::HTTP_11 {
        return bad("websocket needs HTTP/1.1 or later");
    }
    if !fastwebsockets::upgrade::is_upgrade_request(req) {
        return bad("expected a websocket upgrade request");
    }
    let headers = req.headers();
    if !headers.contains_key(HOST) {
        return bad("missing Host header");
    }
    match headers.get(SEC_WEBSOCKET_VERSION) {
        None => return bad("missing Sec-WebSocket-Version header"),
        Some(v) if v.as_bytes() == b"13" => {}
        Some(_) => return Err(BadHandshake::Version),
    }
    let mut keys = headers.get_all(SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) => key,
        _ => return bad("expected one Sec-WebSocket-Key header"),
    };
    // A nonce of 16 random bytes, base64-encoded (§4.1, item 7).
    // Decoded on the stack: a longer key cannot fit, and is refused too.
    let mut nonce = [0u8; 18];
    let decoded =
        base64::engine::general_purpose::STANDARD.decode_slice(key.as_bytes(), &mut nonce);
    if decoded != Ok(16) {
        return bad("Sec-WebSocket-Key is not the base64 of 16 bytes");
    }
    Ok(())
}

/// The answer to a refused handshake.
fn refusal(refused: Refused) -> Response<Body> {
    match refused {
        Refused::Draining => text(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down"),
        Refused::OverLimit(why) => text(StatusCode::SERVICE_UNAVAILABLE, &why),
        Refused::Origin => text(StatusCode::FORBIDDEN, "origin not allowed"),
        Refused::Vsn(e) => text(StatusCode::FORBIDDEN, &e.to_string()),
        Refused::Connect(e) => text(e.status, "forbidden"),
        Refused::Source(r) => too_many(r.why()),
    }
}

/// An admitted connection, ready to run once upgraded.
struct Open {
    drain: Drain,
    services: Arc<Services>,
    socket: Arc<Socket>,
    admitted: Admitted,
    /// Its place in `max_connections`, held while the connection runs.
    _counted: Slot,
    /// Where it registers once open, when rebalancing is on.
    sheddable: Option<Arc<Sheddable>>,
}

/// Reads `Sec-WebSocket-Protocol`: whether `phoenix` was offered, and the
/// token phoenix.js 1.8 passes as `base64url.bearer.phx.<base64>`.
fn subprotocols<B>(req: &Request<B>) -> Result<(bool, Option<String>), &'static str> {
    let mut phoenix = false;
    let mut token = None;
    for value in req.headers().get_all(SEC_WEBSOCKET_PROTOCOL) {
        let value = value
            .to_str()
            .map_err(|_| "invalid Sec-WebSocket-Protocol header")?;
        for proto in value.split(',').map(str::trim) {
            if proto == "phoenix" {
                phoenix = true;
            } else if let Some(encoded) = proto.strip_prefix(AUTH_PREFIX) {
                token = Some(decode_auth_token(encoded).ok_or("invalid authToken encoding")?);
            }
        }
    }
    Ok((phoenix, token))
}

/// phoenix.js uses the standard base64 alphabet without padding despite the
/// prefix's name; accept URL-safe and padded forms as well.
fn decode_auth_token(encoded: &str) -> Option<String> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let trimmed = encoded.trim_end_matches('=');
    let bytes = STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
        .ok()?;
    String::from_utf8(bytes).ok()
}

async fn run(io: TokioIo<hyper::upgrade::Upgraded>, open: Open) {
    // Owned TCP halves avoid a lock per read and write; anything read past
    // the handshake is replayed in front of the stream. The server hands
    // hyper a `Prefixed` stream (what it read looking for a handshake).
    let upgraded = match io.into_inner().downcast::<TokioIo<Prefixed>>() {
        Ok(parts) => {
            let Prefixed { prefix, stream } = parts.io.into_inner();
            let mut rest = Vec::with_capacity(prefix.len() + parts.read_buf.len());
            rest.extend_from_slice(&prefix);
            rest.extend_from_slice(&parts.read_buf);
            let (r, w) = stream.into_split();
            return start(TcpIn::new(Bytes::from(rest), r), w, open).await;
        }
        Err(upgraded) => upgraded,
    };
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            // `read_buf` is a view into hyper's read buffer; holding it kept
            // that buffer alive for the life of the connection (1.2 kB per idle
            // connection measured), so keep a copy of what is left (usually nothing).
            let rest = Bytes::copy_from_slice(&parts.read_buf);
            drop(parts.read_buf);
            let (r, w) = parts.io.into_inner().into_split();
            start(TcpIn::new(rest, r), w, open).await
        }
        Err(upgraded) => {
            let (r, w) = tokio::io::split(TokioIo::new(upgraded));
            start(Plain(r), w, open).await
        }
    }
}

/// Opens the connection and spawns its task (after hyper's upgrade, whose
/// task holds hyper's state).
async fn start<R, W>(r: R, w: W, open: Open)
where
    R: Readable + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let drain = open.drain.clone();
    if let Some(live) = open_live(r, w, open).await {
        drain.spawn(serve(live));
    }
}

/// Opens the connection (its socket-id subscription): what its task will
/// own, or `None` when it could not open (the client was told).
async fn open_live<R, W>(r: R, mut w: W, open: Open) -> Option<Live<R, W>>
where
    R: Readable + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Open {
        drain,
        services,
        socket,
        admitted,
        _counted,
        sheddable,
    } = open;
    let Admitted {
        vsn,
        assigns,
        source,
        permit,
    } = admitted;
    let config = socket.config.clone();
    let conn = ConnHandle::new(vsn, config.outbound_budget());
    let opened = Connection::open(
        Transport::WebSocket,
        conn.clone(),
        socket,
        services,
        assigns,
        source,
    )
    .await;
    let connection = match opened {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "closing connection: socket id subscription failed");
            conn.close(Disconnect::ServerShutdown);
            writer::run(&mut w, &conn).await;
            return None;
        }
    };
    let registered = sheddable.map(|s| s.register(&conn));
    Some(Live {
        reader: FrameReader::new(r, config.max_frame_size),
        connection: Some(connection),
        w,
        conn,
        idle: config.idle_timeout,
        drain,
        _held: (_counted, permit, registered),
    })
}

/// What an open connection's task owns, in one place: its future holds it
/// once, and what runs borrows from it.
struct Live<R, W> {
    reader: FrameReader<R>,
    /// Dropped (logging and counting the close) once reading stops.
    connection: Option<Connection>,
    w: W,
    conn: ConnHandle,
    /// `idle_timeout`.
    idle: Duration,
    drain: Drain,
    /// Its places in `max_connections`, in its source's count, and among
    /// the connections rebalancing may close.
    _held: (Slot, SourcePermit, Option<Registered>),
}

/// The connection's task: reading and writing side by side in one task,
/// the writer's state beside the reader's.
async fn serve<R, W>(mut live: Live<R, W>)
where
    R: Readable,
    W: AsyncWrite + Unpin,
{
    let Live {
        reader,
        connection,
        w,
        conn,
        idle,
        drain,
        ..
    } = &mut live;
    let reading = AtomicBool::new(true);
    let read = async {
        if let Some(c) = connection.as_mut() {
            let reason = read_loop(reader, c, conn, *idle, drain).await;
            conn.close(reason);
        }
        // Logs "connection closed" and counts it.
        *connection = None;
        reading.store(false, Ordering::Relaxed);
    };
    let write = async {
        writer::run(w, conn).await;
        // The connection is closed (the writer only returns then), maybe by
        // the writer itself, which wakes no one: have the reader polled
        // once more to see it.
        if reading.load(Ordering::Relaxed) {
            tokio::task::yield_now().await;
        }
    };
    tokio::join!(read, write);
}

/// Ready once the connection is closing; registers no waker. Only for
/// `read_loop`, which `serve` runs beside the writer: the writer waits on
/// what `ConnHandle::close` notifies until the connection closes, and
/// yields once after it returns, so the task is polled after every close.
fn closing(conn: &ConnHandle) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(|_| {
        if conn.is_closed() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
}

/// Reads and handles the client's messages until the connection ends, and
/// says why: the client closed or broke the protocol, it was idle too long,
/// the drain's turn came, or it was closed from elsewhere.
async fn read_loop<R: Readable>(
    reader: &mut FrameReader<R>,
    connection: &mut Connection,
    conn: &ConnHandle,
    idle: Duration,
    drain: &Drain,
) -> Disconnect {
    // One timer for the idle timeout and the drain's turn: it fires at the
    // idle deadline as it stood when it was set; a message since then moves
    // the deadline, and the timer is set again instead of per message.
    let mut last = Instant::now();
    let timer = tokio::time::sleep_until(last + idle);
    tokio::pin!(timer);
    let mut drain_at: Option<Instant> = None;
    // Made once, not per message: a waiter registered (under a lock) when
    // made and removed when dropped; read as a flag once registered.
    let started = drain.started();
    tokio::pin!(started);
    let mut registered = false;
    loop {
        let read = tokio::select! {
            biased;
            // A flag read, not a waiter of its own on the close signal (a
            // lock per poll): `serve` guarantees a poll after any close.
            _ = closing(conn) => return conn.reason().unwrap_or(Disconnect::TransportError),
            _ = std::future::poll_fn(|cx| drain.poll_started(started.as_mut(), &mut registered, cx)),
                if drain_at.is_none() => {
                let at = Instant::now() + drain.delay();
                drain_at = Some(at);
                timer.as_mut().reset(at.min(last + idle));
                continue;
            }
            _ = &mut timer => {
                let now = Instant::now();
                if drain_at.is_some_and(|at| at <= now) {
                    return Disconnect::ServerShutdown;
                }
                if last + idle <= now {
                    return Disconnect::IdleTimeout;
                }
                let next = last + idle;
                timer.as_mut().reset(drain_at.map_or(next, |at| at.min(next)));
                continue;
            }
            read = reader.next() => read,
        };
        last = Instant::now();
        let incoming = match read {
            Ok(incoming) => incoming,
            Err(ReadError::Eof) => return Disconnect::ClientClosed(None),
            Err(ReadError::Io) => return Disconnect::TransportError,
            Err(ReadError::TooLarge) => return Disconnect::FrameTooLarge,
            Err(ReadError::Protocol(why)) => {
                tracing::debug!(conn = conn.id(), why, "websocket protocol error");
                return Disconnect::ProtocolError;
            }
            Err(ReadError::InvalidUtf8(why)) => {
                tracing::debug!(conn = conn.id(), why, "websocket protocol error");
                return Disconnect::InvalidUtf8;
            }
        };
        let data = match &incoming {
            Read::Text(text) => Data::Text(text),
            Read::Binary(bytes) => Data::Binary(bytes),
            Read::Ping(data) => {
                conn.enqueue(Out::Pong(data.clone()));
                continue;
            }
            Read::Close(code) => return Disconnect::ClientClosed(*code),
        };
        match decode(conn.vsn(), conn.id(), data) {
            Ok(msg) => connection.handle(msg),
            Err(reason) => return reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{check_handshake, decode_auth_token};
    use hyper::{Request, Version};

    /// The status `check_handshake` answers a handshake changed by `edit`, and
    /// its `Sec-WebSocket-Version` header; `None` when accepted.
    fn status(edit: impl FnOnce(&mut Request<()>)) -> Option<(u16, Option<String>)> {
        let mut req = Request::get("/socket/websocket")
            .header("Host", "example.com")
            .header("Connection", "keep-alive, Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap();
        edit(&mut req);
        check_handshake(&req).err().map(|bad| {
            let r = bad.response();
            let version = r.headers().get("sec-websocket-version");
            (
                r.status().as_u16(),
                version.map(|v| v.to_str().unwrap().to_owned()),
            )
        })
    }

    #[test]
    fn handshake_checks() {
        assert_eq!(status(|_| {}), None);
        let bad = Some((400, None));
        assert_eq!(status(|r| *r.version_mut() = Version::HTTP_10), bad);
        assert_eq!(status(|r| *r.method_mut() = hyper::Method::POST), bad);
        assert_eq!(status(|r| drop(r.headers_mut().remove("host"))), bad);
        assert_eq!(status(|r| drop(r.headers_mut().remove("upgrade"))), bad);
        let version = |v: Option<&'static str>| {
            status(move |r| {
                r.headers_mut().remove("sec-websocket-version");
                if let Some(v) = v {
                    r.headers_mut()
                        .insert("sec-websocket-version", v.parse().unwrap());
                }
            })
        };
        assert_eq!(version(None), bad);
        for v in ["8", "12", "14", "13, 8", " 13x"] {
            assert_eq!(version(Some(v)), Some((426, Some("13".into()))), "{v:?}");
        }
        let key = |k: Option<&'static str>| {
            status(move |r| {
                r.headers_mut().remove("sec-websocket-key");
                if let Some(k) = k {
                    r.headers_mut()
                        .append("sec-websocket-key", k.parse().unwrap());
                }
            })
        };
        assert_eq!(key(None), bad);
        for k in [
            "",
            "not base64!",
            "dGhlIHNhbXBsZSBub25j",         // 15 bytes
            "dGhlIHNhbXBsZSBub25jZTE=",     // 17 bytes
            "dGhlIHNhbXBsZSBub25jZQ",       // unpadded
            "dGhlIHNhbXBsZSBub25jZQ==dGhl", // trailing data
        ] {
            assert_eq!(key(Some(k)), bad, "{k:?}");
        }
        assert_eq!(key(Some("AAAAAAAAAAAAAAAAAAAAAA==")), None);
        let two = status(|r| {
            let k = "AAAAAAAAAAAAAAAAAAAAAA==".parse().unwrap();
            r.headers_mut().append("sec-websocket-key", k);
        });
        assert_eq!(two, bad);
    }

    #[test]
    fn accept_key_is_rfc_6455s() {
        // RFC 6455 §1.3's example.
        let accept = super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(&accept, b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn auth_token_alphabets() {
        assert_eq!(
            decode_auth_token("czNjcjN0LWF1dGg").as_deref(),
            Some("s3cr3t-auth")
        );
        assert_eq!(
            decode_auth_token("czNjcjN0LWF1dGg=").as_deref(),
            Some("s3cr3t-auth")
        );
        assert_eq!(decode_auth_token("Pz8_").as_deref(), Some("???"));
        assert_eq!(decode_auth_token("Pz8/").as_deref(), Some("???"));
        assert_eq!(decode_auth_token("!!!"), None);
    }
}
