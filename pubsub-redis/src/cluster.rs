//! Sharded pub/sub on a Redis Cluster, one subscriber connection per master,
//! so that a dead master costs only its own slots' channels.
//!
//! The slot map comes from `CLUSTER SLOTS`, asked of any node that answers
//! (a connected master, a node of the last map, or a seed). Each channel goes
//! to the master owning its key slot, and what every connection holds is
//! tracked: when one master's connection dies (or stops answering PING),
//! only its channels are reported [lost](Event::Lost); the subscriber
//! retries them through [`Shards::repair`], which reads the map again until a
//! reachable master (the promoted replica, after a failover) owns their
//! slots. A master that drops a channel itself (its slot moved: a
//! `sunsubscribe` push) marks the map stale, and the channel is
//! [reported](Event::Unsubscribed) to be subscribed again at its new owner.
//!
//! Every per-node client is made by [`ClusterTarget::node_client`].

use crate::connection::Event;
use crate::source::Source;
use crate::{Error, Stats};
use futures_util::future::{join_all, select_ok, BoxFuture};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, PushInfo, PushKind, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// A node's address.
type Addr = (String, u16);

/// The key slot of `key` (CRC16/XMODEM of its hash tag, or of the whole key
/// when it has none), as Redis computes it for `CLUSTER KEYSLOT`.
pub(crate) fn slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key).unwrap_or(key)) % SLOTS
}

/// The part between the first `{` and the next `}`, when not empty.
fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let rest = &key[open + 1..];
    let close = rest.iter().position(|&b| b == b'}')?;
    (close > 0).then(|| &rest[..close])
}

/// CRC16/XMODEM (polynomial 0x1021, initial 0), the checksum of Redis
/// Cluster's key slots.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// How to reach a cluster: its seed nodes, and the settings (scheme,
/// credentials, protocol) every node connection shares.
#[derive(Clone)]
pub(crate) struct ClusterTarget {
    seeds: Vec<Addr>,
    /// The first seed's settings (scheme, TLS material, credentials), which
    /// every node connection takes, in RESP3: pushes arrive on the
    /// connection that subscribed.
    source: Source,
}

impl ClusterTarget {
    /// `url` is one or more seed URLs separated by commas.
    pub(crate) fn new(url: &str, source: &Source) -> Result<ClusterTarget, Error> {
        let mut seeds = Vec::new();
        let mut template = None;
        for u in url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let info = u
                .into_connection_info()
                .map_err(|e| Error::Config(e.to_string()))?;
            let addr = match info.addr() {
                ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
                ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port),
                _ => {
                    return Err(Error::Config(
                        "a cluster seed must be a TCP address (redis:// or rediss://)".into(),
                    ))
                }
            };
            seeds.push(addr);
            template.get_or_insert(info);
        }
        if template.is_none() {
            return Err(Error::Config("no cluster seed node".into()));
        }
        Ok(ClusterTarget {
            seeds,
            source: source.clone(),
        })
    }

    /// The client of the node at `host:port`: the seed URL's scheme, TLS
    /// settings and credentials with that address. Every connection to a
    /// cluster node is made from one of these.
    pub(crate) fn node_client(&self, host: &str, port: u16) -> Result<redis::Client, Error> {
        self.source.node(host, port, true)
    }
}

/// An open subscriber connection to one master.
struct Node {
    /// Tags this connection's pushes: a later connection to the same
    /// address has another.
    id: u64,
    conn: MultiplexedConnection,
    /// Channels this connection has confirmed.
    channels: HashSet<String>,
}

/// A range of slots and the master that serves them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Range {
    first: u16,
    last: u16,
    master: Addr,
}

/// What `CLUSTER SLOTS` said: the slot ranges, sorted, and every node named
/// (masters and replicas), to ask again later.
#[derive(Debug, Default, PartialEq, Eq)]
struct SlotMap {
    ranges: Vec<Range>,
    nodes: Vec<Addr>,
}

impl SlotMap {
    /// Reads a `CLUSTER SLOTS` reply. A node whose endpoint is unknown
    /// (empty or `?`) is at the address of `asked`, the node that answered.
    fn parse(value: Value, asked: &Addr) -> Result<SlotMap, Error> {
        let bad = || Error::Unavailable("unexpected CLUSTER SLOTS reply".into());
        let Value::Array(entries) = value else {
            return Err(bad());
        };
        let mut map = SlotMap::default();
        for entry in entries {
            let Value::Array(items) = entry else {
                return Err(bad());
            };
            let mut items = items.into_iter();
            let (Some(Value::Int(first)), Some(Value::Int(last))) = (items.next(), items.next())
            else {
                return Err(bad());
            };
            let (Ok(first), Ok(last)) = (u16::try_from(first), u16::try_from(last)) else {
                return Err(bad());
            };
            let mut nodes = items.map(|n| endpoint(n, asked));
            let master = nodes.next().flatten().ok_or_else(bad)?;
            for n in nodes.flatten() {
                if !map.nodes.contains(&n) {
                    map.nodes.push(n);
                }
            }
            if !map.nodes.contains(&master) {
                map.nodes.push(master.clone());
            }
            map.ranges.push(Range {
                first,
                last,
                master,
            });
        }
        map.ranges.sort_by_key(|r| r.first);
        Ok(map)
    }

    /// The master serving `slot`, if any does.
    fn owner(&self, slot: u16) -> Option<&Addr> {
        let i = self.ranges.partition_point(|r| r.first <= slot);
        let r = self.ranges.get(i.checked_sub(1)?)?;
        (slot <= r.last).then_some(&r.master)
    }

    fn masters(&self) -> HashSet<&Addr> {
        self.ranges.iter().map(|r| &r.master).collect()
    }
}

/// `[host, port, id, ...]` of a `CLUSTER SLOTS` entry.
fn endpoint(node: Value, asked: &Addr) -> Option<Addr> {
    let Value::Array(fields) = node else {
        return None;
    };
    let mut fields = fields.into_iter();
    let host = match fields.next()? {
        Value::BulkString(h) => String::from_utf8(h).ok()?,
        Value::SimpleString(h) => h,
        Value::Nil => String::new(),
        _ => return None,
    };
    let Value::Int(port) = fields.next()? else {
        return None;
    };
    let port = u16::try_from(port).ok()?;
    let host = if host.is_empty() || host == "?" {
        asked.0.clone()
    } else {
        host
    };
    Some((host, port))
}

/// Pushes of every node connection, tagged with the connection's id.
type Pushes = mpsc::UnboundedReceiver<(u64, PushInfo)>;

/// The subscriber connections of a pod to a Redis Cluster.
pub(crate) struct Shards {
    target: ClusterTarget,
    timeout: Duration,
    stats: Arc<Stats>,
    map: SlotMap,
    /// The map may be out of date: a master was lost, answered MOVED, or
    /// dropped a channel whose slot moved.
    stale: bool,
    /// Connections to masters, by address.
    nodes: HashMap<Addr, Node>,
    next_id: u64,
    push_tx: mpsc::UnboundedSender<(u64, PushInfo)>,
    pushes: Pushes,
    /// Events found while serving a command, handed out by `next` first.
    events: VecDeque<Event>,
}

impl Shards {
    /// Reads the slot map and connects to every master. Fails unless the
    /// map was read and at least one master connected.
    pub(crate) async fn connect(
        target: ClusterTarget,
        timeout: Duration,
        stats: Arc<Stats>,
    ) -> Result<Shards, Error> {
        let (push_tx, pushes) = mpsc::unbounded_channel();
        let mut shards = Shards {
            target,
            timeout,
            stats,
            map: SlotMap::default(),
            stale: true,
            nodes: HashMap::new(),
            next_id: 0,
            push_tx,
            pushes,
            events: VecDeque::new(),
        };
        shards.refresh().await?;
        shards.open_masters().await;
        shards.publish_state();
        if shards.nodes.is_empty() {
            return Err(Error::Unavailable("no cluster master reachable".into()));
        }
        Ok(shards)
    }

    /// Whether a master lacks its connection or the map may be out of date:
    /// [`repair`](Shards::repair) is due.
    pub(crate) fn needs_repair(&self) -> bool {
        self.stale
            || self
                .map
                .masters()
                .iter()
                .any(|m| !self.nodes.contains_key(*m))
    }

    /// Reads the slot map again and connects to masters that lack a
    /// connection; connections to nodes that are no longer masters are
    /// closed (their channels reported lost).
    pub(crate) async fn repair(&mut self) {
        if let Err(e) = self.refresh().await {
            tracing::debug!(error = %e, "redis cluster slot map not read");
        }
        let opened = self.open_masters().await;
        if opened > 0 {
            self.stats.reconnects.fetch_add(opened, Ordering::Relaxed);
            self.stats.came_up.notify_one();
        }
        self.publish_state();
    }

    /// Subscribes `channels` at their masters; returns those that could not
    /// be, with the last reason. Reads the map again first when it is stale,
    /// and once more if a master said a slot is elsewhere.
    pub(crate) async fn subscribe(&mut self, channels: &[String]) -> (Vec<String>, Option<Error>) {
        if self.stale {
            let _ = self.refresh().await;
        }
        let (mut failed, mut error) = self.try_subscribe(channels).await;
        if !failed.is_empty() && self.stale && self.refresh().await.is_ok() {
            (failed, error) = self.try_subscribe(&failed).await;
        }
        self.publish_state();
        (failed, error)
    }

    async fn try_subscribe(&mut self, channels: &[String]) -> (Vec<String>, Option<Error>) {
        let mut failed = Vec::new();
        let mut error = None;
        let mut groups: HashMap<Addr, Vec<String>> = HashMap::new();
        for c in channels {
            match self.map.owner(slot(c.as_bytes())) {
                Some(m) => groups.entry(m.clone()).or_default().push(c.clone()),
                None => {
                    self.stale = true;
                    failed.push(c.clone());
                    error = Some(Error::Unavailable(format!("no master serves {c}'s slot")));
                }
            }
        }
        // Masters without a connection: open one (a master that the last
        // map named, lost since).
        let missing: Vec<Addr> = groups
            .keys()
            .filter(|a| !self.nodes.contains_key(*a))
            .cloned()
            .collect();
        for (addr, result) in self.open(&missing).await {
            if let Err(e) = result {
                self.stale = true;
                failed.extend(groups.remove(&addr).unwrap_or_default());
                error = Some(e);
            }
        }
        let sends = groups.into_iter().filter_map(|(addr, chans)| {
            let mut conn = self.nodes.get(&addr)?.conn.clone();
            Some(async move {
                let mut pipe = redis::pipe();
                for c in &chans {
                    pipe.cmd("SSUBSCRIBE").arg(c);
                }
                let result = conn.send_packed_commands(&pipe, 0, chans.len()).await;
                (addr, chans, result)
            })
        });
        for (addr, chans, result) in join_all(sends).await {
            let replies = match result {
                Ok(replies) => replies,
                Err(e) => {
                    // Its state is unknown: close it; its channels are lost.
                    self.drop_node(&addr);
                    failed.extend(chans);
                    error = Some(e.into());
                    continue;
                }
            };
            let mut replies = replies.into_iter();
            for c in chans {
                match replies.next() {
                    Some(Value::Push {
                        kind: PushKind::SSubscribe,
                        data,
                    }) if matches!(data.first(), Some(Value::BulkString(n)) if n == c.as_bytes()) => {
                        if let Some(node) = self.nodes.get_mut(&addr) {
                            node.channels.insert(c);
                        }
                    }
                    Some(Value::ServerError(e)) => {
                        // MOVED, ASK, CLUSTERDOWN, TRYAGAIN: the slot is
                        // elsewhere or moving.
                        self.stale = true;
                        error = Some(Error::Unavailable(format!("SSUBSCRIBE {c}: {e:?}")));
                        failed.push(c);
                    }
                    other => {
                        error = Some(Error::Unavailable(format!(
                            "SSUBSCRIBE {c}: unexpected answer {other:?}"
                        )));
                        failed.push(c);
                    }
                }
            }
        }
        (failed, error)
    }

    /// Unsubscribes `channels` where they are subscribed. A connection that
    /// fails this is closed: its channels are gone from Redis either way.
    pub(crate) async fn unsubscribe(&mut self, channels: &[String]) {
        let mut groups: HashMap<Addr, Vec<String>> = HashMap::new();
        for c in channels {
            if let Some((addr, node)) = self.nodes.iter_mut().find(|(_, n)| n.channels.contains(c))
            {
                node.channels.remove(c);
                groups.entry(addr.clone()).or_default().push(c.clone());
            }
        }
        let sends = groups.into_iter().filter_map(|(addr, chans)| {
            let mut conn = self.nodes.get(&addr)?.conn.clone();
            Some(async move {
                let mut pipe = redis::pipe();
                for c in &chans {
                    pipe.cmd("SUNSUBSCRIBE").arg(c);
                }
                let result = conn.send_packed_commands(&pipe, 0, chans.len()).await;
                (addr, result)
            })
        });
        for (addr, result) in join_all(sends).await {
            if let Err(e) = result {
                tracing::debug!(error = %e, node = %fmt_addr(&addr), "SUNSUBSCRIBE failed; closing the connection");
                self.drop_node(&addr);
            }
        }
        self.publish_state();
    }

    /// PINGs every master's connection; one that does not answer in time is
    /// closed and its channels reported lost.
    pub(crate) async fn ping(&mut self) {
        let pings = self.nodes.iter().map(|(addr, node)| {
            let mut conn = node.conn.clone();
            async move {
                let r = redis::cmd("PING").query_async::<Value>(&mut conn).await;
                (addr.clone(), r)
            }
        });
        for (addr, result) in join_all(pings).await {
            if let Err(e) = result {
                tracing::warn!(error = %e, node = %fmt_addr(&addr), "redis cluster master did not answer PING; its channels are resubscribed once a master serves them");
                self.stale = true;
                self.drop_node(&addr);
            }
        }
        self.publish_state();
    }

    /// The next message or dropped channels. Never ends: a lost master is
    /// reported as [`Event::Lost`].
    pub(crate) async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Some(event);
            }
            let (id, push) = self.pushes.recv().await?;
            if let Some(event) = self.push(id, push) {
                return Some(event);
            }
        }
    }

    fn push(&mut self, id: u64, push: PushInfo) -> Option<Event> {
        match push.kind {
            PushKind::SMessage | PushKind::Message => {
                let mut data = push.data.into_iter();
                match (data.next(), data.next()) {
                    (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) => Some(
                        Event::Message(String::from_utf8_lossy(&channel).into_owned(), payload),
                    ),
                    _ => None,
                }
            }
            PushKind::SUnsubscribe => {
                let Some(Value::BulkString(channel)) = push.data.into_iter().next() else {
                    return None;
                };
                let channel = String::from_utf8_lossy(&channel).into_owned();
                // Ours to unsubscribe were removed before SUNSUBSCRIBE was
                // sent: a channel still held was dropped by the node.
                let node = self.nodes.values_mut().find(|n| n.id == id)?;
                if !node.channels.remove(&channel) {
                    return None;
                }
                self.stale = true;
                Some(Event::Unsubscribed(channel))
            }
            PushKind::Disconnection => {
                let addr = self
                    .nodes
                    .iter()
                    .find(|(_, n)| n.id == id)
                    .map(|(a, _)| a.clone())?;
                tracing::warn!(node = %fmt_addr(&addr), "redis cluster master connection lost; its channels are resubscribed once a master serves them");
                self.stale = true;
                self.drop_node(&addr);
                self.publish_state();
                self.events.pop_front()
            }
            _ => None,
        }
    }

    /// Closes the connection to `addr`, reporting its channels lost.
    fn drop_node(&mut self, addr: &Addr) {
        if let Some(node) = self.nodes.remove(addr) {
            if !node.channels.is_empty() {
                self.events
                    .push_back(Event::Lost(node.channels.into_iter().collect()));
            }
        }
    }

    /// Reads the slot map from the first node that answers, asking the
    /// connected masters, the nodes of the last map and the seeds at once
    /// (a dead node's connect can take the whole timeout), within the
    /// timeout.
    async fn refresh(&mut self) -> Result<(), Error> {
        let mut asked: HashSet<Addr> = HashSet::new();
        let mut queries: Vec<BoxFuture<'_, Result<SlotMap, Error>>> = Vec::new();
        for (addr, node) in &self.nodes {
            asked.insert(addr.clone());
            let (addr, mut conn) = (addr.clone(), node.conn.clone());
            queries.push(Box::pin(async move { slots_from(&addr, &mut conn).await }));
        }
        let others = self.map.nodes.iter().chain(&self.target.seeds);
        for addr in others.filter(|a| asked.insert((*a).clone())) {
            let (target, timeout) = (&self.target, self.timeout);
            queries.push(Box::pin(async move {
                let client = target.node_client(&addr.0, addr.1)?;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout));
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                slots_from(addr, &mut conn).await
            }));
        }
        if queries.is_empty() {
            return Err(Error::Config("no cluster seed node".into()));
        }
        let answer = tokio::time::timeout(self.timeout, select_ok(queries))
            .await
            .map_err(|_| {
                Error::Unavailable("no cluster node answered CLUSTER SLOTS in time".into())
            })?;
        let (map, _) = answer?;
        self.adopt(map);
        Ok(())
    }

    /// Takes `map` as the slot map; connections to nodes that are no longer
    /// masters are closed.
    fn adopt(&mut self, map: SlotMap) {
        let gone: Vec<Addr> = {
            let masters = map.masters();
            self.nodes
                .keys()
                .filter(|a| !masters.contains(a))
                .cloned()
                .collect()
        };
        for addr in &gone {
            tracing::info!(node = %fmt_addr(addr), "no longer a redis cluster master; closing its subscriber connection");
            self.drop_node(addr);
        }
        self.map = map;
        self.stale = false;
    }

    /// Connects to every master of the map that has no connection; returns
    /// how many were opened.
    async fn open_masters(&mut self) -> u64 {
        let missing: Vec<Addr> = self
            .map
            .masters()
            .into_iter()
            .filter(|m| !self.nodes.contains_key(*m))
            .cloned()
            .collect();
        let mut opened = 0;
        for (addr, result) in self.open(&missing).await {
            match result {
                Ok(()) => opened += 1,
                Err(e) => {
                    self.stale = true;
                    tracing::debug!(error = %e, node = %fmt_addr(&addr), "redis cluster master not reachable");
                }
            }
        }
        opened
    }

    /// Opens subscriber connections to `addrs`, concurrently.
    async fn open(&mut self, addrs: &[Addr]) -> Vec<(Addr, Result<(), Error>)> {
        let attempts = addrs.iter().map(|addr| {
            self.next_id += 1;
            let id = self.next_id;
            let tx = self.push_tx.clone();
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout))
                .set_push_sender(move |push: PushInfo| tx.send((id, push)));
            let client = self.target.node_client(&addr.0, addr.1);
            async move {
                let conn = async {
                    Ok::<_, Error>(
                        client?
                            .get_multiplexed_async_connection_with_config(&config)
                            .await?,
                    )
                }
                .await;
                (addr.clone(), id, conn)
            }
        });
        let mut results = Vec::new();
        for (addr, id, conn) in join_all(attempts.collect::<Vec<_>>()).await {
            match conn {
                Ok(conn) => {
                    self.nodes.insert(
                        addr.clone(),
                        Node {
                            id,
                            conn,
                            channels: HashSet::new(),
                        },
                    );
                    results.push((addr, Ok(())));
                }
                Err(e) => results.push((addr, Err(e))),
            }
        }
        results
    }

    /// Brings the shard counts and `connected` (at least one master's
    /// connection up) up to date.
    fn publish_state(&self) {
        let masters = self.map.masters();
        let up = masters
            .iter()
            .filter(|m| self.nodes.contains_key(**m))
            .count();
        self.stats
            .shards
            .store(masters.len() as u64, Ordering::Relaxed);
        self.stats
            .shards_down
            .store((masters.len() - up) as u64, Ordering::Relaxed);
        let connected = up > 0;
        if self.stats.connected.load(Ordering::Relaxed) != connected {
            self.stats.set_connected(connected);
        }
    }
}

/// `CLUSTER SLOTS` of the node at `addr`, which must serve slots.
async fn slots_from(addr: &Addr, conn: &mut MultiplexedConnection) -> Result<SlotMap, Error> {
    let value: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    let map = SlotMap::parse(value, addr)?;
    if map.ranges.is_empty() {
        return Err(Error::Unavailable(format!(
            "{} serves no slots yet",
            fmt_addr(addr)
        )));
    }
    Ok(map)
}

fn fmt_addr(addr: &Addr) -> String {
    format!("{}:{}", addr.0, addr.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_eq!(slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b""), 0);
    }

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn reads_cluster_slots() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                node("10.0.0.2", 7001),
                node("10.0.0.5", 7004),
            ]),
            Value::Array(vec![Value::Int(0), Value::Int(5460), node("?", 7000)]),
        ]);
        let map = SlotMap::parse(reply, &("seed".into(), 7000)).unwrap();
        assert_eq!(map.owner(0), Some(&("seed".to_owned(), 7000)));
        assert_eq!(map.owner(5460), Some(&("seed".to_owned(), 7000)));
        assert_eq!(map.owner(5461), Some(&("10.0.0.2".to_owned(), 7001)));
        assert_eq!(map.owner(16383), Some(&("10.0.0.2".to_owned(), 7001)));
        assert_eq!(map.masters().len(), 2);
        assert!(map.nodes.contains(&("10.0.0.5".to_owned(), 7004)));
        assert!(SlotMap::parse(Value::Int(1), &("x".into(), 1)).is_err());
    }

    #[test]
    fn a_slot_no_range_covers_has_no_owner() {
        let reply = Value::Array(vec![Value::Array(vec![
            Value::Int(100),
            Value::Int(200),
            node("h", 1),
        ])]);
        let map = SlotMap::parse(reply, &("x".into(), 1)).unwrap();
        assert_eq!(map.owner(99), None);
        assert_eq!(map.owner(201), None);
        assert!(map.owner(150).is_some());
    }

    #[test]
    fn node_clients_keep_the_seeds_scheme_and_credentials() {
        let url = "redis://user:pw@10.0.0.1:7000/0, redis://10.0.0.2:7001";
        let mut config = crate::Config::new(url);
        config.cluster = true;
        let source = Source::new(&config).unwrap();
        let t = ClusterTarget::new(url, &source).unwrap();
        assert_eq!(t.seeds.len(), 2);
        let c = t.node_client("10.0.0.9", 7009).unwrap();
        let info = c.get_connection_info();
        assert!(matches!(info.addr(), ConnectionAddr::Tcp(h, 7009) if h == "10.0.0.9"));
        assert_eq!(info.redis_settings().username(), Some("user"));
        assert_eq!(info.redis_settings().password(), Some("pw"));
        assert_eq!(
            info.redis_settings().protocol(),
            redis::ProtocolVersion::RESP3
        );
        assert!(ClusterTarget::new("", &source).is_err());
    }
}
