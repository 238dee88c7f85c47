//! Plain HTTP connections, before or without an upgrade: how long the
//! server waits on a client, how many such connections a pod holds, and
//! reading a request body within a size and a deadline. A client that
//! stalls anywhere before its request is whole is cut off: in its headers or
//! idle between requests by the header timeout, in its body by
//! [`read_body`]'s deadline, so a trickle of bytes cannot hold a connection
//! (and its file descriptor) for ever.

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION};
use hyper::{Response, StatusCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{metrics, Limit};

/// How long the server waits on an HTTP client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A request's headers must arrive within this, counted from when the
    /// server is ready for the request: right after accepting a connection,
    /// or after the previous answer on a keep-alive connection, so it is
    /// also how long a keep-alive connection may sit idle. Default 30 s.
    pub header: Duration,
    /// A request's whole body must arrive within this once its headers did;
    /// otherwise the answer is 408 and the connection is closed. Default 10 s.
    pub body: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header: Duration::from_secs(30),
            body: Duration::from_secs(10),
        }
    }
}

/// Counts open connections of one kind against a cap; each is a [`Slot`]
/// held for the connection's life. Clones share the count.
#[derive(Debug, Clone, Default)]
pub(crate) struct Slots {
    open: Arc<AtomicUsize>,
}

impl Slots {
    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A slot whatever the count: connections counted, not capped, here.
    pub(crate) fn hold(&self) -> Slot {
        self.open.fetch_add(1, Ordering::AcqRel);
        Slot(self.open.clone())
    }

    /// A slot, unless `open` already reached `max` (`None`: no cap).
    pub(crate) fn take(&self, max: Option<usize>) -> Option<Slot> {
        let max = max.unwrap_or(usize::MAX);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot(self.open.clone()))
    }
}

/// One open connection in its [`Slots`], released on drop.
#[derive(Debug)]
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a request body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BodyError {
    /// Longer than the route accepts.
    #[error("body too large")]
    TooLarge,
    /// Not all there within [`Timeouts::body`].
    #[error("body not received in time")]
    TimedOut,
    /// The connection failed or the framing was invalid.
    #[error("body unreadable")]
    Unreadable,
}

impl BodyError {
    /// The HTTP status that answers it.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            BodyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TimedOut => StatusCode::REQUEST_TIMEOUT,
            BodyError::Unreadable => StatusCode::BAD_REQUEST,
        }
    }

    /// `resp` with `Connection: close`: the rest of the body may still be
    /// on its way (or never come), so the connection cannot carry another
    /// request.
    pub(crate) fn closing<B>(self, mut resp: Response<B>) -> Response<B> {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        resp
    }
}

/// Reads a whole request body of at most `max` bytes within `timeout`.
///
/// # Errors
/// Larger than `max`, not all received within `timeout`, or unreadable.
pub(crate) async fn read_body(
    body: Incoming,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(timeout, Limited::new(body, max).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
        Ok(Err(_)) => Err(BodyError::Unreadable),
        Err(_) => {
            metrics().limit_hit(Limit::BodyTimeout);
            Err(BodyError::TimedOut)
        }
    }
}
