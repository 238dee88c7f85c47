//! Forwarding client pushes to backends through Redis streams, and
//! answering each push with its backend's answer (docs/backends.md).
//!
//! A push is appended to its rule's stream with a reply address: this pod's
//! reply channel and a `reply_ref` unique to the push. The push waits in
//! the pod's table of pending pushes; the first answer published with its
//! `reply_ref` takes it out and is the client's reply, so a second answer
//! (a backend that retried, a claimed entry handled twice) finds nothing
//! and is dropped with its broadcasts. A push not answered within its
//! rule's `reply_timeout` is answered `{"reason":"timeout"}`; an answer
//! that still comes within one more `reply_timeout` has its broadcasts
//! sent (its backend did the work), not its reply.

use super::answer::{self, Answer, Status};
use crate::channel::{HandleIn, ReplyRef};
use crate::metrics::{metrics, Answered, Forwarded};
use crate::protocol::{Json, Payload};
use crate::pubsub::{BrokerError, NodeInbox, PubSub, RedisBroker};
use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, OnceCell};

/// Most pushes a pod keeps waiting for answers, its channels together:
/// beyond, pushes are answered `{"reason":"backend busy"}`.
pub(crate) const MAX_PENDING: usize = 100_000;
/// At most one log line about malformed answers per this interval.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How a forwarded push is answered (`[channel.forward] reply`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReplyMode {
    /// With the answer a backend publishes (default).
    #[default]
    Worker,
    /// As soon as the push is in the stream.
    OnStore,
}

/// Where a rule forwards its pushes, and how they are answered
/// (`[channel.forward]`, converted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The stream's key after the Redis prefix: `in:` and the name.
    pub stream: String,
    /// How the client is answered.
    pub reply: ReplyMode,
    /// How long a backend may take to answer.
    pub reply_timeout: Duration,
    /// The claims forwarded; `None`: all.
    pub claims: Option<Vec<String>>,
    /// About how many entries the stream keeps.
    pub max_len: usize,
    /// Pushes of one channel awaiting their answer at once.
    pub max_pending: usize,
    /// Pushes per second of one channel.
    pub rate: u32,
}

/// A pod's forwarding: the reply channel and the pushes awaiting answers.
pub(crate) struct Forwarder {
    redis: Arc<RedisBroker>,
    pubsub: PubSub,
    /// The reply channel's Redis name, once Redis confirmed the
    /// subscription (on the first push).
    reply_to: OnceCell<String>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    /// The next `reply_ref`; starts at random, so that a restarted pod
    /// under the same name never takes an answer meant for its former self.
    next: AtomicU64,
    /// When malformed answers were last logged.
    logged: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("pending", &self.pending.lock().len())
            .finish_non_exhaustive()
    }
}

/// What a forwarded push carries besides its rule's stream.
#[derive(Debug)]
pub(crate) struct Push<'a> {
    pub(crate) topic: &'a str,
    pub(crate) event: &'a str,
    pub(crate) payload: &'a Json,
    pub(crate) ref_: Option<&'a str>,
    pub(crate) join_ref: Option<&'a str>,
    pub(crate) socket_id: Option<&'a str>,
    pub(crate) conn: u64,
    pub(crate) pod: &'a str,
    /// The claims, as a JSON object.
    pub(crate) claims: String,
}

impl Forwarder {
    /// The forwarding of a pod whose broker is Redis; `None` otherwise
    /// (config validation refuses forwarding rules without Redis).
    pub(crate) fn new(pubsub: &PubSub) -> Option<Arc<Self>> {
        let redis = pubsub.redis_broker()?.clone();
        let seed = std::collections::hash_map::RandomState::new();
        let start = std::hash::BuildHasher::hash_one(&seed, Instant::now()) >> 1;
        Some(Arc::new(Forwarder {
            redis,
            pubsub: pubsub.clone(),
            reply_to: OnceCell::new(),
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(start),
            logged: Mutex::new(None),
        }))
    }

    /// The reply channel, subscribed on first use and kept across
    /// reconnects by the bus.
    async fn reply_channel(self: &Arc<Self>) -> Result<&str, BrokerError> {
        self.reply_to
            .get_or_try_init(|| async {
                let inbox: Arc<dyn NodeInbox> = Arc::new(Replies(Arc::downgrade(self)));
                self.redis.listen_replies(inbox).await
            })
            .await
            .map(String::as_str)
    }

    /// Forwards `push` per `rule`: appended to the stream, then answered
    /// (through `reply`, later) with its backend's answer, or at once when
    /// the rule answers on store or Redis cannot take it. `from` skips the
    /// pushing connection in the answer's broadcasts; `slot` counts the push
    /// against its channel until answered.
    pub(crate) async fn forward(
        self: &Arc<Self>,
        rule: &Forward,
        push: Push<'_>,
        reply: Option<ReplyRef>,
        from: Option<u64>,
        slot: PendingSlot,
    ) -> HandleIn {
        let m = &metrics().forward;
        if !self.redis.bus().is_connected() {
            m.push(Forwarded::Unavailable);
            return HandleIn::error(Payload::reason("backend unavailable"));
        }
        if rule.reply == ReplyMode::OnStore {
            return match self.append(rule, &push, None).await {
                Ok(id) => {
                    m.push(Forwarded::Stored);
                    HandleIn::ok(Payload::json(&serde_json::json!({ "id": id })))
                }
                Err(e) => self.unavailable(&push, &e),
            };
        }
        let reply_to = match self.reply_channel().await {
            Ok(r) => r.to_owned(),
            Err(e) => return self.unavailable(&push, &e),
        };
        let reply_ref = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock();
            if pending.len() >= MAX_PENDING {
                drop(pending);
                m.push(Forwarded::Busy);
                return HandleIn::error(Payload::reason("backend busy"));
            }
            pending.insert(reply_ref, tx);
            m.set_pending(pending.len());
        }
        let address = (reply_to.as_str(), reply_ref.to_string());
        match self
            .append(rule, &push, Some((address.0, &address.1)))
            .await
        {
            Ok(_) => {}
            Err(e) => {
                self.forget(reply_ref);
                return self.unavailable(&push, &e);
            }
        }
        tokio::spawn(
            self.clone()
                .wait(reply_ref, rx, rule.reply_timeout, reply, from, slot),
        );
        HandleIn::NoReply
    }

    fn unavailable(&self, push: &Push<'_>, e: &BrokerError) -> HandleIn {
        tracing::warn!(topic = push.topic, error = %e, "could not forward a push");
        metrics().forward.push(Forwarded::Unavailable);
        HandleIn::error(Payload::reason("backend unavailable"))
    }

    /// XADDs the push, with its reply address when it awaits an answer;
    /// bounded by the rule's timeout, so a Redis that hangs answers the
    /// client as one that is down.
    async fn append(
        &self,
        rule: &Forward,
        push: &Push<'_>,
        reply: Option<(&str, &str)>,
    ) -> Result<String, BrokerError> {
        // As lifecycle events name it: unique across pods and restarts.
        let conn = format!("{}:{}", self.redis.node(), push.conn);
        let mut fields: Vec<(&str, &[u8])> = vec![
            ("topic", push.topic.as_bytes()),
            ("event", push.event.as_bytes()),
            ("payload", push.payload.bytes()),
            ("ref", push.ref_.unwrap_or_default().as_bytes()),
            ("join_ref", push.join_ref.unwrap_or_default().as_bytes()),
            ("socket_id", push.socket_id.unwrap_or_default().as_bytes()),
            ("conn", conn.as_bytes()),
            ("pod", push.pod.as_bytes()),
            ("claims", push.claims.as_bytes()),
        ];
        if let Some((to, reply_ref)) = reply {
            fields.push(("reply_to", to.as_bytes()));
            fields.push(("reply_ref", reply_ref.as_bytes()));
        }
        let append = self.redis.bus().append(&rule.stream, rule.max_len, &fields);
        match tokio::time::timeout(rule.reply_timeout, append).await {
            Ok(Ok(id)) => Ok(id),
            Ok(Err(e)) => Err(BrokerError(e.to_string())),
            Err(_) => Err(BrokerError("redis did not answer the XADD in time".into())),
        }
    }

    /// Waits for the answer to `reply_ref` and replies with it, or with a
    /// timeout; then sends its broadcasts, even if late.
    async fn wait(
        self: Arc<Self>,
        reply_ref: u64,
        mut rx: oneshot::Receiver<Answer>,
        timeout: Duration,
        reply: Option<ReplyRef>,
        from: Option<u64>,
        slot: PendingSlot,
    ) {
        let m = &metrics().forward;
        let started = Instant::now();
        let broadcasts = match tokio::time::timeout(timeout, &mut rx).await {
            Ok(Ok(answer)) => {
                m.answer(Answered::Accepted);
                m.round_trip(started.elapsed().as_secs_f64());
                let (result, status, response) = match &answer.reply {
                    Ok(r) if r.status == Status::Ok => (Forwarded::Ok, Status::Ok, r.response()),
                    Ok(r) => (Forwarded::Error, Status::Error, r.response()),
                    Err(_) => (
                        Forwarded::BadReply,
                        Status::Error,
                        Payload::reason("bad backend reply"),
                    ),
                };
                m.push(result);
                if let Some(r) = &reply {
                    r.reply(status.as_str(), response);
                }
                drop(slot);
                answer.reply.ok()
            }
            Ok(Err(_)) => {
                // Taken out of the table without an answer: cannot happen
                // while the forwarder lives, which this task holds; if it
                // did, the client still hears.
                m.push(Forwarded::Unavailable);
                if let Some(r) = &reply {
                    r.reply("error", Payload::reason("backend unavailable"));
                }
                return;
            }
            Err(_) => {
                m.push(Forwarded::Timeout);
                if let Some(r) = &reply {
                    r.reply("error", Payload::reason("timeout"));
                }
                drop(slot);
                let late = tokio::time::timeout(timeout, rx).await;
                self.forget(reply_ref);
                match late {
                    Ok(Ok(answer)) => {
                        m.answer(Answered::Late);
                        answer.reply.ok()
                    }
                    _ => return,
                }
            }
        };
        for b in broadcasts.iter().flat_map(|r| r.broadcasts(from)) {
            let topic = b.topic.clone();
            if let Err(e) = self.pubsub.publish(b, None).await {
                tracing::warn!(topic, error = %e, "a backend's broadcast failed");
            }
        }
    }

    /// Takes `reply_ref` out of the table, if still there.
    fn forget(&self, reply_ref: u64) {
        let mut pending = self.pending.lock();
        pending.remove(&reply_ref);
        metrics().forward.set_pending(pending.len());
    }

    /// An answer published to the reply channel.
    fn answered(&self, body: &Bytes) {
        let m = &metrics().forward;
        let answer = match answer::read(body) {
            Ok(a) => a,
            Err(why) => {
                m.answer(Answered::Malformed);
                self.log_malformed(&why);
                return;
            }
        };
        if let Err(why) = &answer.reply {
            self.log_malformed(why);
        }
        let waiting = {
            let mut pending = self.pending.lock();
            let w = pending.remove(&answer.reply_ref);
            m.set_pending(pending.len());
            w
        };
        match waiting {
            Some(tx) => {
                if tx.send(answer).is_err() {
                    m.answer(Answered::Unknown);
                }
            }
            None => m.answer(Answered::Unknown),
        }
    }

    fn log_malformed(&self, why: &str) {
        let mut logged = self.logged.lock();
        let now = Instant::now();
        if logged.is_none_or(|at| now.duration_since(at) >= LOG_EVERY) {
            *logged = Some(now);
            tracing::warn!(
                error = why,
                "a backend published a malformed answer to a forwarded push \
                 (expected {{\"ref\",\"status\",\"response\",\"broadcasts\"}}); \
                 more are counted in gateway_forward_answers_total"
            );
        }
    }
}

/// Where the bus hands this pod's reply channel's messages.
struct Replies(Weak<Forwarder>);

impl NodeInbox for Replies {
    fn deliver(&self, body: Bytes) {
        if let Some(f) = self.0.upgrade() {
            f.answered(&body);
        }
    }
}

/// One joined channel's forwarding budget: pushes awaiting answers, and
/// its rate. Made on its first forwarded push.
#[derive(Debug)]
pub(crate) struct Budget {
    pending: Arc<AtomicUsize>,
    tokens: f64,
    at: Instant,
}

/// A push counted against its channel's pending pushes until dropped.
#[derive(Debug)]
pub(crate) struct PendingSlot(Arc<AtomicUsize>);

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Budget {
    pub(crate) fn new(rule: &Forward) -> Self {
        Budget {
            pending: Arc::new(AtomicUsize::new(0)),
            tokens: f64::from(rule.rate),
            at: Instant::now(),
        }
    }

    /// Admits one push, or says why not (the client's error reply).
    pub(crate) fn admit(&mut self, rule: &Forward) -> Result<PendingSlot, HandleIn> {
        let now = Instant::now();
        let rate = f64::from(rule.rate);
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(rate);
        self.at = now;
        let m = &metrics().forward;
        if self.tokens < 1.0 {
            m.push(Forwarded::RateLimited);
            return Err(HandleIn::error(Payload::reason("rate limited")));
        }
        if self.pending.load(Ordering::Relaxed) >= rule.max_pending {
            m.push(Forwarded::TooManyPending);
            return Err(HandleIn::error(Payload::reason("too many pending pushes")));
        }
        self.tokens -= 1.0;
        self.pending.fetch_add(1, Ordering::Relaxed);
        Ok(PendingSlot(self.pending.clone()))
    }
}
