//! The embedded single-node broker: publishing is local fan-out, and topics
//! with history keep it in memory with the semantics of the Redis functions
//! (`pubsub_redis::history`), so `make run` without Redis shows it too.

use super::history::{Ask, History, Kept, Position, Recovery};
use super::hub::{Broadcast, Hub};
use super::{Broker, BrokerError};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a topic's epoch and offset outlive its last message or join,
/// at least (as `pubsub_redis::history::META_TTL_MS`).
const META_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long an idempotency key drops retries.
const IDEMPOTENCY: Duration = Duration::from_secs(120);
/// Most topics with history held; the least recently used beyond it are
/// forgotten (their next message starts a new epoch).
const MAX_TOPICS: usize = 65_536;
/// Expired topics and keys are swept at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Delivers every broadcast to this node's hub, synchronously.
#[derive(Debug)]
pub struct MemoryBroker {
    hub: Arc<Hub>,
    logs: Mutex<Logs>,
}

#[derive(Debug)]
struct Logs {
    topics: HashMap<String, Log>,
    /// (topic, key) → the position it got, and when.
    seen: HashMap<(String, String), (Position, Instant)>,
    swept: Instant,
    epochs: RandomState,
    made: u64,
}

/// One topic's history.
#[derive(Debug)]
struct Log {
    epoch: Arc<str>,
    top: u64,
    kept: VecDeque<Kept>,
    /// The last message's time: the messages expire `ttl` after it.
    last: Instant,
    /// The last message's or join's: the epoch expires [`META_TTL`] (or
    /// `ttl`, if longer) after it.
    touched: Instant,
    ttl: Duration,
}

impl Log {
    fn new(epoch: Arc<str>, h: &History, now: Instant) -> Log {
        Log {
            epoch,
            top: 0,
            kept: VecDeque::new(),
            last: now,
            touched: now,
            ttl: h.ttl,
        }
    }

    fn meta_expired(&self, now: Instant) -> bool {
        now.duration_since(self.touched) > self.ttl.max(META_TTL)
    }
}

impl Logs {
    fn new_epoch(&mut self) -> Arc<str> {
        self.made += 1;
        let n = self.epochs.hash_one(self.made) & 0xff_ffff_ffff;
        Arc::from(format!("{n:x}"))
    }

    /// The topic's log, started anew when it has none or it expired.
    fn log(&mut self, topic: &str, h: &History, now: Instant) -> &mut Log {
        self.sweep(now);
        let fresh = self.topics.get(topic).is_none_or(|l| l.meta_expired(now));
        let epoch = fresh.then(|| self.new_epoch());
        let log = match (self.topics.entry(topic.to_owned()), epoch) {
            (Entry::Occupied(e), None) => e.into_mut(),
            (Entry::Occupied(mut e), Some(epoch)) => {
                e.insert(Log::new(epoch, h, now));
                e.into_mut()
            }
            (Entry::Vacant(e), epoch) => {
                let epoch = epoch.unwrap_or_else(|| Arc::from("0"));
                e.insert(Log::new(epoch, h, now))
            }
        };
        log.touched = now;
        log.ttl = h.ttl;
        if now.duration_since(log.last) > log.ttl {
            log.kept.clear();
        }
        while log.kept.len() > h.size {
            log.kept.pop_front();
        }
        log
    }

    fn sweep(&mut self, now: Instant) {
        if now.duration_since(self.swept) < SWEEP_EVERY && self.topics.len() < MAX_TOPICS {
            return;
        }
        self.swept = now;
        self.topics.retain(|_, l| !l.meta_expired(now));
        for l in self.topics.values_mut() {
            if now.duration_since(l.last) > l.ttl {
                l.kept = VecDeque::new();
            }
        }
        self.seen
            .retain(|_, (_, at)| now.duration_since(*at) < IDEMPOTENCY);
        if self.topics.len() >= MAX_TOPICS {
            // Forget the least recently used sixteenth at once.
            let mut touched: Vec<Instant> = self.topics.values().map(|l| l.touched).collect();
            let cut = touched.len() / 16;
            touched.select_nth_unstable(cut);
            let before = touched[cut];
            self.topics.retain(|_, l| l.touched > before);
        }
    }
}

impl MemoryBroker {
    /// A broker for `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        MemoryBroker {
            hub,
            logs: Mutex::new(Logs {
                topics: HashMap::new(),
                seen: HashMap::new(),
                swept: Instant::now(),
                epochs: RandomState::new(),
                made: 0,
            }),
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn subscribe(&self, _topic: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    fn unsubscribe(&self, _topic: &str) {}

    async fn publish(&self, msg: Broadcast) -> Result<(), BrokerError> {
        self.hub.dispatch(&msg);
        Ok(())
    }

    async fn publish_kept(
        &self,
        msg: Broadcast,
        history: &History,
        idempotency_key: Option<&str>,
    ) -> Result<Position, BrokerError> {
        let now = Instant::now();
        let mut logs = self.logs.lock();
        let seen_key = idempotency_key.map(|k| (msg.topic.clone(), k.to_owned()));
        if let Some((p, at)) = seen_key.as_ref().and_then(|k| logs.seen.get(k)) {
            if now.duration_since(*at) < IDEMPOTENCY {
                return Ok(p.clone());
            }
        }
        let log = logs.log(&msg.topic, history, now);
        log.top += 1;
        log.last = now;
        let position = Position {
            epoch: log.epoch.clone(),
            offset: log.top,
        };
        log.kept.push_back(Kept {
            position: position.clone(),
            event: msg.event.clone(),
            payload: msg.payload.clone(),
        });
        if log.kept.len() > history.size {
            log.kept.pop_front();
        }
        if let Some(k) = seen_key {
            logs.seen.insert(k, (position.clone(), now));
        }
        // Under the lock: subscribers see the offsets in order.
        self.hub.dispatch_at(&msg, Some(&position));
        Ok(position)
    }

    async fn read_history(
        &self,
        topic: &str,
        history: &History,
        ask: &Ask,
    ) -> Result<Recovery, BrokerError> {
        let mut logs = self.logs.lock();
        let log = logs.log(topic, history, Instant::now());
        let top = Position {
            epoch: log.epoch.clone(),
            offset: log.top,
        };
        let first = log.top + 1 - log.kept.len() as u64;
        let (recovered, from) = match ask {
            Ask::Top => (true, log.top + 1),
            Ask::Since(p) => {
                let missed = log.top.saturating_sub(p.offset);
                let whole = p.epoch == log.epoch
                    && p.offset <= log.top
                    && missed as usize <= history.max_recover
                    && p.offset + 1 >= first;
                (whole, if whole { p.offset + 1 } else { log.top + 1 })
            }
            Ask::Last(n) => {
                let n = (*n).min(history.max_recover).min(log.kept.len()) as u64;
                (true, log.top + 1 - n)
            }
        };
        let skip = usize::try_from(from - first).unwrap_or(usize::MAX);
        Ok(Recovery {
            top,
            recovered,
            messages: log.kept.iter().skip(skip).cloned().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Payload;

    fn msg(topic: &str, event: &str) -> Broadcast {
        Broadcast {
            topic: topic.into(),
            event: event.into(),
            payload: Payload::empty(),
            from: None,
        }
    }

    fn events(r: &Recovery) -> Vec<(u64, String)> {
        r.messages
            .iter()
            .map(|k| (k.position.offset, k.event.clone()))
            .collect()
    }

    #[tokio::test]
    async fn keeps_trims_and_recovers_only_whole() {
        let b = MemoryBroker::new(Arc::new(Hub::default()));
        let h = History::new(3, Duration::from_secs(60));
        let top = b.read_history("t", &h, &Ask::Top).await.unwrap().top;
        assert_eq!(top.offset, 0);
        for e in ["a", "b", "c", "d"] {
            b.publish_kept(msg("t", e), &h, None).await.unwrap();
        }
        let since = |o| {
            Ask::Since(Position {
                epoch: top.epoch.clone(),
                offset: o,
            })
        };
        let r = b.read_history("t", &h, &since(2)).await.unwrap();
        assert!(r.recovered);
        assert_eq!(events(&r), [(3, "c".into()), (4, "d".into())]);
        assert_eq!(r.top.offset, 4);
        // 1 was trimmed (size 3): 2..4 are kept, so from 1 on is not whole.
        let r = b.read_history("t", &h, &since(0)).await.unwrap();
        assert!(!r.recovered);
        assert!(r.messages.is_empty());
        let r = b.read_history("t", &h, &since(4)).await.unwrap();
        assert!(r.recovered && r.messages.is_empty());
        let r = b.read_history("t", &h, &since(9)).await.unwrap();
        assert!(!r.recovered, "beyond the top");
        let other = Ask::Since(Position {
            epoch: Arc::from("other"),
            offset: 2,
        });
        assert!(!b.read_history("t", &h, &other).await.unwrap().recovered);
        let r = b.read_history("t", &h, &Ask::Last(2)).await.unwrap();
        assert_eq!(events(&r), [(3, "c".into()), (4, "d".into())]);
        let r = b.read_history("t", &h, &Ask::Last(100)).await.unwrap();
        assert_eq!(r.messages.len(), 3);
        let limited = h.max_recover(1);
        assert!(
            !b.read_history("t", &limited, &since(2))
                .await
                .unwrap()
                .recovered
        );
    }

    #[tokio::test]
    async fn an_idempotency_key_publishes_once() {
        let b = MemoryBroker::new(Arc::new(Hub::default()));
        let h = History::new(10, Duration::from_secs(60));
        let p1 = b.publish_kept(msg("t", "a"), &h, Some("k")).await.unwrap();
        let p2 = b.publish_kept(msg("t", "a"), &h, Some("k")).await.unwrap();
        assert_eq!(p1, p2);
        let p3 = b
            .publish_kept(msg("t", "a"), &h, Some("other"))
            .await
            .unwrap();
        assert_eq!(p3.offset, 2);
    }
}
