//! The `gateway` binary's `[[channel]]` rules end to end over WebSocket: join
//! policies with claim placeholders and `topics_claim`, invalid and unmatched
//! topics, and client events broadcast with and without the sender.

use serde_json::json;
use test_support::jwt::{alg_none, at, hs256, hs256_with, now, SECRET};
use test_support::{reply, PhxClient, TestServer};

fn config() -> String {
    format!(
        r#"
[[socket]]
path = "/socket"
socket_id = "users_socket:{{sub}}"
topics_claim = "topics"
[socket.jwt]
secret = "{SECRET}"

[[channel]]
pattern = "room:*"
policy = "public"
events = ["new_msg"]
include_sender = true

[[channel]]
pattern = "quiet:*"
events = ["typing"]
include_sender = false

[[channel]]
pattern = "private:*"
policy = "token"
events = ["new_msg"]

[[channel]]
pattern = "user:{{sub}}"
policy = "token"

[[channel]]
pattern = "notifications:t-{{team}}:u-{{sub}}"
policy = "token"
"#
    )
}

#[tokio::test]
async fn join_policies_follow_claims() {
    let server = TestServer::from_toml(&config()).await;
    let token = hs256(&json!({"sub": "alice", "team": 7}));
    let mut c = server.connect("/socket", Some(&token)).await;
    c.join("room:lobby", "1").await;
    c.join("private:x", "2").await;
    c.join("user:alice", "3").await;
    c.join_refused("user:bob", "4", "unauthorized").await;
    c.join("notifications:t-7:u-alice", "5").await;
    c.join_refused("notifications:t-8:u-alice", "6", "unauthorized")
        .await;
    c.join_refused("notifications:t-7:u-bob", "7", "unauthorized")
        .await;

    // Numeric claims compare as text; a missing claim never matches.
    let numeric = hs256(&json!({"sub": 42}));
    let mut n = server.connect("/socket", Some(&numeric)).await;
    n.join("user:42", "1").await;
    n.join_refused("notifications:t-7:u-42", "2", "unauthorized")
        .await;
}

#[tokio::test]
async fn anonymous_connections_join_public_topics_only() {
    let server = TestServer::from_toml(&config()).await;
    let mut c = server.connect("/socket", None).await;
    c.join("room:lobby", "1").await;
    c.join("quiet:x", "2").await;
    c.join_refused("private:x", "3", "unauthorized").await;
    c.join_refused("user:alice", "4", "unauthorized").await;
    c.join_refused("notifications:t-7:u-alice", "5", "unauthorized")
        .await;
}

#[tokio::test]
async fn topics_claim_narrows_every_rule() {
    let server = TestServer::from_toml(&config()).await;
    let token = hs256(&json!({
        "sub": "alice",
        "topics": ["private:team-*", "room:lobby", "user:alice"]
    }));
    let mut c = server.connect("/socket", Some(&token)).await;
    c.join("private:team-a", "1").await;
    c.join("room:lobby", "2").await;
    c.join("user:alice", "3").await;
    c.join_refused("private:other", "4", "unauthorized").await;
    c.join_refused("room:other", "5", "unauthorized").await;
    // The claim narrows what rules allow; it never widens them.
    let token = hs256(&json!({"sub": "alice", "topics": ["user:*"]}));
    let mut c = server.connect("/socket", Some(&token)).await;
    c.join_refused("user:bob", "1", "unauthorized").await;
    c.join("user:alice", "2").await;
    // A claim that is not a list allows nothing.
    let token = hs256(&json!({"sub": "alice", "topics": "room:*"}));
    let mut c = server.connect("/socket", Some(&token)).await;
    c.join_refused("room:lobby", "1", "unauthorized").await;
}

#[tokio::test]
async fn unmatched_and_invalid_topics() {
    let server = TestServer::from_toml(&config()).await;
    let mut c = server.connect("/socket", None).await;
    c.send(json!(["1", "1", "nowhere:x", "phx_join", {}])).await;
    c.expect(json!([null, "1", "nowhere:x", "phx_reply",
        {"status": "error", "response": {"reason": "unmatched topic"}}]))
        .await;
    let long = format!("room:{}", "a".repeat(251));
    assert_eq!(long.len(), 256);
    for (i, topic) in [
        "room:a*",
        "room:a?",
        "room:[a]",
        "room:a b",
        "room:a\tb",
        "room:\u{a0}",
        long.as_str(),
    ]
    .into_iter()
    .enumerate()
    {
        let jr = format!("i{i}");
        c.join_refused(topic, &jr, "invalid topic").await;
    }
    // 255 bytes is still a topic.
    c.join(&format!("room:{}", "a".repeat(250)), "ok").await;
}

#[tokio::test]
async fn listed_events_broadcast_to_every_subscriber() {
    let server = TestServer::from_toml(&config()).await;
    let mut a = server.connect("/socket", None).await;
    let mut b = server.connect("/socket", None).await;
    a.join("room:lobby", "1").await;
    b.join("room:lobby", "7").await;
    a.send(json!(["1", "2", "room:lobby", "new_msg", {"body": "hi"}]))
        .await;
    let broadcast = json!([null, null, "room:lobby", "new_msg", {"body": "hi"}]);
    a.expect_unordered(vec![
        broadcast.clone(),
        reply(Some("1"), "2", "room:lobby", "ok", json!({})),
    ])
    .await;
    b.expect(broadcast).await;
    // Nothing else was sent to either.
    a.heartbeat("h1").await;
    b.heartbeat("h1").await;
}

#[tokio::test]
async fn include_sender_false_skips_the_sender() {
    let server = TestServer::from_toml(&config()).await;
    let mut a = server.connect("/socket", None).await;
    let mut b = server.connect("/socket", None).await;
    a.join("quiet:x", "1").await;
    b.join("quiet:x", "1").await;
    a.send(json!(["1", "2", "quiet:x", "typing", {"who": "a"}]))
        .await;
    a.expect(reply(Some("1"), "2", "quiet:x", "ok", json!({})))
        .await;
    b.expect(json!([null, null, "quiet:x", "typing", {"who": "a"}]))
        .await;
    // The broadcast went out before the reply; had it come back to the
    // sender, it would arrive before this heartbeat's reply.
    a.heartbeat("h1").await;
}

#[tokio::test]
async fn unlisted_events_get_an_error_reply() {
    let server = TestServer::from_toml(&config()).await;
    let token = hs256(&json!({"sub": "alice"}));
    let mut a = server.connect("/socket", Some(&token)).await;
    let mut b = server.connect("/socket", None).await;
    a.join("room:lobby", "1").await;
    b.join("room:lobby", "1").await;
    a.join("user:alice", "2").await;
    for (topic, jr, event) in [
        ("room:lobby", "1", "delete_all"),
        ("room:lobby", "1", "typing"),
        ("user:alice", "2", "new_msg"),
    ] {
        a.send(json!([jr, "9", topic, event, {}])).await;
        a.expect(reply(
            Some(jr),
            "9",
            topic,
            "error",
            json!({"reason": "event not allowed"}),
        ))
        .await;
    }
    // Nothing reached the other subscriber.
    b.heartbeat("h1").await;
    // Events on topics not joined are answered, not dropped.
    a.send(json!([null, "10", "room:other", "new_msg", {}]))
        .await;
    a.expect(reply(
        None,
        "10",
        "room:other",
        "error",
        json!({"reason": "unmatched topic"}),
    ))
    .await;
}

// Token expiry and `access_token` refresh on live connections.

/// Like [`config`] but with no clock-skew leeway, so `exp` is exact.
fn strict() -> String {
    config().replace(
        &format!("secret = \"{SECRET}\""),
        &format!("secret = \"{SECRET}\"\nleeway_secs = 0"),
    )
}

/// Asserts the connection stays open until `deadline` passes, then proves it
/// is alive with a heartbeat.
async fn open_past(c: &mut PhxClient, deadline: std::time::SystemTime, r: &str) {
    let wait = deadline
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    if let Ok(frame) = tokio::time::timeout(wait, c.next()).await {
        panic!("expected silence until the old expiry, got {frame:?}");
    }
    c.heartbeat(r).await;
}

#[tokio::test]
async fn expired_token_closes_the_connection() {
    let server = TestServer::from_toml(&strict()).await;
    let exp = now() + 3;
    let token = hs256(&json!({"sub": "alice", "exp": exp}));
    let mut c = server.connect("/socket", Some(&token)).await;
    c.join("user:alice", "1").await;
    assert_eq!(c.expect_close().await, Some(1008));
    let early = at(exp)
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        early < std::time::Duration::from_millis(100),
        "closed {early:?} before exp"
    );
}

#[tokio::test]
async fn fractional_exp_still_expires() {
    // NumericDate may be fractional (RFC 7519 §2); the verifier accepts it,
    // so the live connection must honour it too.
    let server = TestServer::from_toml(&strict()).await;
    let exp = now() + 3;
    let token = hs256(&json!({"sub": "alice", "exp": exp as f64 + 0.25}));
    let mut c = server.connect("/socket", Some(&token)).await;
    c.join("user:alice", "1").await;
    assert_eq!(c.expect_close().await, Some(1008));
}

#[tokio::test]
async fn access_token_refresh_extends_the_connection() {
    let server = TestServer::from_toml(&strict()).await;
    let exp = now() + 3;
    let token = hs256(&json!({"sub": "alice", "exp": exp}));
    let mut c = server.connect("/socket", Some(&token)).await;
    c.join("user:alice", "1").await;
    c.join("room:lobby", "2").await;
    let fresh = hs256(&json!({"sub": "alice", "exp": now() + 3600}));
    c.send(json!(["2", "3", "room:lobby", "access_token", {"access_token": fresh}]))
        .await;
    c.expect(reply(Some("2"), "3", "room:lobby", "ok", json!({})))
        .await;
    open_past(&mut c, at(exp + 1), "h1").await;
    // Both channels are still joined.
    c.send(json!(["2", "4", "room:lobby", "new_msg", {"n": 1}]))
        .await;
    c.expect_unordered(vec![
        json!([null, null, "room:lobby", "new_msg", {"n": 1}]),
        reply(Some("2"), "4", "room:lobby", "ok", json!({})),
    ])
    .await;
    c.send(json!(["1", "5", "user:alice", "ping", {}])).await;
    c.expect(reply(
        Some("1"),
        "5",
        "user:alice",
        "error",
        json!({"reason": "event not allowed"}),
    ))
    .await;
}

#[tokio::test]
async fn refresh_that_drops_a_topic_closes_that_channel_only() {
    let server = TestServer::from_toml(&strict()).await;
    let claims = |topics: &[&str]| json!({"sub": "alice", "exp": now() + 3600, "topics": topics});
    let token = hs256(&claims(&["private:a", "private:b"]));
    let mut c = server.connect("/socket", Some(&token)).await;
    c.join("private:a", "ja").await;
    c.join("private:b", "jb").await;
    let narrower = hs256(&claims(&["private:a"]));
    c.send(json!(["ja", "r1", "private:a", "access_token", {"access_token": narrower}]))
        .await;
    c.expect_unordered(vec![
        reply(Some("ja"), "r1", "private:a", "ok", json!({})),
        json!(["jb", "jb", "private:b", "phx_close", {}]),
    ])
    .await;
    c.send(json!(["ja", "r2", "private:a", "new_msg", {"x": 1}]))
        .await;
    c.expect_unordered(vec![
        json!([null, null, "private:a", "new_msg", {"x": 1}]),
        reply(Some("ja"), "r2", "private:a", "ok", json!({})),
    ])
    .await;
    c.send(json!(["jb", "r3", "private:b", "new_msg", {}]))
        .await;
    c.expect(reply(
        None,
        "r3",
        "private:b",
        "error",
        json!({"reason": "unmatched topic"}),
    ))
    .await;
    // Rejoining is refused by the new claims.
    c.join_refused("private:b", "jb2", "unauthorized").await;
}

/// Pushes `access_token` and asserts an error reply with some reason.
async fn refresh_refused(c: &mut PhxClient, jr: &str, r: &str, payload: serde_json::Value) {
    c.send(json!([jr, r, "user:alice", "access_token", payload]))
        .await;
    let got = c.recv().await;
    assert_eq!(
        &got.as_array().unwrap()[..4],
        &[json!(jr), json!(r), json!("user:alice"), json!("phx_reply")],
        "{got}"
    );
    assert_eq!(got[4]["status"], "error", "{got}");
    // Answered by the refresh, not by the channel as an unlisted event.
    let reason = got[4]["response"]["reason"].as_str().unwrap_or_default();
    assert!(!reason.is_empty() && reason != "event not allowed", "{got}");
}

#[tokio::test]
async fn invalid_refresh_is_refused_and_expiry_stands() {
    let server = TestServer::from_toml(&strict()).await;
    let exp = now() + 3;
    let token = hs256(&json!({"sub": "alice", "exp": exp}));
    let mut c = server.connect("/socket", Some(&token)).await;
    c.join("user:alice", "1").await;
    let forged = hs256_with(
        "another-secret",
        &json!({"sub": "alice", "exp": now() + 3600}),
    );
    refresh_refused(&mut c, "1", "2", json!({"access_token": forged})).await;
    refresh_refused(&mut c, "1", "3", json!({"access_token": "garbage"})).await;
    refresh_refused(&mut c, "1", "4", json!({"access_token": 5})).await;
    let expired = hs256(&json!({"sub": "alice", "exp": now() - 10}));
    refresh_refused(&mut c, "1", "5", json!({"access_token": expired})).await;
    let none = alg_none(&json!({"sub": "alice", "exp": now() + 3600}));
    refresh_refused(&mut c, "1", "6", json!({"access_token": none})).await;
    assert_eq!(c.expect_close().await, Some(1008));
}

#[tokio::test]
async fn refresh_for_another_user_is_refused() {
    let server = TestServer::from_toml(&strict()).await;
    let exp = now() + 3600;
    let token = hs256(&json!({"sub": "alice", "exp": exp}));
    let mut c = server.connect("/socket", Some(&token)).await;
    c.join("user:alice", "1").await;
    let bob = hs256(&json!({"sub": "bob", "exp": exp}));
    refresh_refused(&mut c, "1", "2", json!({"access_token": bob})).await;
    // Still alice, still joined.
    c.send(json!(["1", "3", "user:alice", "new_msg", {}])).await;
    c.expect(reply(
        Some("1"),
        "3",
        "user:alice",
        "error",
        json!({"reason": "event not allowed"}),
    ))
    .await;
    c.join_refused("user:bob", "4", "unauthorized").await;
}
