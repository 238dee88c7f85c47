//! The per-connection push rate limit: past the burst, messages get an error
//! reply and the connection stays; after `burst` refusals in a row it is
//! closed with 1008. Heartbeats are never limited.

use gateway::{AcceptAll, PushRate, SocketConfig};
use serde_json::json;
use test_support::room::endpoint_with;
use test_support::TestServer;

#[tokio::test]
async fn over_the_rate_pushes_are_refused_then_the_connection_is_closed() {
    let config = SocketConfig {
        push_rate: Some(PushRate {
            per_second: 0.001, // no refill during the test
            burst: 3,
        }),
        ..SocketConfig::default()
    };
    let server = TestServer::spawn(endpoint_with(AcceptAll, config)).await;
    let mut c = server.v2().await;
    c.join("room:lobby", "1").await; // 1 of 3
    for r in ["2", "3"] {
        c.send(json!(["1", r, "room:lobby", "ping", {"n": r}]))
            .await;
        c.expect(json!(["1", r, "room:lobby", "phx_reply", {"status": "ok", "response": {"pong": {"n": r}}}]))
            .await;
    }
    // Heartbeats do not count.
    for r in ["h1", "h2", "h3", "h4"] {
        c.send(json!([null, r, "phoenix", "heartbeat", {}])).await;
        c.expect(json!([null, r, "phoenix", "phx_reply", {"status": "ok", "response": {}}]))
            .await;
    }
    // Over the limit: an error reply for each, the connection stays.
    for r in ["4", "5", "6"] {
        c.send(json!(["1", r, "room:lobby", "ping", {}])).await;
        c.expect(json!(["1", r, "room:lobby", "phx_reply", {"status": "error", "response": {"reason": "rate limited"}}]))
            .await;
    }
    // One more refusal in a row than the burst: closed as abuse.
    c.send(json!(["1", "7", "room:lobby", "ping", {}])).await;
    assert_eq!(c.expect_close().await, Some(1008));
}
