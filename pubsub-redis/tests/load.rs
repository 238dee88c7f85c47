//! The fleet's connection counts (`load.rs`) against a real `redis-server`
//! and a real Redis Cluster: each report returns every fresh count, a stale
//! entry (a dead pod's) is dropped and deleted, a withdrawn pod is gone, and
//! the hash expires with its last reporter.
//!
//! Needs `redis-server` on PATH.

use pubsub_redis::{Config, PodLoad, RedisBus};
use redis::AsyncCommands;
use std::sync::Arc;
use std::time::Duration;
use test_support::bus::{Collect, TestBus};
use test_support::wait::until;
use test_support::{RedisCluster, RedisServer, SETTLE};

const STALE: Duration = Duration::from_secs(30);

fn sorted(mut loads: Vec<PodLoad>) -> Vec<(String, u64)> {
    loads.sort_by(|a, b| a.pod.cmp(&b.pod));
    loads.into_iter().map(|l| (l.pod, l.connections)).collect()
}

/// Reports, retrying while the bus still connects (bounded).
async fn report(bus: &RedisBus, pod: &str, n: u64) -> Vec<(String, u64)> {
    let loads = until("a load report", SETTLE, || async {
        bus.report_load(pod, n, STALE)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    sorted(loads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_see_each_others_counts_and_the_dead_drop_out() {
    let redis = RedisServer::start().await;
    let a = TestBus::start(&redis.url(), Duration::from_millis(100));
    let b = TestBus::with_prefix(&redis.url(), &a.prefix, Duration::from_millis(100));
    let key = a.channel("rebalance");

    assert_eq!(report(&a.bus, "a", 10).await, [("a".into(), 10)]);
    assert_eq!(
        report(&b.bus, "b", 4).await,
        [("a".into(), 10), ("b".into(), 4)]
    );

    // A pod that stopped reporting long ago (Redis' clock at 1 ms).
    let mut conn = redis.conn().await;
    let _: () = conn.hset(&key, "dead", "7:1").await.unwrap();
    let _: () = conn.hset(&key, "garbled", "x").await.unwrap();
    assert_eq!(
        report(&a.bus, "a", 12).await,
        [("a".into(), 12), ("b".into(), 4)]
    );
    let fields: Vec<String> = conn.hkeys(&key).await.unwrap();
    assert_eq!(
        fields.len(),
        2,
        "stale and malformed entries deleted: {fields:?}"
    );
    let ttl: i64 = conn.pttl(&key).await.unwrap();
    assert!(
        ttl > 0 && ttl <= 30_000,
        "the hash expires with its last report: {ttl}"
    );

    let left = b.bus.withdraw_load("b", STALE).await.map(sorted).unwrap();
    assert_eq!(left, [("a".into(), 12)]);
    let b_there: bool = conn.hexists(&key, "b").await.unwrap();
    assert!(!b_there);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_work_on_a_cluster() {
    let cluster = RedisCluster::start().await;
    let bus = |prefix: &str| {
        let mut config = Config::new(cluster.seeds());
        config.cluster = true;
        config.prefix = prefix.to_owned();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        RedisBus::start(config, Arc::new(Collect(tx))).unwrap()
    };
    let (a, b) = (bus("c:"), bus("c:"));
    assert_eq!(report(&a, "a", 3).await, [("a".into(), 3)]);
    assert_eq!(report(&b, "b", 5).await, [("a".into(), 3), ("b".into(), 5)]);
    let left = a.withdraw_load("a", STALE).await.map(sorted).unwrap();
    assert_eq!(left, [("b".into(), 5)]);
}
