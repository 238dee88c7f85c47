//! `PresenceStore` against a real `redis-server`: writes and listings,
//! liveness that reports when it had lapsed, and reaping that only takes a
//! pod whose liveness key is gone, and gives its entries to one caller only.
//!
//! Needs `redis-server` on PATH.

use bytes::Bytes;
use pubsub_redis::presence::{Op, PresenceStore};
use std::time::Duration;
use test_support::bus::TestBus;
use test_support::RedisServer;

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

#[tokio::test]
async fn write_list_heartbeat_reap() {
    let redis = RedisServer::start().await;
    let a = TestBus::start(&redis.url(), Duration::from_millis(100));
    let b = TestBus::with_prefix(&redis.url(), &a.prefix, Duration::from_millis(100));
    let pa = PresenceStore::new(&a.bus, "pod-a").unwrap();
    let pb = PresenceStore::new(&b.bus, "pod-b").unwrap();
    let ttl = Duration::from_millis(300);

    // The first heartbeat reports a lapsed (absent) key; the next ones not.
    assert!(!pa.heartbeat(ttl).await.unwrap());
    assert!(pa.heartbeat(ttl).await.unwrap());
    assert!(!pb.heartbeat(Duration::from_secs(60)).await.unwrap());

    pa.write(&[
        put("t", "r1", "a1"),
        put("t", "r2", "a2"),
        put("u", "r3", "a3"),
    ])
    .await
    .unwrap();
    pb.write(&[put("t", "r4", "b4")]).await.unwrap();
    pa.write(&[Op::Delete {
        topic: "t".into(),
        entry: "r2".into(),
    }])
    .await
    .unwrap();
    let listed = sorted(pb.list("t").await.unwrap());
    assert_eq!(
        listed,
        vec![
            ("r1".to_owned(), Bytes::from("a1")),
            ("r4".to_owned(), Bytes::from("b4"))
        ]
    );

    // pod-a stays alive: nobody may reap it.
    assert!(pb.dead_pods().await.unwrap().is_empty());
    assert!(pb.reap("pod-a").await.unwrap().is_empty());

    // pod-a's liveness key expires (deleted here rather than waited for):
    // pod-b sees it dead and reaps it, once.
    let alive = format!("{}presence-alive:pod-a", a.prefix);
    let _: i64 = redis.conn().await.cmd(&["DEL", &alive]).await;
    assert_eq!(pb.dead_pods().await.unwrap(), vec!["pod-a".to_owned()]);
    let (first, second) = tokio::join!(pb.reap("pod-a"), pb.reap("pod-a"));
    let mut got = first.unwrap();
    got.extend(second.unwrap());
    assert_eq!(
        sorted(got),
        vec![
            ("t".to_owned(), Bytes::from("a1")),
            ("u".to_owned(), Bytes::from("a3"))
        ],
        "every entry is returned to exactly one reaper"
    );
    assert_eq!(pb.list("t").await.unwrap().len(), 1);
    assert!(pb.list("u").await.unwrap().is_empty());
    assert!(
        pb.dead_pods().await.unwrap().is_empty(),
        "pod-a left the pods set"
    );

    // pod-a comes back: its heartbeat says it had lapsed.
    assert!(!pa.heartbeat(ttl).await.unwrap());
}

#[tokio::test]
async fn a_cluster_bus_is_refused() {
    let mut config = pubsub_redis::Config::new("redis://127.0.0.1:1");
    config.cluster = true;
    struct Nothing;
    impl pubsub_redis::Sink for Nothing {
        fn deliver(&self, _: &str, _: pubsub_redis::Envelope) {}
    }
    let bus = pubsub_redis::RedisBus::start(config, std::sync::Arc::new(Nothing)).unwrap();
    let err = PresenceStore::new(&bus, "p").unwrap_err();
    assert!(err.to_string().contains("single Redis"), "{err}");
}
