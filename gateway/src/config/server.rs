//! `[server]`: where the pod listens, when it refuses connections, how it
//! drains on SIGTERM, and fitting `max_connections` to the open-files limit.

use super::{millis, ConfigError, Key};
use crate::endpoint::{IpNet, Limits, SourceLimits, Timeouts};
use crate::pubsub::DEFAULT_MAX_PUBLISH;
use crate::socket::PushRate;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// `[server]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address. Default `127.0.0.1:4000`; `PORT` replaces the port.
    pub listen: String,
    /// This node's name, shown to channels. Default `gateway@$HOSTNAME`.
    pub node_name: Option<String>,
    /// After SIGTERM, how long new connections are still accepted while
    /// `/readyz` already fails (balancers notice at their next probe). Default 2000.
    pub drain_delay_ms: u64,
    /// Open connections close at random points of this period after SIGTERM,
    /// so clients reconnect elsewhere gradually. Default 30000.
    pub drain_period_ms: u64,
    /// The process exits this long after SIGTERM at the latest, whatever is
    /// still open; keep it below Kubernetes' terminationGracePeriodSeconds.
    /// Default 45000.
    pub shutdown_deadline_ms: u64,
    /// Open connections (WebSocket and long-poll sessions) past which new
    /// ones are refused (503) and `/readyz` fails. Default 50000; 0: no limit.
    pub max_connections: usize,
    /// Resident memory in MiB past which new connections are refused and
    /// `/readyz` fails, below the container's limit. Default 0: no threshold.
    pub max_memory_mb: u64,
    /// Serve `GET /metrics`, `/healthz` and `/readyz` on this address as
    /// well (`/metrics` then only there), so the public port does not expose
    /// metrics and probes are answered whatever clients do to the main port.
    /// Default: unset (main port).
    pub metrics_listen: Option<String>,
    /// Plain HTTP connections (not upgraded to WebSocket) open at once on
    /// the main port; past it new ones get 503 and `/readyz` fails.
    /// Default 50000; 0: no limit.
    pub max_http_connections: usize,
    /// How long a client may take to send a request's headers, counted from
    /// when the server is ready for it: also how long a keep-alive
    /// connection may sit idle between requests. Milliseconds, default 30000.
    pub header_timeout_ms: u64,
    /// How long a client may take to send a request's whole body (long-poll
    /// POSTs, the publish API) once its headers arrived; then 408 and the
    /// connection is closed. Milliseconds, default 10000.
    pub body_timeout_ms: u64,
    /// Largest broadcast payload, bytes: the API and client pushes over it
    /// are refused, and larger messages arriving from Redis are dropped.
    /// Default 1048576 (1 MiB); at most 32 MiB.
    pub max_publish_bytes: usize,
    /// `/readyz` fails once the pod has been cut off from Redis this long,
    /// so a balancer moves new users to pods that deliver. Milliseconds,
    /// default 5000; 0: readiness ignores Redis.
    pub unready_without_redis_ms: u64,
    /// The open-files limit `fit_to_fd_limit` saw, which bounds the sockets
    /// the main port may hold; not a key.
    #[serde(skip)]
    open_files: Option<u64>,
    /// Connections (WebSocket and long-poll sessions) one client address
    /// may hold on this pod; more are refused with 429, and the pod stays
    /// ready. Default 1000; 0: no limit.
    pub max_connections_per_source: usize,
    /// New connections and long-poll sessions one client address may open
    /// per second; faster ones are refused with 429. Default 20; 0: no limit.
    pub connection_rate_per_source: u32,
    /// Connections one client address may open at once after a quiet
    /// period. Default 100.
    pub connection_burst_per_source: u32,
    /// Joins of one client address that may wait while 16 of them run;
    /// more are refused with "too many joins waiting, try again".
    /// Default 1000; 0: no limit.
    pub max_queued_joins_per_source: usize,
    /// Proxies and balancers (addresses or CIDR networks) whose
    /// `X-Forwarded-For` names the client, for the per-source limits.
    /// Default none: the source is the peer address.
    pub trusted_proxies: Vec<String>,
    /// Development mode: HS* JWT secrets shorter than 32 bytes (such as
    /// config/example.toml's demo secret) are accepted, with a warning at
    /// start. `GATEWAY_DEV` overrides it. Default false: refused.
    pub dev: bool,
}

/// The library has no defaults for these: they are the binary's, tuned for
/// Kubernetes' default 30 s probe period and 60 s grace.
impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:4000".into(),
            node_name: None,
            drain_delay_ms: 2000,
            drain_period_ms: 30_000,
            shutdown_deadline_ms: 45_000,
            max_connections: 50_000,
            max_memory_mb: 0,
            metrics_listen: None,
            max_http_connections: 50_000,
            header_timeout_ms: millis(Timeouts::default().header),
            body_timeout_ms: millis(Timeouts::default().body),
            max_publish_bytes: DEFAULT_MAX_PUBLISH,
            unready_without_redis_ms: 5000,
            open_files: None,
            max_connections_per_source: 1000,
            connection_rate_per_source: 20,
            connection_burst_per_source: 100,
            max_queued_joins_per_source: 1000,
            trusted_proxies: Vec::new(),
            dev: false,
        }
    }
}

/// `[server]`, converted.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The main listener.
    pub listen: SocketAddr,
    /// The separate `/metrics` listener, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// The node name, when configured (the library derives one otherwise).
    pub node_name: Option<String>,
    /// Connection and memory limits of the pod.
    pub limits: Limits,
    /// How long the server waits on HTTP clients.
    pub timeouts: Timeouts,
    /// Largest broadcast payload, bytes.
    pub max_publish: usize,
    /// `/readyz` fails once the broker has been unreachable this long.
    pub unready_without_broker: Option<Duration>,
    /// What happens after SIGTERM.
    pub shutdown: Shutdown,
}

/// The timings of a drain, from SIGTERM on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shutdown {
    /// New connections are still accepted this long while `/readyz` fails.
    pub drain_delay: Duration,
    /// Open connections close at random points of this period.
    pub drain_period: Duration,
    /// The process exits by then, at the latest.
    pub deadline: Duration,
}

/// File descriptors kept for what is not a client connection: the
/// listeners, Redis connections, the runtime, logs, and the metrics
/// listener's connections (`server::METRICS_CONNECTIONS`), which serve the
/// probes.
pub const FD_MARGIN: u64 = 64;

/// Redis closes a pub/sub subscriber whose output buffer passes 32 MiB (its
/// default `client-output-buffer-limit pubsub`): every pod's subscriber
/// connection, for one message that large.
const MAX_PUBLISH_CEILING: usize = 32 << 20;

/// `max_connections` lowered to fit the open-files limit: loading happens
/// before logging is set up, so the caller logs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lowered {
    /// As configured.
    pub configured: usize,
    /// What it is now.
    pub lowered_to: usize,
    /// The open-files (soft) limit it was fitted to.
    pub open_files: u64,
}

impl ServerConfig {
    /// Every connection holds a file descriptor, so a `max_connections` the
    /// open-files limit cannot hold is lowered to it minus [`FD_MARGIN`]
    /// (at least 1): the pod then refuses the excess with a clean 503 and
    /// fails `/readyz` instead of failing accepts. `0` (no limit) stays.
    /// The same number bounds WebSocket and plain HTTP connections together
    /// (`Limits::max_sockets`), so [`FD_MARGIN`] descriptors always remain.
    pub fn fit_to_fd_limit(&mut self, open_files: u64) -> Option<Lowered> {
        self.open_files = Some(open_files);
        let fits = usize::try_from(open_files.saturating_sub(FD_MARGIN)).unwrap_or(usize::MAX);
        if self.max_connections <= fits {
            return None;
        }
        let lowered = Lowered {
            configured: self.max_connections,
            lowered_to: fits.max(1),
            open_files,
        };
        self.max_connections = lowered.lowered_to;
        Some(lowered)
    }

    /// The per-source limits, validated.
    fn per_source(&self, key: &Key) -> Result<SourceLimits, ConfigError> {
        if self.connection_rate_per_source > 0 && self.connection_burst_per_source == 0 {
            return Err(key
                .field("connection_burst_per_source")
                .invalid("must be at least 1 when connection_rate_per_source is set"));
        }
        let trusted_proxies = self
            .trusted_proxies
            .iter()
            .map(|p| p.parse::<IpNet>())
            .collect::<Result<_, _>>()
            .map_err(|e| key.field("trusted_proxies").invalid(e))?;
        Ok(SourceLimits {
            max_connections: (self.max_connections_per_source > 0)
                .then_some(self.max_connections_per_source),
            rate: (self.connection_rate_per_source > 0).then_some(PushRate {
                per_second: f64::from(self.connection_rate_per_source),
                burst: self.connection_burst_per_source,
            }),
            trusted_proxies,
            max_queued_joins: (self.max_queued_joins_per_source > 0)
                .then_some(self.max_queued_joins_per_source),
        })
    }

    pub(super) fn settings(&self, key: &Key) -> Result<ServerSettings, ConfigError> {
        let listen = resolve(&self.listen).ok_or_else(|| {
            key.field("listen").invalid(format!(
                "{:?} is not an address like 127.0.0.1:4000 or localhost:4000",
                self.listen
            ))
        })?;
        let metrics_listen = match &self.metrics_listen {
            None => None,
            Some(addr) => Some(resolve(addr).ok_or_else(|| {
                key.field("metrics_listen")
                    .invalid(format!("{addr:?} is not an address like 0.0.0.0:9090"))
            })?),
        };
        if self.drain_delay_ms.saturating_add(self.drain_period_ms) > self.shutdown_deadline_ms {
            return Err(key.field("shutdown_deadline_ms").invalid(format!(
                "{} is shorter than drain_delay_ms + drain_period_ms ({} + {})",
                self.shutdown_deadline_ms, self.drain_delay_ms, self.drain_period_ms
            )));
        }
        for (name, ms) in [
            ("header_timeout_ms", self.header_timeout_ms),
            ("body_timeout_ms", self.body_timeout_ms),
        ] {
            if ms < 100 {
                return Err(key.field(name).invalid("must be at least 100"));
            }
        }
        if !(64..=MAX_PUBLISH_CEILING).contains(&self.max_publish_bytes) {
            return Err(key.field("max_publish_bytes").invalid(format!(
                "{} is not between 64 and {MAX_PUBLISH_CEILING} (Redis drops a subscriber \
                 whose output buffer passes 32 MiB)",
                self.max_publish_bytes
            )));
        }
        let max_sockets = self.open_files.map(|n| {
            usize::try_from(n.saturating_sub(FD_MARGIN))
                .unwrap_or(usize::MAX)
                .max(1)
        });
        Ok(ServerSettings {
            listen,
            metrics_listen,
            node_name: self.node_name.clone(),
            limits: Limits {
                max_connections: (self.max_connections > 0).then_some(self.max_connections),
                max_memory: (self.max_memory_mb > 0)
                    .then(|| self.max_memory_mb.saturating_mul(1024 * 1024)),
                max_http_connections: (self.max_http_connections > 0)
                    .then_some(self.max_http_connections),
                max_sockets,
                per_source: self.per_source(key)?,
            },
            timeouts: Timeouts {
                header: Duration::from_millis(self.header_timeout_ms),
                body: Duration::from_millis(self.body_timeout_ms),
            },
            max_publish: self.max_publish_bytes,
            unready_without_broker: (self.unready_without_redis_ms > 0)
                .then(|| Duration::from_millis(self.unready_without_redis_ms)),
            shutdown: Shutdown {
                drain_delay: Duration::from_millis(self.drain_delay_ms),
                drain_period: Duration::from_millis(self.drain_period_ms),
                deadline: Duration::from_millis(self.shutdown_deadline_ms),
            },
        })
    }
}

/// `host:port` as a socket address to bind: an IP as written, or a host
/// name (`localhost:4000`) resolved now, its first IPv4 address preferred
/// (binding `::1` alone would surprise a client of `127.0.0.1`).
fn resolve(addr: &str) -> Option<SocketAddr> {
    if let Ok(a) = addr.parse() {
        return Some(a);
    }
    let all: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .ok()?
        .collect();
    all.iter().find(|a| a.is_ipv4()).or(all.first()).copied()
}
