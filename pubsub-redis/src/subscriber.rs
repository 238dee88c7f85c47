//! The actor that owns the subscriber connection: reference counts per topic,
//! batched SUBSCRIBE/UNSUBSCRIBE, linger, keepalive, and reconnect with
//! capped exponential backoff followed by a resubscribe of every live topic.
//! Channels a pod listens on (`RedisBus::listen`) live in the same table,
//! marked direct: never released, and their messages go to `Sink::direct`.

use crate::connection::{Conn, Event, Target};
use crate::{Command, Config, Envelope, Error, Sink, Stats};
use bytes::Bytes;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Where a subscriber waits for Redis to confirm.
type Waiter = oneshot::Sender<Result<(), Error>>;

/// Channels per SUBSCRIBE/UNSUBSCRIBE command.
const BATCH: usize = 512;
/// How often the connection is checked with PING. A partition that drops
/// packets without resetting the connection is noticed only by this, so it
/// bounds how long a pod believes it is connected while receiving nothing
/// (this plus the PING timeout); a PING every 3 s costs Redis nothing.
const KEEPALIVE: Duration = Duration::from_secs(3);
/// At most one malformed-envelope log line per this interval.
const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct Topic {
    refs: usize,
    subscribed: bool,
    /// Set when `refs` dropped to zero: unsubscribe at this instant.
    linger: Option<Instant>,
    /// This pod listens on the channel: it stays subscribed whatever `refs`
    /// says, and its messages are not a topic's.
    direct: bool,
}

impl Topic {
    /// Nothing holds the subscription any more.
    fn unwanted(&self) -> bool {
        self.refs == 0 && !self.direct
    }
}

struct Actor {
    config: Config,
    sink: Arc<dyn Sink>,
    stats: Arc<Stats>,
    topics: HashMap<String, Topic>,
    /// How many of `topics` Redis has confirmed, kept as they change: with
    /// hundreds of thousands of topics, counting them per command batch
    /// made every join wait behind a scan of all of them.
    subscribed: usize,
    /// When lingering topics are due, soonest first, for the same reason.
    /// Entries are not removed when a topic is wanted again: `expire` skips
    /// those whose topic no longer lingers until that instant.
    lingering: BinaryHeap<Reverse<(Instant, String)>>,
    malformed_since_log: u64,
    last_log: Option<Instant>,
}

pub(crate) async fn run(
    target: Target,
    config: Config,
    sink: Arc<dyn Sink>,
    mut rx: mpsc::UnboundedReceiver<Command>,
    stats: Arc<Stats>,
) {
    let mut actor = Actor {
        config,
        sink,
        stats,
        topics: HashMap::new(),
        subscribed: 0,
        lingering: BinaryHeap::new(),
        malformed_since_log: 0,
        last_log: None,
    };
    let mut delay = Duration::ZERO;
    let mut connected_before = false;
    loop {
        let Some(mut sub) = actor.connect(&target, delay, &mut rx).await else {
            return; // the bus was dropped
        };
        if connected_before {
            actor.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        match actor.resubscribe(&mut sub).await {
            Ok(()) => {
                connected_before = true;
                delay = Duration::ZERO;
                actor.stats.set_connected(true);
                tracing::info!(topics = actor.topics.len(), "redis subscriber connected");
                match actor.serve(&mut sub, &mut rx).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "redis subscriber connection lost; reconnecting");
                        actor.stats.health.failed("subscriber", &e);
                    }
                }
            }
            Err(e) => actor.stats.health.failed("resubscribe", &e),
        }
        actor.stats.set_connected(false);
        for t in actor.topics.values_mut() {
            t.subscribed = false;
        }
        actor.subscribed = 0;
        actor.count_subscriptions();
        actor.topics.retain(|_, t| t.refs > 0);
        delay = next_delay(delay, actor.config.max_backoff);
    }
}

fn next_delay(delay: Duration, max: Duration) -> Duration {
    (delay * 2).clamp(Duration::from_millis(100), max)
}

impl Actor {
    /// Connects after `delay`, retrying with backoff; while down, joins are
    /// refused at once instead of hanging.
    async fn connect(
        &mut self,
        target: &Target,
        mut delay: Duration,
        rx: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Option<Conn> {
        loop {
            let (wait, timeout) = (delay, self.config.timeout);
            let attempt = async move {
                tokio::time::sleep(wait).await;
                target.connect(timeout).await
            };
            tokio::pin!(attempt);
            let result = loop {
                tokio::select! {
                    r = &mut attempt => break r,
                    cmd = rx.recv() => match cmd {
                        None => return None,
                        Some(cmd) => self.while_down(cmd),
                    },
                }
            };
            match result {
                Ok(conn) => return Some(conn),
                Err(e) => self.stats.health.failed("subscriber", &e),
            }
            delay = next_delay(delay, self.config.max_backoff);
        }
    }

    fn while_down(&mut self, cmd: Command) {
        match cmd {
            Command::Subscribe(_, tx) | Command::Listen(_, tx) => {
                let _ = tx.send(Err(Error::Unavailable("redis is unreachable".into())));
            }
            Command::Unsubscribe(topic) => self.release(&topic),
        }
    }

    fn release(&mut self, topic: &str) {
        if let Some(t) = self.topics.get_mut(topic) {
            t.refs = t.refs.saturating_sub(1);
            if t.unwanted() {
                if t.subscribed {
                    let at = Instant::now() + self.config.linger;
                    t.linger = Some(at);
                    self.lingering.push(Reverse((at, topic.to_owned())));
                } else {
                    self.topics.remove(topic);
                }
            }
        }
    }

    fn channel(&self, topic: &str) -> String {
        format!("{}{}", self.config.prefix, topic)
    }

    async fn subscribe(&mut self, sub: &mut Conn, topics: &[String]) -> Result<(), Error> {
        for chunk in topics.chunks(BATCH) {
            let channels: Vec<String> = chunk.iter().map(|t| self.channel(t)).collect();
            tokio::time::timeout(self.config.timeout, sub.subscribe(&channels))
                .await
                .map_err(|_| Error::Unavailable("SUBSCRIBE not confirmed in time".into()))??;
            for t in chunk {
                if let Some(state) = self.topics.get_mut(t) {
                    if !state.subscribed {
                        state.subscribed = true;
                        self.subscribed += 1;
                    }
                }
            }
        }
        self.count_subscriptions();
        Ok(())
    }

    fn count_subscriptions(&self) {
        self.stats
            .subscriptions
            .store(self.subscribed as u64, Ordering::Relaxed);
    }

    async fn resubscribe(&mut self, sub: &mut Conn) -> Result<(), Error> {
        let live: Vec<String> = self.topics.keys().cloned().collect();
        self.subscribe(sub, &live).await
    }

    /// Runs while connected. `Ok` only when the bus is dropped.
    async fn serve(
        &mut self,
        sub: &mut Conn,
        rx: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Result<(), Error> {
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        loop {
            let next_linger = self.lingering.peek().map(|Reverse((at, _))| *at);
            tokio::select! {
                msg = sub.next() => match msg {
                    Some(Event::Message(channel, payload)) => self.received(&channel, payload),
                    Some(Event::Unsubscribed(channel)) => self.unsubscribed(sub, &channel).await?,
                    None => return Err(Error::Unavailable("subscriber connection closed".into())),
                },
                cmd = rx.recv() => match cmd {
                    None => return Ok(()),
                    Some(cmd) => {
                        let mut cmds = vec![cmd];
                        while let Ok(more) = rx.try_recv() {
                            cmds.push(more);
                        }
                        self.apply(sub, cmds).await?;
                    }
                },
                _ = sleep_until(next_linger) => self.expire(sub).await?,
                _ = keepalive.tick() => {
                    tokio::time::timeout(self.config.timeout, sub.ping())
                        .await
                        .map_err(|_| Error::Unavailable("PING not answered in time".into()))??;
                }
            }
        }
    }

    /// Applies a batch of commands with at most one SUBSCRIBE round trip.
    async fn apply(&mut self, sub: &mut Conn, cmds: Vec<Command>) -> Result<(), Error> {
        let mut waiters: Vec<(String, bool, Waiter)> = Vec::new();
        let mut wanted: Vec<String> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for cmd in cmds {
            let (topic, tx, direct) = match cmd {
                Command::Subscribe(topic, tx) => (topic, tx, false),
                Command::Listen(topic, tx) => (topic, tx, true),
                Command::Unsubscribe(topic) => {
                    self.release(&topic);
                    continue;
                }
            };
            let t = self.topics.entry(topic.clone()).or_default();
            if direct {
                t.direct = true;
            } else {
                t.refs += 1;
            }
            t.linger = None;
            if t.subscribed {
                self.confirm(&topic, direct, tx);
            } else {
                if seen.insert(topic.clone()) {
                    wanted.push(topic.clone());
                }
                waiters.push((topic, direct, tx));
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        match self.subscribe(sub, &wanted).await {
            Ok(()) => {
                for (topic, direct, tx) in waiters {
                    self.confirm(&topic, direct, tx);
                }
                Ok(())
            }
            Err(e) => {
                for (_, _, tx) in waiters {
                    let _ = tx.send(Err(Error::Unavailable(e.to_string())));
                }
                // Those joins failed: forget their references.
                for topic in &wanted {
                    if let Some(t) = self.topics.get(topic) {
                        if !t.subscribed {
                            self.topics.remove(topic);
                        }
                    }
                }
                Err(e)
            }
        }
    }

    /// Tells a subscriber it is subscribed. If it stopped waiting (its future
    /// was dropped) it will never unsubscribe, so drop its reference now. A
    /// listener holds no reference: its channel stays either way.
    fn confirm(&mut self, topic: &str, direct: bool, tx: Waiter) {
        if tx.send(Ok(())).is_err() && !direct {
            self.release(topic);
        }
    }

    /// Unsubscribes topics whose linger has passed.
    async fn expire(&mut self, sub: &mut Conn) -> Result<(), Error> {
        let now = Instant::now();
        let mut expired: Vec<String> = Vec::new();
        while let Some(Reverse((at, _))) = self.lingering.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, topic))) = self.lingering.pop() else {
                break;
            };
            // Still lingering until this instant (not wanted again since).
            if self
                .topics
                .get(&topic)
                .is_some_and(|t| t.unwanted() && t.linger == Some(at))
            {
                expired.push(topic);
            }
        }
        for chunk in expired.chunks(BATCH) {
            let channels: Vec<String> = chunk.iter().map(|t| self.channel(t)).collect();
            tokio::time::timeout(self.config.timeout, sub.unsubscribe(&channels))
                .await
                .map_err(|_| Error::Unavailable("UNSUBSCRIBE not confirmed in time".into()))??;
            for t in chunk {
                if self.topics.remove(t).is_some_and(|t| t.subscribed) {
                    self.subscribed -= 1;
                }
            }
        }
        self.count_subscriptions();
        Ok(())
    }

    /// Redis no longer sends `channel` here: a cluster node unsubscribes a
    /// shard channel whose slot moved to another shard. Subscribe again while
    /// the topic is wanted; the cluster connection follows the slot to its new
    /// owner. Confirmations of our own SUNSUBSCRIBE come here too: their topic
    /// is gone by then, or was joined again, and then this only repeats an
    /// SSUBSCRIBE, which is harmless.
    async fn unsubscribed(&mut self, sub: &mut Conn, channel: &str) -> Result<(), Error> {
        let Some(topic) = channel.strip_prefix(self.config.prefix.as_str()) else {
            return Ok(());
        };
        match self.topics.get_mut(topic) {
            Some(t) if t.subscribed => {
                t.subscribed = false;
                self.subscribed -= 1;
            }
            _ => return Ok(()),
        }
        tracing::info!(channel, "redis dropped a subscription; subscribing again");
        self.subscribe(sub, &[topic.to_owned()]).await
    }

    fn received(&mut self, channel: &str, payload: Vec<u8>) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let Some(topic) = channel.strip_prefix(self.config.prefix.as_str()) else {
            return;
        };
        if self.topics.get(topic).is_some_and(|t| t.direct) {
            self.sink.direct(topic, Bytes::from(payload));
            return;
        }
        match Envelope::decode(Bytes::from(payload)) {
            Ok(envelope) => self.sink.deliver(topic, envelope),
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                self.malformed_since_log += 1;
                let now = Instant::now();
                if self
                    .last_log
                    .is_none_or(|t| now.duration_since(t) >= LOG_EVERY)
                {
                    tracing::warn!(
                        channel,
                        error = %e,
                        dropped = self.malformed_since_log,
                        "dropping malformed envelopes (expected {{\"event\":string,\"payload\":any}})"
                    );
                    self.last_log = Some(now);
                    self.malformed_since_log = 0;
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
