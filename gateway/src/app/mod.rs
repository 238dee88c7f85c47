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
use crate::backend::Forwarder;
use crate::channel::Router;
use crate::config::{Config, ConfigError, LongPollSecret, Settings};
use crate::endpoint::{Endpoint, Socket};
use crate::presence::Presence;
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
    let mut builder = Endpoint::builder()
        .limits(server.limits)
        .timeouts(server.timeouts)
        .unready_without_broker(server.unready_without_broker)
        .presence(Presence::new(&pubsub, presence))
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
    // One per pod, made only when a rule forwards.
    let forwarder = channels
        .iter()
        .any(|c| c.forward.is_some())
        .then(|| Forwarder::new(&pubsub))
        .flatten();
    for s in sockets {
        let mut router = Router::new();
        for (j, c) in channels.iter().enumerate() {
            if !c.applies_to(&s.path) {
                continue;
            }
            let rule = Arc::new(Rule::new(c, s.topics_claim.clone(), forwarder.as_ref()));
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
