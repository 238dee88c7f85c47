//! The `gateway` binary as a product: assembles an [`Endpoint`] from the
//! [`Settings`] a config converts into — JWT-authenticated sockets,
//! `[[channel]]` rules, the HTTP publish API and the demo page. Rust users
//! who write their own channels use the library directly instead.
//!
//! Everything here is already checked and converted: this module parses
//! nothing, it only puts the pieces together.

mod admin;
mod admin_page;
mod api;
mod demo;
mod rules;

use crate::admin::{Admin, AdminOptions};
use crate::auth::TokenSocket;
use crate::backend::hooks::{Hook, HookPool, HookSocket};
use crate::backend::Forwarder;
use crate::channel::Router;
use crate::config::ChannelSettings;
use crate::config::{Config, ConfigError, LongPollSecret, Settings, DEMO_JWT_SECRET};
use crate::endpoint::{default_node_name, Endpoint, Socket};
use crate::lifecycle::{Lifecycle, StreamSpec};
use crate::metrics::HookName;
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
        admin,
        demo,
        longpoll,
        sockets,
        channels,
        presence,
        hook_secret,
        rebalance,
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
        .longpoll_relay_timeout(longpoll.relay_timeout)
        .rebalance(rebalance);
    if matches!(longpoll.secret, LongPollSecret::Derived(_))
        && sockets.iter().any(|s| s.config.longpoll.is_some())
    {
        tracing::info!(
            "longpoll.secret is unset: deriving it from the Redis and JWT settings; \
             set GATEWAY_LONGPOLL_SECRET to the same value on every pod"
        );
    }
    // Loud, because it is silent otherwise: the pod works, and anyone who
    // read config/example.toml can mint any token for it.
    for s in sockets.iter().filter(|s| s.demo_secret) {
        tracing::warn!(
            socket = %s.path,
            "the socket verifies tokens with the public demo JWT secret {DEMO_JWT_SECRET:?}, \
             so anyone can mint tokens for it: set GATEWAY_JWT_SECRET to at least 32 random \
             bytes outside development"
        );
    }
    if let Some(secret) = longpoll.secret.bytes() {
        builder = builder.longpoll_secret(secret);
    }
    // The connect hook names the pod before the endpoint exists.
    let node: Arc<str> = Arc::from(server.node_name.unwrap_or_else(default_node_name));
    builder = builder.node(&*node);
    let pool = HookPool::new();
    let hook = |name, settings: &Option<_>| {
        let secret = hook_secret.as_ref()?;
        Some(Arc::new(Hook::new(name, settings.as_ref()?, &pool, secret)))
    };
    // One hook per rule, whatever the sockets it serves: its concurrency
    // limit is the rule's.
    let rule_hooks: Vec<_> = channels
        .iter()
        .map(|c| {
            (
                hook(HookName::Join, &c.hooks.join),
                hook(HookName::Push, &c.hooks.push),
            )
        })
        .collect();
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
            let reported = c.lifecycle.as_ref().zip(lifecycle.as_ref());
            let reported = reported.and_then(|(l, lc)| Some((lc.clone(), lc.stream(&l.stream)?)));
            let (join, push) = rule_hooks[j].clone();
            let rule = Arc::new(
                Rule::new(c, s.topics_claim.clone(), forwarder.as_ref())
                    .hooks(join, push)
                    .with_lifecycle(reported),
            );
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
        let connect = s.hooks.as_ref().and_then(|h| {
            let hook = Hook::new(HookName::Connect, &h.hook, &pool, hook_secret.as_ref()?);
            Some((hook, h.headers.clone()))
        });
        let socket = match connect {
            Some((hook, headers)) => {
                let handler = HookSocket::new(handler, hook, headers, node.clone());
                Socket::new(&s.path, handler, router)
            }
            None => Socket::new(&s.path, handler, router),
        };
        builder = builder.socket(socket.config(s.config));
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
    let mut admin_core = None;
    if let Some(a) = admin {
        let core = Admin::new(
            &pubsub,
            AdminOptions {
                timeout: a.timeout,
                address: server.listen.to_string(),
            },
        );
        builder = admin::routes(
            builder.registry(core.registry().clone()),
            &a,
            &core,
            &pubsub,
            server.timeouts.body,
        );
        if let Some(page) = &a.page {
            builder = admin_page::routes(builder, page, &a.key, &core, &pubsub);
        }
        admin_core = Some(core);
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
    let endpoint = builder.build();
    if let Some(core) = admin_core {
        core.attach(&endpoint);
    }
    Ok(endpoint)
}

/// A publisher over the config's Redis, for `gateway publish`: it keeps
/// what it publishes to a topic whose rule has history, as a pod would,
/// and serves nothing. `None` without Redis.
///
/// # Errors
/// A Redis URL the broker refuses.
pub fn publisher(settings: &Settings) -> Result<Option<PubSub>, crate::pubsub::BrokerError> {
    let Some(redis) = settings.redis.clone() else {
        return Ok(None);
    };
    let pubsub = PubSub::redis(redis)?.max_publish(settings.server.max_publish);
    let rules: Vec<_> = settings
        .channels
        .iter()
        .map(|c| (c.pattern.clone(), c.history))
        .collect();
    let any = rules.iter().any(|(_, h)| h.is_some());
    pubsub.set_history(
        Box::new(move |topic| {
            rules
                .iter()
                .find(|(p, _)| p.matches(topic))
                .and_then(|(_, h)| *h)
        }),
        any,
    );
    Ok(Some(pubsub))
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
