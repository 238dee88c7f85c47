//! The backend publisher: `PUBLISH` (or `SPUBLISH` on a Redis Cluster)
//! straight to Redis at a fixed rate, round-robin over the topics, each
//! message carrying its topic's next sequence number (loadtest's payload),
//! on a thread of its own so the subscribers' work does not delay it.
//!
//! It keeps going through faults as a real backend would: every PUBLISH has
//! a deadline, a lost connection is dialed again, and slots it fell behind
//! on are skipped rather than sent in a burst. It logs each attempt — when,
//! and what Redis answered — and judges nothing.

use loadtest::conn::payload;
use loadtest::stats::now_ns;
use parking_lot::Mutex;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::time::{sleep_until, Instant};

/// How long one PUBLISH may take before it counts as timed out.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);
/// How long dialing Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// A slot this late is skipped.
const LATE: Duration = Duration::from_millis(100);

/// What Redis answered to one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Outcome {
    Pending,
    /// Published; Redis counted this many receiving pods (subscriber
    /// connections on the channel).
    Ok(u32),
    /// Refused or not sent (no connection): not published.
    Failed,
    /// No answer in time: Redis may still publish it.
    TimedOut,
}

/// One attempt: message `seq` of its topic.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Entry {
    pub(crate) start_ns: u64,
    pub(crate) end_ns: u64,
    pub(crate) outcome: Outcome,
}

/// Every attempt, per topic, in sequence order (entry `k` is `seq` k).
#[derive(Debug, Default, Clone)]
pub(crate) struct Log {
    pub(crate) topics: Vec<Vec<Entry>>,
    /// Slots skipped because the publisher was late.
    pub(crate) skipped: u64,
}

/// Where to publish.
#[derive(Debug, Clone)]
pub(crate) enum Redis {
    /// One server: PUBLISH.
    Single(String),
    /// Seed node URLs of a cluster: SPUBLISH.
    Cluster(Vec<String>),
}

#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) redis: Redis,
    /// Redis channels, one per topic (`{prefix}{topic}`).
    pub(crate) channels: Vec<String>,
    /// Messages per second over all topics.
    pub(crate) rate: f64,
}

/// The publisher thread.
#[derive(Debug)]
pub(crate) struct Publisher {
    stop: watch::Sender<bool>,
    done: oneshot::Receiver<Log>,
}

impl Publisher {
    pub(crate) fn start(spec: Spec) -> std::io::Result<Publisher> {
        let (stop, stop_rx) = watch::channel(false);
        let (tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("publisher".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                let _ = tx.send(rt.block_on(run(spec, stop_rx)));
            })?;
        Ok(Publisher { stop, done })
    }

    /// Stops publishing; the log once every attempt has its answer.
    pub(crate) async fn stop(self) -> anyhow::Result<Log> {
        self.stop.send_replace(true);
        Ok(self.done.await?)
    }
}

#[derive(Clone)]
enum Conn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

async fn connect(redis: &Redis) -> Option<Conn> {
    let fut = async {
        match redis {
            Redis::Single(url) => {
                let c = redis::Client::open(url.as_str())?;
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(PUBLISH_TIMEOUT));
                Ok::<_, redis::RedisError>(Conn::Single(
                    c.get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
            Redis::Cluster(seeds) => {
                let c = redis::cluster::ClusterClientBuilder::new(seeds.clone())
                    .retries(1)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(PUBLISH_TIMEOUT)
                    .build()?;
                Ok(Conn::Cluster(c.get_async_connection().await?))
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, fut).await.ok()?.ok()
}

async fn publish(conn: &mut Conn, channel: &str, msg: &str) -> redis::RedisResult<u32> {
    match conn {
        Conn::Single(c) => {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(msg)
                .query_async(c)
                .await
        }
        Conn::Cluster(c) => {
            redis::cmd("SPUBLISH")
                .arg(channel)
                .arg(msg)
                .query_async(c)
                .await
        }
    }
}

async fn run(spec: Spec, mut stop: watch::Receiver<bool>) -> Log {
    let nt = spec.channels.len().max(1);
    let log = Arc::new(Mutex::new(Log {
        topics: vec![Vec::new(); nt],
        skipped: 0,
    }));
    let broken = Arc::new(AtomicBool::new(false));
    let mut conn: Option<Conn> = None;
    let mut last_dial: Option<Instant> = None;
    let mut inflight = tokio::task::JoinSet::new();
    let start = Instant::now();
    let mut slot = 0u64;
    loop {
        let due = start + Duration::from_secs_f64(slot as f64 / spec.rate.max(0.001));
        tokio::select! {
            _ = sleep_until(due) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
        slot += 1;
        if due.elapsed() > LATE {
            log.lock().skipped += 1;
            continue;
        }
        if broken.swap(false, Relaxed) {
            conn = None;
        }
        if conn.is_none() && last_dial.is_none_or(|t| t.elapsed() > Duration::from_millis(200)) {
            last_dial = Some(Instant::now());
            conn = connect(&spec.redis).await;
        }
        let t = ((slot - 1) % nt as u64) as usize;
        let start_ns = now_ns();
        let seq = {
            let mut l = log.lock();
            l.topics[t].push(Entry {
                start_ns,
                end_ns: start_ns,
                outcome: Outcome::Failed,
            });
            l.topics[t].len() - 1
        };
        let Some(mut c) = conn.clone() else {
            continue; // logged as Failed: nothing was sent
        };
        let msg = format!(
            r#"{{"event":"new_msg","payload":{}}}"#,
            payload(seq as u64, t as u32, "")
        );
        let channel = spec.channels[t].clone();
        let (log, broken) = (log.clone(), broken.clone());
        log.lock().topics[t][seq].outcome = Outcome::Pending;
        inflight.spawn(async move {
            let r = tokio::time::timeout(PUBLISH_TIMEOUT, publish(&mut c, &channel, &msg)).await;
            let outcome = match r {
                Ok(Ok(n)) => Outcome::Ok(n),
                Ok(Err(e)) if e.is_timeout() => Outcome::TimedOut,
                Ok(Err(e)) => {
                    if e.is_connection_dropped() || e.is_io_error() || e.is_unrecoverable_error() {
                        broken.store(true, Relaxed);
                    }
                    Outcome::Failed
                }
                Err(_) => Outcome::TimedOut,
            };
            let mut l = log.lock();
            let e = &mut l.topics[t][seq];
            e.end_ns = now_ns();
            e.outcome = outcome;
        });
        while inflight.try_join_next().is_some() {}
    }
    // Every attempt ends within its timeout.
    while inflight.join_next().await.is_some() {}
    let l = log.lock().clone();
    l
}
