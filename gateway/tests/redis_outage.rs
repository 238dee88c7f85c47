//! Redis going away under running `gateway` pods: killed and restarted on the
//! same port, its pub/sub clients killed, paused (SIGSTOP) and slow
//! (`DEBUG SLEEP`), or down when the pods start. Client connections stay up,
//! joins that need Redis fail within a bound instead of hanging, and the pods
//! resubscribe by themselves: clients that joined before the outage receive
//! again with no action of their own.
//!
//! Needs `redis-server` on PATH.

use serde_json::json;
use std::time::{Duration, Instant};
use test_support::jwt::token;
use test_support::{broadcast, Cluster, GatewayBuilder, GatewayProcess, PhxClient};

/// Longest a refused join may take when the pod already knows Redis is down.
const FAST: Duration = Duration::from_secs(2);

/// The bus waits this long for Redis to confirm a SUBSCRIBE (the default of
/// `pubsub_redis::Config::timeout`), plus slack for a loaded machine.
const SUBSCRIBE_BOUND: Duration = Duration::from_secs(10);

fn pod() -> GatewayBuilder {
    GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway"))
}

/// Joins `topic` and asserts an error reply arrives within `bound`.
async fn join_refused(c: &mut PhxClient, topic: &str, jr: &str, bound: Duration) -> Duration {
    let started = Instant::now();
    c.send(json!([jr, jr, topic, "phx_join", {}])).await;
    let reply = c.recv_within(bound).await;
    let took = started.elapsed();
    assert_eq!(
        reply,
        json!([jr, jr, topic, "phx_reply",
               {"status": "error", "response": {"reason": "subscription failed, try again"}}])
    );
    took
}

/// After an outage: waits until every pod delivers `room:lobby` again (by
/// publishing probes), then asserts a message reaches every client.
async fn delivery_resumes(cluster: &Cluster, clients: &mut [&mut PhxClient], tag: &str) {
    let mut resp = cluster.conn().await;
    cluster
        .wait_delivering(&mut resp, "room:lobby", cluster.pods.len() as i64)
        .await;
    let msg = json!({"event": "back", "payload": {"tag": tag}}).to_string();
    assert_eq!(
        resp.publish(&cluster.channel("room:lobby"), &msg).await,
        cluster.pods.len() as i64
    );
    for c in clients.iter_mut() {
        c.recv_skipping(
            &broadcast("room:lobby", "back", json!({"tag": tag})),
            "probe",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_keeps_connections_and_resubscribes() {
    let mut cluster = Cluster::start(pod(), 2).await;
    let mut a = cluster.pods[0].client().await;
    let mut b = cluster.pods[1].client().await;
    a.join("room:lobby", "1").await;
    b.join("room:lobby", "1").await;
    let mut user = cluster.pods[1].client_with_token(&token("42")).await;

    cluster.redis.kill();

    // Connections stay up: heartbeats need no Redis.
    a.heartbeat("h1").await;
    b.heartbeat("h1").await;
    user.heartbeat("h1").await;
    // Joins are refused, not left hanging: the first at worst after the
    // SUBSCRIBE timeout (if it raced the pod noticing), the next at once.
    join_refused(&mut a, "room:other", "2", SUBSCRIBE_BOUND).await;
    let took = join_refused(&mut a, "room:third", "3", FAST).await;
    eprintln!("join refused during the outage in {took:?}");
    join_refused(&mut b, "room:other", "2", FAST).await;
    // Publishing fails too, with an answer.
    let (status, _) = cluster.pods[1]
        .api_broadcast("room:lobby", "new_msg", json!({}))
        .await;
    assert_eq!(status, 503);
    // A new connection whose socket id cannot be subscribed is closed.
    let mut late =
        PhxClient::connect(&cluster.pods[0].url(&format!("token={}", token("43")))).await;
    assert_eq!(late.expect_close().await, Some(1001));

    cluster.redis.restart().await;

    // No client action: the pods reconnect and resubscribe every live topic,
    // the socket id included.
    delivery_resumes(&cluster, &mut [&mut a, &mut b], "restart").await;
    let mut resp = cluster.conn().await;
    resp.wait_numsub(&cluster.channel("users_socket:42"), 1)
        .await;
    resp.publish(
        &cluster.channel("users_socket:42"),
        r#"{"event":"disconnect"}"#,
    )
    .await;
    assert_eq!(user.expect_close().await, Some(1001));
    // Topics refused during the outage can be joined now.
    a.join("room:other", "4").await;
    b.heartbeat("h2").await;
    cluster.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_subscriber_connections_reconnect_and_resubscribe() {
    let mut cluster = Cluster::start(pod(), 2).await;
    let mut a = cluster.pods[0].client().await;
    let mut b = cluster.pods[1].client().await;
    a.join("room:lobby", "1").await;
    b.join("room:lobby", "1").await;
    let mut user = cluster.pods[0].client_with_token(&token("42")).await;

    let mut resp = cluster.conn().await;
    let killed: i64 = resp.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    assert_eq!(killed, 2, "one subscriber connection per pod");

    a.heartbeat("h1").await;
    b.heartbeat("h1").await;
    delivery_resumes(&cluster, &mut [&mut a, &mut b], "client-kill").await;
    resp.wait_numsub(&cluster.channel("users_socket:42"), 1)
        .await;
    user.heartbeat("h1").await;
    cluster.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_redis_delays_but_breaks_nothing() {
    let mut cluster = Cluster::start(pod(), 2).await;
    let mut a = cluster.pods[0].client().await;
    let mut b = cluster.pods[1].client().await;
    let mut c = cluster.pods[1].client().await;
    a.join("room:lobby", "1").await;
    b.join("room:lobby", "1").await;

    // Redis answers nobody for 2 s.
    let sleeper = cluster.redis.debug_sleep(2);

    let started = Instant::now();
    a.heartbeat("h1").await;
    b.heartbeat("h1").await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "heartbeats waited for Redis"
    );
    // A push gets a reply (ok once Redis answers, or an error if the publish
    // timed out first), never a hang.
    a.send(json!(["1", "2", "room:lobby", "new_msg", {"during": "sleep"}]))
        .await;
    // A join of a new topic waits for Redis to confirm, which it does in time.
    c.send(json!(["1", "1", "room:slow", "phx_join", {}])).await;
    assert_eq!(
        c.recv_within(SUBSCRIBE_BOUND).await,
        json!(["1", "1", "room:slow", "phx_reply", {"status": "ok", "response": {}}])
    );
    loop {
        let f = a.recv_within(SUBSCRIBE_BOUND).await;
        if f[3] == "phx_reply" {
            assert_eq!(f[1], "2", "{f}");
            assert!(f[4]["status"] == "ok" || f[4]["status"] == "error", "{f}");
            eprintln!("push during DEBUG SLEEP answered {}", f[4]);
            break;
        }
        assert_eq!(f[3], "new_msg", "{f}");
    }
    assert_eq!(sleeper.done(SUBSCRIBE_BOUND).await, "OK");

    // No reconnect was needed: both pods still deliver at once.
    let mut resp = cluster.conn().await;
    let after = r#"{"event":"after","payload":{}}"#;
    assert_eq!(resp.publish(&cluster.channel("room:lobby"), after).await, 2);
    // The push made during the sleep may or may not have been delivered.
    for x in [&mut a, &mut b] {
        x.recv_skipping(&broadcast("room:lobby", "after", json!({})), "new_msg")
            .await;
    }
    assert_eq!(resp.publish(&cluster.channel("room:slow"), after).await, 1);
    c.expect(broadcast("room:slow", "after", json!({}))).await;
    // And client pushes work again.
    a.send(json!(["1", "3", "room:lobby", "new_msg", {"n": 3}]))
        .await;
    b.expect(broadcast("room:lobby", "new_msg", json!({"n": 3})))
        .await;
    cluster.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_fails_joins_within_the_timeout_then_recovers() {
    let mut cluster = Cluster::start(pod(), 2).await;
    let mut a = cluster.pods[0].client().await;
    let mut b = cluster.pods[1].client().await;
    a.join("room:lobby", "1").await;
    b.join("room:lobby", "1").await;

    // SIGSTOP: connections stay open but nothing is answered.
    cluster.redis.pause();
    let started = Instant::now();
    a.heartbeat("h1").await;
    b.heartbeat("h1").await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "heartbeats waited for Redis"
    );
    let took = join_refused(&mut a, "room:stalled", "2", SUBSCRIBE_BOUND).await;
    eprintln!("join refused after {took:?} while Redis was stopped");
    a.heartbeat("h2").await;
    b.heartbeat("h2").await;
    cluster.redis.resume();

    delivery_resumes(&cluster, &mut [&mut a, &mut b], "sigcont").await;
    a.join("room:stalled", "3").await;
    cluster.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_started_without_redis_connect_when_it_comes_up() {
    let mut cluster = Cluster::with_redis_down(pod(), 2).await;
    let mut a = cluster.pods[0].client().await;
    let mut b = cluster.pods[1].client().await;
    join_refused(&mut a, "room:lobby", "1", FAST).await;
    a.heartbeat("h1").await;

    cluster.redis.restart().await;

    a.join_retrying("room:lobby", "r").await;
    b.join_retrying("room:lobby", "r").await;
    let mut resp = cluster.conn().await;
    let msg = r#"{"event":"new_msg","payload":{"body":"hi"}}"#;
    assert_eq!(resp.publish(&cluster.channel("room:lobby"), msg).await, 2);
    for c in [&mut a, &mut b] {
        c.expect(broadcast("room:lobby", "new_msg", json!({"body": "hi"})))
            .await;
    }
    cluster.assert_alive();
}
