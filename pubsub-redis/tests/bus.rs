//! The bus alone against a real `redis-server`: subscribe resolves only once
//! Redis confirmed, reference counts and linger, batching under many
//! concurrent subscribes, fast failure while Redis is down, reconnect and
//! resubscribe, malformed envelopes, keepalive.
//!
//! Needs `redis-server` on PATH.

use futures_util::{Stream, StreamExt};
use pubsub_redis::{Envelope, Origin};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use test_support::bus::TestBus;
use test_support::wait::until_true;
use test_support::{free_port, temp, wait, RedisServer, SETTLE};

/// Longest a refused subscribe may take once the bus knows Redis is down.
const FAST: Duration = Duration::from_secs(1);

/// Reads MONITOR lines until one satisfies `last`, returning all of them.
async fn monitor_until(
    lines: &mut (impl Stream<Item = String> + Unpin),
    last: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout(SETTLE, lines.next())
            .await
            .unwrap()
            .unwrap();
        let done = last(&line);
        seen.push(line);
        if done {
            return seen;
        }
    }
}

/// `"cmd"` and `"channel"` both appear in a MONITOR line (command names are
/// compared case-insensitively).
fn is_cmd(line: &str, cmd: &str, channel: &str) -> bool {
    line.to_ascii_lowercase()
        .contains(&format!("\"{}\"", cmd.to_ascii_lowercase()))
        && line.contains(&format!("\"{channel}\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_resolves_only_once_redis_confirmed() {
    let redis = RedisServer::start().await;
    let mut t = TestBus::start(&redis.url(), Duration::from_millis(200));
    let mut conn = redis.conn().await;
    t.subscribe_eventually("warmup").await;
    for i in 0..200 {
        let topic = format!("room:{i}");
        t.bus.subscribe(&topic).await.unwrap();
        // Published right after subscribe returned: Redis already has it.
        let msg = format!(r#"{{"event":"e","payload":{{"i":{i}}}}}"#);
        assert_eq!(conn.publish(&t.channel(&topic), &msg).await, 1);
        assert_eq!(
            t.next_text().await,
            (topic, "e".to_owned(), format!(r#"{{"i":{i}}}"#))
        );
    }
    assert_eq!(t.stat(|s| &s.subscriptions), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_are_counted_and_released_after_the_linger() {
    let linger = Duration::from_millis(300);
    let redis = RedisServer::start().await;
    let t = TestBus::start(&redis.url(), linger);
    let mut conn = redis.conn().await;
    let room = t.channel("room");
    let marker = t.channel("marker");

    t.subscribe_eventually("room").await;
    t.bus.subscribe("room").await.unwrap();
    assert_eq!(conn.numsub(&room).await, 1, "one SUBSCRIBE per topic");
    assert_eq!(t.stat(|s| &s.subscriptions), 1);

    // One of two references goes: nothing changes in Redis. A marker whose
    // linger starts later proves room's would have run out by then.
    t.bus.unsubscribe("room");
    t.bus.subscribe("marker").await.unwrap();
    t.bus.unsubscribe("marker");
    conn.wait_numsub(&marker, 0).await;
    assert_eq!(conn.numsub(&room).await, 1);

    // The last reference goes: UNSUBSCRIBE, but not before the linger.
    let released = Instant::now();
    t.bus.unsubscribe("room");
    conn.wait_numsub(&room, 0).await;
    assert!(
        released.elapsed() >= linger,
        "unsubscribed after {:?}, before the linger of {linger:?}",
        released.elapsed()
    );
    until_true("subscriptions stat = 0", SETTLE, || {
        t.bus.stats().subscriptions.load(Ordering::Relaxed) == 0
    })
    .await;

    // Unsubscribing a topic nobody holds changes nothing.
    t.bus.unsubscribe("never");
    t.bus.subscribe("room").await.unwrap();
    assert_eq!(conn.numsub(&room).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribing_within_the_linger_does_not_flap() {
    let redis = RedisServer::start().await;
    let t = TestBus::start(&redis.url(), Duration::from_millis(1000));
    let mut conn = redis.conn().await;
    let (room, marker) = (t.channel("room"), t.channel("marker"));
    t.subscribe_eventually("room").await;
    t.bus.subscribe("marker").await.unwrap();
    let mut lines = redis.monitor().await;

    t.bus.unsubscribe("room");
    // A round trip of its own, so the release and the new reference are
    // not handled in one batch: the linger is what must keep "room".
    t.bus.subscribe("barrier").await.unwrap();
    t.bus.subscribe("room").await.unwrap();
    t.bus.unsubscribe("marker");
    // The marker's linger ends after room's would have.
    let seen = monitor_until(&mut lines, |l| is_cmd(l, "unsubscribe", &marker)).await;
    let flaps: Vec<&String> = seen
        .iter()
        .filter(|l| is_cmd(l, "subscribe", &room) || is_cmd(l, "unsubscribe", &room))
        .collect();
    assert!(flaps.is_empty(), "room flapped: {flaps:?}");
    assert_eq!(conn.numsub(&room).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_subscribes_are_batched_without_losing_waiters() {
    const TOPICS: usize = 1200; // more than one SUBSCRIBE batch of 512
    const AGAIN: usize = 300; // topics subscribed twice in the same burst
    let redis = RedisServer::start().await;
    let mut t = TestBus::start(&redis.url(), Duration::from_millis(100));
    let mut conn = redis.conn().await;
    t.subscribe_eventually("warmup").await;
    t.bus.unsubscribe("warmup");

    let topics: Vec<String> = (0..TOPICS).map(|i| format!("t:{i}")).collect();
    let calls = topics
        .iter()
        .chain(&topics[..AGAIN])
        .map(|tp| t.bus.subscribe(tp));
    let results = futures_util::future::join_all(calls).await;
    assert_eq!(results.len(), TOPICS + AGAIN);
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    let mut pipe = redis::pipe();
    for tp in &topics {
        pipe.cmd("PUBLISH")
            .arg(t.channel(tp))
            .arg(r#"{"event":"e"}"#);
    }
    let counts: Vec<i64> = pipe.query_async(&mut conn).await.unwrap();
    assert!(
        counts.iter().all(|&n| n == 1),
        "every topic subscribed once"
    );
    let mut got = HashSet::new();
    for _ in 0..TOPICS {
        let (topic, e) = t.next().await;
        assert_eq!(e.event, "e");
        assert_eq!(&e.payload[..], b"{}");
        assert!(got.insert(topic));
    }
    assert_eq!(got.len(), TOPICS);

    // Release every reference: all of them go after the linger.
    for tp in topics.iter().chain(&topics[..AGAIN]) {
        t.bus.unsubscribe(tp);
    }
    let pattern = format!("{}*", t.prefix);
    wait::until("no channel left", SETTLE, || {
        let mut conn = conn.clone();
        let pattern = pattern.clone();
        async move {
            let left: Vec<String> = conn.cmd(&["PUBSUB", "CHANNELS", &pattern]).await;
            left.is_empty().then_some(()).ok_or(left.len())
        }
    })
    .await;
    until_true("subscriptions stat = 0", SETTLE, || {
        t.bus.stats().subscriptions.load(Ordering::Relaxed) == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_whose_caller_went_away_is_released() {
    let redis = RedisServer::start().await;
    let t = TestBus::start(&redis.url(), Duration::from_millis(100));
    let mut conn = redis.conn().await;
    t.subscribe_eventually("barrier").await;
    // Polled once (the command is queued), then dropped before Redis answers.
    {
        let abandoned = t.bus.subscribe("gone");
        tokio::pin!(abandoned);
        assert!(futures_util::poll!(abandoned.as_mut()).is_pending());
    }
    // Commands are handled in order: once this resolves, "gone" was handled.
    t.bus.subscribe("barrier").await.unwrap();
    conn.wait_numsub(&t.channel("gone"), 0).await;
    until_true("subscriptions stat = 1", SETTLE, || {
        t.bus.stats().subscriptions.load(Ordering::Relaxed) == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_fails_fast_while_redis_is_down_and_topics_come_back() {
    let mut redis = RedisServer::start().await;
    let mut t = TestBus::start(&redis.url(), Duration::from_millis(200));
    t.subscribe_eventually("kept").await;
    assert!(t.bus.is_connected());

    redis.kill();
    until_true("the bus sees Redis down", SETTLE, || !t.bus.is_connected()).await;
    let started = Instant::now();
    let err = t.bus.subscribe("new").await.unwrap_err();
    assert!(started.elapsed() < FAST, "took {:?}", started.elapsed());
    assert!(err.is_connection(), "{err}");
    let started = Instant::now();
    let err = t
        .bus
        .publish("kept", Envelope::encode("e", b"{}", None))
        .await
        .unwrap_err();
    assert!(err.is_connection(), "{err}");
    assert!(
        started.elapsed() < FAST,
        "publish took {:?}",
        started.elapsed()
    );
    // A refused subscribe kept no reference: nothing to release later.
    assert_eq!(t.stat(|s| &s.subscriptions), 0);

    redis.restart().await;
    t.subscribe_eventually("new").await;
    assert!(t.bus.is_connected());
    assert!(t.stat(|s| &s.reconnects) >= 1);
    // "kept" was resubscribed with no action of its subscriber.
    let mut conn = redis.conn().await;
    assert_eq!(conn.numsub(&t.channel("kept")).await, 1);
    assert_eq!(conn.numsub(&t.channel("new")).await, 1);
    t.bus
        .publish("kept", Envelope::encode("back", b"[1]", None))
        .await
        .unwrap();
    assert_eq!(
        t.next_text().await,
        ("kept".to_owned(), "back".to_owned(), "[1]".to_owned())
    );
    assert_eq!(t.stat(|s| &s.subscriptions), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_fails_fast_from_the_start() {
    let url = format!("redis://127.0.0.1:{}/0", free_port());
    let t = TestBus::start(&url, Duration::from_millis(200));
    for topic in ["a", "b", "c"] {
        let started = Instant::now();
        let err = t.bus.subscribe(topic).await.unwrap_err();
        assert!(err.is_connection(), "{err}");
        assert!(started.elapsed() < FAST, "took {:?}", started.elapsed());
    }
    assert!(!t.bus.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_subscriber_connection_reconnects_and_resubscribes() {
    let redis = RedisServer::start().await;
    let mut t = TestBus::start(&redis.url(), Duration::from_millis(200));
    let mut conn = redis.conn().await;
    t.subscribe_eventually("a").await;
    t.bus.subscribe("b").await.unwrap();

    let killed: i64 = conn.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    assert_eq!(killed, 1);
    until_true("a reconnect", SETTLE, || {
        t.bus.stats().reconnects.load(Ordering::Relaxed) == 1 && t.bus.is_connected()
    })
    .await;
    for topic in ["a", "b"] {
        assert_eq!(conn.numsub(&t.channel(topic)).await, 1);
        let n = conn
            .publish(&t.channel(topic), r#"{"event":"again"}"#)
            .await;
        assert_eq!(n, 1);
        assert_eq!(t.next().await.0, topic);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_envelopes_are_counted_and_dropped() {
    let redis = RedisServer::start().await;
    let mut t = TestBus::start(&redis.url(), Duration::from_millis(200));
    let mut conn = redis.conn().await;
    t.subscribe_eventually("room").await;
    let ch = t.channel("room");
    let bad = [
        "garbage",
        "{}",
        r#"{"event":1}"#,
        r#"{"event":""}"#,
        "[]",
        r#"{"payload":{}}"#,
    ];
    for m in bad {
        assert_eq!(conn.publish(&ch, m).await, 1);
    }
    conn.publish(&ch, r#"{"event":"ok","payload":{"n":1}}"#)
        .await;
    assert_eq!(
        t.next_text().await,
        ("room".into(), "ok".into(), r#"{"n":1}"#.into())
    );
    assert_eq!(t.stat(|s| &s.malformed), bad.len() as u64);
    assert_eq!(t.stat(|s| &s.received), bad.len() as u64 + 1);
    assert!(t.bus.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_from_other_publishers() {
    let redis = RedisServer::start().await;
    let mut t = TestBus::start(&redis.url(), Duration::from_millis(200));
    let mut conn = redis.conn().await;
    t.subscribe_eventually("room").await;
    let ch = t.channel("room");
    // Extra fields are ignored, whatever their shape: a backend's own
    // `origin` or `v` does not make its message malformed.
    let cases = [
        (r#"{"event":"a"}"#, "{}"),
        (
            r#"{"event":"b","payload":[1,2],"v":"x","extra":{}}"#,
            "[1,2]",
        ),
        (
            r#"{"event":"c","payload":{"k":1},"origin":"billing"}"#,
            r#"{"k":1}"#,
        ),
        (
            r#"{"event":"d","payload":"text","origin":{"node":1}}"#,
            r#""text""#,
        ),
        // An explicit null counts as absent, as in the HTTP API.
        (r#"{"event":"e","payload":null}"#, "{}"),
        (r#"{"payload":7,"event":"f"}"#, "7"),
    ];
    for (msg, _) in cases {
        assert_eq!(conn.publish(&ch, msg).await, 1, "{msg}");
    }
    for (msg, payload) in cases {
        let (_, e) = t.next().await;
        assert_eq!(std::str::from_utf8(&e.payload).unwrap(), payload, "{msg}");
        assert_eq!(e.origin, None, "{msg}");
    }
    assert_eq!(t.stat(|s| &s.malformed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_one_prefix_see_each_others_publishes_with_origin() {
    let redis = RedisServer::start().await;
    let prefix = temp::prefix("shared");
    let mut a = TestBus::with_prefix(&redis.url(), &prefix, Duration::from_millis(200));
    let b = TestBus::with_prefix(&redis.url(), &prefix, Duration::from_millis(200));
    a.subscribe_eventually("room").await;
    let origin = Origin {
        node: "pod-b".into(),
        conn: 7,
    };
    b.bus
        .publish(
            "room",
            Envelope::encode("new_msg", br#"{"x":1}"#, Some(&origin)),
        )
        .await
        .unwrap();
    let (topic, e) = a.next().await;
    assert_eq!(topic, "room");
    assert_eq!(e.event, "new_msg");
    assert_eq!(&e.payload[..], br#"{"x":1}"#);
    assert_eq!(e.origin, Some(origin));
    assert_eq!(b.stat(|s| &s.published), 1);
    assert_eq!(a.stat(|s| &s.received), 1);
}

/// The keepalive PING runs every 3 s on the subscriber connection; it must
/// not be mistaken for a failure while channels are subscribed (in RESP2
/// subscribed mode Redis answers PING with `["pong", ""]`, not `PONG`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_ping_keeps_a_subscribed_connection() {
    let redis = RedisServer::start().await;
    let mut t = TestBus::start(&redis.url(), Duration::from_millis(200));
    let mut conn = redis.conn().await;
    t.subscribe_eventually("room").await;
    let mut lines = redis.monitor().await;
    monitor_until(&mut lines, |l| l.to_ascii_lowercase().contains("\"ping\"")).await;
    // Handled after the PING's answer: the connection must still be the same.
    t.bus.subscribe("after-ping").await.unwrap();
    assert!(t.bus.is_connected());
    assert_eq!(
        t.stat(|s| &s.reconnects),
        0,
        "the keepalive dropped the connection"
    );
    assert_eq!(
        conn.publish(&t.channel("room"), r#"{"event":"still"}"#)
            .await,
        1
    );
    assert_eq!(t.next().await.1.event, "still");
}
