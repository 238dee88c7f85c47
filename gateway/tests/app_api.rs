//! The `gateway` binary's HTTP publish API (`POST /api/broadcast`) end to
//! end: bearer key, broadcasts reaching WebSocket clients, request errors,
//! `disconnect` on socket ids, and environment overrides of the config.

use gateway::config::{Config, Env};
use serde_json::{json, Value};
use test_support::http::Request;
use test_support::jwt::{hs256, hs256_with, SECRET};
use test_support::phoenix::auth_token_request;
use test_support::{PhxClient, TempDir, TestServer};

const KEY: &str = "api-key-for-tests";

fn config() -> String {
    format!(
        r#"
[api]
key = "{KEY}"

[[socket]]
path = "/socket"
socket_id = "users_socket:{{sub}}"
[socket.jwt]
secret = "{SECRET}"

[[channel]]
pattern = "room:*"
"#
    )
}

fn bearer() -> String {
    format!("Bearer {KEY}")
}

/// `POST /api/broadcast` with a JSON body and, if given, `Authorization: {auth}`.
async fn post(server: &TestServer, auth: Option<&str>, body: &str) -> (u16, String) {
    let mut req = Request::post("/api/broadcast").json(body);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let r = req.send(server.addr).await;
    (r.status, r.body)
}

async fn publish(server: &TestServer, body: &Value) -> (u16, String) {
    post(server, Some(&bearer()), &body.to_string()).await
}

#[tokio::test]
async fn bearer_key_is_required() {
    let server = TestServer::from_toml(&config()).await;
    let mut c = server.connect("/socket", None).await;
    c.join("room:lobby", "1").await;
    let body = json!({"topic": "room:lobby", "event": "new_msg", "payload": {}}).to_string();
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer api-key-for-test"),
        Some("Bearer api-key-for-testss"),
        Some("api-key-for-tests"),
        Some("Basic YXBpOmFwaS1rZXktZm9yLXRlc3Rz"),
    ] {
        let (status, _) = post(&server, auth, &body).await;
        assert_eq!(status, 401, "{auth:?}");
    }
    // Nothing was broadcast.
    c.heartbeat("h1").await;
}

#[tokio::test]
async fn broadcasts_reach_subscribers() {
    let server = TestServer::from_toml(&config()).await;
    let mut a = server.connect("/socket", None).await;
    let mut b = server.connect("/socket", None).await;
    a.join("room:lobby", "1").await;
    b.join("room:lobby", "1").await;
    b.join("room:other", "2").await;

    let msg =
        json!({"topic": "room:lobby", "event": "new_msg", "payload": {"body": "hi", "n": [1, 2]}});
    let (status, body) = publish(&server, &msg).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"ok": true})
    );
    let frame = json!([null, null, "room:lobby", "new_msg", {"body": "hi", "n": [1, 2]}]);
    a.expect(frame.clone()).await;
    b.expect(frame).await;

    // The payload defaults to {}, and any JSON value is carried as given.
    let (status, _) = publish(&server, &json!({"topic": "room:other", "event": "ping"})).await;
    assert_eq!(status, 200);
    b.expect(json!([null, null, "room:other", "ping", {}]))
        .await;
    let (status, _) = publish(
        &server,
        &json!({"topic": "room:other", "event": "list", "payload": [1, "two"]}),
    )
    .await;
    assert_eq!(status, 200);
    b.expect(json!([null, null, "room:other", "list", [1, "two"]]))
        .await;
    // `a` is not in room:other.
    a.heartbeat("h1").await;

    // Topics nobody joined are fine to publish to.
    let (status, _) = publish(&server, &json!({"topic": "room:empty", "event": "x"})).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn bad_requests_are_refused_with_400() {
    let server = TestServer::from_toml(&config()).await;
    let mut c = server.connect("/socket", None).await;
    c.join("room:lobby", "1").await;
    let long = format!("room:{}", "a".repeat(300));
    for body in [
        "not json".to_owned(),
        "{\"topic\": \"room:lobby\", \"event\": ".to_owned(),
        json!({"event": "x"}).to_string(),
        json!({"topic": "room:lobby"}).to_string(),
        json!({"topic": 5, "event": "x"}).to_string(),
        json!({"topic": "room:lobby", "event": ""}).to_string(),
        json!({"topic": "room:*", "event": "x"}).to_string(),
        json!({"topic": "room:a b", "event": "x"}).to_string(),
        json!({"topic": "", "event": "x"}).to_string(),
        json!({"topic": long, "event": "x"}).to_string(),
    ] {
        let (status, resp) = post(&server, Some(&bearer()), &body).await;
        assert_eq!(status, 400, "{body} → {resp}");
    }
    c.heartbeat("h1").await;
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_413() {
    let server = TestServer::from_toml(&config().replace("[api]", "[api]\nmax_body = 64")).await;
    let mut c = server.connect("/socket", None).await;
    c.join("room:lobby", "1").await;
    let small = json!({"topic": "room:lobby", "event": "x"});
    assert_eq!(publish(&server, &small).await.0, 200);
    c.expect(json!([null, null, "room:lobby", "x", {}])).await;
    let big = json!({"topic": "room:lobby", "event": "x", "payload": "y".repeat(100)});
    assert_eq!(publish(&server, &big).await.0, 413);
    c.heartbeat("h1").await;
}

#[tokio::test]
async fn api_is_absent_without_a_key() {
    let server = TestServer::from_toml(&config().replace(&format!("key = \"{KEY}\""), "")).await;
    let body = json!({"topic": "room:lobby", "event": "x"}).to_string();
    let (status, _) = post(&server, Some(&bearer()), &body).await;
    assert_eq!(status, 404);
    let (status, _) = post(&server, None, &body).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn disconnect_closes_every_connection_of_a_socket_id() {
    let server = TestServer::from_toml(&config()).await;
    // Two connections of user 42 (numeric and string claims name the same
    // socket id), one of user 7, one anonymous.
    let t42 = hs256(&json!({"sub": 42}));
    let t42s = hs256(&json!({"sub": "42"}));
    let t7 = hs256(&json!({"sub": 7}));
    let mut u42a = server.connect("/socket", Some(&t42)).await;
    let req = auth_token_request(&server.ws_url("/socket", ""), &t42s);
    let (mut u42b, _) = PhxClient::try_connect(req).await.unwrap();
    let mut u7 = server.connect("/socket", Some(&t7)).await;
    let mut anon = server.connect("/socket", None).await;
    for c in [&mut u42a, &mut u42b, &mut u7, &mut anon] {
        c.join("room:lobby", "1").await;
    }

    let (status, body) = publish(
        &server,
        &json!({"topic": "users_socket:42", "event": "disconnect"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(u42a.expect_close().await, Some(1001));
    assert_eq!(u42b.expect_close().await, Some(1001));
    // The others were not touched and still receive broadcasts.
    u7.heartbeat("h1").await;
    anon.heartbeat("h1").await;
    let (status, _) = publish(&server, &json!({"topic": "room:lobby", "event": "after"})).await;
    assert_eq!(status, 200);
    u7.expect(json!([null, null, "room:lobby", "after", {}]))
        .await;
    anon.expect(json!([null, null, "room:lobby", "after", {}]))
        .await;

    // Other events on a socket id close nothing.
    let (status, _) = publish(
        &server,
        &json!({"topic": "users_socket:7", "event": "hello"}),
    )
    .await;
    assert_eq!(status, 200);
    u7.heartbeat("h2").await;
}

#[tokio::test]
async fn environment_overrides_key_and_secret() {
    let dir = TempDir::new("env");
    let path = dir.write(
        "gateway.toml",
        r#"
[[socket]]
path = "/socket"
require_token = true
[socket.jwt]
secret = "from-the-file-0123456789abcdef0123456789"

[[channel]]
pattern = "user:{sub}"
policy = "token"
"#,
    );
    let env = Env::from_pairs([
        ("GATEWAY_API_KEY", "key-from-env"),
        (
            "GATEWAY_JWT_SECRET",
            "secret-from-env-0123456789abcdef0123456789",
        ),
    ]);
    let config = Config::load(Some(&path), &env).unwrap();
    let server = TestServer::from_config(&config).await;

    let from_file = hs256_with(
        "from-the-file-0123456789abcdef0123456789",
        &json!({"sub": "a"}),
    );
    assert_eq!(server.refused("/socket", Some(&from_file)).await, 403);
    let token = hs256_with(
        "secret-from-env-0123456789abcdef0123456789",
        &json!({"sub": "a"}),
    );
    let mut c = server.connect("/socket", Some(&token)).await;
    c.join("user:a", "1").await;

    let body = json!({"topic": "user:a", "event": "note", "payload": {"k": 1}}).to_string();
    let (status, _) = post(&server, Some("Bearer key-from-env"), &body).await;
    assert_eq!(status, 200);
    c.expect(json!([null, null, "user:a", "note", {"k": 1}]))
        .await;
}

#[tokio::test]
async fn anonymous_connections_cannot_take_a_socket_id_by_refresh() {
    // A socket id is fixed at connect: `disconnect` on users_socket:42 must
    // reach every connection acting as user 42, so an anonymous connection
    // may not become user 42 by pushing `access_token`.
    let server = TestServer::from_toml(&config()).await;
    let mut anon = server.connect("/socket", None).await;
    anon.join("room:lobby", "1").await;
    let t42 = hs256(&json!({"sub": 42}));
    anon.send(json!(["1", "2", "room:lobby", "access_token", {"access_token": t42}]))
        .await;
    let got = anon.recv().await;
    assert_eq!(got[1], "2", "{got}");
    assert_eq!(got[4]["status"], "error", "{got}");
    let (status, _) = publish(
        &server,
        &json!({"topic": "users_socket:42", "event": "disconnect"}),
    )
    .await;
    assert_eq!(status, 200);
    anon.heartbeat("h1").await;
}
