//! `Cluster`: one [`RedisServer`] and several [`GatewayProcess`]es sharing
//! it under a channel prefix of their own, as pods behind a balancer.

use crate::pod::{GatewayBuilder, GatewayProcess};
use crate::redis_server::{RedisConn, RedisServer};
use crate::temp::prefix;
use crate::wait::{until, SETTLE};
use serde_json::json;

/// The pods' `linger_ms` unless a test sets its own.
const LINGER_MS: u64 = 200;

/// Redis and `pods`, killed on drop.
#[derive(Debug)]
pub struct Cluster {
    pub pods: Vec<GatewayProcess>,
    pub redis: RedisServer,
    pub prefix: String,
    pod: GatewayBuilder,
}

impl Cluster {
    /// Redis plus `pods` gateways started by `pod` with `linger_ms = 200`.
    pub async fn start(pod: GatewayBuilder, pods: usize) -> Cluster {
        Cluster::with_linger(pod, pods, LINGER_MS).await
    }

    pub async fn with_linger(pod: GatewayBuilder, pods: usize, linger_ms: u64) -> Cluster {
        let redis = RedisServer::start().await;
        Cluster::around(redis, pod.linger_ms(linger_ms), pods).await
    }

    /// Like [`Cluster::start`], but Redis is down while the pods start (it
    /// got a port, then was killed): start it with `cluster.redis.restart()`.
    pub async fn with_redis_down(pod: GatewayBuilder, pods: usize) -> Cluster {
        let mut redis = RedisServer::start().await;
        redis.kill();
        Cluster::around(redis, pod.linger_ms(LINGER_MS).redis_down(), pods).await
    }

    async fn around(redis: RedisServer, pod: GatewayBuilder, pods: usize) -> Cluster {
        let prefix = prefix("t");
        let pod = pod.redis(&redis.url()).prefix(&prefix);
        let pods = futures_util::future::join_all((0..pods).map(|_| pod.clone().start())).await;
        Cluster {
            pods,
            redis,
            prefix,
            pod,
        }
    }

    /// Starts one more pod like the others, on the same Redis and prefix.
    pub async fn add_pod(&self) -> GatewayProcess {
        self.pod.clone().start().await
    }

    /// The Redis channel of `topic`: `{prefix}{topic}`.
    pub fn channel(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// A new Redis connection.
    pub async fn conn(&self) -> RedisConn {
        self.redis.conn().await
    }

    /// Publishes probes to `topic` until every pod has a subscription to it
    /// (PUBLISH reports `pods` receivers), e.g. after a reconnect. Bounded by
    /// [`SETTLE`].
    pub async fn wait_delivering(&self, conn: &mut RedisConn, topic: &str, pods: i64) {
        let channel = self.channel(topic);
        let mut n = 0;
        let what = format!("{topic}: {pods} pods subscribed again");
        until(&what, SETTLE, || {
            n += 1;
            let probe = json!({"event": "probe", "payload": {"n": n}}).to_string();
            let (mut conn, channel) = (conn.clone(), channel.clone());
            async move {
                let got = conn.publish(&channel, &probe).await;
                (got == pods).then_some(()).ok_or(got)
            }
        })
        .await;
    }

    /// Asserts every pod is still running.
    pub fn assert_alive(&mut self) {
        for p in &mut self.pods {
            assert!(p.alive(), "gateway {} exited", p.addr);
        }
    }
}
