//! The local registry from topic to the subscribers on this node, and the
//! fan-out of broadcasts to them.
//!
//! A broadcast is encoded at most once per serializer and the same bytes are
//! queued on every subscriber's connection; nothing here awaits, so one slow
//! client cannot hold up the others. Shards keep unrelated topics from
//! contending on one lock; a shard lock is never held across an `.await`.
//!
//! The hub knows connections, not channels: a subscriber whose channel wants
//! some events for itself (Phoenix's `intercept`) registers an [`Intercept`],
//! a small interface the hub owns and the channel implements. Likewise
//! presence, which keeps each topic's state on this node, registers a
//! [`PresenceTap`]: the brokers hand it the presence diffs pods publish
//! instead of fanning them out, and the hub tells it when a topic has no
//! local subscriber left.

use super::history::Position;
use super::seam::Seam;
use crate::conn::{Budget, ConnHandle, Disconnect, Kind, Out};
use crate::protocol::{Frame, Outbound, Payload, Vsn};
use indexmap::IndexMap;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

const SHARDS: usize = 64;

type Shard = Mutex<HashMap<Arc<str>, Topic>>;

/// A topic's local subscribers, and the broker subscriptions they hold.
#[derive(Debug)]
struct Topic {
    subs: IndexMap<SubId, Subscriber, BuildIdHasher>,
    /// Broker subscriptions confirmed for the topic, released together when
    /// its last local subscriber leaves (whoever made them): while there is
    /// one, the broker delivers the topic here, so a new subscriber needs
    /// no broker round trip of its own.
    brokered: usize,
}

/// A broadcast to every subscriber of a topic.
#[derive(Clone, Debug)]
pub struct Broadcast {
    /// Topic.
    pub topic: String,
    /// Event.
    pub event: String,
    /// Body.
    pub payload: Payload,
    /// The connection to skip (`broadcast_from`), if it is on this node.
    pub from: Option<u64>,
}

/// Takes the broadcasts a subscriber intercepts instead of having them sent
/// to its client: a channel's `handle_out`. Called under a shard lock, so it
/// must only queue, never block.
pub(crate) trait Intercept: Send + Sync + fmt::Debug {
    /// Whether `event` is intercepted.
    fn wants(&self, event: &str) -> bool;
    /// Hands over an intercepted broadcast; false if the receiver is gone.
    fn deliver(&self, event: &str, payload: &Payload) -> bool;
}

/// Takes what presence keeps its per-topic state on this node from. Called
/// on a broker's delivery task or under a shard lock, so it must only queue.
pub(crate) trait PresenceTap: Send + Sync + fmt::Debug {
    /// A `presence_diff` a pod's presence published to `topic` (JSON text).
    fn diff(&self, topic: &str, payload: bytes::Bytes);
    /// `topic`'s last local subscriber left.
    fn vacated(&self, topic: &str);
}

/// What a subscriber wants from a topic.
#[derive(Debug)]
pub(crate) enum Target {
    /// Frames go straight to the connection ("fastlane"), except the events
    /// an [`Intercept`] wants.
    Channel(Option<Box<dyn Intercept>>),
    /// A channel of a topic with history: as `Channel`, through the seam
    /// that holds live messages while the join's replay is queued.
    Kept(Option<Box<dyn Intercept>>, Arc<Seam>),
    /// The socket-id topic: a `disconnect` event closes the connection.
    SocketId,
}

#[derive(Debug)]
pub(crate) struct Subscriber {
    pub(crate) conn: ConnHandle,
    pub(crate) target: Target,
}

impl Subscriber {
    /// A joined channel's subscription, not a socket id's.
    fn is_channel(&self) -> bool {
        !matches!(self.target, Target::SocketId)
    }
}

/// Identifies one subscription for removal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SubId(u64);

/// Hashes [`SubId`]s with one multiplication. They come from a counter, not
/// from clients, so nobody can aim them at one bucket; SipHash cost more
/// than the rest of a join's or a leave's work on a topic's subscribers.
#[derive(Clone, Copy, Debug, Default)]
struct BuildIdHasher;

impl BuildHasher for BuildIdHasher {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

#[derive(Debug)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by SubId; anything else still hashes.
        for &b in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: spreads consecutive ids over the high bits
        // hashbrown uses for its control bytes, and the low ones.
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The topic → subscribers registry of one node.
#[derive(Debug)]
pub struct Hub {
    shards: Box<[Shard]>,
    hasher: RandomState,
    next: AtomicU64,
    /// Presence's, once it started.
    tap: OnceLock<Box<dyn PresenceTap>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            next: AtomicU64::new(1),
            tap: OnceLock::new(),
        }
    }
}

impl Hub {
    fn shard(&self, topic: &str) -> &Shard {
        let i = self.hasher.hash_one(topic) as usize % SHARDS;
        &self.shards[i]
    }

    /// Adds a local subscriber; also says whether the topic already holds
    /// a confirmed broker subscription.
    pub(crate) fn subscribe(&self, topic: &str, sub: Subscriber) -> (SubId, bool) {
        let id = SubId(self.next.fetch_add(1, Ordering::Relaxed));
        let mut shard = self.shard(topic).lock();
        match shard.get_mut(topic) {
            Some(t) => {
                t.subs.insert(id, sub);
                (id, t.brokered > 0)
            }
            None => {
                let mut subs = IndexMap::with_hasher(BuildIdHasher);
                subs.insert(id, sub);
                shard.insert(Arc::from(topic), Topic { subs, brokered: 0 });
                (id, false)
            }
        }
    }

    /// Records a broker subscription confirmed for `topic`, which one of its
    /// local subscribers (still there) asked for.
    pub(crate) fn brokered(&self, topic: &str) {
        if let Some(t) = self.shard(topic).lock().get_mut(topic) {
            t.brokered += 1;
        }
    }

    /// Removes a local subscriber; returns the broker subscriptions to
    /// release, which the topic holds until its last subscriber leaves. A
    /// topic left without subscribers is told to presence's tap.
    pub(crate) fn unsubscribe(&self, topic: &str, id: SubId) -> usize {
        let mut shard = self.shard(topic).lock();
        let Some(t) = shard.get_mut(topic) else {
            return 0;
        };
        t.subs.swap_remove(&id);
        if !t.subs.is_empty() {
            return 0;
        }
        let brokered = t.brokered;
        shard.remove(topic);
        if let Some(tap) = self.tap.get() {
            tap.vacated(topic);
        }
        brokered
    }

    /// Registers presence's tap; the first one stays.
    pub(crate) fn set_presence_tap(&self, tap: Box<dyn PresenceTap>) {
        let _ = self.tap.set(tap);
    }

    /// Presence's tap, if presence runs on this node.
    pub(crate) fn presence_tap(&self) -> Option<&dyn PresenceTap> {
        self.tap.get().map(|t| &**t)
    }

    /// Moves the channels with history of `topic` past a kept message that
    /// is not delivered (publishers may not send it), so its offset is not
    /// taken for a gap.
    pub(crate) fn skip_kept(&self, topic: &str, position: &Position) {
        let entered = Kind::Broadcast(Instant::now());
        let shard = self.shard(topic).lock();
        let Some(t) = shard.get(topic) else { return };
        for sub in t.subs.values() {
            if let Target::Kept(_, seam) = &sub.target {
                seam.offer(&sub.conn, Some(position), None, entered);
            }
        }
    }

    /// Number of local subscribers of `topic`.
    pub fn subscribers(&self, topic: &str) -> usize {
        self.shard(topic)
            .lock()
            .get(topic)
            .map_or(0, |t| t.subs.len())
    }

    /// The topics joined by channels here whose names start with `prefix`,
    /// with how many channels joined each, for operators. Socket-id topics
    /// (their `disconnect` subscriptions) are not listed.
    pub(crate) fn channel_counts(&self, prefix: &str) -> Vec<(Arc<str>, usize)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (topic, t) in shard.iter() {
                if !topic.starts_with(prefix) {
                    continue;
                }
                let n = t.subs.values().filter(|s| s.is_channel()).count();
                if n > 0 {
                    out.push((topic.clone(), n));
                }
            }
        }
        out
    }

    /// How many channels joined `topic` here, and the connections of the
    /// first `limit` of them.
    pub(crate) fn members(&self, topic: &str, limit: usize) -> (usize, Vec<ConnHandle>) {
        let shard = self.shard(topic).lock();
        let Some(t) = shard.get(topic) else {
            return (0, Vec::new());
        };
        let channels = t.subs.values().filter(|s| s.is_channel());
        let first = channels.clone().take(limit).map(|s| s.conn.clone());
        (channels.count(), first.collect())
    }

    /// Number of topics with at least one local subscriber.
    pub fn topics(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// **For benchmarks only** (`gateway/benches/hot_paths.rs`); not part of
    /// the API and may change or vanish at any time.
    ///
    /// Subscribes to `topic` a fresh connection of serializer `vsn` with an
    /// outbound queue of `capacity` frames and 4 MiB, as a fastlane channel
    /// subscriber that intercepts nothing (what a joined channel without `handle_out`
    /// registers). Returns a function that empties that connection's queue,
    /// as its writer would, and returns how many frames it held. The
    /// subscription lives as long as the hub.
    #[doc(hidden)]
    pub fn bench_subscribe(&self, topic: &str, vsn: Vsn, capacity: usize) -> impl FnMut() -> usize {
        use futures_util::FutureExt;
        let budget = Budget {
            frames: capacity,
            bytes: 4 << 20,
        };
        let conn = ConnHandle::new(vsn, budget);
        self.subscribe(
            topic,
            Subscriber {
                conn: conn.clone(),
                target: Target::Channel(None),
            },
        );
        let mut batch = Vec::new();
        move || {
            batch.clear();
            // Ready at once when frames are queued; otherwise there is nothing to drain.
            let _ = conn.next_batch(&mut batch).now_or_never();
            batch.len()
        }
    }

    /// Delivers a broadcast to every local subscriber of its topic and returns
    /// how many received it.
    pub fn dispatch(&self, msg: &Broadcast) -> usize {
        self.dispatch_at(msg, None)
    }

    /// [`dispatch`](Self::dispatch) of a message kept in its topic's
    /// history at `position`, which clients receive in the ref slot.
    pub fn dispatch_at(&self, msg: &Broadcast, position: Option<&Position>) -> usize {
        let entered = Kind::Broadcast(Instant::now());
        let mut frames: [Option<Frame>; 2] = [None, None];
        let mut delivered = 0;
        let shard = self.shard(&msg.topic).lock();
        let Some(topic) = shard.get(msg.topic.as_str()) else {
            return 0;
        };
        for sub in topic.subs.values() {
            if msg.from == Some(sub.conn.id()) {
                continue;
            }
            let (intercept, seam) = match &sub.target {
                Target::SocketId => {
                    if msg.event == "disconnect" {
                        sub.conn.close(Disconnect::Forced);
                        delivered += 1;
                    }
                    continue;
                }
                Target::Channel(intercept) => (intercept, None),
                Target::Kept(intercept, seam) => (intercept, Some(seam)),
            };
            if let Some(i) = intercept.as_deref().filter(|i| i.wants(&msg.event)) {
                // The seam counts it too, so its offsets stay whole.
                let admitted = seam.is_none_or(|s| s.offer(&sub.conn, position, None, entered));
                if admitted && i.deliver(&msg.event, &msg.payload) {
                    delivered += 1;
                }
                continue;
            }
            let vsn = sub.conn.vsn();
            let slot = &mut frames[vsn.index()];
            if slot.is_none() {
                *slot = encode(vsn, msg, position);
            }
            let Some(frame) = slot else { continue };
            let queued = match seam {
                Some(seam) => seam.offer(&sub.conn, position, Some(frame), entered),
                None => sub.conn.enqueue(Out::Data(frame.clone(), entered)),
            };
            if queued {
                delivered += 1;
            }
        }
        delivered
    }
}

/// Encodes a broadcast for `vsn` clients; a kept message's position
/// travels in the ref slot, which phoenix.js hands to `channel.on`'s
/// callback as its second argument.
pub(crate) fn encode(vsn: Vsn, msg: &Broadcast, position: Option<&Position>) -> Option<Frame> {
    let position = position.map(Position::to_string);
    let out = Outbound::Message {
        join_ref: None,
        ref_: position.as_deref(),
        topic: &msg.topic,
        event: &msg.event,
        payload: &msg.payload,
    };
    match vsn.encode(&out) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(topic = %msg.topic, error = %e, "broadcast cannot be encoded for {} clients", vsn.as_str());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Budget = Budget {
        frames: 8,
        bytes: 1 << 20,
    };

    fn fastlane(conn: &ConnHandle) -> Subscriber {
        Subscriber {
            conn: conn.clone(),
            target: Target::Channel(None),
        }
    }

    #[tokio::test]
    async fn encodes_once_and_shares_bytes() {
        let hub = Hub::default();
        let conns: Vec<_> = (0..3).map(|_| ConnHandle::new(Vsn::V2, BUDGET)).collect();
        for c in &conns {
            hub.subscribe("t", fastlane(c));
        }
        let msg = Broadcast {
            topic: "t".into(),
            event: "e".into(),
            payload: Payload::empty(),
            from: Some(conns[0].id()),
        };
        assert_eq!(hub.dispatch(&msg), 2);
        let mut ptrs = Vec::new();
        for c in &conns[1..] {
            let mut batch = Vec::new();
            c.next_batch(&mut batch).await;
            let Out::Data(Frame::Text(b), _) = &batch[0] else {
                panic!()
            };
            assert_eq!(&b[..], br#"[null,null,"t","e",{}]"#);
            ptrs.push(b.as_ptr());
        }
        assert_eq!(ptrs[0], ptrs[1], "subscribers share one encoding");
    }

    #[test]
    fn unsubscribe_removes_empty_topics() {
        let hub = Hub::default();
        let c = ConnHandle::new(Vsn::V1, BUDGET);
        let (id, brokered) = hub.subscribe("t", fastlane(&c));
        assert!(!brokered);
        assert_eq!(hub.topics(), 1);
        assert_eq!(hub.unsubscribe("t", id), 0);
        assert_eq!(hub.topics(), 0);
        assert_eq!(hub.subscribers("t"), 0);
    }

    #[test]
    fn a_topic_holds_its_broker_subscriptions_until_its_last_subscriber_leaves() {
        let hub = Hub::default();
        let c = ConnHandle::new(Vsn::V2, BUDGET);
        let (a, brokered) = hub.subscribe("t", fastlane(&c));
        assert!(!brokered, "the first subscriber asks the broker");
        hub.brokered("t");
        let (b, brokered) = hub.subscribe("t", fastlane(&c));
        assert!(brokered, "later ones ride on its subscription");
        // The first leaves: the subscription stays for the second.
        assert_eq!(hub.unsubscribe("t", a), 0);
        let (c2, brokered) = hub.subscribe("t", fastlane(&c));
        assert!(brokered);
        assert_eq!(hub.unsubscribe("t", b), 0);
        assert_eq!(hub.unsubscribe("t", c2), 1, "the last releases it");
        assert!(!hub.subscribe("t", fastlane(&c)).1);
    }
}
