//! The HTTP client of the commands that ask a running pod: one request to
//! the admin or publish API, its JSON answer.

use super::Failure;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::time::Duration;

/// Largest answer read, bytes.
const MAX_ANSWER: usize = 64 << 20;
/// How long one request may take, connect included.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `body` (JSON) to `url` with the bearer `key`; the answer's JSON
/// when the status is 2xx.
pub(super) async fn call(
    method: Method,
    url: &str,
    key: &str,
    body: Option<Value>,
) -> Result<Value, Failure> {
    let uri: Uri = url
        .parse()
        .map_err(|e| Failure::Usage(format!("{url:?} is not a URL: {e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(Failure::Usage(format!(
            "{url}: only http:// URLs are supported (reach a pod with kubectl port-forward)"
        )));
    }
    let bearer = HeaderValue::from_str(&format!("Bearer {key}"))
        .map_err(|_| Failure::Usage("the key is not a valid header value".into()))?;
    let bytes = match &body {
        Some(v) => Bytes::from(v.to_string()),
        None => Bytes::new(),
    };
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(AUTHORIZATION, bearer);
    if body.is_some() {
        req = req.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let req = req
        .body(Full::new(bytes))
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let resp = tokio::time::timeout(TIMEOUT, client.request(req))
        .await
        .map_err(|_| Failure::Unreachable(format!("{url}: no answer in {TIMEOUT:?}")))?
        .map_err(|e| Failure::Unreachable(format!("{url}: {e}")))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| Failure::Unreachable(format!("{url}: reading the answer: {e}")))?
        .to_bytes();
    let value: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    if status.is_success() {
        Ok(value)
    } else {
        let why = value["error"]
            .as_str()
            .map_or_else(|| value.to_string(), str::to_owned);
        Err(Failure::Refused(format!("{status}: {why}")))
    }
}
