//! The Redis broker: adapts `pubsub_redis::RedisBus` to [`Broker`].
//!
//! Every broadcast, including one from a local channel, is published to
//! Redis and reaches this pod's hub through its subscription, so all pods see
//! one order per publisher and topic. The envelope names this pod and the
//! sending connection so `broadcast_from` skips the sender on its own pod.
//!
//! Point-to-point messages between pods (the long-poll relay) travel on the
//! channel `{prefix}lp:{node}` of the receiving pod, which the bus listens
//! on apart from topics (`RedisBus::listen`): they reach the pod's
//! [`NodeInbox`], never the hub. Topics under `lp:` are never subscribed in
//! Redis, so a client that joins one (naming another pod's inbox, say)
//! receives nothing from it.

use super::hub::{Broadcast, Hub};
use super::{Broker, BrokerError, BrokerStatus, NodeInbox};
use crate::metrics::{metrics, Source};
use crate::protocol::{Json, Payload};
use async_trait::async_trait;
use bytes::Bytes;
use pubsub_redis::{Envelope, Origin, RedisBus, Sink};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

/// Where a pod's inbox channel is named, after the prefix: `lp:{node}`.
const NODE_TOPIC: &str = "lp:";
/// The event name of a point-to-point message's envelope.
const NODE_EVENT: &str = "lp";

/// Publishes to and subscribes from Redis.
#[derive(Debug)]
pub struct RedisBroker {
    bus: RedisBus,
    node: String,
    sink: Arc<HubSink>,
}

struct HubSink {
    hub: Arc<Hub>,
    node: String,
    /// This pod's inbox topic and receiver, once [`Broker::listen`] ran.
    inbox: OnceLock<(String, Arc<dyn NodeInbox>)>,
}

impl std::fmt::Debug for HubSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSink")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Sink for HubSink {
    fn direct(&self, name: &str, envelope: Envelope) {
        if let Some((mine, inbox)) = self.inbox.get() {
            if name == mine && envelope.event == NODE_EVENT {
                inbox.deliver(envelope.payload);
            }
        }
    }

    fn deliver(&self, topic: &str, envelope: Envelope) {
        metrics().broadcast(Source::Redis, topic);
        let from = envelope
            .origin
            .filter(|o| o.node == self.node)
            .map(|o| o.conn);
        self.hub.dispatch(&Broadcast {
            topic: topic.to_owned(),
            event: envelope.event,
            // The bus hands over payloads it parsed as JSON.
            payload: Payload::Json(Json::from_trusted(envelope.payload)),
            from,
        });
    }
}

/// A random id per process, so two pods never mistake each other's messages.
fn node_id() -> String {
    let seed = RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()));
    format!("{seed:016x}")
}

impl RedisBroker {
    /// Starts the bus; it connects in the background and delivers into `hub`.
    ///
    /// # Errors
    /// A malformed Redis URL.
    pub fn start(config: pubsub_redis::Config, hub: Arc<Hub>) -> Result<Self, BrokerError> {
        let node = node_id();
        let sink = Arc::new(HubSink {
            hub,
            node: node.clone(),
            inbox: OnceLock::new(),
        });
        let bus = RedisBus::start(config, sink.clone()).map_err(|e| BrokerError(e.to_string()))?;
        Ok(RedisBroker { bus, node, sink })
    }

    /// This pod's id, random per process start.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The bus, for health checks and metrics.
    pub fn bus(&self) -> &RedisBus {
        &self.bus
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn health(&self) -> String {
        let s = self.status().unwrap_or_default();
        let state = if s.connected {
            "connected"
        } else {
            "disconnected"
        };
        format!("redis: {state} (reconnects {})", s.reconnects)
    }

    fn status(&self) -> Option<BrokerStatus> {
        let s = self.bus.stats();
        Some(BrokerStatus {
            connected: self.bus.is_connected(),
            reconnects: s.reconnects.load(Ordering::Relaxed),
            subscriptions: s.subscriptions.load(Ordering::Relaxed),
            malformed: s.malformed.load(Ordering::Relaxed),
        })
    }

    async fn subscribe(&self, topic: &str) -> Result<(), BrokerError> {
        if topic.starts_with(NODE_TOPIC) {
            return Ok(());
        }
        self.bus
            .subscribe(topic)
            .await
            .map_err(|e| BrokerError(e.to_string()))
    }

    fn unsubscribe(&self, topic: &str) {
        if !topic.starts_with(NODE_TOPIC) {
            self.bus.unsubscribe(topic);
        }
    }

    async fn publish(&self, msg: Broadcast) -> Result<(), BrokerError> {
        let Payload::Json(payload) = &msg.payload else {
            return Err(BrokerError(
                "binary payloads cannot be broadcast through Redis".into(),
            ));
        };
        let origin = msg.from.map(|conn| Origin {
            node: self.node.clone(),
            conn,
        });
        let envelope = Envelope::encode(&msg.event, payload.bytes(), origin.as_ref());
        self.bus
            .publish(&msg.topic, envelope)
            .await
            .map(|_| ())
            .map_err(|e| BrokerError(e.to_string()))
    }

    async fn listen(&self, node: &str, inbox: Arc<dyn NodeInbox>) -> Result<(), BrokerError> {
        let topic = format!("{NODE_TOPIC}{node}");
        let (mine, _) = self.sink.inbox.get_or_init(|| (topic.clone(), inbox));
        if *mine != topic {
            return Err(BrokerError(format!(
                "this pod already listens as {mine}, not {topic}"
            )));
        }
        // Once confirmed, the bus keeps the subscription across reconnects.
        self.bus
            .listen(&topic)
            .await
            .map_err(|e| BrokerError(e.to_string()))
    }

    async fn send_to(&self, node: &str, body: Bytes) -> Result<bool, BrokerError> {
        let envelope = Envelope::encode(NODE_EVENT, &body, None);
        self.bus
            .publish(&format!("{NODE_TOPIC}{node}"), envelope)
            .await
            .map(|receivers| receivers > 0)
            .map_err(|e| BrokerError(e.to_string()))
    }
}
