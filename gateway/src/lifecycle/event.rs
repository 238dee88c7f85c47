//! What channels tell the writer: a join, or the end of a joined topic.

use super::StreamId;
use std::sync::Arc;
use tokio::sync::oneshot;

/// How a joined lifecycle topic ended, with the `reason` field's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The topic alone ended (`phx_leave`, or the server ended the channel):
    /// a `leave` event.
    Leave(&'static str),
    /// The connection closed: one `disconnect` event per connection and
    /// stream, naming every lifecycle topic it still had.
    Disconnect(&'static str),
}

/// A connection's join of a topic, as the event reports it.
#[derive(Debug, Clone)]
pub(crate) struct Join {
    /// The connection's id on this pod.
    pub(crate) conn: u64,
    pub(crate) topic: Arc<str>,
    pub(crate) socket_id: Option<Arc<str>>,
    /// The socket assigns as JSON text.
    pub(crate) claims: Arc<str>,
    /// This pod's node name.
    pub(crate) node: Arc<str>,
}

/// One message to the writer, stamped when it happened.
#[derive(Debug)]
pub(super) enum Event {
    Join {
        stream: StreamId,
        join: Join,
        at: u64,
    },
    End {
        stream: StreamId,
        conn: u64,
        topic: Arc<str>,
        end: End,
        at: u64,
    },
    /// Answered once every event queued before it is written (or dropped).
    Flush(oneshot::Sender<()>),
}

/// Unix time in milliseconds.
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
