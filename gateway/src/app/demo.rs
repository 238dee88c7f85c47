//! The demo chat page at `/`, using the official phoenix.js client served
//! from `/assets/phoenix.js` (vendored, MIT licensed, phoenix 1.8.16).

use crate::endpoint::Body;
use bytes::Bytes;
use hyper::{Response, StatusCode};

const PAGE: &str = include_str!("../../assets/demo.html");
const PHOENIX_JS: &[u8] = include_bytes!("../../assets/phoenix.min.js");

fn asset(body: Bytes, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::new(body));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

/// The page, connecting to `socket_path`.
pub(crate) fn page(socket_path: &str) -> Response<Body> {
    let html = PAGE.replace("__SOCKET_PATH__", socket_path);
    asset(Bytes::from(html), "text/html; charset=utf-8")
}

/// phoenix.js.
pub(crate) fn phoenix_js() -> Response<Body> {
    asset(
        Bytes::from_static(PHOENIX_JS),
        "text/javascript; charset=utf-8",
    )
}
