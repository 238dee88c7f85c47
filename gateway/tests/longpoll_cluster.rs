//! Long-poll without sticky sessions: real `gateway` processes sharing a real
//! `redis-server`, with every request of one session sent to a different pod
//! than the one before, as a round-robin balancer does.

use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;
use test_support::http::Request;
use test_support::jwt::token;
use test_support::longpoll::decode;
use test_support::{Cluster, GatewayBuilder, GatewayProcess, LpClient};

fn pod() -> GatewayBuilder {
    GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway"))
}

/// A `new_msg` push; the `room:*` rule broadcasts it (sender included) and
/// replies ok.
fn ping(r: u32) -> Value {
    json!(["1", r.to_string(), "room:lb", "new_msg", {"r": r}])
}

fn pong(r: u32) -> Value {
    json!(["1", r.to_string(), "room:lb", "phx_reply", {"status": "ok", "response": {}}])
}

fn echo(r: u32) -> Value {
    json!([null, null, "room:lb", "new_msg", {"r": r}])
}

/// Polls through the pods in turn until `n` messages arrived.
async fn collect(c: &mut LpClient, cluster: &Cluster, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    for round in 0.. {
        if got.len() >= n {
            break;
        }
        c.addr = cluster.pods[round % cluster.pods.len()].addr;
        let v = c.get().await;
        assert!(v["status"] == 200 || v["status"] == 204, "{v}");
        got.extend(decode(&v));
    }
    assert_eq!(got.len(), n, "{got:?}");
    got
}

/// Opens a session on pod 0 and joins `room:lb` through pod 1, reading the
/// reply through pod 2.
async fn session(cluster: &Cluster) -> LpClient {
    let mut c = LpClient::new(cluster.pods[0].addr, "vsn=2.0.0");
    c.open().await;
    c.addr = cluster.pods[1].addr;
    assert_eq!(
        c.post(&[json!(["1", "1", "room:lb", "phx_join", {}])])
            .await,
        200
    );
    c.addr = cluster.pods[2].addr;
    assert_eq!(
        c.messages(1).await,
        vec![json!(["1", "1", "room:lb", "phx_reply", {"status": "ok", "response": {}}])]
    );
    c
}

#[tokio::test]
async fn every_request_on_another_pod() {
    let cluster = Cluster::start(pod(), 3).await;
    let mut c = session(&cluster).await;

    // POSTs through each pod in turn are applied in the order sent, and
    // their replies come back in that order through whichever pod polls.
    let mut r = 2;
    for round in 0..6 {
        c.addr = cluster.pods[round % 3].addr;
        let batch: Vec<Value> = (r..r + 3).map(ping).collect();
        assert_eq!(c.post(&batch).await, 200);
        r += 3;
    }
    let got = collect(&mut c, &cluster, 36).await;
    let replies: Vec<&Value> = got.iter().filter(|m| m[3] == "phx_reply").collect();
    let echoes: Vec<&Value> = got.iter().filter(|m| m[3] == "new_msg").collect();
    assert_eq!(
        replies,
        (2..20)
            .map(pong)
            .collect::<Vec<_>>()
            .iter()
            .collect::<Vec<_>>()
    );
    assert_eq!(
        echoes,
        (2..20)
            .map(echo)
            .collect::<Vec<_>>()
            .iter()
            .collect::<Vec<_>>()
    );

    // A broadcast published with plain PUBLISH reaches the long-poll client
    // (through a relaying pod) and a WebSocket client on another pod alike.
    let mut ws = cluster.pods[1].client().await;
    ws.join("room:lb", "5").await;
    let mut resp = cluster.conn().await;
    let n = resp
        .publish(
            &cluster.channel("room:lb"),
            r#"{"event":"new_msg","payload":{"body":"to all"}}"#,
        )
        .await;
    assert!(n >= 2, "PUBLISH reached {n} pods");
    let frame = json!([null, null, "room:lb", "new_msg", {"body": "to all"}]);
    ws.expect(frame.clone()).await;
    c.addr = cluster.pods[2].addr;
    assert_eq!(c.messages(1).await, vec![frame]);
}

/// An answer lost between a relaying pod and the client is not lost: the
/// client's next GET (with the token it still has) gets the same messages
/// from the owner through yet another pod, and confirming them drops them.
#[tokio::test]
async fn relayed_answers_are_acknowledged() {
    let cluster = Cluster::start(pod(), 3).await;
    let mut c = session(&cluster).await;
    let before = c.token.clone();
    assert_eq!(c.post(&[ping(2), ping(3)]).await, 200);
    c.addr = cluster.pods[1].addr;
    let first = c.get().await;
    assert_eq!(first["status"], 200, "{first}");
    // Lost on its way: poll again with the previous token via pod 0.
    let answered = c.token.replace(before.unwrap());
    c.addr = cluster.pods[0].addr;
    let again = c.get().await;
    assert_eq!(again["messages"], first["messages"]);
    assert_eq!(c.token, answered);
    // Confirmed ones never come again: everything else arrives once.
    let seen = first["messages"].as_array().unwrap().len();
    assert_eq!(c.post(&[ping(4)]).await, 200);
    let mut all = decode(&first);
    all.extend(collect(&mut c, &cluster, 6 - seen).await);
    for r in 2..=4 {
        assert_eq!(all.iter().filter(|m| **m == pong(r)).count(), 1, "{all:?}");
        assert_eq!(all.iter().filter(|m| **m == echo(r)).count(), 1, "{all:?}");
    }
}

/// When the owner pod dies, its sessions are gone: GET and POST on the
/// survivors answer 410, and a new session works through them.
#[tokio::test]
async fn owner_gone_is_410() {
    let mut cluster = Cluster::start(pod(), 3).await;
    let mut c = session(&cluster).await;
    drop(cluster.pods.remove(0));
    c.addr = cluster.pods[0].addr;
    assert_eq!(c.post(&[ping(2)]).await, 410);
    let v = c.get().await;
    assert_eq!(v["status"], 410, "{v}");

    let mut fresh = LpClient::new(cluster.pods[1].addr, "vsn=2.0.0");
    fresh.open().await;
    fresh.addr = cluster.pods[0].addr;
    assert_eq!(
        fresh
            .post(&[json!(["1", "1", "room:lb", "phx_join", {}])])
            .await,
        200
    );
    fresh.addr = cluster.pods[1].addr;
    assert_eq!(fresh.messages(1).await.len(), 1);
}

/// `{"event":"disconnect"}` published to a socket id ends the long-poll
/// session on its owner; the client notices on its next GET, through any
/// pod, as phoenix.js expects (410).
#[tokio::test]
async fn disconnect_by_socket_id() {
    let cluster = Cluster::start(pod(), 3).await;
    let user = format!("lp-{}", std::process::id());
    let query = format!("vsn=2.0.0&token={}", token(&user));
    let mut c = LpClient::new(cluster.pods[0].addr, &query);
    c.open().await;
    c.addr = cluster.pods[1].addr;
    c.call(
        &[json!([null, "1", "phoenix", "heartbeat", {}])],
        &[json!([null, "1", "phoenix", "phx_reply", {"status": "ok", "response": {}}])],
    )
    .await;
    let mut resp = cluster.conn().await;
    let receivers = resp
        .publish(
            &cluster.channel(&format!("users_socket:{user}")),
            r#"{"event":"disconnect"}"#,
        )
        .await;
    assert_eq!(receivers, 1, "only the owner pod has the socket id");
    c.addr = cluster.pods[2].addr;
    let v = c.get().await;
    assert_eq!(v["status"], 410, "{v}");
}

/// The owner pod's id, from a session token (`base64url("v1.{pod}.…")."mac"`).
fn owner_of(token: &str) -> String {
    use base64::Engine;
    let body = token.split('.').next().unwrap();
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .unwrap();
    String::from_utf8(text)
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap()
        .to_owned()
}

/// A GET that another pod relayed to the owner and that waits there when the
/// owner dies is answered 410 within about the relay timeout (the relaying
/// pod probes the owner), not after the poll window.
#[tokio::test]
async fn owner_dies_during_a_relayed_poll() {
    let mut cluster = Cluster::start(pod(), 3).await;
    let c = session(&cluster).await;
    let owner = owner_of(c.token.as_deref().unwrap());
    let mut monitor = cluster.redis.monitor().await;

    let (addr, target) = (cluster.pods[1].addr, c.target());
    let poll = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let r = Request::get(&target)
            .send_within(addr, Duration::from_secs(30))
            .await;
        (r.json(), started.elapsed())
    });
    // The relayed GET has reached Redis (and so the owner's subscription).
    let channel = cluster.channel(&format!("lp:{owner}"));
    loop {
        let line = tokio::time::timeout(Duration::from_secs(10), monitor.next())
            .await
            .unwrap()
            .unwrap();
        if line.contains("\"PUBLISH\"") && line.contains(&channel) {
            break;
        }
    }
    drop(cluster.pods.remove(0));
    let (v, took) = poll.await.unwrap();
    assert_eq!(v["status"], 410, "{v}");
    assert!(took < Duration::from_secs(8), "410 after {took:?}");
}

/// The V1 serializer across pods: frames are encoded by the owner for its
/// session, whichever pod relays them.
#[tokio::test]
async fn v1_session_across_pods() {
    let cluster = Cluster::start(pod(), 3).await;
    let mut c = LpClient::new(cluster.pods[0].addr, "vsn=1.0.0");
    c.open().await;
    c.addr = cluster.pods[1].addr;
    let join = json!({"topic": "room:v1", "event": "phx_join", "payload": {}, "ref": "1", "join_ref": "1"});
    assert_eq!(c.post(&[join]).await, 200);
    c.addr = cluster.pods[2].addr;
    assert_eq!(
        c.messages(1).await,
        vec![json!({"topic": "room:v1", "event": "phx_reply", "ref": "1",
                    "payload": {"status": "ok", "response": {}}})]
    );
}

/// A pod's relay inbox is not a topic: a client that joins `lp:{pod}` (here
/// allowed by a catch-all rule) on another pod subscribes nothing in Redis,
/// so the relayed requests of a session on that pod never reach it.
#[tokio::test]
async fn a_pods_inbox_never_reaches_clients() {
    use gateway::config::{ChannelRule, Mode, Policy};
    let open = pod().configure(|c| {
        c.channels.push(ChannelRule {
            pattern: "lp:*".into(),
            policy: Policy::Public,
            sockets: None,
            events: Vec::new(),
            mode: Mode::Broadcast,
            include_sender: true,
            max_payload: gateway::config::DEFAULT_MAX_PAYLOAD,
            presence: None,
            history: None,
            hooks: None,
            forward: None,
            lifecycle: None,
        })
    });
    let cluster = Cluster::start(open, 3).await;
    let mut c = session(&cluster).await;
    let owner = owner_of(c.token.as_deref().unwrap());
    let inbox = cluster.channel(&format!("lp:{owner}"));
    let mut spy = cluster.pods[1].client().await;
    spy.join(&format!("lp:{owner}"), "1").await;
    // The join is answered after any Redis subscription it makes: only the
    // owner listens on its inbox.
    let mut redis = cluster.conn().await;
    assert_eq!(redis.numsub(&inbox).await, 1);
    // Requests relayed through the spy's pod cross that inbox.
    c.addr = cluster.pods[1].addr;
    assert_eq!(c.post(&[ping(1)]).await, 200);
    let got = c.messages(2).await;
    assert!(got.contains(&pong(1)) && got.contains(&echo(1)), "{got:?}");
    spy.heartbeat("h").await;
}
