//! Where clients of a transport connect: every `--url`, rewritten for that
//! transport and resolved once, with the `--source-ips` to bind to.
//!
//! Resolving happens here, once per process, so that thousands of
//! connections do not each look the name up. This module must not connect
//! anything; dialing is `conn`'s and `longpoll`'s job.

use crate::cli::{Cli, TransportKind};
use crate::conn::Target;
use crate::longpoll;
use anyhow::Context as _;
use std::net::SocketAddr;

async fn resolve_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("http://"))
        .context("--url must start with ws:// or http://")?;
    let hostport = rest.split(['/', '?']).next().unwrap_or(rest);
    tokio::net::lookup_host(hostport)
        .await?
        .next()
        .with_context(|| format!("cannot resolve {hostport}"))
}

/// Takes `transport` apart from `--transport` because the fan-out push
/// publisher is a WebSocket client whatever the subscribers speak.
pub(crate) async fn resolve(cli: &Cli, transport: TransportKind) -> anyhow::Result<Target> {
    let mut endpoints = Vec::with_capacity(cli.url.len());
    for url in &cli.url {
        let url = match transport {
            TransportKind::Websocket => longpoll::websocket_url(url)?,
            TransportKind::Longpoll => longpoll::longpoll_url(url)?,
        };
        endpoints.push((resolve_addr(&url).await?, url));
    }
    Ok(Target {
        endpoints,
        source_ips: cli.source_ips.clone(),
    })
}
