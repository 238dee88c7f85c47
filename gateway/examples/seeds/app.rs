//! The seed channels (ping, wild, recurring, room) and the endpoint serving
//! them. Shared by the `seeds` example and its tests.

use bytes::Bytes;
use gateway::channel::{ChannelContext, HandleIn, JoinResult, Next, Router, StopReason, Terminate};
use gateway::endpoint::{Body, Endpoint, Socket};
use gateway::protocol::Refusal;
use gateway::{AcceptAll, Channel, Payload};
use http_body_util::BodyExt;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Answers `ping` in its several forms; crashes on anything it does not know,
/// as the Phoenix original does.
#[derive(Debug, Default)]
pub(crate) struct PingChannel;

fn ping_reply(event: &str, payload: &Payload) -> Option<HandleIn> {
    if event == "ping" {
        let phrase = payload.get("ack_phrase").unwrap_or_else(|| json!("pong"));
        return Some(HandleIn::ok(json!({ "ping": phrase })));
    }
    let phrase = event.strip_prefix("ping_")?;
    Some(HandleIn::ok(json!({ "ping": phrase })))
}

#[async_trait::async_trait]
impl Channel for PingChannel {
    type Info = ();

    async fn join(&mut self, _: &str, _: Payload, _: &mut ChannelContext<()>) -> JoinResult {
        Ok(Payload::empty())
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        _: &mut ChannelContext<()>,
    ) -> HandleIn {
        if let Some(reply) = ping_reply(event, &payload) {
            return reply;
        }
        match event {
            "pong" => HandleIn::NoReply,
            "ding" => HandleIn::Stop(
                StopReason::Shutdown("ding".into()),
                Some(("ok".into(), Payload::json(&json!({"msg": "shutting down"})))),
            ),
            other => panic!("ping channel has no handler for {other:?}"),
        }
    }

    fn intercept(&self) -> Vec<String> {
        vec!["request_ping".into()]
    }

    async fn handle_out(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext<()>,
    ) -> Next {
        if event == "request_ping" {
            let mut body = match payload.value() {
                serde_json::Value::Object(m) => m,
                _ => serde_json::Map::new(),
            };
            body.insert("from_node".into(), json!(ctx.node()));
            ctx.push("send_ping", Payload::json(&body));
        } else {
            ctx.push(event, payload);
        }
        Next::Continue
    }
}

/// Admits `wild:A:B` only when A and B are integers with B = 2·A.
#[derive(Debug, Default)]
pub(crate) struct WildChannel;

#[async_trait::async_trait]
impl Channel for WildChannel {
    type Info = ();

    async fn join(&mut self, topic: &str, _: Payload, _: &mut ChannelContext<()>) -> JoinResult {
        let mut parts = topic.split(':').skip(1);
        let (a, b) = (parts.next(), parts.next());
        let ok = match (
            a.map(str::parse::<i64>),
            b.map(str::parse::<i64>),
            parts.next(),
        ) {
            (Some(Ok(a)), Some(Ok(b)), None) => a.checked_mul(2) == Some(b),
            _ => false,
        };
        if ok {
            Ok(Payload::empty())
        } else {
            Err(Payload::reason("wild:A:B requires integers with B = 2*A"))
        }
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        _: &mut ChannelContext<()>,
    ) -> HandleIn {
        ping_reply(event, &payload).unwrap_or_else(|| {
            HandleIn::error(Payload::reason(format_args!("unhandled event {event}")))
        })
    }
}

/// Pushes `new_token` every `RECURRING_MS` from a timer that ends with the channel.
#[derive(Debug)]
pub(crate) struct RecurringChannel {
    every: Duration,
    count: u64,
}

impl RecurringChannel {
    /// A channel ticking every `every`.
    pub(crate) fn new(every: Duration) -> Self {
        RecurringChannel { every, count: 0 }
    }
}

/// The timer message of [`RecurringChannel`].
#[derive(Debug)]
pub(crate) struct Tick;

#[async_trait::async_trait]
impl Channel for RecurringChannel {
    type Info = Tick;

    async fn join(&mut self, _: &str, _: Payload, ctx: &mut ChannelContext<Tick>) -> JoinResult {
        ctx.send_after(self.every, Tick);
        Ok(Payload::empty())
    }

    async fn handle_info(&mut self, _: Tick, ctx: &mut ChannelContext<Tick>) -> Next {
        self.count += 1;
        let token = format!("{:x}-{}", std::process::id(), self.count);
        ctx.push(
            "new_token",
            Payload::json(&json!({"token": token, "n": self.count})),
        );
        ctx.send_after(self.every, Tick);
        Next::Continue
    }

    async fn terminate(&mut self, reason: Terminate, _: &mut ChannelContext<Tick>) {
        tracing::debug!(
            ?reason,
            ticks = self.count,
            "recurring channel ended; its timer is cancelled"
        );
    }
}

/// A chat room: `room:lobby` is open, other rooms refuse.
#[derive(Debug, Default)]
pub(crate) struct RoomChannel;

#[async_trait::async_trait]
impl Channel for RoomChannel {
    type Info = ();

    async fn join(&mut self, topic: &str, _: Payload, _: &mut ChannelContext<()>) -> JoinResult {
        if topic == "room:lobby" {
            Ok(Payload::empty())
        } else {
            Err(Refusal::Unauthorized.payload())
        }
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext<()>,
    ) -> HandleIn {
        match (event, payload.get("body")) {
            ("new_msg", Some(body @ serde_json::Value::String(_))) => {
                match ctx
                    .broadcast("new_msg", Payload::json(&json!({"body": body})))
                    .await
                {
                    Ok(()) => HandleIn::ok(Payload::empty()),
                    Err(e) => HandleIn::error(Payload::reason(e)),
                }
            }
            ("new_msg", _) => HandleIn::error(Payload::reason("invalid message")),
            (other, _) => HandleIn::error(Payload::reason(format_args!("unhandled event {other}"))),
        }
    }
}

/// The router of the seed channels; `RECURRING_MS` sets the timer (default 5000).
pub(crate) fn router(every: Duration) -> Router {
    Router::new()
        .channel("ping", || PingChannel)
        .channel("ping:*", || PingChannel)
        .channel("wild:*", || WildChannel)
        .channel("recurring", move || RecurringChannel::new(every))
        .channel("room:*", || RoomChannel)
}

#[derive(serde::Deserialize)]
struct BroadcastRequest {
    topic: String,
    event: String,
    #[serde(default = "empty_object")]
    payload: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    json!({})
}

/// The endpoint: `/socket` with the seed channels, and `POST /broadcast`
/// with `{"topic","event","payload"}` to broadcast from the server side.
pub(crate) fn endpoint() -> Arc<Endpoint> {
    let every = std::env::var("RECURRING_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(5));
    endpoint_with(every)
}

/// The endpoint with the recurring channel ticking every `every`.
pub(crate) fn endpoint_with(every: Duration) -> Arc<Endpoint> {
    let pubsub = gateway::pubsub::PubSub::memory();
    let api = pubsub.clone();
    Endpoint::builder()
        .pubsub(pubsub)
        .socket(Socket::new("/socket", AcceptAll, router(every)))
        .route(
            Method::POST,
            "/broadcast",
            move |req: Request<hyper::body::Incoming>| {
                let pubsub = api.clone();
                async move {
                    let body = match req.into_body().collect().await {
                        Ok(b) => b.to_bytes(),
                        Err(_) => Bytes::new(),
                    };
                    let msg: BroadcastRequest = match serde_json::from_slice(&body) {
                        Ok(m) => m,
                        Err(e) => {
                            return json_response(
                                StatusCode::BAD_REQUEST,
                                json!({"error": e.to_string()}),
                            )
                        }
                    };
                    let b = gateway::pubsub::Broadcast {
                        topic: msg.topic,
                        event: msg.event,
                        payload: Payload::json(&msg.payload),
                        from: None,
                    };
                    match pubsub.broadcast(b).await {
                        Ok(()) => json_response(StatusCode::OK, json!({"ok": true})),
                        Err(e) => json_response(
                            StatusCode::SERVICE_UNAVAILABLE,
                            json!({"error": e.to_string()}),
                        ),
                    }
                }
            },
        )
        .build()
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}
