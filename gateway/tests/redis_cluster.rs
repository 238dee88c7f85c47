//! `[redis] cluster = true` against a real Redis Cluster: three masters made
//! with `redis-cli --cluster create`, and several `gateway` processes whose
//! only link is sharded pub/sub.
//!
//! - every topic's SSUBSCRIBE lands on the shard owning its slot (checked with
//!   `PUBSUB SHARDCHANNELS` on every node), one per pod (`PUBSUB SHARDNUMSUB`),
//!   and goes away once the last client left and the linger passed;
//! - client pushes, `SPUBLISH` from `redis-cli -c` and `POST /api/broadcast`
//!   reach every client on every pod;
//! - 500 numbered SPUBLISHes arrive in order everywhere;
//! - when a channel's slot moves to another shard (resharding), the old owner
//!   drops its subscribers and the pods subscribe again at the new owner;
//! - with the whole cluster down, joins, pushes and API broadcasts fail fast
//!   while the connections stay up, and once the cluster is back the pods
//!   resubscribe and every path delivers again.
//!
//! Self-contained: it starts its own `redis-server` processes (cluster bus on
//! port + 10000) and `gateway` binaries, and kills them on drop. Needs
//! `redis-server` and `redis-cli` 7.0+ on PATH.

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::redis::Pod;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest wait for one expected frame, HTTP answer or Redis reply.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a process to come up, or the cluster to form.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval of bounded polling loops.
const POLL: Duration = Duration::from_millis(20);
/// The gateways' `linger_ms`.
const LINGER_MS: u64 = 200;
/// How long a join may take to be refused while the cluster is down: the bus
/// bounds SSUBSCRIBE and connects by 5 s, plus slack for a loaded machine.
const REFUSAL_BOUND: Duration = Duration::from_secs(12);

fn unique(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("gateway-{}", unique(tag)));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn print_log(what: &str, path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(60)..];
    eprintln!("----- {what} ({}) -----", path.display());
    for l in tail {
        eprintln!("{l}");
    }
}

/// Runs `f` until it returns `Some`, every [`POLL`], for at most `within`.
async fn poll<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------
// Redis

/// A free port below 55000 whose cluster bus port (+10000) is free too.
fn cluster_port() -> u16 {
    for _ in 0..1000 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 55000 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair (P, P+10000) below 55000 in 1000 tries");
}

/// One command on a fresh connection to `port`, bounded by [`TIMEOUT`].
async fn try_cmd<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> redis::RedisResult<T> {
    let run = async {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async::<T>(&mut conn).await
    };
    match tokio::time::timeout(TIMEOUT, run).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{args:?} on port {port} timed out"),
        ))),
    }
}

async fn cmd<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> T {
    try_cmd(port, args)
        .await
        .unwrap_or_else(|e| panic!("redis {port} {args:?}: {e}"))
}

/// Runs `redis-cli ARGS...` (bounded), asserting success; trimmed stdout.
async fn redis_cli(args: &[&str]) -> String {
    let out = tokio::time::timeout(
        START_TIMEOUT,
        tokio::process::Command::new("redis-cli")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("redis-cli {args:?} timed out"))
    .expect("cannot run redis-cli");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `redis-cli -c -p {port} SPUBLISH channel message`: the receiver count the
/// owning shard reports (redis-cli follows the MOVED redirect).
async fn spublish_cli(port: u16, channel: &str, message: &str) -> i64 {
    let port = port.to_string();
    let out = redis_cli(&[
        "-c",
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "SPUBLISH",
        channel,
        message,
    ])
    .await;
    out.parse()
        .unwrap_or_else(|_| panic!("SPUBLISH {channel}: {out}"))
}

/// One cluster node.
struct Node {
    port: u16,
    child: Option<Child>,
}

/// A 3-master Redis Cluster, every process killed on drop.
struct RedisCluster {
    nodes: Vec<Node>,
    dir: TempDir,
}

impl RedisCluster {
    async fn start() -> RedisCluster {
        let dir = TempDir::new("redis-cluster");
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let mut started = None;
            for _ in 0..5 {
                let port = cluster_port();
                if let Some(child) = spawn_node(port, &dir).await {
                    started = Some(Node {
                        port,
                        child: Some(child),
                    });
                    break;
                }
            }
            nodes.push(started.expect("redis-server did not start on any of 5 free ports"));
        }
        let cluster = RedisCluster { nodes, dir };
        let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
        args.extend(
            cluster
                .nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port)),
        );
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = redis_cli(&args).await;
        assert!(out.contains("All 16384 slots covered"), "{out}");
        cluster.wait_ok().await;
        cluster
    }

    /// Waits until every node reports `cluster_state:ok`.
    async fn wait_ok(&self) {
        for n in &self.nodes {
            poll("cluster_state:ok", START_TIMEOUT, || async move {
                let info: String = try_cmd(n.port, &["CLUSTER", "INFO"]).await.ok()?;
                info.lines()
                    .any(|l| l.trim() == "cluster_state:ok")
                    .then_some(())
            })
            .await;
        }
    }

    /// `url` for the gateways: two seed nodes, comma separated.
    fn seeds(&self) -> String {
        format!(
            "redis://127.0.0.1:{},redis://127.0.0.1:{}",
            self.nodes[0].port, self.nodes[1].port
        )
    }

    /// The node owning `key`'s slot, read from each node's own slot ranges.
    async fn owner(&self, key: &str) -> usize {
        let slot: i64 = cmd(self.nodes[0].port, &["CLUSTER", "KEYSLOT", key]).await;
        let mut owners = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let text: String = cmd(n.port, &["CLUSTER", "NODES"]).await;
            let me = text
                .lines()
                .find(|l| {
                    l.split_whitespace()
                        .nth(2)
                        .is_some_and(|f| f.contains("myself"))
                })
                .unwrap_or_else(|| panic!("no myself line in {text}"));
            for range in me.split_whitespace().skip(8) {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                if (a.parse::<i64>().unwrap()..=b.parse::<i64>().unwrap()).contains(&slot) {
                    owners.push(i);
                }
            }
        }
        assert_eq!(owners.len(), 1, "slot {slot} of {key}: owners {owners:?}");
        owners[0]
    }

    /// `PUBSUB SHARDCHANNELS pattern` on node `i`, sorted.
    async fn shard_channels(&self, i: usize, pattern: &str) -> BTreeSet<String> {
        let list: Vec<String> =
            cmd(self.nodes[i].port, &["PUBSUB", "SHARDCHANNELS", pattern]).await;
        list.into_iter().collect()
    }

    /// `PUBSUB SHARDNUMSUB channel` on node `i`.
    async fn shard_numsub(&self, i: usize, channel: &str) -> i64 {
        let (name, n): (String, i64) =
            cmd(self.nodes[i].port, &["PUBSUB", "SHARDNUMSUB", channel]).await;
        assert_eq!(name, channel);
        n
    }

    /// Moves `key`'s (empty) slot from node `from` to node `to`, the way
    /// resharding does: IMPORTING, MIGRATING, then SETSLOT NODE everywhere.
    async fn move_slot(&self, key: &str, from: usize, to: usize) {
        let slot: i64 = cmd(self.nodes[0].port, &["CLUSTER", "KEYSLOT", key]).await;
        let slot = slot.to_string();
        let (pf, pt) = (self.nodes[from].port, self.nodes[to].port);
        let id_from: String = cmd(pf, &["CLUSTER", "MYID"]).await;
        let id_to: String = cmd(pt, &["CLUSTER", "MYID"]).await;
        let steps = [
            (pt, "IMPORTING", &id_from),
            (pf, "MIGRATING", &id_to),
            (pt, "NODE", &id_to),
            (pf, "NODE", &id_to),
        ];
        for (port, what, id) in steps {
            let ok: String = cmd(port, &["CLUSTER", "SETSLOT", &slot, what, id]).await;
            assert_eq!(ok, "OK");
        }
        for n in &self.nodes {
            let ok: String = cmd(n.port, &["CLUSTER", "SETSLOT", &slot, "NODE", &id_to]).await;
            assert_eq!(ok, "OK");
        }
        assert_eq!(self.owner(key).await, to);
    }

    /// SIGKILLs every node.
    fn kill_all(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                kill(&mut c);
            }
        }
    }

    /// Starts every node again on its port and `nodes-P.conf`, which remembers
    /// the cluster, and waits until the cluster is ok again.
    async fn restart_all(&mut self) {
        for i in 0..self.nodes.len() {
            let port = self.nodes[i].port;
            let child = poll("redis-server restart", START_TIMEOUT, || {
                spawn_node(port, &self.dir)
            })
            .await;
            self.nodes[i].child = Some(child);
        }
        self.wait_ok().await;
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in &self.nodes {
                print_log(
                    &format!("redis-server {}", n.port),
                    &self.dir.path(&format!("redis-{}.log", n.port)),
                );
            }
        }
        self.kill_all();
    }
}

/// Spawns a cluster-enabled `redis-server` on `port`; `None` when it did not
/// come up as the process answering there (a port was taken).
async fn spawn_node(port: u16, dir: &TempDir) -> Option<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path(&format!("redis-{port}.log")))
        .unwrap();
    let mut child = match Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes"])
        .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .arg("--dir")
        .arg(&dir.0)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("cannot run redis-server ({e}); install redis-server 7.0+"),
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        if let Ok(info) = try_cmd::<String>(port, &["INFO", "server"]).await {
            let ours = format!("process_id:{}", child.id());
            if info.lines().any(|l| l.trim() == ours) {
                return Some(child);
            }
            kill(&mut child); // another server answers on this port
            return None;
        }
        if Instant::now() >= deadline {
            kill(&mut child);
            panic!("redis-server on port {port} did not answer within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------
// gateway pods: tests/support/redis.rs starts them (`Pod::start_cluster`)

async fn client(pod: &Pod) -> Phx {
    Phx::connect(&pod.url("")).await
}

// ---------------------------------------------------------------------------
// Phoenix V2 client

/// A bare WebSocket client speaking V2 arrays.
struct Phx {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Phx {
    async fn connect(url: &str) -> Phx {
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        Phx { ws }
    }

    async fn send(&mut self, frame: Value) {
        self.ws
            .send(WsMessage::text(frame.to_string()))
            .await
            .unwrap();
    }

    /// The next JSON text frame within `within`; pings and pongs are skipped.
    async fn recv_within(&mut self, within: Duration) -> Value {
        loop {
            let msg = tokio::time::timeout(within, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no frame within {within:?}"));
            match msg {
                Some(Ok(WsMessage::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    async fn recv(&mut self) -> Value {
        self.recv_within(TIMEOUT).await
    }

    async fn expect(&mut self, want: Value) {
        let got = self.recv().await;
        assert_eq!(got, want);
    }

    /// Joins `topic`, expecting `ok`. Right after a pod started its bus may
    /// not be connected yet, and joins are refused until it is: those are
    /// retried (bounded). Returns the join_ref that succeeded.
    async fn join(&mut self, topic: &str, jr: &str) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        for attempt in 0.. {
            let jr = format!("{jr}.{attempt}");
            self.send(json!([jr, jr, topic, "phx_join", {}])).await;
            let reply = self.recv().await;
            assert_eq!(reply[0], jr, "{reply}");
            assert_eq!(reply[3], "phx_reply", "{reply}");
            if reply[4]["status"] == "ok" {
                return jr;
            }
            assert_eq!(
                reply[4],
                json!({"status": "error", "response": {"reason": "subscription failed, try again"}})
            );
            assert!(Instant::now() < deadline, "join {topic}: still refused");
            tokio::time::sleep(POLL).await;
        }
        unreachable!()
    }

    /// Sends a heartbeat and expects its reply as the very next frame.
    async fn heartbeat(&mut self, r: &str) {
        self.send(json!([null, r, "phoenix", "heartbeat", {}]))
            .await;
        self.expect(json!([null, r, "phoenix", "phx_reply", {"status": "ok", "response": {}}]))
            .await;
    }

    /// Leaves every `(topic, join_ref)`; returns once each leave was answered
    /// `ok` and followed by its `phx_close` (channels answer in any order).
    async fn leave_all(&mut self, joined: &[(String, String)]) {
        let mut pending = Vec::new();
        for (i, (topic, jr)) in joined.iter().enumerate() {
            let r = format!("leave{i}");
            self.send(json!([jr, r, topic, "phx_leave", {}])).await;
            pending.push(json!([jr, r, topic, "phx_reply", {"status": "ok", "response": {}}]));
            pending.push(json!([jr, jr, topic, "phx_close", {}]));
        }
        while !pending.is_empty() {
            let f = self.recv().await;
            let at = pending.iter().position(|p| *p == f);
            let at = at.unwrap_or_else(|| panic!("unexpected {f}; waiting for {pending:?}"));
            pending.swap_remove(at);
        }
    }
}

fn broadcast(topic: &str, event: &str, payload: Value) -> Value {
    json!([null, null, topic, event, payload])
}

// ---------------------------------------------------------------------------
// tests

/// Eight `room:*` topics, at most three per shard, so they span all three.
async fn spread_topics(cluster: &RedisCluster, prefix: &str) -> Vec<(String, usize)> {
    let mut per_shard = [0usize; 3];
    let mut topics = Vec::new();
    for i in 0.. {
        if topics.len() == 8 {
            break;
        }
        assert!(i < 1000, "cannot spread topics over the shards");
        let topic = format!("room:t{i}");
        let owner = cluster.owner(&format!("{prefix}{topic}")).await;
        if per_shard[owner] < 3 {
            per_shard[owner] += 1;
            topics.push((topic, owner));
        }
    }
    topics
}

/// Polls until `PUBSUB SHARDNUMSUB` of every topic's channel, on its owner,
/// is `want`.
async fn wait_numsub(cluster: &RedisCluster, prefix: &str, topics: &[(String, usize)], want: i64) {
    for (topic, owner) in topics {
        let channel = &format!("{prefix}{topic}");
        poll(
            &format!("SHARDNUMSUB {channel} = {want}"),
            TIMEOUT,
            || async move { (cluster.shard_numsub(*owner, channel).await == want).then_some(()) },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_pubsub_reaches_every_client_on_every_pod() {
    let cluster = RedisCluster::start().await;
    let prefix = format!("{}:", unique("rc"));
    let mut pods = Vec::new();
    for _ in 0..3 {
        pods.push(Pod::start_cluster(&cluster.seeds(), &prefix, LINGER_MS).await);
    }
    let topics = spread_topics(&cluster, &prefix).await;
    let last = topics.len() - 1;

    // Two clients on pod 0, one on pods 1 and 2. Every client joins every
    // topic but the last, which only the clients of pods 0 and 1 join.
    let client_pods = [0usize, 0, 1, 2];
    let mut clients = Vec::new();
    for &p in &client_pods {
        clients.push(client(&pods[p]).await);
    }
    // joined[c] = (topic, join_ref) of client c.
    let mut joined: Vec<Vec<(String, String)>> = vec![Vec::new(); clients.len()];
    for (ti, (topic, _)) in topics.iter().enumerate() {
        for (c, client) in clients.iter_mut().enumerate() {
            if ti == last && client_pods[c] == 2 {
                continue;
            }
            let jr = client.join(topic, &format!("j{ti}")).await;
            joined[c].push((topic.clone(), jr));
        }
    }
    let members = |ti: usize| -> Vec<usize> {
        (0..client_pods.len())
            .filter(|&c| ti != last || client_pods[c] != 2)
            .collect()
    };
    let pods_of = |ti: usize| if ti == last { 2 } else { 3 };

    // Each channel is subscribed on the shard owning its slot, and only there.
    let pattern = format!("{prefix}*");
    let mut shards_used = BTreeSet::new();
    for node in 0..3 {
        let want: BTreeSet<String> = topics
            .iter()
            .filter(|(_, owner)| *owner == node)
            .map(|(t, _)| format!("{prefix}{t}"))
            .collect();
        assert_eq!(
            cluster.shard_channels(node, &pattern).await,
            want,
            "PUBSUB SHARDCHANNELS on node {node}"
        );
        if !want.is_empty() {
            shards_used.insert(node);
        }
    }
    assert!(shards_used.len() >= 2, "shards used: {shards_used:?}");
    // One subscription per pod with subscribers, not per client.
    for (ti, (topic, owner)) in topics.iter().enumerate() {
        let channel = format!("{prefix}{topic}");
        for node in 0..3 {
            let want = if node == *owner { pods_of(ti) } else { 0 };
            assert_eq!(
                cluster.shard_numsub(node, &channel).await,
                want,
                "PUBSUB SHARDNUMSUB {channel} on node {node} (owner {owner})"
            );
        }
    }

    // A client push on pod 0, broadcast to everyone, the sender included.
    let (room_x, _) = &topics[0];
    let sender_jr = joined[0][0].1.clone();
    clients[0]
        .send(json!([sender_jr, "push1", room_x, "new_msg", {"body": "from a client"}]))
        .await;
    let want = broadcast(room_x, "new_msg", json!({"body": "from a client"}));
    let ok = json!([sender_jr, "push1", room_x, "phx_reply", {"status": "ok", "response": {}}]);
    // The sender's reply and its copy of the broadcast come in either order.
    let mut sender = vec![clients[0].recv().await, clients[0].recv().await];
    sender.sort_by_key(|f| f[3].to_string());
    assert_eq!(sender, vec![want.clone(), ok]);
    for c in &mut clients[1..] {
        c.expect(want.clone()).await;
    }

    // SPUBLISH from redis-cli in cluster mode, through each node in turn (so
    // most go through a MOVED redirect), to every topic.
    for (ti, (topic, _)) in topics.iter().enumerate() {
        let receivers = spublish_cli(
            cluster.nodes[ti % 3].port,
            &format!("{prefix}{topic}"),
            r#"{"event":"new_msg","payload":{"body":"hi"}}"#,
        )
        .await;
        assert_eq!(receivers, pods_of(ti), "one delivery per pod for {topic}");
        for c in members(ti) {
            clients[c]
                .expect(json!([null, null, topic, "new_msg", {"body": "hi"}]))
                .await;
        }
    }

    // The HTTP API, on every pod in turn.
    for (p, pod) in pods.iter().enumerate() {
        let (status, body) = pod
            .api_broadcast(room_x, "new_msg", json!({"body": "api", "pod": p}))
            .await;
        assert_eq!((status, body.as_str()), (200, r#"{"ok":true}"#));
        for c in &mut clients {
            c.expect(broadcast(
                room_x,
                "new_msg",
                json!({"body": "api", "pod": p}),
            ))
            .await;
        }
    }

    // Ordering: 500 numbered SPUBLISHes from one publisher, read by every
    // client concurrently.
    const N: i64 = 500;
    let (room_y, _) = &topics[1];
    let channel_y = format!("{prefix}{room_y}");
    let publisher = async {
        let seeds: Vec<String> = cluster.seeds().split(',').map(str::to_owned).collect();
        let client = redis::cluster::ClusterClient::new(seeds).unwrap();
        let mut conn = tokio::time::timeout(TIMEOUT, client.get_async_connection())
            .await
            .expect("cluster connect timed out")
            .unwrap();
        for n in 0..N {
            let payload = json!({"event": "new_msg", "payload": {"n": n}}).to_string();
            let receivers: i64 = tokio::time::timeout(
                TIMEOUT,
                redis::cmd("SPUBLISH")
                    .arg(&channel_y)
                    .arg(payload)
                    .query_async(&mut conn),
            )
            .await
            .expect("SPUBLISH timed out")
            .unwrap();
            assert_eq!(receivers, 3, "SPUBLISH #{n}");
        }
    };
    let readers = futures_util::future::join_all(clients.iter_mut().map(|c| async move {
        for n in 0..N {
            c.expect(broadcast(room_y, "new_msg", json!({"n": n})))
                .await;
        }
    }));
    tokio::join!(publisher, readers);
    for (c, client) in clients.iter_mut().enumerate() {
        client.heartbeat(&format!("hb-order-{c}")).await; // nothing else came
    }

    // Leaves: a pod keeps a channel while any of its clients is in it and
    // drops it once the last one left and the linger passed. First client 0
    // (pod 0 keeps client 1), then client 3 (pod 2's only client).
    clients[0].leave_all(&joined[0]).await;
    clients[3].leave_all(&joined[3]).await;
    wait_numsub(&cluster, &prefix, &topics, 2).await;
    // Had pod 0 dropped its subscriptions, it would have done so before pod
    // 2 (its linger started first), and client 1 would miss these.
    for (ti, (topic, _)) in topics.iter().enumerate() {
        let receivers = spublish_cli(
            cluster.nodes[(ti + 1) % 3].port,
            &format!("{prefix}{topic}"),
            r#"{"event":"new_msg","payload":{"body":"still here"}}"#,
        )
        .await;
        assert_eq!(receivers, 2, "{topic}: pods 0 and 1");
        for c in [1, 2] {
            clients[c]
                .expect(broadcast(topic, "new_msg", json!({"body": "still here"})))
                .await;
        }
    }
    clients[1].leave_all(&joined[1]).await;
    wait_numsub(&cluster, &prefix, &topics, 1).await;
    clients[2].leave_all(&joined[2]).await;
    wait_numsub(&cluster, &prefix, &topics, 0).await;
    for node in 0..3 {
        assert_eq!(
            cluster.shard_channels(node, &pattern).await,
            BTreeSet::new(),
            "node {node}"
        );
    }
    for (c, client) in clients.iter_mut().enumerate() {
        client.heartbeat(&format!("hb-end-{c}")).await; // nothing else came
    }
    for pod in &mut pods {
        assert!(pod.alive());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_whose_slot_moves_is_subscribed_again_on_its_new_shard() {
    let cluster = RedisCluster::start().await;
    let prefix = format!("{}:", unique("rc-move"));
    let pods = [
        Pod::start_cluster(&cluster.seeds(), &prefix, LINGER_MS).await,
        Pod::start_cluster(&cluster.seeds(), &prefix, LINGER_MS).await,
    ];
    let mut clients = [client(&pods[0]).await, client(&pods[1]).await];
    let mut joined = Vec::new();
    for c in &mut clients {
        joined.push(vec![(
            "room:moving".to_owned(),
            c.join("room:moving", "m").await,
        )]);
    }
    let channel = format!("{prefix}room:moving");
    let from = cluster.owner(&channel).await;
    let to = (from + 1) % 3;
    assert_eq!(cluster.shard_numsub(from, &channel).await, 2);

    // The old owner drops its subscribers (a `sunsubscribe` push to each
    // pod); the pods subscribe again, now at the new owner.
    cluster.move_slot(&channel, from, to).await;
    let topics = [("room:moving".to_owned(), to)];
    wait_numsub(&cluster, &prefix, &topics, 2).await;
    assert_eq!(cluster.shard_numsub(from, &channel).await, 0);
    let receivers = spublish_cli(
        cluster.nodes[from].port,
        &channel,
        r#"{"event":"new_msg","payload":{"body":"moved"}}"#,
    )
    .await;
    assert_eq!(receivers, 2);
    for c in &mut clients {
        c.expect(broadcast(
            "room:moving",
            "new_msg",
            json!({"body": "moved"}),
        ))
        .await;
    }
    // Client pushes still go round, and leaving unsubscribes at the new owner.
    let jr = &joined[0][0].1;
    clients[0]
        .send(json!([jr, "p", "room:moving", "new_msg", {"body": "push"}]))
        .await;
    let want = broadcast("room:moving", "new_msg", json!({"body": "push"}));
    let ok = json!([jr, "p", "room:moving", "phx_reply", {"status": "ok", "response": {}}]);
    let mut sender = vec![clients[0].recv().await, clients[0].recv().await];
    sender.sort_by_key(|f| f[3].to_string());
    assert_eq!(sender, vec![want.clone(), ok]);
    clients[1].expect(want).await;
    for (c, client) in clients.iter_mut().enumerate() {
        client.leave_all(&joined[c]).await;
    }
    wait_numsub(&cluster, &prefix, &topics, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cluster_down_joins_and_publishes_fail_fast_and_connections_stay_up() {
    let mut cluster = RedisCluster::start().await;
    let prefix = format!("{}:", unique("rc-down"));
    let pods = [
        Pod::start_cluster(&cluster.seeds(), &prefix, LINGER_MS).await,
        Pod::start_cluster(&cluster.seeds(), &prefix, LINGER_MS).await,
    ];
    let mut clients = [client(&pods[0]).await, client(&pods[1]).await];
    let mut before_jr = Vec::new();
    for c in &mut clients {
        before_jr.push(c.join("room:before", "b").await);
    }
    let channel = format!("{prefix}room:before");
    let owner = cluster.owner(&channel).await;
    assert_eq!(cluster.shard_numsub(owner, &channel).await, 2);
    // Both pods publish once, so their publishing connections are open when
    // the cluster goes away.
    for (p, pod) in pods.iter().enumerate() {
        let (status, _) = pod
            .api_broadcast("room:before", "new_msg", json!({"before": p}))
            .await;
        assert_eq!(status, 200);
        for c in &mut clients {
            c.expect(broadcast("room:before", "new_msg", json!({"before": p})))
                .await;
        }
    }

    cluster.kill_all();

    for (i, c) in clients.iter_mut().enumerate() {
        // A join is refused, not left hanging.
        let jr = format!("d{i}");
        c.send(json!([jr, jr, "room:during", "phx_join", {}])).await;
        assert_eq!(
            c.recv_within(REFUSAL_BOUND).await,
            json!([jr, jr, "room:during", "phx_reply",
                {"status": "error", "response": {"reason": "subscription failed, try again"}}])
        );
        // So is a push to a joined channel.
        let jr = &before_jr[i];
        c.send(json!([jr, "push-down", "room:before", "new_msg", {"body": "lost"}]))
            .await;
        assert_eq!(
            c.recv_within(REFUSAL_BOUND).await,
            json!([jr, "push-down", "room:before", "phx_reply",
                {"status": "error", "response": {"reason": "broadcast failed"}}])
        );
        // The connection itself is fine.
        c.heartbeat(&format!("hb-down-{i}")).await;
    }
    for pod in &pods {
        let (status, body) = pod
            .api_broadcast("room:before", "new_msg", json!({"body": "lost"}))
            .await;
        assert_eq!(status, 503, "{body}");
    }

    // The cluster comes back (same ports, same nodes-P.conf): the pods
    // reconnect and resubscribe room:before, joins succeed again, and every
    // path delivers again.
    cluster.restart_all().await;
    let owner = cluster.owner(&channel).await;
    {
        let (cluster, channel) = (&cluster, &channel);
        poll(
            "room:before resubscribed by both pods",
            START_TIMEOUT,
            || async move { (cluster.shard_numsub(owner, channel).await == 2).then_some(()) },
        )
        .await;
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.join("room:after", &format!("a{i}")).await;
    }
    let receivers = spublish_cli(
        cluster.nodes[2].port,
        &channel,
        r#"{"event":"new_msg","payload":{"body":"back"}}"#,
    )
    .await;
    assert_eq!(receivers, 2);
    for c in &mut clients {
        c.expect(broadcast("room:before", "new_msg", json!({"body": "back"})))
            .await;
    }
    for (p, pod) in pods.iter().enumerate() {
        let (status, body) = pod
            .api_broadcast("room:before", "new_msg", json!({"after": p}))
            .await;
        assert_eq!((status, body.as_str()), (200, r#"{"ok":true}"#));
        for c in &mut clients {
            c.expect(broadcast("room:before", "new_msg", json!({"after": p})))
                .await;
        }
    }
    let jr = &before_jr[1];
    clients[1]
        .send(json!([jr, "push-up", "room:before", "new_msg", {"body": "up"}]))
        .await;
    let want = broadcast("room:before", "new_msg", json!({"body": "up"}));
    let ok = json!([jr, "push-up", "room:before", "phx_reply", {"status": "ok", "response": {}}]);
    let mut sender = vec![clients[1].recv().await, clients[1].recv().await];
    sender.sort_by_key(|f| f[3].to_string());
    assert_eq!(sender, vec![want.clone(), ok]);
    clients[0].expect(want).await;
}
