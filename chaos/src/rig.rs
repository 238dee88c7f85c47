//! The system under test: Redis (one server, or a cluster of three masters
//! with a replica each) and gateway pods running `config/example.toml` —
//! what users run — with only the listen address, the Redis URL and prefix
//! (and the API key test-support's readiness check needs) set and the
//! per-source limits off (every simulated client shares one address), plus, for
//! one pod, a [`Proxy`] on its link to Redis. test-support starts and owns
//! every process; each is killed when the rig drops.

use crate::probes;
use crate::proxy::Proxy;
use anyhow::Context as _;
use gateway::config::Config;
use std::net::SocketAddr;
use std::path::PathBuf;
use test_support::{GatewayProcess, RedisCluster, RedisServer};

/// Redis as the pods see it.
#[derive(Debug)]
pub(crate) enum Backend {
    Single(RedisServer),
    Cluster(RedisCluster),
}

#[derive(Debug, Clone)]
pub(crate) struct RigSpec {
    pub(crate) gateway_bin: PathBuf,
    pub(crate) config: PathBuf,
    pub(crate) pods: usize,
    pub(crate) cluster: bool,
    /// This pod reaches Redis through the proxy.
    pub(crate) proxied: Option<usize>,
}

#[derive(Debug)]
pub(crate) struct Rig {
    pub(crate) backend: Backend,
    pub(crate) pods: Vec<GatewayProcess>,
    pub(crate) proxy: Option<Proxy>,
    pub(crate) prefix: String,
}

/// How fast a replica takes over a master that stopped answering (Redis's
/// `cluster-node-timeout`; its default is 15 s).
pub(crate) const NODE_TIMEOUT_MS: u64 = 2000;

impl Rig {
    pub(crate) async fn start(spec: &RigSpec) -> anyhow::Result<Rig> {
        let text = std::fs::read_to_string(&spec.config)
            .with_context(|| format!("read {}", spec.config.display()))?;
        let mut config = Config::parse(&text, &spec.config.display().to_string())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let prefix = test_support::temp::prefix("chaos");
        config.redis.prefix = prefix.clone();
        let (backend, url) = if spec.cluster {
            let c = RedisCluster::start_with_replicas(NODE_TIMEOUT_MS).await;
            let url = c.seeds();
            // Presence keeps its entries in one Redis; the gateway refuses
            // it with `cluster = true` (docs/redis.md).
            for rule in &mut config.channels {
                rule.presence = None;
            }
            config.redis.cluster = true;
            (Backend::Cluster(c), url)
        } else {
            let r = RedisServer::start().await;
            let url = r.url();
            (Backend::Single(r), url)
        };
        config.redis.url = Some(url.clone());
        // Every simulated client connects from 127.0.0.1: the per-source
        // limits (docs/security.md) would count thousands of users as one
        // address and refuse their reconnect storm after a pod kill, which
        // real clients, each from its own address, do not hit.
        config.server.max_connections_per_source = 0;
        config.server.connection_rate_per_source = 0;
        config.server.max_queued_joins_per_source = 0;
        config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;

        let proxy = match (&backend, spec.proxied) {
            (Backend::Single(r), Some(_)) => {
                Some(Proxy::start(SocketAddr::from(([127, 0, 0, 1], r.port()))).await?)
            }
            _ => None,
        };
        let mut pods = Vec::new();
        for i in 0..spec.pods {
            let url = match &proxy {
                Some(p) if spec.proxied == Some(i) => format!("redis://{}/0", p.addr),
                _ => url.clone(),
            };
            let mut c = config.clone();
            c.redis.url = Some(url);
            let pod = GatewayProcess::builder(&spec.gateway_bin)
                .config(c)
                .start()
                .await;
            pods.push(pod);
        }
        Ok(Rig {
            backend,
            pods,
            proxy,
            prefix,
        })
    }

    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.pods.iter().map(|p| p.addr).collect()
    }

    pub(crate) fn probes(&self) -> Vec<probes::Pod> {
        self.pods
            .iter()
            .map(|p| probes::Pod {
                pid: p.pid(),
                addr: p.addr,
            })
            .collect()
    }

    /// The Redis channel of `topic`.
    pub(crate) fn channel(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    pub(crate) fn redis(&mut self) -> &mut RedisServer {
        match &mut self.backend {
            Backend::Single(r) => r,
            Backend::Cluster(_) => panic!("a single Redis was not started"),
        }
    }

    pub(crate) fn cluster(&mut self) -> &mut RedisCluster {
        match &mut self.backend {
            Backend::Cluster(c) => c,
            Backend::Single(_) => panic!("a Redis Cluster was not started"),
        }
    }

    /// Where the publisher publishes.
    pub(crate) fn publish_target(&self) -> crate::publisher::Redis {
        match &self.backend {
            Backend::Single(r) => crate::publisher::Redis::Single(r.url()),
            Backend::Cluster(c) => crate::publisher::Redis::Cluster(c.seed_urls()),
        }
    }
}
