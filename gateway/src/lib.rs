//! A Phoenix Channels–compatible real-time gateway.
//!
//! Unmodified Phoenix clients (phoenix.js 1.8 and others) connect over
//! WebSocket, join topics, push events and receive replies and broadcasts,
//! exactly as they would from a Phoenix server. Rust users write channels the
//! way Phoenix users do: a [`SocketHandler`](socket::SocketHandler) decides
//! who connects, a [`Router`](channel::Router) maps topic patterns to
//! [`Channel`](channel::Channel) implementations, and channels push, reply
//! and broadcast through their [`ChannelContext`](channel::ChannelContext).
//!
//! # Layout
//!
//! The data path runs transport → socket → channel → pubsub → hub → writer:
//!
//! - [`protocol`]: messages, the V1/V2 serializers, `vsn` negotiation.
//! - `transport`: the WebSocket handshake, reader loop and vectored writer;
//!   the long-poll transport, its sessions and their relay between pods.
//! - [`socket`]: connect-time auth (`SocketHandler`) and the per-connection
//!   state machine (heartbeat, join, leave, routing to channels).
//! - [`channel`]: the `Channel` trait, its context, the router, and the task
//!   that runs each joined channel in isolation.
//! - [`pubsub`]: the `Broker` trait and the in-memory broker.
//! - [`presence`]: who is in a topic on every node (Phoenix Presence), with
//!   diffs batched per topic and dead pods reaped in Redis.
//! - [`hub`]: the local topic → subscribers registry and encode-once fan-out.
//! - [`conn`]: a connection's bounded outbound queue and close signal.
//! - [`endpoint`] / [`server`]: sockets mounted at paths, health checks,
//!   metrics, extra HTTP routes, and the accept loop.
//! - `rebalance`: after a scale-out, a pod above the fleet's average sheds
//!   WebSocket connections slowly, by counts the pods share in Redis.
//! - `metrics`: the Prometheus metrics of docs/metrics.md, counted where
//!   things happen and read at scrape time where they are already known.
//! - [`hooks`]: HTTP hooks — a backend answers connects, joins and pushes
//!   over signed JSON `POST`s.
//! - [`auth`]: JWT verification and the socket handler that admits
//!   connections by their tokens.
//! - [`config`] / [`app`]: the `gateway` binary's TOML config, converted
//!   section by section into the library's types, and the endpoint it
//!   describes (`[[channel]]` rules, publish API, demo).
//! - `backend`: the way in for rules: pushes forwarded to backends through
//!   Redis streams, and their answers.

pub mod admin;
pub mod app;
pub mod auth;
pub mod backend;
pub mod channel;
pub mod config;
pub mod conn;
pub mod endpoint;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod lifecycle;
mod metrics;
pub mod presence;
pub mod protocol;
pub mod pubsub;
mod rebalance;
pub mod server;
pub mod socket;
mod transport;

pub use channel::{
    Channel, ChannelContext, HandleIn, JoinResult, Next, Router, StopReason, Terminate,
};
pub use endpoint::Endpoint;
pub use presence::{Presence, PresenceConfig, PresenceError};
pub use protocol::{Json, Payload};
pub use rebalance::RebalanceConfig;
pub use socket::{
    AcceptAll, Assigns, ConnectError, ConnectInfo, LongPollConfig, Params, PushRate, Socket,
    SocketConfig, SocketHandler,
};
