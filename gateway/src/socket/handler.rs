//! Who may connect: `Phoenix.Socket`'s `connect/3`, `id/1` and token
//! refresh, as the [`SocketHandler`] trait, with what the opening HTTP
//! request tells about the client.

use crate::channel::Assigns;
use crate::protocol::{Payload, Transport};
use async_trait::async_trait;
use hyper::{HeaderMap, StatusCode, Uri};
use std::net::SocketAddr;
use std::time::SystemTime;

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
