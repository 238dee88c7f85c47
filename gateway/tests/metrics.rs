//! `GET /metrics` of a real `gateway` process on a real `redis-server`:
//! the exposition passes `promtool check metrics` (Debian's `prometheus`
//! package, installed by `make test-deps`), and the counters follow what
//! clients, publishers and Redis did — connections, joins by result, messages
//! by kind, broadcasts by source, auth failures, refusals at a limit, Redis
//! going down and coming back, a drain — with topics labelled by prefix only.
//!
//! Needs `redis-server` and `promtool` on PATH.

use serde_json::json;
use std::process::Stdio;
use test_support::jwt::token;
use test_support::scrape::{sample, scrape_at, wait_for};
use test_support::RedisServer;
use test_support::{broadcast, GatewayBuilder, GatewayProcess, LpClient, PhxClient};
use tokio::io::AsyncWriteExt;

/// Runs `promtool check metrics` on an exposition.
async fn promtool_check(text: &str) {
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool ({e}): Debian package prometheus, make test-deps"));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A pod on `redis` (drain delay and period 0, as every test pod).
fn pod(redis: &RedisServer) -> GatewayBuilder {
    GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway")).redis(&redis.url())
}

fn get(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(text, name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?}\n{text}"))
}

#[tokio::test]
async fn a_live_scrape_passes_promtool_and_counts_what_happened() {
    let redis = RedisServer::start().await;
    let pod = pod(&redis)
        .configure(|c| c.server.max_connections = 100)
        .start()
        .await;
    promtool_check(&scrape_at(pod.addr).await).await;

    // A bad token: refused before a socket exists.
    let status = PhxClient::refused_status(pod.url("token=not-a-jwt")).await;
    assert_eq!(status, 403);

    let mut c = pod.client_with_token(&token("alice")).await;
    c.join("room:lobby", "1").await;
    let reply = c.try_join("nowhere:1", "2").await;
    assert_eq!(reply[4]["status"], "error", "{reply}");

    // One broadcast from each source, in order: a client push (the rule
    // includes the sender), the HTTP API, and a publisher on Redis.
    c.send(json!(["1", "p1", "room:lobby", "new_msg", {"n": 1}]))
        .await;
    // The reply and the broadcast (back from Redis) race each other.
    let mut frames = vec![c.recv().await, c.recv().await];
    frames.sort_by_key(|f| f[3] == "phx_reply");
    assert_eq!(
        frames,
        [
            broadcast("room:lobby", "new_msg", json!({"n": 1})),
            json!(["1", "p1", "room:lobby", "phx_reply", {"status": "ok", "response": {}}])
        ]
    );
    let (status, body) = pod
        .api_broadcast("room:lobby", "new_msg", json!({"n": 2}))
        .await;
    assert_eq!(status, 200, "{body}");
    c.expect(broadcast("room:lobby", "new_msg", json!({"n": 2})))
        .await;
    let mut conn = redis.conn().await;
    let lobby = pod.channel("room:lobby");
    conn.publish(&lobby, "not an envelope").await;
    conn.publish(&lobby, r#"{"event":"new_msg","payload":{"n":3}}"#)
        .await;
    c.expect(broadcast("room:lobby", "new_msg", json!({"n": 3})))
        .await;
    c.heartbeat("h1").await;

    let text = wait_for(
        pod.addr,
        "gateway_messages_sent_total",
        &[("kind", "broadcast")],
        3.0,
    )
    .await;
    promtool_check(&text).await;
    // A message is counted once its write returned, which may be just after
    // the client read it: wait for the last reply (heartbeat h1) too.
    let text = wait_for(
        pod.addr,
        "gateway_messages_sent_total",
        &[("transport", "websocket"), ("kind", "reply")],
        5.0,
    )
    .await;
    let ws = ("transport", "websocket");
    let sock = ("socket", "/socket");
    assert_eq!(get(&text, "gateway_connections", &[ws, sock]), 1.0);
    assert_eq!(
        get(&text, "gateway_connections_opened_total", &[ws, sock]),
        1.0
    );
    assert_eq!(
        get(
            &text,
            "gateway_connections_refused_total",
            &[ws, ("reason", "auth")]
        ),
        1.0
    );
    assert_eq!(
        get(
            &text,
            "gateway_auth_failures_total",
            &[sock, ("reason", "invalid_token")]
        ),
        1.0
    );
    assert_eq!(get(&text, "gateway_connections_max", &[]), 100.0);
    let room = ("topic_prefix", "room");
    assert_eq!(get(&text, "gateway_channels_joined", &[room]), 1.0);
    assert_eq!(
        get(&text, "gateway_joins_total", &[room, ("result", "ok")]),
        1.0
    );
    assert_eq!(
        get(
            &text,
            "gateway_joins_total",
            &[("topic_prefix", "other"), ("result", "unmatched_topic")]
        ),
        1.0
    );
    let received = |kind| {
        get(
            &text,
            "gateway_messages_received_total",
            &[ws, ("kind", kind)],
        )
    };
    assert_eq!(received("join"), 2.0);
    assert_eq!(received("push"), 1.0);
    assert!(received("heartbeat") >= 2.0, "client_with_token and h1");
    let sent = |kind| get(&text, "gateway_messages_sent_total", &[ws, ("kind", kind)]);
    assert_eq!(sent("reply"), 5.0, "two joins, a push and two heartbeats");
    assert_eq!(sent("broadcast"), 3.0);
    assert_eq!(
        get(&text, "gateway_broadcast_latency_seconds_count", &[]),
        3.0
    );
    let broadcasts = |source| {
        get(
            &text,
            "gateway_broadcasts_total",
            &[("source", source), room],
        )
    };
    assert_eq!(broadcasts("client"), 1.0);
    assert_eq!(broadcasts("http"), 1.0);
    // Everything reaches the pod through its Redis subscription, its own
    // client and HTTP broadcasts included.
    assert_eq!(broadcasts("redis"), 3.0);
    assert_eq!(get(&text, "gateway_malformed_envelopes_total", &[]), 1.0);
    assert_eq!(get(&text, "gateway_redis_up", &[]), 1.0);
    // room:lobby, the socket id users_socket:alice, the long-poll relay inbox.
    assert!(
        get(&text, "gateway_redis_subscriptions", &[]) >= 2.0,
        "{text}"
    );
    assert_eq!(get(&text, "gateway_local_topics", &[]), 2.0);
    assert_eq!(get(&text, "gateway_ready", &[]), 1.0);
    assert_eq!(get(&text, "gateway_draining", &[]), 0.0);
    assert!(get(&text, "process_open_fds", &[]) > 0.0);
    assert!(get(&text, "process_resident_memory_bytes", &[]) > 0.0);
    // Labels carry topic prefixes, never topics or user ids.
    for raw in ["lobby", "alice", "nowhere"] {
        assert!(!text.contains(raw), "{raw} in the exposition:\n{text}");
    }

    // The client leaves: its connection and channel are no longer counted.
    c.close().await;
    wait_for(pod.addr, "gateway_connections", &[ws, sock], 0.0).await;
    // The channel's task ends on its own, just after its connection.
    let text = wait_for(pod.addr, "gateway_channels_joined", &[room], 0.0).await;
    assert_eq!(
        get(
            &text,
            "gateway_connections_closed_total",
            &[ws, ("reason", "client_closed")]
        ),
        1.0
    );
}

#[tokio::test]
async fn refusals_at_the_connection_limit_are_counted() {
    let redis = RedisServer::start().await;
    let pod = pod(&redis)
        .configure(|c| c.server.max_connections = 1)
        .start()
        .await;
    let mut c = pod.client().await;
    c.heartbeat("h").await;
    assert_eq!(PhxClient::refused_status(pod.url("")).await, 503);
    let text = scrape_at(pod.addr).await;
    assert_eq!(get(&text, "gateway_connections_max", &[]), 1.0);
    assert_eq!(
        get(
            &text,
            "gateway_limit_hits_total",
            &[("limit", "max_connections")]
        ),
        1.0
    );
    assert_eq!(
        get(
            &text,
            "gateway_connections_refused_total",
            &[("transport", "websocket"), ("reason", "max_connections")]
        ),
        1.0
    );
    assert_eq!(get(&text, "gateway_ready", &[]), 0.0, "at the limit");
}

#[tokio::test]
async fn redis_going_down_shows_in_metrics_and_readyz() {
    let mut redis = RedisServer::start().await;
    let pod = pod(&redis).start().await;
    wait_for(pod.addr, "gateway_redis_up", &[], 1.0).await;
    redis.kill();
    let text = wait_for(pod.addr, "gateway_redis_up", &[], 0.0).await;
    promtool_check(&text).await;
    let (_, body) = pod.get("/readyz").await.unwrap();
    assert!(body.contains("redis: disconnected"), "{body}");
    redis.restart().await;
    // The bus counts a reconnect before it reports itself connected.
    let text = wait_for(pod.addr, "gateway_redis_up", &[], 1.0).await;
    assert!(
        get(&text, "gateway_redis_reconnects_total", &[]) >= 1.0,
        "{text}"
    );
    assert_eq!(get(&text, "gateway_ready", &[]), 1.0);
}

#[tokio::test]
async fn a_separate_metrics_port_keeps_answering_through_a_drain() {
    let redis = RedisServer::start().await;
    let mut pod = pod(&redis)
        .configure(|c| {
            c.server.drain_delay_ms = 10_000;
            c.server.shutdown_deadline_ms = 20_000;
        })
        .metrics_port()
        .start()
        .await;
    let metrics = pod.metrics_addr();
    // Only the metrics port serves /metrics.
    let (status, _) = pod.get("/metrics").await.unwrap();
    assert_eq!(status, 404);
    let text = scrape_at(metrics).await;
    assert_eq!(get(&text, "gateway_draining", &[]), 0.0);

    pod.terminate();
    let text = wait_for(metrics, "gateway_draining", &[], 1.0).await;
    assert_eq!(get(&text, "gateway_ready", &[]), 0.0);
    promtool_check(&text).await;
    assert!(pod.alive(), "the pod still drains");
}

#[tokio::test]
async fn long_poll_sessions_are_counted_under_their_transport() {
    let redis = RedisServer::start().await;
    let pod = pod(&redis).start().await;
    let mut lp = LpClient::new(pod.addr, "vsn=2.0.0");
    lp.open().await;
    lp.call(
        &[json!(["1", "1", "room:lobby", "phx_join", {}])],
        &[json!(["1", "1", "room:lobby", "phx_reply", {"status": "ok", "response": {}}])],
    )
    .await;
    let (status, body) = pod
        .api_broadcast("room:lobby", "new_msg", json!({"n": 1}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        lp.messages(1).await,
        [broadcast("room:lobby", "new_msg", json!({"n": 1}))]
    );

    let lp_ = ("transport", "longpoll");
    let text = wait_for(
        pod.addr,
        "gateway_messages_sent_total",
        &[lp_, ("kind", "broadcast")],
        1.0,
    )
    .await;
    promtool_check(&text).await;
    assert_eq!(
        get(&text, "gateway_connections", &[lp_, ("socket", "/socket")]),
        1.0
    );
    assert_eq!(
        get(&text, "gateway_connections", &[("transport", "websocket")]),
        0.0
    );
    assert_eq!(
        get(
            &text,
            "gateway_messages_received_total",
            &[lp_, ("kind", "join")]
        ),
        1.0
    );
    assert_eq!(
        get(
            &text,
            "gateway_messages_sent_total",
            &[lp_, ("kind", "reply")]
        ),
        1.0
    );
    assert_eq!(
        get(&text, "gateway_broadcast_latency_seconds_count", &[]),
        1.0
    );
}
