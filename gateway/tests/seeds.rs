//! The seed channels of the `seeds` example, end to end over WebSocket.

#[path = "../examples/seeds/app.rs"]
#[allow(dead_code)]
mod app;

use serde_json::json;
use test_support::TestServer;

#[tokio::test]
async fn room_lobby_broadcasts_and_replies() {
    let server = TestServer::spawn(app::endpoint()).await;
    let (mut a, mut b) = (server.v2().await, server.v2().await);
    a.join("room:lobby", "1").await;
    b.join("room:lobby", "1").await;
    a.send(json!(["1", "2", "room:lobby", "new_msg", {"body": "hi"}]))
        .await;
    a.expect(json!([null, null, "room:lobby", "new_msg", {"body": "hi"}]))
        .await;
    a.expect(json!(["1", "2", "room:lobby", "phx_reply", {"status": "ok", "response": {}}]))
        .await;
    b.expect(json!([null, null, "room:lobby", "new_msg", {"body": "hi"}]))
        .await;
    a.send(json!(["1", "3", "room:lobby", "new_msg", {"body": 5}]))
        .await;
    a.expect(json!(["1", "3", "room:lobby", "phx_reply", {"status": "error", "response": {"reason": "invalid message"}}])).await;
    a.send(json!(["4", "4", "room:secret", "phx_join", {}]))
        .await;
    a.expect(json!(["4", "4", "room:secret", "phx_reply", {"status": "error", "response": {"reason": "unauthorized"}}])).await;
}

#[tokio::test]
async fn ping_channel_answers_stops_crashes_and_intercepts() {
    let server = TestServer::spawn(app::endpoint()).await;
    let mut c = server.v2().await;
    c.join("ping", "1").await;
    c.send(json!(["1", "2", "ping", "ping", {}])).await;
    c.expect(
        json!(["1", "2", "ping", "phx_reply", {"status": "ok", "response": {"ping": "pong"}}]),
    )
    .await;
    c.send(json!(["1", "3", "ping", "ping", {"ack_phrase": "yo"}]))
        .await;
    c.expect(json!(["1", "3", "ping", "phx_reply", {"status": "ok", "response": {"ping": "yo"}}]))
        .await;
    c.send(json!(["1", "4", "ping", "ping_hello", {}])).await;
    c.expect(
        json!(["1", "4", "ping", "phx_reply", {"status": "ok", "response": {"ping": "hello"}}]),
    )
    .await;
    // `pong` gets no reply: the next frame answers the following ping.
    c.send(json!(["1", "5", "ping", "pong", {}])).await;
    c.send(json!(["1", "6", "ping", "ping", {}])).await;
    c.expect(
        json!(["1", "6", "ping", "phx_reply", {"status": "ok", "response": {"ping": "pong"}}]),
    )
    .await;
    // The intercepted request_ping becomes send_ping with from_node.
    server
        .endpoint
        .pubsub()
        .broadcast(gateway::pubsub::Broadcast {
            topic: "ping".into(),
            event: "request_ping".into(),
            payload: gateway::Payload::json(&json!({"x": 1})),
            from: None,
        })
        .await
        .unwrap();
    let push = c.recv().await;
    assert_eq!(push[0], "1");
    assert_eq!(push[3], "send_ping");
    assert_eq!(push[4]["x"], 1);
    assert_eq!(push[4]["from_node"], server.endpoint.node());
    // Unknown events crash the channel; the client may rejoin.
    c.send(json!(["1", "7", "ping", "nope", {}])).await;
    c.expect(json!(["1", "1", "ping", "phx_error", {"reason": "channel_crash"}]))
        .await;
    c.join("ping:x", "8").await;
    c.send(json!(["8", "9", "ping:x", "ding", {}])).await;
    c.expect(json!(["8", "9", "ping:x", "phx_reply", {"status": "ok", "response": {"msg": "shutting down"}}])).await;
    c.expect(json!(["8", "8", "ping:x", "phx_close", {}])).await;
}

#[tokio::test]
async fn wild_channel_checks_its_topic() {
    let server = TestServer::spawn(app::endpoint()).await;
    let mut c = server.v2().await;
    c.join("wild:2:4", "1").await;
    c.send(json!(["1", "2", "wild:2:4", "ping", {}])).await;
    c.expect(
        json!(["1", "2", "wild:2:4", "phx_reply", {"status": "ok", "response": {"ping": "pong"}}]),
    )
    .await;
    for (i, topic) in ["wild:1:3", "wild:a:b", "wild:1", "wild:1:2:3"]
        .iter()
        .enumerate()
    {
        let r = (10 + i).to_string();
        c.send(json!([r, r, topic, "phx_join", {}])).await;
        let reply = c.recv().await;
        assert_eq!(reply[4]["status"], "error", "{topic}: {reply}");
    }
}

#[tokio::test]
async fn recurring_pushes_tokens_and_stops_with_the_channel() {
    let server = TestServer::spawn(app::endpoint_with(std::time::Duration::from_millis(20))).await;
    let mut c = server.v2().await;
    c.join("recurring", "1").await;
    let first = c.recv().await;
    let second = c.recv().await;
    assert_eq!(first[3], "new_token");
    assert_eq!(first[1], serde_json::Value::Null);
    assert_ne!(first[4]["token"], second[4]["token"]);
    c.send(json!(["1", "2", "recurring", "phx_leave", {}]))
        .await;
    // Tokens already queued may precede the reply; none may follow the close.
    loop {
        let f = c.recv().await;
        if f[3] == "phx_close" {
            break;
        }
    }
    // An absence check: five timer periods pass without a token.
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(100), c.next()).await;
    assert!(
        quiet.is_err(),
        "a token arrived after the channel closed: {quiet:?}"
    );
}
