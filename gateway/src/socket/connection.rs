//! The protocol state of one connection, whatever its transport: heartbeats,
//! joins, leaves, and routing client events to channel tasks.
//!
//! Runs inside the transport's reader, which hands it decoded messages, and
//! never awaits, so a slow channel cannot stall the connection; channels do
//! their work apart (see the channel module).

use super::rate::{Bucket, Verdict};
use super::{Assigns, Socket};
use crate::channel::queue::Lane;
use crate::channel::registry::Registered;
use crate::channel::{join_answered, ChannelMsg, Inbox, Previous, Services, SocketInfo, Start};
use crate::conn::{ConnHandle, Disconnect, ReplyTo};
use crate::metrics::{metrics, Limit, OpenConnection, Received};
use crate::protocol::{valid_topic, Message, Payload, Refusal, Transport};
use crate::pubsub::hub::{Subscriber, Target};
use crate::pubsub::{BrokerError, Subscription};
use std::net::IpAddr;
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
    /// Its route's `max_payload`: larger pushes are refused here, before
    /// the inbox (which is unbounded) holds them.
    max_payload: Option<usize>,
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

/// A connection's channels by topic. A short list rather than a map: most
/// connections join a handful of topics (at most `max_channels`), and an
/// idle connection should not pay a hash table for one.
#[derive(Debug, Default)]
struct Channels(Vec<(Arc<str>, ChannelHandle)>);

impl Channels {
    fn position(&self, topic: &str) -> Option<usize> {
        self.0.iter().position(|(t, _)| **t == *topic)
    }

    fn get(&self, topic: &str) -> Option<&ChannelHandle> {
        self.position(topic).map(|i| &self.0[i].1)
    }

    fn get_mut(&mut self, topic: &str) -> Option<&mut ChannelHandle> {
        self.position(topic).map(|i| &mut self.0[i].1)
    }

    fn remove(&mut self, topic: &str) -> Option<ChannelHandle> {
        self.position(topic).map(|i| self.0.swap_remove(i).1)
    }

    fn insert(&mut self, topic: Arc<str>, handle: ChannelHandle) {
        match self.get_mut(&topic) {
            Some(h) => *h = handle,
            None => {
                // One at a time: most connections stay at one or a few.
                self.0.reserve_exact(1);
                self.0.push((topic, handle));
            }
        }
    }

    fn values(&self) -> impl Iterator<Item = &ChannelHandle> {
        self.0.iter().map(|(_, h)| h)
    }

    fn retain(&mut self, keep: impl Fn(&ChannelHandle) -> bool) {
        self.0.retain(|(_, h)| keep(h));
    }
}

/// The per-connection state machine of `Phoenix.Socket`.
#[derive(Debug)]
pub(crate) struct Connection {
    conn: ConnHandle,
    socket: Arc<Socket>,
    services: Arc<Services>,
    info: Arc<SocketInfo>,
    channels: Channels,
    /// Tells the expiry watcher when the credentials now expire.
    expiry: Option<watch::Sender<Option<SystemTime>>>,
    _socket_id: Option<Subscription>,
    /// The push rate limit's state, when the socket has one.
    push_limit: Option<Bucket>,
    /// Counts the connection in the metrics until it is dropped.
    open: OpenConnection,
    /// Where this client address's joins wait for their turn.
    lane: Arc<Lane>,
    /// Its place in the admin API's registry, when that is on.
    registered: Option<Registered>,
}

impl Connection {
    /// Sets up a connection of a client at `source`; when it has a socket
    /// id, subscribes to it so a `disconnect` broadcast can close it.
    pub(crate) async fn open(
        transport: Transport,
        conn: ConnHandle,
        socket: Arc<Socket>,
        services: Arc<Services>,
        assigns: Assigns,
        source: IpAddr,
    ) -> Result<Self, BrokerError> {
        let socket_id = socket.handler.id(&assigns);
        let id_sub = match &socket_id {
            Some(id) => {
                let sub = Subscriber {
                    conn: conn.clone(),
                    target: Target::SocketId,
                };
                Some(
                    services
                        .pubsub
                        .subscribe(&Arc::from(id.as_str()), sub)
                        .await?,
                )
            }
            None => None,
        };
        tracing::debug!(
            conn = conn.id(),
            ?transport,
            socket = &*socket.path,
            vsn = conn.vsn().as_str(),
            socket_id = socket_id.as_deref(),
            "connection opened"
        );
        let open = metrics().connection_opened(transport, &socket.path);
        let lane = services.joins.lane(source);
        let info = Arc::new(SocketInfo {
            assigns,
            id: socket_id,
        });
        let registered = services
            .registry
            .as_ref()
            .map(|r| r.register(&conn, transport, &socket.path, &info, source));
        let mut connection = Connection {
            conn,
            socket,
            services,
            info,
            channels: Channels::default(),
            expiry: None,
            _socket_id: id_sub,
            push_limit: None,
            open,
            lane,
            registered,
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

    /// The connection's handle: its serializer, queue and close signal.
    pub(crate) fn conn(&self) -> &ConnHandle {
        &self.conn
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
        let to = ReplyTo {
            topic: &msg.topic,
            join_ref: msg.join_ref.as_deref(),
            ref_: msg.ref_.as_deref(),
        };
        if heartbeat {
            let to = ReplyTo {
                join_ref: None,
                ..to
            };
            self.conn.reply(to, "ok", &Payload::empty());
            return;
        }
        if let Some(bucket) = &mut self.push_limit {
            match bucket.take(Instant::now()) {
                Verdict::Allow => {}
                Verdict::Refuse => {
                    metrics().limit_hit(Limit::PushRate);
                    self.conn.refuse(to, Refusal::RateLimited);
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
        let to = ReplyTo {
            topic: &topic,
            join_ref: join_ref.as_deref(),
            ref_: ref_.as_deref(),
        };
        if !valid_topic(&topic) {
            join_answered(&self.conn, &topic, "invalid_topic");
            self.conn.refuse(to, Refusal::InvalidTopic);
            return;
        }
        if !replacing && self.live_channels() >= self.socket.config.max_channels {
            join_answered(&self.conn, &topic, "too_many_channels");
            metrics().limit_hit(Limit::MaxChannels);
            self.conn.refuse(to, Refusal::TooManyChannels);
            if let Some(p) = previous {
                // Keep tracking the channel that is still leaving.
                self.channels.insert(
                    Arc::from(topic.as_str()),
                    ChannelHandle {
                        join_ref: p.join_ref,
                        inbox: p.inbox,
                        leaving: true,
                        max_payload: None,
                    },
                );
            }
            return;
        }
        let Some(route) = self.socket.router.route(&topic) else {
            join_answered(&self.conn, &topic, "unmatched_topic");
            self.conn.reply_unjoined("phx_join", to);
            return;
        };
        let join_ref: Option<Arc<str>> = join_ref.map(Arc::from);
        let (max_payload, inline) = (route.max_payload, route.inline);
        // One copy of the topic, shared by the channel, its subscription
        // and this list.
        let topic: Arc<str> = Arc::from(topic.as_str());
        let inbox = route.factory.start(Start {
            topic: topic.clone(),
            join_ref: join_ref.clone(),
            ref_,
            payload,
            conn: self.conn.clone(),
            services: self.services.clone(),
            socket: self.info.clone(),
            previous,
            lane: self.lane.clone(),
            inline,
        });
        if let Some(r) = &self.registered {
            r.joined(&topic, &inbox);
        }
        self.channels.insert(
            topic,
            ChannelHandle {
                join_ref,
                inbox,
                leaving: false,
                max_payload,
            },
        );
    }

    fn leave(&mut self, msg: Message) {
        let to = ReplyTo {
            topic: &msg.topic,
            join_ref: msg.join_ref.as_deref(),
            ref_: msg.ref_.as_deref(),
        };
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
        self.conn.reply_unjoined("phx_leave", to);
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
                let to = ReplyTo {
                    topic: &msg.topic,
                    join_ref: h.join_ref.as_deref(),
                    ref_: msg.ref_.as_deref(),
                };
                let size = msg.payload.size();
                if h.max_payload.is_some_and(|max| size > max) {
                    metrics().limit_hit(Limit::MaxPayload);
                    self.conn.refuse(to, Refusal::PayloadTooLarge);
                    return;
                }
                let Some(held) = self.conn.hold_inbound(size) else {
                    // Its earlier pushes still wait for their channels (a
                    // slow broker): the client must slow down.
                    metrics().limit_hit(Limit::PushRate);
                    self.conn.refuse(to, Refusal::RateLimited);
                    return;
                };
                let event = ChannelMsg::In {
                    event: msg.event,
                    ref_: msg.ref_,
                    payload: msg.payload,
                    held,
                };
                if let Err(back) = h.inbox.send(Box::new(event)) {
                    if let ChannelMsg::In { event, ref_, .. } = *back {
                        let to = ReplyTo {
                            topic: &msg.topic,
                            join_ref: None,
                            ref_: ref_.as_deref(),
                        };
                        self.conn.reply_unjoined(&event, to);
                    }
                }
                return;
            }
        }
        let to = ReplyTo {
            topic: &msg.topic,
            join_ref: None,
            ref_: msg.ref_.as_deref(),
        };
        self.conn.reply_unjoined(&msg.event, to);
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
                });
                if let (Some(r), Some(registry)) = (&self.registered, &self.services.registry) {
                    registry.refreshed(r.id(), &self.info);
                }
                for h in self.channels.values().filter(|h| h.alive() && !h.leaving) {
                    let _ = h
                        .inbox
                        .send(Box::new(ChannelMsg::Assigns(self.info.clone())));
                }
                self.set_expiry(expires);
                ("ok", Payload::empty())
            }
            Err(reason) => ("error", Payload::reason(reason)),
        };
        let to = ReplyTo {
            topic: &msg.topic,
            join_ref: jr,
            ref_: msg.ref_.as_deref(),
        };
        self.conn.reply(to, status, &response);
    }

    /// Channels that count against `max_channels`; forgets finished ones.
    fn live_channels(&mut self) -> usize {
        self.channels.retain(ChannelHandle::alive);
        self.channels.values().filter(|h| !h.leaving).count()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Channels end when the connection closes; make sure it does, and
        // wake those at rest so they end now (a config rule's here).
        self.conn.close(Disconnect::TransportError);
        for h in self.channels.values() {
            let _ = h.inbox.send_here(Box::new(ChannelMsg::Closed));
        }
        let reason = self.conn.reason().unwrap_or(Disconnect::TransportError);
        tracing::debug!(
            conn = self.conn.id(),
            transport = ?self.open.transport(),
            reason = reason.label(),
            "connection closed"
        );
        self.open.closed(reason.label(), reason.limit());
    }
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
