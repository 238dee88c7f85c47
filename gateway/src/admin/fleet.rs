//! Questions to every pod and their answers, through Redis: the asking pod
//! publishes to `{prefix}adm:all`, every pod with the admin API answers on
//! the asker's `{prefix}adm:{pod}`, and the roster `{prefix}admin:pods`
//! (each pod's entry refreshed every few seconds) names the pods expected,
//! so those that did not answer in time are named too. With the in-memory
//! broker the pod is the whole fleet and answers itself.

use super::{Inner, Question};
use crate::pubsub::{BrokerError, NodeInbox, RedisBroker, ADMIN_TOPIC};
use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

/// The roster's hash, under the prefix.
const ROSTER: &str = "admin:pods";
/// How often a pod refreshes its roster entry.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(5);
/// A roster entry older than this is a pod that is gone.
const STALE: Duration = Duration::from_secs(15);
/// Questions a pod answers at once; more are dropped (and their askers
/// name this pod as not answering) rather than queued without bound.
const ANSWERING: usize = 8;

/// A question on the wire.
#[derive(Debug, Serialize, Deserialize)]
struct Ask {
    id: String,
    reply: String,
    q: Question,
}

/// An answer on the wire.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    re: String,
    pod: String,
    a: Value,
}

/// What the pods said.
#[derive(Debug, Default)]
pub(crate) struct Answers {
    /// Each pod's answer, by pod id, in the order they came.
    pub(crate) answers: Vec<(String, Value)>,
    /// The pods in the roster that did not answer in time.
    pub(crate) missing: Vec<String>,
}

/// Asks the fleet; one per pod.
pub(super) struct Fleet {
    redis: Option<Arc<RedisBroker>>,
    pending: Mutex<HashMap<String, mpsc::UnboundedSender<(String, Value)>>>,
    next: AtomicU64,
    answering: Arc<Semaphore>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("redis", &self.redis.is_some())
            .finish_non_exhaustive()
    }
}

impl Fleet {
    pub(super) fn new(redis: Option<Arc<RedisBroker>>) -> Self {
        Fleet {
            redis,
            pending: Mutex::default(),
            next: AtomicU64::new(1),
            answering: Arc::new(Semaphore::new(ANSWERING)),
        }
    }

    /// Listens for questions and answers and keeps this pod in the roster,
    /// for as long as `inner` lives. Does nothing without Redis.
    pub(super) fn start(inner: &Arc<Inner>) {
        let Some(redis) = inner.fleet.redis.clone() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::error!("the admin API needs a tokio runtime when the endpoint is built");
            return;
        }
        let weak = Arc::downgrade(inner);
        let inbox: Arc<dyn NodeInbox> = Arc::new(Inbox(weak.clone()));
        let pod = inner.pod.clone();
        tokio::spawn(async move {
            let names = [format!("{ADMIN_TOPIC}all"), format!("{ADMIN_TOPIC}{pod}")];
            let mut listening = [false, false];
            // Listening first, and again soon while Redis is not there yet:
            // a pod joins the roster only once it can answer.
            let mut retry = Duration::from_millis(100);
            while listening.contains(&false) {
                for (name, done) in names.iter().zip(listening.iter_mut()) {
                    if !*done {
                        *done = redis.listen_raw(name, inbox.clone()).await.is_ok();
                    }
                }
                if listening.contains(&false) {
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(HEARTBEAT);
                }
                if weak.strong_count() == 0 {
                    return;
                }
            }
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let connections = inner.registry.counts().iter().sum::<usize>() as u64;
                drop(inner);
                if let Err(e) = redis
                    .bus()
                    .report_in(ROSTER, &pod, connections, STALE)
                    .await
                {
                    tracing::debug!(error = %e, "admin roster not refreshed");
                }
                tokio::time::sleep(HEARTBEAT).await;
            }
        });
    }

    /// Asks every pod `q`, waiting at most `timeout` for their answers.
    ///
    /// # Errors
    /// When Redis cannot take the question.
    pub(super) async fn ask(
        &self,
        inner: &Arc<Inner>,
        q: Question,
        timeout: Duration,
    ) -> Result<Answers, BrokerError> {
        let Some(redis) = &self.redis else {
            return Ok(Answers {
                answers: vec![(inner.pod.to_string(), inner.answer(&q).await)],
                missing: Vec::new(),
            });
        };
        let connections = inner.registry.counts().iter().sum::<usize>() as u64;
        let roster = redis
            .bus()
            .report_in(ROSTER, &inner.pod, connections, STALE)
            .await
            .map_err(|e| BrokerError(e.to_string()))?;
        let mut expected: BTreeSet<String> = roster.into_iter().map(|p| p.pod).collect();
        let id = format!(
            "{}/{}",
            inner.pod,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.pending.lock().insert(id.clone(), tx);
        let _forget = Forget(&self.pending, &id);
        let ask = Ask {
            id: id.clone(),
            reply: format!("{ADMIN_TOPIC}{}", inner.pod),
            q,
        };
        let body = serde_json::to_vec(&ask).map_err(|e| BrokerError(e.to_string()))?;
        redis
            .publish_raw(&format!("{ADMIN_TOPIC}all"), Bytes::from(body))
            .await?;
        let mut out = Answers::default();
        let deadline = tokio::time::Instant::now() + timeout;
        while !expected.is_empty() || out.answers.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((pod, a))) => {
                    expected.remove(&pod);
                    if !out.answers.iter().any(|(p, _)| *p == pod) {
                        out.answers.push((pod, a));
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        // Pods that answer after the roster's last look still count.
        while let Ok((pod, a)) = rx.try_recv() {
            expected.remove(&pod);
            if !out.answers.iter().any(|(p, _)| *p == pod) {
                out.answers.push((pod, a));
            }
        }
        out.missing = expected.into_iter().collect();
        Ok(out)
    }

    fn answered(&self, answer: Answer) {
        if let Some(tx) = self.pending.lock().get(&answer.re) {
            let _ = tx.send((answer.pod, answer.a));
        }
    }
}

/// Removes a question's waiter when its asker is done (or cancelled).
struct Forget<'a>(
    &'a Mutex<HashMap<String, mpsc::UnboundedSender<(String, Value)>>>,
    &'a str,
);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.lock().remove(self.1);
    }
}

/// Receives both channels: questions to answer, and answers to this pod's
/// questions.
struct Inbox(Weak<Inner>);

impl NodeInbox for Inbox {
    fn deliver(&self, body: Bytes) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        if let Ok(answer) = serde_json::from_slice::<Answer>(&body) {
            inner.fleet.answered(answer);
            return;
        }
        let ask = match serde_json::from_slice::<Ask>(&body) {
            // Answers go only to a pod's admin channel, never to a topic.
            Ok(ask) if ask.reply.starts_with(ADMIN_TOPIC) => ask,
            Ok(_) => {
                tracing::debug!("dropped an admin question with a foreign reply channel");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "dropped a malformed admin message");
                return;
            }
        };
        let Ok(permit) = inner.fleet.answering.clone().try_acquire_owned() else {
            tracing::debug!(
                id = ask.id,
                "too many admin questions at once; not answering"
            );
            return;
        };
        let Some(redis) = inner.fleet.redis.clone() else {
            return;
        };
        tokio::spawn(async move {
            let a = inner.answer(&ask.q).await;
            let answer = Answer {
                re: ask.id,
                pod: inner.pod.to_string(),
                a,
            };
            match serde_json::to_vec(&answer) {
                Ok(body) => {
                    if let Err(e) = redis.publish_raw(&ask.reply, Bytes::from(body)).await {
                        tracing::debug!(error = %e, "admin answer not sent");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "admin answer not encoded"),
            }
            drop(permit);
        });
    }
}
