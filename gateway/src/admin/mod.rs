//! What operators ask of the fleet: its pods, its topics, who is on one,
//! and closing connections. Every pod with the admin API keeps a registry
//! of its connections and answers questions that come through Redis, so
//! one pod answers for all of them and names those that did not answer
//! (docs/admin.md). The HTTP routes and the page are the binary's
//! (`app::admin`); this is the part the library holds, because it needs
//! the connections.

mod fleet;

pub use crate::channel::registry::{Listed, Who};

use crate::channel::registry::Registry;
use crate::endpoint::Endpoint;
use crate::protocol::Transport;
use crate::pubsub::{Ask as HistoryAsk, PubSub};
use fleet::{Answers, Fleet};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Most topics one pod lists in one answer, and most connections one topic
/// lists per pod.
pub const MAX_LIST: usize = 1000;
/// Most history messages a topic's listing shows.
pub const MAX_HISTORY: usize = 100;

/// A topic's channels in all, and per pod.
type PerPod = (u64, Map<String, Value>);

/// A question every pod answers about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Question {
    /// The pod's facts and counts.
    Pods,
    /// Topics joined here whose names start with `prefix`: the first
    /// `limit` after `after` by name, or the `limit` busiest.
    Topics {
        prefix: String,
        after: Option<String>,
        limit: usize,
        busiest: bool,
    },
    /// One topic's channels here, listing at most `limit` connections.
    Topic { topic: String, limit: usize },
    /// Close the connections `who` names.
    Disconnect { who: Who },
    /// End the channels of `topic` of the connections `who` names.
    Remove { topic: String, who: Who },
}

/// How the admin API is set up.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    /// How long a fleet-wide question waits for the pods' answers.
    pub timeout: Duration,
    /// Where this pod is reached, as its listing shows it.
    pub address: String,
}

/// The admin API's core; cheap to clone.
#[derive(Debug, Clone)]
pub struct Admin(Arc<Inner>);

#[derive(Debug)]
pub(crate) struct Inner {
    /// This pod's id among the fleet's (the Redis broker's, or the node
    /// name with the in-memory broker).
    pod: Arc<str>,
    options: AdminOptions,
    started: Instant,
    started_at: u64,
    registry: Arc<Registry>,
    pubsub: PubSub,
    endpoint: OnceLock<Weak<Endpoint>>,
    fleet: Fleet,
}

impl Admin {
    /// The admin core of a pod publishing through `pubsub`.
    pub fn new(pubsub: &PubSub, options: AdminOptions) -> Self {
        let redis = pubsub.redis_broker().cloned();
        let pod: Arc<str> = match &redis {
            Some(r) => Arc::from(r.node()),
            None => Arc::from(format!("{:08x}", std::process::id())),
        };
        Admin(Arc::new(Inner {
            registry: Registry::new(&pod),
            pod,
            options,
            started: Instant::now(),
            started_at: unix_now(),
            pubsub: pubsub.clone(),
            endpoint: OnceLock::new(),
            fleet: Fleet::new(redis),
        }))
    }

    /// Where connections register: give it to the endpoint's builder.
    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.0.registry
    }

    /// Connects the core to the endpoint it reports on, and starts
    /// answering the fleet's questions (with a runtime). The endpoint must
    /// have been built with [`registry`](Self::registry) (its connections
    /// register there).
    pub(crate) fn attach(&self, endpoint: &Arc<Endpoint>) {
        if self.0.endpoint.set(Arc::downgrade(endpoint)).is_ok() {
            Fleet::start(&self.0);
        }
    }

    /// This pod's id in the fleet's answers and in connection ids.
    pub fn pod(&self) -> &str {
        &self.0.pod
    }

    async fn ask(&self, q: Question) -> Result<Answers, AdminError> {
        self.0
            .fleet
            .ask(&self.0, q, self.0.options.timeout)
            .await
            .map_err(|e| AdminError::Unavailable(e.to_string()))
    }

    /// Every pod's facts: `{"pods": [...], "missing": [...]}`.
    ///
    /// # Errors
    /// When Redis cannot carry the question.
    pub async fn pods(&self) -> Result<Value, AdminError> {
        let a = self.ask(Question::Pods).await?;
        let mut pods: Vec<Value> = a.answers.into_iter().map(|(_, v)| v).collect();
        pods.sort_by(|x, y| x["id"].as_str().cmp(&y["id"].as_str()));
        Ok(json!({"pods": pods, "missing": a.missing}))
    }

    /// The fleet's topics under `prefix`, with their channels per pod: the
    /// first `limit` after `after` by name (`next` continues), or with
    /// `busiest` the `limit` with most channels.
    ///
    /// # Errors
    /// When Redis cannot carry the question.
    pub async fn topics(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        busiest: bool,
    ) -> Result<Value, AdminError> {
        let limit = limit.clamp(1, MAX_LIST);
        let a = self
            .ask(Question::Topics {
                prefix: prefix.to_owned(),
                after: after.map(str::to_owned),
                // One more than asked: whether a next page exists.
                limit: limit + 1,
                busiest,
            })
            .await?;
        let mut merged: BTreeMap<String, PerPod> = BTreeMap::new();
        for (pod, answer) in &a.answers {
            let listed = answer["topics"].as_array().cloned().unwrap_or_default();
            for t in listed {
                let (Some(name), Some(n)) = (t[0].as_str(), t[1].as_u64()) else {
                    continue;
                };
                let e = merged.entry(name.to_owned()).or_default();
                e.0 += n;
                e.1.insert(pod.clone(), n.into());
            }
        }
        let mut topics: Vec<(String, PerPod)> = merged.into_iter().collect();
        if busiest {
            topics.sort_by(|x, y| y.1 .0.cmp(&x.1 .0).then_with(|| x.0.cmp(&y.0)));
        }
        let more = topics.len() > limit;
        topics.truncate(limit);
        let next = (!busiest && more)
            .then(|| topics.last().map(|t| t.0.clone()))
            .flatten();
        let topics: Vec<Value> = topics
            .into_iter()
            .map(|(topic, (n, pods))| json!({"topic": topic, "subscribers": n, "pods": pods}))
            .collect();
        Ok(json!({"topics": topics, "next": next, "missing": a.missing}))
    }

    /// One topic: its channels per pod, up to `limit` connections listed,
    /// who is present, and the last `last` messages of its history.
    ///
    /// # Errors
    /// When Redis cannot carry the question.
    pub async fn topic(&self, topic: &str, limit: usize, last: usize) -> Result<Value, AdminError> {
        let a = self
            .ask(Question::Topic {
                topic: topic.to_owned(),
                limit: limit.min(MAX_LIST),
            })
            .await?;
        let mut total = 0;
        let mut pods = Map::new();
        let mut connections = Vec::new();
        for (pod, answer) in a.answers {
            let n = answer["subscribers"].as_u64().unwrap_or(0);
            total += n;
            if n > 0 {
                pods.insert(pod, n.into());
            }
            if let Some(Value::Array(list)) = answer.get("connections") {
                connections.extend(list.iter().cloned());
            }
        }
        connections.truncate(limit.min(MAX_LIST));
        let presence = match self.endpoint() {
            Some(ep) => match ep.presence().list(topic).await {
                Ok(list) => Value::Object(list),
                Err(e) => json!({"error": e.to_string()}),
            },
            None => Value::Null,
        };
        let history = self.history(topic, last.min(MAX_HISTORY)).await;
        Ok(json!({
            "topic": topic,
            "subscribers": total,
            "pods": pods,
            "connections": connections,
            "presence": presence,
            "history": history,
            "missing": a.missing,
        }))
    }

    /// The topic's history top and last `n` messages, or `null` when it
    /// keeps none.
    async fn history(&self, topic: &str, n: usize) -> Value {
        let Some(h) = self.0.pubsub.history_of(topic) else {
            return Value::Null;
        };
        match self
            .0
            .pubsub
            .read_history(topic, &h, &HistoryAsk::Last(n))
            .await
        {
            Ok(r) => {
                let messages: Vec<Value> = r
                    .messages
                    .iter()
                    .map(|k| {
                        json!({
                            "position": k.position.to_string(),
                            "event": k.event,
                            "payload": k.payload.value(),
                        })
                    })
                    .collect();
                json!({"top": r.top.to_string(), "messages": messages})
            }
            Err(e) => json!({"error": e.to_string()}),
        }
    }

    /// Closes the connections `who` names on every pod: `{"disconnected":
    /// n, "pods": {...}, "missing": [...]}`.
    ///
    /// # Errors
    /// When Redis cannot carry the question.
    pub async fn disconnect(&self, who: Who) -> Result<Value, AdminError> {
        let a = self.ask(Question::Disconnect { who }).await?;
        Ok(tally(a, "disconnected"))
    }

    /// Ends the channels of `topic` of the connections `who` names, on
    /// every pod: their clients receive `phx_close` and stay connected.
    /// `{"removed": n, "pods": {...}, "missing": [...]}`.
    ///
    /// # Errors
    /// When Redis cannot carry the question.
    pub async fn remove(&self, topic: &str, who: Who) -> Result<Value, AdminError> {
        let a = self
            .ask(Question::Remove {
                topic: topic.to_owned(),
                who,
            })
            .await?;
        Ok(tally(a, "removed"))
    }

    fn endpoint(&self) -> Option<Arc<Endpoint>> {
        self.0.endpoint.get().and_then(Weak::upgrade)
    }
}

impl Inner {
    /// This pod's answer to `q`.
    async fn answer(&self, q: &Question) -> Value {
        let hub = self.pubsub.hub();
        match q {
            Question::Pods => {
                let endpoint = self.endpoint.get().and_then(Weak::upgrade);
                let (ready, draining, node, bound) = match &endpoint {
                    Some(ep) => (
                        ep.readiness().0,
                        ep.is_draining(),
                        ep.node().to_owned(),
                        ep.local_addr(),
                    ),
                    None => (false, false, String::new(), None),
                };
                let address = bound.map_or_else(|| self.options.address.clone(), shown);
                let counts = self.registry.counts();
                let topics = hub.channel_counts("");
                let channels: usize = topics.iter().map(|(_, n)| n).sum();
                json!({
                    "id": &*self.pod,
                    "node": node,
                    "address": address,
                    "version": env!("CARGO_PKG_VERSION"),
                    "started_at": self.started_at,
                    "uptime_s": self.started.elapsed().as_secs(),
                    "connections": {
                        Transport::WebSocket.as_str(): counts[Transport::WebSocket.index()],
                        Transport::LongPoll.as_str(): counts[Transport::LongPoll.index()],
                    },
                    "channels": channels,
                    "topics": topics.len(),
                    "ready": ready,
                    "draining": draining,
                })
            }
            Question::Topics {
                prefix,
                after,
                limit,
                busiest,
            } => {
                let mut topics = hub.channel_counts(prefix);
                if *busiest {
                    topics.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
                } else {
                    if let Some(after) = after {
                        topics.retain(|(t, _)| **t > **after);
                    }
                    topics.sort_by(|x, y| x.0.cmp(&y.0));
                }
                topics.truncate((*limit).min(MAX_LIST + 1));
                let topics: Vec<Value> = topics.iter().map(|(t, n)| json!([&**t, n])).collect();
                json!({"topics": topics})
            }
            Question::Topic { topic, limit } => {
                let (n, members) = hub.members(topic, (*limit).min(MAX_LIST));
                let connections: Vec<Listed> = members
                    .iter()
                    .filter_map(|c| self.registry.listed(c))
                    .collect();
                json!({"subscribers": n, "connections": connections})
            }
            Question::Disconnect { who } => {
                json!({"disconnected": self.registry.disconnect(who)})
            }
            Question::Remove { topic, who } => {
                json!({"removed": self.registry.remove_from(topic, who)})
            }
        }
    }
}

/// Adds up the pods' counts under `what`: `{what: n, "pods": {pod: n},
/// "missing": [...]}`.
fn tally(a: Answers, what: &str) -> Value {
    let mut total = 0;
    let mut pods = Map::new();
    for (pod, answer) in a.answers {
        let n = answer[what].as_u64().unwrap_or(0);
        total += n;
        if n > 0 {
            pods.insert(pod, n.into());
        }
    }
    json!({what: total, "pods": pods, "missing": a.missing})
}

/// An address as listings show it: an unspecified IP (`0.0.0.0`) becomes
/// `$POD_IP` when set, else the host name, so that pods can be told apart.
fn shown(addr: std::net::SocketAddr) -> String {
    if !addr.ip().is_unspecified() {
        return addr.to_string();
    }
    let host = std::env::var("POD_IP")
        .ok()
        .filter(|ip| !ip.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| addr.ip().to_string());
    format!("{host}:{}", addr.port())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Why an admin question got no answer.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Redis cannot carry questions to the other pods now.
    #[error("cannot ask the other pods: {0}")]
    Unavailable(String),
}
