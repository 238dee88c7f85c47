//! The seed channels of the `seeds` example, end to end over WebSocket.

#[path = "../examples/seeds/app.rs"]
#[allow(dead_code)]
mod app;
mod support;

use serde_json::json;
use support::TestServer;

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
