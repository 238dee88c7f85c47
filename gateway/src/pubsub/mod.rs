//! PubSub: the local hub plus a broker that carries broadcasts between nodes.
//!
//! Every broadcast goes through the broker, which hands it back to the hub of
//! every node with subscribers (this one included). The in-memory broker is
//! the single-node case; the Redis broker lives behind the same trait.
//! Presence is built on top of this module, never inside it.
//!
//! # Layout
//! - `hub`: the local topic → subscribers registry and encode-once fan-out.
//! - `memory`, `redis`: the brokers.
//! - `history`: positions, what a topic keeps and what a join asks of it;
//!   `seam`: where a join's replay meets the live messages.

pub mod history;
pub(crate) mod hub;
mod memory;
mod redis;
pub(crate) mod seam;

pub use crate::metrics::BrokerStatus;
pub use history::{Ask, History, Kept, Position, Recovery};
pub(crate) use hub::PresenceTap;
pub use hub::{Broadcast, Hub};
pub use memory::MemoryBroker;
pub use redis::RedisBroker;
pub(crate) use redis::ADMIN_TOPIC;

use crate::metrics::{metrics, Limit, Source};
use crate::protocol::{reserved_event, Payload, ReservedEvent};
use async_trait::async_trait;
use bytes::Bytes;
use history::HistoryTopics;
use hub::{SubId, Subscriber};
use std::fmt;
use std::sync::Arc;

/// A failure of the broker; joins that need it are refused with its message.
#[derive(Debug, thiserror::Error)]
#[error("broker unavailable: {0}")]
pub struct BrokerError(pub String);

/// Why a broadcast was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// An event only the gateway itself sends (`phx_*`, presence events).
    #[error("event {event:?} cannot be broadcast: {why}")]
    Reserved {
        /// The event.
        event: String,
        /// Which kind of reserved event.
        why: ReservedEvent,
    },
    /// The payload is larger than [`PubSub::max_publish`] allows.
    #[error("payload of {size} bytes is over the {max}-byte publish limit")]
    TooLarge {
        /// The payload's size, bytes.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The broker did not take it.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Default of [`PubSub::max_publish`]: 1 MiB, the default `max_frame_size`,
/// far below what Redis' pub/sub output buffers hold (8 MiB soft, 32 MiB
/// hard by default) before they drop every pod's subscriber connection.
pub const DEFAULT_MAX_PUBLISH: usize = 1 << 20;

/// Carries broadcasts to every node's [`Hub`].
///
/// Delivery is at most once; broadcasts from one publisher to one topic
/// arrive in the order they were published.
#[async_trait]
pub trait Broker: Send + Sync + fmt::Debug + 'static {
    /// Ensures broadcasts to `topic` from anywhere reach this node's hub.
    /// Called for a topic's first local subscriber, and for later ones while
    /// none of its subscriptions is confirmed yet or [`Broker::status`] says
    /// the broker is disconnected; each successful call is matched by one
    /// [`Broker::unsubscribe`] once the topic's last local subscriber
    /// leaves. Resolves when delivery is in effect, so a message published
    /// after it returns is not missed.
    ///
    /// # Errors
    /// When the broker cannot confirm the subscription.
    async fn subscribe(&self, topic: &str) -> Result<(), BrokerError>;

    /// Releases one successful [`Broker::subscribe`] of `topic`.
    fn unsubscribe(&self, topic: &str);

    /// Publishes to every node with subscribers of the topic.
    ///
    /// # Errors
    /// When the broker cannot accept the message.
    async fn publish(&self, msg: Broadcast) -> Result<(), BrokerError>;

    /// Keeps `msg` in its topic's history and publishes it with its
    /// position, in one atomic step: every node's subscribers receive it
    /// in the order of its offset. With an `idempotency_key` already used
    /// for this topic within the broker's window, nothing is published and
    /// the first publish's position is returned. The default, for a broker
    /// without storage, refuses.
    ///
    /// # Errors
    /// When the broker cannot keep or publish the message.
    async fn publish_kept(
        &self,
        msg: Broadcast,
        history: &History,
        idempotency_key: Option<&str>,
    ) -> Result<Position, BrokerError> {
        let _ = (msg, history, idempotency_key);
        Err(BrokerError("this broker keeps no history".into()))
    }

    /// Reads `topic`'s history for a join. Starts the topic's history (a new
    /// epoch at offset 0) if it has none, so the join learns a position to
    /// recover from later.
    ///
    /// # Errors
    /// When the broker cannot answer.
    async fn read_history(
        &self,
        topic: &str,
        history: &History,
        ask: &Ask,
    ) -> Result<Recovery, BrokerError> {
        let _ = (topic, history, ask);
        Err(BrokerError("this broker keeps no history".into()))
    }

    /// Hands messages sent to the node named `node` (this one) with
    /// [`Broker::send_to`] to `inbox` from now on, across reconnects. This is
    /// how a pod answers for the long-poll sessions it owns when their
    /// requests land on another pod. Resolves once delivery is in effect.
    /// Called once per node. The default, for a single-node broker, does
    /// nothing: there is no other pod.
    ///
    /// # Errors
    /// When the broker cannot confirm the subscription; calling again retries.
    async fn listen(&self, node: &str, inbox: Arc<dyn NodeInbox>) -> Result<(), BrokerError> {
        let _ = (node, inbox);
        Ok(())
    }

    /// Sends `body` (JSON text) to the node named `node`, at most once.
    /// `Ok(false)` means no node listens under that name: it is gone. The
    /// default, for a single-node broker, knows no other node.
    ///
    /// # Errors
    /// When the broker cannot accept the message.
    async fn send_to(&self, node: &str, body: Bytes) -> Result<bool, BrokerError> {
        let _ = (node, body);
        Ok(false)
    }

    /// One line for `/readyz`'s body, e.g. `redis: connected`, so an outage
    /// is visible where operators look first (it does not fail readiness:
    /// clients keep their connections and pods resubscribe on return).
    fn health(&self) -> String {
        "broker: memory".into()
    }

    /// The state of a broker that connects to a server, for metrics;
    /// `None` (the default) for one that lives in this process.
    fn status(&self) -> Option<BrokerStatus> {
        None
    }
}

/// Receives the point-to-point messages of [`Broker::listen`].
pub trait NodeInbox: Send + Sync + 'static {
    /// One message, as given to [`Broker::send_to`]. Must not block.
    fn deliver(&self, body: Bytes);
}

/// The hub and the broker, as channels, presence and the HTTP API use them.
#[derive(Debug, Clone)]
pub struct PubSub {
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
    /// The same broker when it is Redis's, whose connection presence shares.
    redis: Option<Arc<RedisBroker>>,
    /// Largest payload published, bytes.
    max_publish: usize,
    /// Which topics keep history, set when the endpoint is built.
    history: Arc<HistoryTopics>,
}

impl PubSub {
    /// A single-node pubsub with the in-memory broker.
    pub fn memory() -> Self {
        let hub = Arc::new(Hub::default());
        let broker = Arc::new(MemoryBroker::new(hub.clone()));
        PubSub::new(hub, broker)
    }

    /// A pubsub over Redis; connects in the background.
    ///
    /// # Errors
    /// A malformed Redis URL.
    pub fn redis(config: pubsub_redis::Config) -> Result<Self, BrokerError> {
        let hub = Arc::new(Hub::default());
        let broker = Arc::new(RedisBroker::start(config, hub.clone())?);
        broker.set_max_payload(DEFAULT_MAX_PUBLISH);
        Ok(PubSub {
            hub,
            broker: broker.clone(),
            redis: Some(broker),
            max_publish: DEFAULT_MAX_PUBLISH,
            history: Arc::default(),
        })
    }

    /// A pubsub over any broker that delivers into `hub`.
    pub fn new(hub: Arc<Hub>, broker: Arc<dyn Broker>) -> Self {
        PubSub {
            hub,
            broker,
            redis: None,
            max_publish: DEFAULT_MAX_PUBLISH,
            history: Arc::default(),
        }
    }

    /// Refuses to publish payloads over `bytes` (default
    /// [`DEFAULT_MAX_PUBLISH`]), and with Redis drops larger ones that
    /// backends publish, so one oversized message cannot be fanned out to
    /// every client or overflow Redis' output buffers. Applies to every
    /// clone made afterwards and, with Redis, to what the pod receives.
    pub fn max_publish(mut self, bytes: usize) -> Self {
        self.max_publish = bytes;
        if let Some(redis) = &self.redis {
            redis.set_max_payload(bytes);
        }
        self
    }

    /// The Redis broker, when this pubsub runs on Redis.
    pub(crate) fn redis_broker(&self) -> Option<&Arc<RedisBroker>> {
        self.redis.as_ref()
    }

    /// The broker's state, one line (see [`Broker::health`]).
    pub fn broker_health(&self) -> String {
        self.broker.health()
    }

    /// The broker's state (see [`Broker::status`]).
    pub fn broker_status(&self) -> Option<BrokerStatus> {
        self.broker.status()
    }

    /// The local registry.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The broker, for point-to-point messages between nodes.
    pub(crate) fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// Broadcasts to every subscriber of `msg.topic` on every node; on a
    /// topic with history, keeps it there too (see [`publish`](Self::publish)).
    ///
    /// # Errors
    /// A reserved event (`phx_*`, presence events: see
    /// [`reserved_event`]) or a payload over [`max_publish`](Self::max_publish)
    /// (a binary one counts its bytes); or the broker cannot accept the
    /// message.
    pub async fn broadcast(&self, msg: Broadcast) -> Result<(), PublishError> {
        self.publish(msg, None).await.map(|_| ())
    }

    /// [`broadcast`](Self::broadcast), returning the message's position on
    /// a topic with history. An `idempotency_key` makes a retried publish
    /// to such a topic (within the broker's window) a no-op that returns
    /// the first one's position; elsewhere it is ignored.
    ///
    /// # Errors
    /// As [`broadcast`](Self::broadcast).
    pub async fn publish(
        &self,
        msg: Broadcast,
        idempotency_key: Option<&str>,
    ) -> Result<Option<Position>, PublishError> {
        self.check(&msg)?;
        Ok(self.send(msg, idempotency_key).await?)
    }

    /// Hands a checked message to the broker, kept if its topic has history.
    async fn send(
        &self,
        msg: Broadcast,
        idempotency_key: Option<&str>,
    ) -> Result<Option<Position>, BrokerError> {
        match self.history.of(&msg.topic) {
            Some(h) => self
                .broker
                .publish_kept(msg, &h, idempotency_key)
                .await
                .map(Some),
            None => self.broker.publish(msg).await.map(|()| None),
        }
    }

    /// The history `topic` keeps, if its route or rule has one.
    pub fn history_of(&self, topic: &str) -> Option<History> {
        self.history.of(topic)
    }

    /// Sets which topics keep history (`any`: whether some do). Done once,
    /// by the endpoint, from its routes.
    pub(crate) fn set_history(&self, lookup: history::Lookup, any: bool) {
        if !any {
            // Left unset: publishes and joins then skip the pattern scan.
            return;
        }
        self.history.set(lookup);
        if let Some(redis) = &self.redis {
            // So that backends can FCALL it, before any pod published.
            redis.bus().keep_history_library();
        }
    }

    /// Reads `topic`'s history for a join.
    pub(crate) async fn read_history(
        &self,
        topic: &str,
        history: &History,
        ask: &Ask,
    ) -> Result<Recovery, BrokerError> {
        self.broker.read_history(topic, history, ask).await
    }

    /// What every publisher is held to, before anything leaves the pod.
    fn check(&self, msg: &Broadcast) -> Result<(), PublishError> {
        if let Some(why) = reserved_event(&msg.event) {
            return Err(PublishError::Reserved {
                event: msg.event.clone(),
                why,
            });
        }
        let size = match &msg.payload {
            Payload::Json(json) => json.bytes().len(),
            Payload::Binary(bytes) => bytes.len(),
        };
        if size > self.max_publish {
            metrics().limit_hit(Limit::MaxPublishBytes);
            return Err(PublishError::TooLarge {
                size,
                max: self.max_publish,
            });
        }
        Ok(())
    }

    /// [`broadcast`](Self::broadcast), counted in the metrics by where it
    /// came from.
    pub(crate) async fn broadcast_counted(
        &self,
        source: Source,
        msg: Broadcast,
        idempotency_key: Option<&str>,
    ) -> Result<Option<Position>, PublishError> {
        let m = metrics();
        if let Err(e) = self.check(&msg) {
            m.broadcast_failed(source);
            return Err(e);
        }
        m.broadcast(source, &msg.topic);
        let result = self.send(msg, idempotency_key).await;
        if result.is_err() {
            m.broadcast_failed(source);
        }
        Ok(result?)
    }

    /// Registers a local subscriber and waits until the broker delivers the
    /// topic. The subscription ends when the returned guard is dropped.
    ///
    /// A topic with a confirmed broker subscription already delivers here:
    /// while the broker reports itself connected, a new subscriber of it is
    /// in effect at once, without a broker round trip (with Redis, a
    /// command to the subscriber task and its answer: most of a join's cost
    /// in a reconnect storm, where thousands of clients join a few topics).
    pub(crate) async fn subscribe(
        &self,
        topic: &Arc<str>,
        sub: Subscriber,
    ) -> Result<Subscription, BrokerError> {
        let (id, brokered) = self.hub.subscribe(topic, sub);
        let guard = Subscription {
            pubsub: self.clone(),
            topic: topic.clone(),
            id,
        };
        if brokered && self.broker.status().is_none_or(|s| s.connected) {
            return Ok(guard);
        }
        // If this future is dropped or the broker refuses, the guard removes
        // the hub entry; the topic releases only what the broker confirmed.
        self.broker.subscribe(topic).await?;
        self.hub.brokered(topic);
        Ok(guard)
    }
}

/// A live subscription; dropping it unsubscribes.
#[derive(Debug)]
pub(crate) struct Subscription {
    pubsub: PubSub,
    /// Shared with the channel that holds the subscription.
    topic: Arc<str>,
    id: SubId,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // The topic's broker subscriptions go with its last subscriber.
        let release = self.pubsub.hub.unsubscribe(&self.topic, self.id);
        for _ in 0..release {
            self.pubsub.broker.unsubscribe(&self.topic);
        }
    }
}
