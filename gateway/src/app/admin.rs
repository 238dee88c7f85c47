//! The admin API's routes under `[admin] path` (docs/admin.md), each
//! guarded by the admin key: the fleet's pods and topics, one topic,
//! disconnecting clients or removing them from a topic, and publishing a
//! batch.

use super::api::{authorized, publish, reply, BroadcastRequest};
use crate::admin::{Admin, AdminError, Who};
use crate::config::AdminSettings;
use crate::endpoint::{Body, EndpointBuilder};
use crate::metrics::metrics;
use crate::protocol::valid_topic;
use crate::pubsub::PubSub;
use crate::transport::http::read_body;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Most messages one batch publishes.
pub(crate) const MAX_BATCH: usize = 1000;
/// Largest request body of the admin API, bytes.
const MAX_BODY: usize = 4 << 20;

/// What every route shares.
#[derive(Clone)]
struct Ctx {
    admin: Admin,
    pubsub: PubSub,
    key: Arc<str>,
    body_timeout: Duration,
}

/// Adds the admin API's routes to `builder`.
pub(super) fn routes(
    mut builder: EndpointBuilder,
    settings: &AdminSettings,
    admin: &Admin,
    pubsub: &PubSub,
    body_timeout: Duration,
) -> EndpointBuilder {
    metrics().init_auth("admin", &["admin_key"]);
    let ctx = Ctx {
        admin: admin.clone(),
        pubsub: pubsub.clone(),
        key: settings.key.clone(),
        body_timeout,
    };
    let path = &settings.path;
    for (method, name) in [
        (Method::GET, "pods"),
        (Method::GET, "topics"),
        (Method::GET, "topic"),
        (Method::POST, "disconnect"),
        (Method::POST, "remove"),
        (Method::POST, "broadcast"),
    ] {
        let ctx = ctx.clone();
        builder = builder.route(method, &format!("{path}/{name}"), move |req| {
            let ctx = ctx.clone();
            async move { serve(ctx, name, req).await }
        });
    }
    builder
}

async fn serve(ctx: Ctx, name: &str, req: Request<Incoming>) -> Response<Body> {
    if !authorized(&req, &ctx.key) {
        metrics().auth_failure("admin", "admin_key");
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": "missing or wrong bearer key"}),
        );
    }
    let query = Query::of(&req);
    let answer = match name {
        "pods" => ctx.admin.pods().await,
        "topics" => {
            let busiest = match query.get("sort") {
                None | Some("name") => false,
                Some("subscribers") => true,
                Some(other) => {
                    return bad(format!("sort={other:?}: use name or subscribers"));
                }
            };
            let limit = match query.number("limit", 100) {
                Ok(n) => n,
                Err(e) => return bad(e),
            };
            ctx.admin
                .topics(
                    query.get("prefix").unwrap_or(""),
                    query.get("after"),
                    limit,
                    busiest,
                )
                .await
        }
        "topic" => {
            let Some(topic) = query.get("topic").filter(|t| !t.is_empty()) else {
                return bad("topic=<name> is required".into());
            };
            let (limit, last) = match (query.number("limit", 100), query.number("last", 20)) {
                (Ok(l), Ok(n)) => (l, n),
                (Err(e), _) | (_, Err(e)) => return bad(e),
            };
            ctx.admin.topic(topic, limit, last).await
        }
        "disconnect" => {
            let body = match read_body(req.into_body(), MAX_BODY, ctx.body_timeout).await {
                Ok(b) => b,
                Err(e) => return e.closing(reply(e.status(), json!({"error": e.to_string()}))),
            };
            match serde_json::from_slice::<Who>(&body) {
                Ok(who) => ctx.admin.disconnect(who).await,
                Err(e) => {
                    return bad(format!(
                        "expected {{\"conn\": id}}, {{\"socket_id\": id}} or \
                         {{\"claim\": {{\"name\": n, \"value\": v}}}}: {e}"
                    ))
                }
            }
        }
        "remove" => {
            let body = match read_body(req.into_body(), MAX_BODY, ctx.body_timeout).await {
                Ok(b) => b,
                Err(e) => return e.closing(reply(e.status(), json!({"error": e.to_string()}))),
            };
            match serde_json::from_slice::<Removal>(&body) {
                Ok(r) if valid_topic(&r.topic) => ctx.admin.remove(&r.topic, r.who).await,
                Ok(_) => return bad("invalid topic".into()),
                Err(e) => {
                    return bad(format!(
                        "expected {{\"topic\": t}} and one of \"conn\", \"socket_id\" or \"claim\": {e}"
                    ))
                }
            }
        }
        _ => return batch(&ctx, req).await,
    };
    match answer {
        Ok(v) => reply(StatusCode::OK, v),
        Err(e @ AdminError::Unavailable(_)) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": e.to_string()}),
        ),
    }
}

/// Whom to remove from which topic.
#[derive(Deserialize)]
struct Removal {
    topic: String,
    #[serde(flatten)]
    who: Who,
}

#[derive(Deserialize)]
struct Batch<'a> {
    #[serde(borrow)]
    messages: Vec<BroadcastRequest<'a>>,
}

/// Publishes each message of `{"messages": [...]}` in order; one bad
/// message does not stop the others. Answers each one's result.
async fn batch(ctx: &Ctx, req: Request<Incoming>) -> Response<Body> {
    let body = match read_body(req.into_body(), MAX_BODY, ctx.body_timeout).await {
        Ok(b) => b,
        Err(e) => return e.closing(reply(e.status(), json!({"error": e.to_string()}))),
    };
    let batch: Batch<'_> = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return bad(format!(
                "expected {{\"messages\": [{{\"topic\",\"event\",\"payload\"}}, ...]}}: {e}"
            ))
        }
    };
    if batch.messages.len() > MAX_BATCH {
        return bad(format!("at most {MAX_BATCH} messages per batch"));
    }
    let mut results = Vec::with_capacity(batch.messages.len());
    let mut published = 0;
    for msg in batch.messages {
        match publish(&ctx.pubsub, &body, msg).await {
            Ok(ok) => {
                published += 1;
                results.push(ok);
            }
            Err((_, error)) => results.push(json!({ "error": error })),
        }
    }
    reply(
        StatusCode::OK,
        json!({"published": published, "results": results}),
    )
}

fn bad(error: String) -> Response<Body> {
    reply(StatusCode::BAD_REQUEST, json!({ "error": error }))
}

/// A request's query string.
struct Query(Vec<(String, String)>);

impl Query {
    fn of<B>(req: &Request<B>) -> Self {
        Query(
            form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn number(&self, key: &str, default: usize) -> Result<usize, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("{key}={v:?} is not a number")),
        }
    }
}
