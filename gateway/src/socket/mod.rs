//! Sockets: connect-time authentication (`Phoenix.Socket`'s `connect/3` and
//! `id/1`) and the per-connection protocol state machine.

pub(crate) mod connection;
mod origin;
mod rate;

pub use origin::{CheckOrigin, OriginRule};
pub use rate::PushRate;

use crate::protocol::Payload;
use async_trait::async_trait;
use hyper::{HeaderMap, StatusCode, Uri};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

/// Socket assigns: what `connect` learned about the client (for example JWT
/// claims). Every channel of the connection sees them.
pub type Assigns = serde_json::Map<String, serde_json::Value>;

/// The connect params from the query string. When a key repeats, the last
/// value wins, as in Plug.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parses an `application/x-www-form-urlencoded` query string.
    pub fn from_query(query: &str) -> Self {
        Params(
            form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The last value given for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every pair, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// The transport a connection arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `{path}/websocket`.
    WebSocket,
    /// `{path}/longpoll`.
    LongPoll,
}

/// What the HTTP request that opens a connection tells about the client.
#[derive(Clone, Debug)]
pub struct ConnectInfo {
    /// The peer's address.
    pub peer: Option<SocketAddr>,
    /// The request URI.
    pub uri: Uri,
    /// The request headers.
    pub headers: HeaderMap,
    /// The token phoenix.js 1.8 sends with its `authToken` option.
    pub auth_token: Option<String>,
    /// The transport.
    pub transport: Transport,
}

/// A refused connection: the HTTP status (403 unless said otherwise) and a
/// reason for the logs.
#[derive(Clone, Debug, thiserror::Error)]
#[error("connection refused: {reason}")]
pub struct ConnectError {
    /// The status of the HTTP answer.
    pub status: StatusCode,
    /// Why, for logs; not sent to the client.
    pub reason: String,
}

impl ConnectError {
    /// A 403 refusal.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        ConnectError {
            status: StatusCode::FORBIDDEN,
            reason: reason.into(),
        }
    }
}

/// Decides who may connect and what they are, as `Phoenix.Socket` does.
#[async_trait]
pub trait SocketHandler: Send + Sync + 'static {
    /// Accepts the connection with its assigns, or refuses it.
    ///
    /// # Errors
    /// A refusal, answered with its HTTP status before any upgrade.
    async fn connect(&self, params: &Params, info: &ConnectInfo) -> Result<Assigns, ConnectError>;

    /// The socket id for these assigns, if any. Broadcasting `disconnect` to
    /// it closes every connection that has it.
    fn id(&self, assigns: &Assigns) -> Option<String> {
        let _ = assigns;
        None
    }

    /// When these credentials stop being valid. The connection is closed
    /// then (close code 1008, "token expired") unless refreshed first.
    fn expires_at(&self, assigns: &Assigns) -> Option<SystemTime> {
        let _ = assigns;
        None
    }

    /// Refreshes credentials from an `access_token` event pushed on any joined
    /// topic (as Supabase's Phoenix client does). `None` means refresh is not
    /// supported and the event goes to the channel like any other; `Some(Ok)`
    /// replaces the socket assigns (every channel re-checks its authorization
    /// in [`Channel::handle_assigns`](crate::Channel::handle_assigns)).
    fn refresh(&self, payload: &Payload, current: &Assigns) -> Option<Result<Assigns, String>> {
        let _ = (payload, current);
        None
    }
}

/// A handler that admits everyone with empty assigns and no socket id.
#[derive(Clone, Copy, Debug, Default)]
pub struct AcceptAll;

#[async_trait]
impl SocketHandler for AcceptAll {
    async fn connect(&self, _: &Params, _: &ConnectInfo) -> Result<Assigns, ConnectError> {
        Ok(Assigns::new())
    }
}

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
    /// Largest POST body, bytes; larger is refused with HTTP 400.
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

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            max_frame_size: 1 << 20,
            max_channels: 100,
            outbound_queue: 1024,
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
