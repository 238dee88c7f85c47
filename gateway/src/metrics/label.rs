//! The label values of the metrics (docs/metrics.md): what callers say they
//! counted, and the fixed lists every series is created from at start.

use std::time::Instant;

/// What a message written to a client was, for `gateway_messages_sent_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sent {
    /// A `phx_reply`.
    Reply,
    /// A channel's push to its own client (intercepted broadcasts included).
    Push,
    /// `phx_close` or `phx_error`.
    Control,
    /// A fastlane broadcast, and when it entered the pod (for the
    /// publish→send latency).
    Broadcast(Instant),
}

impl Sent {
    pub(super) fn index(self) -> usize {
        match self {
            Sent::Reply => 0,
            Sent::Broadcast(_) => 1,
            Sent::Push => 2,
            Sent::Control => 3,
        }
    }
}

pub(super) const SENT_KINDS: [&str; 4] = ["reply", "broadcast", "push", "control"];

/// What a message read from a client was, for `gateway_messages_received_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Received {
    Heartbeat,
    Join,
    Leave,
    Push,
}

pub(super) const RECEIVED_KINDS: [&str; 4] = ["heartbeat", "join", "leave", "push"];

/// A configured limit that refused, throttled or disconnected something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limit {
    MaxConnections,
    MaxMemory,
    MaxChannels,
    MaxFrameSize,
    PushRate,
    OutboundQueue,
    /// A plain HTTP connection refused at `max_http_connections` or at the
    /// sockets the open-files limit leaves room for.
    MaxHttpConnections,
    /// A request body not received within `body_timeout_ms`.
    BodyTimeout,
    /// A broadcast refused for a payload over `max_publish_bytes`.
    MaxPublishBytes,
    /// A client push over its rule's `max_payload`.
    MaxPayload,
    SourceConnections,
    SourceRate,
    QueuedJoins,
}

pub(super) const LIMITS: [&str; 13] = [
    "max_connections",
    "max_memory",
    "max_channels",
    "max_frame_size",
    "push_rate",
    "outbound_queue",
    "max_http_connections",
    "body_timeout",
    "max_publish_bytes",
    "max_payload",
    "source_connections",
    "source_rate",
    "queued_joins",
];

impl Limit {
    /// The `limit` label, also the `reason` of a refused connection.
    pub(crate) fn label(self) -> &'static str {
        LIMITS[self as usize]
    }
}

/// Where a broadcast entered this pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// A client push that a channel broadcast.
    Client,
    /// `POST /api/broadcast`.
    Http,
    /// Read from the pod's Redis subscriptions (or the in-memory broker).
    Redis,
}

impl Source {
    pub(super) fn label(self) -> &'static str {
        match self {
            Source::Client => "client",
            Source::Http => "http",
            Source::Redis => "redis",
        }
    }
}

/// Why a message from Redis was dropped, for `gateway_redis_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// A `phx_*` event, or a presence event not written by presence.
    ReservedEvent,
    /// A payload over `max_publish_bytes`.
    Oversize,
}

pub(super) const DROPPED: [&str; 2] = ["reserved_event", "oversize"];

impl Dropped {
    /// The `reason` label.
    pub(crate) fn label(self) -> &'static str {
        DROPPED[self as usize]
    }
}

/// The `reason` values of `gateway_connections_refused_total`.
pub(super) const REFUSALS: [&str; 7] = [
    "max_connections",
    "max_memory",
    "source_connections",
    "source_rate",
    "auth",
    "origin",
    "draining",
];

/// The `result` values of `gateway_joins_total`.
pub(super) const JOIN_RESULTS: [&str; 9] = [
    "ok",
    "unauthorized",
    "unmatched_topic",
    "invalid_topic",
    "too_many_channels",
    "subscription_failed",
    "history_unavailable",
    "queue_full",
    "error",
];

/// Publish→send latency buckets, seconds (docs/metrics.md).
pub(super) const LATENCY_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
