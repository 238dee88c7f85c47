//! The long-poll transport on one pod, request by request: every row of the
//! protocol spec's §8 (first GET, poll with messages, poll timeout, POST
//! batches, 410 after the session ended, bad tokens, CORS preflight, the
//! `authToken` header) and its conformance vectors 29–33, on both
//! serializers where they differ, against the `RoomChannel` fixture.

use async_trait::async_trait;
use gateway::protocol::Vsn;
use gateway::{
    AcceptAll, Assigns, ConnectError, ConnectInfo, LongPollConfig, Params, SocketConfig,
    SocketHandler,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use test_support::http::Request;
use test_support::wait::TIMEOUT;
use test_support::wire::{v1_in, v1_out};
use test_support::{room, LpClient, TestServer};

fn lp(window_ms: u64) -> LongPollConfig {
    LongPollConfig {
        window: Duration::from_millis(window_ms),
        ..Default::default()
    }
}

async fn server_with(handler: impl SocketHandler, config: SocketConfig) -> TestServer {
    TestServer::spawn(room::endpoint_with(handler, config)).await
}

/// The fixture with long-poll on and a 10 s window (Phoenix's default).
async fn server() -> TestServer {
    server_with(
        AcceptAll,
        SocketConfig {
            longpoll: Some(lp(10_000)),
            ..Default::default()
        },
    )
    .await
}

fn join_reply(jr: &str, topic: &str) -> Value {
    json!([jr, jr, topic, "phx_reply", {"status": "ok", "response": {}}])
}

/// A session on `server` joined to `room:lobby` with jr "1".
async fn joined(server: &TestServer, vsn: Vsn) -> LpClient {
    let mut c = LpClient::new(server.addr, &format!("vsn={}", vsn.as_str()));
    c.open().await;
    let join = json!(["1", "1", "room:lobby", "phx_join", {}]);
    let (out, reply) = match vsn {
        Vsn::V1 => (v1_in(&join), v1_out(&join_reply("1", "room:lobby"))),
        Vsn::V2 => (join, join_reply("1", "room:lobby")),
    };
    c.call(&[out], &[reply]).await;
    c
}

/// Vector 29 and §8.1: the first GET opens a session, answered in the JSON
/// envelope with Phoenix's headers.
#[tokio::test]
async fn first_get_opens_a_session() {
    let s = server().await;
    let r = Request::get("/socket/longpoll?vsn=2.0.0")
        .send(s.addr)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let v = r.json();
    assert_eq!(v["status"], 410);
    assert_eq!(v["messages"], json!([]));
    assert!(v["token"].as_str().is_some_and(|t| !t.is_empty()), "{v}");
}

/// Vector 30 on both serializers: a POSTed join is answered through the
/// next GET, encoded for the session's serializer.
#[tokio::test]
async fn post_then_poll_v1_and_v2() {
    let s = server().await;
    for vsn in Vsn::ALL {
        let mut c = joined(&s, vsn).await;
        let ping = json!(["1", "2", "room:lobby", "ping", {"x": 1}]);
        let pong = json!(["1", "2", "room:lobby", "phx_reply", {"status": "ok", "response": {"pong": {"x": 1}}}]);
        match vsn {
            Vsn::V1 => c.call(&[v1_in(&ping)], &[v1_out(&pong)]).await,
            Vsn::V2 => c.call(&[ping], &[pong]).await,
        }
    }
}

/// The raw body of a poll with messages: each message is a JSON string
/// holding one encoded frame.
#[tokio::test]
async fn poll_with_messages_has_frames_as_strings() {
    let s = server().await;
    let mut c = LpClient::new(s.addr, "vsn=2.0.0");
    c.open().await;
    assert_eq!(
        c.post(&[json!(["1", "1", "room:lobby", "phx_join", {}])])
            .await,
        200
    );
    let v = c.get().await;
    assert_eq!(v["status"], 200);
    assert_eq!(
        v["messages"],
        json!([r#"["1","1","room:lobby","phx_reply",{"status":"ok","response":{}}]"#])
    );
}

/// Vector 31: nothing queued → 204 after the window, with a token.
#[tokio::test]
async fn poll_times_out_with_204() {
    let s = server_with(
        AcceptAll,
        SocketConfig {
            longpoll: Some(lp(300)),
            ..Default::default()
        },
    )
    .await;
    let mut c = LpClient::new(s.addr, "vsn=2.0.0");
    c.open().await;
    let started = Instant::now();
    let v = c.get().await;
    assert_eq!(v["status"], 204, "{v}");
    assert_eq!(v["messages"], json!([]));
    assert!(v["token"].is_string());
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// §8.4: one POST carries a batch of lines (ndjson, `\r\n` too, empty lines
/// skipped); they are applied in order.
#[tokio::test]
async fn post_batch_is_applied_in_order() {
    let s = server().await;
    let mut c = joined(&s, Vsn::V2).await;
    let body = (2..=6)
        .map(|i| json!(["1", i.to_string(), "room:lobby", "ping", {"i": i}]).to_string())
        .collect::<Vec<_>>()
        .join("\r\n")
        + "\n\n";
    assert_eq!(c.post_raw(body.as_bytes()).await, 200);
    let got = c.messages(5).await;
    for (i, m) in (2..=6).zip(&got) {
        assert_eq!(m[1], i.to_string());
        assert_eq!(m[4]["response"]["pong"]["i"], i);
    }
}

/// A heartbeat and a server push plus reply (vector 14) over long-poll.
#[tokio::test]
async fn heartbeat_and_push() {
    let s = server().await;
    let mut c = joined(&s, Vsn::V2).await;
    c.call(
        &[json!([null, "7", "phoenix", "heartbeat", {}])],
        &[json!([null, "7", "phoenix", "phx_reply", {"status": "ok", "response": {}}])],
    )
    .await;
    c.call(
        &[json!(["1", "8", "room:lobby", "push_me", {}])],
        &[
            json!(["1", null, "room:lobby", "pushed", {"n": 1}]),
            json!(["1", "8", "room:lobby", "phx_reply", {"status": "ok", "response": {}}]),
        ],
    )
    .await;
}

/// Messages stay buffered until the client confirms them: a GET with the
/// previous token (its answer was lost) gets them again, one with the new
/// token does not.
#[tokio::test]
async fn lost_poll_answers_are_sent_again() {
    let s = server().await;
    let mut c = joined(&s, Vsn::V2).await;
    let before = c.token.clone();
    assert_eq!(
        c.post(&[json!(["1", "2", "room:lobby", "ping", {}])]).await,
        200
    );
    let first = c.get().await;
    assert_eq!(first["status"], 200);
    c.token = before;
    let again = c.get().await;
    assert_eq!(again["messages"], first["messages"]);
    assert_eq!(again["token"], first["token"]);
    assert_eq!(
        c.post(&[json!(["1", "3", "room:lobby", "ping", {}])]).await,
        200
    );
    let next = c.messages(1).await;
    assert_eq!(next[0][1], "3", "{next:?}");
}

/// Broadcasts reach long-poll and WebSocket clients of one topic alike.
#[tokio::test]
async fn broadcasts_reach_longpoll_and_websocket() {
    let s = server().await;
    let mut lp = joined(&s, Vsn::V2).await;
    let mut ws = s.v2().await;
    ws.join("room:lobby", "9").await;
    ws.send(json!(["9", "10", "room:lobby", "shout", {"b": "hi"}]))
        .await;
    let frame = json!([null, null, "room:lobby", "shout", {"b": "hi"}]);
    ws.expect(frame.clone()).await;
    assert_eq!(lp.messages(1).await, vec![frame]);
}

/// Vector 32 and §8.3: a POST without a valid session is 410; a GET with a
/// garbage token opens a new session; a tampered token is refused.
#[tokio::test]
async fn bad_tokens() {
    let s = server().await;
    let garbage = LpClient {
        token: Some("garbage".into()),
        ..LpClient::new(s.addr, "vsn=2.0.0")
    };
    assert_eq!(
        garbage
            .post(&[json!([null, "1", "phoenix", "heartbeat", {}])])
            .await,
        410
    );
    let mut g = garbage;
    let v = g.get().await;
    assert_eq!(v["status"], 410);
    assert_ne!(v["token"], "garbage");

    let mut c = joined(&s, Vsn::V2).await;
    let token = c.token.clone().unwrap();
    // Flip one character of the signature, then of the signed body.
    let (body, mac) = token.split_once('.').unwrap();
    let flip = |s: &str| {
        let mut chars: Vec<char> = s.chars().collect();
        chars[2] = if chars[2] == 'A' { 'B' } else { 'A' };
        chars.into_iter().collect::<String>()
    };
    for bad in [
        format!("{body}.{}", flip(mac)),
        format!("{}.{mac}", flip(body)),
    ] {
        let forged = LpClient {
            token: Some(bad),
            ..LpClient::new(s.addr, "vsn=2.0.0")
        };
        assert_eq!(
            forged
                .post(&[json!(["1", "2", "room:lobby", "ping", {}])])
                .await,
            410
        );
    }
    // The genuine session is untouched.
    c.call(
        &[json!(["1", "3", "room:lobby", "ping", {}])],
        &[json!(["1", "3", "room:lobby", "phx_reply", {"status": "ok", "response": {"pong": {}}}])],
    )
    .await;
}

/// The session token may come in the `x-phoenix-longpoll-token` header.
#[tokio::test]
async fn token_header() {
    let s = server().await;
    let c = joined(&s, Vsn::V2).await;
    let token = c.token.clone().unwrap();
    let r = Request::post("/socket/longpoll?vsn=2.0.0")
        .header("x-phoenix-longpoll-token", &token)
        .header("content-type", "application/x-ndjson")
        .body(r#"[null,"1","phoenix","heartbeat",{}]"#)
        .send(s.addr)
        .await;
    assert_eq!(r.json(), json!({"status": 200}));
}

/// A session ends when no GET starts within its timeout; then POST and GET
/// answer 410 (the client, holding a token, starts over).
#[tokio::test]
async fn expired_session_is_gone() {
    let s = server_with(
        AcceptAll,
        SocketConfig {
            longpoll: Some(LongPollConfig {
                window: Duration::from_millis(200),
                session_timeout: Duration::from_millis(400),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let mut c = joined(&s, Vsn::V2).await;
    // POSTs do not keep a session alive; wait for the expiry through them.
    let deadline = Instant::now() + TIMEOUT;
    while c
        .post(&[json!([null, "1", "phoenix", "heartbeat", {}])])
        .await
        == 200
    {
        assert!(Instant::now() < deadline, "session never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        c.post(&[json!([null, "2", "phoenix", "heartbeat", {}])])
            .await,
        410
    );
    let v = c.get().await;
    assert_eq!(v["status"], 410, "{v}");
}

/// A session whose buffer overflows ends cleanly instead of growing.
#[tokio::test]
async fn buffer_overflow_ends_the_session() {
    let s = server_with(
        AcceptAll,
        SocketConfig {
            longpoll: Some(LongPollConfig {
                max_buffer: 4,
                ..lp(10_000)
            }),
            ..Default::default()
        },
    )
    .await;
    let mut c = joined(&s, Vsn::V2).await;
    // 100 replies come out of the channel far faster than GETs drain them.
    let pings: Vec<Value> = (2..102)
        .map(|i| json!(["1", i.to_string(), "room:lobby", "ping", {}]))
        .collect();
    let status = c.post(&pings).await;
    assert!(status == 200 || status == 410, "{status}");
    let mut received = 0;
    loop {
        let v = c.get().await;
        match v["status"].as_u64() {
            Some(410) => break,
            Some(200) => received += v["messages"].as_array().unwrap().len(),
            _ => panic!("unexpected {v}"),
        }
        assert!(
            received < 100,
            "the session kept every reply: it never overflowed"
        );
    }
}

/// A malformed line ends the session (as a malformed WebSocket frame closes
/// the connection).
#[tokio::test]
async fn malformed_line_ends_the_session() {
    let s = server().await;
    let mut c = joined(&s, Vsn::V2).await;
    assert_eq!(c.post_raw(b"[\"1\",\"2\"]").await, 410);
    assert_eq!(c.get().await["status"], 410);
}

/// §8.5: the preflight echoes the requested headers.
#[tokio::test]
async fn cors_preflight() {
    let s = server().await;
    let r = Request::new("OPTIONS", "/socket/longpoll?vsn=2.0.0")
        .header("Origin", "http://elsewhere.example")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "content-type,x-phoenix-authtoken",
        )
        .send(s.addr)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("content-type,x-phoenix-authtoken")
    );
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("get, post, options")
    );
    assert_eq!(r.header("access-control-max-age"), Some("3600"));
}

/// Admits only connections whose `authToken` is `s3cr3t-auth`.
struct NeedsAuthToken;

#[async_trait]
impl SocketHandler for NeedsAuthToken {
    async fn connect(&self, _: &Params, info: &ConnectInfo) -> Result<Assigns, ConnectError> {
        match info.auth_token.as_deref() {
            Some("s3cr3t-auth") => Ok(Assigns::new()),
            other => Err(ConnectError::forbidden(format!("auth token {other:?}"))),
        }
    }
}

/// §1.5: phoenix.js sends its `authToken` as `X-Phoenix-AuthToken` on GETs;
/// connect sees it; without it the refusal is `{"status":403}` (vector 33).
#[tokio::test]
async fn auth_token_header() {
    let s = server_with(
        NeedsAuthToken,
        SocketConfig {
            longpoll: Some(lp(10_000)),
            ..Default::default()
        },
    )
    .await;
    let path = "/socket/longpoll?vsn=2.0.0";
    let ok = Request::get(path)
        .header("X-Phoenix-AuthToken", "s3cr3t-auth")
        .send(s.addr)
        .await;
    assert_eq!(ok.json()["status"], 410);
    let refused = Request::get(path).send(s.addr).await;
    assert_eq!(refused.status, 200);
    assert_eq!(refused.json(), json!({"status": 403}));
}

/// Vector 33 and §11: a bad vsn or a refused origin is `{"status":403}`.
#[tokio::test]
async fn refused_connects() {
    let s = server_with(
        AcceptAll,
        SocketConfig {
            longpoll: Some(lp(10_000)),
            check_origin: gateway::socket::CheckOrigin::Allow(vec![
                gateway::socket::OriginRule::parse("https://good.example").unwrap(),
            ]),
            ..Default::default()
        },
    )
    .await;
    for vsn in ["3.0.0", "2.0"] {
        let path = format!("/socket/longpoll?vsn={vsn}");
        let r = Request::get(&path).send(s.addr).await;
        assert_eq!(r.json(), json!({"status": 403}), "vsn {vsn}");
    }
    for method in ["GET", "POST", "OPTIONS"] {
        let r = Request::new(method, "/socket/longpoll?vsn=2.0.0")
            .header("Origin", "https://evil.example")
            .send(s.addr)
            .await;
        assert_eq!(r.json(), json!({"status": 403}), "{method}");
    }
    let ok = Request::get("/socket/longpoll?vsn=2.0.0")
        .header("Origin", "https://good.example")
        .send(s.addr)
        .await;
    assert_eq!(ok.json()["status"], 410);
}

/// Other methods are a bare 400; a body over `max_body` is 413; a socket
/// without long-poll has no `/longpoll`.
#[tokio::test]
async fn bad_requests() {
    let s = server_with(
        AcceptAll,
        SocketConfig {
            longpoll: Some(LongPollConfig {
                max_body: 2048,
                ..lp(10_000)
            }),
            ..Default::default()
        },
    )
    .await;
    let r = Request::new("PUT", "/socket/longpoll").send(s.addr).await;
    assert_eq!(r.status, 400);
    let c = joined(&s, Vsn::V2).await;
    let r = Request::post(&c.target())
        .header("Content-Type", "application/x-ndjson")
        .body(vec![b'['; 4096])
        .send(s.addr)
        .await;
    assert_eq!(r.status, 413);

    let off = room::endpoint();
    let s = TestServer::spawn(off).await;
    let r = Request::get("/socket/longpoll?vsn=2.0.0")
        .send(s.addr)
        .await;
    assert_eq!(r.status, 404);
}
