//! Prometheus metrics, as `docs/metrics.md` names them: the alerts and the
//! dashboard in `k8s/` are written against those names.
//!
//! One set per process, like the process collector it sits beside: a pod runs
//! one endpoint, and a scrape describes the pod. Hot paths (every delivery,
//! every message read) touch counters resolved once per label set, never a
//! label lookup; what other parts already count (hub topics, the Redis bus's
//! state) is read when scraped instead of being counted twice.
//!
//! Metrics sit under everything that counts: they import only the protocol's
//! vocabulary. Callers hand over labels and values (a close reason's label,
//! a [`Scrape`] of what the endpoint knows), never their own types.

mod forward;
mod guard;
mod hook;
mod label;
mod lifecycle;
mod prefix;
mod rebalance;

pub(crate) use forward::{Answered, Forwarded};
pub(crate) use guard::{JoinedChannel, OpenConnection};
pub(crate) use hook::{HookName, HookResult};
pub(crate) use label::{Dropped, Limit, Received, Sent, Source};
use label::{DROPPED, JOIN_RESULTS, LATENCY_BUCKETS, LIMITS, RECEIVED_KINDS, REFUSALS, SENT_KINDS};
pub(crate) use lifecycle::lifecycle_metrics;
pub(crate) use rebalance::rebalance_metrics;

use crate::protocol::Transport;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::sync::LazyLock;
use std::time::Instant;

pub(crate) use prefix::register_pattern;

/// Every metric of the process.
pub(crate) struct Metrics {
    registry: Registry,
    /// Only gathered when the endpoint's broker is Redis.
    redis: Registry,
    connections: IntGaugeVec,
    opened: IntCounterVec,
    closed: IntCounterVec,
    refused: IntCounterVec,
    connections_max: IntGauge,
    channels_joined: IntGaugeVec,
    joins: IntCounterVec,
    local_topics: IntGauge,
    redis_subscriptions: IntGauge,
    received: [[IntCounter; 4]; 2],
    sent: [[IntCounter; 4]; 2],
    broadcasts: IntCounterVec,
    broadcast_failures: IntCounterVec,
    latency: Histogram,
    malformed: IntCounter,
    redis_dropped: [IntCounter; DROPPED.len()],
    /// `since` joins: recovered, not recovered.
    recoveries: [IntCounter; 2],
    replayed: IntCounter,
    history_gaps: IntCounter,
    limit_hits: [IntCounter; LIMITS.len()],
    http_connections: IntGauge,
    auth_failures: IntCounterVec,
    redis_up: IntGauge,
    redis_shards: IntGauge,
    redis_shards_down: IntGauge,
    redis_reconnects: IntCounter,
    redis_errors: IntCounterVec,
    ready: IntGauge,
    draining: IntGauge,
    hooks: hook::HookMetrics,
    /// Pushes forwarded to backends.
    pub(crate) forward: forward::ForwardMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub(crate) fn metrics() -> &'static Metrics {
    &METRICS
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    // Names are fixed and unique, so registering cannot fail; if it did, the
    // metric would only be missing from scrapes.
    if let Err(e) = registry.register(Box::new(c.clone())) {
        tracing::error!(error = %e, "metric not registered");
    }
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels);
    register(r, vec.expect("metric options are static and valid"))
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels);
    register(r, vec.expect("metric options are static and valid"))
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("metric options are static and valid");
    register(r, c)
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("metric options are static and valid");
    register(r, g)
}

/// The children of a `transport` × `kind` counter, resolved once.
fn by_transport_kind(vec: &IntCounterVec, kinds: [&str; 4]) -> [[IntCounter; 4]; 2] {
    Transport::ALL.map(|t| kinds.map(|k| vec.with_label_values(&[t.as_str(), k])))
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        let redis = Registry::new();
        #[cfg(target_os = "linux")]
        if let Err(e) = r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            tracing::error!(error = %e, "process metrics not registered");
        }
        let received = counter_vec(
            &r,
            "gateway_messages_received_total",
            "Phoenix messages read from clients, by kind.",
            &["transport", "kind"],
        );
        let sent = counter_vec(
            &r,
            "gateway_messages_sent_total",
            "Phoenix messages written to clients, by kind (broadcast: one per delivery).",
            &["transport", "kind"],
        );
        let limit_hits = counter_vec(
            &r,
            "gateway_limit_hits_total",
            "Times a configured limit refused, throttled or disconnected something.",
            &["limit"],
        );
        let redis_dropped = counter_vec(
            &r,
            "gateway_redis_dropped_total",
            "Well-formed messages from Redis dropped because publishers may not send them, by reason.",
            &["reason"],
        );
        let recoveries = counter_vec(
            &r,
            "gateway_history_recoveries_total",
            "Joins that asked for the messages after a position, by whether they got all of them.",
            &["result"],
        );
        let build_info = gauge_vec(
            &r,
            "gateway_build_info",
            "Always 1; the version label names the build.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let latency = HistogramOpts::new(
            "gateway_broadcast_latency_seconds",
            "From a broadcast entering the pod to its frame written to a client, per delivery.",
        )
        .buckets(LATENCY_BUCKETS.to_vec());
        let latency = register(
            &r,
            Histogram::with_opts(latency).expect("metric options are static and valid"),
        );
        Metrics {
            connections: gauge_vec(
                &r,
                "gateway_connections",
                "Open client connections (WebSocket connections and long-poll sessions).",
                &["transport", "socket"],
            ),
            opened: counter_vec(
                &r,
                "gateway_connections_opened_total",
                "Connections accepted after authentication.",
                &["transport", "socket"],
            ),
            closed: counter_vec(
                &r,
                "gateway_connections_closed_total",
                "Connections ended, by reason.",
                &["transport", "reason"],
            ),
            refused: counter_vec(
                &r,
                "gateway_connections_refused_total",
                "Connection attempts refused before a socket existed, by reason.",
                &["transport", "reason"],
            ),
            connections_max: gauge(
                &r,
                "gateway_connections_max",
                "The maximum connections of this pod in force (0: unlimited).",
            ),
            channels_joined: gauge_vec(
                &r,
                "gateway_channels_joined",
                "Channels currently joined on this pod, by topic prefix.",
                &["topic_prefix"],
            ),
            joins: counter_vec(
                &r,
                "gateway_joins_total",
                "phx_join answers, by topic prefix and result.",
                &["topic_prefix", "result"],
            ),
            local_topics: gauge(
                &r,
                "gateway_local_topics",
                "Topics with at least one subscriber on this pod.",
            ),
            redis_subscriptions: gauge(
                &r,
                "gateway_redis_subscriptions",
                "Redis channels this pod's subscriber connection holds.",
            ),
            received: by_transport_kind(&received, RECEIVED_KINDS),
            sent: by_transport_kind(&sent, SENT_KINDS),
            broadcasts: counter_vec(
                &r,
                "gateway_broadcasts_total",
                "Broadcasts that entered this pod, by source and topic prefix.",
                &["source", "topic_prefix"],
            ),
            broadcast_failures: counter_vec(
                &r,
                "gateway_broadcast_failures_total",
                "Client and HTTP broadcasts that could not be published.",
                &["source"],
            ),
            latency,
            malformed: counter(
                &r,
                "gateway_malformed_envelopes_total",
                "Messages read from Redis dropped for a malformed envelope.",
            ),
            redis_dropped: DROPPED.map(|d| redis_dropped.with_label_values(&[d])),
            recoveries: ["recovered", "not_recovered"].map(|l| recoveries.with_label_values(&[l])),
            replayed: counter(
                &r,
                "gateway_history_replayed_total",
                "Messages replayed from history to joining clients.",
            ),
            history_gaps: counter(
                &r,
                "gateway_history_gaps_total",
                "Channels ended because their topic's live messages skipped offsets (lost while Redis reconnected), so their clients rejoin and recover.",
            ),
            limit_hits: LIMITS.map(|l| limit_hits.with_label_values(&[l])),
            http_connections: gauge(
                &r,
                "gateway_http_connections",
                "Plain HTTP connections open on the main port (not upgraded to WebSocket).",
            ),
            auth_failures: counter_vec(
                &r,
                "gateway_auth_failures_total",
                "Refused authentication, by socket and reason.",
                &["socket", "reason"],
            ),
            redis_up: gauge(
                &redis,
                "gateway_redis_up",
                "1 while the subscriber connection to Redis is established and answering.",
            ),
            redis_errors: counter_vec(
                &redis,
                "gateway_redis_errors_total",
                "Failed Redis connects and commands by cause: auth, acl, dns, refused, tls, timeout, readonly, other.",
                &["cause"],
            ),
            redis_shards: gauge(
                &redis,
                "gateway_redis_shards",
                "Redis Cluster masters in the slot map (0 on a single Redis).",
            ),
            redis_shards_down: gauge(
                &redis,
                "gateway_redis_shards_down",
                "Redis Cluster masters without a subscriber connection: their topics receive nothing.",
            ),
            redis_reconnects: counter(
                &redis,
                "gateway_redis_reconnects_total",
                "Times the subscriber connection to Redis was lost and re-established.",
            ),
            ready: gauge(&r, "gateway_ready", "1 while /readyz answers 200."),
            draining: gauge(&r, "gateway_draining", "1 from SIGTERM/SIGINT until exit."),
            hooks: hook::HookMetrics::new(&r),
            forward: forward::ForwardMetrics::new(&r),
            registry: r,
            redis,
        }
    }

    /// Creates the series of every label value known from the configuration
    /// at zero, so they are scraped before anything happens (a `rate()` then
    /// sees the first increment, and ratios have both sides): the socket
    /// paths and every reason a connection can close for.
    pub(crate) fn init(&self, sockets: &[&str], close_reasons: &[&str]) {
        for t in Transport::ALL.map(Transport::as_str) {
            for s in sockets {
                self.connections.with_label_values(&[t, s]);
                self.opened.with_label_values(&[t, s]);
            }
            for reason in close_reasons {
                self.closed.with_label_values(&[t, reason]);
            }
            for r in REFUSALS {
                self.refused.with_label_values(&[t, r]);
            }
        }
        for source in [Source::Client, Source::Http] {
            self.broadcast_failures.with_label_values(&[source.label()]);
        }
        for p in prefix::all() {
            self.channels_joined.with_label_values(&[&p]);
            for result in JOIN_RESULTS {
                self.joins.with_label_values(&[&p, result]);
            }
            for source in [Source::Client, Source::Http, Source::Redis] {
                self.broadcasts.with_label_values(&[source.label(), &p]);
            }
        }
    }

    /// Creates the auth-failure series of a socket (a path, or `api`) at zero.
    pub(crate) fn init_auth(&self, socket: &str, reasons: &[&str]) {
        for r in reasons {
            self.auth_failures.with_label_values(&[socket, r]);
        }
    }

    /// A connection was accepted; the guard counts it open until dropped.
    pub(crate) fn connection_opened(&self, transport: Transport, socket: &str) -> OpenConnection {
        let t = transport.as_str();
        self.opened.with_label_values(&[t, socket]).inc();
        let gauge = self.connections.with_label_values(&[t, socket]);
        gauge.inc();
        OpenConnection { gauge, transport }
    }

    /// A connection attempt was refused before a socket existed.
    pub(crate) fn refused(&self, transport: Transport, reason: &'static str) {
        self.refused
            .with_label_values(&[transport.as_str(), reason])
            .inc();
    }

    pub(crate) fn limit_hit(&self, limit: Limit) {
        self.limit_hits[limit as usize].inc();
    }

    /// A join with `since` was answered; `messages` were replayed.
    pub(crate) fn history_read(&self, since: bool, recovered: bool, messages: usize) {
        if since {
            self.recoveries[usize::from(!recovered)].inc();
        }
        self.replayed.inc_by(messages as u64);
    }

    /// A channel with history saw a gap in its topic's offsets.
    pub(crate) fn history_gap(&self) {
        self.history_gaps.inc();
    }

    /// A message from Redis was dropped.
    pub(crate) fn redis_dropped(&self, why: Dropped) {
        self.redis_dropped[why as usize].inc();
    }

    /// The gauge of open plain HTTP connections, which the server moves.
    pub(crate) fn http_connections(&self) -> &IntGauge {
        &self.http_connections
    }

    pub(crate) fn received(&self, transport: Transport, kind: Received) {
        self.received[transport.index()][kind as usize].inc();
    }

    /// Counts the messages of `batch` written to a client, and observes the
    /// publish→send latency of its broadcasts.
    pub(crate) fn sent(&self, transport: Transport, batch: impl Iterator<Item = Sent>) {
        let mut counts = [0u64; 4];
        let mut now = None;
        for kind in batch {
            counts[kind.index()] += 1;
            if let Sent::Broadcast(at) = kind {
                let now = *now.get_or_insert_with(Instant::now);
                self.latency
                    .observe(now.saturating_duration_since(at).as_secs_f64());
            }
        }
        for (counter, n) in self.sent[transport.index()].iter().zip(counts) {
            if n > 0 {
                counter.inc_by(n);
            }
        }
    }

    /// A `phx_join` was answered with `result` (`ok`, `unauthorized`, …).
    pub(crate) fn join(&self, topic: &str, result: &str) {
        let prefix = prefix::of(topic);
        self.joins.with_label_values(&[prefix, result]).inc();
    }

    /// A channel joined; the guard counts it until dropped.
    pub(crate) fn channel_joined(&self, topic: &str) -> JoinedChannel {
        let gauge = self.channels_joined.with_label_values(&[prefix::of(topic)]);
        gauge.inc();
        JoinedChannel(gauge)
    }

    pub(crate) fn broadcast(&self, source: Source, topic: &str) {
        self.broadcasts
            .with_label_values(&[source.label(), prefix::of(topic)])
            .inc();
    }

    pub(crate) fn broadcast_failed(&self, source: Source) {
        self.broadcast_failures
            .with_label_values(&[source.label()])
            .inc();
    }

    /// Authentication refused on `socket` (a path, or `api`) for `reason`.
    pub(crate) fn auth_failure(&self, socket: &str, reason: &'static str) {
        self.auth_failures
            .with_label_values(&[socket, reason])
            .inc();
    }

    /// The text exposition of every metric, with the values read at scrape
    /// time (readiness, limits, hub and broker state) brought up to date.
    pub(crate) fn render(&self, scrape: &Scrape) -> String {
        self.ready.set(i64::from(scrape.ready));
        self.draining.set(i64::from(scrape.draining));
        self.connections_max
            .set(scrape.max_connections.map_or(0, |m| m as i64));
        self.local_topics.set(scrape.local_topics as i64);
        let status = scrape.broker;
        self.redis_subscriptions
            .set(status.as_ref().map_or(0, |s| s.subscriptions as i64));
        if let Some(s) = &status {
            self.redis_up.set(i64::from(s.connected));
            self.redis_shards.set(s.shards as i64);
            self.redis_shards_down.set(s.shards_down as i64);
            catch_up(&self.redis_reconnects, s.reconnects);
            for (cause, n) in s.errors {
                catch_up(&self.redis_errors.with_label_values(&[cause]), n);
            }
            catch_up(&self.malformed, s.malformed);
        }
        let mut families = self.registry.gather();
        if status.is_some() {
            families.extend(self.redis.gather());
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "metrics not encoded");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// What a scrape reads from the rest of the pod, at scrape time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scrape {
    /// `/readyz` answers 200.
    pub(crate) ready: bool,
    /// A drain (or shutdown) has started.
    pub(crate) draining: bool,
    /// The connection limit in force.
    pub(crate) max_connections: Option<usize>,
    /// Topics with a local subscriber.
    pub(crate) local_topics: usize,
    /// The broker's state, for a broker that connects to a server.
    pub(crate) broker: Option<BrokerStatus>,
}

/// What a broker that connects to a server reports to the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerStatus {
    /// The subscriber connection is established and answering.
    pub connected: bool,
    /// Times that connection was lost and re-established.
    pub reconnects: u64,
    /// Channels the subscriber connection holds.
    pub subscriptions: u64,
    /// How long the connection has been down; `None` while it is up.
    pub down_for: Option<std::time::Duration>,
    /// Messages dropped because their envelope was malformed.
    pub malformed: u64,
    /// Failed connects and commands, per cause (`auth`, `acl`, `dns`, ...).
    pub errors: [(&'static str, u64); 8],
    /// Redis Cluster masters in the slot map; 0 on a single Redis.
    pub shards: u64,
    /// Of `shards`, those without a subscriber connection.
    pub shards_down: u64,
}

/// Brings a counter up to a total kept elsewhere (the Redis bus's stats).
fn catch_up(counter: &IntCounter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}
