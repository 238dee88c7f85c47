//! The `gateway` binary as a product: assembles an [`Endpoint`] from the
//! [`Settings`] a config converts into — JWT-authenticated sockets,
//! `[[channel]]` rules, the HTTP publish API and the demo page. Rust users
//! who write their own channels use the library directly instead.
//!
//! Everything here is already checked and converted: this module parses
//! nothing, it only puts the pieces together.

mod api;
mod demo;
mod rules;

use crate::auth::TokenSocket;
use crate::channel::Router;
use crate::config::ChannelSettings;
use crate::config::{Config, ConfigError, LongPollSecret, Settings};
use crate::endpoint::{Endpoint, Socket};
use crate::lifecycle::{Lifecycle, StreamSpec};
use crate::presence::{Presence, PresenceConfig};
use crate::pubsub::PubSub;
use hyper::Method;
use rules::{Rule, RuleChannel};
use std::sync::Arc;

/// Validates `config` and assembles the endpoint it describes, with `pubsub`.
///
/// # Errors
/// A config problem, naming its key.
pub fn build(config: &Config, pubsub: PubSub) -> Result<Arc<Endpoint>, ConfigError> {
    assemble(config.validate()?, pubsub)
}

/// Assembles the endpoint `settings` describe, with `pubsub`.
///
/// # Errors
/// A rule's pattern the router refuses, naming its key (validation parses
/// patterns the same way, so this does not happen).
pub fn assemble(settings: Settings, pubsub: PubSub) -> Result<Arc<Endpoint>, ConfigError> {
    let Settings {
        server,
        api,
        demo,
        longpoll,
        sockets,
        channels,
        presence,
        ..
    } = settings;
    let pubsub = pubsub.max_publish(server.max_publish);
    let presence_service = Presence::new(&pubsub, presence);
    let lifecycle = lifecycle(&channels, &pubsub, &presence_service, presence)?;
    let mut builder = Endpoint::builder()
        .limits(server.limits)
        .timeouts(server.timeouts)
        .unready_without_broker(server.unready_without_broker)
        .presence(presence_service)
        .lifecycle(lifecycle.clone())
        .pubsub(pubsub.clone())
        .metrics_on_main_port(server.metrics_listen.is_none())
        .longpoll_relay_timeout(longpoll.relay_timeout);
    if matches!(longpoll.secret, LongPollSecret::Derived(_))
        && sockets.iter().any(|s| s.config.longpoll.is_some())
    {
        tracing::info!(
            "longpoll.secret is unset: deriving it from the Redis and JWT settings; \
             set GATEWAY_LONGPOLL_SECRET to the same value on every pod"
        );
    }
    if let Some(secret) = longpoll.secret.bytes() {
        builder = builder.longpoll_secret(secret);
    }
    if let Some(node) = server.node_name {
        builder = builder.node(node);
    }
    for s in sockets {
        let mut router = Router::new();
        for (j, c) in channels.iter().enumerate() {
            if !c.applies_to(&s.path) {
                continue;
            }
            let reported = c.lifecycle.as_ref().zip(lifecycle.as_ref());
            let reported = reported.and_then(|(l, lc)| Some((lc.clone(), lc.stream(&l.stream)?)));
            let rule = Arc::new(Rule::new(c, s.topics_claim.clone()).with_lifecycle(reported));
            router = router
                .try_channel(rule.pattern.as_str(), {
                    let rule = rule.clone();
                    move || RuleChannel::new(rule.clone())
                })
                .map_err(|e| ConfigError::Invalid {
                    key: format!("channel[{j}].pattern"),
                    message: e.reason.into(),
                })?
                // A rule's callbacks never block: its joins and ends may run
                // on the connection's task.
                .inline();
            if let Some(max) = c.max_payload {
                router = router.max_payload(max);
            }
            if let Some(h) = c.history {
                router = router.history(h);
            }
        }
        let handler = TokenSocket::new(&s.path, s.auth);
        builder = builder.socket(Socket::new(&s.path, handler, router).config(s.config));
    }
    if let Some(api) = api {
        let max_body = api.max_body;
        let body_timeout = server.timeouts.body;
        let key = api.key;
        let pubsub = pubsub.clone();
        crate::metrics::metrics().init_auth("api", &["api_key"]);
        builder = builder.route(Method::POST, &api.path, move |req| {
            let (key, pubsub) = (key.clone(), pubsub.clone());
            async move { api::broadcast(req, pubsub, &key, max_body, body_timeout).await }
        });
    }
    if let Some(socket) = demo {
        let socket: Arc<str> = Arc::from(socket);
        builder = builder
            .route(Method::GET, "/", move |_req| {
                let socket = socket.clone();
                async move { demo::page(&socket) }
            })
            .route(Method::GET, "/assets/phoenix.js", |_req| async {
                demo::phoenix_js()
            });
    }
    Ok(builder.build())
}

/// The pod's lifecycle events when a rule reports them: one writer for
/// every stream the rules name (the largest `max_len` of a stream wins),
/// started now if a runtime runs, so that dead pods are reported even
/// before any client joins.
fn lifecycle(
    channels: &[ChannelSettings],
    pubsub: &PubSub,
    presence: &Presence,
    timing: PresenceConfig,
) -> Result<Option<Lifecycle>, ConfigError> {
    let mut streams: Vec<StreamSpec> = Vec::new();
    let mut first = None;
    for (i, c) in channels.iter().enumerate() {
        let Some(l) = &c.lifecycle else { continue };
        first.get_or_insert(i);
        match streams.iter_mut().find(|s| *s.name == *l.stream) {
            Some(s) => s.max_len = s.max_len.max(l.max_len),
            None => streams.push(StreamSpec {
                name: Arc::from(l.stream.as_str()),
                max_len: l.max_len,
            }),
        }
    }
    let Some(i) = first else { return Ok(None) };
    let lifecycle =
        Lifecycle::new(pubsub, presence, timing.pod_timeout, streams).map_err(|message| {
            ConfigError::Invalid {
                key: format!("channel[{i}].lifecycle"),
                message,
            }
        })?;
    lifecycle.start();
    Ok(Some(lifecycle))
}
