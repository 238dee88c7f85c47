//! The Redis broker: adapts `pubsub_redis::RedisBus` to [`Broker`].
//!
//! Every broadcast, including one from a local channel, is published to
//! Redis and reaches this pod's hub through its subscription, so all pods see
//! one order per publisher and topic. The envelope names this pod and the
//! sending connection so `broadcast_from` skips the sender on its own pod.

use super::{Broker, BrokerError};
use crate::hub::{Broadcast, Hub};
use crate::protocol::{Json, Payload};
use async_trait::async_trait;
use pubsub_redis::{Envelope, Origin, RedisBus, Sink};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

/// Publishes to and subscribes from Redis.
#[derive(Debug)]
pub struct RedisBroker {
    bus: RedisBus,
    node: String,
}

struct HubSink {
    hub: Arc<Hub>,
    node: String,
}

impl Sink for HubSink {
    fn deliver(&self, topic: &str, envelope: Envelope) {
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
        });
        let bus = RedisBus::start(config, sink).map_err(|e| BrokerError(e.to_string()))?;
        Ok(RedisBroker { bus, node })
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
    async fn subscribe(&self, topic: &str) -> Result<(), BrokerError> {
        self.bus
            .subscribe(topic)
            .await
            .map_err(|e| BrokerError(e.to_string()))
    }

    fn unsubscribe(&self, topic: &str) {
        self.bus.unsubscribe(topic);
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
            .map_err(|e| BrokerError(e.to_string()))
    }
}
