//! Who may open a connection, one sequence for WebSocket and long-poll: not
//! while the pod stops accepting, not past the per-pod limits, only from an
//! allowed origin, only with a `vsn` the gateway speaks, and only when the
//! socket's handler accepts the client. Each transport turns a refusal into
//! its own HTTP answer.
//!
//! Also the pod-wide state of connections the sequence reads: the limits, the
//! connections counted against them, the stop signal and the drain that
//! tracks every connection task.

use super::drain::Drain;
pub(crate) use super::http::{Slot, Slots};
use super::shed::Sheddable;
use super::source::{self, SourceLimits, SourcePermit, SourceRefusal, Sources};
use crate::channel::Assigns;
use crate::metrics::{metrics, Limit};
use crate::protocol::{Transport, UnsupportedVsn, Vsn};
use crate::socket::{ConnectError, ConnectInfo, Params, Socket};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Per-pod limits past which new connections are refused and `/readyz`
/// fails, so a balancer sends new users elsewhere; and per-source limits,
/// past which only that source is refused.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Open connections (WebSocket connections and long-poll sessions that
    /// polled); `None`: no limit.
    pub max_connections: Option<usize>,
    /// Resident memory in bytes; `None`: no threshold.
    pub max_memory: Option<u64>,
    /// Open plain HTTP connections (requests in progress, parked long-poll
    /// GETs, idle keep-alive): past it new TCP connections are answered 503
    /// and closed, and `/readyz` fails; `None`: no limit.
    pub max_http_connections: Option<usize>,
    /// Client sockets the open-files limit leaves room for: WebSocket
    /// connections (and long-poll sessions, counted as if they held one)
    /// plus plain HTTP connections. Past it new TCP connections are refused
    /// the same way, so descriptors stay for Redis and the metrics listener's
    /// `/healthz` and `/readyz`. `None`: not enforced.
    pub max_sockets: Option<usize>,
    /// What one client address may hold and open.
    pub per_source: SourceLimits,
}

/// Why a connection attempt was refused.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The pod no longer accepts connections (it is shutting down).
    Draining,
    /// At a limit; the sentence says which.
    OverLimit(String),
    /// The client's source is at its own limit; the pod is fine.
    Source(SourceRefusal),
    /// `check_origin` does not allow the request's origin.
    Origin,
    /// The `vsn` param names no serializer the gateway speaks.
    Vsn(UnsupportedVsn),
    /// The socket's handler refused the client.
    Connect(ConnectError),
}

/// An admitted client: its serializer, what its handler learned, and its
/// place in its source's count, which the connection holds until it ends.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub(crate) vsn: Vsn,
    pub(crate) assigns: Assigns,
    /// The client's address (see [`source::source`]).
    pub(crate) source: IpAddr,
    pub(crate) permit: SourcePermit,
}

/// The gate every new connection passes, and the connections it let in.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: Limits,
    /// Cancelled when the pod stops accepting connections.
    stopped: CancellationToken,
    /// When open connections close during a drain, and which are open.
    drain: Drain,
    sources: Arc<Sources>,
    /// Connections counted against `max_connections`: WebSocket connections
    /// from admission on, long-poll sessions from their first poll on.
    connections: Slots,
    /// Long-poll sessions that have not polled yet: not counted against
    /// `max_connections` (a client that never polls is not a user), and
    /// ended soon.
    unpolled: Slots,
    /// The last reading of this process's resident memory.
    resident: Resident,
    /// WebSocket connections rebalancing may close; `None` while it is off.
    sheddable: Option<Arc<Sheddable>>,
}

impl Default for Admission {
    fn default() -> Self {
        Admission::new(Limits::default())
    }
}

impl Admission {
    pub(crate) fn new(limits: Limits) -> Self {
        Admission {
            sources: Sources::new(limits.per_source.clone()),
            limits,
            stopped: CancellationToken::new(),
            drain: Drain::default(),
            connections: Slots::default(),
            unpolled: Slots::default(),
            resident: Resident::default(),
            sheddable: None,
        }
    }

    /// Keeps the WebSocket connections admitted from now on in a
    /// [`Sheddable`] registry, for rebalancing.
    pub(crate) fn track_sheddable(&mut self) -> Arc<Sheddable> {
        self.sheddable.get_or_insert_with(Arc::default).clone()
    }

    /// The registry of [`track_sheddable`](Self::track_sheddable), if kept.
    pub(crate) fn sheddable(&self) -> Option<&Arc<Sheddable>> {
        self.sheddable.as_ref()
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Connections counted against `max_connections`.
    pub(crate) fn connections(&self) -> &Slots {
        &self.connections
    }

    /// Long-poll sessions that have not polled yet.
    pub(crate) fn unpolled(&self) -> &Slots {
        &self.unpolled
    }

    pub(crate) fn drain(&self) -> &Drain {
        &self.drain
    }

    /// Cancelled once new connections are refused.
    pub(crate) fn stopped(&self) -> &CancellationToken {
        &self.stopped
    }

    /// Admits a client of `socket`, or says why not, counting refusals.
    /// `origin` is the request's `Origin` header; `info` goes to the
    /// handler.
    pub(crate) async fn admit(
        &self,
        socket: &Socket,
        params: &Params,
        origin: Option<&str>,
        info: &ConnectInfo,
    ) -> Result<Admitted, Refused> {
        let transport = info.transport;
        if self.stopped.is_cancelled() {
            metrics().refused(transport, "draining");
            return Err(Refused::Draining);
        }
        if let Some((limit, why)) = self.over_limit() {
            let m = metrics();
            m.limit_hit(limit);
            m.refused(transport, limit.label());
            tracing::debug!(?transport, why, "connection refused");
            return Err(Refused::OverLimit(why));
        }
        // Both transports know the peer; a caller that does not shares one
        // unspecified source.
        let peer = info
            .peer
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.ip());
        let source = source::source(peer, &info.headers, self.sources.trusted_proxies());
        let permit = self.sources.admit(source).map_err(|refusal| {
            let limit = match refusal {
                SourceRefusal::Connections(_) => Limit::SourceConnections,
                SourceRefusal::Rate(_) => Limit::SourceRate,
            };
            let m = metrics();
            m.limit_hit(limit);
            m.refused(transport, limit.label());
            Refused::Source(refusal)
        })?;
        self.check_origin(socket, transport, info.peer, origin)?;
        let vsn = match params.get("vsn") {
            // What phoenix.js sends, without `negotiate`'s parsing.
            Some("2.0.0") => Vsn::V2,
            vsn => Vsn::negotiate(vsn).map_err(Refused::Vsn)?,
        };
        match socket.handler.connect(params, info).await {
            Ok(assigns) => Ok(Admitted {
                vsn,
                assigns,
                source,
                permit,
            }),
            Err(e) => {
                metrics().refused(transport, "auth");
                tracing::debug!(peer = ?info.peer, reason = %e.reason, "connect refused");
                Err(Refused::Connect(e))
            }
        }
    }

    /// `check_origin`: long-poll asks it of every request, not only the
    /// first, so it is a step of its own.
    pub(crate) fn check_origin(
        &self,
        socket: &Socket,
        transport: Transport,
        peer: Option<SocketAddr>,
        origin: Option<&str>,
    ) -> Result<(), Refused> {
        if socket.config.check_origin.allows(origin) {
            return Ok(());
        }
        metrics().refused(transport, "origin");
        tracing::debug!(?peer, ?origin, ?transport, "origin refused");
        Err(Refused::Origin)
    }

    /// Why a new connection is refused: at the connection limit or over the
    /// memory threshold; the limit, and a sentence for the answer's body.
    pub(crate) fn over_limit(&self) -> Option<(Limit, String)> {
        if let Some(max) = self.limits.max_connections {
            let open = self.connections.open();
            if open >= max {
                let why = format!("at connection limit ({open} of {max})");
                return Some((Limit::MaxConnections, why));
            }
        }
        if let Some(max) = self.limits.max_memory {
            let rss = self.resident.bytes()?;
            if rss > max {
                let why = format!("over memory threshold ({rss} of {max} bytes)");
                return Some((Limit::MaxMemory, why));
            }
        }
        None
    }
}

/// How long a reading of the resident memory stands for. Reading it costs
/// ~20 µs, mostly in the kernel, which every handshake paid (a fifth of a
/// connection's CPU); in this time a connect storm adds a few MB at most.
const RESIDENT_FRESH_MS: u64 = 50;

/// This process's resident memory, read again when the last reading is
/// older than [`RESIDENT_FRESH_MS`].
#[derive(Debug)]
struct Resident {
    epoch: Instant,
    /// Milliseconds from `epoch` to the last reading; `u64::MAX`: none yet.
    read_at: AtomicU64,
    bytes: AtomicU64,
}

impl Default for Resident {
    fn default() -> Self {
        Resident {
            epoch: Instant::now(),
            read_at: AtomicU64::new(u64::MAX),
            bytes: AtomicU64::new(0),
        }
    }
}

impl Resident {
    /// VmRSS in bytes, where the OS tells it.
    fn bytes(&self) -> Option<u64> {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let at = self.read_at.load(Ordering::Acquire);
        if at != u64::MAX && now.saturating_sub(at) < RESIDENT_FRESH_MS {
            return Some(self.bytes.load(Ordering::Relaxed));
        }
        let rss = resident_memory()?;
        self.bytes.store(rss, Ordering::Relaxed);
        self.read_at.store(now, Ordering::Release);
        Some(rss)
    }
}

/// This process's resident memory in bytes (VmRSS), where the OS tells it.
fn resident_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_again_only_when_stale() {
        let r = Resident::default();
        let Some(first) = r.bytes() else {
            return; // not Linux
        };
        assert!(first > 0);
        // Within the freshness window the reading is reused as it is.
        r.bytes.store(1, Ordering::Relaxed);
        assert_eq!(r.bytes(), Some(1));
        std::thread::sleep(std::time::Duration::from_millis(RESIDENT_FRESH_MS + 10));
        assert!(r.bytes().unwrap() > 1, "read again");
    }
}
