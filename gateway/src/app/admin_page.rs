//! The admin page at `[admin] page_path`, and the socket it updates over:
//! `{page_path}/socket`, admitting only the admin key (phoenix.js'
//! `authToken`, which travels in a header, never in the URL). The channel
//! `admin:live` pushes the fleet (`pods`, busiest topics) every couple of
//! seconds, and answers the page's questions and actions as replies.

use super::demo;
use crate::admin::{Admin, Who};
use crate::channel::{Assigns, Channel, ChannelContext, HandleIn, JoinResult, Next, Router};
use crate::endpoint::{Body, EndpointBuilder, Socket};
use crate::protocol::{valid_topic, Payload, Transport};
use crate::pubsub::{Broadcast, PubSub};
use crate::socket::{ConnectError, ConnectInfo, Params, SocketHandler};
use async_trait::async_trait;
use bytes::Bytes;
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const PAGE: &str = include_str!("../../assets/admin.html");
/// How often the page's view of the fleet is refreshed.
const TICK: Duration = Duration::from_secs(2);
/// Busiest topics the page shows.
const BUSIEST: usize = 20;
/// The page's topic.
pub(crate) const LIVE: &str = "admin:live";

/// Adds the page, its phoenix.js and its socket to `builder`.
pub(super) fn routes(
    builder: EndpointBuilder,
    page_path: &str,
    key: &Arc<str>,
    admin: &Admin,
    pubsub: &PubSub,
) -> EndpointBuilder {
    let socket_path = format!("{page_path}/socket");
    let html = Bytes::from(
        PAGE.replace("__ADMIN_SOCKET__", &socket_path)
            .replace("__ADMIN_PATH__", page_path),
    );
    let admin_ch = admin.clone();
    let pubsub = pubsub.clone();
    let router = Router::new().channel(LIVE, move || AdminChannel {
        admin: admin_ch.clone(),
        pubsub: pubsub.clone(),
    });
    let socket = Socket::new(&socket_path, AdminKey(key.clone()), router);
    builder
        .socket(socket)
        .route(Method::GET, page_path, move |_req| {
            let html = html.clone();
            async move { page(html) }
        })
        .route(
            Method::GET,
            &format!("{page_path}/phoenix.js"),
            |_req| async { demo::phoenix_js() },
        )
}

fn page(html: Bytes) -> Response<Body> {
    let mut resp = Response::new(Body::new(html));
    *resp.status_mut() = StatusCode::OK;
    let headers = resp.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page holds the key in the tab; nothing else may frame or cache it.
    headers.insert(
        hyper::header::X_FRAME_OPTIONS,
        hyper::header::HeaderValue::from_static("DENY"),
    );
    headers.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// Admits WebSocket connections that present the admin key as their token.
struct AdminKey(Arc<str>);

#[async_trait]
impl SocketHandler for AdminKey {
    async fn connect(&self, _: &Params, info: &ConnectInfo) -> Result<Assigns, ConnectError> {
        if info.transport != Transport::WebSocket {
            return Err(ConnectError::forbidden(
                "the admin socket is WebSocket only",
            ));
        }
        let given = info.auth_token.as_deref().unwrap_or("");
        if !super::api::same(given.as_bytes(), self.0.as_bytes()) {
            crate::metrics::metrics().auth_failure("admin", "admin_key");
            return Err(ConnectError {
                status: StatusCode::UNAUTHORIZED,
                reason: "admin socket: missing or wrong key".into(),
            });
        }
        Ok(Assigns::new())
    }
}

/// `admin:live`: the fleet, pushed; questions and actions, replied.
struct AdminChannel {
    admin: Admin,
    pubsub: PubSub,
}

impl AdminChannel {
    /// What the page shows of the fleet.
    async fn fleet(&self) -> Value {
        let pods = self.admin.pods().await;
        let topics = self.admin.topics("", None, BUSIEST, true).await;
        match (pods, topics) {
            (Ok(p), Ok(t)) => json!({
                "pods": p["pods"],
                "missing": p["missing"],
                "topics": t["topics"],
            }),
            (Err(e), _) | (_, Err(e)) => json!({"error": e.to_string()}),
        }
    }

    async fn publish(&self, payload: &Value) -> HandleIn {
        let (Some(topic), Some(event)) = (payload["topic"].as_str(), payload["event"].as_str())
        else {
            return HandleIn::error(Payload::reason("topic and event are required"));
        };
        if !valid_topic(topic) || event.is_empty() {
            return HandleIn::error(Payload::reason("invalid topic or event"));
        }
        let body = match &payload["payload"] {
            Value::Null => json!({}),
            v => v.clone(),
        };
        let msg = Broadcast {
            topic: topic.to_owned(),
            event: event.to_owned(),
            payload: Payload::json(&body),
            from: None,
        };
        // Refuses reserved events and oversize payloads, as for any publisher.
        match self.pubsub.broadcast(msg).await {
            Ok(()) => HandleIn::ok(Payload::json(&json!({"ok": true}))),
            Err(e) => HandleIn::error(Payload::reason(e)),
        }
    }
}

#[async_trait]
impl Channel for AdminChannel {
    type Info = ();

    async fn join(&mut self, _: &str, _: Payload, ctx: &mut ChannelContext<()>) -> JoinResult {
        ctx.send_after(Duration::ZERO, ());
        Ok(Payload::empty())
    }

    async fn handle_info(&mut self, _: (), ctx: &mut ChannelContext<()>) -> Next {
        let fleet = self.fleet().await;
        ctx.push("fleet", Payload::json(&fleet));
        ctx.send_after(TICK, ());
        Next::Continue
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        _: &mut ChannelContext<()>,
    ) -> HandleIn {
        let payload = payload.value();
        let answer = match event {
            "topic" => match payload["topic"].as_str() {
                Some(t) if valid_topic(t) => self.admin.topic(t, 100, 20).await,
                _ => return HandleIn::error(Payload::reason("a valid topic is required")),
            },
            "disconnect" => match serde_json::from_value::<Who>(payload) {
                Ok(who) => self.admin.disconnect(who).await,
                Err(e) => return HandleIn::error(Payload::reason(e)),
            },
            "remove" => match (
                payload["topic"].as_str().map(str::to_owned),
                serde_json::from_value::<Who>(payload["who"].clone()),
            ) {
                (Some(t), Ok(who)) => self.admin.remove(&t, who).await,
                _ => return HandleIn::error(Payload::reason("topic and who are required")),
            },
            "publish" => return self.publish(&payload).await,
            other => {
                return HandleIn::error(Payload::reason(format_args!("unknown event {other}")))
            }
        };
        match answer {
            Ok(v) => HandleIn::ok(Payload::json(&v)),
            Err(e) => HandleIn::error(Payload::reason(e)),
        }
    }
}
