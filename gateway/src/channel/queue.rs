//! Fair admission of joins: each client address (source) has a lane that
//! lets a few of its joins run at once (join callback and broker
//! subscription) and queues the rest, in order, behind each other, up to a
//! bound past which a join is refused at once with a clear reason.
//!
//! Joins end in the pod's one Redis subscriber connection, which confirms
//! subscriptions in the order they were asked for. Without lanes, one
//! client that asks for tens of thousands of subscriptions (a long-poll
//! session costs two HTTP requests and joins 100 topics) puts every other
//! user's join behind all of them. With lanes, a source has at most
//! [`IN_FLIGHT`] joins ahead of anyone else's: a flood queues behind
//! itself.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::{Semaphore, SemaphorePermit};

/// Joins of one source running at once; enough for a client joining its
/// channels on connect, and for many users behind one address, as each
/// join is one Redis round trip.
pub(crate) const IN_FLIGHT: usize = 16;

/// The lanes of every source with a connection open.
#[derive(Debug)]
pub(crate) struct Joins {
    /// Joins of one source that may wait for their turn; `None`: no bound.
    max_queued: Option<usize>,
    lanes: Mutex<Lanes>,
}

#[derive(Debug, Default)]
struct Lanes {
    by_source: HashMap<IpAddr, Weak<Lane>>,
    /// Entries after the last sweep of dead lanes.
    after_sweep: usize,
}

/// One source's joins; connections of the source share it.
#[derive(Debug)]
pub(crate) struct Lane {
    running: Semaphore,
    /// Joins waiting for a turn.
    queued: AtomicUsize,
    max_queued: Option<usize>,
}

/// The lane has [`Joins::max_queued`] joins waiting already.
#[derive(Debug)]
pub(crate) struct QueueFull;

impl Joins {
    pub(crate) fn new(max_queued: Option<usize>) -> Self {
        Joins {
            max_queued,
            lanes: Mutex::default(),
        }
    }

    /// The lane of `source`, shared with its other connections.
    pub(crate) fn lane(&self, source: IpAddr) -> Arc<Lane> {
        let mut lanes = self.lanes.lock();
        if let Some(lane) = lanes.by_source.get(&source).and_then(Weak::upgrade) {
            return lane;
        }
        let lane = Arc::new(Lane {
            running: Semaphore::new(IN_FLIGHT),
            queued: AtomicUsize::new(0),
            max_queued: self.max_queued,
        });
        lanes.by_source.insert(source, Arc::downgrade(&lane));
        // Amortised: sweep lanes no connection holds whenever the map doubled.
        if lanes.by_source.len() >= 2 * lanes.after_sweep.max(512) {
            lanes.by_source.retain(|_, l| l.strong_count() > 0);
            lanes.after_sweep = lanes.by_source.len();
        }
        lane
    }
}

impl Lane {
    /// Waits for this join's turn; the turn lasts as long as the permit.
    ///
    /// # Errors
    /// [`QueueFull`] when the lane's queue is full: refused at once.
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped wait leaves the queue.
    pub(crate) async fn turn(&self) -> Result<SemaphorePermit<'_>, QueueFull> {
        if let Ok(permit) = self.running.try_acquire() {
            return Ok(permit);
        }
        let queued = self.queued.fetch_add(1, Ordering::Relaxed);
        let _leave = Leave(&self.queued);
        if self.max_queued.is_some_and(|max| queued >= max) {
            return Err(QueueFull);
        }
        // The semaphore is never closed.
        self.running.acquire().await.map_err(|_| QueueFull)
    }
}

/// Takes a join out of its lane's queue count however its wait ends.
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_source_queues_behind_itself_and_past_the_bound_is_refused() {
        let joins = Joins::new(Some(2));
        let a = joins.lane("192.0.2.1".parse().unwrap());
        let same = joins.lane("192.0.2.1".parse().unwrap());
        assert!(
            Arc::ptr_eq(&a, &same),
            "connections of a source share a lane"
        );
        let mut held = Vec::new();
        for _ in 0..IN_FLIGHT {
            held.push(a.turn().await.unwrap());
        }
        // Two may wait; the third is refused at once.
        let w1 = a.turn();
        let w2 = a.turn();
        tokio::pin!(w1, w2);
        assert!(futures_util::poll!(&mut w1).is_pending());
        assert!(futures_util::poll!(&mut w2).is_pending());
        assert!(a.turn().await.is_err());
        // Another source is not behind any of it.
        let b = joins.lane("192.0.2.2".parse().unwrap());
        assert!(b.turn().await.is_ok());
        // A finished join lets the first waiter in.
        held.pop();
        assert!(w1.await.is_ok());
    }
}
