//! Sockets: connect-time authentication (`Phoenix.Socket`'s `connect/3` and
//! `id/1`), a socket's mount and limits, and the per-connection protocol
//! state machine that routes a client's messages to its channels.
//!
//! Below the transports, above the channels: a socket sees decoded
//! [`Message`](crate::protocol::Message)s, never frames or HTTP.
//!
//! # Layout
//! - `handler`: [`SocketHandler`] and what it is given.
//! - `config`: [`SocketConfig`] and [`LongPollConfig`].
//! - `connection`: the per-connection state machine.
//! - `origin`, `rate`: `check_origin` rules and the push rate limit.

mod config;
pub(crate) mod connection;
mod handler;
mod origin;
pub(crate) mod rate;

pub use crate::channel::Assigns;
pub use crate::protocol::Transport;
pub use config::{LongPollConfig, SocketConfig};
pub use handler::{AcceptAll, ConnectError, ConnectInfo, Params, SocketHandler};
pub use origin::{CheckOrigin, OriginRule};
pub use rate::PushRate;

use crate::channel::Router;
use std::fmt;
use std::sync::Arc;

/// A socket mounted at a path (default `/socket`), serving
/// `{path}/websocket`, and `{path}/longpoll` when its config enables it.
pub struct Socket {
    /// Shared: each connection's registry entry names it (admin API).
    pub(crate) path: Arc<str>,
    pub(crate) handler: Arc<dyn SocketHandler>,
    pub(crate) router: Router,
    pub(crate) config: SocketConfig,
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("path", &self.path)
            .field("router", &self.router)
            .field("config", &self.config)
            .finish()
    }
}

impl Socket {
    /// A socket at `path` (for example `/socket`) whose connections are
    /// admitted by `handler` and whose topics are served by `router`.
    pub fn new(path: &str, handler: impl SocketHandler, router: Router) -> Self {
        Socket {
            path: Arc::from(path.trim_end_matches('/')),
            handler: Arc::new(handler),
            router,
            config: SocketConfig::default(),
        }
    }

    /// Replaces the limits.
    pub fn config(mut self, config: SocketConfig) -> Self {
        self.config = config;
        self
    }
}
