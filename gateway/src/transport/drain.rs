//! Graceful drain: on SIGTERM a pod stops being ready at once, keeps
//! accepting for a short delay (balancers notice readiness late), then closes
//! its connections one by one at random points of a drain period, so their
//! clients reconnect to other pods gradually instead of in one storm.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TrackedFuture;
use tokio_util::task::TaskTracker;

/// When each connection closes during a drain, and which connections are
/// still open. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Drain(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    started: CancellationToken,
    /// Set before `started` is cancelled: what [`Drain::poll_started`] reads.
    flag: AtomicBool,
    period_ms: AtomicU64,
    connections: TaskTracker,
}

impl Drain {
    /// Starts the drain: every connection closes within `period`.
    pub(crate) fn start(&self, period: Duration) {
        let ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
        self.0.period_ms.store(ms, Ordering::SeqCst);
        self.0.flag.store(true, Ordering::SeqCst);
        self.0.started.cancel();
    }

    /// Resolves when it is this connection's turn to close: once the drain
    /// has started, after a delay drawn uniformly from the drain period.
    pub(crate) async fn turn(&self) {
        self.started().await;
        tokio::time::sleep(self.delay()).await;
    }

    /// True once the drain has started.
    pub(crate) fn has_started(&self) -> bool {
        self.0.flag.load(Ordering::SeqCst)
    }

    /// Resolves once the drain has started.
    pub(crate) async fn started(&self) {
        self.0.started.cancelled().await;
    }

    /// Polls `started` (a [`Drain::started`] future) for a connection's
    /// task, which polls it on every wake-up. Polling `started` takes two
    /// locks that every connection of the pod shares; this polls it once,
    /// registering the task's waker (`registered` remembers it), and after
    /// that reads a flag. A task's waker does not change, so the one
    /// registered wakes the task when the drain starts.
    pub(crate) fn poll_started<F: Future<Output = ()>>(
        &self,
        started: Pin<&mut F>,
        registered: &mut bool,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        if self.0.flag.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        if std::mem::replace(registered, true) {
            return Poll::Pending;
        }
        started.poll(cx)
    }

    /// How long after the start of the drain one connection waits before it
    /// closes: a random draw from the drain period.
    pub(crate) fn delay(&self) -> Duration {
        let period = self.0.period_ms.load(Ordering::SeqCst);
        if period == 0 {
            return Duration::ZERO;
        }
        // A random draw per connection (RandomState is randomly keyed).
        let r = RandomState::new().hash_one(std::time::Instant::now());
        Duration::from_millis(r % period)
    }

    /// Spawns a connection's task, counted until it ends.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.0.connections.spawn(task);
    }

    /// A connection's future, counted until it ends: a connection run in
    /// the task that accepted it.
    pub(crate) fn track<F: std::future::Future>(&self, task: F) -> TrackedFuture<F> {
        self.0.connections.track_future(task)
    }

    /// Resolves once every counted connection task has ended. Only meaningful
    /// after new connections are refused.
    pub(crate) async fn closed(&self) {
        self.0.connections.close();
        self.0.connections.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::Drain;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn turns_spread_over_the_period_and_closed_waits_for_tasks() {
        let drain = Drain::default();
        let started = tokio::time::Instant::now();
        let mut ends = Vec::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..200 {
            let (d, tx) = (drain.clone(), tx.clone());
            drain.spawn(async move {
                d.turn().await;
                let _ = tx.send(started.elapsed());
            });
        }
        drop(tx);
        drain.start(Duration::from_secs(30));
        drain.closed().await;
        while let Some(e) = rx.recv().await {
            ends.push(e);
        }
        assert_eq!(ends.len(), 200);
        assert!(ends.iter().all(|e| *e < Duration::from_secs(30)));
        let first_half = ends
            .iter()
            .filter(|e| **e < Duration::from_secs(15))
            .count();
        // Uniform: about half close in each half of the period.
        assert!(
            (60..=140).contains(&first_half),
            "{first_half} of 200 in the first half"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn zero_period_closes_at_once() {
        let drain = Drain::default();
        drain.start(Duration::ZERO);
        let t = tokio::time::Instant::now();
        drain.turn().await;
        assert_eq!(t.elapsed(), Duration::ZERO);
    }
}
