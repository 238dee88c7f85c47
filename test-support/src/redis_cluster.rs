//! `RedisCluster`: a Redis Cluster of three masters for one test (and,
//! optionally, one replica each), formed with the `redis` crate (`CLUSTER
//! ADDSLOTSRANGE`, `CLUSTER MEET` and `CLUSTER REPLICATE`, as `redis-cli
//! --cluster create` does), and what tests ask of it: which node owns a
//! key's slot, `PUBSUB SHARDCHANNELS` / `SHARDNUMSUB` per node, moving a slot
//! (resharding), a replica taking over its master (`CLUSTER FAILOVER`, or
//! the master killed), killing every node and restarting them on their ports
//! with their `nodes-P.conf`.

use crate::process::Process;
use crate::redis_server::{cmd_on, start_redis_on};
use crate::temp::TempDir;
use crate::wait::{until, START_TIMEOUT};
use redis::FromRedisValue;
use std::collections::BTreeSet;

/// Masters in a cluster, and the first slot each one serves.
const MASTERS: usize = 3;
const FIRST_SLOTS: [u16; MASTERS] = [0, 5461, 10923];

/// One node: its port and its process (killed or running), and its TLS
/// port in a TLS cluster.
#[derive(Debug)]
struct Node {
    port: u16,
    process: Process,
    tls_port: Option<u16>,
}

/// Three masters on free ports (cluster bus on port + 10000), nodes 0-2, and
/// with [`RedisCluster::start_with_replicas`] a replica of each, nodes 3-5
/// (node `3 + i` replicates node `i` at first); every process killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: TempDir,
    /// Extra `redis-server` arguments of every node.
    extra: Vec<String>,
    /// The TLS arguments of every node (its own `--tls-port` apart).
    tls: Vec<String>,
}

/// A free port below 55000 whose cluster bus port (+10000) is free too.
fn cluster_port() -> u16 {
    for _ in 0..1000 {
        let port = crate::temp::free_port();
        if port < 55000 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair (P, P+10000) below 55000 in 1000 tries");
}

fn cluster_args(port: u16) -> [String; 4] {
    [
        "--cluster-enabled".into(),
        "yes".into(),
        "--cluster-config-file".into(),
        format!("nodes-{port}.conf"),
    ]
}

async fn start_node(
    dir: &TempDir,
    port: u16,
    extra: &[String],
    tls: &[String],
    tls_port: Option<u16>,
) -> Result<Process, String> {
    let mut args: Vec<String> = cluster_args(port)
        .into_iter()
        .chain(extra.iter().cloned())
        .collect();
    if let Some(t) = tls_port {
        args.extend(["--tls-port".to_owned(), t.to_string()]);
        args.extend(tls.iter().cloned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start_redis_on(dir, port, &args, &format!("redis-{port}.log")).await
}

impl RedisCluster {
    /// Starts three nodes, assigns each a third of the slots, introduces
    /// them to each other and waits until every node reports
    /// `cluster_state:ok`.
    pub async fn start() -> RedisCluster {
        RedisCluster::form(0, &[], None).await
    }

    /// Three masters that also speak TLS with `certs`' server certificate,
    /// among themselves too (`tls-cluster yes`), so `CLUSTER SLOTS` asked
    /// over TLS names TLS ports; their plain ports stay for the test's own
    /// commands. [`tls_seeds`](Self::tls_seeds) are their `rediss://` URLs.
    pub async fn start_tls(certs: &crate::redis_tls::Certs) -> RedisCluster {
        let path = |n: &str| certs.path(n).display().to_string();
        let tls = [
            "--tls-cert-file".to_owned(),
            path("server.crt"),
            "--tls-key-file".to_owned(),
            path("server.key"),
            "--tls-ca-cert-file".to_owned(),
            path("ca.crt"),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
            "--tls-cluster".to_owned(),
            "yes".to_owned(),
        ];
        RedisCluster::form(0, &[], Some(&tls)).await
    }

    /// `rediss://127.0.0.1:{tls port}` of two nodes, comma-separated.
    pub fn tls_seeds(&self) -> String {
        self.nodes[..2]
            .iter()
            .map(|n| format!("rediss://127.0.0.1:{}", n.tls_port.expect("a TLS cluster")))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// [`start`](Self::start) with more `redis-server` arguments for every
    /// node (ACL users, ...).
    pub async fn start_with(extra: &[String]) -> RedisCluster {
        RedisCluster::form(0, extra, None).await
    }

    /// Three masters and a replica of each (node `3 + i` of master `i`); a
    /// node that does not answer its peers for `node_timeout_ms` is failed
    /// over to its replica (Redis's default is 15000). Returns once every
    /// replica's link to its master is up.
    pub async fn start_with_replicas(node_timeout_ms: u64) -> RedisCluster {
        let timeout = ["--cluster-node-timeout".into(), node_timeout_ms.to_string()];
        let cluster = RedisCluster::form(MASTERS, &timeout, None).await;
        for i in 0..MASTERS {
            let (replica, cluster) = (MASTERS + i, &cluster);
            until("replica in sync", START_TIMEOUT, || async move {
                let info: String = cluster.try_cmd(replica, &["INFO", "replication"]).await?;
                let up = info.lines().any(|l| l.trim() == "master_link_status:up");
                up.then_some(()).ok_or(info)
            })
            .await;
        }
        cluster
    }

    /// Starts the masters and `replicas` more nodes with `extra` arguments,
    /// assigns the slots, introduces every node and makes node `MASTERS + i`
    /// replicate master `i`.
    async fn form(replicas: usize, extra: &[String], tls: Option<&[String]>) -> RedisCluster {
        let dir = TempDir::new("redis-cluster");
        let tls = tls.map(<[String]>::to_vec).unwrap_or_default();
        let mut nodes = Vec::new();
        for _ in 0..MASTERS + replicas {
            let mut started = None;
            for _ in 0..5 {
                let port = cluster_port();
                // With tls-cluster, the bus is on the TLS port + 10000.
                let tls_port = (!tls.is_empty()).then(cluster_port);
                if let Ok(process) = start_node(&dir, port, extra, &tls, tls_port).await {
                    started = Some(Node {
                        port,
                        process,
                        tls_port,
                    });
                    break;
                }
            }
            nodes.push(started.expect("redis-server did not start on any of 5 free ports"));
        }
        let cluster = RedisCluster {
            nodes,
            dir,
            extra: extra.to_vec(),
            tls,
        };
        for (i, first) in FIRST_SLOTS.iter().enumerate() {
            let epoch = (i + 1).to_string();
            let first = first.to_string();
            let last = FIRST_SLOTS.get(i + 1).map_or(16383, |s| s - 1).to_string();
            let _: String = cluster
                .cmd(i, &["CLUSTER", "SET-CONFIG-EPOCH", &epoch])
                .await;
            let _: String = cluster
                .cmd(i, &["CLUSTER", "ADDSLOTSRANGE", &first, &last])
                .await;
        }
        for i in 1..cluster.nodes.len() {
            let node = &cluster.nodes[i];
            let port = node.tls_port.unwrap_or(node.port).to_string();
            let _: String = cluster
                .cmd(0, &["CLUSTER", "MEET", "127.0.0.1", &port])
                .await;
        }
        cluster.wait_ok().await;
        for i in 0..replicas {
            let master: String = cluster.cmd(i, &["CLUSTER", "MYID"]).await;
            let replica = MASTERS + i;
            // The replica must know the master's id before it can follow it.
            until("replica knows its master", START_TIMEOUT, || {
                let master = master.clone();
                let cluster = &cluster;
                async move {
                    cluster
                        .try_cmd::<String>(replica, &["CLUSTER", "REPLICATE", &master])
                        .await
                }
            })
            .await;
        }
        cluster.wait_ok().await;
        cluster
    }

    /// Waits until every running node reports `cluster_state:ok` and knows
    /// every node.
    async fn wait_ok(&self) {
        let count = self.nodes.len();
        for i in 0..count {
            until("cluster_state:ok", START_TIMEOUT, || async move {
                let info: String = self.try_cmd(i, &["CLUSTER", "INFO"]).await?;
                let has = |l: &str| info.lines().any(|x| x.trim() == l);
                let known = format!("cluster_known_nodes:{count}");
                (has("cluster_state:ok") && has(&known))
                    .then_some(())
                    .ok_or(info)
            })
            .await;
        }
    }

    /// The port of node `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// The URLs of two seed nodes, comma separated (the gateway's `url`).
    pub fn seeds(&self) -> String {
        self.seed_urls().join(",")
    }

    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes[..2]
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    async fn try_cmd<T: FromRedisValue>(&self, i: usize, args: &[&str]) -> Result<T, String> {
        cmd_on(&format!("redis://127.0.0.1:{}", self.port(i)), args).await
    }

    /// One command on node `i` (no redirects followed).
    pub async fn cmd<T: FromRedisValue>(&self, i: usize, args: &[&str]) -> T {
        self.try_cmd(i, args)
            .await
            .unwrap_or_else(|e| panic!("node {i} {args:?}: {e}"))
    }

    async fn slot(&self, key: &str) -> i64 {
        self.cmd(0, &["CLUSTER", "KEYSLOT", key]).await
    }

    /// The node owning `key`'s slot, read from each node's own slot ranges.
    pub async fn owner(&self, key: &str) -> usize {
        let slot = self.slot(key).await;
        let mut owners = Vec::new();
        for i in 0..self.nodes.len() {
            let text: String = self.cmd(i, &["CLUSTER", "NODES"]).await;
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
    pub async fn shard_channels(&self, i: usize, pattern: &str) -> BTreeSet<String> {
        let list: Vec<String> = self.cmd(i, &["PUBSUB", "SHARDCHANNELS", pattern]).await;
        list.into_iter().collect()
    }

    /// `PUBSUB SHARDNUMSUB channel` on node `i`.
    pub async fn shard_numsub(&self, i: usize, channel: &str) -> i64 {
        let (name, n): (String, i64) = self.cmd(i, &["PUBSUB", "SHARDNUMSUB", channel]).await;
        assert_eq!(name, channel);
        n
    }

    /// Moves `key`'s (empty) slot from node `from` to node `to`, the way
    /// resharding does: IMPORTING, MIGRATING, then SETSLOT NODE everywhere.
    pub async fn move_slot(&self, key: &str, from: usize, to: usize) {
        let slot = self.slot(key).await.to_string();
        let id_from: String = self.cmd(from, &["CLUSTER", "MYID"]).await;
        let id_to: String = self.cmd(to, &["CLUSTER", "MYID"]).await;
        let steps = [
            (to, "IMPORTING", &id_from),
            (from, "MIGRATING", &id_to),
            (to, "NODE", &id_to),
            (from, "NODE", &id_to),
        ];
        for (i, what, id) in steps {
            let ok: String = self.cmd(i, &["CLUSTER", "SETSLOT", &slot, what, id]).await;
            assert_eq!(ok, "OK");
        }
        for i in 0..self.nodes.len() {
            let ok: String = self
                .cmd(i, &["CLUSTER", "SETSLOT", &slot, "NODE", &id_to])
                .await;
            assert_eq!(ok, "OK");
        }
        assert_eq!(self.owner(key).await, to);
    }

    /// The process id of node `i`.
    pub fn pid(&self, i: usize) -> u32 {
        self.nodes[i].process.pid()
    }

    /// Whether node `i` is a master now (`ROLE`).
    pub async fn is_master(&self, i: usize) -> bool {
        let role: Vec<redis::Value> = self.cmd(i, &["ROLE"]).await;
        matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master")
    }

    /// The node replicating master `i` (from `i`'s `CLUSTER REPLICAS`).
    pub async fn replica_of(&self, i: usize) -> usize {
        let id: String = self.cmd(i, &["CLUSTER", "MYID"]).await;
        let lines: Vec<String> = self.cmd(i, &["CLUSTER", "REPLICAS", &id]).await;
        let line = lines
            .first()
            .unwrap_or_else(|| panic!("master {i} has no replica"));
        // `id 127.0.0.1:PORT@BUS ...`
        let port: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|a| a.split(['@']).next())
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line}"));
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// `CLUSTER FAILOVER` on replica `replica` (a coordinated switch: its
    /// master stops taking writes, the replica catches up and takes over);
    /// returns once the replica reports itself master.
    pub async fn failover(&self, replica: usize) {
        let ok: String = self.cmd(replica, &["CLUSTER", "FAILOVER"]).await;
        assert_eq!(ok, "OK");
        self.wait_master(replica).await;
    }

    /// Waits until node `i` reports itself master (a failover finished).
    pub async fn wait_master(&self, i: usize) {
        until("replica promoted", START_TIMEOUT, || async move {
            let info: String = self.try_cmd(i, &["INFO", "replication"]).await?;
            let master = info.lines().any(|l| l.trim() == "role:master");
            master.then_some(()).ok_or(info)
        })
        .await;
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].process.kill();
    }

    /// Starts node `i` again on its port with its `nodes-P.conf` (it rejoins
    /// the cluster, as a replica if it was failed over).
    pub async fn restart(&mut self, i: usize) {
        let (port, tls_port) = (self.nodes[i].port, self.nodes[i].tls_port);
        let (dir, extra, tls) = (&self.dir, &self.extra, &self.tls);
        let p = until("redis-server restart", START_TIMEOUT, || {
            start_node(dir, port, extra, tls, tls_port)
        })
        .await;
        self.nodes[i].process = p;
    }

    /// SIGKILLs every node.
    pub fn kill_all(&mut self) {
        for n in &mut self.nodes {
            n.process.kill();
        }
    }

    /// Starts every node again on its port and `nodes-P.conf`, which
    /// remembers the cluster, and waits until the cluster is ok again.
    pub async fn restart_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.restart(i).await;
        }
        self.wait_ok().await;
    }
}
