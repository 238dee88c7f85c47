//! Several `gateway` processes sharing one `redis-server`: broadcasts from
//! clients, from `redis-cli`, and from the HTTP API reach every pod;
//! `broadcast_from` skips only its sender; disconnect by socket id; malformed
//! envelopes; Redis subscriptions that follow local subscribers (refcount,
//! linger); and per-publisher ordering over 2000 messages.
//!
//! Needs `redis-server` and `redis-cli` on PATH.

use futures_util::{Stream, StreamExt};
use serde_json::json;
use std::time::{Duration, Instant};
use test_support::jwt::token;
use test_support::redis_server::redis_cli;
use test_support::{broadcast, Cluster, GatewayBuilder, GatewayProcess, PhxClient, TIMEOUT};

fn pod() -> GatewayBuilder {
    GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway"))
}

/// Connects one anonymous client per pod in `pods` and joins each to `topic`.
async fn joined(cluster: &Cluster, pods: &[usize], topic: &str) -> Vec<PhxClient> {
    let mut clients = Vec::new();
    for &p in pods {
        let mut c = cluster.pods[p].client().await;
        c.join(topic, "1").await;
        clients.push(c);
    }
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pod_receives_client_pushes_redis_publishes_and_api_broadcasts() {
    let cluster = Cluster::start(pod(), 3).await;
    let mut clients = joined(&cluster, &[0, 1, 2], "room:lobby").await;

    // A client push on pod 0, broadcast by the room:* rule (sender included).
    clients[0]
        .send(json!(["1", "2", "room:lobby", "new_msg", {"body": "from a client"}]))
        .await;
    let want = broadcast("room:lobby", "new_msg", json!({"body": "from a client"}));
    let ok = json!(["1", "2", "room:lobby", "phx_reply", {"status": "ok", "response": {}}]);
    // The sender's reply and its copy of the broadcast come in either order.
    let mut sender = vec![clients[0].recv().await, clients[0].recv().await];
    sender.sort_by_key(|f| f[3].to_string());
    assert_eq!(sender, vec![want.clone(), ok]);
    for c in &mut clients[1..] {
        c.expect(want.clone()).await;
    }

    // The contract's one-liner, verbatim: redis-cli PUBLISH {prefix}room:lobby ...
    let receivers = redis_cli(
        cluster.redis.port(),
        &[
            "PUBLISH",
            &cluster.channel("room:lobby"),
            r#"{"event":"new_msg","payload":{"body":"hi"}}"#,
        ],
    )
    .await;
    assert_eq!(receivers, "3", "one Redis delivery per pod, not per client");
    for c in &mut clients {
        c.expect(json!([null, null, "room:lobby", "new_msg", {"body": "hi"}]))
            .await;
    }

    // The HTTP API on pod 1.
    let (status, body) = cluster.pods[1]
        .api_broadcast("room:lobby", "new_msg", json!({"body": "from the api"}))
        .await;
    assert_eq!((status, body.as_str()), (200, r#"{"ok":true}"#));
    for c in &mut clients {
        c.expect(broadcast(
            "room:lobby",
            "new_msg",
            json!({"body": "from the api"}),
        ))
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_from_skips_only_the_sender_on_every_pod() {
    let cluster = Cluster::start(pod(), 3).await;
    // quiet:* has include_sender = false. Two clients on pod 0, one on 1 and 2.
    let mut clients = joined(&cluster, &[0, 0, 1, 2], "quiet:room").await;

    clients[0]
        .send(json!(["1", "2", "quiet:room", "new_msg", {"body": "psst"}]))
        .await;
    // The reply comes once the message is in Redis.
    clients[0]
        .expect(json!(["1", "2", "quiet:room", "phx_reply", {"status": "ok", "response": {}}]))
        .await;
    for c in &mut clients[1..] {
        c.expect(broadcast("quiet:room", "new_msg", json!({"body": "psst"})))
            .await;
    }
    // Redis delivers a pod's messages in publish order: a marker published
    // after the push must be the sender's very next frame.
    let mut resp = cluster.conn().await;
    let marker = r#"{"event":"marker","payload":{}}"#;
    assert_eq!(
        resp.publish(&cluster.channel("quiet:room"), marker).await,
        3
    );
    for c in &mut clients {
        c.expect(broadcast("quiet:room", "marker", json!({}))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_by_socket_id_closes_that_user_on_every_pod() {
    let cluster = Cluster::start(pod(), 3).await;
    let t42 = token("42");
    let mut victims = vec![
        cluster.pods[0].client_with_token(&t42).await,
        cluster.pods[0].client_with_token(&t42).await,
        cluster.pods[1].client_with_token(&t42).await,
        cluster.pods[2].client_with_token(&t42).await,
    ];
    for v in &mut victims {
        v.join("room:lobby", "1").await;
    }
    let mut other_user = cluster.pods[1].client_with_token(&token("7")).await;
    let mut anonymous = cluster.pods[0].client().await;
    let mut resp = cluster.conn().await;
    let id_channel = cluster.channel("users_socket:42");
    assert_eq!(
        resp.numsub(&id_channel).await,
        3,
        "one subscription per pod"
    );

    let receivers = redis_cli(
        cluster.redis.port(),
        &["PUBLISH", &id_channel, r#"{"event":"disconnect"}"#],
    )
    .await;
    assert_eq!(receivers, "3");
    for v in &mut victims {
        assert_eq!(v.expect_close().await, Some(1001));
    }
    other_user.heartbeat("h1").await;
    anonymous.heartbeat("h1").await;
    // Their socket-id subscriptions go away with the connections.
    resp.wait_numsub(&id_channel, 0).await;
    assert_eq!(resp.numsub(&cluster.channel("users_socket:7")).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_envelopes_are_dropped_and_extra_fields_ignored() {
    let cluster = Cluster::start(pod(), 3).await;
    let mut clients = joined(&cluster, &[0, 1, 2], "room:lobby").await;
    let mut resp = cluster.conn().await;
    let channel = cluster.channel("room:lobby");

    for bad in [
        "garbage",
        "{}",
        r#"{"event":1}"#,
        r#"{"event":""}"#,
        "[]",
        r#"{"payload":{}}"#,
    ] {
        assert_eq!(resp.publish(&channel, bad).await, 3, "{bad}");
    }
    // Every connection survives and the next valid message is the next frame.
    resp.publish(&channel, r#"{"event":"new_msg","payload":{"n":1}}"#)
        .await;
    // `payload` defaults to {}, extra fields are ignored, any JSON payload goes.
    resp.publish(&channel, r#"{"event":"ping_all","extra":true}"#)
        .await;
    resp.publish(
        &channel,
        r#"{"event":"list","payload":[1,"two",null],"v":99}"#,
    )
    .await;
    for c in &mut clients {
        c.expect(broadcast("room:lobby", "new_msg", json!({"n": 1})))
            .await;
        c.expect(broadcast("room:lobby", "ping_all", json!({})))
            .await;
        c.expect(broadcast("room:lobby", "list", json!([1, "two", null])))
            .await;
        c.heartbeat("h1").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_subscriptions_follow_local_subscribers() {
    let cluster = Cluster::start(pod(), 3).await;
    let mut resp = cluster.conn().await;
    let lobby = cluster.channel("room:lobby");
    assert_eq!(resp.numsub(&lobby).await, 0);

    // A join replies ok only once Redis confirmed the subscription.
    let mut a1 = cluster.pods[0].client().await;
    a1.join("room:lobby", "1").await;
    assert_eq!(resp.numsub(&lobby).await, 1);
    let mut b1 = cluster.pods[1].client().await;
    let mut b2 = cluster.pods[1].client().await;
    b1.join("room:lobby", "1").await;
    b2.join("room:lobby", "1").await;
    assert_eq!(resp.numsub(&lobby).await, 2, "one subscription per pod");
    // Pod 2 has a connection but no subscriber of room:lobby.
    let mut c1 = cluster.pods[2].client().await;
    c1.join("room:elsewhere", "1").await;
    assert_eq!(resp.numsub(&lobby).await, 2);
    assert_eq!(resp.publish(&lobby, r#"{"event":"e"}"#).await, 2);
    for c in [&mut a1, &mut b1, &mut b2] {
        c.expect(broadcast("room:lobby", "e", json!({}))).await;
    }

    // b1 leaves, then a1: pod 0 unsubscribes after its linger, pod 1 keeps
    // its subscription for b2 (its linger, had it started, would be over by then).
    b1.leave("room:lobby", "1", "2").await;
    a1.leave("room:lobby", "1", "2").await;
    resp.wait_numsub(&lobby, 1).await;
    assert_eq!(resp.publish(&lobby, r#"{"event":"still"}"#).await, 1);
    b2.expect(broadcast("room:lobby", "still", json!({}))).await;

    // A connection that goes away releases its subscriptions too.
    b2.close().await;
    resp.wait_numsub(&lobby, 0).await;
    assert_eq!(resp.numsub(&cluster.channel("room:elsewhere")).await, 1);
    a1.heartbeat("h").await;
    c1.heartbeat("h").await;
}

/// MONITOR lines up to and including the first `UNSUBSCRIBE` of `until`.
async fn monitor_until_unsubscribe(
    monitor: &mut (impl Stream<Item = String> + Unpin),
    until: &str,
) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let line = tokio::time::timeout(TIMEOUT, monitor.next())
            .await
            .unwrap()
            .unwrap();
        let done = line.to_ascii_lowercase().contains("\"unsubscribe\"")
            && line.contains(&format!("\"{until}\""));
        lines.push(line);
        if done {
            return lines;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_and_rejoin_within_the_linger_keeps_the_subscription() {
    const LINGER_MS: u64 = 1000;
    let cluster = Cluster::with_linger(pod(), 1, LINGER_MS).await;
    let lobby = cluster.channel("room:lobby");
    let other = cluster.channel("room:other");
    let mut x = cluster.pods[0].client().await;
    let mut y = cluster.pods[0].client().await;
    x.join("room:lobby", "1").await;
    y.join("room:other", "1").await;
    let mut monitor = cluster.redis.monitor().await;

    let started = Instant::now();
    x.leave("room:lobby", "1", "2").await;
    x.join("room:lobby", "3").await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(LINGER_MS),
        "leave + rejoin took {took:?}, longer than the linger: the machine is too slow for this test"
    );
    // room:other's linger starts after room:lobby's would have: once Redis
    // sees room:other unsubscribed, room:lobby's linger is over too.
    y.leave("room:other", "1", "2").await;
    let lines = monitor_until_unsubscribe(&mut monitor, &other).await;
    let flaps: Vec<&String> = lines
        .iter()
        .filter(|l| {
            l.contains(&format!("\"{lobby}\"")) && l.to_ascii_lowercase().contains("subscribe\"")
        })
        .collect();
    assert!(flaps.is_empty(), "room:lobby flapped: {flaps:?}");

    let mut resp = cluster.conn().await;
    assert_eq!(resp.numsub(&lobby).await, 1);
    assert_eq!(resp.numsub(&other).await, 0);
    assert_eq!(resp.publish(&lobby, r#"{"event":"after"}"#).await, 1);
    x.expect(broadcast("room:lobby", "after", json!({}))).await;
}

const N: usize = 2000;

/// Spawns a reader that asserts it receives `new_msg` `{"n": 0..N}` in order.
fn expect_numbered(mut c: PhxClient, topic: &'static str) -> tokio::task::JoinHandle<PhxClient> {
    tokio::spawn(async move {
        for n in 0..N {
            c.expect(broadcast(topic, "new_msg", json!({ "n": n })))
                .await;
        }
        c
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pushes_arrive_in_order_on_every_pod() {
    let cluster = Cluster::start(pod(), 3).await;
    let topic = "room:order";
    let mut sender = cluster.pods[0].client().await;
    sender.join(topic, "1").await;
    let readers: Vec<_> = joined(&cluster, &[0, 1, 2], topic)
        .await
        .into_iter()
        .map(|c| expect_numbered(c, topic))
        .collect();

    // Pushes go out in windows; the sender reads its replies (in ref order)
    // and its own copies of the broadcasts (in n order) as they come.
    const WINDOW: usize = 100;
    let (mut sent, mut replies, mut echoes) = (0, 0, 0);
    while replies < N || echoes < N {
        if sent == replies && sent < N {
            for n in sent..(sent + WINDOW).min(N) {
                sender
                    .send(json!(["1", n.to_string(), topic, "new_msg", {"n": n}]))
                    .await;
            }
            sent = (sent + WINDOW).min(N);
        }
        let f = sender.recv().await;
        if f[3] == "phx_reply" {
            assert_eq!(
                f,
                json!(["1", replies.to_string(), topic, "phx_reply", {"status": "ok", "response": {}}])
            );
            replies += 1;
        } else {
            assert_eq!(f, broadcast(topic, "new_msg", json!({ "n": echoes })));
            echoes += 1;
        }
    }
    for r in readers {
        let mut c = r.await.unwrap();
        c.heartbeat("h").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_publishes_arrive_in_order_on_every_pod() {
    let cluster = Cluster::start(pod(), 3).await;
    let topic = "room:order";
    let readers: Vec<_> = joined(&cluster, &[0, 0, 1, 2], topic)
        .await
        .into_iter()
        .map(|c| expect_numbered(c, topic))
        .collect();
    let mut resp = cluster.conn().await;
    let channel = cluster.channel(topic);
    for n in 0..N {
        let msg = json!({"event": "new_msg", "payload": {"n": n}}).to_string();
        assert_eq!(resp.publish(&channel, &msg).await, 3);
    }
    for r in readers {
        let mut c = r.await.unwrap();
        c.heartbeat("h").await;
    }
}
