//! A joined channel's life: the join, on a task of its own; then the
//! messages its [`Slot`] queues, each handled by a worker spawned when one
//! arrives; then cleanup. Between messages the channel rests in the slot
//! with no task. A config rule's channel runs its join, and its end when
//! the connection closes, on the connection's task unless they have to
//! wait (see the `inline` module).
//!
//! Every callback runs under `catch_unwind`, so a panic ends this channel
//! with `phx_error` and leaves the connection and its other channels alone.

use super::inline::{self, Step};
use super::queue::Lane;
use super::slot::{Inbox, Item, Next as Queued, Slot};
use super::{
    join_answered, Channel, ChannelContext, ChannelMsg, HandleIn, Next, Services, SocketInfo,
    StopReason, Terminate,
};
use crate::conn::{Budget, Kind, Out};
use crate::conn::{ConnHandle, End as Ended, ReplyTo};
use crate::metrics::{metrics, JoinedChannel, Limit};
use crate::protocol::{Payload, Refusal};
use crate::pubsub::history::{Ask, Recovery};
use crate::pubsub::hub::{encode, Intercept, Subscriber, Target};
use crate::pubsub::seam::{Broken, Seam};
use crate::pubsub::{Broadcast, History, PubSub, Subscription};
use futures_util::FutureExt;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

/// A channel instance that a new join must wait for.
#[derive(Debug)]
pub(crate) struct Previous {
    pub(crate) inbox: Inbox,
    pub(crate) join_ref: Option<Arc<str>>,
    /// True for a duplicate join (it is told to stop and gets `phx_close`
    /// after the new join's reply); false for one already leaving.
    pub(crate) replace: bool,
}

/// Everything a channel task needs.
#[derive(Debug)]
pub(crate) struct Start {
    pub(crate) topic: Arc<str>,
    pub(crate) join_ref: Option<Arc<str>>,
    pub(crate) ref_: Option<String>,
    pub(crate) payload: Payload,
    pub(crate) conn: ConnHandle,
    pub(crate) services: Arc<Services>,
    pub(crate) socket: Arc<SocketInfo>,
    pub(crate) previous: Option<Previous>,
    /// The lane of the client's address, where the join waits for its turn.
    pub(crate) lane: Arc<Lane>,
    /// The channel's callbacks may run on the connection's task (a config
    /// rule's); its join then runs there unless it has to wait.
    pub(crate) inline: bool,
}

enum End {
    Stop(StopReason),
    Leave,
    Replaced,
    Closed,
    Crash,
}

/// The `result` label of a refused join: `unauthorized` when the channel
/// said so (as the config's rules and most Phoenix channels do), else `error`.
fn refusal(response: &Payload) -> &'static str {
    match response.get("reason") {
        Some(serde_json::Value::String(r)) if r == Refusal::Unauthorized.reason() => "unauthorized",
        _ => "error",
    }
}

/// Hands the broadcasts a channel intercepts to its task, for `handle_out`.
#[derive(Debug)]
struct Interceptor {
    events: Vec<String>,
    inbox: Inbox,
}

impl Intercept for Interceptor {
    fn wants(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
    }

    fn deliver(&self, event: &str, payload: &Payload) -> bool {
        let out = ChannelMsg::Out {
            event: event.to_owned(),
            payload: payload.clone(),
        };
        self.inbox.send(Box::new(out)).is_ok()
    }
}

/// Tells a channel with history that its client missed live messages.
#[derive(Debug)]
struct LostOffsets(Inbox);

impl Broken for LostOffsets {
    fn broken(&self) {
        let _ = self.0.send(Box::new(ChannelMsg::Lost));
    }
}

impl End {
    /// A word for the log line of a channel's end.
    fn label(&self) -> &'static str {
        match self {
            End::Stop(StopReason::Error(_)) => "error",
            End::Stop(_) => "stop",
            End::Leave => "leave",
            End::Replaced => "duplicate_join",
            End::Closed => "connection_closed",
            End::Crash => "crash",
        }
    }
}

/// A joined channel at rest between messages.
pub(crate) struct Live<C: Channel> {
    chan: C,
    ctx: ChannelContext<C::Info>,
    /// Dropped (unsubscribing) when the channel ends, with the gauge.
    joined: (Subscription, JoinedChannel),
}

type ChannelSlot<C> = Slot<C, Live<C>>;

/// Starts a channel for one join: its slot, and a task that runs the join
/// and whatever arrives meanwhile (for an inline channel, that runs here
/// until it has to wait). Returns the slot's inbox.
pub(crate) fn start<C: Channel>(chan: C, s: Start) -> Inbox {
    let slot: Arc<ChannelSlot<C>> = Slot::new(resume::<C>, s.inline);
    let inbox = slot.inbox();
    if s.inline {
        inline::run_or_spawn(Box::pin(join(slot, chan, s)));
    } else {
        tokio::spawn(join(slot, chan, s));
    }
    inbox
}

/// A worker for a channel at rest that received something.
fn resume<C: Channel>(slot: Arc<ChannelSlot<C>>) -> Step {
    Box::pin(async move {
        if let Some(live) = slot.take() {
            run(slot, live).await;
        }
    })
}

/// Ends the slot if its worker unwinds from outside a callback (a bug), so
/// the connection sees the channel gone instead of queueing to it forever.
struct EndIfUnwinding<'a, C: Channel>(&'a ChannelSlot<C>);

impl<C: Channel> Drop for EndIfUnwinding<'_, C> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.end();
        }
    }
}

async fn join<C: Channel>(slot: Arc<ChannelSlot<C>>, mut chan: C, s: Start) {
    let Start {
        topic,
        join_ref,
        ref_,
        payload,
        conn,
        services,
        socket,
        previous,
        lane,
        inline: _,
    } = s;
    let unwinding = EndIfUnwinding(&slot);
    if let Some(prev) = &previous {
        if prev.replace {
            let _ = prev.inbox.send(Box::new(ChannelMsg::Replace));
        }
        prev.inbox.closed().await;
    }
    let mut ctx = ChannelContext::new(
        topic.clone(),
        join_ref.clone(),
        conn.clone(),
        services,
        socket,
        slot.info_target(),
    );
    let to = ReplyTo {
        topic: &topic,
        join_ref: join_ref.as_deref(),
        ref_: ref_.as_deref(),
    };
    // What the join asks of the topic's history, read before the channel
    // takes the params.
    let history = ctx
        .services()
        .pubsub
        .history_of(&topic)
        .map(|h| (h, Ask::from_join(&payload, h.max_recover)));

    // The turn is held through the join and its subscription, so a source's
    // joins wait behind its own, never in front of other sources'.
    let turn = lane.turn().await;
    let joined = match (&turn, &history) {
        (Ok(_), Some((_, Err(reason)))) => Some(Ok(Err(Payload::reason(reason)))),
        (Ok(_), _) => Some(
            AssertUnwindSafe(chan.join(&topic, payload, &mut ctx))
                .catch_unwind()
                .await,
        ),
        (Err(_), _) => None,
    };
    let subscription = match joined {
        None => {
            join_answered(&conn, &topic, "queue_full");
            metrics().limit_hit(Limit::QueuedJoins);
            conn.refuse(to, Refusal::JoinQueueFull);
            None
        }
        Some(Err(_)) => {
            join_answered(&conn, &topic, "error");
            tracing::error!(topic = %topic, "channel join panicked");
            conn.refuse(to, Refusal::JoinCrashed);
            None
        }
        Some(Ok(Err(response))) => {
            join_answered(&conn, &topic, refusal(&response));
            conn.reply(to, "error", &response);
            None
        }
        Some(Ok(Ok(response))) => {
            let events = chan.intercept();
            let intercept = (!events.is_empty()).then(|| {
                Box::new(Interceptor {
                    events,
                    inbox: slot.inbox(),
                }) as Box<dyn Intercept>
            });
            let kept = history.and_then(|(h, ask)| {
                let lost = Box::new(LostOffsets(slot.inbox()));
                Some((h, ask.ok()?, Seam::new(conn.budget().frames, lost)))
            });
            subscribe(
                &ctx.services().pubsub,
                &topic,
                to,
                &conn,
                response,
                intercept,
                kept,
            )
            .await
        }
    };
    drop(turn);
    drop(unwinding);
    if let Some(prev) = previous.filter(|p| p.replace) {
        conn.end(&topic, prev.join_ref.as_deref(), Ended::Close);
    }
    match subscription {
        Some(joined) => run(slot, Box::new(Live { chan, ctx, joined })).await,
        None => {
            drop(ctx);
            answer_rest(slot.end(), &conn, &topic);
        }
    }
}

/// Subscribes a joined channel (sharing its topic's name) and answers its join: `ok` once the
/// subscription is in effect, after the history read and before the replay
/// for a topic with history (`kept`: what it keeps, what the join asks, and
/// the seam); an error reply if the broker fails.
async fn subscribe(
    pubsub: &PubSub,
    shared_topic: &Arc<str>,
    to: ReplyTo<'_>,
    conn: &ConnHandle,
    response: Payload,
    intercept: Option<Box<dyn Intercept>>,
    kept: Option<(History, Ask, Arc<Seam>)>,
) -> Option<(Subscription, JoinedChannel)> {
    let topic = to.topic;
    let target = match &kept {
        Some((_, _, seam)) => Target::Kept(intercept, seam.clone()),
        None => Target::Channel(intercept),
    };
    let sub = Subscriber {
        conn: conn.clone(),
        target,
    };
    // Subscribed first: what is published while the history is read waits
    // in the seam.
    let sub = match pubsub.subscribe(shared_topic, sub).await {
        Ok(sub) => sub,
        Err(e) => {
            join_answered(conn, topic, "subscription_failed");
            tracing::warn!(topic, error = %e, "join refused: subscription failed");
            conn.refuse(to, Refusal::SubscriptionFailed);
            return None;
        }
    };
    let Some((history, ask, seam)) = kept else {
        join_answered(conn, topic, "ok");
        // Counted before the client can see the reply.
        let joined = metrics().channel_joined(topic);
        conn.reply(to, "ok", &response);
        return Some((sub, joined));
    };
    let recovery = match pubsub.read_history(topic, &history, &ask).await {
        Ok(recovery) => fit(recovery, &ask, conn.budget()),
        Err(e) => {
            join_answered(conn, topic, "history_unavailable");
            tracing::warn!(topic, error = %e, "join refused: history unavailable");
            conn.refuse(to, Refusal::HistoryUnavailable);
            return None;
        }
    };
    metrics().history_read(
        matches!(ask, Ask::Since(_)),
        recovery.recovered,
        recovery.messages.len(),
    );
    join_answered(conn, topic, "ok");
    let joined = metrics().channel_joined(topic);
    conn.reply(to, "ok", &with_history(response, &ask, &recovery));
    replay(conn, topic, &recovery);
    seam.open(conn, &recovery.top);
    Some((sub, joined))
}

/// The join's response with what the history read found, under `history`
/// (an object response gains the key; any other is left as it is).
fn with_history(response: Payload, ask: &Ask, recovery: &Recovery) -> Payload {
    let serde_json::Value::Object(mut map) = response.value() else {
        return response;
    };
    let recovered = matches!(ask, Ask::Since(_)) && recovery.recovered;
    map.insert(
        "history".into(),
        serde_json::json!({"recovered": recovered, "position": recovery.top.to_string()}),
    );
    Payload::json(&map)
}

/// A replay is queued at once, so it may take half of what the connection
/// can hold: a `since` that needs more is not recovered (the client
/// refetches, rather than being closed as a slow consumer and retrying the
/// same replay forever); a `last` keeps its newest messages that fit.
fn fit(mut recovery: Recovery, ask: &Ask, budget: Budget) -> Recovery {
    let (mut frames, mut bytes) = (budget.frames / 2, budget.bytes / 2);
    let mut keep = 0;
    for kept in recovery.messages.iter().rev() {
        // The payload and the frame around it.
        let size = kept.payload.size() + kept.event.len() + 64;
        if frames == 0 || size > bytes {
            break;
        }
        frames -= 1;
        bytes -= size;
        keep += 1;
    }
    if keep < recovery.messages.len() {
        match ask {
            Ask::Since(_) => {
                recovery.recovered = false;
                recovery.messages.clear();
            }
            _ => {
                recovery.messages.drain(..recovery.messages.len() - keep);
            }
        }
    }
    recovery
}

/// Queues the messages a join recovered, as the broadcasts they were, each
/// with its position.
fn replay(conn: &ConnHandle, topic: &str, recovery: &Recovery) {
    for kept in &recovery.messages {
        let msg = Broadcast {
            topic: topic.to_owned(),
            event: kept.event.clone(),
            payload: kept.payload.clone(),
            from: None,
        };
        if let Some(frame) = encode(conn.vsn(), &msg, Some(&kept.position)) {
            conn.enqueue(Out::Data(frame, Kind::Push));
        }
    }
}

/// Handles what the slot queued, in order, until it is empty (the channel
/// rests again) or the channel ends.
async fn run<C: Channel>(slot: Arc<ChannelSlot<C>>, mut live: Box<Live<C>>) {
    let _unwinding = EndIfUnwinding(&slot);
    loop {
        // A closed connection ends the channel before anything else queued.
        let step = if live.ctx.conn().is_closed() {
            Err(End::Closed)
        } else {
            match slot.next(live) {
                Queued::Parked => return,
                Queued::Item(l, item) => {
                    live = l;
                    step(&mut live, item).await
                }
            }
        };
        if let Err(end) = step {
            finish(&slot, live, end).await;
            return;
        }
    }
}

async fn step<C: Channel>(live: &mut Live<C>, item: Item<C::Info>) -> Result<(), End> {
    let Live { chan, ctx, .. } = live;
    let msg = match item {
        Item::Info(info) => {
            return next_step(
                AssertUnwindSafe(chan.handle_info(info, ctx))
                    .catch_unwind()
                    .await,
            )
        }
        Item::Msg(msg) => msg,
    };
    match *msg {
        ChannelMsg::In {
            event,
            ref_,
            payload,
            held,
        } => {
            ctx.current_ref = ref_;
            let res = AssertUnwindSafe(chan.handle_in(&event, payload, ctx))
                .catch_unwind()
                .await;
            drop(held);
            let ref_ = ctx.current_ref.take();
            match res {
                Err(_) => Err(End::Crash),
                Ok(HandleIn::Reply(status, response)) => {
                    reply_to(ctx, ref_.as_deref(), &status, &response);
                    Ok(())
                }
                Ok(HandleIn::NoReply) => Ok(()),
                Ok(HandleIn::Stop(reason, reply)) => {
                    if let Some((status, response)) = reply {
                        reply_to(ctx, ref_.as_deref(), &status, &response);
                    }
                    Err(End::Stop(reason))
                }
            }
        }
        ChannelMsg::Leave { ref_, .. } => {
            reply_to(ctx, ref_.as_deref(), "ok", &Payload::empty());
            Err(End::Leave)
        }
        ChannelMsg::Out { event, payload } => next_step(
            AssertUnwindSafe(chan.handle_out(&event, payload, ctx))
                .catch_unwind()
                .await,
        ),
        ChannelMsg::Replace => Err(End::Replaced),
        ChannelMsg::Closed => Err(End::Closed),
        ChannelMsg::Lost => {
            metrics().history_gap();
            Err(End::Stop(StopReason::Error(
                "missed messages: rejoin from the last position to recover them".into(),
            )))
        }
        ChannelMsg::Removed => Err(End::Stop(StopReason::Shutdown(
            "removed from the topic by an operator".into(),
        ))),
        ChannelMsg::Assigns(info) => {
            ctx.set_socket(info);
            next_step(
                AssertUnwindSafe(chan.handle_assigns(ctx))
                    .catch_unwind()
                    .await,
            )
        }
    }
}

/// Ends a joined channel: unsubscribes, calls `terminate`, tells the
/// client, and answers what was still queued.
async fn finish<C: Channel>(slot: &ChannelSlot<C>, live: Box<Live<C>>, end: End) {
    let Live {
        mut chan,
        mut ctx,
        joined,
    } = *live;
    if matches!(end, End::Crash) {
        tracing::error!(topic = %ctx.topic(), "channel callback panicked");
    }
    let conn = ctx.conn().clone();
    let topic = ctx.topic_arc().clone();
    tracing::debug!(conn = conn.id(), topic = %topic, end = end.label(), "channel left");
    drop(joined);
    ctx.cancel_timers();
    let terminate = match &end {
        End::Stop(reason) => Some(Terminate::Stop(reason.clone())),
        End::Leave => Some(Terminate::Leave),
        End::Replaced => Some(Terminate::DuplicateJoin),
        End::Closed => Some(Terminate::Closed),
        End::Crash => None,
    };
    if let Some(reason) = terminate {
        if AssertUnwindSafe(chan.terminate(reason, &mut ctx))
            .catch_unwind()
            .await
            .is_err()
        {
            tracing::error!(topic = %topic, "channel terminate panicked");
        }
    }
    let jr = ctx.join_ref();
    match end {
        End::Stop(StopReason::Error(reason)) => {
            tracing::warn!(topic = %topic, %reason, "channel stopped with an error");
            conn.end(&topic, jr, Ended::Error);
        }
        End::Crash => conn.end(&topic, jr, Ended::Error),
        End::Stop(_) | End::Leave => conn.end(&topic, jr, Ended::Close),
        End::Replaced | End::Closed => {}
    }
    // Presences end with the channel, before a new join can track again.
    drop(ctx);
    answer_rest(slot.end(), &conn, &topic);
}

fn next_step(res: std::thread::Result<Next>) -> Result<(), End> {
    match res {
        Err(_) => Err(End::Crash),
        Ok(Next::Continue) => Ok(()),
        Ok(Next::Stop(reason)) => Err(End::Stop(reason)),
    }
}

fn reply_to<I: Send + 'static>(
    ctx: &ChannelContext<I>,
    ref_: Option<&str>,
    status: &str,
    response: &Payload,
) {
    let to = ReplyTo {
        topic: ctx.topic(),
        join_ref: ctx.join_ref(),
        ref_,
    };
    ctx.conn().reply(to, status, response);
}

/// Answers what was queued for a channel that ended as the socket would
/// answer messages for a topic that is not joined.
fn answer_rest<I>(rest: VecDeque<Item<I>>, conn: &ConnHandle, topic: &str) {
    for item in rest {
        let Item::Msg(msg) = item else { continue };
        let (event, join_ref, ref_) = match *msg {
            ChannelMsg::In { event, ref_, .. } => (event, None, ref_),
            ChannelMsg::Leave { join_ref, ref_ } => ("phx_leave".to_owned(), join_ref, ref_),
            ChannelMsg::Out { .. }
            | ChannelMsg::Replace
            | ChannelMsg::Assigns(_)
            | ChannelMsg::Closed
            | ChannelMsg::Lost
            | ChannelMsg::Removed => continue,
        };
        let to = ReplyTo {
            topic,
            join_ref: join_ref.as_deref(),
            ref_: ref_.as_deref(),
        };
        conn.reply_unjoined(&event, to);
    }
}
