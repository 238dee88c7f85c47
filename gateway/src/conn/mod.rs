//! One client connection as the rest of the gateway sees it: an id, a bounded
//! outbound queue, a close signal, and the writer that drains the queue into
//! a WebSocket. The bottom of the data path: everything a client receives is
//! queued here, and nothing here knows of channels, topics or brokers.
//!
//! Fan-out pushes into the queue without awaiting; a queue that is full means
//! the client does not keep up, and the connection is closed as a slow
//! consumer instead of letting memory grow.
//!
//! # Layout
//! - `reply`: the one way replies, refusals and `phx_close`/`phx_error` are
//!   queued.
//! - `writer`: the WebSocket writer (vectored writes, the close frame).

mod reply;
pub(crate) mod writer;

pub(crate) use reply::{End, ReplyTo};

use crate::metrics::{Limit, Sent};
use crate::protocol::{Frame, Outbound, Vsn};
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Why a connection ended. Maps to a WebSocket close code and a log/metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disconnect {
    /// The client sent a close frame (its code, if any) or went away.
    ClientClosed(Option<u16>),
    /// Reading from or writing to the transport failed.
    TransportError,
    /// A well-formed WebSocket message is not a Phoenix message (1007: its
    /// data does not match what the `phoenix` subprotocol's frames carry).
    Malformed,
    /// The client broke RFC 6455's framing: unmasked, reserved bits or
    /// opcodes, bad fragments or control frames, an invalid close code.
    ProtocolError,
    /// A text message or close reason is not UTF-8.
    InvalidUtf8,
    /// A frame or message exceeded `max_frame_size`.
    FrameTooLarge,
    /// Nothing was received for `idle_timeout`.
    IdleTimeout,
    /// The outbound queue overflowed.
    SlowConsumer,
    /// A `disconnect` broadcast on the socket id.
    Forced,
    /// The server is shutting down or draining.
    ServerShutdown,
    /// The connection's token expired and was not refreshed.
    TokenExpired,
    /// It kept sending past its push rate limit.
    RateLimited,
}

impl Disconnect {
    /// Every reason, for metrics that list each one from the start.
    pub const ALL: [Disconnect; 12] = [
        Disconnect::ClientClosed(None),
        Disconnect::TransportError,
        Disconnect::Malformed,
        Disconnect::ProtocolError,
        Disconnect::InvalidUtf8,
        Disconnect::FrameTooLarge,
        Disconnect::IdleTimeout,
        Disconnect::SlowConsumer,
        Disconnect::Forced,
        Disconnect::ServerShutdown,
        Disconnect::TokenExpired,
        Disconnect::RateLimited,
    ];

    /// The close frame to send, if any. Never 1000: phoenix.js ≤ 1.8.12 does
    /// not reconnect after a server close with 1000.
    pub fn close_frame(self) -> Option<(u16, &'static str)> {
        match self {
            Disconnect::ClientClosed(code) => Some((code.unwrap_or(1000), "")),
            Disconnect::TransportError => None,
            Disconnect::Malformed => Some((1007, "malformed message")),
            Disconnect::ProtocolError => Some((1002, "protocol error")),
            Disconnect::InvalidUtf8 => Some((1007, "invalid utf-8")),
            Disconnect::FrameTooLarge => Some((1009, "message too big")),
            Disconnect::IdleTimeout => Some((1001, "idle timeout")),
            Disconnect::SlowConsumer => Some((1008, "slow consumer")),
            Disconnect::Forced => Some((1001, "disconnect")),
            Disconnect::ServerShutdown => Some((1001, "server shutting down")),
            Disconnect::TokenExpired => Some((1008, "token expired")),
            Disconnect::RateLimited => Some((1008, "rate limited")),
        }
    }

    /// The configured limit this reason means was hit, if any.
    pub(crate) fn limit(self) -> Option<Limit> {
        match self {
            Disconnect::FrameTooLarge => Some(Limit::MaxFrameSize),
            Disconnect::SlowConsumer => Some(Limit::OutboundQueue),
            Disconnect::RateLimited => Some(Limit::PushRate),
            _ => None,
        }
    }

    /// A short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Disconnect::ClientClosed(_) => "client_closed",
            Disconnect::TransportError => "transport_error",
            Disconnect::Malformed => "malformed",
            Disconnect::ProtocolError => "protocol_error",
            Disconnect::InvalidUtf8 => "invalid_utf8",
            Disconnect::FrameTooLarge => "frame_too_large",
            Disconnect::IdleTimeout => "idle_timeout",
            Disconnect::SlowConsumer => "slow_consumer",
            Disconnect::Forced => "forced",
            Disconnect::ServerShutdown => "shutdown",
            Disconnect::TokenExpired => "token_expired",
            Disconnect::RateLimited => "rate_limited",
        }
    }
}

/// What a queued frame is: a Phoenix message's kind, and for a broadcast
/// when it entered the pod (its publish→send latency is measured at write).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A `phx_reply`.
    Reply,
    /// A channel's push to its own client.
    Push,
    /// `phx_close` or `phx_error`.
    Control,
    /// A fastlane broadcast, and when it entered the pod.
    Broadcast(Instant),
}

impl Kind {
    /// The same, in the metrics' words.
    fn sent(self) -> Sent {
        match self {
            Kind::Reply => Sent::Reply,
            Kind::Push => Sent::Push,
            Kind::Control => Sent::Control,
            Kind::Broadcast(at) => Sent::Broadcast(at),
        }
    }
}

/// An item for the writer.
#[derive(Clone, Debug)]
pub(crate) enum Out {
    /// An encoded Phoenix message.
    Data(Frame, Kind),
    /// The answer to a client ping.
    Pong(Bytes),
}

impl Out {
    /// What the item carries, for `gateway_messages_sent_total`; a pong is
    /// not a Phoenix message.
    pub(crate) fn sent(&self) -> Option<Sent> {
        match self {
            Out::Data(_, kind) => Some(kind.sent()),
            Out::Pong(_) => None,
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A cheap, cloneable handle on a live connection.
#[derive(Clone, Debug)]
pub struct ConnHandle(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    id: u64,
    vsn: Vsn,
    capacity: usize,
    queue: Mutex<VecDeque<Out>>,
    /// Wakes the writer; `notify_one` keeps a permit so no wake-up is lost.
    wake: Notify,
    closing: CancellationToken,
    reason: OnceLock<Disconnect>,
}

impl ConnHandle {
    /// A new connection with a unique id and an outbound queue of `capacity` frames.
    pub(crate) fn new(vsn: Vsn, capacity: usize) -> Self {
        ConnHandle(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            vsn,
            capacity: capacity.max(1),
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            closing: CancellationToken::new(),
            reason: OnceLock::new(),
        }))
    }

    /// Unique within this process.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The serializer the client negotiated.
    pub fn vsn(&self) -> Vsn {
        self.0.vsn
    }

    /// Queues a frame. Returns false if the connection is closing or the queue
    /// was full, in which case the connection is closed as a slow consumer.
    pub(crate) fn enqueue(&self, out: Out) -> bool {
        if self.0.closing.is_cancelled() {
            return false;
        }
        let was_empty = {
            let mut q = self.0.queue.lock();
            if q.len() >= self.0.capacity {
                drop(q);
                self.close(Disconnect::SlowConsumer);
                return false;
            }
            q.push_back(out);
            q.len() == 1
        };
        if was_empty {
            self.0.wake.notify_one();
        }
        true
    }

    /// Encodes and queues one message. A message the serializer cannot carry
    /// (binary on V1) is dropped and logged; it is the sender's mistake.
    fn send(&self, out: &Outbound<'_>) -> bool {
        let kind = match out {
            Outbound::Reply { .. } => Kind::Reply,
            Outbound::Message { event, .. } if matches!(*event, "phx_close" | "phx_error") => {
                Kind::Control
            }
            Outbound::Message { .. } => Kind::Push,
        };
        match self.0.vsn.encode(out) {
            Ok(frame) => self.enqueue(Out::Data(frame, kind)),
            Err(e) => {
                tracing::warn!(conn = self.0.id, error = %e, "dropping message the client's serializer cannot carry");
                false
            }
        }
    }

    /// Moves everything queued into `batch`, waiting until there is something
    /// or the connection closes. Returns false once the connection is closing.
    pub(crate) async fn next_batch(&self, batch: &mut Vec<Out>) -> bool {
        loop {
            if self.0.closing.is_cancelled() {
                return false;
            }
            {
                let mut q = self.0.queue.lock();
                if !q.is_empty() {
                    batch.extend(q.drain(..));
                    if q.capacity() > 64 {
                        q.shrink_to(16);
                    }
                    return true;
                }
            }
            tokio::select! {
                biased;
                _ = self.0.closing.cancelled() => return false,
                _ = self.0.wake.notified() => {}
            }
        }
    }

    /// Starts closing the connection. The first reason given wins.
    pub fn close(&self, reason: Disconnect) {
        let _ = self.0.reason.set(reason);
        self.0.closing.cancel();
    }

    /// Resolves once the connection is closing.
    pub async fn closed(&self) {
        self.0.closing.cancelled().await
    }

    /// True once the connection is closing.
    pub fn is_closed(&self) -> bool {
        self.0.closing.is_cancelled()
    }

    /// Why the connection is closing, once it is.
    pub fn reason(&self) -> Option<Disconnect> {
        self.0.reason.get().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overflow_closes_as_slow_consumer() {
        let c = ConnHandle::new(Vsn::V2, 2);
        let f = || Out::Data(Frame::Text(Bytes::from_static(b"x")), Kind::Push);
        assert!(c.enqueue(f()));
        assert!(c.enqueue(f()));
        assert!(!c.enqueue(f()));
        assert_eq!(c.reason(), Some(Disconnect::SlowConsumer));
        assert!(c.is_closed());
    }

    #[tokio::test]
    async fn batches_drain_everything() {
        let c = ConnHandle::new(Vsn::V2, 10);
        for _ in 0..3 {
            c.enqueue(Out::Pong(Bytes::new()));
        }
        let mut batch = Vec::new();
        assert!(c.next_batch(&mut batch).await);
        assert_eq!(batch.len(), 3);
        c.close(Disconnect::Forced);
        batch.clear();
        assert!(!c.next_batch(&mut batch).await);
    }
}
