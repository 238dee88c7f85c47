//! Where a joined channel lives between messages: its state and its queue,
//! with no task of its own while idle.
//!
//! A Phoenix channel is a process; a task per joined channel would cost
//! about a kilobyte for every idle subscription. Instead a channel's state
//! rests in its [`Slot`], and a worker task is spawned only when a message
//! arrives for it. The worker handles the queue in order, one message at a
//! time, and puts the state back when the queue is empty. So a slow or
//! panicking callback still stalls or ends only its own channel, while an
//! idle channel holds a few hundred bytes and no task.
//!
//! A channel of a config rule (`inline`) may instead have its worker run
//! its first steps on the connection's task when the connection closes:
//! see the `inline` module.

use super::inline::{self, Step};
use super::{Channel, ChannelMsg};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::Notify;

/// Something for a channel's worker.
pub(crate) enum Item<I> {
    /// From the socket or the hub.
    Msg(Box<ChannelMsg>),
    /// Sent by the channel to itself.
    Info(I),
}

/// What the connection and the hub see of a slot, whatever its channel type.
pub(crate) trait Mailbox: Send + Sync {
    /// Queues `msg`, starting a worker if none runs; gives it back once the
    /// channel has ended.
    fn post(self: Arc<Self>, msg: Box<ChannelMsg>) -> Result<(), Box<ChannelMsg>>;
    /// As `post`, but a worker it starts runs here until it has to wait,
    /// when the channel allows it (see the `inline` module).
    fn post_here(self: Arc<Self>, msg: Box<ChannelMsg>) -> Result<(), Box<ChannelMsg>>;
    /// The channel has ended; nothing posted reaches it any more.
    fn is_closed(&self) -> bool;
    /// Resolves once the channel has ended.
    fn closed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Where the socket and the hub hand messages to one joined channel.
#[derive(Clone)]
pub(crate) struct Inbox(Arc<dyn Mailbox>);

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Inbox {
    /// Queues a message for the channel; gives it back once the channel has
    /// ended.
    pub(crate) fn send(&self, msg: Box<ChannelMsg>) -> Result<(), Box<ChannelMsg>> {
        self.0.clone().post(msg)
    }

    /// Queues a message for the channel; a worker it starts runs on this
    /// task until it has to wait, if the channel allows it.
    pub(crate) fn send_here(&self, msg: Box<ChannelMsg>) -> Result<(), Box<ChannelMsg>> {
        self.0.clone().post_here(msg)
    }

    /// The channel has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    /// Resolves once the channel has ended.
    pub(crate) async fn closed(&self) {
        self.0.closed().await
    }
}

/// Posts a channel's messages to itself (`handle_info`).
pub(crate) trait PostInfo<I>: Send + Sync {
    /// False once the channel has ended.
    fn post_info(self: Arc<Self>, info: I) -> bool;
}

/// Starts a worker for a slot that received something.
pub(crate) type Work<C, S> = fn(Arc<Slot<C, S>>) -> Step;

/// A channel between messages. `S` is its resting state (the channel and
/// its context); the worker owns it while it runs.
pub(crate) struct Slot<C: Channel, S> {
    inner: Mutex<Inner<C::Info, S>>,
    ended: AtomicBool,
    on_end: Notify,
    /// Runs the queue; spawned on demand with the slot.
    work: Work<C, S>,
    /// The channel's callbacks may run on the task that posts to it.
    inline: bool,
}

struct Inner<I, S> {
    queue: VecDeque<Item<I>>,
    /// A worker runs (or the join does): it owns the state meanwhile.
    running: bool,
    state: Option<Box<S>>,
}

/// What the worker gets next.
pub(crate) enum Next<I, S> {
    /// The next item, and the state back.
    Item(Box<S>, Item<I>),
    /// The queue was empty: the state rests in the slot again.
    Parked,
}

impl<C: Channel, S: Send + 'static> Slot<C, S> {
    /// A slot whose first worker (the join) is already running; `inline`
    /// when its channel's callbacks may run on the task posting to it.
    pub(crate) fn new(work: Work<C, S>, inline: bool) -> Arc<Self> {
        Arc::new(Slot {
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                running: true,
                state: None,
            }),
            ended: AtomicBool::new(false),
            on_end: Notify::new(),
            work,
            inline,
        })
    }

    /// The slot as the connection and the hub hold it.
    pub(crate) fn inbox(self: &Arc<Self>) -> Inbox {
        Inbox(self.clone())
    }

    /// Where the channel's self-sent messages go; does not keep it alive.
    pub(crate) fn info_target(self: &Arc<Self>) -> Weak<dyn PostInfo<C::Info>> {
        let weak: Weak<Self> = Arc::downgrade(self);
        weak
    }

    /// Queues `value` (as `wrap` makes it an item), starting a worker if
    /// none runs (here, with `here` on an inline slot); gives it back once
    /// the channel has ended.
    fn push<T>(
        self: Arc<Self>,
        value: T,
        wrap: fn(T) -> Item<C::Info>,
        here: bool,
    ) -> Result<(), T> {
        let start = {
            let mut inner = self.inner.lock();
            if self.ended.load(Ordering::Acquire) {
                return Err(value);
            }
            inner.queue.push_back(wrap(value));
            !std::mem::replace(&mut inner.running, true)
        };
        if start {
            let worker = (self.work)(self.clone());
            if here && self.inline {
                inline::run_or_spawn(worker);
            } else {
                tokio::spawn(worker);
            }
        }
        Ok(())
    }

    /// The resting state, for a worker just started.
    pub(crate) fn take(&self) -> Option<Box<S>> {
        self.inner.lock().state.take()
    }

    /// The next queued item; when there is none the state is put back and
    /// the worker must end.
    pub(crate) fn next(&self, state: Box<S>) -> Next<C::Info, S> {
        let mut inner = self.inner.lock();
        match inner.queue.pop_front() {
            Some(item) => Next::Item(state, item),
            None => {
                inner.state = Some(state);
                inner.running = false;
                if inner.queue.capacity() > 16 {
                    inner.queue.shrink_to(0);
                }
                Next::Parked
            }
        }
    }

    /// Ends the channel: later posts are refused, and what is still queued
    /// is returned for the caller to answer.
    pub(crate) fn end(&self) -> VecDeque<Item<C::Info>> {
        let rest = {
            let mut inner = self.inner.lock();
            self.ended.store(true, Ordering::Release);
            inner.state = None;
            std::mem::take(&mut inner.queue)
        };
        self.on_end.notify_waiters();
        rest
    }
}

impl<C: Channel, S: Send + 'static> Mailbox for Slot<C, S> {
    fn post(self: Arc<Self>, msg: Box<ChannelMsg>) -> Result<(), Box<ChannelMsg>> {
        self.push(msg, Item::Msg, false)
    }

    fn post_here(self: Arc<Self>, msg: Box<ChannelMsg>) -> Result<(), Box<ChannelMsg>> {
        self.push(msg, Item::Msg, true)
    }

    fn is_closed(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    fn closed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            loop {
                let notified = self.on_end.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.is_closed() {
                    return;
                }
                notified.await;
            }
        })
    }
}

impl<C: Channel, S: Send + 'static> PostInfo<C::Info> for Slot<C, S> {
    fn post_info(self: Arc<Self>, info: C::Info) -> bool {
        self.push(info, Item::Info, false).is_ok()
    }
}
