//! Binary payloads across Redis, between real `gateway` processes, on one
//! `redis-server` and on a Redis Cluster (three masters, sharded pub/sub):
//! a V2 client's binary push, broadcast by its rule on pod A, reaches a V2
//! client on pod B as a Phoenix binary broadcast frame, byte for byte (and
//! the sender too, as with the in-memory broker); a backend's `PUBLISH` (or
//! `SPUBLISH`) of the binary envelope form (`{"event","binary":"<base64>"}`)
//! reaches clients the same way; a malformed one is dropped and the next
//! message delivered.
//!
//! Needs `redis-server` and `redis-cli` on PATH.

use base64::Engine;
use serde_json::json;
use test_support::redis_server::redis_cli;
use test_support::temp::prefix;
use test_support::{GatewayProcess, PhxClient, Received, RedisCluster, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_gateway");

/// Every byte value, so nothing on the way may treat the payload as text.
fn payload() -> Vec<u8> {
    (0..=255u8).chain([0, 0xff, b'"', b'\\', b'}']).collect()
}

/// A V2 binary push (spec §2.3): kind 0, the lengths of join_ref, ref,
/// topic and event, those, then the payload.
fn push_frame(jr: &str, r: &str, topic: &str, event: &str, data: &[u8]) -> Vec<u8> {
    let lens = [jr.len(), r.len(), topic.len(), event.len()].map(|n| n as u8);
    let mut f = vec![0u8];
    f.extend_from_slice(&lens);
    f.extend_from_slice(format!("{jr}{r}{topic}{event}").as_bytes());
    f.extend_from_slice(data);
    f
}

/// The V2 binary broadcast a client must receive: kind 2, the lengths of
/// topic and event, those, then the payload.
fn broadcast_frame(topic: &str, event: &str, data: &[u8]) -> Vec<u8> {
    let mut f = vec![2u8, topic.len() as u8, event.len() as u8];
    f.extend_from_slice(format!("{topic}{event}").as_bytes());
    f.extend_from_slice(data);
    f
}

/// The next frame, which must be binary.
async fn binary(c: &mut PhxClient) -> Vec<u8> {
    match c.next().await {
        Received::Binary(b) => b,
        other => panic!("expected a binary frame, got {other:?}"),
    }
}

/// A client joined to `topic` on `pod`, and its join_ref.
async fn joined(pod: &GatewayProcess, topic: &str) -> (PhxClient, String) {
    let mut c = pod.client().await;
    let jr = c.join_retrying(topic, "j").await;
    (c, jr)
}

/// Pod A's client pushes `data` in a binary frame; its rule broadcasts it.
/// The sender gets its reply and its own copy (in either order), pod B's
/// client the broadcast, byte for byte.
async fn push_crosses(a: &GatewayProcess, b: &GatewayProcess, topic: &str) {
    let (mut sender, jr) = joined(a, topic).await;
    let (mut receiver, _) = joined(b, topic).await;
    let data = payload();
    sender
        .send_binary(push_frame(&jr, "7", topic, "new_msg", &data))
        .await;
    let want = broadcast_frame(topic, "new_msg", &data);
    assert_eq!(binary(&mut receiver).await, want, "pod B's client");
    let mut got_reply = false;
    let mut got_copy = false;
    while !(got_reply && got_copy) {
        match sender.next().await {
            Received::Text(f) => {
                assert_eq!(
                    f,
                    json!([jr, "7", topic, "phx_reply", {"status": "ok", "response": {}}])
                );
                got_reply = true;
            }
            Received::Binary(f) => {
                assert_eq!(f, want, "the sender's copy");
                got_copy = true;
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_push_crosses_one_redis_server() {
    let redis = RedisServer::start().await;
    let p = prefix("bin");
    let pod = || {
        GatewayProcess::builder(BIN)
            .redis(&redis.url())
            .prefix(&p)
            .start()
    };
    let (a, b) = (pod().await, pod().await);
    push_crosses(&a, &b, "room:bin").await;

    // A backend publishes bytes with redis-cli: the binary envelope form.
    let topic = "room:backend";
    let (mut c, _) = joined(&b, topic).await;
    let data = [0xde, 0xad, 0xbe, 0xef, 0];
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let msg = format!(r#"{{"event":"frame","binary":"{b64}"}}"#);
    let out = redis_cli(redis.port(), &["PUBLISH", &b.channel(topic), &msg]).await;
    assert_eq!(out, "1");
    assert_eq!(binary(&mut c).await, broadcast_frame(topic, "frame", &data));
    // Not base64: dropped as malformed; the next message still arrives.
    redis
        .publish(&b.channel(topic), r#"{"event":"frame","binary":"%%"}"#)
        .await;
    redis
        .publish(&b.channel(topic), r#"{"event":"after","payload":{"n":1}}"#)
        .await;
    c.expect(json!([null, null, topic, "after", {"n": 1}]))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_push_crosses_a_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let p = prefix("binc");
    let pod = || {
        GatewayProcess::builder(BIN)
            .redis(&cluster.seeds())
            .cluster()
            .prefix(&p)
            .start()
    };
    let (a, b) = (pod().await, pod().await);
    push_crosses(&a, &b, "room:bin").await;

    // SPUBLISH of the binary envelope form, through the shard owning it.
    let topic = "room:backend";
    let (mut c, _) = joined(&b, topic).await;
    let data = payload();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
    let msg = format!(r#"{{"event":"frame","binary":"{b64}"}}"#);
    let channel = b.channel(topic);
    let out = redis_cli(cluster.port(0), &["-c", "SPUBLISH", &channel, &msg]).await;
    assert_eq!(out, "1");
    assert_eq!(binary(&mut c).await, broadcast_frame(topic, "frame", &data));
}
