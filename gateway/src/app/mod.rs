//! The `gateway` binary as a product: builds an [`Endpoint`] from a
//! [`Config`] — JWT-authenticated sockets, `[[channel]]` rules, the HTTP
//! publish API and the demo page. Rust users who write their own channels
//! use the library directly instead.

mod api;
pub mod auth;
mod demo;
mod rules;

use crate::channel::Router;
use crate::config::{Config, ConfigError, OriginSetting};
use crate::endpoint::{Endpoint, Socket};
use crate::pubsub::PubSub;
use crate::socket::{CheckOrigin, OriginRule, SocketConfig};
use hyper::Method;
use rules::{Rule, RuleChannel};
use std::sync::Arc;
use std::time::Duration;

fn invalid(key: String, message: String) -> ConfigError {
    ConfigError::Invalid { key, message }
}

/// Builds the endpoint a validated config describes, with `pubsub`.
///
/// # Errors
/// A config problem that validation let through, naming its key.
pub fn build(config: &Config, pubsub: PubSub) -> Result<Arc<Endpoint>, ConfigError> {
    let mut builder = Endpoint::builder().pubsub(pubsub.clone());
    if let Some(node) = &config.server.node_name {
        builder = builder.node(node.clone());
    }
    for (i, s) in config.sockets.iter().enumerate() {
        let handler = auth::TokenSocket::new(s)
            .map_err(|(k, m)| invalid(format!("socket[{i}].jwt.{k}"), m))?;
        let mut router = Router::new();
        for (j, c) in config.channels.iter().enumerate() {
            if c.sockets
                .as_ref()
                .is_some_and(|list| !list.contains(&s.path))
            {
                continue;
            }
            let rule = Rule::new(c, s.topics_claim.clone())
                .map(Arc::new)
                .ok_or_else(|| {
                    invalid(format!("channel[{j}].pattern"), "invalid pattern".into())
                })?;
            let pattern = rule.pattern.as_str().to_owned();
            router = router
                .try_channel(&pattern, move || RuleChannel::new(rule.clone()))
                .map_err(|e| invalid(format!("channel[{j}].pattern"), e.reason.into()))?;
        }
        let check_origin = match &s.check_origin {
            OriginSetting::Flag(_) => CheckOrigin::Off,
            OriginSetting::List(list) => CheckOrigin::Allow(
                list.iter()
                    .map(|o| {
                        OriginRule::parse(o)
                            .map_err(|m| invalid(format!("socket[{i}].check_origin"), m))
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        let limits = SocketConfig {
            max_frame_size: s.max_frame_size,
            max_channels: s.max_channels,
            outbound_queue: s.outbound_queue,
            idle_timeout: Duration::from_millis(s.idle_timeout_ms),
            check_origin,
        };
        builder = builder.socket(Socket::new(&s.path, handler, router).config(limits));
    }
    if let Some(key) = &config.api.key {
        let key: Arc<str> = Arc::from(key.as_str());
        let max_body = config.api.max_body;
        let pubsub = pubsub.clone();
        builder = builder.route(Method::POST, &config.api.path, move |req| {
            let (key, pubsub) = (key.clone(), pubsub.clone());
            async move { api::broadcast(req, pubsub, &key, max_body).await }
        });
    }
    if config.demo.enabled {
        let socket: Arc<str> = Arc::from(config.demo.socket.as_deref().unwrap_or("/socket"));
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
