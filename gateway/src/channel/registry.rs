//! The connections of this pod, as the admin API names them: by id, socket
//! id and claims. Kept only when the admin API is on; otherwise connections
//! register nothing and pay nothing.

use super::{ChannelMsg, Inbox, SocketInfo};
use crate::conn::{ConnHandle, Disconnect};
use crate::protocol::Transport;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Shards of the registry: connects and closes on many tasks at once take
/// different locks.
const SHARDS: usize = 16;

/// Who an operator means: one connection, every connection with a socket
/// id, or every connection whose assigns hold a claim's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Who {
    /// A connection's id as listed (`<pod id>/<number>`).
    Conn(String),
    /// The socket id (`[auth] socket_id`), as the `disconnect` broadcast
    /// names it.
    SocketId(String),
    /// A claim of the token, e.g. `{"name": "sub", "value": "42"}`; a
    /// number matches its decimal text.
    Claim {
        /// The claim's name.
        name: String,
        /// Its value, as text.
        value: String,
    },
}

/// One connection as the registry keeps it.
#[derive(Debug)]
struct Entry {
    conn: ConnHandle,
    transport: Transport,
    socket: Arc<str>,
    info: Arc<SocketInfo>,
    peer: IpAddr,
    since: u64,
    /// Its joined channels' inboxes, so one can be told to end; ended ones
    /// are dropped at the next join.
    channels: Vec<(Arc<str>, Inbox)>,
}

/// A connection as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listed {
    /// `<pod id>/<number>`: what [`Who::Conn`] takes.
    pub conn: String,
    /// `websocket` or `longpoll`.
    pub transport: String,
    /// The socket's path.
    pub socket: String,
    /// The socket id, if the socket names one.
    pub socket_id: Option<String>,
    /// The `sub` claim, if any.
    pub user: Option<String>,
    /// The client's address.
    pub peer: String,
    /// When it connected, Unix seconds.
    pub since: u64,
}

/// This pod's connections.
#[derive(Debug)]
pub(crate) struct Registry {
    pod: Arc<str>,
    shards: Box<[Mutex<HashMap<u64, Entry>>]>,
    by_transport: [AtomicUsize; 2],
}

/// A connection's place in the [`Registry`], given up when dropped.
#[derive(Debug)]
pub(crate) struct Registered {
    of: Arc<Registry>,
    id: u64,
    transport: Transport,
}

impl Registered {
    /// The connection's id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Records the connection's channel of `topic`, replacing an earlier
    /// one of the same topic.
    pub(crate) fn joined(&self, topic: &Arc<str>, inbox: &Inbox) {
        if let Some(e) = self.of.shard(self.id).lock().get_mut(&self.id) {
            e.channels.retain(|(t, i)| !i.is_closed() && **t != **topic);
            // One at a time, as the connection's own list: most join a few.
            e.channels.reserve_exact(1);
            e.channels.push((topic.clone(), inbox.clone()));
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.of.shard(self.id).lock().remove(&self.id);
        self.of.by_transport[self.transport.index()].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Registry {
    /// An empty registry of the pod `pod` (its id in connection ids).
    pub(crate) fn new(pod: &str) -> Arc<Self> {
        Arc::new(Registry {
            pod: Arc::from(pod),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            by_transport: Default::default(),
        })
    }

    fn shard(&self, id: u64) -> &Mutex<HashMap<u64, Entry>> {
        &self.shards[(id % SHARDS as u64) as usize]
    }

    /// Adds a connection for as long as the returned guard lives.
    pub(crate) fn register(
        self: &Arc<Self>,
        conn: &ConnHandle,
        transport: Transport,
        socket: &Arc<str>,
        info: &Arc<SocketInfo>,
        peer: IpAddr,
    ) -> Registered {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.shard(conn.id()).lock().insert(
            conn.id(),
            Entry {
                conn: conn.clone(),
                transport,
                socket: socket.clone(),
                info: info.clone(),
                peer,
                since,
                channels: Vec::new(),
            },
        );
        self.by_transport[transport.index()].fetch_add(1, Ordering::Relaxed);
        Registered {
            of: self.clone(),
            id: conn.id(),
            transport,
        }
    }

    /// Replaces a connection's socket facts after a token refresh, so
    /// claims match the credentials in force.
    pub(crate) fn refreshed(&self, id: u64, info: &Arc<SocketInfo>) {
        if let Some(e) = self.shard(id).lock().get_mut(&id) {
            e.info = info.clone();
        }
    }

    /// Open connections by transport, in [`Transport::ALL`]'s order.
    pub(crate) fn counts(&self) -> [usize; 2] {
        [0, 1].map(|i| self.by_transport[i].load(Ordering::Relaxed))
    }

    /// The listing of connection `conn`, if it is still here.
    pub(crate) fn listed(&self, conn: &ConnHandle) -> Option<Listed> {
        let shard = self.shard(conn.id()).lock();
        shard.get(&conn.id()).and_then(|e| self.list(e))
    }

    fn list(&self, e: &Entry) -> Option<Listed> {
        Some(Listed {
            conn: format!("{}/{}", self.pod, e.conn.id()),
            transport: e.transport.as_str().into(),
            socket: e.socket.to_string(),
            socket_id: e.info.id.clone(),
            user: e.info.assigns.get("sub").map(claim_text),
            peer: e.peer.to_string(),
            since: e.since,
        })
        .filter(|_| !e.conn.is_closed())
    }

    /// The open connections `who` names here.
    pub(crate) fn find(&self, who: &Who) -> Vec<ConnHandle> {
        if let Who::Conn(id) = who {
            let Some(n) = id
                .strip_prefix(&*self.pod)
                .and_then(|rest| rest.strip_prefix('/'))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                return Vec::new();
            };
            return self
                .shard(n)
                .lock()
                .get(&n)
                .filter(|e| !e.conn.is_closed())
                .map(|e| vec![e.conn.clone()])
                .unwrap_or_default();
        }
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(
                shard
                    .lock()
                    .values()
                    .filter(|e| !e.conn.is_closed() && matches(who, &e.info))
                    .map(|e| e.conn.clone()),
            );
        }
        out
    }

    /// Ends the channels of `topic` of the connections `who` names here
    /// (their clients receive `phx_close`); returns how many.
    pub(crate) fn remove_from(&self, topic: &str, who: &Who) -> usize {
        let ids: Vec<u64> = self.find(who).iter().map(ConnHandle::id).collect();
        let mut removed = 0;
        for id in ids {
            let inboxes: Vec<Inbox> = self
                .shard(id)
                .lock()
                .get(&id)
                .map(|e| {
                    e.channels
                        .iter()
                        .filter(|(t, i)| **t == *topic && !i.is_closed())
                        .map(|(_, i)| i.clone())
                        .collect()
                })
                .unwrap_or_default();
            for inbox in inboxes {
                if inbox.send(Box::new(ChannelMsg::Removed)).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Closes the connections `who` names here with
    /// [`Disconnect::Forced`]; returns how many.
    pub(crate) fn disconnect(&self, who: &Who) -> usize {
        let found = self.find(who);
        for conn in &found {
            conn.close(Disconnect::Forced);
        }
        found.len()
    }
}

/// A claim's value as text: a string as it is, anything else as JSON.
fn claim_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn matches(who: &Who, info: &SocketInfo) -> bool {
    match who {
        Who::Conn(_) => false,
        Who::SocketId(id) => info.id.as_deref() == Some(id.as_str()),
        Who::Claim { name, value } => info
            .assigns
            .get(name)
            .is_some_and(|v| claim_text(v) == *value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Budget;
    use crate::protocol::Vsn;
    use serde_json::json;

    fn conn() -> ConnHandle {
        ConnHandle::new(
            Vsn::V2,
            Budget {
                frames: 8,
                bytes: 1024,
            },
        )
    }

    fn info(id: Option<&str>, sub: serde_json::Value) -> Arc<SocketInfo> {
        let mut assigns = crate::channel::Assigns::new();
        assigns.insert("sub".into(), sub);
        Arc::new(SocketInfo {
            assigns,
            id: id.map(Into::into),
        })
    }

    #[test]
    fn finds_by_id_socket_id_and_claim_and_forgets_dropped() {
        let r = Registry::new("pod1");
        let socket: Arc<str> = Arc::from("/socket");
        let peer: IpAddr = [127, 0, 0, 1].into();
        let (a, b) = (conn(), conn());
        let ga = r.register(
            &a,
            Transport::WebSocket,
            &socket,
            &info(Some("user:42"), json!(42)),
            peer,
        );
        let _gb = r.register(
            &b,
            Transport::LongPoll,
            &socket,
            &info(None, json!("ann")),
            peer,
        );
        assert_eq!(r.counts(), [1, 1]);
        let id = format!("pod1/{}", a.id());
        assert_eq!(r.find(&Who::Conn(id.clone())).len(), 1);
        assert_eq!(r.find(&Who::Conn(format!("pod2/{}", a.id()))).len(), 0);
        assert_eq!(r.find(&Who::Conn("pod1/x".into())).len(), 0);
        assert_eq!(r.find(&Who::SocketId("user:42".into())).len(), 1);
        let claim = |v: &str| Who::Claim {
            name: "sub".into(),
            value: v.into(),
        };
        assert_eq!(r.find(&claim("42")).len(), 1);
        assert_eq!(r.find(&claim("ann")).len(), 1);
        assert_eq!(r.find(&claim("bob")).len(), 0);
        let listed = r.listed(&b).expect("listed");
        assert_eq!(listed.user.as_deref(), Some("ann"));
        assert_eq!(listed.transport, "longpoll");
        assert_eq!(r.disconnect(&claim("ann")), 1);
        assert_eq!(b.reason(), Some(Disconnect::Forced));
        assert!(r.find(&claim("ann")).is_empty());
        drop(ga);
        assert_eq!(r.counts(), [0, 1]);
        assert!(r.find(&Who::Conn(id)).is_empty());
    }
}
