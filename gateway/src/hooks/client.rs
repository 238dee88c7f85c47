//! One hook endpoint: a signed JSON `POST` over a keep-alive pool, under the
//! hook's timeout and concurrency limit, with one retry where the call is
//! idempotent, counted in the metrics. It knows nothing of what the bodies
//! mean; `wire` does.

use super::{HookError, HookSecret, HookSettings};
use crate::metrics::{metrics, HookName, HookResult};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use ring::hmac;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

/// Largest hook answer read, bytes: a hook is trusted, but a broken one must
/// not make a pod buffer without bound.
pub(crate) const MAX_ANSWER: usize = 1 << 20;

/// How long an idle pooled connection to a hook server is kept.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// The HTTP client every hook of an endpoint shares: one keep-alive pool per
/// hook server, so a join does not pay for a TCP handshake.
#[derive(Clone, Debug)]
pub(crate) struct HookPool {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HookPool {
    pub(crate) fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // A hook server that does not accept must fail fast enough for the
        // one retry to fit in the hook's timeout.
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .build(connector);
        HookPool { client }
    }
}

/// An answer a hook gives: whether it refuses, and whether it keeps to the
/// contract beyond what its type checks.
pub(crate) trait Answer: DeserializeOwned {
    /// The hook refused (counted as `refused`, not `ok`).
    fn refused(&self) -> bool;
    /// Values the type cannot check (topics, statuses, counts) are sound.
    fn valid(&self) -> bool {
        true
    }
}

/// One configured hook URL.
#[derive(Debug)]
pub(crate) struct Hook {
    name: HookName,
    url: Uri,
    timeout: Duration,
    /// Calls in flight; a call that finds none free is refused at once
    /// (`busy`) rather than queued behind a slow hook server.
    permits: Arc<Semaphore>,
    pool: HookPool,
    key: hmac::Key,
}

/// How one attempt failed.
enum Failure {
    /// The request could not be sent or its answer not read: the server is
    /// down or closed the connection. Worth one retry where idempotent.
    Send,
    /// A definite failure: no retry.
    Final(HookError),
}

impl Hook {
    pub(crate) fn new(
        name: HookName,
        settings: &HookSettings,
        pool: &HookPool,
        secret: &HookSecret,
    ) -> Self {
        Hook {
            name,
            url: settings.url.clone(),
            timeout: settings.timeout,
            permits: Arc::new(Semaphore::new(settings.max_concurrency)),
            pool: pool.clone(),
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.bytes()),
        }
    }

    /// Posts `body` and reads the answer, all within the hook's timeout.
    ///
    /// # Errors
    /// Busy, timeout, unavailable or a bad response; each is counted.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the call (its permit is released); a
    /// request already sent may still reach the hook server.
    pub(crate) async fn call<A: Answer>(&self, body: &serde_json::Value) -> Result<A, HookError> {
        let m = metrics();
        let Ok(_permit) = self.permits.clone().try_acquire_owned() else {
            m.hook(self.name, HookResult::Busy);
            tracing::warn!(hook = self.name.label(), url = %self.url, "hook busy: max_concurrency calls in flight");
            return Err(HookError::Busy);
        };
        let body = Bytes::from(body.to_string());
        let start = Instant::now();
        let answer = match tokio::time::timeout(self.timeout, self.exchange(body)).await {
            Ok(answer) => answer,
            Err(_) => Err(HookError::Timeout),
        };
        m.hook_took(self.name, start.elapsed());
        let answer = answer.and_then(|bytes| match serde_json::from_slice::<A>(&bytes) {
            Ok(a) if a.valid() => Ok(a),
            _ => Err(HookError::BadResponse),
        });
        let result = match &answer {
            Ok(a) if a.refused() => HookResult::Refused,
            Ok(_) => HookResult::Ok,
            Err(e) => e.result(),
        };
        m.hook(self.name, result);
        if let Err(e) = &answer {
            tracing::warn!(hook = self.name.label(), url = %self.url, error = %e, "hook call failed");
        }
        answer
    }

    /// One attempt, and a second after a failure to send for the hooks
    /// whose calls are idempotent (connect, join), never for push.
    async fn exchange(&self, body: Bytes) -> Result<Bytes, HookError> {
        match self.attempt(body.clone()).await {
            Ok(answer) => Ok(answer),
            Err(Failure::Final(e)) => Err(e),
            Err(Failure::Send) if self.name == HookName::Push => Err(HookError::Unavailable),
            Err(Failure::Send) => match self.attempt(body).await {
                Ok(answer) => Ok(answer),
                Err(Failure::Final(e)) => Err(e),
                Err(Failure::Send) => Err(HookError::Unavailable),
            },
        }
    }

    async fn attempt(&self, body: Bytes) -> Result<Bytes, Failure> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string();
        let signature = sign(&self.key, &timestamp, &body);
        let request = Request::post(self.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("x-gateway-hook", self.name.label())
            .header("x-gateway-timestamp", timestamp)
            .header("x-gateway-signature", signature)
            .body(Full::new(body))
            // Every part is checked or built here, so this does not happen.
            .map_err(|_| Failure::Final(HookError::BadResponse))?;
        let response = self
            .pool
            .client
            .request(request)
            .await
            .map_err(|_| Failure::Send)?;
        let status = response.status();
        if status.is_server_error() {
            return Err(Failure::Final(HookError::Unavailable));
        }
        if status != StatusCode::OK {
            return Err(Failure::Final(HookError::BadResponse));
        }
        match Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
        {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(Failure::Final(HookError::BadResponse))
            }
            Err(_) => Err(Failure::Send),
        }
    }
}

/// `sha256=<hex of HMAC-SHA256(secret, timestamp + "." + body)>`: the
/// timestamp is signed so a captured request cannot be replayed later.
pub(crate) fn sign(key: &hmac::Key, timestamp: &str, body: &[u8]) -> String {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(timestamp.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag.as_ref() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    /// The signature docs/hooks.md tells backends to compute, as Python's
    /// `hmac.new(b"secret", b"1700000000." + body, hashlib.sha256)` has it.
    #[test]
    fn signs_timestamp_dot_body() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"secret");
        assert_eq!(
            sign(&key, "1700000000", br#"{"a":1}"#),
            "sha256=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }
}
