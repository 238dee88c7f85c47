//! The fixture of the protocol spec's conformance vectors: `RoomChannel`,
//! served at `/socket` for `room:*`.

use async_trait::async_trait;
use gateway::{
    AcceptAll, Channel, ChannelContext, Endpoint, HandleIn, JoinResult, Payload, Router, Socket,
    SocketConfig, SocketHandler, StopReason,
};
use serde_json::json;
use std::sync::Arc;

/// `room:lobby` ok `{}`, `room:welcome` ok `{"msg":"hi"}`, `room:secret`
/// refused, `room:boom` panics; any other `room:*` topic joins ok `{}`.
#[derive(Debug)]
pub struct RoomChannel;

#[async_trait]
impl Channel for RoomChannel {
    type Info = ();

    async fn join(
        &mut self,
        topic: &str,
        _payload: Payload,
        _ctx: &mut ChannelContext<()>,
    ) -> JoinResult {
        match topic {
            "room:welcome" => Ok(json!({"msg": "hi"}).into()),
            "room:secret" => Err(json!({"reason": "unauthorized"}).into()),
            "room:boom" => panic!("RoomChannel: join crash (expected by the test)"),
            _ => Ok(Payload::empty()),
        }
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext<()>,
    ) -> HandleIn {
        match event {
            "ping" => HandleIn::ok(json!({"pong": payload.value()})),
            "noop" => HandleIn::NoReply,
            "fail" => HandleIn::error(json!({"reason": "nope"})),
            "stop" => HandleIn::Stop(
                StopReason::Normal,
                Some(("ok".into(), json!({"bye": true}).into())),
            ),
            "crash" => panic!("RoomChannel: crash (expected by the test)"),
            "shout" => {
                ctx.broadcast("shout", payload).await.unwrap();
                HandleIn::NoReply
            }
            "push_me" => {
                ctx.push("pushed", json!({"n": 1}).into());
                HandleIn::ok(Payload::empty())
            }
            "echo_bin" => HandleIn::Reply("ok".into(), payload),
            other => HandleIn::error(json!({"reason": format!("unknown event {other}")})),
        }
    }
}

/// `/socket` with `room:*` → `RoomChannel`, admitted by `handler`.
pub fn endpoint_with(handler: impl SocketHandler, config: SocketConfig) -> Arc<Endpoint> {
    let router = Router::new().channel("room:*", || RoomChannel);
    Endpoint::builder()
        .socket(Socket::new("/socket", handler, router).config(config))
        .build()
}

/// The fixture endpoint with `AcceptAll` and the default config.
pub fn endpoint() -> Arc<Endpoint> {
    endpoint_with(AcceptAll, SocketConfig::default())
}
