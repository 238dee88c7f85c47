//! The `gateway` binary's connect-time authentication, end to end over
//! WebSocket: JWTs in the `token` param and in phoenix.js 1.8's `authToken`
//! subprotocol, HS256/RS256/ES256, required claims on a second socket,
//! `check_origin`, and the binary's `--check`.

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use std::process::Command;
use test_support::jwt::{alg_none, hs256, hs256_with, keypair, now, sign, KeyKind, SECRET};
use test_support::phoenix::{auth_token_request, header_request};
use test_support::temp::repo_path;
use test_support::{reply, PhxClient, TempDir, TestServer};
use tokio_tungstenite::tungstenite::Error as WsError;

/// `/socket` requires a token; rules for rooms and users' own topics.
fn required() -> String {
    format!(
        r#"
[[socket]]
path = "/socket"
require_token = true
socket_id = "users_socket:{{sub}}"
[socket.jwt]
secret = "{SECRET}"

[[channel]]
pattern = "room:*"

[[channel]]
pattern = "user:{{sub}}"
policy = "token"
"#
    )
}

#[tokio::test]
async fn token_param_claims_become_assigns() {
    let server = TestServer::from_toml(&required()).await;
    let token = hs256(&json!({"sub": "alice", "exp": now() + 3600}));
    let mut c = server.connect("/socket", Some(&token)).await;
    c.join("user:alice", "1").await;
    c.join_refused("user:bob", "2", "unauthorized").await;
    c.join("room:lobby", "3").await;
}

#[tokio::test]
async fn auth_token_subprotocol_as_phoenix_js_sends_it() {
    let server = TestServer::from_toml(&required()).await;
    // No `token` param: the subprotocol is the only credential.
    let token = hs256(&json!({"sub": "carol"}));
    let req = auth_token_request(&server.ws_url("/socket", ""), &token);
    let (mut c, resp) = PhxClient::try_connect(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 101);
    assert_eq!(resp.headers()["sec-websocket-protocol"], "phoenix");
    c.join("user:carol", "1").await;
    c.join_refused("user:alice", "2", "unauthorized").await;

    // A bad token in the subprotocol is refused like one in the params.
    let bad = hs256_with("another-secret", &json!({"sub": "carol"}));
    let req = auth_token_request(&server.ws_url("/socket", ""), &bad);
    match PhxClient::try_connect(req).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 403),
        Err(e) => panic!("expected 403, got {e}"),
        Ok(_) => panic!("expected 403, got an upgrade"),
    }
}

#[tokio::test]
async fn required_token_refuses_missing_and_invalid_tokens() {
    let server = TestServer::from_toml(&required()).await;
    let t = now();
    assert_eq!(server.refused("/socket", None).await, 403);
    assert_eq!(server.refused("/socket", Some("")).await, 403);
    assert_eq!(server.refused("/socket", Some("not-a-jwt")).await, 403);
    // Expired beyond the default 5 s leeway.
    let expired = hs256(&json!({"sub": "a", "exp": t - 60}));
    assert_eq!(server.refused("/socket", Some(&expired)).await, 403);
    // Not valid yet beyond the leeway.
    let early = hs256(&json!({"sub": "a", "nbf": t + 60}));
    assert_eq!(server.refused("/socket", Some(&early)).await, 403);
    // Signed with another secret.
    let forged = hs256_with("another-secret", &json!({"sub": "a"}));
    assert_eq!(server.refused("/socket", Some(&forged)).await, 403);
    // Unsigned.
    let none = alg_none(&json!({"sub": "a"}));
    assert_eq!(server.refused("/socket", Some(&none)).await, 403);
    // A valid signature with a different HMAC algorithm than configured.
    let hs512 = sign(
        Algorithm::HS512,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        &json!({"sub": "a"}),
    );
    assert_eq!(server.refused("/socket", Some(&hs512)).await, 403);

    // Time claims that are not NumericDates: refused, not ignored.
    for claims in [
        json!({"sub": "a", "exp": "1"}),
        json!({"sub": "a", "exp": -1}),
        json!({"sub": "a", "exp": null}),
        json!({"sub": "a", "exp": true}),
        json!({"sub": "a", "nbf": (t + 3600).to_string()}),
        json!({"sub": "a", "nbf": -5}),
    ] {
        let token = hs256(&claims);
        assert_eq!(
            server.refused("/socket", Some(&token)).await,
            403,
            "{claims}"
        );
    }

    // An `exp` far beyond what the clock can represent is not a crash.
    let forever = hs256(&json!({"sub": "far", "exp": u64::MAX}));
    let mut c = server.connect("/socket", Some(&forever)).await;
    c.join("user:far", "1").await;
    c.heartbeat("h1").await;

    // Within the leeway, both are accepted.
    let just_expired = hs256(&json!({"sub": "a", "exp": t - 1}));
    let mut c = server.connect("/socket", Some(&just_expired)).await;
    c.join("user:a", "1").await;
    let almost = hs256(&json!({"sub": "b", "nbf": t + 1}));
    let mut c = server.connect("/socket", Some(&almost)).await;
    c.join("user:b", "1").await;
}

#[tokio::test]
async fn rs256_and_es256_public_keys() {
    let dir = TempDir::new("keys");
    let rsa = keypair(&dir, "rsa", KeyKind::Rsa);
    let rsa_other = keypair(&dir, "rsa-other", KeyKind::Rsa);
    let ec = keypair(&dir, "ec", KeyKind::Ec);
    let ec_other = keypair(&dir, "ec-other", KeyKind::Ec);
    let toml = format!(
        r#"
[[socket]]
path = "/rsa"
require_token = true
[socket.jwt]
algorithm = "RS256"
public_key_file = "{}"

[[socket]]
path = "/ec"
require_token = true
[socket.jwt]
algorithm = "ES256"
public_key_file = "{}"

[[channel]]
pattern = "user:{{sub}}"
policy = "token"
"#,
        rsa.public_pem.display(),
        ec.public_pem.display()
    );
    let server = TestServer::from_toml(&toml).await;
    let claims = json!({"sub": "kim", "exp": now() + 3600});

    let good = sign(Algorithm::RS256, &rsa.private, &claims);
    let mut c = server.connect("/rsa", Some(&good)).await;
    c.join("user:kim", "1").await;
    let other = sign(Algorithm::RS256, &rsa_other.private, &claims);
    assert_eq!(server.refused("/rsa", Some(&other)).await, 403);

    let good = sign(Algorithm::ES256, &ec.private, &claims);
    let mut c = server.connect("/ec", Some(&good)).await;
    c.join("user:kim", "1").await;
    let other = sign(Algorithm::ES256, &ec_other.private, &claims);
    assert_eq!(server.refused("/ec", Some(&other)).await, 403);

    // Keys and algorithms do not cross over, and HS256 is not accepted by
    // a public-key socket (no algorithm confusion).
    let es_on_rsa = sign(Algorithm::ES256, &ec.private, &claims);
    assert_eq!(server.refused("/rsa", Some(&es_on_rsa)).await, 403);
    let rs_on_ec = sign(Algorithm::RS256, &rsa.private, &claims);
    assert_eq!(server.refused("/ec", Some(&rs_on_ec)).await, 403);
    let pem = std::fs::read(&rsa.public_pem).unwrap();
    let confused = sign(Algorithm::HS256, &EncodingKey::from_secret(&pem), &claims);
    assert_eq!(server.refused("/rsa", Some(&confused)).await, 403);
    assert_eq!(server.refused("/rsa", None).await, 403);
}

/// `/socket` with optional tokens.
fn optional() -> String {
    format!(
        r#"
[[socket]]
path = "/socket"
require_token = false
[socket.jwt]
secret = "{SECRET}"

[[channel]]
pattern = "room:*"

[[channel]]
pattern = "private:*"
policy = "token"

[[channel]]
pattern = "user:{{sub}}"
policy = "token"
"#
    )
}

#[tokio::test]
async fn optional_token_admits_anonymous_but_not_invalid_tokens() {
    let server = TestServer::from_toml(&optional()).await;
    let mut anon = server.connect("/socket", None).await;
    anon.join("room:lobby", "1").await;
    anon.join_refused("private:x", "2", "unauthorized").await;
    anon.join_refused("user:alice", "3", "unauthorized").await;

    let forged = hs256_with("another-secret", &json!({"sub": "alice"}));
    assert_eq!(server.refused("/socket", Some(&forged)).await, 403);
    let expired = hs256(&json!({"sub": "alice", "exp": now() - 60}));
    assert_eq!(server.refused("/socket", Some(&expired)).await, 403);
    let none = alg_none(&json!({"sub": "alice"}));
    assert_eq!(server.refused("/socket", Some(&none)).await, 403);

    let token = hs256(&json!({"sub": "alice"}));
    let mut c = server.connect("/socket", Some(&token)).await;
    c.join("private:x", "1").await;
    c.join("user:alice", "2").await;
}

/// A user socket and an admin socket that requires `admin = true`.
fn two_sockets(claims_table: &str) -> String {
    format!(
        r#"
[[socket]]
path = "/socket"
require_token = true
[socket.jwt]
secret = "{SECRET}"

[[socket]]
path = "/admin/socket"
require_token = true
{claims_table}
[socket.jwt]
secret = "{SECRET}"

[[channel]]
pattern = "room:*"

[[channel]]
pattern = "admin:*"
policy = "token"
sockets = ["/admin/socket"]
"#
    )
}

#[tokio::test]
async fn admin_socket_requires_claims_and_owns_its_rules() {
    let server = TestServer::from_toml(&two_sockets("[socket.require_claims]\nadmin = true")).await;
    let user = hs256(&json!({"sub": "u1"}));
    let not_admin = hs256(&json!({"sub": "u2", "admin": false}));
    let stringly = hs256(&json!({"sub": "u3", "admin": "true"}));
    let admin = hs256(&json!({"sub": "root", "admin": true}));

    assert_eq!(server.refused("/admin/socket", Some(&user)).await, 403);
    assert_eq!(server.refused("/admin/socket", Some(&not_admin)).await, 403);
    assert_eq!(server.refused("/admin/socket", Some(&stringly)).await, 403);
    assert_eq!(server.refused("/admin/socket", None).await, 403);

    let mut a = server.connect("/admin/socket", Some(&admin)).await;
    a.join("admin:ops", "1").await;
    a.join("room:lobby", "2").await;

    // On the user socket, admin topics match no rule, even for an admin.
    for token in [&user, &admin] {
        let mut u = server.connect("/socket", Some(token)).await;
        u.join("room:lobby", "1").await;
        u.send(json!(["2", "2", "admin:ops", "phx_join", {}])).await;
        u.expect(reply(
            None,
            "2",
            "admin:ops",
            "error",
            json!({"reason": "unmatched topic"}),
        ))
        .await;
    }
}

#[test]
fn require_claims_inline_and_table_forms_agree() {
    use gateway::config::Config;
    let table = Config::parse(
        &two_sockets("[socket.require_claims]\nadmin = true"),
        "table",
    )
    .unwrap();
    let inline =
        Config::parse(&two_sockets("require_claims = { admin = true }"), "inline").unwrap();
    table.validate().unwrap();
    inline.validate().unwrap();
    assert!(table.sockets[0].require_claims.is_empty());
    assert_eq!(
        table.sockets[1].require_claims,
        inline.sockets[1].require_claims
    );
    assert_eq!(
        inline.sockets[1].require_claims.get("admin"),
        Some(&toml::Value::Boolean(true))
    );
}

#[tokio::test]
async fn check_origin_allows_listed_origins_only() {
    let server = TestServer::from_toml(
        r#"
[[socket]]
path = "/socket"
check_origin = ["https://example.com", "//*.example.org"]

[[channel]]
pattern = "room:*"
"#,
    )
    .await;
    let url = server.ws_url("/socket", "");
    for origin in [
        "https://evil.example",
        "http://example.com",
        "https://example.com:8443",
        "https://evilexample.org",
        "null",
    ] {
        match PhxClient::try_connect(header_request(&url, "Origin", origin)).await {
            Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 403, "{origin}"),
            Err(e) => panic!("{origin}: expected 403, got {e}"),
            Ok(_) => panic!("{origin}: expected 403, got an upgrade"),
        }
    }
    for origin in [
        "https://example.com",
        "https://a.example.org",
        "http://example.org",
    ] {
        let (mut c, _) = PhxClient::try_connect(header_request(&url, "Origin", origin))
            .await
            .unwrap_or_else(|e| panic!("{origin}: {e}"));
        c.join("room:lobby", "1").await;
    }
    // Non-browser clients send no Origin.
    let mut c = PhxClient::connect(&url).await;
    c.join("room:lobby", "1").await;
}

fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    for (var, _) in gateway::config::ENV_VARS {
        cmd.env_remove(var);
    }
    cmd
}

#[test]
fn binary_checks_configs() {
    let example = repo_path("config/example.toml");
    let out = binary()
        .arg("--config")
        .arg(&example)
        .arg("--check")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = TempDir::new("config");
    let bad = dir.write(
        "bad.toml",
        "[[socket]]\npath = \"/socket\"\nrequire_token = true\n",
    );
    let out = binary()
        .arg("--config")
        .arg(&bad)
        .arg("--check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("socket[0].jwt"), "stderr: {stderr}");

    let bad = dir.write("bad2.toml", "[server]\nlisten = \"nowhere\"\n");
    let out = binary()
        .arg("--config")
        .arg(&bad)
        .arg("--check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.listen"), "stderr: {stderr}");
}

#[tokio::test]
async fn anonymous_connection_upgrades_by_refresh_without_socket_ids() {
    // With no socket_id template there is no id to keep stable, so an
    // anonymous connection may authenticate later with `access_token`.
    let server = TestServer::from_toml(&optional()).await;
    let mut c = server.connect("/socket", None).await;
    c.join("room:lobby", "1").await;
    c.join_refused("private:x", "2", "unauthorized").await;
    let token = hs256(&json!({"sub": "alice", "exp": now() + 3600}));
    c.send(json!(["1", "3", "room:lobby", "access_token", {"access_token": token}]))
        .await;
    c.expect(reply(Some("1"), "3", "room:lobby", "ok", json!({})))
        .await;
    c.join("private:x", "4").await;
    c.join("user:alice", "5").await;
}
