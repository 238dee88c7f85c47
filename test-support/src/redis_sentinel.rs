//! `SentinelSet`: Redis as Bitnami's chart and most self-hosted HA setups
//! run it: a master, a replica, and three `redis-server --sentinel`
//! processes (quorum 2) on free ports, with a short `down-after` so a
//! killed master is replaced in a few seconds.

use crate::process::{start_on_free_port, Process};
use crate::redis_server::{cmd_on, is_ours, RedisServer};
use crate::temp::TempDir;
use crate::wait::{until, SETTLE};
use std::process::Command;
use std::time::Duration;

/// The master's name in the sentinels.
pub const MASTER: &str = "gwmaster";

/// A sentinel-watched master and replica.
#[derive(Debug)]
pub struct SentinelSet {
    /// The two data servers; which one is master changes on failover.
    pub servers: Vec<RedisServer>,
    sentinels: Vec<(Process, u16)>,
    _dir: TempDir,
}

impl SentinelSet {
    /// Starts the master, its replica (in sync), and three sentinels that
    /// know both and each other. `extra`: arguments of both data servers
    /// (ACL users); the sentinels themselves need no password.
    pub async fn start(extra: &[String]) -> SentinelSet {
        let master = RedisServer::start_with(extra).await;
        let mut replica_args = extra.to_vec();
        replica_args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.port().to_string(),
        ]);
        let replica = RedisServer::start_with(&replica_args).await;
        let master_url = master.url();
        until("the replica in sync", SETTLE, || async {
            let info: String = cmd_on(&master_url, &["INFO", "replication"]).await?;
            if info.contains("state=online") {
                Ok(())
            } else {
                Err(info)
            }
        })
        .await;
        let dir = TempDir::new("sentinel");
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let log = dir.path(&format!("sentinel-{i}.log"));
            let (process, port) = start_on_free_port(
                "redis-sentinel",
                &log,
                |port| {
                    let conf = dir.path(&format!("sentinel-{port}.conf"));
                    std::fs::write(
                        &conf,
                        format!(
                            "port {port}\nbind 127.0.0.1\ndir {}\n\
                             sentinel monitor {MASTER} 127.0.0.1 {} 2\n\
                             sentinel down-after-milliseconds {MASTER} 1000\n\
                             sentinel failover-timeout {MASTER} 4000\n",
                            dir.root().display(),
                            master.port()
                        ),
                    )
                    .unwrap();
                    let mut cmd = Command::new("redis-server");
                    cmd.arg(&conf).arg("--sentinel");
                    cmd
                },
                is_ours,
            )
            .await;
            sentinels.push((process, port));
        }
        let set = SentinelSet {
            servers: vec![master, replica],
            sentinels,
            _dir: dir,
        };
        // Every sentinel knows the replica and the two other sentinels:
        // only then can they agree on a failover.
        for &(_, port) in &set.sentinels {
            let url = format!("redis://127.0.0.1:{port}");
            until("the sentinels to know each other", SETTLE, || async {
                let state: Vec<String> = cmd_on(&url, &["SENTINEL", "MASTER", MASTER]).await?;
                let field = |name: &str| {
                    state
                        .iter()
                        .position(|f| f == name)
                        .and_then(|i| state.get(i + 1))
                        .cloned()
                        .unwrap_or_default()
                };
                if field("num-slaves") == "1" && field("num-other-sentinels") == "2" {
                    Ok(())
                } else {
                    Err(format!("{state:?}"))
                }
            })
            .await;
        }
        set
    }

    /// The sentinels, `127.0.0.1:port`.
    pub fn nodes(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|(_, port)| format!("127.0.0.1:{port}"))
            .collect()
    }

    /// Which of [`servers`](Self::servers) every sentinel names master.
    pub async fn master(&self) -> usize {
        let mut named = None;
        for &(_, port) in &self.sentinels {
            let url = format!("redis://127.0.0.1:{port}");
            let addr: (String, u16) =
                cmd_on(&url, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER])
                    .await
                    .unwrap();
            let i = self
                .servers
                .iter()
                .position(|s| s.port() == addr.1)
                .unwrap();
            assert!(named.is_none_or(|n| n == i), "sentinels disagree");
            named = Some(i);
        }
        named.unwrap()
    }

    /// Waits until every sentinel names server `i` master and it says so
    /// itself.
    pub async fn wait_master(&self, i: usize, within: Duration) {
        let port = self.servers[i].port();
        let url = self.servers[i].url();
        let sentinels: Vec<u16> = self.sentinels.iter().map(|(_, p)| *p).collect();
        until("the failover", within, || async {
            for s in &sentinels {
                let url = format!("redis://127.0.0.1:{s}");
                let addr: (String, u16) =
                    cmd_on(&url, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER]).await?;
                if addr.1 != port {
                    return Err(format!("sentinel {s} names {addr:?}"));
                }
            }
            let role: Vec<redis::Value> = cmd_on(&url, &["ROLE"]).await?;
            match role.first() {
                Some(redis::Value::BulkString(r)) if r == b"master" => Ok(()),
                other => Err(format!("role {other:?}")),
            }
        })
        .await;
    }
}
