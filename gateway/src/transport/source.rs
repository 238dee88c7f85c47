//! Per-source limits: how many connections (WebSocket connections and
//! long-poll sessions together) one client address may hold on this pod, and
//! how fast it may open new ones, so one client cannot take every connection
//! slot of a pod, or make it unready, by itself.
//!
//! A source is the peer's IP address, IPv6 cut to its /64 (one host usually
//! has a whole /64). Behind a proxy or balancer the peer is the proxy: list
//! it in [`SourceLimits::trusted_proxies`] and the client's address is read
//! from its `X-Forwarded-For` instead.

use crate::socket::rate::{Bucket, Verdict};
use crate::socket::PushRate;
use hyper::HeaderMap;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// At most one warning per this interval about sources at their limits.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Limits per client address; each `None` is no limit.
#[derive(Debug, Clone, Default)]
pub struct SourceLimits {
    /// Connections and long-poll sessions one source may hold at once.
    pub max_connections: Option<usize>,
    /// New connections and sessions one source may open per second, and
    /// at once after a quiet period.
    pub rate: Option<PushRate>,
    /// Proxies whose `X-Forwarded-For` names the client: the rightmost
    /// address in it that is not itself a trusted proxy is the source.
    pub trusted_proxies: Vec<IpNet>,
    /// Joins of one source that may wait for their turn while
    /// [`IN_FLIGHT`](crate::channel::queue::IN_FLIGHT) of them run; more are
    /// refused at once ("too many joins waiting, try again").
    pub max_queued_joins: Option<usize>,
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `fd00::/8`), or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask(u128::from(u32::from(net)), self.prefix, 32)
                    == mask(u128::from(u32::from(ip)), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask(u128::from(net), self.prefix, 128) == mask(u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// The top `prefix` bits of a `bits`-wide address.
fn mask(addr: u128, prefix: u8, bits: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let shift = u32::from(bits - prefix.min(bits));
    (addr >> shift) << shift
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not an address or a network like 10.0.0.0/8");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = canonical(addr.parse::<IpAddr>().map_err(|_| bad())?);
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(bad)?,
            None => bits,
        };
        Ok(IpNet { addr, prefix })
    }
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The key of a client address: IPv4 as is, IPv6 cut to its /64.
fn key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(mask(u128::from(v6), 64, 128))),
        v4 => v4,
    }
}

/// The client a request comes from: the peer, or, when the peer is a
/// trusted proxy, the rightmost `X-Forwarded-For` address that is not one.
pub(crate) fn source(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return key(peer);
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in forwarded.iter().rev() {
        // An entry that is not an address ends the walk: what lies left of
        // it cannot be trusted, so the last good hop is the source.
        let Ok(ip) = hop.parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    key(client)
}

/// Why a source may not open another connection; the sentence says which
/// limit and which source.
#[derive(Debug)]
pub(crate) enum SourceRefusal {
    /// It holds `max_connections` already.
    Connections(String),
    /// It opens connections faster than `rate`.
    Rate(String),
}

impl SourceRefusal {
    /// The sentence for the answer's body.
    pub(crate) fn why(&self) -> &str {
        match self {
            SourceRefusal::Connections(why) | SourceRefusal::Rate(why) => why,
        }
    }
}

/// The connections each source holds and its rate limit's state.
#[derive(Debug, Default)]
pub(crate) struct Sources {
    limits: SourceLimits,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<IpAddr, Entry>,
    /// Entries after the last prune; the next comes at twice as many.
    after_prune: usize,
    last_log: Option<Instant>,
}

#[derive(Debug)]
struct Entry {
    open: usize,
    bucket: Option<Bucket>,
}

/// One connection of a source, counted until dropped.
#[derive(Debug)]
pub(crate) struct SourcePermit {
    sources: Arc<Sources>,
    key: IpAddr,
}

impl Drop for SourcePermit {
    fn drop(&mut self) {
        let mut t = self.sources.table.lock();
        if let Some(e) = t.entries.get_mut(&self.key) {
            e.open = e.open.saturating_sub(1);
        }
    }
}

impl Sources {
    pub(crate) fn new(limits: SourceLimits) -> Arc<Self> {
        Arc::new(Sources {
            limits,
            table: Mutex::default(),
        })
    }

    /// Proxies whose `X-Forwarded-For` is believed.
    pub(crate) fn trusted_proxies(&self) -> &[IpNet] {
        &self.limits.trusted_proxies
    }

    /// Counts a new connection of `source`, or says which limit it is at.
    pub(crate) fn admit(self: &Arc<Self>, source: IpAddr) -> Result<SourcePermit, SourceRefusal> {
        let now = Instant::now();
        let mut t = self.table.lock();
        t.prune(now);
        let e = t.entries.entry(source).or_insert_with(|| Entry {
            open: 0,
            bucket: self.limits.rate.map(|r| Bucket::new(r, now)),
        });
        let refusal = if let Some(max) = self.limits.max_connections.filter(|m| e.open >= *m) {
            Some(SourceRefusal::Connections(format!(
                "too many connections from {source} ({} of {max})",
                e.open
            )))
        } else if e
            .bucket
            .as_mut()
            .is_some_and(|b| b.take(now) != Verdict::Allow)
        {
            let per_second = self.limits.rate.map_or(0.0, |r| r.per_second);
            Some(SourceRefusal::Rate(format!(
                "connecting too fast from {source} (over {per_second}/s)"
            )))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            if t.last_log
                .is_none_or(|l| now.duration_since(l) >= LOG_EVERY)
            {
                t.last_log = Some(now);
                tracing::warn!(
                    %source,
                    refusal = ?refusal,
                    "refusing connections of a source at its limit; if it is a proxy or \
                     balancer, list it in server.trusted_proxies"
                );
            }
            return Err(refusal);
        }
        e.open += 1;
        Ok(SourcePermit {
            sources: self.clone(),
            key: source,
        })
    }

    /// Sources with connections open now.
    #[cfg(test)]
    fn sources(&self) -> usize {
        self.table.lock().entries.len()
    }
}

impl Table {
    /// Forgets sources with nothing open whose rate limit has recovered,
    /// whenever the table doubled since the last prune: amortised constant
    /// time, and the table stays within twice the sources that matter.
    fn prune(&mut self, now: Instant) {
        if self.entries.len() < 1024 || self.entries.len() < 2 * self.after_prune {
            return;
        }
        self.entries
            .retain(|_, e| e.open > 0 || e.bucket.as_ref().is_some_and(|b| !b.full(now)));
        self.after_prune = self.entries.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", value.parse().unwrap());
        h
    }

    #[test]
    fn networks_parse_and_contain() {
        let n: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains(ip("10.1.200.3")));
        assert!(!n.contains(ip("10.2.0.1")));
        assert!(n.contains(ip("::ffff:10.1.0.9")), "IPv4-mapped");
        let one: IpNet = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!("0.0.0.0/0"
            .parse::<IpNet>()
            .unwrap()
            .contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "10.0.0", "x/8", "::/129", ""] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_source_is_the_peer_unless_it_is_a_trusted_proxy() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = xff("203.0.113.9");
        assert_eq!(source(ip("198.51.100.1"), &h, &trusted), ip("198.51.100.1"));
        assert_eq!(source(ip("10.0.0.5"), &h, &trusted), ip("203.0.113.9"));
        assert_eq!(
            source(ip("10.0.0.5"), &HeaderMap::new(), &trusted),
            ip("10.0.0.5")
        );
        // A client cannot pick its source by sending X-Forwarded-For itself:
        // the proxy appends the address it saw, and that one counts.
        let h = xff("1.1.1.1, 203.0.113.9, 10.0.0.7");
        assert_eq!(source(ip("10.0.0.5"), &h, &trusted), ip("203.0.113.9"));
        let h = xff("garbage, 203.0.113.9");
        assert_eq!(source(ip("10.0.0.5"), &h, &trusted), ip("203.0.113.9"));
        // IPv6 clients count per /64.
        assert_eq!(
            source(ip("2001:db8:1:2:3:4:5:6"), &HeaderMap::new(), &[]),
            ip("2001:db8:1:2::")
        );
    }

    #[test]
    fn a_source_is_held_to_its_connections_and_rate() {
        let sources = Sources::new(SourceLimits {
            max_connections: Some(2),
            rate: Some(PushRate {
                per_second: 1.0,
                burst: 3,
            }),
            trusted_proxies: Vec::new(),
            max_queued_joins: None,
        });
        let a = ip("192.0.2.1");
        let p1 = sources.admit(a).unwrap();
        let _p2 = sources.admit(a).unwrap();
        assert!(matches!(
            sources.admit(a),
            Err(SourceRefusal::Connections(_))
        ));
        assert!(sources.admit(ip("192.0.2.2")).is_ok(), "another source");
        drop(p1);
        // Two taken, one refused by count (which took no token), one left.
        let _p3 = sources.admit(a).unwrap();
        drop(_p3);
        assert!(matches!(sources.admit(a), Err(SourceRefusal::Rate(_))));
        assert_eq!(sources.sources(), 2);
    }
}
