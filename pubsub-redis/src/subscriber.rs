//! The actor that owns the subscriber connection: reference counts per topic,
//! batched SUBSCRIBE/UNSUBSCRIBE, linger, keepalive, and reconnect with
//! capped exponential backoff followed by a resubscribe of every live topic.
//! Channels a pod listens on (`RedisBus::listen`) live in the same table,
//! marked direct: never released, and their messages go to `Sink::direct`.
//!
//! On a Redis Cluster the connection is never lost as a whole: a master's
//! channels are lost with it while the others stay subscribed. Lost topics
//! wait in `pending`, and a repair (the slot map read again, masters
//! connected, `pending` subscribed) runs with the same backoff until every
//! master is connected and nothing is pending.

use crate::connection::{Conn, Event, Refused, Target};
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
    /// Wanted topics lost with a cluster master, to subscribe again.
    pending: HashSet<String>,
    /// When the next cluster repair runs, while one is due.
    repair_at: Option<Instant>,
    /// The wait before the next repair, doubled after each that left
    /// something to do.
    repair_delay: Duration,
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
        pending: HashSet::new(),
        repair_at: None,
        repair_delay: Duration::ZERO,
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
                // A cluster's connections keep `connected` themselves.
                if matches!(sub, Conn::Single { .. }) {
                    actor.stats.set_connected(true);
                }
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
        actor.topics.retain(|_, t| !t.unwanted());
        actor.pending.clear();
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
            let (wait, timeout, stats) = (delay, self.config.timeout, self.stats.clone());
            let attempt = async move {
                tokio::time::sleep(wait).await;
                target.connect(timeout, &stats).await
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

    /// Subscribes `topics`; returns those a cluster refused (their master
    /// is down or their slot is moving) with the last reason. `Err` when
    /// the connection is lost (single Redis).
    async fn subscribe(&mut self, sub: &mut Conn, topics: &[String]) -> Result<Refused, Error> {
        let mut refused = Refused::default();
        for chunk in topics.chunks(BATCH) {
            let channels: Vec<String> = chunk.iter().map(|t| self.channel(t)).collect();
            let r = sub.subscribe(&channels, self.config.timeout).await?;
            let not: HashSet<&str> = r.channels.iter().map(String::as_str).collect();
            for (t, c) in chunk.iter().zip(&channels) {
                if not.contains(c.as_str()) {
                    refused.channels.push(t.clone());
                } else if let Some(state) = self.topics.get_mut(t) {
                    if !state.subscribed {
                        state.subscribed = true;
                        self.subscribed += 1;
                    }
                }
            }
            refused.error = r.error.or(refused.error);
        }
        self.count_subscriptions();
        Ok(refused)
    }

    fn count_subscriptions(&self) {
        self.stats
            .subscriptions
            .store(self.subscribed as u64, Ordering::Relaxed);
    }

    /// Subscribes every live topic on a new connection; on a cluster, those
    /// of masters that are down wait for a repair.
    async fn resubscribe(&mut self, sub: &mut Conn) -> Result<(), Error> {
        let live: Vec<String> = self.topics.keys().cloned().collect();
        let refused = self.subscribe(sub, &live).await?;
        if !refused.channels.is_empty() {
            tracing::warn!(
                topics = refused.channels.len(),
                error = %refused.error.as_ref().map_or(String::new(), ToString::to_string),
                "redis cluster: some topics' masters are down; they are subscribed once a master serves them"
            );
        }
        self.pending.extend(refused.channels);
        Ok(())
    }

    /// Topics lost with a cluster master: no longer subscribed, they wait
    /// for a repair.
    fn lost(&mut self, channels: Vec<String>) {
        let mut count = 0;
        for channel in channels {
            let Some(topic) = channel.strip_prefix(self.config.prefix.as_str()) else {
                continue;
            };
            if let Some(t) = self.topics.get_mut(topic) {
                if t.subscribed {
                    t.subscribed = false;
                    self.subscribed -= 1;
                    count += 1;
                    self.pending.insert(topic.to_owned());
                }
            }
        }
        self.count_subscriptions();
        tracing::warn!(
            topics = count,
            "redis cluster master lost; its topics receive nothing until a master serves them"
        );
    }

    /// Reads the cluster's slot map again, connects to its masters and
    /// subscribes the pending topics that are still wanted.
    async fn repair(&mut self, sub: &mut Conn) -> Result<(), Error> {
        self.repair_at = None;
        sub.repair().await;
        let pending: Vec<String> = std::mem::take(&mut self.pending)
            .into_iter()
            .filter(|t| self.topics.get(t).is_some_and(|t| !t.subscribed))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let refused = self.subscribe(sub, &pending).await?;
        let done = pending.len() - refused.channels.len();
        if done > 0 {
            tracing::info!(
                topics = done,
                left = refused.channels.len(),
                "redis cluster: lost topics subscribed again"
            );
        }
        self.pending.extend(refused.channels);
        Ok(())
    }

    /// Plans the next repair while one is due (backoff doubling up to
    /// `max_backoff`); none while every master is connected and nothing is
    /// pending.
    fn plan_repair(&mut self, sub: &Conn) {
        if sub.needs_repair() || !self.pending.is_empty() {
            if self.repair_at.is_none() {
                self.repair_delay = next_delay(self.repair_delay, self.config.max_backoff);
                self.repair_at = Some(Instant::now() + self.repair_delay);
            }
        } else {
            self.repair_at = None;
            self.repair_delay = Duration::ZERO;
        }
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
            self.plan_repair(sub);
            let next_linger = self.lingering.peek().map(|Reverse((at, _))| *at);
            tokio::select! {
                msg = sub.next() => match msg {
                    Some(Event::Message(channel, payload)) => self.received(&channel, payload),
                    Some(Event::Unsubscribed(channel)) => self.unsubscribed(sub, &channel).await?,
                    Some(Event::Lost(channels)) => self.lost(channels),
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
                _ = sleep_until(self.repair_at) => self.repair(sub).await?,
                _ = keepalive.tick() => sub.ping(self.config.timeout).await?,
            }
        }
    }

    /// Applies a batch of commands with at most one SUBSCRIBE round trip.
    async fn apply(&mut self, sub: &mut Conn, cmds: Vec<Command>) -> Result<(), Error> {
        // (topic, direct, already direct before this batch, waiter)
        let mut waiters: Vec<(String, bool, bool, Waiter)> = Vec::new();
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
            let was_direct = t.direct;
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
                waiters.push((topic, direct, was_direct, tx));
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let (refused, error, result) = match self.subscribe(sub, &wanted).await {
            Ok(r) => {
                let reason = r.error.map_or_else(
                    || "redis refused the subscription".to_owned(),
                    |e| e.to_string(),
                );
                (r.channels.into_iter().collect(), reason, Ok(()))
            }
            Err(e) => (wanted.into_iter().collect(), e.to_string(), Err(e)),
        };
        let refused: HashSet<String> = refused;
        for (topic, direct, was_direct, tx) in waiters {
            if refused.contains(&topic) {
                let _ = tx.send(Err(Error::Unavailable(error.clone())));
                self.refused(&topic, direct, was_direct);
            } else {
                self.confirm(&topic, direct, tx);
            }
        }
        result
    }

    /// A join that was refused: forget its reference (or its listen), and
    /// the topic once nothing holds it. One still held (lost with a cluster
    /// master, joined again while its master is down) stays pending.
    fn refused(&mut self, topic: &str, direct: bool, was_direct: bool) {
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        if direct {
            t.direct = was_direct;
        } else {
            t.refs = t.refs.saturating_sub(1);
        }
        if t.unwanted() && !t.subscribed {
            self.topics.remove(topic);
            self.pending.remove(topic);
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
            sub.unsubscribe(&channels, self.config.timeout).await?;
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
    /// the topic is wanted, at the slot's new owner (the slot map is read
    /// again first); if that fails, the topic waits for a repair.
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
        let refused = self.subscribe(sub, &[topic.to_owned()]).await?;
        self.pending.extend(refused.channels);
        Ok(())
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
