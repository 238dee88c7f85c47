//! A socket's limits and its long-poll transport's settings, with the
//! defaults a Phoenix user expects.

use super::{CheckOrigin, PushRate};
use crate::conn::Budget;
use std::time::Duration;

/// Per-socket limits. Each field's default is what a Phoenix user expects.
#[derive(Clone, Debug)]
pub struct SocketConfig {
    /// Largest inbound message, in bytes; a larger one closes the connection
    /// with 1009. Default 1 MiB.
    pub max_frame_size: usize,
    /// Channels one connection may join at once. Default 100, as Phoenix.
    pub max_channels: usize,
    /// Outbound frames queued per connection before it is closed as a slow
    /// consumer. Default 1024.
    pub outbound_queue: usize,
    /// Outbound bytes held per connection (queued, plus the batch being
    /// written or, on long-poll, not yet confirmed) before it is closed as a
    /// slow consumer. What bounds a connection's memory whatever its client
    /// fails to read; keep it above the largest message a client receives.
    /// Default 4 MiB.
    pub outbound_queue_bytes: usize,
    /// A connection that sends nothing for this long is closed. Default 60 s
    /// (phoenix.js heartbeats every 30 s).
    pub idle_timeout: Duration,
    /// Which browser origins may connect. Default: any.
    pub check_origin: CheckOrigin,
    /// The long-poll transport at `{path}/longpoll`, when set. Default off,
    /// as in Phoenix 1.8.
    pub longpoll: Option<LongPollConfig>,
    /// Messages a connection may send (heartbeats excepted), when limited.
    /// Default 100/s with bursts of 200.
    pub push_rate: Option<PushRate>,
}

/// The long-poll transport's limits. The defaults are Phoenix's.
#[derive(Clone, Debug)]
pub struct LongPollConfig {
    /// How long a GET waits for messages before answering 204. Default 10 s.
    /// Keep it plus the relay timeout below phoenix.js' 20 s request timeout.
    pub window: Duration,
    /// A session ends when no GET started for this long. Default 15 s.
    pub session_timeout: Duration,
    /// Messages buffered for a session between two GETs; more ends the
    /// session as a slow consumer instead of growing. Default 1024.
    pub max_buffer: usize,
    /// Largest POST body, bytes; larger is refused with HTTP 413.
    /// Default 8 MiB, as Plug's `read_body`.
    pub max_body: usize,
}

impl Default for LongPollConfig {
    fn default() -> Self {
        LongPollConfig {
            window: Duration::from_secs(10),
            session_timeout: Duration::from_secs(15),
            max_buffer: 1024,
            max_body: 8 << 20,
        }
    }
}

impl SocketConfig {
    /// What a WebSocket connection may hold for its client.
    pub(crate) fn outbound_budget(&self) -> Budget {
        Budget {
            frames: self.outbound_queue,
            bytes: self.outbound_queue_bytes,
        }
    }

    /// What a long-poll session may hold: `max_buffer` messages, in the
    /// same bytes as a WebSocket.
    pub(crate) fn longpoll_budget(&self, longpoll: &LongPollConfig) -> Budget {
        Budget {
            frames: longpoll.max_buffer,
            bytes: self.outbound_queue_bytes,
        }
    }
}

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            max_frame_size: 1 << 20,
            max_channels: 100,
            outbound_queue: 1024,
            outbound_queue_bytes: 4 << 20,
            idle_timeout: Duration::from_secs(60),
            check_origin: CheckOrigin::Off,
            longpoll: None,
            push_rate: Some(PushRate {
                per_second: 100.0,
                burst: 200,
            }),
        }
    }
}
