//! The protocol state of one connection, whatever its transport: heartbeats,
//! joins, leaves, and routing client events to channel tasks.
//!
//! Runs inside the transport's reader and never awaits, so a slow channel
//! cannot stall the connection; channels do their work in their own tasks.

use super::rate::{Bucket, Verdict};
use super::{Assigns, Transport};
use crate::channel::context::SocketInfo;
use crate::channel::runner::{Previous, Start};
use crate::channel::{ChannelMsg, Inbox};
use crate::conn::{ConnHandle, Disconnect};
use crate::endpoint::Socket;
use crate::hub::{Subscriber, Target};
use crate::metrics::{metrics, Limit, OpenConnection, Received};
use crate::protocol::{Message, Outbound, Payload};
use crate::pubsub::{BrokerError, PubSub, Subscription};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::sync::watch;

/// A joined (or joining) channel as the connection tracks it.
#[derive(Debug)]
struct ChannelHandle {
    join_ref: Option<Arc<str>>,
    inbox: Inbox,
    /// A `phx_leave` was forwarded; the task is finishing.
    leaving: bool,
}

impl ChannelHandle {
    /// The task has not finished (its inbox still takes messages).
    fn alive(&self) -> bool {
        !self.inbox.is_closed()
    }

    fn accepts(&self, join_ref: Option<&str>) -> bool {
        join_ref.is_none() || join_ref == self.join_ref.as_deref()
    }
}

/// The per-connection state machine of `Phoenix.Socket`.
#[derive(Debug)]
pub(crate) struct Connection {
    conn: ConnHandle,
    socket: Arc<Socket>,
    pubsub: PubSub,
    info: Arc<SocketInfo>,
    channels: HashMap<String, ChannelHandle>,
    /// Tells the expiry watcher when the credentials now expire.
    expiry: Option<watch::Sender<Option<SystemTime>>>,
    _socket_id: Option<Subscription>,
    /// The push rate limit's state, when the socket has one.
    push_limit: Option<Bucket>,
    /// Counts the connection in the metrics until it is dropped.
    open: OpenConnection,
}

impl Connection {
    /// Sets up a connection; when it has a socket id, subscribes to it so a
    /// `disconnect` broadcast can close it.
    pub(crate) async fn open(
        transport: Transport,
        conn: ConnHandle,
        socket: Arc<Socket>,
        pubsub: PubSub,
        assigns: Assigns,
        node: Arc<str>,
    ) -> Result<Self, BrokerError> {
        let socket_id = socket.handler.id(&assigns);
        let id_sub = match &socket_id {
            Some(id) => {
                let sub = Subscriber {
                    conn: conn.clone(),
                    target: Target::SocketId,
                };
                Some(pubsub.subscribe(id, sub).await?)
            }
            None => None,
        };
        tracing::debug!(
            conn = conn.id(),
            ?transport,
            socket = socket.path,
            vsn = conn.vsn().as_str(),
            socket_id = socket_id.as_deref(),
            "connection opened"
        );
        let open = metrics().connection_opened(transport, &socket.path);
        let mut connection = Connection {
            conn,
            socket,
            pubsub,
            info: Arc::new(SocketInfo {
                assigns,
                id: socket_id,
                node,
            }),
            channels: HashMap::new(),
            expiry: None,
            _socket_id: id_sub,
            push_limit: None,
            open,
        };
        connection.push_limit = connection
            .socket
            .config
            .push_rate
            .map(|rate| Bucket::new(rate, Instant::now()));
        let expires = connection
            .socket
            .handler
            .expires_at(&connection.info.assigns);
        connection.set_expiry(expires);
        Ok(connection)
    }

    /// Closes the connection at `at` unless credentials are refreshed first.
    fn set_expiry(&mut self, at: Option<SystemTime>) {
        if let Some(tx) = &self.expiry {
            tx.send_replace(at);
            return;
        }
        if at.is_none() {
            return;
        }
        let (tx, rx) = watch::channel(at);
        tokio::spawn(watch_expiry(self.conn.clone(), rx));
        self.expiry = Some(tx);
    }

    /// Handles one text frame.
    pub(crate) fn handle_text(&mut self, text: &Bytes) -> Result<(), Disconnect> {
        let msg = self.conn.vsn().decode_text(text).map_err(|e| {
            tracing::debug!(conn = self.conn.id(), error = %e, "malformed text frame");
            Disconnect::Malformed
        })?;
        self.handle(msg);
        Ok(())
    }

    /// Handles one binary frame.
    pub(crate) fn handle_binary(&mut self, data: &Bytes) -> Result<(), Disconnect> {
        let msg = self.conn.vsn().decode_binary(data).map_err(|e| {
            tracing::debug!(conn = self.conn.id(), error = %e, "malformed binary frame");
            Disconnect::Malformed
        })?;
        self.handle(msg);
        Ok(())
    }

    /// Handles one decoded message, as `Phoenix.Socket.handle_in/4`.
    pub(crate) fn handle(&mut self, msg: Message) {
        let heartbeat = msg.topic == "phoenix" && msg.event == "heartbeat";
        let kind = match msg.event.as_str() {
            _ if heartbeat => Received::Heartbeat,
            "phx_join" => Received::Join,
            "phx_leave" => Received::Leave,
            _ => Received::Push,
        };
        metrics().received(self.open.transport(), kind);
        if heartbeat {
            self.conn.send(&Outbound::Reply {
                join_ref: None,
                ref_: msg.ref_.as_deref(),
                topic: "phoenix",
                status: "ok",
                response: &Payload::empty(),
            });
            return;
        }
        if let Some(bucket) = &mut self.push_limit {
            match bucket.take(Instant::now()) {
                Verdict::Allow => {}
                Verdict::Refuse => {
                    metrics().limit_hit(Limit::PushRate);
                    let reason = Payload::json(&serde_json::json!({"reason": "rate limited"}));
                    self.conn.send(&Outbound::Reply {
                        join_ref: msg.join_ref.as_deref(),
                        ref_: msg.ref_.as_deref(),
                        topic: &msg.topic,
                        status: "error",
                        response: &reason,
                    });
                    return;
                }
                Verdict::Abuse => {
                    tracing::debug!(conn = self.conn.id(), "closing: push rate limit");
                    self.conn.close(Disconnect::RateLimited);
                    return;
                }
            }
        }
        match msg.event.as_str() {
            "phx_join" => self.join(msg),
            "phx_leave" => self.leave(msg),
            _ => self.forward(msg),
        }
    }

    fn join(&mut self, msg: Message) {
        let Message {
            join_ref,
            ref_,
            topic,
            payload,
            ..
        } = msg;
        let previous = self
            .channels
            .remove(&topic)
            .filter(ChannelHandle::alive)
            .map(|h| Previous {
                replace: !h.leaving,
                inbox: h.inbox,
                join_ref: h.join_ref,
            });
        let replacing = previous.as_ref().is_some_and(|p| p.replace);
        if !valid_topic(&topic) {
            join_answered(&self.conn, &topic, "invalid_topic");
            let reason = serde_json::json!({"reason": "invalid topic"});
            self.conn.send(&Outbound::Reply {
                join_ref: join_ref.as_deref(),
                ref_: ref_.as_deref(),
                topic: &topic,
                status: "error",
                response: &Payload::json(&reason),
            });
            return;
        }
        if !replacing && self.live_channels() >= self.socket.config.max_channels {
            join_answered(&self.conn, &topic, "too_many_channels");
            metrics().limit_hit(Limit::MaxChannels);
            let reason = serde_json::json!({"reason": "too many channels joined"});
            self.conn.send(&Outbound::Reply {
                join_ref: join_ref.as_deref(),
                ref_: ref_.as_deref(),
                topic: &topic,
                status: "error",
                response: &Payload::json(&reason),
            });
            if let Some(p) = previous {
                // Keep tracking the channel that is still leaving.
                self.channels.insert(
                    topic,
                    ChannelHandle {
                        join_ref: p.join_ref,
                        inbox: p.inbox,
                        leaving: true,
                    },
                );
            }
            return;
        }
        let Some(factory) = self.socket.router.route(&topic) else {
            join_answered(&self.conn, &topic, "unmatched_topic");
            reply_unjoined(&self.conn, &topic, "phx_join", None, ref_.as_deref());
            return;
        };
        let (inbox, rx) = tokio::sync::mpsc::unbounded_channel();
        let join_ref: Option<Arc<str>> = join_ref.map(Arc::from);
        factory.start(Start {
            topic: Arc::from(topic.as_str()),
            join_ref: join_ref.clone(),
            ref_,
            payload,
            conn: self.conn.clone(),
            pubsub: self.pubsub.clone(),
            socket: self.info.clone(),
            previous,
            inbox: inbox.clone(),
            rx,
        });
        self.channels.insert(
            topic,
            ChannelHandle {
                join_ref,
                inbox,
                leaving: false,
            },
        );
    }

    fn leave(&mut self, msg: Message) {
        if let Some(h) = self.channels.get_mut(&msg.topic) {
            if h.alive() && !h.leaving {
                if !h.accepts(msg.join_ref.as_deref()) {
                    return; // stale join_ref: dropped, as Phoenix does
                }
                let leave = ChannelMsg::Leave {
                    join_ref: msg.join_ref.clone(),
                    ref_: msg.ref_.clone(),
                };
                if h.inbox.send(Box::new(leave)).is_ok() {
                    h.leaving = true;
                    return;
                }
            }
        }
        reply_unjoined(
            &self.conn,
            &msg.topic,
            "phx_leave",
            msg.join_ref.as_deref(),
            msg.ref_.as_deref(),
        );
    }

    fn forward(&mut self, msg: Message) {
        if let Some(h) = self.channels.get(&msg.topic) {
            if h.alive() && !h.leaving {
                if !h.accepts(msg.join_ref.as_deref()) {
                    return; // stale join_ref: dropped, as Phoenix does
                }
                if msg.event == "access_token" {
                    if let Some(result) = self
                        .socket
                        .handler
                        .refresh(&msg.payload, &self.info.assigns)
                    {
                        let jr = h.join_ref.clone();
                        self.refreshed(result, &msg, jr.as_deref());
                        return;
                    }
                }
                let event = ChannelMsg::In {
                    event: msg.event,
                    ref_: msg.ref_,
                    payload: msg.payload,
                };
                match h.inbox.send(Box::new(event)) {
                    Ok(()) => return,
                    Err(e) => {
                        if let ChannelMsg::In { ref_, .. } = *e.0 {
                            reply_unjoined(&self.conn, &msg.topic, "", None, ref_.as_deref());
                        }
                        return;
                    }
                }
            }
        }
        reply_unjoined(
            &self.conn,
            &msg.topic,
            &msg.event,
            None,
            msg.ref_.as_deref(),
        );
    }

    /// Applies a token refresh: new assigns for every channel, a new expiry,
    /// and a reply to the client's push.
    fn refreshed(&mut self, result: Result<Assigns, String>, msg: &Message, jr: Option<&str>) {
        let (status, response) = match result {
            Ok(assigns) => {
                let expires = self.socket.handler.expires_at(&assigns);
                self.info = Arc::new(SocketInfo {
                    assigns,
                    id: self.info.id.clone(),
                    node: self.info.node.clone(),
                });
                for h in self.channels.values().filter(|h| h.alive() && !h.leaving) {
                    let _ = h
                        .inbox
                        .send(Box::new(ChannelMsg::Assigns(self.info.clone())));
                }
                self.set_expiry(expires);
                ("ok", Payload::empty())
            }
            Err(reason) => (
                "error",
                Payload::json(&serde_json::json!({ "reason": reason })),
            ),
        };
        self.conn.send(&Outbound::Reply {
            join_ref: jr,
            ref_: msg.ref_.as_deref(),
            topic: &msg.topic,
            status,
            response: &response,
        });
    }

    /// Channels that count against `max_channels`; forgets finished ones.
    fn live_channels(&mut self) -> usize {
        self.channels.retain(|_, h| h.alive());
        self.channels.values().filter(|h| !h.leaving).count()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Channel tasks end when the connection closes; make sure it does.
        self.conn.close(Disconnect::TransportError);
        let reason = self.conn.reason().unwrap_or(Disconnect::TransportError);
        tracing::debug!(
            conn = self.conn.id(),
            transport = ?self.open.transport(),
            reason = reason.label(),
            "connection closed"
        );
        self.open.closed(reason);
    }
}

/// Logs and counts the answer to a `phx_join`: `ok`, or why it was refused
/// (the `result` label of `gateway_joins_total`).
pub(crate) fn join_answered(conn: &ConnHandle, topic: &str, result: &'static str) {
    if result == "ok" {
        tracing::debug!(conn = conn.id(), topic, "channel joined");
    } else {
        tracing::debug!(conn = conn.id(), topic, result, "join refused");
    }
    metrics().join(topic, result);
}

/// Topics may not smuggle Redis glob characters, whitespace or control
/// characters, and fit the one-byte length of V2 binary frames.
pub(crate) fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 255
        && topic.chars().all(|c| {
            !c.is_control()
                && !c.is_whitespace()
                && !matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\')
        })
}

async fn watch_expiry(conn: ConnHandle, mut rx: watch::Receiver<Option<SystemTime>>) {
    loop {
        let at = *rx.borrow_and_update();
        let wait = at.map(|t| t.duration_since(SystemTime::now()).unwrap_or_default());
        tokio::select! {
            _ = conn.closed() => return,
            changed = rx.changed() => if changed.is_err() { return },
            _ = sleep_or_forever(wait) => {
                tracing::debug!(conn = conn.id(), "token expired");
                conn.close(Disconnect::TokenExpired);
                return;
            }
        }
    }
}

async fn sleep_or_forever(wait: Option<std::time::Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Answers a message for a topic this connection has not joined, as Phoenix
/// does: a leave is acknowledged (echoing the client's join_ref), anything
/// else gets `unmatched topic` with a null join_ref.
pub(crate) fn reply_unjoined(
    conn: &ConnHandle,
    topic: &str,
    event: &str,
    join_ref: Option<&str>,
    ref_: Option<&str>,
) {
    if event == "phx_leave" {
        conn.send(&Outbound::Reply {
            join_ref,
            ref_,
            topic,
            status: "ok",
            response: &Payload::empty(),
        });
    } else {
        let reason = Payload::json(&serde_json::json!({"reason": "unmatched topic"}));
        conn.send(&Outbound::Reply {
            join_ref: None,
            ref_,
            topic,
            status: "error",
            response: &reason,
        });
    }
}
