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
use crate::endpoint::{Endpoint, Limits, Socket};
use crate::presence::Presence;
use crate::pubsub::PubSub;
use crate::socket::{CheckOrigin, LongPollConfig, OriginRule, PushRate, SocketConfig};
use hyper::Method;
use rules::{Rule, RuleChannel};
use std::sync::Arc;
use std::time::Duration;

fn invalid(key: String, message: String) -> ConfigError {
    ConfigError::Invalid { key, message }
}

/// The long-poll secret: the configured one; without one but with Redis, one
/// derived from what pods of one deployment share (Redis URL and prefix, JWT
/// secrets), so a round-robin balancer works out of the box; `None` (random
/// per process) on the single-node in-memory broker.
fn longpoll_secret(config: &Config) -> Option<Vec<u8>> {
    if let Some(secret) = &config.longpoll.secret {
        return Some(secret.as_bytes().to_vec());
    }
    let url = config.redis.url.as_ref()?;
    let mut material = format!("gateway longpoll v1\n{url}\n{}\n", config.redis.prefix);
    for s in &config.sockets {
        if let Some(secret) = s.jwt.as_ref().and_then(|j| j.secret.as_ref()) {
            material.push_str(secret);
            material.push('\n');
        }
    }
    if config.sockets.iter().any(|s| s.longpoll.enabled) {
        tracing::info!(
            "longpoll.secret is unset: deriving it from the Redis and JWT settings; \
             set GATEWAY_LONGPOLL_SECRET to the same value on every pod"
        );
    }
    Some(
        ring::digest::digest(&ring::digest::SHA256, material.as_bytes())
            .as_ref()
            .to_vec(),
    )
}

/// Builds the endpoint a validated config describes, with `pubsub`.
///
/// # Errors
/// A config problem that validation let through, naming its key.
pub fn build(config: &Config, pubsub: PubSub) -> Result<Arc<Endpoint>, ConfigError> {
    let server = &config.server;
    let mut builder = Endpoint::builder()
        .limits(Limits {
            max_connections: (server.max_connections > 0).then_some(server.max_connections),
            max_memory: (server.max_memory_mb > 0).then_some(server.max_memory_mb * 1024 * 1024),
        })
        .presence(Presence::new(&pubsub, config.presence.settings()))
        .pubsub(pubsub.clone())
        .metrics_on_main_port(server.metrics_listen.is_none())
        .longpoll_relay_timeout(Duration::from_millis(config.longpoll.relay_timeout_ms));
    if let Some(secret) = longpoll_secret(config) {
        builder = builder.longpoll_secret(secret);
    }
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
            push_rate: (s.push_rate > 0).then_some(PushRate {
                per_second: f64::from(s.push_rate),
                burst: s.push_burst,
            }),
            idle_timeout: Duration::from_millis(s.idle_timeout_ms),
            check_origin,
            longpoll: s.longpoll.enabled.then(|| LongPollConfig {
                window: Duration::from_millis(s.longpoll.window_ms),
                session_timeout: Duration::from_millis(s.longpoll.session_timeout_ms),
                max_buffer: s.longpoll.max_buffer,
                max_body: s.longpoll.max_body,
            }),
        };
        builder = builder.socket(Socket::new(&s.path, handler, router).config(limits));
    }
    if let Some(key) = &config.api.key {
        let key: Arc<str> = Arc::from(key.as_str());
        let max_body = config.api.max_body;
        let pubsub = pubsub.clone();
        crate::metrics::metrics().init_auth("api", &["api_key"]);
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

#[cfg(test)]
mod tests {
    use super::longpoll_secret;
    use crate::config::Config;

    fn config(toml: &str) -> Config {
        let c = Config::parse(toml, "test.toml").unwrap();
        c.validate().unwrap();
        c
    }

    #[test]
    fn longpoll_secret_is_shared_by_pods_configured_alike() {
        let redis = "[redis]\nurl = \"redis://10.0.0.1:6379\"\n";
        let a = longpoll_secret(&config(redis)).unwrap();
        assert_eq!(Some(a.clone()), longpoll_secret(&config(redis)));
        let other_prefix = format!("{redis}prefix = \"x:\"\n");
        assert_ne!(Some(a), longpoll_secret(&config(&other_prefix)));
        let set = config(&format!(
            "{redis}[longpoll]\nsecret = \"0123456789abcdef-x\"\n"
        ));
        assert_eq!(longpoll_secret(&set), Some(b"0123456789abcdef-x".to_vec()));
        assert_eq!(longpoll_secret(&config("")), None, "random without Redis");
    }
}
