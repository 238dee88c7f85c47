//! The Redis broker: adapts `pubsub_redis::RedisBus` to [`Broker`].
//!
//! Every broadcast, including one from a local channel, is published to
//! Redis and reaches this pod's hub through its subscription, so all pods see
//! one order per publisher and topic. The envelope names this pod and the
//! sending connection so `broadcast_from` skips the sender on its own pod.
//!
//! A binary payload travels base64 in the envelope's `binary` field and
//! reaches the hub as binary again, as it does with the in-memory broker.
//!
//! What backends may publish is checked on the way in: `phx_*` events,
//! presence events without the mark only this pod's presence writes, and
//! payloads over the publish limit are dropped, counted and logged at most
//! once per interval (docs/redis.md), never fanned out to clients.
//!
//! Point-to-point messages between pods (the long-poll relay) travel on the
//! channel `{prefix}lp:{node}` of the receiving pod, which the bus listens
//! on apart from topics (`RedisBus::listen`): they reach the pod's
//! [`NodeInbox`], never the hub. Topics under `lp:` are never subscribed in
//! Redis, so a client that joins one (naming another pod's inbox, say)
//! receives nothing from it.

use super::history::{Ask, History, Kept, Position, Recovery};
use super::hub::{Broadcast, Hub};
use super::{Broker, BrokerError, BrokerStatus, NodeInbox};
use crate::metrics::{metrics, Dropped, Source};
use crate::protocol::{is_presence_event, reserved_event, Json, Payload, ReservedEvent};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use pubsub_redis::history::Mode;
use pubsub_redis::{Envelope, Origin, RedisBus, Sink};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Where a pod's inbox channel is named, after the prefix: `lp:{node}`.
const NODE_TOPIC: &str = "lp:";
/// Where backends answer a pod's forwarded pushes, after the prefix:
/// `rp:{node}`.
const REPLY_TOPIC: &str = "rp:";
/// Where pods ask each other the admin API's questions, after the prefix:
/// `adm:all`, and `adm:{node}` for the answers.
pub(crate) const ADMIN_TOPIC: &str = "adm:";

/// Whether `topic` names a pod's own channel, which clients' topics never
/// subscribe in Redis.
fn pod_channel(topic: &str) -> bool {
    topic.starts_with(NODE_TOPIC)
        || topic.starts_with(REPLY_TOPIC)
        || topic.starts_with(ADMIN_TOPIC)
}
/// The event name of a point-to-point message's envelope.
const NODE_EVENT: &str = "lp";
/// The event of presence's diffs, which go to presence rather than clients.
const PRESENCE_DIFF: &str = "presence_diff";
/// At most one log line about dropped messages per this interval.
const LOG_EVERY: Duration = Duration::from_secs(10);

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
    /// This pod's reply channel and receiver, once
    /// [`RedisBroker::listen_replies`] ran.
    replies: OnceLock<(String, Arc<dyn NodeInbox>)>,
    /// Channels of [`RedisBroker::listen_raw`] and their receivers.
    raw: parking_lot::RwLock<Vec<(String, Arc<dyn NodeInbox>)>>,
    /// Largest payload delivered to clients, bytes.
    max_payload: AtomicUsize,
    /// When dropped messages were last logged, and how many since.
    dropped_log: Mutex<(Option<Instant>, u64)>,
}

impl std::fmt::Debug for HubSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSink")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Sink for HubSink {
    fn direct(&self, name: &str, body: Bytes) {
        if let Some((mine, replies)) = self.replies.get() {
            if name == mine {
                replies.deliver(body);
                return;
            }
        }
        if let Some((_, inbox)) = self.raw.read().iter().find(|(n, _)| n == name) {
            inbox.deliver(body);
            return;
        }
        if let Some((mine, inbox)) = self.inbox.get() {
            if name == mine {
                match Envelope::decode(body) {
                    Ok(envelope) if envelope.event == NODE_EVENT && !envelope.binary => {
                        inbox.deliver(envelope.payload)
                    }
                    // Only pods write here, with the relay's envelope.
                    _ => tracing::debug!(channel = name, "dropped a malformed relay message"),
                }
            }
        }
    }

    fn deliver(&self, topic: &str, envelope: Envelope) {
        if let Some(why) = self.refuse(&envelope) {
            self.dropped(topic, &envelope.event, why);
            // A kept message clients may not receive still takes its
            // offset: the topic's channels move past it rather than see
            // a gap (a replay skips it too).
            if let Some(p) = envelope.position.as_deref().and_then(Position::parse) {
                self.hub.skip_kept(topic, &p);
            }
            return;
        }
        metrics().broadcast(Source::Redis, topic);
        if envelope.presence && !envelope.binary && envelope.event == PRESENCE_DIFF {
            if let Some(tap) = self.hub.presence_tap() {
                // Presence applies it to its state of the topic and tells
                // this pod's clients once per window.
                tap.diff(topic, envelope.payload);
                return;
            }
        }
        let payload = payload(&envelope);
        let from = envelope
            .origin
            .filter(|o| o.node == self.node)
            .map(|o| o.conn);
        let position = envelope.position.as_deref().and_then(Position::parse);
        self.hub.dispatch_at(
            &Broadcast {
                topic: topic.to_owned(),
                event: envelope.event,
                payload,
                from,
            },
            position.as_ref(),
        );
    }
}

/// A delivered envelope's payload as clients get it: bytes as a binary
/// payload (a binary frame to V2 clients, as the in-memory broker gives
/// them), JSON as the bus parsed it.
fn payload(envelope: &Envelope) -> Payload {
    if envelope.binary {
        Payload::Binary(envelope.payload.clone())
    } else {
        Payload::Json(Json::from_trusted(envelope.payload.clone()))
    }
}

impl HubSink {
    /// Why a message from Redis must not reach clients: an event only the
    /// gateway sends (presence's own diffs, marked and JSON, excepted), or a
    /// payload over the limit (presence's excepted too: a burst of joins is
    /// large).
    fn refuse(&self, envelope: &Envelope) -> Option<Dropped> {
        let presence = envelope.presence && !envelope.binary && is_presence_event(&envelope.event);
        match reserved_event(&envelope.event) {
            Some(ReservedEvent::Presence) if presence => {}
            Some(_) => return Some(Dropped::ReservedEvent),
            None => {}
        }
        let over = envelope.payload.len() > self.max_payload.load(Ordering::Relaxed);
        (over && !presence).then_some(Dropped::Oversize)
    }

    /// Counts a dropped message and logs it, at most once per [`LOG_EVERY`].
    fn dropped(&self, topic: &str, event: &str, why: Dropped) {
        metrics().redis_dropped(why);
        let mut log = self.dropped_log.lock();
        log.1 += 1;
        let now = Instant::now();
        if log.0.is_none_or(|at| now.duration_since(at) >= LOG_EVERY) {
            tracing::warn!(
                topic,
                event,
                reason = why.label(),
                dropped = log.1,
                "dropping messages from Redis that publishers may not send (docs/redis.md)"
            );
            *log = (Some(now), 0);
        }
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
            replies: OnceLock::new(),
            raw: parking_lot::RwLock::default(),
            max_payload: AtomicUsize::new(usize::MAX),
            dropped_log: Mutex::new((None, 0)),
        });
        let bus = RedisBus::start(config, sink.clone()).map_err(|e| BrokerError(e.to_string()))?;
        Ok(RedisBroker { bus, node, sink })
    }

    /// This pod's id, random per process start.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Payloads larger than `bytes` that arrive from Redis are dropped.
    pub(crate) fn set_max_payload(&self, bytes: usize) {
        self.sink.max_payload.store(bytes, Ordering::Relaxed);
    }

    /// The bus, for health checks and metrics.
    pub fn bus(&self) -> &RedisBus {
        &self.bus
    }

    /// Hands what backends publish to this pod's reply channel to `inbox`,
    /// raw, from now on and across reconnects; returns the channel's full
    /// Redis name, which forwarded pushes carry as their reply address.
    /// Resolves once Redis confirmed the subscription.
    ///
    /// # Errors
    /// When Redis does not confirm it; calling again retries.
    pub(crate) async fn listen_replies(
        &self,
        inbox: Arc<dyn NodeInbox>,
    ) -> Result<String, BrokerError> {
        let topic = format!("{REPLY_TOPIC}{}", self.node);
        self.sink.replies.get_or_init(|| (topic.clone(), inbox));
        self.bus
            .listen(&topic)
            .await
            .map_err(|e| BrokerError(e.to_string()))?;
        Ok(self.bus.channel_name(&topic))
    }

    /// Hands what is published to the channel `name` (under the prefix) to
    /// `inbox`, raw, from now on and across reconnects. Resolves once Redis
    /// confirmed the subscription. For the pods' own conversations (the
    /// admin API's questions and answers), never clients' topics.
    ///
    /// # Errors
    /// When Redis does not confirm it; calling again retries.
    pub(crate) async fn listen_raw(
        &self,
        name: &str,
        inbox: Arc<dyn NodeInbox>,
    ) -> Result<(), BrokerError> {
        {
            let mut raw = self.sink.raw.write();
            if !raw.iter().any(|(n, _)| n == name) {
                raw.push((name.to_owned(), inbox));
            }
        }
        self.bus
            .listen(name)
            .await
            .map_err(|e| BrokerError(e.to_string()))
    }

    /// Publishes `body` as it is to the channel `name` (under the prefix);
    /// returns how many subscriber connections received it.
    ///
    /// # Errors
    /// When Redis is unreachable or refuses the command.
    pub(crate) async fn publish_raw(&self, name: &str, body: Bytes) -> Result<u64, BrokerError> {
        self.bus
            .publish(name, body)
            .await
            .map_err(|e| BrokerError(e.to_string()))
    }

    /// The envelope of a broadcast from this pod.
    fn envelope(&self, msg: &Broadcast) -> Bytes {
        let origin = msg.from.map(|conn| Origin {
            node: self.node.clone(),
            conn,
        });
        match &msg.payload {
            Payload::Json(payload) => {
                // Only presence gets here with a presence event:
                // `PubSub::broadcast` refuses them from every other publisher.
                let presence = is_presence_event(&msg.event);
                Envelope::encode_marked(&msg.event, payload.bytes(), origin.as_ref(), presence)
            }
            Payload::Binary(data) => Envelope::encode_binary(&msg.event, data, origin.as_ref()),
        }
    }

    /// A kept envelope as a join replays it: held to what clients may
    /// receive from Redis, like a live one (else skipped).
    fn kept(&self, topic: &str, body: Bytes) -> Option<Kept> {
        let envelope = Envelope::decode(body).ok()?;
        if let Some(why) = self.sink.refuse(&envelope) {
            self.sink.dropped(topic, &envelope.event, why);
            return None;
        }
        Some(Kept {
            position: Position::parse(envelope.position.as_deref()?)?,
            payload: payload(&envelope),
            event: envelope.event,
        })
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
        let shards = if s.shards_down > 0 {
            format!(", {} of {} cluster shards down", s.shards_down, s.shards)
        } else {
            String::new()
        };
        let mut line = format!(
            "redis: {state}{shards} to {} (reconnects {})",
            self.bus.address(),
            s.reconnects
        );
        if let Some(f) = self.bus.stats().last_failure() {
            let ago = pubsub_redis::clock_ms().saturating_sub(f.at_ms) / 1000;
            line.push_str(&format!("\nredis last failure, {ago} s ago: {f}"));
        }
        line
    }

    fn status(&self) -> Option<BrokerStatus> {
        let s = self.bus.stats();
        Some(BrokerStatus {
            connected: self.bus.is_connected(),
            down_for: self.bus.down_for(),
            reconnects: s.reconnects.load(Ordering::Relaxed),
            subscriptions: s.subscriptions.load(Ordering::Relaxed),
            malformed: s.malformed.load(Ordering::Relaxed),
            errors: s.failures().map(|(cause, n)| (cause.as_str(), n)),
            shards: s.shards.load(Ordering::Relaxed),
            shards_down: s.shards_down.load(Ordering::Relaxed),
        })
    }

    async fn subscribe(&self, topic: &str) -> Result<(), BrokerError> {
        if pod_channel(topic) {
            return Ok(());
        }
        self.bus
            .subscribe(topic)
            .await
            .map_err(|e| BrokerError(e.to_string()))
    }

    fn unsubscribe(&self, topic: &str) {
        if !pod_channel(topic) {
            self.bus.unsubscribe(topic);
        }
    }

    async fn publish(&self, msg: Broadcast) -> Result<(), BrokerError> {
        let envelope = self.envelope(&msg);
        self.bus
            .publish(&msg.topic, envelope)
            .await
            .map(|_| ())
            .map_err(|e| BrokerError(e.to_string()))
    }

    async fn publish_kept(
        &self,
        msg: Broadcast,
        history: &History,
        idempotency_key: Option<&str>,
    ) -> Result<Position, BrokerError> {
        let envelope = self.envelope(&msg);
        let (position, _) = self
            .bus
            .publish_kept(
                &msg.topic,
                &envelope,
                idempotency_key,
                history.size,
                history.ttl,
            )
            .await
            .map_err(|e| BrokerError(e.to_string()))?;
        Position::parse(&position)
            .ok_or_else(|| BrokerError(format!("Redis gave a malformed position {position:?}")))
    }

    async fn read_history(
        &self,
        topic: &str,
        history: &History,
        ask: &Ask,
    ) -> Result<Recovery, BrokerError> {
        let mode = match ask {
            Ask::Top => Mode::Top,
            Ask::Since(p) => Mode::Since(&p.epoch, p.offset),
            Ask::Last(n) => Mode::Last(*n),
        };
        let read = self
            .bus
            .read_history(topic, mode, history.max_recover, history.size, history.ttl)
            .await
            .map_err(|e| BrokerError(e.to_string()))?;
        let top = Position::parse(&format!("{}:{}", read.epoch, read.top))
            .ok_or_else(|| BrokerError(format!("Redis gave a malformed epoch {:?}", read.epoch)))?;
        Ok(Recovery {
            top,
            recovered: read.recovered,
            messages: read
                .envelopes
                .into_iter()
                .filter_map(|body| self.kept(topic, body))
                .collect(),
        })
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
