//! `POST /api/broadcast`: server-side publishing over HTTP, with the same
//! semantics as a Redis publish, guarded by a bearer key.

use crate::endpoint::Body;
use crate::metrics::{metrics, Source};
use crate::protocol::{reserved_event, valid_topic, Json, Payload};
use crate::pubsub::{Broadcast, PubSub, PublishError};
use crate::transport::http::read_body;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use std::time::Duration;

/// One message to publish, as the publish API and the admin API's batch
/// take it.
#[derive(Deserialize)]
pub(super) struct BroadcastRequest<'a> {
    topic: String,
    event: String,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    /// On a topic with history, a retry with the same key (within the
    /// broker's window) is not published again.
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// Longest idempotency key, bytes.
const MAX_IDEMPOTENCY_KEY: usize = 128;

/// A JSON answer.
pub(super) fn reply(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Compares without leaking the key's content through timing.
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request carries `Authorization: Bearer <key>`.
pub(super) fn authorized<B>(req: &Request<B>, key: &str) -> bool {
    let bearer = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key);
    bearer.is_some_and(|b| same(b.trim().as_bytes(), key.as_bytes()))
}

/// Serves one broadcast request. The body must arrive within
/// `body_timeout` (408 otherwise); events only the gateway sends (`phx_*`,
/// presence events) are refused with 422, payloads over the pod's publish
/// limit with 413.
pub(crate) async fn broadcast(
    req: Request<Incoming>,
    pubsub: PubSub,
    key: &str,
    max_body: usize,
    body_timeout: Duration,
) -> Response<Body> {
    if !authorized(&req, key) {
        metrics().auth_failure("api", "api_key");
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": "missing or wrong bearer key"}),
        );
    }
    let body = match read_body(req.into_body(), max_body, body_timeout).await {
        Ok(b) => b,
        Err(e) => return e.closing(reply(e.status(), json!({"error": e.to_string()}))),
    };
    let msg: BroadcastRequest<'_> = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("expected {{\"topic\",\"event\",\"payload\"}}: {e}")}),
            )
        }
    };
    match publish(&pubsub, &body, msg).await {
        Ok(answer) => reply(StatusCode::OK, answer),
        Err((status, error)) => reply(status, json!({ "error": error })),
    }
}

/// Checks and publishes one message read from `body`: `{"ok": true}` with
/// the position on a topic with history, or the status and error to answer.
pub(super) async fn publish(
    pubsub: &PubSub,
    body: &Bytes,
    msg: BroadcastRequest<'_>,
) -> Result<serde_json::Value, (StatusCode, String)> {
    if !valid_topic(&msg.topic) {
        return Err((StatusCode::BAD_REQUEST, "invalid topic".into()));
    }
    if msg.event.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "event must not be empty".into()));
    }
    if let Some(why) = reserved_event(&msg.event) {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("event {:?}: {why}", msg.event),
        ));
    }
    if let Some(k) = msg.idempotency_key.as_deref() {
        if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} bytes"),
            ));
        }
    }
    let payload = match msg.payload {
        Some(raw) => Payload::Json(Json::from_trusted(body.slice_ref(raw.get().as_bytes()))),
        None => Payload::empty(),
    };
    let b = Broadcast {
        topic: msg.topic,
        event: msg.event,
        payload,
        from: None,
    };
    match pubsub
        .broadcast_counted(Source::Http, b, msg.idempotency_key.as_deref())
        .await
    {
        Ok(None) => Ok(json!({"ok": true})),
        Ok(Some(position)) => Ok(json!({"ok": true, "position": position.to_string()})),
        Err(e) => {
            let status = match e {
                PublishError::Reserved { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                PublishError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                PublishError::Broker(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            Err((status, e.to_string()))
        }
    }
}
