//! The HTTP server: accepts TCP connections, serves health checks and
//! metrics, routes socket paths to their transports and the rest to extra
//! routes. The top of the library: it imports the endpoint and the
//! transports; nothing imports it.

use crate::endpoint::{Endpoint, Socket};
use crate::transport::head::{self, Head, Prefixed};
use crate::transport::http::Slots;
use crate::transport::response::{text, Body};
use crate::transport::{longpoll, websocket};
use futures_util::future::Either;
use futures_util::FutureExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Pending connections the kernel queues before `accept` (capped by
/// `net.core.somaxconn`). A reconnect storm after a pod restart opens thousands
/// of connections at once; with a short queue the overflow SYNs are dropped and
/// retried a whole second later, which shows as 1 s connect latency.
pub const LISTEN_BACKLOG: u32 = 8192;

/// Binds a listening socket for [`serve`] with a deep accept queue
/// ([`LISTEN_BACKLOG`]) and `SO_REUSEADDR`, so a restarted pod can bind again
/// while old connections linger in TIME_WAIT.
///
/// # Errors
/// The address is in use, not local, or not permitted.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `endpoint` on `listener` until [`Endpoint::shutdown`] is called.
///
/// Plain HTTP connections are counted against the endpoint's
/// `max_http_connections` and socket budget ([`Limits`](crate::endpoint::Limits)):
/// past them a new connection is answered 503 at once and closed, before
/// anything is read from it.
///
/// # Errors
/// Never returns an error today; the type leaves room for fatal listener errors.
pub async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>) -> std::io::Result<()> {
    let stop = endpoint.admission.stopped().clone();
    let gate = |ep: &Endpoint| match ep.open_http() {
        Ok(conn) => Some(conn),
        Err(why) => {
            tracing::debug!(why, "http connection refused");
            None
        }
    };
    accept(listener, endpoint, stop, gate, first_request).await
}

/// A connection of the main port: when its first request is a WebSocket
/// handshake, it is answered without hyper ([`head`]) and the connection
/// runs in this task (one task per connection instead of two); everything
/// else is hyper's, from the first byte.
///
/// Built from two futures rather than as one `async fn`: the handshake's
/// (boxed, and gone once answered) and the connection's. Laid out together
/// in one state machine, the handshake's state would stay in the task for
/// the connection's whole life (2.6–4.6 kB measured, against 1.9 kB for the
/// connection alone). The connection's future is boxed too, once it is
/// made: the task's own future stays a few words, so spawning it and
/// moving from one future to the next copy pointers instead of the
/// connection's state (copies that were 5 % of its CPU).
fn first_request<T: Send + 'static>(
    ep: Arc<Endpoint>,
    stream: TcpStream,
    peer: SocketAddr,
    held: T,
) -> impl Future<Output = ()> + Send {
    let handshake: Pin<Box<dyn Future<Output = Option<websocket::Upgraded>> + Send>> =
        Box::pin(handshake(ep, stream, peer, held));
    handshake.then(|upgraded| match upgraded {
        Some(upgraded) => Either::Left(Box::pin(upgraded.run())),
        None => Either::Right(std::future::ready(())),
    })
}

/// The first request of a main-port connection: the upgraded connection
/// when it was a WebSocket handshake answered here; otherwise hyper serves
/// the connection to its end and there is none.
async fn handshake<T: Send + 'static>(
    ep: Arc<Endpoint>,
    mut stream: TcpStream,
    peer: SocketAddr,
    held: T,
) -> Option<websocket::Upgraded> {
    let header = ep.timeouts().header;
    let deadline = tokio::time::Instant::now() + header;
    let mut buf = head::buffer();
    let (io, first, held) = match head::read(&mut stream, &mut buf, deadline).await {
        Head::TimedOut => {
            // What hyper does at its header timeout: close without an answer.
            tracing::debug!(%peer, "http connection ended: no request head in time");
            return None;
        }
        Head::Other => (Prefixed::new(buf.freeze(), stream), None, held),
        Head::Complete => {
            let bytes = buf.freeze();
            let found = head::get_request(&bytes)
                .and_then(|(req, len)| Some((websocket_socket(&ep, req.uri().path())?, req, len)));
            match found {
                None => (Prefixed::new(bytes, stream), None, held),
                Some((socket, req, len)) => {
                    let (admission, services) = (&ep.admission, &ep.services);
                    let direct = websocket::direct(
                        admission, services, socket, peer, req, stream, bytes, len, held,
                    );
                    match direct.await {
                        Ok(upgraded) => return Some(upgraded),
                        Err(None) => return None,
                        Err(Some(declined)) => (declined.io, declined.first, declined.held),
                    }
                }
            }
        }
    };
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    let timeout = remaining.max(Duration::from_millis(1));
    http(ep, io, peer, timeout, first, held, handle).await;
    None
}

/// **For benchmarks only** (`gateway/benches/hot_paths.rs`); not part of
/// the API and may change or vanish at any time.
///
/// What answering a WebSocket handshake costs before admission, as a new
/// connection's first request: `head` (the request's bytes) parsed, the
/// handshake's checks, its params, and the 101 answer, which is returned;
/// `None` when the request would be left to hyper.
#[doc(hidden)]
pub fn bench_handshake(head: &bytes::Bytes) -> Option<Vec<u8>> {
    websocket::bench_handshake(head)
}

/// The socket whose WebSocket endpoint `path` is, as `handle` routes it.
fn websocket_socket(ep: &Endpoint, path: &str) -> Option<Arc<Socket>> {
    ep.sockets
        .iter()
        .find(|s| path.strip_prefix(&*s.path) == Some("/websocket"))
        .cloned()
}

/// Connections the metrics listener holds at once: Prometheus and the
/// kubelet's probes need a few, and a cap keeps the descriptors they use
/// within the margin kept for what is not a client (`FD_MARGIN`).
pub const METRICS_CONNECTIONS: usize = 16;

/// Serves `GET /metrics`, `/healthz` and `/readyz` on `listener`, a
/// separate port (`metrics_listen`) that clients cannot reach, so probes
/// keep their answer when the main port is at a connection or file limit.
/// It keeps answering through a drain, so the scrape shows
/// `gateway_draining`, until the process exits.
///
/// # Errors
/// Never returns an error today; the type leaves room for fatal listener errors.
pub async fn serve_metrics(listener: TcpListener, endpoint: Arc<Endpoint>) -> std::io::Result<()> {
    let slots = Arc::new(Slots::default());
    let gate = move |_: &Endpoint| slots.take(Some(METRICS_CONNECTIONS));
    let probes = |ep: Arc<Endpoint>, _, req: Request<Incoming>| async move {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => metrics(&ep),
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
            (&Method::GET, "/readyz") => readyz(&ep),
            _ => text(StatusCode::NOT_FOUND, "not found"),
        }
    };
    let stop = CancellationToken::new();
    accept(
        listener,
        endpoint,
        stop,
        gate,
        move |ep, stream, peer, held| {
            let header = ep.timeouts().header;
            http(ep, stream, peer, header, None, held, probes)
        },
    )
    .await
}

/// What a connection refused at accept gets before it is closed: written
/// without reading the request, so it costs no wait.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
content-length: 25\r\nconnection: close\r\n\r\nat http connection limit\n";

async fn accept<C, CFut, G, T>(
    listener: TcpListener,
    endpoint: Arc<Endpoint>,
    stop: CancellationToken,
    gate: G,
    connection: C,
) -> std::io::Result<()>
where
    C: Fn(Arc<Endpoint>, TcpStream, SocketAddr, T) -> CFut,
    CFut: std::future::Future<Output = ()> + Send + 'static,
    G: Fn(&Endpoint) -> Option<T>,
    T: Send + 'static,
{
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(held) = gate(&endpoint) else {
            let _ = stream.try_write(REFUSED);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(endpoint.clone(), stream, peer, held));
    }
}

/// Serves HTTP/1 on one connection with hyper until it ends or upgrades.
/// `held` counts it until then (after an upgrade the WebSocket counts as a
/// connection); `first`, when given, answers its first request.
async fn http<I, F, Fut, T>(
    ep: Arc<Endpoint>,
    io: I,
    peer: SocketAddr,
    header_timeout: Duration,
    first: Option<Response<Body>>,
    held: T,
    handler: F,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Arc<Endpoint>, SocketAddr, Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
    T: Send + 'static,
{
    let _held = held;
    let first = parking_lot::Mutex::new(first);
    let service = service_fn(move |req| {
        let ep = ep.clone();
        let given = first.lock().take();
        async move {
            Ok::<_, Infallible>(match given {
                Some(resp) => resp,
                None => handler(ep, peer, req).await,
            })
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "http connection ended with an error");
    }
}

async fn handle(ep: Arc<Endpoint>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => return readyz(&ep),
        (&Method::GET, "/metrics") if ep.serves_metrics() => return metrics(&ep),
        _ => {}
    }
    for socket in &ep.sockets {
        if let Some(rest) = path.strip_prefix(&*socket.path) {
            if rest == "/websocket" {
                let services = ep.services.clone();
                return websocket::handshake(&ep.admission, services, socket.clone(), peer, req)
                    .await;
            }
            if rest == "/longpoll" && socket.config.longpoll.is_some() {
                let lp = &ep.longpoll;
                let body_timeout = ep.timeouts().body;
                return longpoll::http::handle(
                    &ep.admission,
                    lp,
                    socket.clone(),
                    peer,
                    req,
                    body_timeout,
                )
                .await;
            }
        }
    }
    if let Some(route) = ep.route(req.method(), &path) {
        return route(req).await;
    }
    text(StatusCode::NOT_FOUND, "not found")
}

/// `GET /readyz`: 200 while this pod should get new users, 503 with the
/// reason otherwise.
fn readyz(ep: &Endpoint) -> Response<Body> {
    let (ready, body) = ep.readiness();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, &body)
}

/// `GET /metrics`: the Prometheus text format.
fn metrics(ep: &Endpoint) -> Response<Body> {
    let mut resp = text(StatusCode::OK, &ep.metrics());
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// Logs panics as one `tracing` error line (message and location) instead of
/// the default hook's output. A panicking channel is an expected event here
/// (the channel ends with `phx_error`, the connection carries on), and with
/// `RUST_BACKTRACE` set the default hook resolves a backtrace on the worker
/// thread, which stalls every connection on that thread for hundreds of
/// milliseconds in debug builds.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()));
        tracing::error!(
            location = location.as_deref().unwrap_or("unknown"),
            "panic: {msg}"
        );
    }));
}
