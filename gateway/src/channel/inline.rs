//! Running a channel's step on the task that started it, when the step
//! does not have to wait.
//!
//! A task costs a spawn, a trip through the scheduler (often a wake-up of
//! the other worker thread) and its teardown: about as much as the rest of
//! a join. Yet the join of a config rule's channel almost never waits (its
//! callbacks are the gateway's own and never block; the lane is free and
//! the topic already subscribed), and neither does its end when the
//! connection closes. So for such channels (`Start::inline`) the step is
//! polled once where it starts, and only a step that must wait is spawned.
//! Library channels always get a task: their callbacks are someone else's
//! code, which must not stall the connection.
//!
//! The first poll uses a no-op waker. A step left pending is spawned and
//! polled again at once with the task's waker, which every future registers
//! anew when polled, so a wake-up that reached the no-op waker meanwhile is
//! not lost: the second poll sees the state it announced.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A channel step: a join, or a worker of its slot.
pub(crate) type Step = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Polls `step` once here; spawns it if it has to wait. A panic ends the
/// step alone, as it would end its task.
pub(crate) fn run_or_spawn(mut step: Step) {
    let mut cx = Context::from_waker(Waker::noop());
    match catch_unwind(AssertUnwindSafe(|| step.as_mut().poll(&mut cx))) {
        Ok(Poll::Ready(())) => {}
        Ok(Poll::Pending) => {
            tokio::spawn(step);
        }
        // Reported by the panic hook, as a panicking task is; the step's
        // own guards (`EndIfUnwinding`) have ended its channel.
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn a_ready_step_runs_here() {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        run_or_spawn(Box::pin(async move { d.store(true, Ordering::SeqCst) }));
        assert!(done.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_waiting_step_finishes_on_a_task() {
        let (tx, rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel();
        run_or_spawn(Box::pin(async move {
            let _ = rx.await;
            let _ = done_tx.send(());
        }));
        // Woken before the spawned task polled again: not lost.
        let _ = tx.send(());
        assert!(done_rx.await.is_ok());
    }

    #[tokio::test]
    async fn a_panicking_step_ends_alone() {
        run_or_spawn(Box::pin(async { panic!("step") }));
    }
}
