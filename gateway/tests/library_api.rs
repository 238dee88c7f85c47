//! The Rust channel API: isolation of slow and panicking channels, deferred
//! replies, timers through handle_info, assigns, and terminate.

use gateway::channel::{ChannelContext, HandleIn, JoinResult, Next, ReplyRef, Terminate};
use gateway::socket::{Assigns, ConnectError, ConnectInfo, Params, SocketHandler};
use gateway::{Channel, Endpoint, Payload, Router, Socket};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use test_support::{PhxClient, TestServer};
use tokio::sync::Notify;

/// Records terminate reasons so tests can observe them.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

struct Lab {
    /// Released by the `release` event on another channel.
    gate: Arc<Notify>,
    log: Log,
    pending: Option<ReplyRef>,
}

#[derive(Debug)]
enum Info {
    Tick(u32),
    Later(ReplyRef),
}

#[async_trait::async_trait]
impl Channel for Lab {
    type Info = Info;

    async fn join(
        &mut self,
        _: &str,
        payload: Payload,
        ctx: &mut ChannelContext<Info>,
    ) -> JoinResult {
        ctx.assign("joined_with", payload.value());
        Ok(Payload::json(&json!({"user": ctx.assigns().get("user")})))
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext<Info>,
    ) -> HandleIn {
        match event {
            // Blocks this channel until another channel's `release`.
            "slow" => {
                self.gate.notified().await;
                HandleIn::ok(json!({"slow": "done"}))
            }
            "release" => {
                self.gate.notify_one();
                HandleIn::ok(Payload::empty())
            }
            "echo" => HandleIn::ok(payload),
            "assigns" => HandleIn::ok(json!({"joined_with": ctx.assigns().get("joined_with")})),
            // Deferred reply: answered from handle_info after a timer.
            "defer" => {
                let r = ctx.reply_ref().unwrap();
                ctx.send_after(Duration::from_millis(20), Info::Later(r));
                HandleIn::NoReply
            }
            "defer_outside" => {
                self.pending = ctx.reply_ref();
                HandleIn::NoReply
            }
            "answer_pending" => {
                if let Some(r) = self.pending.take() {
                    r.reply("ok", Payload::json(&json!({"late": true})));
                }
                HandleIn::ok(Payload::empty())
            }
            "ticks" => {
                ctx.send_after(Duration::from_millis(5), Info::Tick(3));
                HandleIn::ok(Payload::empty())
            }
            "from_other" => {
                ctx.broadcast_from("other", payload).await.unwrap();
                HandleIn::ok(Payload::empty())
            }
            "boom" => panic!("boom"),
            _ => HandleIn::error(json!({"reason": "unknown"})),
        }
    }

    async fn handle_info(&mut self, info: Info, ctx: &mut ChannelContext<Info>) -> Next {
        match info {
            Info::Later(r) => {
                r.reply("ok", Payload::json(&json!({"deferred": true})));
            }
            Info::Tick(0) => {}
            Info::Tick(n) => {
                ctx.push("tick", Payload::json(&json!({"n": n})));
                ctx.send_after(Duration::from_millis(5), Info::Tick(n - 1));
            }
        }
        Next::Continue
    }

    async fn terminate(&mut self, reason: Terminate, ctx: &mut ChannelContext<Info>) {
        self.log
            .0
            .lock()
            .unwrap()
            .push(format!("{}:{reason:?}", ctx.topic()));
    }
}

struct UserSocket;

#[async_trait::async_trait]
impl SocketHandler for UserSocket {
    async fn connect(&self, params: &Params, _: &ConnectInfo) -> Result<Assigns, ConnectError> {
        let user = params
            .get("user")
            .ok_or_else(|| ConnectError::forbidden("no user"))?;
        let mut a = Assigns::new();
        a.insert("user".into(), json!(user));
        Ok(a)
    }
}

async fn server(log: Log) -> TestServer {
    let gate = Arc::new(Notify::new());
    let router = Router::new().channel("lab:*", move || Lab {
        gate: gate.clone(),
        log: log.clone(),
        pending: None,
    });
    let ep = Endpoint::builder()
        .socket(Socket::new("/socket", UserSocket, router))
        .build();
    TestServer::spawn(ep).await
}

#[tokio::test]
async fn slow_handle_in_does_not_stall_other_channels() {
    let s = server(Log::default()).await;
    let mut c = PhxClient::connect(&s.url("vsn=2.0.0&user=ann")).await;
    c.join("lab:a", "1").await;
    c.join("lab:b", "2").await;
    c.send(json!(["1", "3", "lab:a", "slow", {}])).await;
    // lab:b and the socket itself answer while lab:a is stuck.
    c.send(json!(["2", "4", "lab:b", "echo", {"x": 1}])).await;
    c.expect(json!(["2", "4", "lab:b", "phx_reply", {"status": "ok", "response": {"x": 1}}]))
        .await;
    c.heartbeat("5").await;
    c.send(json!(["2", "6", "lab:b", "release", {}])).await;
    c.expect(json!(["2", "6", "lab:b", "phx_reply", {"status": "ok", "response": {}}]))
        .await;
    c.expect(
        json!(["1", "3", "lab:a", "phx_reply", {"status": "ok", "response": {"slow": "done"}}]),
    )
    .await;
}

#[tokio::test]
async fn panic_ends_only_that_channel_and_rejoin_works() {
    let log = Log::default();
    let s = server(log.clone()).await;
    let mut c = PhxClient::connect(&s.url("vsn=2.0.0&user=ann")).await;
    c.join("lab:a", "1").await;
    c.join("lab:b", "2").await;
    c.send(json!(["1", "3", "lab:a", "boom", {}])).await;
    c.expect(json!(["1", "1", "lab:a", "phx_error", {"reason": "channel_crash"}]))
        .await;
    c.send(json!(["2", "4", "lab:b", "echo", {"still": "here"}]))
        .await;
    c.expect(
        json!(["2", "4", "lab:b", "phx_reply", {"status": "ok", "response": {"still": "here"}}]),
    )
    .await;
    c.join("lab:a", "5").await;
    c.send(json!(["5", "6", "lab:a", "echo", {}])).await;
    c.expect(json!(["5", "6", "lab:a", "phx_reply", {"status": "ok", "response": {}}]))
        .await;
    // terminate is not called after a panic.
    assert!(log
        .0
        .lock()
        .unwrap()
        .iter()
        .all(|l| !l.starts_with("lab:a")));
}

#[tokio::test]
async fn deferred_replies_timers_and_assigns() {
    let s = server(Log::default()).await;
    let mut c = PhxClient::connect(&s.url("vsn=2.0.0&user=ann")).await;
    let reply = c.join_with("lab:a", "1", json!({"k": "v"})).await;
    assert_eq!(reply[4]["response"], json!({"user": "ann"}));
    c.send(json!(["1", "2", "lab:a", "assigns", {}])).await;
    c.expect(json!(["1", "2", "lab:a", "phx_reply", {"status": "ok", "response": {"joined_with": {"k": "v"}}}]))
        .await;
    c.send(json!(["1", "3", "lab:a", "defer", {}])).await;
    c.expect(
        json!(["1", "3", "lab:a", "phx_reply", {"status": "ok", "response": {"deferred": true}}]),
    )
    .await;
    c.send(json!(["1", "4", "lab:a", "defer_outside", {}]))
        .await;
    c.send(json!(["1", "5", "lab:a", "answer_pending", {}]))
        .await;
    c.expect(json!(["1", "4", "lab:a", "phx_reply", {"status": "ok", "response": {"late": true}}]))
        .await;
    c.expect(json!(["1", "5", "lab:a", "phx_reply", {"status": "ok", "response": {}}]))
        .await;
    c.send(json!(["1", "6", "lab:a", "ticks", {}])).await;
    c.expect(json!(["1", "6", "lab:a", "phx_reply", {"status": "ok", "response": {}}]))
        .await;
    for n in [3, 2, 1] {
        c.expect(json!(["1", null, "lab:a", "tick", {"n": n}]))
            .await;
    }
}

#[tokio::test]
async fn broadcast_from_skips_sender_and_terminate_sees_leave() {
    let log = Log::default();
    let s = server(log.clone()).await;
    let mut a = PhxClient::connect(&s.url("vsn=2.0.0&user=a")).await;
    let mut b = PhxClient::connect(&s.url("vsn=1.0.0&user=b")).await;
    a.join("lab:x", "1").await;
    b.send(
        json!({"topic": "lab:x", "event": "phx_join", "payload": {}, "ref": "1", "join_ref": "1"}),
    )
    .await;
    b.expect(json!({"topic": "lab:x", "event": "phx_reply", "payload": {"status": "ok", "response": {"user": "b"}}, "ref": "1"}))
        .await;
    a.send(json!(["1", "2", "lab:x", "from_other", {"hi": 1}]))
        .await;
    b.expect(json!({"topic": "lab:x", "event": "other", "payload": {"hi": 1}, "ref": null}))
        .await;
    a.expect(json!(["1", "2", "lab:x", "phx_reply", {"status": "ok", "response": {}}]))
        .await;
    a.heartbeat("3").await; // nothing else arrived before this
    a.send(json!(["1", "4", "lab:x", "phx_leave", {}])).await;
    a.expect(json!(["1", "4", "lab:x", "phx_reply", {"status": "ok", "response": {}}]))
        .await;
    a.expect(json!(["1", "1", "lab:x", "phx_close", {}])).await;
    assert!(log.0.lock().unwrap().contains(&"lab:x:Leave".to_string()));
}

#[tokio::test]
async fn refused_connect_is_403() {
    let s = server(Log::default()).await;
    assert_eq!(PhxClient::refused_status(s.url("vsn=2.0.0")).await, 403);
}

/// A channel that broadcasts what it is pushed, for the history route.
struct Chat;

#[async_trait::async_trait]
impl Channel for Chat {
    type Info = ();

    async fn join(&mut self, _: &str, _: Payload, _: &mut ChannelContext<()>) -> JoinResult {
        Ok(Payload::json(&json!({"welcome": true})))
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext<()>,
    ) -> HandleIn {
        match ctx.broadcast(event, payload).await {
            Ok(()) => HandleIn::ok(Payload::empty()),
            Err(e) => HandleIn::error(Payload::reason(e)),
        }
    }
}

/// `Router::history` in the library: broadcasts from the channel and from
/// `PubSub::publish` get positions, the join reply merges `history` into the
/// channel's own response, and a rejoin recovers.
#[tokio::test]
async fn a_route_with_history_gives_positions_and_recovers() {
    use gateway::pubsub::{Broadcast, History};
    let router = Router::new()
        .channel("chat:*", || Chat)
        .history(History::new(10, Duration::from_secs(60)));
    let ep = Endpoint::builder()
        .socket(Socket::new("/socket", UserSocket, router))
        .build();
    let pubsub = ep.pubsub().clone();
    let s = TestServer::spawn(ep).await;
    let mut c = PhxClient::connect(&s.url("vsn=2.0.0&user=ann")).await;
    let reply = c.join("chat:a", "1").await;
    let response = &reply[4]["response"];
    assert_eq!(response["welcome"], true, "{reply}");
    let top = response["history"]["position"].as_str().unwrap().to_owned();
    let (epoch, offset) = top.rsplit_once(':').unwrap();
    assert_eq!(offset, "0");
    c.send(json!(["1", "2", "chat:a", "said", {"n": 1}])).await;
    c.expect_unordered(vec![
        json!(["1", "2", "chat:a", "phx_reply", {"status": "ok", "response": {}}]),
        json!([null, format!("{epoch}:1"), "chat:a", "said", {"n": 1}]),
    ])
    .await;
    c.close().await;
    let msg = Broadcast {
        topic: "chat:a".into(),
        event: "said".into(),
        payload: Payload::json(&json!({"n": 2})),
        from: None,
    };
    let position = pubsub.publish(msg, None).await.unwrap().unwrap();
    assert_eq!(position.to_string(), format!("{epoch}:2"));
    let mut c = PhxClient::connect(&s.url("vsn=2.0.0&user=ann")).await;
    let since = format!("{epoch}:1");
    let reply = c
        .join_with("chat:a", "3", json!({"history": {"since": since}}))
        .await;
    assert_eq!(
        reply[4]["response"],
        json!({"welcome": true, "history": {"recovered": true, "position": format!("{epoch}:2")}})
    );
    c.expect(json!([null, format!("{epoch}:2"), "chat:a", "said", {"n": 2}]))
        .await;
}
