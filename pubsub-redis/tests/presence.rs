//! `PresenceStore` against a real `redis-server` and a real Redis Cluster
//! (three masters): writes and listings, liveness that reports when it had
//! lapsed, and reaping that only takes a pod whose liveness key is gone,
//! gives its entries to one caller only, finishes what an interrupted
//! reaper left, and leaves a pod that came back listed.
//!
//! Needs `redis-server` on PATH.

use bytes::Bytes;
use pubsub_redis::presence::{Op, PresenceStore};
use pubsub_redis::{Config, Envelope, RedisBus, Sink};
use redis::Value;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use test_support::temp::prefix;
use test_support::{RedisCluster, RedisServer};

fn put(topic: &str, entry: &str, value: &str) -> Op {
    Op::Put {
        topic: topic.into(),
        entry: entry.into(),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn sorted(mut v: Vec<(String, Bytes)>) -> Vec<(String, Bytes)> {
    v.sort();
    v
}

struct Nothing;
impl Sink for Nothing {
    fn deliver(&self, _: &str, _: Envelope) {}
}

fn bus(url: &str, cluster: bool, prefix: &str) -> RedisBus {
    let mut config = Config::new(url);
    config.cluster = cluster;
    config.prefix = prefix.to_owned();
    RedisBus::start(config, Arc::new(Nothing)).unwrap()
}

/// Runs a command on whatever node holds its key (the first argument
/// after the command's name), as a test reading or damaging Redis directly.
type Raw = Box<dyn Fn(Vec<String>) -> std::pin::Pin<Box<dyn Future<Output = Value>>>>;

fn single_raw(redis: &RedisServer) -> Raw {
    let url = redis.url();
    Box::new(move |args| {
        let url = url.clone();
        Box::pin(async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            test_support::RedisConn::open(&url).await.cmd(&args).await
        })
    })
}

fn cluster_raw(cluster: Arc<RedisCluster>) -> Raw {
    Box::new(move |args| {
        let cluster = cluster.clone();
        Box::pin(async move {
            let node = cluster.owner(&args[1]).await;
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cluster.cmd(node, &args).await
        })
    })
}

async fn raw(raw: &Raw, args: &[&str]) -> i64 {
    let v = raw(args.iter().map(|a| (*a).to_owned()).collect()).await;
    match v {
        Value::Int(n) => n,
        Value::Okay => 0,
        other => panic!("{args:?}: {other:?}"),
    }
}

/// The scenario, on either kind of Redis.
async fn write_list_heartbeat_reap(url: &str, cluster: bool, raw_cmd: Raw) {
    let p = prefix("pr");
    let (a, b) = (bus(url, cluster, &p), bus(url, cluster, &p));
    let pa = PresenceStore::new(&a, "pod-a").unwrap();
    let pb = PresenceStore::new(&b, "pod-b").unwrap();
    let ttl = Duration::from_millis(300);

    // The first heartbeat reports a lapsed (absent) key; the next ones not.
    assert!(!pa.heartbeat(ttl).await.unwrap());
    assert!(pa.heartbeat(ttl).await.unwrap());
    assert!(!pb.heartbeat(Duration::from_secs(60)).await.unwrap());

    // Topics of every slot, and several entries per topic.
    let topics: Vec<String> = (0..12).map(|i| format!("room:{i}")).collect();
    let mut ops = Vec::new();
    for (i, t) in topics.iter().enumerate() {
        ops.push(put(t, &format!("a{i}"), &format!("va{i}")));
        ops.push(put(t, &format!("a{i}x"), &format!("vax{i}")));
    }
    ops.push(Op::Delete {
        topic: topics[0].clone(),
        entry: "a0x".into(),
    });
    pa.write(&ops).await.unwrap();
    pb.write(&[put(&topics[0], "b0", "vb0")]).await.unwrap();
    let listed = sorted(pb.list(&topics[0]).await.unwrap());
    assert_eq!(
        listed,
        vec![
            ("a0".to_owned(), Bytes::from("va0")),
            ("b0".to_owned(), Bytes::from("vb0"))
        ]
    );
    assert_eq!(pb.list(&topics[5]).await.unwrap().len(), 2);

    // pod-a stays alive: nobody may reap it.
    assert!(pb.dead_pods().await.unwrap().is_empty());
    let r = pb.reap("pod-a").await;
    assert!(r.removed.is_empty() && r.error.is_none(), "{r:?}");

    // pod-a's liveness key expires (deleted here rather than waited for):
    // pod-b sees it dead and reaps it; two reapers at once each get a part,
    // together everything, nothing twice.
    let alive = format!("{p}presence-alive:pod-a");
    assert_eq!(raw(&raw_cmd, &["DEL", &alive]).await, 1);
    assert_eq!(pb.dead_pods().await.unwrap(), vec!["pod-a".to_owned()]);
    let (first, second) = tokio::join!(pb.reap("pod-a"), pb.reap("pod-a"));
    assert!(first.error.is_none() && second.error.is_none());
    let mut got = first.removed;
    got.extend(second.removed);
    let mut want: Vec<(String, Bytes)> = Vec::new();
    for (i, t) in topics.iter().enumerate() {
        want.push((t.clone(), Bytes::from(format!("va{i}"))));
        if i > 0 {
            want.push((t.clone(), Bytes::from(format!("vax{i}"))));
        }
    }
    assert_eq!(
        sorted(got),
        sorted(want),
        "every entry is returned to exactly one reaper"
    );
    assert_eq!(pb.list(&topics[0]).await.unwrap().len(), 1);
    assert!(pb.list(&topics[5]).await.unwrap().is_empty());
    assert!(
        pb.dead_pods().await.unwrap().is_empty(),
        "pod-a left the holders set"
    );

    // pod-a comes back: its heartbeat says it had lapsed, and it is listed
    // again.
    assert!(!pa.heartbeat(ttl).await.unwrap());
    let holders = format!("{p}presence-holders");
    assert_eq!(raw(&raw_cmd, &["SISMEMBER", &holders, "pod-a"]).await, 1);

    // A reaper that stopped midway: pod-a's index moved to its reaping hash
    // (as the first step does), pod-a dead. The next reaper finishes it.
    pa.write(&[put(&topics[3], "n3", "vn3"), put(&topics[7], "n7", "vn7")])
        .await
        .unwrap();
    let index = format!("{p}presence-pod:{{{alive}}}");
    let reaping = format!("{p}presence-reaping:{{{alive}}}");
    assert_eq!(raw(&raw_cmd, &["RENAME", &index, &reaping]).await, 0);
    // pod-a wrote once more after that, while dead.
    assert_eq!(raw(&raw_cmd, &["DEL", &alive]).await, 1);
    pa.write(&[put(&topics[9], "n9", "vn9")]).await.unwrap();
    let r = pb.reap("pod-a").await;
    assert!(r.error.is_none(), "{r:?}");
    assert_eq!(
        sorted(r.removed),
        vec![
            (topics[3].clone(), Bytes::from("vn3")),
            (topics[7].clone(), Bytes::from("vn7")),
            (topics[9].clone(), Bytes::from("vn9")),
        ]
    );
    for key in [&index, &reaping] {
        assert_eq!(raw(&raw_cmd, &["EXISTS", key]).await, 0, "{key}");
    }
    assert_eq!(raw(&raw_cmd, &["SISMEMBER", &holders, "pod-a"]).await, 0);
}

#[tokio::test]
async fn on_one_redis_server() {
    let redis = RedisServer::start().await;
    write_list_heartbeat_reap(&redis.url(), false, single_raw(&redis)).await;
}

#[tokio::test]
async fn on_a_redis_cluster() {
    let cluster = Arc::new(RedisCluster::start().await);
    let seeds = cluster.seeds();
    write_list_heartbeat_reap(&seeds, true, cluster_raw(cluster.clone())).await;
}

#[tokio::test]
async fn a_pod_that_came_back_in_time_is_not_reaped() {
    let redis = RedisServer::start().await;
    let p = prefix("pr");
    let (a, b) = (bus(&redis.url(), false, &p), bus(&redis.url(), false, &p));
    let pa = PresenceStore::new(&a, "pod-a").unwrap();
    let pb = PresenceStore::new(&b, "pod-b").unwrap();
    let ttl = Duration::from_secs(60);
    pa.heartbeat(ttl).await.unwrap();
    pa.write(&[put("t", "r1", "v1")]).await.unwrap();
    let mut conn = redis.conn().await;
    let alive = format!("{p}presence-alive:pod-a");
    let _: i64 = conn.cmd(&["DEL", &alive]).await;
    assert_eq!(pb.dead_pods().await.unwrap(), vec!["pod-a".to_owned()]);
    // Back before the reaper's first step looked.
    assert!(!pa.heartbeat(ttl).await.unwrap());
    let r = pb.reap("pod-a").await;
    assert!(r.removed.is_empty() && r.error.is_none(), "{r:?}");
    assert_eq!(pb.list("t").await.unwrap().len(), 1);
    assert!(pb.dead_pods().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_cluster_prefix_with_a_hash_tag_is_refused() {
    let b = bus("redis://127.0.0.1:1", true, "{x}:");
    let err = PresenceStore::new(&b, "p").unwrap_err();
    assert!(err.to_string().contains("without { or }"), "{err}");
}
