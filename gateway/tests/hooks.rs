//! HTTP hooks end to end (docs/hooks.md): a real `gateway` process calls a
//! hook server running in the test (hyper), which checks every signature
//! and answers per path; the Python example backend runs for real too.
//! Every outcome is checked as the client sees it and in `/metrics`.

use bytes::Bytes;
use gateway::config::Config;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use test_support::jwt::hs256;
use test_support::phoenix::header_request;
use test_support::scrape::{sample, scrape_at};
use test_support::{free_port, reply, GatewayProcess, PhxClient};
use tokio::sync::Notify;

const SECRET: &str = "hook-secret-of-the-tests";

/// A request the hook server received, signature checked.
#[derive(Debug, Clone)]
struct Seen {
    hook: String,
    body: Value,
}

/// The hook server of a test: answers by path, records what it received.
#[derive(Clone, Default)]
struct HookServer {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Wakes when a request arrives (for `/hold`).
    arrived: Arc<Notify>,
    /// Releases the requests `/hold` holds.
    release: Arc<Notify>,
}

impl HookServer {
    async fn start() -> (HookServer, SocketAddr) {
        let server = HookServer::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, hyper::Error>(s.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (server, addr)
    }

    fn seen(&self, hook: &str) -> Vec<Value> {
        let seen = self.seen.lock();
        seen.iter()
            .filter(|s| s.hook == hook)
            .map(|s| s.body.clone())
            .collect()
    }

    async fn answer(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let (hook, ts, sig) = (
            header("x-gateway-hook"),
            header("x-gateway-timestamp"),
            header("x-gateway-signature"),
        );
        assert_eq!(header("content-type"), "application/json");
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
        let signed = [ts.as_bytes(), b".", &body].concat();
        let want: String = ring::hmac::sign(&key, &signed)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(sig, format!("sha256={want}"), "signature of {path}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            now.abs_diff(ts.parse().unwrap()) < 60,
            "stale timestamp {ts}"
        );
        let body: Value = serde_json::from_slice(&body).unwrap();
        self.seen.lock().push(Seen {
            hook: hook.clone(),
            body: body.clone(),
        });
        self.arrived.notify_one();
        let answer = match path.as_str() {
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                json!({})
            }
            "/hold" => {
                self.release.notified().await;
                json!({"result": "ok", "reply": {"held": true}})
            }
            "/garbage" => return Response::new(Full::new(Bytes::from_static(b"<html>oops"))),
            _ => match hook.as_str() {
                "connect" => connect_answer(&body),
                "join" => join_answer(&body),
                _ => push_answer(&body),
            },
        };
        Response::new(Full::new(Bytes::from(answer.to_string())))
    }
}

fn connect_answer(req: &Value) -> Value {
    match req["params"]["user"].as_str() {
        Some("mallory") => json!({"result": "error", "status": 403, "reason": "banned"}),
        Some(user) => json!({
            "result": "ok",
            "assigns": {"user": user, "role": "member"},
            "socket_id": format!("users_socket:{user}"),
        }),
        None => json!({"result": "ok"}),
    }
}

fn join_answer(req: &Value) -> Value {
    let topic = req["topic"].as_str().unwrap();
    if topic.ends_with(":secret") {
        return json!({"result": "error", "reason": "not invited"});
    }
    json!({
        "result": "ok",
        "reply": {"welcome": topic, "assigns": req["assigns"]},
        "assigns": {"joined_via": "hook"},
        "presence_meta": {"role": "admin", "phx_ref": "forged"},
    })
}

fn push_answer(req: &Value) -> Value {
    match req["event"].as_str() {
        Some("echo") => json!({
            "status": "ok",
            "response": {"echoed": req["payload"], "joined_via": req["assigns"]["joined_via"]},
            "broadcasts": [{"topic": req["topic"], "event": "echoed", "payload": req["payload"]}],
        }),
        _ => json!({"status": "error", "response": {"reason": "nope"}}),
    }
}

/// Sockets and rules pointing at the hook server `h` (and at `down`, a
/// port nothing listens on): each failure has a socket (connect), a join
/// rule and a push rule of its own.
fn hooks_config(h: SocketAddr, down: u16) -> impl FnOnce(&mut Config) {
    let mut text = format!(
        r#"
[hooks]
secret = "{SECRET}"

[[socket]]
path = "/socket"
[socket.jwt]
secret = "{jwt}"
[socket.hooks]
connect = "http://{h}/connect"
headers = ["x-team"]
"#,
        jwt = test_support::jwt::SECRET
    );
    for (name, url, timeout) in [
        ("slow", format!("http://{h}/slow"), 300),
        ("garbage", format!("http://{h}/garbage"), 2000),
        ("down", format!("http://127.0.0.1:{down}/x"), 2000),
    ] {
        text += &format!(
            r#"
[[socket]]
path = "/{name}"
[socket.hooks]
connect = "{url}"
timeout_ms = {timeout}

[[channel]]
pattern = "{name}join:*"
[channel.hooks]
join = "{url}"
timeout_ms = {timeout}

[[channel]]
pattern = "{name}push:*"
events = ["echo"]
mode = "hook"
[channel.hooks]
push = "{url}"
timeout_ms = {timeout}
"#
        );
    }
    text += &format!(
        r#"
[[channel]]
pattern = "room:*"
events = ["echo", "deny"]
mode = "hook"
[channel.hooks]
join = "http://{h}/join"
push = "http://{h}/push"

[[channel]]
pattern = "quiet:*"
events = ["echo"]
mode = "hook"
include_sender = false
[channel.hooks]
push = "http://{h}/push"

[[channel]]
pattern = "lobby:*"
[channel.presence]
key_param = "name"
[channel.hooks]
join = "http://{h}/join"

[[channel]]
pattern = "hold:*"
[channel.hooks]
join = "http://{h}/hold"
timeout_ms = 10000
max_concurrency = 1
"#
    );
    let parsed = Config::parse(&text, "hooks test").unwrap();
    move |c: &mut Config| {
        c.hooks = parsed.hooks;
        c.channels = parsed.channels;
        // The test pods' socket settings (no push rate), with these hooks.
        let base = c.sockets[0].clone();
        c.sockets = parsed
            .sockets
            .into_iter()
            .map(|s| gateway::config::SocketSection {
                path: s.path,
                jwt: s.jwt,
                hooks: s.hooks,
                ..base.clone()
            })
            .collect();
    }
}

async fn start() -> (HookServer, GatewayProcess) {
    let (server, addr) = HookServer::start().await;
    let pod = GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway"))
        .configure(hooks_config(addr, free_port()))
        .start()
        .await;
    (server, pod)
}

fn socket_url(pod: &GatewayProcess, path: &str, query: &str) -> String {
    format!("ws://{}{path}/websocket?vsn=2.0.0&{query}", pod.addr)
}

/// `gateway_hook_requests_total{hook, result}`.
async fn count(pod: &GatewayProcess, hook: &str, result: &str) -> f64 {
    let text = scrape_at(pod.addr).await;
    sample(
        &text,
        "gateway_hook_requests_total",
        &[("hook", hook), ("result", result)],
    )
    .unwrap_or_else(|| panic!("no gateway_hook_requests_total{{{hook},{result}}}\n{text}"))
}

async fn push(
    c: &mut PhxClient,
    topic: &str,
    jr: &str,
    r: &str,
    event: &str,
    payload: Value,
) -> Value {
    c.send(json!([jr, r, topic, event, payload])).await;
    loop {
        let frame = c.recv().await;
        if frame[3] == "phx_reply" && frame[1] == r {
            return frame[4].clone();
        }
    }
}

#[tokio::test]
async fn connect_hook_admits_with_assigns_or_refuses() {
    let (hooks, pod) = start().await;
    // Accepted: the hook's assigns and socket id reach the join hook; only
    // whitelisted headers are forwarded.
    let req = header_request(&socket_url(&pod, "/socket", "user=alice"), "x-team", "blue");
    let (mut c, _) = PhxClient::try_connect(req).await.unwrap();
    let joined = c.join("room:1", "1").await;
    assert_eq!(
        joined[4]["response"],
        json!({"welcome": "room:1", "assigns": {
            "user": "alice", "role": "member", "socket_id": "users_socket:alice"
        }})
    );
    let connect = &hooks.seen("connect")[0];
    assert_eq!(connect["params"]["user"], "alice");
    assert_eq!(connect["headers"], json!({"x-team": "blue"}));
    assert_eq!(connect["transport"], "websocket");
    assert_eq!(connect["peer"], "127.0.0.1");
    assert_eq!(connect["claims"], Value::Null);
    assert_eq!(hooks.seen("join")[0]["socket_id"], "users_socket:alice");

    // A token's claims go to the hook; its assigns are merged over them.
    let token = hs256(&json!({"sub": "bob", "role": "guest"}));
    let mut t = PhxClient::connect(&socket_url(
        &pod,
        "/socket",
        &format!("user=bob&token={token}"),
    ))
    .await;
    let joined = t.join("room:2", "1").await;
    assert_eq!(
        joined[4]["response"]["assigns"],
        json!({"sub": "bob", "user": "bob", "role": "member", "socket_id": "users_socket:bob"})
    );
    assert_eq!(
        hooks.seen("connect")[1]["claims"],
        json!({"sub": "bob", "role": "guest"})
    );

    // Refused with the hook's status.
    let status = PhxClient::refused_status(socket_url(&pod, "/socket", "user=mallory")).await;
    assert_eq!(status, 403);
    assert_eq!(count(&pod, "connect", "ok").await, 2.0);
    assert_eq!(count(&pod, "connect", "refused").await, 1.0);
}

#[tokio::test]
async fn join_hook_replies_or_refuses_and_feeds_presence() {
    let (hooks, pod) = start().await;
    let mut c = PhxClient::connect(&socket_url(&pod, "/socket", "")).await;
    let joined = c.join_with("room:1", "1", json!({"hello": 1})).await;
    assert_eq!(joined[4]["response"]["welcome"], "room:1");
    let join = &hooks.seen("join")[0];
    assert_eq!(join["topic"], "room:1");
    assert_eq!(join["payload"], json!({"hello": 1}));
    assert!(
        join["pod"].as_str().is_some_and(|p| !p.is_empty()),
        "{join}"
    );
    c.join_refused("room:secret", "2", "not invited").await;

    // The hook's presence meta is merged, the gateway's own keys kept.
    c.join_with("lobby:1", "3", json!({"name": "alice"})).await;
    let state = c.recv().await;
    assert_eq!(state[3], "presence_state", "{state}");
    let meta = &state[4]["alice"]["metas"][0];
    assert_eq!(meta["role"], "admin", "{state}");
    assert_ne!(meta["phx_ref"], "forged", "{state}");
    assert_eq!(count(&pod, "join", "ok").await, 2.0);
    assert_eq!(count(&pod, "join", "refused").await, 1.0);
}

#[tokio::test]
async fn push_hook_replies_and_broadcasts() {
    let (hooks, pod) = start().await;
    let mut c = PhxClient::connect(&socket_url(&pod, "/socket", "user=alice")).await;
    let mut other = PhxClient::connect(&socket_url(&pod, "/socket", "user=bob")).await;
    c.join("room:1", "1").await;
    other.join("room:1", "1").await;
    let answer = push(&mut c, "room:1", "1", "2", "echo", json!({"n": 1})).await;
    assert_eq!(
        answer,
        json!({"status": "ok", "response": {"echoed": {"n": 1}, "joined_via": "hook"}})
    );
    other
        .expect(test_support::broadcast("room:1", "echoed", json!({"n": 1})))
        .await;
    let seen = &hooks.seen("push")[0];
    assert_eq!(seen["event"], "echo");
    assert_eq!(seen["assigns"]["user"], "alice");
    assert_eq!(seen["socket_id"], "users_socket:alice");

    let answer = push(&mut c, "room:1", "1", "3", "deny", json!({})).await;
    assert_eq!(
        answer,
        json!({"status": "error", "response": {"reason": "nope"}})
    );
    // Events the rule does not list never reach the hook.
    let answer = push(&mut c, "room:1", "1", "4", "other", json!({})).await;
    assert_eq!(answer["response"]["reason"], "event not allowed");
    assert_eq!(hooks.seen("push").len(), 2);
    assert_eq!(count(&pod, "push", "ok").await, 1.0);
    assert_eq!(count(&pod, "push", "refused").await, 1.0);

    // With include_sender = false the pusher does not get the hook's
    // broadcasts; the others do, and the pusher gets its reply.
    c.join("quiet:1", "5").await;
    other.join("quiet:1", "5").await;
    let own = |f: &Value| f[2] == "quiet:1" && f[3] == "echoed";
    c.send(json!(["5", "6", "quiet:1", "echo", {"n": 2}])).await;
    loop {
        let f = c.recv().await;
        assert!(!own(&f), "the pusher got its own broadcast: {f}");
        if f[3] == "phx_reply" && f[1] == "6" {
            assert_eq!(f[4]["status"], "ok");
            break;
        }
    }
    other
        .expect(test_support::broadcast(
            "quiet:1",
            "echoed",
            json!({"n": 2}),
        ))
        .await;
    // A later broadcast the pusher does get: the first would have come before it.
    c.send(json!(["1", "7", "room:1", "echo", {"n": 3}])).await;
    loop {
        let f = c.recv().await;
        assert!(!own(&f), "the pusher got its own broadcast: {f}");
        if f[2] == "room:1" && f[3] == "echoed" {
            break;
        }
    }
}

/// A hook that fails, `name` being `slow`, `garbage` or `down`: connect,
/// join and push each give the client a clear answer and count.
async fn failing_hook(name: &str, reason: &str, status: u16, label: &str) {
    let (hooks, pod) = start().await;
    let refused = PhxClient::refused_status(socket_url(&pod, &format!("/{name}"), "")).await;
    assert_eq!(refused, status, "connect to /{name}");
    let mut c = PhxClient::connect(&socket_url(&pod, "/socket", "")).await;
    c.join_refused(&format!("{name}join:1"), "1", reason).await;
    let topic = format!("{name}push:1");
    c.join(&topic, "2").await;
    let answer = push(&mut c, &topic, "2", "3", "echo", json!({})).await;
    assert_eq!(
        answer,
        json!({"status": "error", "response": {"reason": reason}})
    );
    for hook in ["connect", "join", "push"] {
        assert_eq!(count(&pod, hook, label).await, 1.0, "{hook} {label}");
    }
    let text = scrape_at(pod.addr).await;
    let took = sample(
        &text,
        "gateway_hook_duration_seconds_count",
        &[("hook", "join")],
    );
    assert_eq!(took, Some(1.0), "{text}");
    if name == "slow" {
        let sum = sample(
            &text,
            "gateway_hook_duration_seconds_sum",
            &[("hook", "join")],
        );
        assert!(sum.is_some_and(|s| (0.3..2.0).contains(&s)), "{text}");
    }
    drop(hooks);
}

#[tokio::test]
async fn hook_timeout() {
    failing_hook("slow", "timeout", 503, "timeout").await;
}

#[tokio::test]
async fn hook_answers_garbage() {
    failing_hook("garbage", "bad hook response", 502, "bad_response").await;
}

#[tokio::test]
async fn hook_server_down() {
    failing_hook("down", "hook unavailable", 503, "unavailable").await;
}

#[tokio::test]
async fn a_busy_hook_refuses_at_once() {
    let (hooks, pod) = start().await;
    let mut a = PhxClient::connect(&socket_url(&pod, "/socket", "")).await;
    let mut b = PhxClient::connect(&socket_url(&pod, "/socket", "")).await;
    a.send(json!(["1", "1", "hold:1", "phx_join", {}])).await;
    // Wait until the join's call holds the one permit (a notification
    // that came first is kept by `Notify`).
    while hooks.seen("join").is_empty() {
        tokio::time::timeout(test_support::TIMEOUT, hooks.arrived.notified())
            .await
            .unwrap();
    }
    b.join_refused("hold:2", "1", "hook busy").await;
    hooks.release.notify_one();
    a.expect(reply(Some("1"), "1", "hold:1", "ok", json!({"held": true})))
        .await;
    assert_eq!(count(&pod, "join", "busy").await, 1.0);
    assert_eq!(count(&pod, "join", "ok").await, 1.0);
}

/// The Python example backend (examples/backends/hook_server.py), run for
/// real: it verifies signatures, admits by the `user` param, authorizes
/// joins and answers pushes with a broadcast.
#[tokio::test]
async fn the_python_example_backend() {
    let port = free_port();
    let script = test_support::temp::repo_path("examples/backends/hook_server.py");
    let mut python = tokio::process::Command::new("python3")
        .arg(&script)
        .args(["--port", &port.to_string()])
        .env("GATEWAY_HOOK_SECRET", SECRET)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("python3 {}: {e}", script.display()));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    test_support::wait::until(
        "hook_server.py listening",
        test_support::START_TIMEOUT,
        || async { tokio::net::TcpStream::connect(addr).await.map(|_| ()) },
    )
    .await;
    let text = format!(
        r#"
[hooks]
secret = "{SECRET}"
[[socket]]
path = "/socket"
[socket.hooks]
connect = "http://{addr}/connect"
[[channel]]
pattern = "room:*"
events = ["shout", "whisper"]
mode = "hook"
[channel.hooks]
join = "http://{addr}/join"
push = "http://{addr}/push"
"#
    );
    let parsed = Config::parse(&text, "python example").unwrap();
    let pod = GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway"))
        .configure(move |c| {
            c.hooks = parsed.hooks;
            c.channels = parsed.channels;
            c.sockets[0].hooks = parsed.sockets[0].hooks.clone();
        })
        .start()
        .await;

    assert_eq!(PhxClient::refused_status(pod.url("")).await, 403);
    assert_eq!(PhxClient::refused_status(pod.url("user=banned")).await, 403);
    let mut alice = PhxClient::connect(&pod.url("user=alice")).await;
    let joined = alice.join("room:lobby", "1").await;
    assert_eq!(
        joined[4]["response"],
        json!({"welcome": "hello alice, this is room:lobby"})
    );
    alice.join_refused("room:admin-ops", "2", "forbidden").await;
    let mut admin = PhxClient::connect(&pod.url("user=admin")).await;
    admin.join("room:admin-ops", "1").await;
    admin.join("room:lobby", "2").await;

    let answer = push(
        &mut alice,
        "room:lobby",
        "1",
        "3",
        "shout",
        json!({"body": "hi"}),
    )
    .await;
    assert_eq!(
        answer,
        json!({"status": "ok", "response": {"shouted": true}})
    );
    admin
        .expect(test_support::broadcast(
            "room:lobby",
            "shout",
            json!({"body": "HI", "from": "alice"}),
        ))
        .await;
    let answer = push(&mut alice, "room:lobby", "1", "4", "whisper", json!({})).await;
    assert_eq!(answer["status"], "error");

    // It refuses what the gateway did not sign.
    let forged = test_support::http::Request::post("/join")
        .header("x-gateway-hook", "join")
        .header("x-gateway-timestamp", "1")
        .header("x-gateway-signature", "sha256=00")
        .json("{}")
        .send(addr)
        .await;
    assert_eq!(forged.status, 401);
    assert_eq!(count(&pod, "connect", "ok").await, 2.0);
    assert_eq!(count(&pod, "connect", "refused").await, 2.0);
    assert_eq!(count(&pod, "join", "ok").await, 3.0);
    assert_eq!(count(&pod, "join", "refused").await, 1.0);
    assert_eq!(count(&pod, "push", "ok").await, 1.0);
    assert_eq!(count(&pod, "push", "refused").await, 1.0);
    python.kill().await.unwrap();
}

/// A hook server that closes every connection after reading a request,
/// without answering, until `ok_after` connections were dropped; then it
/// answers `answer`. Returns its address and the count of connections.
async fn flaky_server(ok_after: usize, answer: Value) -> (SocketAddr, Arc<Mutex<usize>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let n = {
                let mut c = count.lock();
                *c += 1;
                *c
            };
            let body = answer.to_string();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                let _ = stream.read(&mut buf).await;
                if n > ok_after {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(body.as_bytes()).await;
                }
                // Dropped: closed (after the answer, or instead of it).
            });
        }
    });
    (addr, accepted)
}

/// connect and join are retried once when the request was sent but no
/// answer came back (the backend restarted); push, not idempotent, is not.
#[tokio::test]
async fn idempotent_hooks_are_retried_once_push_never() {
    let (join_addr, joins) = flaky_server(1, json!({"result": "ok"})).await;
    let (push_addr, pushes) = flaky_server(1, json!({"status": "ok"})).await;
    let text = format!(
        r#"
[hooks]
secret = "{SECRET}"
[[channel]]
pattern = "flaky:*"
events = ["e"]
mode = "hook"
[channel.hooks]
join = "http://{join_addr}/join"
push = "http://{push_addr}/push"
"#
    );
    let parsed = Config::parse(&text, "flaky").unwrap();
    let pod = GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway"))
        .configure(move |c| {
            c.hooks = parsed.hooks;
            c.channels = parsed.channels;
        })
        .start()
        .await;
    let mut c = PhxClient::connect(&pod.url("")).await;
    c.join("flaky:1", "1").await;
    assert_eq!(*joins.lock(), 2, "the join was retried on a new connection");
    let answer = push(&mut c, "flaky:1", "1", "2", "e", json!({})).await;
    assert_eq!(
        answer,
        json!({"status": "error", "response": {"reason": "hook unavailable"}})
    );
    assert_eq!(*pushes.lock(), 1, "a push is never retried");
    // The next push gets through on a fresh connection.
    let answer = push(&mut c, "flaky:1", "1", "3", "e", json!({})).await;
    assert_eq!(answer, json!({"status": "ok", "response": {}}));
    assert_eq!(count(&pod, "join", "ok").await, 1.0);
    assert_eq!(count(&pod, "push", "unavailable").await, 1.0);
    assert_eq!(count(&pod, "push", "ok").await, 1.0);
}
