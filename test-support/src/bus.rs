//! `TestBus`: a `pubsub_redis::RedisBus` on a Redis with a prefix of its
//! own, whose sink hands every delivery to the test.

use crate::temp::prefix;
use crate::wait::{until, SETTLE, TIMEOUT};
use pubsub_redis::{Config, Envelope, RedisBus, Sink, Stats};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Hands every delivery to the test.
#[derive(Debug)]
pub struct Collect(pub mpsc::UnboundedSender<(String, Envelope)>);

impl Sink for Collect {
    fn deliver(&self, topic: &str, envelope: Envelope) {
        let _ = self.0.send((topic.to_owned(), envelope));
    }
}

/// A bus and what it delivers.
#[derive(Debug)]
pub struct TestBus {
    pub bus: RedisBus,
    pub rx: mpsc::UnboundedReceiver<(String, Envelope)>,
    pub prefix: String,
}

impl TestBus {
    /// A bus on `url` with a prefix of its own.
    pub fn start(url: &str, linger: Duration) -> TestBus {
        TestBus::with_prefix(url, &prefix("b"), linger)
    }

    /// A bus on `url` with `prefix` (to share it with another bus).
    pub fn with_prefix(url: &str, prefix: &str, linger: Duration) -> TestBus {
        let mut config = Config::new(url);
        config.prefix = prefix.to_owned();
        config.linger = linger;
        let (tx, rx) = mpsc::unbounded_channel();
        let bus = RedisBus::start(config, Arc::new(Collect(tx))).unwrap();
        TestBus {
            bus,
            rx,
            prefix: prefix.to_owned(),
        }
    }

    /// The Redis channel of `topic`.
    pub fn channel(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// Subscribes, retrying while the bus is still connecting (bounded).
    pub async fn subscribe_eventually(&self, topic: &str) {
        until(topic, SETTLE, || async {
            match self.bus.subscribe(topic).await {
                Ok(()) => Ok(()),
                Err(e) if e.is_connection() => Err(e.to_string()),
                Err(e) => panic!("{topic}: {e}"),
            }
        })
        .await;
    }

    /// The next delivery.
    pub async fn next(&mut self) -> (String, Envelope) {
        tokio::time::timeout(TIMEOUT, self.rx.recv())
            .await
            .expect("no delivery in time")
            .expect("bus stopped")
    }

    /// The next delivery as (topic, event, payload text).
    pub async fn next_text(&mut self) -> (String, String, String) {
        let (topic, e) = self.next().await;
        let payload = String::from_utf8(e.payload.to_vec()).unwrap();
        (topic, e.event, payload)
    }

    /// One of the bus's counters.
    pub fn stat(&self, f: impl Fn(&Stats) -> &AtomicU64) -> u64 {
        f(self.bus.stats()).load(Ordering::Relaxed)
    }
}
