//! The task that runs one joined channel: join, then a loop over client
//! events, intercepted broadcasts and self-sent messages, then cleanup.
//!
//! Every callback runs under `catch_unwind`, so a panic ends this channel
//! with `phx_error` and leaves the connection and its other channels alone.

use super::{
    join_answered, Channel, ChannelContext, ChannelMsg, HandleIn, Inbox, Next, Services,
    SocketInfo, StopReason, Terminate,
};
use crate::conn::{ConnHandle, End as Ended, ReplyTo};
use crate::metrics::metrics;
use crate::protocol::{Payload, Refusal};
use crate::pubsub::hub::{Intercept, Subscriber, Target};
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;

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
    pub(crate) inbox: Inbox,
    pub(crate) rx: UnboundedReceiver<Box<ChannelMsg>>,
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

pub(crate) async fn run<C: Channel>(mut chan: C, s: Start) {
    let Start {
        topic,
        join_ref,
        ref_,
        payload,
        conn,
        services,
        socket,
        previous,
        inbox,
        mut rx,
    } = s;
    if let Some(prev) = &previous {
        if prev.replace {
            let _ = prev.inbox.send(Box::new(ChannelMsg::Replace));
        }
        prev.inbox.closed().await;
    }
    let pubsub = services.pubsub.clone();
    let mut ctx = ChannelContext::new(
        topic.clone(),
        join_ref.clone(),
        conn.clone(),
        services,
        socket,
    );
    let to = ReplyTo {
        topic: &topic,
        join_ref: join_ref.as_deref(),
        ref_: ref_.as_deref(),
    };

    let joined = AssertUnwindSafe(chan.join(&topic, payload, &mut ctx))
        .catch_unwind()
        .await;
    let subscription = match joined {
        Err(_) => {
            join_answered(&conn, &topic, "error");
            tracing::error!(topic = %topic, "channel join panicked");
            conn.refuse(to, Refusal::JoinCrashed);
            None
        }
        Ok(Err(response)) => {
            join_answered(&conn, &topic, refusal(&response));
            conn.reply(to, "error", &response);
            None
        }
        Ok(Ok(response)) => {
            let events = chan.intercept();
            let intercept = (!events.is_empty()).then(|| {
                Box::new(Interceptor {
                    events,
                    inbox: inbox.clone(),
                }) as Box<dyn Intercept>
            });
            let sub = Subscriber {
                conn: conn.clone(),
                target: Target::Channel(intercept),
            };
            match pubsub.subscribe(&topic, sub).await {
                Ok(sub) => {
                    join_answered(&conn, &topic, "ok");
                    // Counted before the client can see the reply.
                    let joined = metrics().channel_joined(&topic);
                    conn.reply(to, "ok", &response);
                    Some((sub, joined))
                }
                Err(e) => {
                    join_answered(&conn, &topic, "subscription_failed");
                    tracing::warn!(topic = %topic, error = %e, "join refused: subscription failed");
                    conn.refuse(to, Refusal::SubscriptionFailed);
                    None
                }
            }
        }
    };
    drop(inbox);
    if let Some(prev) = previous.filter(|p| p.replace) {
        conn.end(&topic, prev.join_ref.as_deref(), Ended::Close);
    }
    let Some(subscription) = subscription else {
        drain(rx, &conn, &topic);
        return;
    };

    let end = event_loop(&mut chan, &mut ctx, &mut rx, &conn).await;
    tracing::debug!(conn = conn.id(), topic = %topic, end = end.label(), "channel left");

    drop(subscription);
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
    let jr = join_ref.as_deref();
    match end {
        End::Stop(StopReason::Error(reason)) => {
            tracing::warn!(topic = %topic, %reason, "channel stopped with an error");
            conn.end(&topic, jr, Ended::Error);
        }
        End::Crash => conn.end(&topic, jr, Ended::Error),
        End::Stop(_) | End::Leave => conn.end(&topic, jr, Ended::Close),
        End::Replaced | End::Closed => {}
    }
    drain(rx, &conn, &topic);
}

async fn event_loop<C: Channel>(
    chan: &mut C,
    ctx: &mut ChannelContext<C::Info>,
    rx: &mut UnboundedReceiver<Box<ChannelMsg>>,
    conn: &ConnHandle,
) -> End {
    loop {
        let next = tokio::select! {
            biased;
            _ = conn.closed() => return End::Closed,
            msg = rx.recv() => match msg {
                Some(msg) => Either::Msg(msg),
                None => return End::Closed,
            },
            info = ctx.recv_info() => Either::Info(info),
        };
        let step = match next {
            Either::Msg(msg) => match *msg {
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
                ChannelMsg::Assigns(info) => {
                    ctx.set_socket(info);
                    next_step(
                        AssertUnwindSafe(chan.handle_assigns(ctx))
                            .catch_unwind()
                            .await,
                    )
                }
            },
            Either::Info(info) => next_step(
                AssertUnwindSafe(chan.handle_info(info, ctx))
                    .catch_unwind()
                    .await,
            ),
        };
        if let Err(end) = step {
            if matches!(end, End::Crash) {
                tracing::error!(topic = %ctx.topic(), "channel callback panicked");
            }
            return end;
        }
    }
}

enum Either<I> {
    Msg(Box<ChannelMsg>),
    Info(I),
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

/// Closes the inbox and answers what raced into it as the socket would
/// answer messages for a topic that is not joined.
fn drain(mut rx: UnboundedReceiver<Box<ChannelMsg>>, conn: &ConnHandle, topic: &str) {
    rx.close();
    while let Ok(msg) = rx.try_recv() {
        let (event, join_ref, ref_) = match *msg {
            ChannelMsg::In { event, ref_, .. } => (event, None, ref_),
            ChannelMsg::Leave { join_ref, ref_ } => ("phx_leave".to_owned(), join_ref, ref_),
            ChannelMsg::Out { .. } | ChannelMsg::Replace | ChannelMsg::Assigns(_) => continue,
        };
        let to = ReplyTo {
            topic,
            join_ref: join_ref.as_deref(),
            ref_: ref_.as_deref(),
        };
        conn.reply_unjoined(&event, to);
    }
}
