//! What a channel callback can do: push, reply later, broadcast, track
//! presences, read the socket's assigns, and schedule messages to itself.

use super::slot::PostInfo;
use super::{Assigns, Services, SocketInfo};
use crate::conn::{ConnHandle, ReplyTo};
use crate::metrics::Source;
use crate::presence::{PresenceError, TrackId};
use crate::protocol::Payload;
use crate::pubsub::{Broadcast, PublishError};
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The channel's view of its socket, handed to every callback.
pub struct ChannelContext<I> {
    topic: Arc<str>,
    join_ref: Option<Arc<str>>,
    conn: ConnHandle,
    services: Arc<Services>,
    socket: Arc<SocketInfo>,
    /// This channel's copy of the socket assigns, made on first write.
    assigns: Option<Assigns>,
    pub(crate) current_ref: Option<String>,
    /// Where `handle_info` messages go: the channel's own slot.
    me: Weak<dyn PostInfo<I>>,
    /// Cancels `send_after` timers when the channel ends; made by the first.
    timers: Option<CancellationToken>,
    /// Presences this channel tracks, by key; untracked when it ends, as
    /// Phoenix's tracker does when a channel process exits.
    tracked: Vec<(String, TrackId)>,
}

impl<I> fmt::Debug for ChannelContext<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelContext")
            .field("topic", &self.topic)
            .field("join_ref", &self.join_ref)
            .field("conn", &self.conn.id())
            .field("tracked", &self.tracked)
            .finish_non_exhaustive()
    }
}

impl<I> Drop for ChannelContext<I> {
    fn drop(&mut self) {
        for (_, id) in self.tracked.drain(..) {
            self.services.presence.untrack(id);
        }
    }
}

impl<I: Send + 'static> ChannelContext<I> {
    pub(crate) fn new(
        topic: Arc<str>,
        join_ref: Option<Arc<str>>,
        conn: ConnHandle,
        services: Arc<Services>,
        socket: Arc<SocketInfo>,
        me: Weak<dyn PostInfo<I>>,
    ) -> Self {
        ChannelContext {
            topic,
            join_ref,
            conn,
            services,
            socket,
            assigns: None,
            current_ref: None,
            me,
            timers: None,
            tracked: Vec::new(),
        }
    }

    /// The joined topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The join_ref of this join (`None` for V1 clients that send none).
    pub fn join_ref(&self) -> Option<&str> {
        self.join_ref.as_deref()
    }

    /// The socket id, if the socket handler gave one.
    pub fn socket_id(&self) -> Option<&str> {
        self.socket.id.as_deref()
    }

    /// This node's name (as Phoenix's `Node.self()`).
    pub fn node(&self) -> &str {
        &self.services.node
    }

    /// The assigns: the socket's, plus what this channel assigned.
    pub fn assigns(&self) -> &Assigns {
        self.assigns.as_ref().unwrap_or(&self.socket.assigns)
    }

    /// Sets an assign for this channel only, as `assign/3` does in Phoenix.
    pub fn assign(&mut self, key: impl Into<String>, value: serde_json::Value) {
        self.assigns
            .get_or_insert_with(|| self.socket.assigns.clone())
            .insert(key.into(), value);
    }

    /// Pushes an event to this client on this topic.
    pub fn push(&self, event: &str, payload: Payload) {
        self.conn
            .push(&self.topic, self.join_ref.as_deref(), event, &payload);
    }

    /// Broadcasts an event to every subscriber of this topic, this client included.
    ///
    /// # Errors
    /// A reserved event, a payload over the pod's publish limit, or the
    /// broker cannot accept the message (see [`PublishError`]).
    pub async fn broadcast(&self, event: &str, payload: Payload) -> Result<(), PublishError> {
        self.broadcast_inner(event, payload, None).await
    }

    /// Broadcasts an event to every subscriber of this topic except this client.
    ///
    /// # Errors
    /// As [`broadcast`](Self::broadcast).
    pub async fn broadcast_from(&self, event: &str, payload: Payload) -> Result<(), PublishError> {
        self.broadcast_inner(event, payload, Some(self.conn.id()))
            .await
    }

    async fn broadcast_inner(
        &self,
        event: &str,
        payload: Payload,
        from: Option<u64>,
    ) -> Result<(), PublishError> {
        let msg = Broadcast {
            topic: self.topic.to_string(),
            event: event.to_owned(),
            payload,
            from,
        };
        self.services
            .pubsub
            .broadcast_counted(Source::Client, msg, None)
            .await
            .map(|_| ())
    }

    /// Tracks a presence of `key` (a user id, say) in this topic with `meta`
    /// (a JSON object), as `Phoenix.Presence.track/3`: every client of the
    /// topic, on every node, receives it in a `presence_diff` join. It lasts
    /// until [`untrack`](Self::untrack) or the end of this channel.
    ///
    /// # Errors
    /// `meta` is not an object, or this channel already tracks `key`.
    pub fn track(
        &mut self,
        key: impl Into<String>,
        meta: serde_json::Value,
    ) -> Result<(), PresenceError> {
        let key = key.into();
        let serde_json::Value::Object(meta) = meta else {
            return Err(PresenceError::InvalidMeta);
        };
        if self.tracked.iter().any(|(k, _)| *k == key) {
            return Err(PresenceError::AlreadyTracked(key));
        }
        let id = self
            .services
            .presence
            .track(self.topic.clone(), key.clone(), meta);
        self.tracked.push((key, id));
        Ok(())
    }

    /// Replaces the meta of the presence this channel tracks under `key`, as
    /// `Phoenix.Presence.update/3`: clients receive the new meta as a join
    /// and the old one as a leave, with `phx_ref_prev` naming the old ref.
    ///
    /// # Errors
    /// `meta` is not an object, or this channel does not track `key`.
    pub fn update(&mut self, key: &str, meta: serde_json::Value) -> Result<(), PresenceError> {
        let serde_json::Value::Object(meta) = meta else {
            return Err(PresenceError::InvalidMeta);
        };
        let Some((_, id)) = self.tracked.iter().find(|(k, _)| k == key) else {
            return Err(PresenceError::NotTracked(key.to_owned()));
        };
        self.services.presence.update(*id, meta);
        Ok(())
    }

    /// Ends the presence this channel tracks under `key`; returns false if
    /// it tracked none.
    pub fn untrack(&mut self, key: &str) -> bool {
        let Some(i) = self.tracked.iter().position(|(k, _)| k == key) else {
            return false;
        };
        let (_, id) = self.tracked.swap_remove(i);
        self.services.presence.untrack(id);
        true
    }

    /// Everyone present in this topic on every node, in the
    /// `presence_state` shape `{"key": {"metas": [...]}}`.
    ///
    /// # Errors
    /// When the presence store cannot answer (Redis is down).
    pub async fn presence_list(
        &self,
    ) -> Result<serde_json::Map<String, serde_json::Value>, PresenceError> {
        self.services.presence.list(&self.topic).await
    }

    /// Pushes `presence_state` (everyone present) to this client, as a
    /// Phoenix channel does after join; phoenix.js's `Presence` applies
    /// `presence_diff`s only after it.
    ///
    /// # Errors
    /// When the presence store cannot answer (Redis is down).
    pub async fn push_presence_state(&self) -> Result<(), PresenceError> {
        // Queued by presence itself, so that it precedes every later diff.
        self.services
            .presence
            .push_state(self.topic.clone(), self.conn.clone(), self.join_ref.clone())
            .await
    }

    /// A handle to reply to the event being handled later, after returning
    /// [`HandleIn::NoReply`](super::HandleIn::NoReply). `None` outside
    /// `handle_in` or when the client sent no ref.
    pub fn reply_ref(&self) -> Option<ReplyRef> {
        Some(ReplyRef {
            conn: self.conn.clone(),
            topic: self.topic.clone(),
            join_ref: self.join_ref.clone(),
            ref_: self.current_ref.clone()?,
        })
    }

    /// A sender that delivers messages to [`Channel::handle_info`](super::Channel::handle_info)
    /// from anywhere, for as long as the channel lives.
    pub fn info_sender(&mut self) -> InfoSender<I> {
        InfoSender(self.me.clone())
    }

    /// Delivers `info` to `handle_info` after `delay`, unless the channel ends first.
    pub fn send_after(&mut self, delay: Duration, info: I) {
        let to = InfoSender(self.me.clone());
        let cancel = self
            .timers
            .get_or_insert_with(CancellationToken::new)
            .clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(delay) => { to.send(info); }
            }
        });
    }

    /// Cancels pending timers; called when the channel ends.
    pub(crate) fn cancel_timers(&self) {
        if let Some(t) = &self.timers {
            t.cancel();
        }
    }

    /// Takes new socket assigns, keeping what this channel assigned itself.
    pub(crate) fn set_socket(&mut self, socket: Arc<SocketInfo>) {
        if let Some(own) = &mut self.assigns {
            for (k, v) in &socket.assigns {
                own.insert(k.clone(), v.clone());
            }
        }
        self.socket = socket;
    }

    pub(crate) fn conn(&self) -> &ConnHandle {
        &self.conn
    }

    /// The endpoint's services, borrowed (a clone is contended: every
    /// channel on the pod shares them).
    pub(crate) fn services(&self) -> &Services {
        &self.services
    }

    /// The joined topic, shared.
    pub(crate) fn topic_arc(&self) -> &Arc<str> {
        &self.topic
    }
}

/// Sends messages to a channel's `handle_info` from other tasks.
pub struct InfoSender<I>(Weak<dyn PostInfo<I>>);

impl<I> fmt::Debug for InfoSender<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InfoSender").finish_non_exhaustive()
    }
}

impl<I> Clone for InfoSender<I> {
    fn clone(&self) -> Self {
        InfoSender(self.0.clone())
    }
}

impl<I> InfoSender<I> {
    /// Returns false once the channel has ended.
    pub fn send(&self, info: I) -> bool {
        self.0.upgrade().is_some_and(|to| to.post_info(info))
    }
}

/// A deferred reply to one client event (Phoenix's `socket_ref` + `reply/2`).
#[derive(Debug, Clone)]
pub struct ReplyRef {
    conn: ConnHandle,
    topic: Arc<str>,
    join_ref: Option<Arc<str>>,
    ref_: String,
}

impl ReplyRef {
    /// Sends the reply. Returns false if the connection is gone.
    pub fn reply(&self, status: &str, response: Payload) -> bool {
        let to = ReplyTo {
            topic: &self.topic,
            join_ref: self.join_ref.as_deref(),
            ref_: Some(&self.ref_),
        };
        self.conn.reply(to, status, &response)
    }
}
