//! The HTTP server: accepts TCP connections, serves health checks and
//! metrics, routes socket paths to their transports and the rest to extra
//! routes. The top of the library: it imports the endpoint and the
//! transports; nothing imports it.

use crate::endpoint::Endpoint;
use crate::transport::response::{text, Body};
use crate::transport::{longpoll, websocket};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
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
/// # Errors
/// Never returns an error today; the type leaves room for fatal listener errors.
pub async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>) -> std::io::Result<()> {
    let stop = endpoint.admission.stopped().clone();
    accept(listener, endpoint, stop, handle).await
}

/// Serves only `GET /metrics` on `listener`, for a separate metrics port
/// (`metrics_listen`). It keeps answering through a drain, so the scrape
/// shows `gateway_draining`, until the process exits.
///
/// # Errors
/// Never returns an error today; the type leaves room for fatal listener errors.
pub async fn serve_metrics(listener: TcpListener, endpoint: Arc<Endpoint>) -> std::io::Result<()> {
    accept(
        listener,
        endpoint,
        CancellationToken::new(),
        |ep, _, req| async move {
            match (req.method(), req.uri().path()) {
                (&Method::GET, "/metrics") => metrics(&ep),
                _ => text(StatusCode::NOT_FOUND, "not found"),
            }
        },
    )
    .await
}

async fn accept<F, Fut>(
    listener: TcpListener,
    endpoint: Arc<Endpoint>,
    stop: CancellationToken,
    handler: F,
) -> std::io::Result<()>
where
    F: Fn(Arc<Endpoint>, SocketAddr, Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
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
        let _ = stream.set_nodelay(true);
        let ep = endpoint.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let ep = ep.clone();
                async move { Ok::<_, Infallible>(handler(ep, peer, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
        });
    }
}

async fn handle(ep: Arc<Endpoint>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => {
            let (ready, body) = ep.readiness();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            return text(status, &body);
        }
        (&Method::GET, "/metrics") if ep.serves_metrics() => return metrics(&ep),
        _ => {}
    }
    for socket in &ep.sockets {
        if let Some(rest) = path.strip_prefix(socket.path.as_str()) {
            if rest == "/websocket" {
                let services = ep.services.clone();
                return websocket::handshake(&ep.admission, services, socket.clone(), peer, req)
                    .await;
            }
            if rest == "/longpoll" && socket.config.longpoll.is_some() {
                let lp = &ep.longpoll;
                return longpoll::http::handle(&ep.admission, lp, socket.clone(), peer, req).await;
            }
        }
    }
    if let Some(route) = ep.route(req.method(), &path) {
        return route(req).await;
    }
    text(StatusCode::NOT_FOUND, "not found")
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
