//! The conformance vectors of the Phoenix protocol spec (1–28; the long-poll
//! vectors 29–33 are in tests/longpoll.rs), replayed over WebSocket
//! against the spec's `RoomChannel` fixture (`test_support::room`).
//!
//! Every vector runs on both serializers: as written (V2 arrays), and as V1
//! objects, where the server must answer `{"topic","event","payload","ref"}`
//! without a join_ref. Binary frames (vector 24) exist on V2 only; on V1 a
//! binary frame closes the connection.
//!
//! Vectors expecting no frame ("S -") are checked without sleeping: a ping on
//! the same channel follows, and its reply must be the very next frame
//! (channel tasks handle their inbox in order), or a heartbeat when the
//! socket itself drops the message.

use async_trait::async_trait;
use gateway::protocol::Vsn;
use gateway::pubsub::Broadcast;
use gateway::{Assigns, ConnectError, ConnectInfo, Params, Payload, SocketConfig, SocketHandler};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::sync::Arc;
use test_support::phoenix::header_request;
use test_support::wire::{v1_in, v1_out};
use test_support::{room, PhxClient, Received, TestServer, Wire};

/// Runs `$name(vsn)` as two tests, `$name::v1` and `$name::v2`.
macro_rules! both_serializers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn v1() {
                super::$name(gateway::protocol::Vsn::V1).await
            }
            #[tokio::test]
            async fn v2() {
                super::$name(gateway::protocol::Vsn::V2).await
            }
        }
    )*};
}

both_serializers!(
    v01_heartbeat,
    v02_heartbeat_ignores_join_ref,
    v03_join_ok,
    v04_join_ok_with_payload,
    v05_join_refused,
    v06_join_crash,
    v07_join_unrouted_topic,
    v08_push_with_reply,
    v09_push_null_join_ref,
    v10_push_stale_join_ref,
    v11_push_no_reply,
    v12_error_reply,
    v13_push_to_unjoined_topic,
    v14_server_push_and_reply,
    v15_broadcast,
    v16_leave,
    v17_leave_stale_join_ref,
    v18_leave_unjoined_topic,
    v19_stop_with_reply,
    v20_crash,
    v21_rejoin_after_crash,
    v22_duplicate_join,
    v23_channel_limit,
    v24_binary_push_and_reply,
    v25_malformed_frame,
    v26_forced_disconnect,
    v28_auth_subprotocol,
);

async fn server() -> TestServer {
    TestServer::spawn(room::endpoint()).await
}

fn ok(jr: Value, r: &str, topic: &str, response: Value) -> Value {
    json!([jr, r, topic, "phx_reply", {"status": "ok", "response": response}])
}

fn error(jr: Value, r: &str, topic: &str, response: Value) -> Value {
    json!([jr, r, topic, "phx_reply", {"status": "error", "response": response}])
}

fn unmatched(r: &str, topic: &str) -> Value {
    error(Value::Null, r, topic, json!({"reason": "unmatched topic"}))
}

async fn v01_heartbeat(vsn: Vsn) {
    let s = server().await;
    let mut c = Wire::joined(&s, vsn).await;
    c.send(json!([null, "10", "phoenix", "heartbeat", {}]))
        .await;
    c.expect(ok(Value::Null, "10", "phoenix", json!({}))).await;
}

async fn v02_heartbeat_ignores_join_ref(vsn: Vsn) {
    let s = server().await;
    let mut c = Wire::joined(&s, vsn).await;
    c.send(json!(["9", "11", "phoenix", "heartbeat", {}])).await;
    c.expect(ok(Value::Null, "11", "phoenix", json!({}))).await;
}

async fn v03_join_ok(vsn: Vsn) {
    let s = server().await;
    let mut c = Wire::connect(&s, vsn).await;
    c.send(json!(["1", "1", "room:lobby", "phx_join", {}]))
        .await;
    c.expect(ok(json!("1"), "1", "room:lobby", json!({}))).await;
}

async fn v04_join_ok_with_payload(vsn: Vsn) {
    let s = server().await;
    let mut c = Wire::connect(&s, vsn).await;
    c.send(json!(["2", "2", "room:welcome", "phx_join", {"name": "a"}]))
        .await;
    c.expect(ok(json!("2"), "2", "room:welcome", json!({"msg": "hi"})))
        .await;
}

async fn v05_join_refused(vsn: Vsn) {
    let s = server().await;
    let mut c = Wire::connect(&s, vsn).await;
    c.send(json!(["3", "3", "room:secret", "phx_join", {}]))
        .await;
    let reason = json!({"reason": "unauthorized"});
    c.expect(error(json!("3"), "3", "room:secret", reason))
        .await;
    c.send(json!(["3", "4", "room:secret", "ping", {}])).await;
    c.expect(unmatched("4", "room:secret")).await;
}

async fn v06_join_crash(vsn: Vsn) {
    let s = server().await;
    let mut c = Wire::connect(&s, vsn).await;
    c.send(json!(["5", "5", "room:boom", "phx_join", {}])).await;
    let reason = json!({"reason": "join crashed"});
    c.expect(error(json!("5"), "5", "room:boom", reason)).await;
    // The connection survives the crash.
    c.heartbeat_next("6").await;
}

async fn v07_join_unrouted_topic(vsn: Vsn) {
    let s = server().await;
    let mut c = Wire::connect(&s, vsn).await;
    c.send(json!(["6", "6", "nope:1", "phx_join", {}])).await;
    c.expect(unmatched("6", "nope:1")).await;
}

async fn v08_push_with_reply(vsn: Vsn) {
    let s = server().await;
    let mut c = Wire::joined(&s, vsn).await;
    c.send(json!(["1", "12", "room:lobby", "ping", {"x": 1}]))
        .await;
    c.expect(ok(
        json!("1"),
        "12",
        "room:lobby",
        json!({"pong": {"x": 1}}),
    ))
    .await;
}

async fn v09_push_null_join_ref(vsn: Vsn) {
    let s = server().await;
    let mut c = Wire::joined(&s, vsn).await;
    c.send(json!([null, "13", "room:lobby", "ping", {}])).await;
    c.expect(ok(json!("1"), "13", "room:lobby", json!({"pong": {}})))
        .await;
    if vsn == Vsn::V1 {
        // V1's join_ref key is optional: leaving it out means null.
        c.client
            .send(json!({"topic": "room:lobby", "event": "ping", "payload": {}, "ref": "14"}))
            .await;
        c.expect(ok(json!("1"), "14", "room:lobby", json!({"pong": {}})))
            .await;
    }
}

async fn v10_push_stale_join_ref(vsn: Vsn) {
    let s = server().await;
    let mut c = Wire::joined(&s, vsn).await;
    c.send(json!(["0", "14", "room:lobby", "ping", {}])).await;
    c.ping_next("room:lobby", "1", "15").await;
}

async fn v11_push_no_reply(vsn: Vsn) {
    let s = server().await;
    let mut c = Wire::joined(&s, vsn).await;
    c.send(json!(["1", "15", "room:lobby", "noop", {}])).await;
    c.ping_next("room:lobby", "1", "16").await;
}

async fn v12_error_reply(vsn: Vsn) {
    let s = server().await;
    let mut c = Wire::joined(&s, vsn).await;
    c.send(json!(["1", "16", "room:lobby", "fail", {}])).await;
    c.expect(error(
        json!("1"),
        "16",
        "room:lobby",
        json!({"reason": "nope"}),
    ))
    .await;
}

async fn v13_push_to_unjoined_topic(vsn: Vsn) {
    let s = server().await;
    let mut c = Wire::joined(&s, vsn).await;
    c.send(json!(["1", "17", "room:other", "ping", {}])).await;
    c.expect(unmatched("17", "room:other")).await;
}

async fn v14_server_push_and_reply(vsn: Vsn) {
    let s = server().await;
    let mut c = Wire::joined(&s, vsn).await;
    c.send(json!(["1", "18", "room:lobby", "push_me", {}]))
        .await;
    c.expect(json!(["1", null, "room:lobby", "pushed", {"n": 1}]))
        .await;
    c.expect(ok(json!("1"), "18", "room:lobby", json!({})))
        .await;
}

async fn v15_broadcast(vsn: Vsn) {
    let s = server().await;
    let mut c = Wire::joined(&s, vsn).await;
    // Subscribers on both serializers, and one that did not join.
    let mut same = Wire::joined(&s, vsn).await;
    let other_vsn = if vsn == Vsn::V1 { Vsn::V2 } else { Vsn::V1 };
    let mut other = Wire::joined(&s, other_vsn).await;
    let mut outsider = Wire::connect(&s, vsn).await;
    c.send(json!(["1", "19", "room:lobby", "shout", {"b": "hi"}]))
        .await;
    let shout = json!([null, null, "room:lobby", "shout", {"b": "hi"}]);
    c.expect(shout.clone()).await;
    c.ping_next("room:lobby", "1", "20").await; // no reply to the shout
    same.expect(shout.clone()).await;
    other.expect(shout).await;
    outsider.heartbeat_next("21").await;
}

async fn v16_leave(vsn: Vsn) {
    let s = server().await;
    let mut c = Wire::joined(&s, vsn).await;
    c.send(json!(["1", "20", "room:lobby", "phx_leave", {}]))
        .await;
    c.expect(ok(json!("1"), "20", "room:lobby", json!({})))
        .await;
    c.expect(json!(["1", "1", "room:lobby", "phx_close", {}]))
        .await;
    c.send(json!(["1", "21", "room:lobby", "ping", {}])).await;
    c.expect(unmatched("21", "room:lobby")).await;
}

async fn v17_leave_stale_join_ref(vsn: Vsn) {
    let s = server().await;
    let mut c = Wire::joined(&s, vsn).await;
    c.send(json!(["0", "21", "room:lobby", "phx_leave", {}]))
        .await;
    // Dropped: the channel stays joined and answers next.
    c.ping_next("room:lobby", "1", "22").await;
}

async fn v18_leave_unjoined_topic(vsn: Vsn) {
    let s = server().await;
    let mut c = Wire::joined(&s, vsn).await;
    c.send(json!(["7", "22", "room:x", "phx_leave", {}])).await;
    c.expect(ok(json!("7"), "22", "room:x", json!({}))).await;
}

async fn v19_stop_with_reply(vsn: Vsn) {
    let s = server().await;
    let mut c = Wire::joined(&s, vsn).await;
    c.send(json!(["1", "23", "room:lobby", "stop", {}])).await;
    c.expect(ok(json!("1"), "23", "room:lobby", json!({"bye": true})))
        .await;
    c.expect(json!(["1", "1", "room:lobby", "phx_close", {}]))
        .await;
    c.send(json!(["1", "24", "room:lobby", "ping", {}])).await;
    c.expect(unmatched("24", "room:lobby")).await;
}

/// Vector 20: `crash` kills the channel with `phx_error`, and the topic is
/// no longer joined.
async fn crash_lobby(c: &mut Wire) {
    c.send(json!(["1", "24", "room:lobby", "crash", {}])).await;
    c.expect(json!(["1", "1", "room:lobby", "phx_error", {"reason": "channel_crash"}]))
        .await;
    c.send(json!(["1", "25", "room:lobby", "ping", {}])).await;
    c.expect(unmatched("25", "room:lobby")).await;
}

async fn v20_crash(vsn: Vsn) {
    let s = server().await;
    let mut c = Wire::joined(&s, vsn).await;
    crash_lobby(&mut c).await;
}

async fn v21_rejoin_after_crash(vsn: Vsn) {
    let s = server().await;
    let mut c = Wire::joined(&s, vsn).await;
    crash_lobby(&mut c).await;
    c.send(json!(["26", "26", "room:lobby", "phx_join", {}]))
        .await;
    c.expect(ok(json!("26"), "26", "room:lobby", json!({})))
        .await;
    c.ping_next("room:lobby", "26", "27").await;
}

async fn v22_duplicate_join(vsn: Vsn) {
    let s = server().await;
    let mut c = Wire::joined(&s, vsn).await;
    c.send(json!(["27", "27", "room:lobby", "phx_join", {}]))
        .await;
    c.expect(ok(json!("27"), "27", "room:lobby", json!({})))
        .await;
    c.expect(json!(["1", "1", "room:lobby", "phx_close", {}]))
        .await;
    // The old join_ref is stale now; the new one is served.
    c.send(json!(["1", "28", "room:lobby", "ping", {}])).await;
    c.ping_next("room:lobby", "27", "29").await;
}

async fn v23_channel_limit(vsn: Vsn) {
    let s = server().await;
    let mut c = Wire::joined(&s, vsn).await;
    for i in 2..=100 {
        let (topic, jr) = (format!("room:{i}"), format!("j{i}"));
        c.send(json!([jr, jr, topic, "phx_join", {}])).await;
        c.expect(ok(json!(jr), &jr, &topic, json!({}))).await;
    }
    c.send(json!(["28", "28", "room:101", "phx_join", {}]))
        .await;
    let reason = json!({"reason": "too many channels joined"});
    c.expect(error(json!("28"), "28", "room:101", reason)).await;
    // Rejoining a joined topic is not a new channel; leaving frees a slot.
    c.send(json!(["29", "29", "room:100", "phx_join", {}]))
        .await;
    c.expect(ok(json!("29"), "29", "room:100", json!({}))).await;
    c.expect(json!(["j100", "j100", "room:100", "phx_close", {}]))
        .await;
    c.send(json!(["29", "30", "room:100", "phx_leave", {}]))
        .await;
    c.expect(ok(json!("29"), "30", "room:100", json!({}))).await;
    c.expect(json!(["29", "29", "room:100", "phx_close", {}]))
        .await;
    c.send(json!(["31", "31", "room:101", "phx_join", {}]))
        .await;
    c.expect(ok(json!("31"), "31", "room:101", json!({}))).await;
}

async fn v24_binary_push_and_reply(vsn: Vsn) {
    let s = server().await;
    let mut c = Wire::joined(&s, vsn).await;
    let mut frame = vec![0u8, 1, 2, 10, 8];
    frame.extend_from_slice(b"129room:lobbyecho_bin");
    frame.extend_from_slice(&[0xDE, 0xAD]);
    c.client.send_binary(frame).await;
    match vsn {
        Vsn::V2 => {
            let mut want = vec![1u8, 1, 2, 10, 2];
            want.extend_from_slice(b"129room:lobbyok");
            want.extend_from_slice(&[0xDE, 0xAD]);
            match c.client.next().await {
                Received::Binary(got) => assert_eq!(got, want),
                other => panic!("expected a binary reply, got {other:?}"),
            }
            c.ping_next("room:lobby", "1", "30").await;
        }
        Vsn::V1 => assert_eq!(c.client.next().await, Received::Close(Some(1007))),
    }
}

async fn v25_malformed_frame(vsn: Vsn) {
    let s = server().await;
    for bad in [r#"{"topic":"room:lobby"}"#, r#"["1","2"]"#] {
        let mut c = Wire::joined(&s, vsn).await;
        c.client.send_text(bad).await;
        let got = c.client.next().await;
        assert_eq!(got, Received::Close(Some(1007)), "{vsn:?} {bad}");
    }
    // A fresh connection is served as usual.
    let mut c = Wire::joined(&s, vsn).await;
    c.ping_next("room:lobby", "1", "2").await;
}

/// Admits everyone as user 1 and records the `authToken` it was given.
#[derive(Clone, Default)]
struct UserSocket {
    auth_token: Arc<Mutex<Option<Option<String>>>>,
}

#[async_trait]
impl SocketHandler for UserSocket {
    async fn connect(&self, _: &Params, info: &ConnectInfo) -> Result<Assigns, ConnectError> {
        *self.auth_token.lock() = Some(info.auth_token.clone());
        Ok(Assigns::new())
    }

    fn id(&self, _: &Assigns) -> Option<String> {
        Some("users_socket:1".into())
    }
}

async fn v26_forced_disconnect(vsn: Vsn) {
    let s = TestServer::spawn(room::endpoint_with(
        UserSocket::default(),
        SocketConfig::default(),
    ))
    .await;
    let mut c = Wire::joined(&s, vsn).await;
    let mut other = Wire::joined(&s, vsn).await;
    let pubsub = s.endpoint.pubsub();
    let to_socket_id = |event: &str| Broadcast {
        topic: "users_socket:1".into(),
        event: event.into(),
        payload: Payload::empty(),
        from: None,
    };
    // Other events on the socket id topic are ignored and never sent.
    pubsub.broadcast(to_socket_id("other")).await.unwrap();
    c.heartbeat_next("2").await;
    pubsub.broadcast(to_socket_id("disconnect")).await.unwrap();
    assert_eq!(c.client.next().await, Received::Close(Some(1001)));
    assert_eq!(other.client.next().await, Received::Close(Some(1001)));
    // The socket id only closes current connections.
    let mut again = Wire::joined(&s, vsn).await;
    again.ping_next("room:lobby", "1", "3").await;
}

#[tokio::test]
async fn v27_handshake_vsn() {
    let s = server().await;
    for vsn in ["3.0.0", "2.0"] {
        let status = PhxClient::refused_status(&s.url(&format!("vsn={vsn}"))).await;
        assert_eq!(status, 403, "vsn={vsn}");
    }
    // No vsn: V1 framing.
    let url = format!("ws://{}/socket/websocket", s.addr);
    let (mut c, resp) = PhxClient::try_connect(url.as_str()).await.unwrap();
    assert_eq!(resp.status().as_u16(), 101);
    let hb = json!([null, "10", "phoenix", "heartbeat", {}]);
    c.send(v1_in(&hb)).await;
    c.expect(v1_out(&ok(Value::Null, "10", "phoenix", json!({}))))
        .await;
}

async fn v28_auth_subprotocol(vsn: Vsn) {
    let handler = UserSocket::default();
    let tokens = handler.auth_token.clone();
    let s = TestServer::spawn(room::endpoint_with(handler, SocketConfig::default())).await;
    let url = s.url(&format!("vsn={}", vsn.as_str()));
    let proto = "phoenix, base64url.bearer.phx.czNjcjN0LWF1dGg";
    let req = header_request(&url, "Sec-WebSocket-Protocol", proto);
    let (client, resp) = PhxClient::try_connect(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 101);
    let proto = resp.headers().get("Sec-WebSocket-Protocol").unwrap();
    assert_eq!(proto, "phoenix");
    assert_eq!(*tokens.lock(), Some(Some("s3cr3t-auth".to_owned())));
    let mut c = Wire { client, vsn };
    c.heartbeat_next("1").await;
    // Without the header: no token, and no subprotocol selected.
    let (_, resp) = PhxClient::try_connect(url.as_str()).await.unwrap();
    assert!(resp.headers().get("Sec-WebSocket-Protocol").is_none());
    assert_eq!(*tokens.lock(), Some(None));
}
