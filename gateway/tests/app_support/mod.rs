//! Helpers for the tests of the `gateway` binary's app: endpoints built from
//! TOML, JWT minting, PEM keys made with `openssl`, a hand-written HTTP/1.1
//! client and WebSocket connects to any socket path.
#![allow(dead_code, unreachable_pub)]

use crate::support::{PhxClient, TestServer, TIMEOUT};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use gateway::config::Config;
use gateway::Endpoint;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// The HS256 secret of the test configs.
pub const SECRET: &str = "test-secret-0123456789";

/// The endpoint a TOML config describes, validated as the binary does.
pub fn endpoint(toml: &str) -> Arc<Endpoint> {
    let config = Config::parse(toml, "test").unwrap();
    config.validate().unwrap();
    gateway::app::build(&config, gateway::pubsub::PubSub::memory()).unwrap()
}

/// A server for a TOML config.
pub async fn serve(toml: &str) -> TestServer {
    TestServer::spawn(endpoint(toml)).await
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The instant a JWT `exp` (seconds) stands for.
pub fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// A JWT signed with `alg` and `key`.
pub fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

/// An HS256 JWT signed with `secret`.
pub fn hs256_with(secret: &str, claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret.as_bytes()),
        claims,
    )
}

/// An HS256 JWT signed with [`SECRET`].
pub fn hs256(claims: &Value) -> String {
    hs256_with(SECRET, claims)
}

/// An unsigned `alg: none` JWT, crafted by hand.
pub fn alg_none(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "gateway-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `name` and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Key types the `openssl` CLI makes for the tests.
#[derive(Clone, Copy, Debug)]
pub enum KeyKind {
    /// RSA 2048 for RS256.
    Rsa,
    /// P-256 for ES256.
    Ec,
}

/// A private key to sign with and the PEM file of its public key.
pub struct KeyPair {
    pub private: EncodingKey,
    pub public_pem: PathBuf,
}

fn openssl(args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the openssl CLI is needed to make test keys");
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(data) = stdin {
            input.write_all(data).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Generates a PKCS#8 private key and its SPKI public key in `dir`.
pub fn keypair(dir: &TempDir, name: &str, kind: KeyKind) -> KeyPair {
    let private_pem = match kind {
        KeyKind::Rsa => openssl(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
            None,
        ),
        KeyKind::Ec => {
            let sec1 = openssl(
                &["ecparam", "-genkey", "-name", "prime256v1", "-noout"],
                None,
            );
            openssl(&["pkcs8", "-topk8", "-nocrypt"], Some(&sec1))
        }
    };
    let private_path = dir.path(&format!("{name}.key.pem"));
    std::fs::write(&private_path, &private_pem).unwrap();
    let public_pem = openssl(
        &["pkey", "-pubout", "-in", private_path.to_str().unwrap()],
        None,
    );
    let public_path = dir.path(&format!("{name}.pub.pem"));
    std::fs::write(&public_path, &public_pem).unwrap();
    let private = match kind {
        KeyKind::Rsa => EncodingKey::from_rsa_pem(&private_pem).unwrap(),
        KeyKind::Ec => EncodingKey::from_ec_pem(&private_pem).unwrap(),
    };
    KeyPair {
        private,
        public_pem: public_path,
    }
}

/// `ws://addr{path}/websocket?vsn=2.0.0` plus `extra` params.
pub fn ws_url(server: &TestServer, path: &str, extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { "&" };
    format!("ws://{}{path}/websocket?vsn=2.0.0{sep}{extra}", server.addr)
}

/// Connects to `path` with `token` (if any) in the `token` param.
pub async fn connect(server: &TestServer, path: &str, token: Option<&str>) -> PhxClient {
    PhxClient::connect(&ws_url(server, path, &token_param(token))).await
}

/// The HTTP status of a refused upgrade at `path` with `token`.
pub async fn refused(server: &TestServer, path: &str, token: Option<&str>) -> u16 {
    PhxClient::refused_status(&ws_url(server, path, &token_param(token))).await
}

fn token_param(token: Option<&str>) -> String {
    token.map(|t| format!("token={t}")).unwrap_or_default()
}

/// A handshake request to `url` carrying `token` as phoenix.js 1.8's
/// `authToken` does: `Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.…`
/// with the standard base64 of the token, `=` removed.
pub fn auth_token_request(
    url: &str,
    token: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let encoded = STANDARD.encode(token).replace('=', "");
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(&format!("phoenix, base64url.bearer.phx.{encoded}")).unwrap(),
    );
    req
}

/// A handshake request to `url` with an `Origin` header.
pub fn origin_request(
    url: &str,
    origin: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Origin", HeaderValue::from_str(origin).unwrap());
    req
}

/// `[jr, r, topic, "phx_reply", {"status": status, "response": response}]`.
pub fn reply(jr: Option<&str>, r: &str, topic: &str, status: &str, response: Value) -> Value {
    json!([jr, r, topic, "phx_reply", {"status": status, "response": response}])
}

/// Joins `topic` and returns the reply's `[status, response]` after checking
/// the reply's refs and topic.
pub async fn try_join(client: &mut PhxClient, topic: &str, jr: &str) -> (String, Value) {
    client.send(json!([jr, jr, topic, "phx_join", {}])).await;
    let got = client.recv().await;
    assert_eq!(got[1], jr, "{got}");
    assert_eq!(got[2], topic, "{got}");
    assert_eq!(got[3], "phx_reply", "{got}");
    (
        got[4]["status"].as_str().unwrap().to_owned(),
        got[4]["response"].clone(),
    )
}

/// Asserts a join is refused with `reason`; the reply echoes the join_ref.
pub async fn join_refused(client: &mut PhxClient, topic: &str, jr: &str, reason: &str) {
    client.send(json!([jr, jr, topic, "phx_join", {}])).await;
    client
        .expect(reply(
            Some(jr),
            jr,
            topic,
            "error",
            json!({"reason": reason}),
        ))
        .await;
}

/// Receives `expected.len()` frames and asserts they are `expected`, in any
/// order (frames from different tasks may interleave).
pub async fn expect_unordered(client: &mut PhxClient, expected: Vec<Value>) {
    let mut got = Vec::new();
    for _ in 0..expected.len() {
        got.push(client.recv().await);
    }
    for e in &expected {
        let i = got
            .iter()
            .position(|g| g == e)
            .unwrap_or_else(|| panic!("expected {e} among {got:?}"));
        got.remove(i);
    }
}

/// A raw HTTP/1.1 request; returns the status and the body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("HTTP connect timed out")
        .unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut buf))
        .await
        .expect("HTTP response timed out")
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (status, body.to_owned())
}

/// `POST {path}` with a JSON body and, if given, `Authorization: {auth}`.
pub async fn post(addr: SocketAddr, path: &str, auth: Option<&str>, body: &str) -> (u16, String) {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = auth {
        headers.push(("Authorization", a));
    }
    http(addr, "POST", path, &headers, body).await
}

/// A config file path next to this crate's manifest.
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}
