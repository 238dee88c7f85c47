//! One client connection as the rest of the gateway sees it: an id, a bounded
//! outbound queue, a close signal, and the writer that drains the queue into
//! a WebSocket. The bottom of the data path: everything a client receives is
//! queued here, and nothing here knows of channels, topics or brokers.
//!
//! Fan-out pushes into the queue without awaiting; a queue that is full means
//! the client does not keep up, and the connection is closed as a slow
//! consumer instead of letting memory grow. Full is a [`Budget`] of frames
//! and of bytes; the bytes count what the writer took and has not finished
//! with too, so one connection holds at most `Budget::bytes` of frames.
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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tokio::sync::Notify;

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
    /// The outbound queue overflowed its [`Budget`] of frames or bytes.
    SlowConsumer,
    /// A `disconnect` broadcast on the socket id, or an operator's
    /// disconnect (the admin API).
    Forced,
    /// The server is shutting down or draining.
    ServerShutdown,
    /// The connection's token expired and was not refreshed.
    TokenExpired,
    /// It kept sending past its push rate limit.
    RateLimited,
    /// Its pod held more than its share of the fleet's connections
    /// (`[rebalance]`): the client reconnects through the balancer.
    Rebalance,
}

impl Disconnect {
    /// Every reason, for metrics that list each one from the start.
    pub const ALL: [Disconnect; 13] = [
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
        Disconnect::Rebalance,
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
            // Phoenix's own code for a drain: every phoenix.js reconnects.
            Disconnect::Rebalance => Some((1012, "rebalancing")),
        }
    }

    /// Whether what is still queued is sent before the close frame: yes for
    /// a client that broke the rules (it gets the replies to what it sent
    /// before), a drain, the idle, and a client's own close; no when the
    /// transport failed or the client does not read (a slow consumer would
    /// not take it).
    pub(crate) fn flushes(self) -> bool {
        !matches!(self, Disconnect::TransportError | Disconnect::SlowConsumer)
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
            Disconnect::Rebalance => "rebalance",
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
    /// Bytes the item holds, as the byte budget counts them: the encoded
    /// message (shared between subscribers, counted by each), not the frame
    /// header the writer adds.
    fn size(&self) -> usize {
        match self {
            Out::Data(f, _) => f.bytes().len(),
            Out::Pong(b) => b.len(),
        }
    }

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

/// What a connection may hold for its client before it is closed as a slow
/// consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Budget {
    /// Frames queued (`outbound_queue`, or long-poll's `max_buffer`).
    pub(crate) frames: usize,
    /// Bytes queued plus those of the batch taken by the last
    /// [`ConnHandle::next_batch`] (`outbound_queue_bytes`). A single frame
    /// larger than this can never be sent: it closes the connection too.
    pub(crate) bytes: usize,
}

/// A cheap, cloneable handle on a live connection.
#[derive(Clone, Debug)]
pub struct ConnHandle(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    id: u64,
    vsn: Vsn,
    budget: Budget,
    queue: Mutex<Queue>,
    /// Bytes of client pushes handed to channels and not yet handled: a
    /// channel waiting on a slow broker must not let them pile up.
    inbound: AtomicUsize,
    /// Wakes the writer; `notify_one` keeps a permit so no wake-up is lost.
    /// Closing wakes it too.
    wake: Notify,
    /// Wakes everyone waiting in [`ConnHandle::closed`].
    closing: Notify,
    /// Set once: the connection is closing, and why.
    reason: OnceLock<Disconnect>,
}

/// The outbound queue and the bytes it accounts for, under one lock so the
/// budget check costs nothing beyond the lock fan-out takes anyway.
#[derive(Debug, Default)]
struct Queue {
    /// Released whenever the writer finds it empty, so an idle connection
    /// holds no buffer; a busy one trades buffers with its writer.
    frames: Vec<Out>,
    /// Bytes of `frames`.
    queued: usize,
    /// Bytes of the batch the last `next_batch` took: being written, or
    /// (long-poll) sent and not yet confirmed.
    taken: usize,
}

impl ConnHandle {
    /// A new connection with a unique id and an outbound queue bounded by `budget`.
    pub(crate) fn new(vsn: Vsn, budget: Budget) -> Self {
        ConnHandle(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            vsn,
            budget: Budget {
                frames: budget.frames.max(1),
                bytes: budget.bytes.max(1),
            },
            queue: Mutex::new(Queue::default()),
            inbound: AtomicUsize::new(0),
            wake: Notify::new(),
            closing: Notify::new(),
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

    /// What the connection may hold queued for its client.
    pub(crate) fn budget(&self) -> Budget {
        self.0.budget
    }

    /// Queues a frame. Returns false if the connection is closing or the
    /// frame would take it over its budget, in which case the connection is
    /// closed as a slow consumer.
    pub(crate) fn enqueue(&self, out: Out) -> bool {
        if self.is_closed() {
            return false;
        }
        let size = out.size();
        let was_empty = {
            let mut q = self.0.queue.lock();
            let held = q.queued + q.taken;
            if q.frames.len() >= self.0.budget.frames || held + size > self.0.budget.bytes {
                drop(q);
                self.close(Disconnect::SlowConsumer);
                return false;
            }
            q.frames.push(out);
            q.queued += size;
            q.frames.len() == 1
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
    ///
    /// The batch's bytes stay counted against the budget until the next
    /// call, which releases them: call it again only once done with the
    /// previous batch (written, or confirmed by the long-poll client).
    pub(crate) async fn next_batch(&self, batch: &mut Vec<Out>) -> bool {
        loop {
            if self.is_closed() {
                return false;
            }
            {
                let mut q = self.0.queue.lock();
                // Done with the previous batch, before waiting for the next.
                q.taken = 0;
                if !q.frames.is_empty() {
                    if batch.is_empty() {
                        std::mem::swap(&mut q.frames, batch);
                    } else {
                        batch.append(&mut q.frames);
                    }
                    q.taken = std::mem::take(&mut q.queued);
                    return true;
                }
                q.frames = Vec::new();
            }
            if batch.is_empty() {
                // About to wait: an idle connection keeps no buffers.
                *batch = Vec::new();
            }
            // `close` wakes the writer too.
            self.0.wake.notified().await;
        }
    }

    /// Moves what is still queued into `batch` once the connection is
    /// closing, for a last write before the close frame.
    pub(crate) fn take_rest(&self, batch: &mut Vec<Out>) {
        let mut q = self.0.queue.lock();
        batch.append(&mut q.frames);
        q.queued = 0;
    }

    /// Counts a client push of `size` bytes against the byte budget until
    /// the returned guard drops (its channel handled it); `None` when the
    /// pushes still waiting for their channels would exceed the budget.
    pub(crate) fn hold_inbound(&self, size: usize) -> Option<Inbound> {
        let before = self.0.inbound.fetch_add(size, Ordering::Relaxed);
        let inbound = Inbound {
            conn: self.clone(),
            size,
        };
        // The first push always passes: max_payload and max_frame_size bound it.
        (before == 0 || before + size <= self.0.budget.bytes).then_some(inbound)
    }

    /// Starts closing the connection. The first reason given wins.
    pub fn close(&self, reason: Disconnect) {
        if self.0.reason.set(reason).is_ok() {
            self.0.closing.notify_waiters();
            self.0.wake.notify_one();
        }
    }

    /// Resolves once the connection is closing.
    pub async fn closed(&self) {
        loop {
            let closing = self.0.closing.notified();
            tokio::pin!(closing);
            // Registered before the check, so a close in between wakes it.
            closing.as_mut().enable();
            if self.is_closed() {
                return;
            }
            closing.await;
        }
    }

    /// True once the connection is closing.
    pub fn is_closed(&self) -> bool {
        self.0.reason.get().is_some()
    }

    /// Why the connection is closing, once it is.
    pub fn reason(&self) -> Option<Disconnect> {
        self.0.reason.get().copied()
    }
}

/// A client push on its way to its channel, counted against the
/// connection's byte budget until dropped.
#[derive(Debug)]
pub(crate) struct Inbound {
    conn: ConnHandle,
    size: usize,
}

impl Drop for Inbound {
    fn drop(&mut self) {
        self.conn.0.inbound.fetch_sub(self.size, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(frames: usize, bytes: usize) -> Budget {
        Budget { frames, bytes }
    }

    fn data(n: usize) -> Out {
        Out::Data(Frame::Text(Bytes::from(vec![b'x'; n])), Kind::Push)
    }

    #[tokio::test]
    async fn overflow_closes_as_slow_consumer() {
        let c = ConnHandle::new(Vsn::V2, budget(2, 1 << 20));
        assert!(c.enqueue(data(1)));
        assert!(c.enqueue(data(1)));
        assert!(!c.enqueue(data(1)));
        assert_eq!(c.reason(), Some(Disconnect::SlowConsumer));
        assert!(c.is_closed());
    }

    #[tokio::test]
    async fn bytes_over_budget_close_as_slow_consumer() {
        let c = ConnHandle::new(Vsn::V2, budget(100, 1000));
        assert!(c.enqueue(data(600)));
        assert!(c.enqueue(data(400)), "exactly the budget fits");
        assert!(!c.enqueue(Out::Pong(Bytes::from_static(b"p"))));
        assert_eq!(c.reason(), Some(Disconnect::SlowConsumer));
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_budget_closes_even_an_idle_connection() {
        let c = ConnHandle::new(Vsn::V2, budget(100, 1000));
        assert!(!c.enqueue(data(1001)));
        assert_eq!(c.reason(), Some(Disconnect::SlowConsumer));
    }

    #[tokio::test]
    async fn the_batch_being_written_counts_until_the_next_one_is_taken() {
        let c = ConnHandle::new(Vsn::V2, budget(100, 1000));
        assert!(c.enqueue(data(700)));
        let mut batch = Vec::new();
        assert!(c.next_batch(&mut batch).await);
        assert_eq!(batch.len(), 1);
        // The writer holds 700 bytes: 300 more fit, not 301.
        assert!(c.enqueue(data(300)));
        batch.clear();
        // Written: taking the next batch releases the first one.
        assert!(c.next_batch(&mut batch).await);
        assert!(c.enqueue(data(700)));
        assert!(!c.is_closed());
        assert!(!c.enqueue(data(1)), "300 taken + 700 queued");
        assert_eq!(c.reason(), Some(Disconnect::SlowConsumer));
    }

    #[tokio::test]
    async fn a_writer_waiting_for_frames_holds_nothing() {
        use futures_util::FutureExt;
        let c = ConnHandle::new(Vsn::V2, budget(100, 1000));
        assert!(c.enqueue(data(700)));
        let mut batch = Vec::new();
        assert!(c.next_batch(&mut batch).await);
        batch.clear();
        // Written; the writer waits for more.
        assert!(c.next_batch(&mut batch).now_or_never().is_none());
        assert!(c.enqueue(data(700)));
        assert!(!c.is_closed());
    }

    #[test]
    fn pushes_waiting_for_their_channel_are_bounded_in_bytes() {
        let c = ConnHandle::new(Vsn::V2, budget(100, 1000));
        let big = c.hold_inbound(5000).expect("the first push always passes");
        assert!(c.hold_inbound(1).is_none());
        drop(big);
        let a = c.hold_inbound(600).unwrap();
        let b = c.hold_inbound(400).unwrap();
        assert!(c.hold_inbound(1).is_none());
        drop(a);
        assert!(c.hold_inbound(600).is_some());
        drop(b);
        assert_eq!(c.0.inbound.load(Ordering::Relaxed), 0);
        assert!(!c.is_closed(), "refused, not closed");
    }

    #[tokio::test]
    async fn batches_drain_everything() {
        let c = ConnHandle::new(Vsn::V2, budget(10, 1 << 20));
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
