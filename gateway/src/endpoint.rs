//! The endpoint: sockets mounted at paths, the pubsub they share, and extra
//! HTTP routes, as `Phoenix.Endpoint` ties them together.

use crate::channel::Router;
use crate::drain::Drain;
use crate::metrics::{metrics, Limit};
use crate::pubsub::PubSub;
use crate::socket::{SocketConfig, SocketHandler, Transport};
use crate::transport::longpoll::LongPoll;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The response body type of every HTTP answer.
pub type Body = Full<Bytes>;

type RouteFn = dyn Fn(Request<Incoming>) -> BoxFuture<'static, Response<Body>> + Send + Sync;

/// A socket mounted at a path (default `/socket`), serving
/// `{path}/websocket`, and `{path}/longpoll` when its config enables it.
pub struct Socket {
    pub(crate) path: String,
    pub(crate) handler: Arc<dyn SocketHandler>,
    pub(crate) router: Router,
    pub(crate) config: SocketConfig,
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("path", &self.path)
            .field("router", &self.router)
            .field("config", &self.config)
            .finish()
    }
}

impl Socket {
    /// A socket at `path` (for example `/socket`) whose connections are
    /// admitted by `handler` and whose topics are served by `router`.
    pub fn new(path: &str, handler: impl SocketHandler, router: Router) -> Self {
        Socket {
            path: path.trim_end_matches('/').to_owned(),
            handler: Arc::new(handler),
            router,
            config: SocketConfig::default(),
        }
    }

    /// Replaces the limits.
    pub fn config(mut self, config: SocketConfig) -> Self {
        self.config = config;
        self
    }
}

/// Everything the HTTP server serves.
pub struct Endpoint {
    pub(crate) sockets: Vec<Arc<Socket>>,
    pub(crate) pubsub: PubSub,
    pub(crate) node: Arc<str>,
    routes: Vec<(Method, String, Arc<RouteFn>)>,
    /// Cancelled when the pod stops accepting connections.
    pub(crate) shutdown: CancellationToken,
    /// When open connections close (1001) and which are still open.
    pub(crate) drain: Drain,
    limits: Limits,
    /// `GET /metrics` is served on the main port.
    metrics_here: bool,
    ready: AtomicBool,
    /// Long-poll sessions owned here and requests relayed to their owners.
    pub(crate) longpoll: Arc<LongPoll>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("sockets", &self.sockets)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Starts building an endpoint with the in-memory pubsub.
    pub fn builder() -> EndpointBuilder {
        EndpointBuilder {
            sockets: Vec::new(),
            pubsub: None,
            node: None,
            routes: Vec::new(),
            longpoll_secret: None,
            relay_timeout: DEFAULT_RELAY_TIMEOUT,
            limits: Limits::default(),
            metrics_here: true,
        }
    }

    /// The pubsub, for broadcasting from outside any channel.
    pub fn pubsub(&self) -> &PubSub {
        &self.pubsub
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// This process's id in long-poll session tokens: random per start, so
    /// operators (and tests) can tell which pod owns a session.
    pub fn longpoll_pod(&self) -> &str {
        self.longpoll.node()
    }

    /// Closes every connection at once and stops accepting new ones.
    pub fn shutdown(&self) {
        self.ready.store(false, Ordering::SeqCst);
        self.drain.start(Duration::ZERO);
        self.shutdown.cancel();
    }

    /// The graceful version of [`shutdown`](Self::shutdown), for SIGTERM:
    /// `/readyz` fails at once; new connections are still accepted for
    /// `delay` (a balancer notices readiness only at its next probe), then
    /// refused; open connections close (WebSocket 1001, long-poll sessions
    /// end) at random points of `period`, so their clients reconnect to
    /// other pods gradually rather than all at once. Returns when new
    /// connections are refused; [`closed`](Self::closed) waits for the rest.
    pub async fn drain(&self, delay: Duration, period: Duration) {
        self.ready.store(false, Ordering::SeqCst);
        self.drain.start(period);
        tokio::time::sleep(delay).await;
        self.shutdown.cancel();
    }

    /// Resolves once every connection and long-poll session has ended;
    /// meaningful once shutting down.
    pub async fn closed(&self) {
        self.drain.closed().await;
    }

    /// `/readyz`: whether this pod should get new users, and a body saying
    /// why not, plus the broker's state.
    pub fn readiness(&self) -> (bool, String) {
        let (ok, state) = if !self.ready.load(Ordering::SeqCst) {
            (false, "draining".to_owned())
        } else if let Some((_, why)) = self.over_limit() {
            (false, why)
        } else {
            (true, "ready".to_owned())
        };
        (
            ok,
            format!(
                "{state}\nconnections: {}\n{}\n",
                self.drain.open(),
                self.pubsub.broker_health()
            ),
        )
    }

    /// Why a new connection is refused: at the connection limit or over the
    /// memory threshold; the limit, and a sentence for the answer's body.
    pub(crate) fn over_limit(&self) -> Option<(Limit, String)> {
        if let Some(max) = self.limits.max_connections {
            let open = self.drain.open();
            if open >= max {
                let why = format!("at connection limit ({open} of {max})");
                return Some((Limit::MaxConnections, why));
            }
        }
        if let Some(max) = self.limits.max_memory {
            let rss = crate::server::resident_memory()?;
            if rss > max {
                let why = format!("over memory threshold ({rss} of {max} bytes)");
                return Some((Limit::MaxMemory, why));
            }
        }
        None
    }

    /// Refuses a connection attempt for a limit: counted, logged at debug,
    /// and the body of the 503 to answer.
    pub(crate) fn refuse_over_limit(&self, transport: Transport) -> Option<String> {
        let (limit, why) = self.over_limit()?;
        let m = metrics();
        m.limit_hit(limit);
        m.refused(transport, limit.label());
        tracing::debug!(?transport, why, "connection refused");
        Some(why)
    }

    /// Whether the main port answers `GET /metrics`.
    pub(crate) fn serves_metrics(&self) -> bool {
        self.metrics_here
    }

    /// True from the start of a drain (or shutdown) on.
    pub fn is_draining(&self) -> bool {
        !self.ready.load(Ordering::SeqCst)
    }

    /// The per-pod limits this endpoint enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The Prometheus text exposition of this process's metrics
    /// (docs/metrics.md), as `GET /metrics` answers.
    pub fn metrics(&self) -> String {
        metrics().render(self)
    }

    pub(crate) fn route(&self, method: &Method, path: &str) -> Option<&Arc<RouteFn>> {
        self.routes
            .iter()
            .find(|(m, p, _)| m == method && p == path)
            .map(|(_, _, f)| f)
    }
}

/// How long a pod waits for a long-poll session's owner to pick up a
/// relayed request, on top of the poll window: Phoenix's `pubsub_timeout_ms`.
pub const DEFAULT_RELAY_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds an [`Endpoint`].
pub struct EndpointBuilder {
    sockets: Vec<Arc<Socket>>,
    pubsub: Option<PubSub>,
    node: Option<String>,
    routes: Vec<(Method, String, Arc<RouteFn>)>,
    longpoll_secret: Option<Vec<u8>>,
    relay_timeout: Duration,
    limits: Limits,
    metrics_here: bool,
}

/// Per-pod limits past which new connections are refused and `/readyz`
/// fails, so a balancer sends new users elsewhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Open connections (WebSocket and long-poll sessions); `None`: no limit.
    pub max_connections: Option<usize>,
    /// Resident memory in bytes; `None`: no threshold.
    pub max_memory: Option<u64>,
}

impl Default for EndpointBuilder {
    fn default() -> Self {
        Endpoint::builder()
    }
}

impl fmt::Debug for EndpointBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointBuilder")
            .field("sockets", &self.sockets)
            .finish_non_exhaustive()
    }
}

impl EndpointBuilder {
    /// Mounts a socket.
    pub fn socket(mut self, socket: Socket) -> Self {
        self.sockets.push(Arc::new(socket));
        self
    }

    /// Uses `pubsub` instead of a fresh in-memory one.
    pub fn pubsub(mut self, pubsub: PubSub) -> Self {
        self.pubsub = Some(pubsub);
        self
    }

    /// Names this node (default: `gateway@` and the host name).
    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// The secret that signs long-poll session tokens and relay messages.
    /// Every pod behind one balancer must have the same one, or requests
    /// that land on another pod than the session's owner are refused (410).
    /// Default: random per process, which only suits a single pod.
    pub fn longpoll_secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.longpoll_secret = Some(secret.into());
        self
    }

    /// Whether the main port answers `GET /metrics` (default: yes). Turn it
    /// off when metrics are served on their own port
    /// ([`server::serve_metrics`](crate::server::serve_metrics)), so clients
    /// reaching the public port cannot read them.
    pub fn metrics_on_main_port(mut self, yes: bool) -> Self {
        self.metrics_here = yes;
        self
    }

    /// Connection and memory limits of this pod (default: none).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// How long to wait for a long-poll session's owner to answer a relayed
    /// request, beyond the poll window. Default [`DEFAULT_RELAY_TIMEOUT`].
    pub fn longpoll_relay_timeout(mut self, timeout: Duration) -> Self {
        self.relay_timeout = timeout;
        self
    }

    /// Serves `method path` with `handler`, beside the sockets.
    pub fn route<F, Fut>(mut self, method: Method, path: &str, handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let f: Arc<RouteFn> = Arc::new(move |req| Box::pin(handler(req)));
        self.routes.push((method, path.to_owned(), f));
        self
    }

    /// Finishes the endpoint.
    pub fn build(self) -> Arc<Endpoint> {
        let node = self.node.unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
            format!("gateway@{host}")
        });
        let pubsub = self.pubsub.unwrap_or_else(PubSub::memory);
        for socket in &self.sockets {
            for pattern in socket.router.patterns() {
                crate::metrics::register_pattern(&pattern.to_string());
            }
        }
        let paths: Vec<&str> = self.sockets.iter().map(|s| s.path.as_str()).collect();
        metrics().init(&paths);
        let node: Arc<str> = Arc::from(node);
        let shutdown = CancellationToken::new();
        let drain = Drain::default();
        let secret = self
            .longpoll_secret
            .unwrap_or_else(|| crate::transport::longpoll::token::random_bytes::<32>().to_vec());
        let longpoll = LongPoll::new(
            &secret,
            self.relay_timeout,
            pubsub.clone(),
            node.clone(),
            drain.clone(),
        );
        Arc::new(Endpoint {
            sockets: self.sockets,
            pubsub,
            node,
            routes: self.routes,
            shutdown,
            drain,
            limits: self.limits,
            metrics_here: self.metrics_here,
            ready: AtomicBool::new(true),
            longpoll,
        })
    }
}
