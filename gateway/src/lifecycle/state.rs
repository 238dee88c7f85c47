//! What the pod holds per connection and stream: the lifecycle topics a
//! connection has joined, from which the writer makes events and the hash
//! entries survivors report when the pod dies.

use super::event::{End, Event, Join};
use super::{StreamId, StreamSpec};
use pubsub_redis::lifecycle::{HashOp, Record};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// One connection's joined topics of one stream.
#[derive(Debug)]
struct Entry {
    socket_id: Option<Arc<str>>,
    claims: Arc<str>,
    node: Arc<str>,
    topics: Vec<Arc<str>>,
}

/// Every connection of this pod with lifecycle topics, per stream.
#[derive(Debug)]
pub(super) struct State {
    streams: Arc<[StreamSpec]>,
    /// This pod's id (random per process start); `conn` fields are
    /// `{pod}:{n}`, unique across pods and restarts.
    pod: String,
    entries: HashMap<(u64, StreamId), Entry>,
}

/// A record and the `type` label it counts under.
pub(super) type Typed = (usize, Record);

const JOIN: usize = 0;
const LEAVE: usize = 1;
const DISCONNECT: usize = 2;

impl State {
    pub(super) fn new(streams: Arc<[StreamSpec]>, pod: String) -> State {
        State {
            streams,
            pod,
            entries: HashMap::new(),
        }
    }

    /// Applies `event`; the record to write, if it is one (an end of a
    /// topic the pod does not hold reports nothing).
    pub(super) fn apply(&mut self, event: Event) -> Option<Typed> {
        match event {
            Event::Join { stream, join, at } => Some(self.join(stream, join, at)),
            Event::End {
                stream,
                conn,
                topic,
                end,
                at,
            } => self.end(stream, conn, &topic, end, at),
            Event::Flush(_) => None,
        }
    }

    fn join(&mut self, stream: StreamId, j: Join, at: u64) -> Typed {
        let entry = self
            .entries
            .entry((j.conn, stream))
            .or_insert_with(|| Entry {
                socket_id: j.socket_id.clone(),
                claims: j.claims.clone(),
                node: j.node.clone(),
                topics: Vec::new(),
            });
        // The latest claims (a refreshed token) are what a disconnect reports.
        entry.claims = j.claims;
        if !entry.topics.contains(&j.topic) {
            entry.topics.push(j.topic.clone());
        }
        let mut r = self.record(stream, j.conn, "join", at);
        r.fields.push(("topic", j.topic.to_string()));
        r.hash = self.put(stream, j.conn);
        (JOIN, r)
    }

    fn end(
        &mut self,
        stream: StreamId,
        conn: u64,
        topic: &str,
        end: End,
        at: u64,
    ) -> Option<Typed> {
        let key = (conn, stream);
        let entry = self.entries.get_mut(&key)?;
        match end {
            End::Leave(reason) => {
                let i = entry.topics.iter().position(|t| **t == *topic)?;
                entry.topics.swap_remove(i);
                let mut r = self.record(stream, conn, "leave", at);
                r.fields.push(("topic", topic.to_owned()));
                r.fields.push(("reason", reason.to_owned()));
                r.hash = self.put(stream, conn);
                if self.entries.get(&key).is_some_and(|e| e.topics.is_empty()) {
                    self.entries.remove(&key);
                }
                Some((LEAVE, r))
            }
            End::Disconnect(reason) => {
                let mut r = self.record(stream, conn, "disconnect", at);
                r.fields.push(("topics", self.topics(&key)));
                r.fields.push(("reason", reason.to_owned()));
                r.hash = Some(HashOp::Delete {
                    field: field(conn, &self.spec(stream).name),
                });
                self.entries.remove(&key);
                Some((DISCONNECT, r))
            }
        }
    }

    /// The fields every event has; the caller adds `topic` or `topics`,
    /// and `reason`.
    fn record(&self, stream: StreamId, conn: u64, kind: &str, at: u64) -> Record {
        let spec = self.spec(stream);
        let e = self.entries.get(&(conn, stream));
        let fields = vec![
            ("type", kind.to_owned()),
            ("conn", self.conn(conn)),
            (
                "socket_id",
                e.and_then(|e| e.socket_id.as_deref())
                    .unwrap_or("")
                    .to_owned(),
            ),
            ("pod", e.map_or("", |e| &e.node).to_owned()),
            ("claims", e.map_or("{}", |e| &e.claims).to_owned()),
            ("at", at.to_string()),
        ];
        Record {
            stream: spec.name.clone(),
            max_len: spec.max_len,
            fields,
            hash: None,
        }
    }

    /// A stream's settings. Ids come from `Lifecycle::stream`: positions in
    /// this same list, which never changes.
    fn spec(&self, stream: StreamId) -> &StreamSpec {
        &self.streams[stream.0]
    }

    fn conn(&self, conn: u64) -> String {
        format!("{}:{conn}", self.pod)
    }

    fn topics(&self, key: &(u64, StreamId)) -> String {
        let topics: Vec<&str> = self
            .entries
            .get(key)
            .map(|e| e.topics.iter().map(|t| &**t).collect())
            .unwrap_or_default();
        json!(topics).to_string()
    }

    /// The hash entry of a connection and stream as it now is, or its
    /// removal when it has no topic left.
    fn put(&self, stream: StreamId, conn: u64) -> Option<HashOp> {
        let spec = self.spec(stream);
        let field = field(conn, &spec.name);
        match self.entries.get(&(conn, stream)) {
            Some(e) if !e.topics.is_empty() => Some(HashOp::Put {
                value: self.value(stream, conn, e),
                field,
            }),
            _ => Some(HashOp::Delete { field }),
        }
    }

    /// A hash value: a JSON object of strings, which the reaping script
    /// copies into a `disconnect` event as they are.
    fn value(&self, stream: StreamId, conn: u64, e: &Entry) -> String {
        let spec = self.spec(stream);
        let topics: Vec<&str> = e.topics.iter().map(|t| &**t).collect();
        json!({
            "stream": &*spec.name,
            "max_len": spec.max_len.to_string(),
            "conn": self.conn(conn),
            "socket_id": e.socket_id.as_deref().unwrap_or(""),
            "pod": &*e.node,
            "claims": &*e.claims,
            "topics": json!(topics).to_string(),
        })
        .to_string()
    }

    /// Every hash entry, to write the hash again in full.
    pub(super) fn hash(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .map(|(&(conn, stream), e)| {
                let name = &self.spec(stream).name;
                (field(conn, name), self.value(stream, conn, e))
            })
            .collect()
    }

    /// A `join` event with reason `restored` for every topic held: after
    /// this pod's liveness lapsed, survivors may have reported it down.
    pub(super) fn restored(&self, at: u64) -> Vec<Typed> {
        let mut out = Vec::new();
        for (&(conn, stream), e) in &self.entries {
            for t in &e.topics {
                let mut r = self.record(stream, conn, "join", at);
                r.fields.push(("topic", t.to_string()));
                r.fields.push(("reason", "restored".to_owned()));
                out.push((JOIN, r));
            }
        }
        out
    }
}

/// The hash field of a connection and stream.
fn field(conn: u64, stream: &str) -> String {
    format!("{conn}:{stream}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        let streams: Arc<[StreamSpec]> = Arc::from(vec![StreamSpec {
            name: Arc::from("events"),
            max_len: 10,
        }]);
        State::new(streams, "p1".into())
    }

    fn join(conn: u64, topic: &str) -> Event {
        Event::Join {
            stream: StreamId(0),
            join: Join {
                conn,
                topic: Arc::from(topic),
                socket_id: Some(Arc::from("users_socket:1")),
                claims: Arc::from(r#"{"sub":"1"}"#),
                node: Arc::from("gw@a"),
            },
            at: 5,
        }
    }

    fn end(conn: u64, topic: &str, end: End) -> Event {
        Event::End {
            stream: StreamId(0),
            conn,
            topic: Arc::from(topic),
            end,
            at: 6,
        }
    }

    fn get<'a>(r: &'a Record, k: &str) -> &'a str {
        r.fields
            .iter()
            .find(|(f, _)| *f == k)
            .map_or("", |(_, v)| v)
    }

    #[test]
    fn join_leave_disconnect() {
        let mut s = state();
        let (kind, r) = s.apply(join(7, "room:a")).unwrap();
        assert_eq!(
            (kind, get(&r, "type"), get(&r, "conn")),
            (JOIN, "join", "p1:7")
        );
        assert_eq!(get(&r, "claims"), r#"{"sub":"1"}"#);
        assert!(matches!(r.hash, Some(HashOp::Put { .. })));
        s.apply(join(7, "room:b"));
        let (_, r) = s.apply(end(7, "room:a", End::Leave("leave"))).unwrap();
        assert_eq!((get(&r, "type"), get(&r, "reason")), ("leave", "leave"));
        assert!(matches!(r.hash, Some(HashOp::Put { .. })), "room:b is left");
        let (_, r) = s
            .apply(end(7, "room:b", End::Disconnect("client_closed")))
            .unwrap();
        assert_eq!(get(&r, "topics"), r#"["room:b"]"#);
        assert_eq!(
            r.hash,
            Some(HashOp::Delete {
                field: "7:events".into()
            })
        );
        // The connection's other channels end too: nothing more to report.
        assert!(s
            .apply(end(7, "room:c", End::Disconnect("client_closed")))
            .is_none());
        assert!(s.apply(end(7, "room:b", End::Leave("leave"))).is_none());
        assert!(s.hash().is_empty());
    }

    #[test]
    fn last_leave_deletes_the_entry() {
        let mut s = state();
        s.apply(join(1, "room:a"));
        let (_, r) = s.apply(end(1, "room:a", End::Leave("replaced"))).unwrap();
        assert_eq!(
            r.hash,
            Some(HashOp::Delete {
                field: "1:events".into()
            })
        );
        assert!(s.restored(9).is_empty());
    }

    #[test]
    fn hash_values_are_strings_for_the_reaper() {
        let mut s = state();
        s.apply(join(3, "room:a"));
        let (f, v) = &s.hash()[0];
        assert_eq!(f, "3:events");
        let v: serde_json::Value = serde_json::from_str(v).unwrap();
        assert_eq!(v["topics"], r#"["room:a"]"#);
        assert_eq!(v["max_len"], "10");
        assert_eq!(s.restored(9).len(), 1);
    }
}
