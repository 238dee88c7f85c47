//! Bounded waiting: the time limits the tests share, and polling an
//! observable value until it holds. A sleep appears only as the interval of
//! a loop bounded by a deadline, never to let something happen.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// How long one expected event may take: a frame, an HTTP answer, a reply
/// from Redis.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How long a process may take to answer after it was started, or a Redis
/// Cluster to form.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long state that follows an event may take to settle: a Redis
/// subscription (`PUBSUB NUMSUB`), a resubscribe, a metric.
pub const SETTLE: Duration = Duration::from_secs(20);

/// Interval of polling loops.
pub const POLL: Duration = Duration::from_millis(20);

/// Calls `f` every [`POLL`] until it returns `Ok`, for at most `within`; on
/// timeout panics with `what` and the last `Err` (what was observed).
pub async fn until<T, E, F, Fut>(what: &str, within: Duration, f: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    until_every(what, within, POLL, f).await
}

/// [`until`], calling `f` every `interval` (for costly observations).
pub async fn until_every<T, E, F, Fut>(
    what: &str,
    within: Duration,
    interval: Duration,
    mut f: F,
) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}; last seen: {last:?}"
            ),
        }
        tokio::time::sleep(interval).await;
    }
}

/// Polls `cond` until it holds, for at most `within`.
pub async fn until_true(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    until(what, within, || {
        let held = cond();
        async move { held.then_some(()).ok_or("false") }
    })
    .await;
}
