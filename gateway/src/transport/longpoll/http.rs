//! Long-poll HTTP requests as Phoenix answers them: every answer the
//! transport itself gives is HTTP 200 with a JSON body whose `status` the
//! client reads (`{"status":410,"token":"…","messages":[]}`), plus CORS so a
//! page on another origin can poll with XHR.

use super::ticket::Ticket;
use super::{token, Answer, LongPoll};
use crate::protocol::Transport;
use crate::socket::{ConnectInfo, LongPollConfig, Params, Socket};
use crate::transport::admission::{Admission, Refused};
use crate::transport::http::read_body;
use crate::transport::response::{text, too_many, Body};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Lines of one POST that are applied; the rest are ignored, as Phoenix.
const MAX_LINES: usize = 100;

/// Header phoenix.js sends on GETs with its `authToken` option.
const AUTH_TOKEN: &str = "x-phoenix-authtoken";
/// Header that carries the session token, preferred over the query param.
const SESSION_TOKEN: &str = "x-phoenix-longpoll-token";

/// Answers a request to `{path}/longpoll`.
pub(crate) async fn handle(
    admission: &Admission,
    lp: &LongPoll,
    socket: Arc<Socket>,
    peer: SocketAddr,
    req: Request<Incoming>,
    body_timeout: Duration,
) -> Response<Body> {
    let Some(config) = socket.config.longpoll.clone() else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    let method = req.method().clone();
    if !matches!(method, Method::GET | Method::POST | Method::OPTIONS) {
        return cors(text(StatusCode::BAD_REQUEST, ""));
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    if let Err(refused) = admission.check_origin(&socket, Transport::LongPoll, Some(peer), origin) {
        return refusal(refused);
    }
    if method == Method::OPTIONS {
        return preflight(&req);
    }
    let params = Params::from_query(req.uri().query().unwrap_or(""));
    let presented = req
        .headers()
        .get(SESSION_TOKEN)
        .and_then(|v| v.to_str().ok())
        .or_else(|| params.get("token"));
    let session = presented.and_then(|t| lp.verify(t));
    if method == Method::GET {
        return match session {
            Some(t) => answer(lp.get(&t, config.window).await),
            // A session token this pod cannot verify (signed with another
            // secret, or altered): its session is unknown here, so 410, on
            // which phoenix.js drops the token and opens a new session.
            // Anything else in `token` is a connect param (a JWT).
            None if presented.is_some_and(token::is_session_token) => envelope(410, None, &[]),
            None => open(admission, lp, socket, &config, peer, &params, req).await,
        };
    }
    let Some(t) = session else {
        return status_only(410);
    };
    let ndjson = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
    let body = match read_body(req.into_body(), config.max_body, body_timeout).await {
        Ok(b) => b,
        Err(e) => return e.closing(cors(text(e.status(), &e.to_string()))),
    };
    let Ok(body) = String::from_utf8(body.to_vec()) else {
        return cors(text(StatusCode::BAD_REQUEST, "body is not UTF-8"));
    };
    status_only(lp.post(&t, body_lines(body, ndjson), config.window).await)
}

/// The frames of a POST body: the first [`MAX_LINES`] lines of an ndjson
/// body, or the whole body (legacy clients, V1 objects).
pub(crate) fn body_lines(body: String, ndjson: bool) -> Vec<String> {
    if ndjson {
        body.split('\n')
            .take(MAX_LINES)
            .map(str::to_owned)
            .collect()
    } else {
        vec![body]
    }
}

/// A first GET (or one whose session token is not ours): connect, open a
/// session, answer 410 with its token.
async fn open(
    admission: &Admission,
    lp: &LongPoll,
    socket: Arc<Socket>,
    config: &LongPollConfig,
    peer: SocketAddr,
    params: &Params,
    req: Request<Incoming>,
) -> Response<Body> {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    let auth_token = req
        .headers()
        .get(AUTH_TOKEN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let info = ConnectInfo {
        peer: Some(peer),
        uri: req.uri().clone(),
        headers: req.headers().clone(),
        auth_token,
        transport: Transport::LongPoll,
    };
    let admitted = match admission.admit(&socket, params, origin, &info).await {
        Ok(admitted) => admitted,
        Err(refused) => return refusal(refused),
    };
    let ticket = |permit| {
        Ticket::new(
            permit,
            admission.unpolled(),
            admission.connections().clone(),
        )
    };
    match lp.create(socket, config, admitted, ticket).await {
        Ok(token) => envelope(410, Some(&token), &[]),
        Err(e) => {
            tracing::warn!(error = %e, "long-poll session refused: the broker is unavailable");
            cors(text(StatusCode::SERVICE_UNAVAILABLE, "broker unavailable"))
        }
    }
}

/// The answer to a refused request: the JSON status phoenix.js reads, except
/// while the pod refuses new sessions, which is answered in plain text so
/// phoenix.js reads status 0 and retries, reaching another pod.
fn refusal(refused: Refused) -> Response<Body> {
    match refused {
        Refused::Draining => cors(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "server is shutting down",
        )),
        Refused::OverLimit(why) => cors(text(StatusCode::SERVICE_UNAVAILABLE, &why)),
        // Plain text too: phoenix.js retries with its backoff.
        Refused::Source(r) => cors(too_many(r.why())),
        Refused::Origin | Refused::Vsn(_) | Refused::Connect(_) => status_only(403),
    }
}

fn answer(a: Answer) -> Response<Body> {
    match a {
        Answer::Poll { token, messages } if messages.is_empty() => envelope(204, Some(&token), &[]),
        Answer::Poll { token, messages } => envelope(200, Some(&token), &messages),
        Answer::Gone => envelope(410, None, &[]),
        Answer::Unavailable => cors(text(StatusCode::SERVICE_UNAVAILABLE, "broker unavailable")),
    }
}

/// `{"status":N,"token":T,"messages":[...]}`; each message is an encoded
/// text frame written as a JSON string.
fn envelope(status: u16, token: Option<&str>, messages: &[Bytes]) -> Response<Body> {
    let size: usize = messages.iter().map(|m| m.len() + 8).sum();
    let mut out = Vec::with_capacity(64 + size + size / 8);
    out.extend_from_slice(format!("{{\"status\":{status},\"token\":").as_bytes());
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, &token);
    out.extend_from_slice(b",\"messages\":[");
    let mut first = true;
    for m in messages {
        // Frames are JSON text, so UTF-8; anything else would be a bug.
        let Ok(m) = std::str::from_utf8(m) else {
            continue;
        };
        if !first {
            out.push(b',');
        }
        first = false;
        let _ = serde_json::to_writer(&mut out, m);
    }
    out.extend_from_slice(b"]}");
    json(out)
}

/// `{"status":N}`: POST answers and refusals.
fn status_only(status: u16) -> Response<Body> {
    json(format!("{{\"status\":{status}}}").into_bytes())
}

fn json(body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::from(body)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    cors(resp)
}

fn cors(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    resp
}

/// A CORS preflight: the requested headers are echoed, so phoenix.js' own
/// headers (`content-type`, `x-phoenix-authtoken`) pass.
fn preflight(req: &Request<Incoming>) -> Response<Body> {
    let mut resp = cors(text(StatusCode::OK, ""));
    let h = resp.headers_mut();
    h.remove(header::CONTENT_TYPE);
    if let Some(asked) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("get, post, options"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("3600"),
    );
    resp
}
