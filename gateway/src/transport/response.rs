//! The HTTP answers the transports and the server give: one body type and
//! the plain-text answer every refusal uses.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};

/// The response body type of every HTTP answer.
pub type Body = Full<Bytes>;

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::copy_from_slice(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// 429 for a client over a per-source limit, with `retry-after: 1`: the
/// source is refused, not the pod (which stays ready for others).
pub(crate) fn too_many(body: &str) -> Response<Body> {
    let mut resp = text(StatusCode::TOO_MANY_REQUESTS, body);
    resp.headers_mut()
        .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}
