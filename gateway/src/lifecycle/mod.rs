//! Lifecycle events for backends: joins, leaves and disconnects of the
//! topics of `[channel.lifecycle]` rules, appended to Redis streams so a
//! backend can mark users offline and clean up (`docs/lifecycle.md`).
//!
//! Channels never wait for Redis: a join or an end only queues an event for
//! the pod's one writer task (`writer`), which keeps what each connection
//! holds (`state`), writes events in batches together with the pod's hash
//! of its connections, and reports the connections of dead pods, found by
//! presence's liveness keys, as disconnected.
//!
//! Sits above presence (whose heartbeat keeps the liveness key it reads)
//! and the pubsub (whose Redis bus it writes through); only `app` uses it.

mod event;
mod state;
mod writer;

pub(crate) use event::{End, Join};

use crate::metrics::lifecycle_metrics;
use crate::presence::Presence;
use crate::pubsub::PubSub;
use event::{now_ms, Event};
use parking_lot::Mutex;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Join events queued for the writer at most; more are dropped (and
/// counted) while Redis is slow or down. Ends are never dropped: there is
/// at most one per queued join, so they are bounded by the joins.
const MAX_QUEUED_JOINS: usize = 65_536;

/// A stream events go to: its key after the Redis prefix, and its bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamSpec {
    pub(crate) name: Arc<str>,
    /// `XADD MAXLEN ~` bound.
    pub(crate) max_len: u64,
}

/// A configured stream, by its place in the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct StreamId(usize);

/// The pod's lifecycle events. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Lifecycle {
    inner: Arc<Inner>,
}

struct Inner {
    streams: Arc<[StreamSpec]>,
    tx: mpsc::UnboundedSender<Event>,
    queued_joins: Arc<AtomicUsize>,
    /// The writer, until started: building an endpoint needs no runtime.
    idle: Mutex<Option<(writer::Writer, mpsc::UnboundedReceiver<Event>)>>,
    started: AtomicBool,
}

impl fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lifecycle")
            .field("streams", &self.inner.streams)
            .finish_non_exhaustive()
    }
}

impl Lifecycle {
    /// Lifecycle events to `streams` over `pubsub`'s Redis; dead pods are
    /// found by `presence`'s liveness keys and reported every
    /// `pod_timeout / 4` on average.
    ///
    /// # Errors
    /// Without Redis, or on a Redis Cluster.
    pub(crate) fn new(
        pubsub: &PubSub,
        presence: &Presence,
        pod_timeout: Duration,
        streams: Vec<StreamSpec>,
    ) -> Result<Lifecycle, String> {
        let redis = pubsub
            .redis_broker()
            .ok_or("lifecycle events need Redis ([redis] url)")?;
        let store = pubsub_redis::LifecycleStore::new(redis.bus(), redis.node())
            .map_err(|e| e.to_string())?;
        let streams: Arc<[StreamSpec]> = Arc::from(streams);
        let queued_joins = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = writer::Writer {
            state: state::State::new(streams.clone(), store.pod().to_owned()),
            store,
            queued_joins: queued_joins.clone(),
            presence: presence.clone(),
            reap: pod_timeout / 4,
            dirty: false,
            held: Vec::new(),
            warned: None,
        };
        lifecycle_metrics();
        Ok(Lifecycle {
            inner: Arc::new(Inner {
                streams,
                tx,
                queued_joins,
                idle: Mutex::new(Some((writer, rx))),
                started: AtomicBool::new(false),
            }),
        })
    }

    /// The stream called `name`, if configured.
    pub(crate) fn stream(&self, name: &str) -> Option<StreamId> {
        self.inner
            .streams
            .iter()
            .position(|s| &*s.name == name)
            .map(StreamId)
    }

    /// Starts the writer, and with it the reporting of dead pods, if it has
    /// not started; false outside a tokio runtime.
    pub(crate) fn start(&self) -> bool {
        if self.inner.started.load(Ordering::Acquire) {
            return true;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        if let Some((writer, rx)) = self.inner.idle.lock().take() {
            rt.spawn(writer.run(rx));
        }
        self.inner.started.store(true, Ordering::Release);
        true
    }

    /// Resolves once every event queued before the call is written (or
    /// dropped); at once if the writer is not running.
    pub(crate) async fn flush(&self) {
        if !self.inner.started.load(Ordering::Acquire) {
            return;
        }
        let (done, rx) = tokio::sync::oneshot::channel();
        if self.inner.tx.send(Event::Flush(done)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Queues the `join` event of `join` in `stream`. The membership it
    /// returns queues the topic's end when dropped or ended; `None` when
    /// the event was dropped (the queue is full), and then its end is not
    /// reported either.
    pub(crate) fn join(&self, stream: StreamId, join: Join) -> Option<Membership> {
        if !self.start() {
            return None;
        }
        let queued = self.inner.queued_joins.fetch_add(1, Ordering::Relaxed);
        if queued >= MAX_QUEUED_JOINS {
            self.inner.queued_joins.fetch_sub(1, Ordering::Relaxed);
            lifecycle_metrics().dropped(1);
            return None;
        }
        let membership = Membership {
            lifecycle: self.clone(),
            stream,
            conn: join.conn,
            topic: join.topic.clone(),
            ended: false,
        };
        let event = Event::Join {
            stream,
            join,
            at: now_ms(),
        };
        if self.inner.tx.send(event).is_err() {
            self.inner.queued_joins.fetch_sub(1, Ordering::Relaxed);
            lifecycle_metrics().dropped(1);
            return None;
        }
        Some(membership)
    }
}

/// A reported join of a lifecycle topic: its end is reported exactly once,
/// by [`Membership::end`] or, after a crash, when it is dropped.
#[derive(Debug)]
pub(crate) struct Membership {
    lifecycle: Lifecycle,
    stream: StreamId,
    conn: u64,
    topic: Arc<str>,
    ended: bool,
}

impl Membership {
    /// Reports how the topic ended.
    pub(crate) fn end(mut self, end: End) {
        self.send(end);
    }

    fn send(&mut self, end: End) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let event = Event::End {
            stream: self.stream,
            conn: self.conn,
            topic: self.topic.clone(),
            end,
            at: now_ms(),
        };
        if self.lifecycle.inner.tx.send(event).is_err() {
            lifecycle_metrics().dropped(1);
        }
    }
}

impl Drop for Membership {
    /// A channel that ends without `terminate` (a panicking callback).
    fn drop(&mut self) {
        self.send(End::Leave("crashed"));
    }
}
