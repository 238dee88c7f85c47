//! The endpoint: sockets mounted at paths, the pubsub and presence they
//! share, the gate new connections pass, and extra HTTP routes, as
//! `Phoenix.Endpoint` ties them together. The server serves it; it serves
//! nothing itself.

use crate::channel::queue::Joins;
use crate::channel::registry::Registry;
use crate::channel::{Services, TopicPattern};
use crate::lifecycle::Lifecycle;
use crate::metrics::{metrics, Limit, Scrape};
use crate::presence::{Presence, PresenceConfig};
use crate::pubsub::{History, PubSub};
use crate::rebalance::RebalanceConfig;
use crate::transport::admission::Admission;
use crate::transport::http::{Slot, Slots};
use crate::transport::longpoll::{self, LongPoll};
use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use crate::socket::Socket;
pub use crate::transport::admission::Limits;
pub use crate::transport::http::Timeouts;
pub use crate::transport::response::Body;
pub use crate::transport::source::{IpNet, SourceLimits};

type RouteFn = dyn Fn(Request<Incoming>) -> BoxFuture<'static, Response<Body>> + Send + Sync;

/// Everything the HTTP server serves.
pub struct Endpoint {
    pub(crate) sockets: Vec<Arc<Socket>>,
    /// What channels share: pubsub, presence, node name.
    pub(crate) services: Arc<Services>,
    routes: Vec<(Method, String, Arc<RouteFn>)>,
    /// Who may connect; the limits, stop signal and drain.
    pub(crate) admission: Admission,
    /// `GET /metrics` is served on the main port.
    metrics_here: bool,
    ready: AtomicBool,
    /// Long-poll sessions owned here and requests relayed to their owners.
    pub(crate) longpoll: Arc<LongPoll>,
    /// How long the server waits on HTTP clients.
    timeouts: Timeouts,
    /// Plain HTTP connections open on the main port.
    http: Slots,
    /// `/readyz` fails once the broker has been unreachable this long.
    unready_without_broker: Option<Duration>,
    /// Lifecycle events, when the binary's rules report them.
    lifecycle: Option<Lifecycle>,
    /// The address the server bound, once it has.
    local_addr: OnceLock<SocketAddr>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("sockets", &self.sockets)
            .field("node", &self.services.node)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Starts building an endpoint with the in-memory pubsub.
    pub fn builder() -> EndpointBuilder {
        EndpointBuilder {
            sockets: Vec::new(),
            pubsub: None,
            presence: None,
            node: None,
            routes: Vec::new(),
            longpoll_secret: None,
            relay_timeout: DEFAULT_RELAY_TIMEOUT,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            metrics_here: true,
            unready_without_broker: None,
            lifecycle: None,
            rebalance: None,
            registry: None,
        }
    }

    /// Writes the lifecycle events queued so far (the `disconnect`s of a
    /// drain), for a clean stop; at once when no rule reports them.
    ///
    /// # Cancel safety
    /// Cancel-safe: the events are written without the caller.
    pub async fn flush_lifecycle(&self) {
        if let Some(l) = &self.lifecycle {
            l.flush().await;
        }
    }

    /// The pubsub, for broadcasting from outside any channel.
    pub fn pubsub(&self) -> &PubSub {
        &self.services.pubsub
    }

    /// Presence: who is in a topic, on every node.
    pub fn presence(&self) -> &Presence {
        &self.services.presence
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.services.node
    }

    /// Tells the endpoint the address its server bound, which the admin
    /// API lists (a configured port 0 or `0.0.0.0` says little).
    pub fn listening_on(&self, addr: SocketAddr) {
        let _ = self.local_addr.set(addr);
    }

    /// The address the server bound, once [`listening_on`](Self::listening_on) said it.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr.get().copied()
    }

    /// This process's id in long-poll session tokens: random per start, so
    /// operators (and tests) can tell which pod owns a session.
    pub fn longpoll_pod(&self) -> &str {
        self.longpoll.node()
    }

    /// Closes every connection at once and stops accepting new ones.
    pub fn shutdown(&self) {
        self.ready.store(false, Ordering::SeqCst);
        self.admission.drain().start(Duration::ZERO);
        self.admission.stopped().cancel();
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
        self.admission.drain().start(period);
        tokio::time::sleep(delay).await;
        self.admission.stopped().cancel();
    }

    /// Resolves once every connection and long-poll session has ended;
    /// meaningful once shutting down.
    pub async fn closed(&self) {
        self.admission.drain().closed().await;
    }

    /// `/readyz`: whether this pod should get new users, and a body saying
    /// why not, plus the broker's state.
    pub fn readiness(&self) -> (bool, String) {
        let (ok, state) = if !self.ready.load(Ordering::SeqCst) {
            (false, "draining".to_owned())
        } else if let Some((_, why)) = self.admission.over_limit().or_else(|| self.http_full(1)) {
            (false, why)
        } else if let Some(down) = self.broker_down_too_long() {
            (
                false,
                format!("broker unreachable for {} ms", down.as_millis()),
            )
        } else {
            (true, "ready".to_owned())
        };
        (
            ok,
            format!(
                "{state}\nconnections: {}\nunpolled long-poll sessions: {}\nhttp connections: {}\n{}\n",
                self.admission.connections().open(),
                self.admission.unpolled().open(),
                self.http.open(),
                self.pubsub().broker_health()
            ),
        )
    }

    /// How long the broker has been unreachable, once that is longer than
    /// `unready_without_broker`.
    fn broker_down_too_long(&self) -> Option<Duration> {
        let after = self.unready_without_broker?;
        let down = self.pubsub().broker_status()?.down_for?;
        (down >= after).then_some(down)
    }

    /// Why `more` plain HTTP connections would not fit: at
    /// `max_http_connections`, or at the sockets the open-files limit
    /// leaves room for.
    fn http_full(&self, more: usize) -> Option<(Limit, String)> {
        let limits = self.admission.limits();
        let http = self.http.open();
        if let Some(max) = limits.max_http_connections {
            if http + more > max {
                let why = format!("at http connection limit ({http} of {max})");
                return Some((Limit::MaxHttpConnections, why));
            }
        }
        if let Some(max) = limits.max_sockets {
            let open = http + self.admission.connections().open();
            if open + more > max {
                let why = format!("at socket limit ({open} of {max}, from the open files limit)");
                return Some((Limit::MaxHttpConnections, why));
            }
        }
        None
    }

    /// A slot for a new plain HTTP connection on the main port, or why not
    /// (counted as a limit hit). Held for the connection's life.
    pub(crate) fn open_http(&self) -> Result<HttpConn, String> {
        if let Some((limit, why)) = self.http_full(1) {
            metrics().limit_hit(limit);
            return Err(why);
        }
        // The check and the take race only by a few connections.
        let slot = self
            .http
            .take(self.admission.limits().max_http_connections)
            .ok_or_else(|| "at http connection limit".to_owned())?;
        let gauge = metrics().http_connections();
        gauge.inc();
        Ok(HttpConn { _slot: slot })
    }

    /// How long the server waits on HTTP clients.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
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
        self.admission.limits().clone()
    }

    /// The Prometheus text exposition of this process's metrics
    /// (docs/metrics.md), as `GET /metrics` answers.
    pub fn metrics(&self) -> String {
        let (ready, _) = self.readiness();
        metrics().render(&Scrape {
            ready,
            draining: self.is_draining(),
            max_connections: self.limits().max_connections,
            local_topics: self.pubsub().hub().topics(),
            broker: self.pubsub().broker_status(),
        })
    }

    pub(crate) fn route(&self, method: &Method, path: &str) -> Option<&Arc<RouteFn>> {
        self.routes
            .iter()
            .find(|(m, p, _)| m == method && p == path)
            .map(|(_, _, f)| f)
    }
}

/// One plain HTTP connection of the main port, counted until dropped.
#[derive(Debug)]
pub(crate) struct HttpConn {
    _slot: Slot,
}

impl Drop for HttpConn {
    fn drop(&mut self) {
        metrics().http_connections().dec();
    }
}

/// How long a pod waits for a long-poll session's owner to pick up a
/// relayed request, on top of the poll window: Phoenix's `pubsub_timeout_ms`.
pub const DEFAULT_RELAY_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds an [`Endpoint`].
pub struct EndpointBuilder {
    sockets: Vec<Arc<Socket>>,
    pubsub: Option<PubSub>,
    presence: Option<Presence>,
    node: Option<String>,
    routes: Vec<(Method, String, Arc<RouteFn>)>,
    longpoll_secret: Option<Vec<u8>>,
    relay_timeout: Duration,
    limits: Limits,
    timeouts: Timeouts,
    metrics_here: bool,
    unready_without_broker: Option<Duration>,
    lifecycle: Option<Lifecycle>,
    rebalance: Option<RebalanceConfig>,
    registry: Option<Arc<Registry>>,
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

/// The history of the first route whose pattern matches `topic`.
fn first_history(table: &[(TopicPattern, Option<History>)], topic: &str) -> Option<History> {
    table
        .iter()
        .find(|(p, _)| p.matches(topic))
        .and_then(|(_, h)| *h)
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

    /// Uses `presence`, which must be built over the same pubsub (default:
    /// [`Presence::new`] over it with [`PresenceConfig::default`]).
    pub fn presence(mut self, presence: Presence) -> Self {
        self.presence = Some(presence);
        self
    }

    /// Reports lifecycle events (the binary's `[channel.lifecycle]`).
    pub(crate) fn lifecycle(mut self, lifecycle: Option<Lifecycle>) -> Self {
        self.lifecycle = lifecycle;
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
    /// off when metrics are served on their own port (`server::serve_metrics`),
    /// so clients reaching the public port cannot read them.
    pub fn metrics_on_main_port(mut self, yes: bool) -> Self {
        self.metrics_here = yes;
        self
    }

    /// Connection and memory limits of this pod (default: none).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// How long the server waits on HTTP clients (default
    /// [`Timeouts::default`]).
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Fail `/readyz` once the broker has been unreachable for `after`, so a
    /// balancer sends new users to pods that can deliver to them (default:
    /// readiness ignores the broker). An outage of the one Redis every pod
    /// shares makes every pod unready at once: open connections stay, and
    /// new users could not join anywhere meanwhile anyway.
    pub fn unready_without_broker(mut self, after: Option<Duration>) -> Self {
        self.unready_without_broker = after;
        self
    }

    /// Sheds WebSocket connections while this pod holds more than the
    /// fleet's average plus a margin, so pods added by a scale-out get
    /// their share of the clients (docs/rebalancing.md). Default: off.
    /// Needs the Redis broker, where the pods share their counts: without
    /// it, an error is logged and nothing is shed.
    pub fn rebalance(mut self, config: Option<RebalanceConfig>) -> Self {
        self.rebalance = config;
        self
    }

    /// How long to wait for a long-poll session's owner to answer a relayed
    /// request, beyond the poll window. Default [`DEFAULT_RELAY_TIMEOUT`].
    pub fn longpoll_relay_timeout(mut self, timeout: Duration) -> Self {
        self.relay_timeout = timeout;
        self
    }

    /// Registers every connection in `registry`, for the admin API
    /// (docs/admin.md).
    pub(crate) fn registry(mut self, registry: Arc<Registry>) -> Self {
        self.registry = Some(registry);
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
        let node = self.node.unwrap_or_else(default_node_name);
        let pubsub = self.pubsub.unwrap_or_else(PubSub::memory);
        let presence = self
            .presence
            .unwrap_or_else(|| Presence::new(&pubsub, PresenceConfig::default()));
        for socket in &self.sockets {
            for pattern in socket.router.patterns() {
                crate::metrics::register_pattern(&pattern.to_string());
            }
        }
        // History is the topic's: every socket's routes, in order, and the
        // first that matches a topic decides.
        let table: Vec<_> = self
            .sockets
            .iter()
            .flat_map(|s| s.router.histories())
            .collect();
        let any = table.iter().any(|(_, h)| h.is_some());
        pubsub.set_history(Box::new(move |topic| first_history(&table, topic)), any);
        let paths: Vec<&str> = self.sockets.iter().map(|s| &*s.path).collect();
        let close_reasons = crate::conn::Disconnect::ALL.map(|d| d.label());
        metrics().init(&paths, &close_reasons);
        let services = Arc::new(Services {
            pubsub,
            presence,
            node: Arc::from(node),
            joins: Joins::new(self.limits.per_source.max_queued_joins),
            registry: self.registry,
        });
        let mut admission = Admission::new(self.limits);
        if let Some(config) = self.rebalance {
            start_rebalance(config, &services.pubsub, &mut admission);
        }
        let secret = self
            .longpoll_secret
            .unwrap_or_else(|| longpoll::token::random_bytes::<32>().to_vec());
        let longpoll = LongPoll::new(
            &secret,
            self.relay_timeout,
            services.clone(),
            admission.drain().clone(),
        );
        Arc::new(Endpoint {
            sockets: self.sockets,
            services,
            routes: self.routes,
            admission,
            metrics_here: self.metrics_here,
            ready: AtomicBool::new(true),
            longpoll,
            timeouts: self.timeouts,
            http: Slots::default(),
            unready_without_broker: self.unready_without_broker,
            lifecycle: self.lifecycle,
            local_addr: OnceLock::new(),
        })
    }
}

/// Starts rebalancing over `pubsub`'s Redis, keeping `admission`'s
/// WebSocket connections for it to shed.
fn start_rebalance(config: RebalanceConfig, pubsub: &PubSub, admission: &mut Admission) {
    let Some(redis) = pubsub.redis_broker() else {
        tracing::error!(
            "rebalance needs the Redis broker, where pods share their counts; not rebalancing"
        );
        return;
    };
    let sheddable = admission.track_sheddable();
    let (connections, drain) = (admission.connections().clone(), admission.drain().clone());
    if !crate::rebalance::start(
        config,
        redis.bus().clone(),
        redis.node(),
        connections,
        drain,
        &sheddable,
    ) {
        tracing::error!(
            "rebalance needs a tokio runtime when the endpoint is built; not rebalancing"
        );
    }
}

/// The node name of an endpoint that names none: `gateway@` and the host
/// name.
pub(crate) fn default_node_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    format!("gateway@{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_route_decides_a_topics_history() {
        let h = History::new(10, Duration::from_secs(60));
        let table = vec![
            (TopicPattern::parse("room:quiet").unwrap(), None),
            (TopicPattern::parse("room:*").unwrap(), Some(h)),
        ];
        assert_eq!(first_history(&table, "room:a"), Some(h));
        assert_eq!(first_history(&table, "room:quiet"), None);
        assert_eq!(first_history(&table, "user:1"), None);
    }
}
