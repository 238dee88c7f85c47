//! `RedisCluster`: a Redis Cluster of three masters for one test, formed
//! with the `redis` crate (`CLUSTER ADDSLOTSRANGE` and `CLUSTER MEET`, as
//! `redis-cli --cluster create` does), and what tests ask of it: which node
//! owns a key's slot, `PUBSUB SHARDCHANNELS` / `SHARDNUMSUB` per node, moving
//! a slot (resharding), killing every node and restarting them on their
//! ports with their `nodes-P.conf`.

use crate::process::Process;
use crate::redis_server::{cmd_on, start_redis_on};
use crate::temp::TempDir;
use crate::wait::{until, START_TIMEOUT};
use redis::FromRedisValue;
use std::collections::BTreeSet;

/// Masters in a cluster, and the first slot each one serves.
const NODES: usize = 3;
const FIRST_SLOTS: [u16; NODES] = [0, 5461, 10923];

/// One node: its port and its process (killed or running).
#[derive(Debug)]
struct Node {
    port: u16,
    process: Process,
}

/// Three masters on free ports (cluster bus on port + 10000), every process
/// killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: TempDir,
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

async fn start_node(dir: &TempDir, port: u16) -> Result<Process, String> {
    let args = cluster_args(port);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start_redis_on(dir, port, &args, &format!("redis-{port}.log")).await
}

impl RedisCluster {
    /// Starts three nodes, assigns each a third of the slots, introduces
    /// them to each other and waits until every node reports
    /// `cluster_state:ok`.
    pub async fn start() -> RedisCluster {
        let dir = TempDir::new("redis-cluster");
        let mut nodes = Vec::new();
        for _ in 0..NODES {
            let mut started = None;
            for _ in 0..5 {
                let port = cluster_port();
                if let Ok(process) = start_node(&dir, port).await {
                    started = Some(Node { port, process });
                    break;
                }
            }
            nodes.push(started.expect("redis-server did not start on any of 5 free ports"));
        }
        let cluster = RedisCluster { nodes, dir };
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
        for i in 1..NODES {
            let port = cluster.port(i).to_string();
            let _: String = cluster
                .cmd(0, &["CLUSTER", "MEET", "127.0.0.1", &port])
                .await;
        }
        cluster.wait_ok().await;
        cluster
    }

    /// Waits until every node reports `cluster_state:ok` and knows every node.
    async fn wait_ok(&self) {
        for i in 0..NODES {
            until("cluster_state:ok", START_TIMEOUT, || async move {
                let info: String = self.try_cmd(i, &["CLUSTER", "INFO"]).await?;
                let has = |l: &str| info.lines().any(|x| x.trim() == l);
                let known = format!("cluster_known_nodes:{NODES}");
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
        for i in 0..NODES {
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
        for i in 0..NODES {
            let ok: String = self
                .cmd(i, &["CLUSTER", "SETSLOT", &slot, "NODE", &id_to])
                .await;
            assert_eq!(ok, "OK");
        }
        assert_eq!(self.owner(key).await, to);
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
        for i in 0..NODES {
            let port = self.nodes[i].port;
            let dir = &self.dir;
            let p = until("redis-server restart", START_TIMEOUT, || {
                start_node(dir, port)
            })
            .await;
            self.nodes[i].process = p;
        }
        self.wait_ok().await;
    }
}
