//! A client-side presence list that applies `presence_state` and
//! `presence_diff` exactly as phoenix.js's `Presence.syncState` /
//! `syncDiff` do (joins before leaves, metas matched by `phx_ref`), so tests
//! can check what `presence.list()` would show.

use crate::phoenix::{PhxClient, Received};
use crate::redis_server::RedisConn;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// key -> metas, as a phoenix.js `Presence` holds them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct View {
    pub state: BTreeMap<String, Vec<Value>>,
    pub synced: bool,
}

fn metas(v: &Value) -> Vec<Value> {
    v["metas"].as_array().cloned().unwrap_or_default()
}

fn phx_ref(m: &Value) -> &str {
    m["phx_ref"].as_str().unwrap_or_default()
}

impl View {
    /// Applies a diff: joins first, then leaves.
    pub fn diff(&mut self, diff: &Value) {
        if let Some(joins) = diff["joins"].as_object() {
            for (key, p) in joins {
                let mut new = metas(p);
                let refs: Vec<String> = new.iter().map(|m| phx_ref(m).to_owned()).collect();
                if let Some(cur) = self.state.get(key) {
                    let mut kept: Vec<Value> = cur
                        .iter()
                        .filter(|m| !refs.iter().any(|r| r == phx_ref(m)))
                        .cloned()
                        .collect();
                    kept.append(&mut new);
                    new = kept;
                }
                self.state.insert(key.clone(), new);
            }
        }
        if let Some(leaves) = diff["leaves"].as_object() {
            for (key, p) in leaves {
                let gone: Vec<String> = metas(p).iter().map(|m| phx_ref(m).to_owned()).collect();
                if let Some(cur) = self.state.get_mut(key) {
                    cur.retain(|m| !gone.iter().any(|r| r == phx_ref(m)));
                    if cur.is_empty() {
                        self.state.remove(key);
                    }
                }
            }
        }
    }

    /// Replaces the state, as syncState ends up doing.
    pub fn set_state(&mut self, state: &Value) {
        self.state = state
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), metas(v))).collect())
            .unwrap_or_default();
        self.synced = true;
    }

    /// Applies one frame if it is presence for `topic`; true if it was.
    pub fn apply(&mut self, topic: &str, frame: &Value) -> bool {
        if frame[2] != topic {
            return false;
        }
        match frame[3].as_str() {
            Some("presence_state") => self.set_state(&frame[4]),
            Some("presence_diff") => self.diff(&frame[4]),
            _ => return false,
        }
        true
    }

    /// key -> number of metas.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        self.state
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect()
    }
}

/// A client joined to one presence topic, with its view.
#[derive(Debug)]
pub struct Member {
    pub client: PhxClient,
    pub topic: String,
    pub view: View,
}

impl Member {
    /// Joins `topic` with `params` (join_ref and ref `jr`), expecting `ok`; presence
    /// frames that arrive before the reply (a broadcast may overtake it) are
    /// applied to the view.
    pub async fn join(mut client: PhxClient, topic: &str, jr: &str, params: Value) -> Member {
        client
            .send(serde_json::json!([jr, jr, topic, "phx_join", params]))
            .await;
        let mut view = View::default();
        loop {
            let f = client.recv().await;
            if f[3] == "phx_reply" && f[1] == jr {
                assert_eq!(f[4]["status"], "ok", "{f}");
                break;
            }
            assert!(
                view.apply(topic, &f),
                "unexpected frame before the join reply: {f}"
            );
        }
        Member {
            client,
            topic: topic.into(),
            view,
        }
    }

    /// Reads frames until the view shows `want` (key -> metas), within `within`.
    pub async fn wait_for(&mut self, want: &[(&str, usize)], within: Duration) {
        let want: BTreeMap<String, usize> = want.iter().map(|(k, n)| (k.to_string(), *n)).collect();
        let deadline = Instant::now() + within;
        while !(self.view.synced && self.view.counts() == want) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.client.next_within(left).await {
                Some(Received::Text(f)) => {
                    self.view.apply(&self.topic, &f);
                }
                other => panic!(
                    "{}: waiting for {want:?}, view {:?}, got {other:?}",
                    self.topic,
                    self.view.counts()
                ),
            }
        }
    }
}

/// A pod that exists only in Redis: a liveness key, a place in the holders
/// set and presences written in the pods' format and key layout
/// (docs/redis.md#presence), without a process (so without diffs). Pods
/// treat it as alive until its key is deleted.
#[derive(Debug, Clone)]
pub struct SimulatedPod {
    pub prefix: String,
    pub name: String,
}

impl SimulatedPod {
    /// Announces pod `name` under `prefix`, alive for ten minutes.
    pub async fn start(resp: &mut RedisConn, prefix: &str, name: &str) -> SimulatedPod {
        let pod = SimulatedPod {
            prefix: prefix.into(),
            name: name.into(),
        };
        let _: String = resp
            .cmd(&["SET", &pod.alive_key(), "1", "PX", "600000"])
            .await;
        let _: i64 = resp
            .cmd(&["SADD", &format!("{prefix}presence-holders"), name])
            .await;
        pod
    }

    pub fn alive_key(&self) -> String {
        format!("{}presence-alive:{}", self.prefix, self.name)
    }

    pub fn topic_key(&self, topic: &str) -> String {
        format!("{}presence:{{{topic}}}", self.prefix)
    }

    /// The index of what the pod holds, hash-tagged with its liveness key.
    pub fn index_key(&self) -> String {
        format!("{}presence-pod:{{{}}}", self.prefix, self.alive_key())
    }

    /// Writes presences `(key, ref)` in `topic`, 1,000 per command.
    pub async fn track(&self, resp: &mut RedisConn, topic: &str, who: &[(String, String)]) {
        let index = self.index_key();
        for chunk in who.chunks(1000) {
            let mut hset = vec!["HSET".to_owned(), self.topic_key(topic)];
            let mut idx = vec!["HSET".to_owned(), index.clone()];
            for (key, r) in chunk {
                let value =
                    serde_json::json!({"key": key, "meta": {"phx_ref": r, "online_at": "0"}});
                hset.extend([r.clone(), value.to_string()]);
                idx.extend([r.clone(), topic.to_owned()]);
            }
            for cmd in [hset, idx] {
                let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
                let _: i64 = resp.cmd(&args).await;
            }
        }
    }

    /// Removes presence `r` from `topic` behind every pod's back (no diff).
    pub async fn forget(&self, resp: &mut RedisConn, topic: &str, r: &str) {
        let index = self.index_key();
        let _: i64 = resp.cmd(&["HDEL", &self.topic_key(topic), r]).await;
        let _: i64 = resp.cmd(&["HDEL", &index, r]).await;
    }
}
