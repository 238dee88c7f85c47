//! What publishers may send, against a real `gateway` process on a real
//! `redis-server`: events only the gateway itself sends (`phx_close`,
//! `phx_error`, `phx_reply`, `presence_diff`, `presence_state`) are refused
//! by `POST /api/broadcast` with 422 and dropped (counted, logged once) when
//! a backend PUBLISHes them, while a Phoenix client on the topic stays
//! joined and receives the next normal broadcast; payloads over
//! `max_publish_bytes` are refused from the API and client pushes and
//! dropped from Redis. (Binary pushes cross Redis: `redis_binary.rs`.)
//!
//! Needs `redis-server` on PATH.

use serde_json::json;
use test_support::memory;
use test_support::scrape::wait_for;
use test_support::{broadcast, GatewayBuilder, GatewayProcess, PhxClient, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_gateway");
const RESERVED: [&str; 5] = [
    "phx_close",
    "phx_error",
    "phx_reply",
    "presence_diff",
    "presence_state",
];
/// Growth of the pod's resident memory the tests allow: nothing they send
/// is kept.
const RSS_SLACK: usize = 32 * 1024 * 1024;

fn pod(redis: &RedisServer) -> GatewayBuilder {
    GatewayProcess::builder(BIN).redis(&redis.url())
}

/// A client joined to `topic`, and its join_ref.
async fn joined(pod: &GatewayProcess, topic: &str) -> (PhxClient, String) {
    let mut c = pod.client().await;
    let jr = c.join_retrying(topic, "j").await;
    (c, jr)
}

/// The client is still joined: a push is broadcast back and answered ok.
async fn still_joined(c: &mut PhxClient, topic: &str, jr: &str, n: u64) {
    let r = format!("push{n}");
    c.send(json!([jr, r, topic, "new_msg", {"n": n}])).await;
    c.expect_unordered(vec![
        json!([jr, r, topic, "phx_reply", {"status": "ok", "response": {}}]),
        broadcast(topic, "new_msg", json!({"n": n})),
    ])
    .await;
}

#[tokio::test]
async fn the_api_refuses_protocol_and_presence_events() {
    let redis = RedisServer::start().await;
    let pod = pod(&redis).start().await;
    let topic = "room:forged-api";
    let (mut c, jr) = joined(&pod, topic).await;
    let baseline = memory::rss(pod.pid());
    for event in RESERVED {
        let (status, body) = pod.api_broadcast(topic, event, json!({})).await;
        assert_eq!(status, 422, "{event}: {body}");
        assert!(body.contains(event), "{event}: {body}");
    }
    let (status, body) = pod.api_broadcast(topic, "new_msg", json!({"n": 1})).await;
    assert_eq!(status, 200, "{body}");
    // The next frame is the normal broadcast: nothing forged came first.
    c.expect(broadcast(topic, "new_msg", json!({"n": 1}))).await;
    still_joined(&mut c, topic, &jr, 2).await;
    let grew = memory::rss(pod.pid()).saturating_sub(baseline);
    assert!(grew < RSS_SLACK, "pod grew by {grew} bytes");
}

#[tokio::test]
async fn protocol_and_presence_events_from_redis_are_dropped_and_counted() {
    let redis = RedisServer::start().await;
    let pod = pod(&redis).start().await;
    let topic = "room:forged-redis";
    let (mut c, jr) = joined(&pod, topic).await;
    let mut conn = redis.conn().await;
    let channel = pod.channel(topic);
    for event in RESERVED {
        let msg = json!({"event": event, "payload": {"status": "ok", "response": {}}});
        assert_eq!(conn.publish(&channel, &msg.to_string()).await, 1);
    }
    // A mark that is not exactly `true` is no presence mark.
    let fake = json!({"event": "presence_diff", "presence": "true", "payload": {"joins": {}, "leaves": {}}});
    conn.publish(&channel, &fake.to_string()).await;
    // Published after them on the same connection, so delivered after them:
    // the next frame is this one only if every forged one was dropped.
    conn.publish(&channel, r#"{"event":"new_msg","payload":{"n":1}}"#)
        .await;
    c.expect(broadcast(topic, "new_msg", json!({"n": 1}))).await;
    still_joined(&mut c, topic, &jr, 2).await;
    wait_for(
        pod.addr,
        "gateway_redis_dropped_total",
        &[("reason", "reserved_event")],
        (RESERVED.len() + 1) as f64,
    )
    .await;
    let log = pod.log();
    let lines = log.matches("dropping messages from Redis").count();
    assert_eq!(
        lines, 1,
        "logged once per interval, not per message:\n{log}"
    );
}

#[tokio::test]
async fn oversized_publishes_are_refused_and_dropped() {
    const MAX: usize = 1024;
    let redis = RedisServer::start().await;
    let pod = pod(&redis)
        .configure(|c| c.server.max_publish_bytes = MAX)
        .start()
        .await;
    let topic = "room:oversize";
    let (mut c, jr) = joined(&pod, topic).await;
    let big = json!({"data": "x".repeat(2 * MAX)});
    // The API: 413 with the limit named.
    let (status, body) = pod.api_broadcast(topic, "new_msg", big.clone()).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains(&MAX.to_string()), "{body}");
    // A client push a rule broadcasts: an error reply saying why.
    c.send(json!([jr, "big", topic, "new_msg", big])).await;
    c.expect(json!([jr, "big", topic, "phx_reply",
        {"status": "error", "response": {"reason": "broadcast too large"}}]))
        .await;
    // A backend on Redis: dropped and counted; the next one is delivered.
    let channel = pod.channel(topic);
    let mut conn = redis.conn().await;
    let msg = json!({"event": "new_msg", "payload": big});
    assert_eq!(conn.publish(&channel, &msg.to_string()).await, 1);
    conn.publish(&channel, r#"{"event":"new_msg","payload":{"n":1}}"#)
        .await;
    c.expect(broadcast(topic, "new_msg", json!({"n": 1}))).await;
    wait_for(
        pod.addr,
        "gateway_redis_dropped_total",
        &[("reason", "oversize")],
        1.0,
    )
    .await;
    wait_for(
        pod.addr,
        "gateway_limit_hits_total",
        &[("limit", "max_publish_bytes")],
        2.0,
    )
    .await;
    still_joined(&mut c, topic, &jr, 2).await;
}
