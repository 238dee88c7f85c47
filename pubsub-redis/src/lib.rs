//! Redis pub/sub for stateless gateway pods.
//!
//! A pod holds one dedicated subscriber connection. Topics are reference
//! counted: the first local subscriber SUBSCRIBEs `{prefix}{topic}`, the last
//! one's departure UNSUBSCRIBEs after a short linger (so leave-and-rejoin does
//! not flap), and commands queued together go to Redis as one batch.
//! [`RedisBus::subscribe`] resolves only once Redis has confirmed the
//! subscription, so nothing published after it returns is missed. When the
//! connection drops, the bus reconnects with capped exponential backoff and
//! resubscribes every live topic. Publishing uses a few multiplexed
//! connections, taken in turn.
//!
//! This crate knows nothing of the gateway: it moves envelopes between
//! topics and a [`Sink`].
//!
//! # Layout
//! - [`envelope`]: the JSON envelope on the wire, versioned, with origin.
//! - [`history`]: per-topic message history, kept and published by a
//!   Redis Function library.
//! - [`presence`]: presence entries in Redis hashes, pod liveness, reaping.
//! - `source`: where connections go (the URL's server or Sentinel's
//!   master) and how (TLS, AUTH).
//! - [`health`]: why Redis cannot be used: causes, counts, logs.
//! - `dedicated`: a connection of a store's own (presence, lifecycle), and
//!   the publishing connections.
//! - `store_conn`: a store's own connection on a single server or a cluster
//!   (presence).
//! - `stream`: appending to Redis streams (client pushes for backends).
//! - [`lifecycle`]: lifecycle events in streams, dead pods' connections.
//! - [`load`]: the fleet's connection counts, for rebalancing.
//! - `subscriber`: the subscriber connection's actor (refcounts, batching,
//!   linger, reconnect).
//! - `connection`, `cluster`: the subscriber connection to a single Redis,
//!   or one per master of a Redis Cluster (channels lost and retried per
//!   master).

mod cluster;
mod connection;
mod dedicated;
pub mod envelope;
pub mod health;
pub mod history;
pub mod info;
pub mod lifecycle;
pub mod load;
pub mod presence;
mod source;
mod store_conn;
mod stream;
mod subscriber;

pub use envelope::{Envelope, EnvelopeError, Origin};
pub use lifecycle::LifecycleStore;
pub use load::PodLoad;
pub use presence::PresenceStore;
pub use source::{hide_password, Sentinel, Tls};

use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Errors of the bus.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis cannot be reached or the subscriber connection is down.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis answered with an error.
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// The URL or settings are wrong.
    #[error("invalid redis config: {0}")]
    Config(String),
}

impl Error {
    /// The same failure, saying where it happened.
    pub(crate) fn context(self, at: &str) -> Error {
        match self {
            Error::Config(m) => Error::Config(format!("{at}: {m}")),
            e => Error::Unavailable(format!(
                "{at}: {}",
                e.to_string().trim_start_matches("redis unavailable: ")
            )),
        }
    }

    /// True when the failure is about reaching Redis (worth retrying later).
    pub fn is_connection(&self) -> bool {
        match self {
            Error::Unavailable(_) => true,
            Error::Redis(e) => e.is_io_error() || e.is_connection_dropped() || e.is_timeout(),
            Error::Config(_) => false,
        }
    }
}

/// Where received messages go.
pub trait Sink: Send + Sync + 'static {
    /// A well-formed envelope published to `topic`, which has subscribers.
    fn deliver(&self, topic: &str, envelope: Envelope);

    /// A message published to `name`, a channel this pod
    /// [listens](RedisBus::listen) on, as published: not decoded as an
    /// envelope, since what travels there is the listener's own format
    /// (backends' answers to forwarded pushes are plain JSON). Never also
    /// given to [`deliver`](Sink::deliver), even if a topic has the same
    /// name. The default drops it: a sink that never listens gets none.
    fn direct(&self, name: &str, body: Bytes) {
        let _ = (name, body);
    }
}

/// Settings of the bus.
#[derive(Debug, Clone)]
pub struct Config {
    /// `redis://host:port/db`; for a cluster, one or more seed nodes
    /// separated by commas.
    pub url: String,
    /// Use sharded pub/sub (SSUBSCRIBE/SPUBLISH) on a Redis Cluster.
    pub cluster: bool,
    /// Prefix of every channel name. Default `phx:`.
    pub prefix: String,
    /// How long a topic stays subscribed after its last local subscriber left.
    pub linger: Duration,
    /// Longest wait between reconnect attempts.
    pub max_backoff: Duration,
    /// How long to wait for Redis to confirm a SUBSCRIBE or a connect.
    pub timeout: Duration,
    /// Publishing connections (multiplexed: each carries many commands at
    /// once; several keep a large reply from holding up the rest).
    pub pool_size: usize,
    /// TLS material for `rediss://`.
    pub tls: Tls,
    /// Find the master through Sentinel instead of the URL's host.
    pub sentinel: Option<Sentinel>,
}

impl Config {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Config {
            url: url.into(),
            cluster: false,
            prefix: "phx:".into(),
            linger: Duration::from_secs(2),
            // Messages published between Redis' return and the resubscribe
            // are lost, so the wait after an outage is kept short; one
            // connect attempt a second per pod costs Redis nothing.
            max_backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            pool_size: 4,
            tls: Tls::default(),
            sentinel: None,
        }
    }
}

/// Counters for metrics and health.
#[derive(Debug, Default)]
pub struct Stats {
    /// Whether the subscriber connection is up; on a cluster, whether at
    /// least one master's is (the others are counted in `shards_down`).
    pub connected: AtomicBool,
    /// When `connected` last changed, milliseconds after the process's
    /// first bus started ([`Bus::down_for`] reads it).
    pub changed_at_ms: AtomicU64,
    /// Reconnects of the subscriber connection since start.
    pub reconnects: AtomicU64,
    /// Channels currently subscribed in Redis.
    pub subscriptions: AtomicU64,
    /// Cluster masters (shards) in the slot map; 0 on a single Redis.
    pub shards: AtomicU64,
    /// Of `shards`, those without a subscriber connection: their channels
    /// receive nothing until one is back (after a failover, their new
    /// master).
    pub shards_down: AtomicU64,
    /// Messages received from Redis.
    pub received: AtomicU64,
    /// Messages dropped because their envelope was malformed.
    pub malformed: AtomicU64,
    /// Messages published.
    pub published: AtomicU64,
    /// Wakes the history library's keeper on every (re)connect.
    came_up: tokio::sync::Notify,
    /// Failures of every connection of the bus.
    pub(crate) health: health::Health,
}

pub(crate) enum Command {
    Subscribe(String, oneshot::Sender<Result<(), Error>>),
    Unsubscribe(String),
    Listen(String, oneshot::Sender<Result<(), Error>>),
}

/// How messages are published.
#[derive(Clone)]
enum Publisher {
    /// PUBLISH over a few multiplexed connections, taken in turn.
    Pool(Arc<[dedicated::Dedicated]>, Arc<AtomicU64>),
    /// SPUBLISH over a multiplexed cluster connection, opened on first use.
    Cluster(Arc<ClusterPublisher>),
}

struct ClusterPublisher {
    client: redis::cluster::ClusterClient,
    conn: tokio::sync::OnceCell<redis::cluster_async::ClusterConnection>,
    timeout: Duration,
}

/// A pod's connection to Redis pub/sub.
#[derive(Clone)]
pub struct RedisBus {
    commands: mpsc::UnboundedSender<Command>,
    publisher: Publisher,
    prefix: Arc<str>,
    stats: Arc<Stats>,
    /// For connections of their own (presence, lifecycle).
    source: source::Source,
    timeout: Duration,
    /// Whether the history library's keeper runs.
    history_kept: Arc<AtomicBool>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("prefix", &self.prefix)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// Starts the subscriber actor and the publish pool. Does not wait for
    /// Redis: the subscriber connects (and reconnects) in the background.
    ///
    /// # Errors
    /// A malformed URL or pool settings.
    pub fn start(config: Config, sink: Arc<dyn Sink>) -> Result<Self, Error> {
        let source = source::Source::new(&config)?;
        let stats = Arc::new(Stats::default());
        stats.health.set_address(source.address());
        let target = connection::Target::new(&source, &config)?;
        let publisher = if config.cluster {
            let client = source
                .cluster(&config.url)
                .build()
                .map_err(|e| Error::Config(e.to_string()))?;
            Publisher::Cluster(Arc::new(ClusterPublisher {
                client,
                conn: tokio::sync::OnceCell::new(),
                timeout: config.timeout,
            }))
        } else {
            let link = dedicated::Link::new(&source, &stats);
            let conns: Vec<_> = (0..config.pool_size.max(1))
                .map(|_| dedicated::Dedicated::new(&link, config.timeout, "publish"))
                .collect();
            Publisher::Pool(conns.into(), Arc::default())
        };
        // Down since now, until the first connect.
        stats.set_connected(false);
        let (tx, rx) = mpsc::unbounded_channel();
        let prefix: Arc<str> = Arc::from(config.prefix.as_str());
        let timeout = config.timeout;
        tokio::spawn(subscriber::run(target, config, sink, rx, stats.clone()));
        Ok(RedisBus {
            commands: tx,
            publisher,
            prefix,
            stats,
            source,
            timeout,
            history_kept: Arc::default(),
        })
    }

    /// Adds one local subscriber to `topic`; resolves when Redis has
    /// confirmed the subscription (at once if it already had).
    ///
    /// # Errors
    /// When Redis is unreachable or does not confirm in time. No reference is
    /// kept in that case.
    pub async fn subscribe(&self, topic: &str) -> Result<(), Error> {
        self.confirmed(|tx| Command::Subscribe(topic.to_owned(), tx))
            .await
    }

    /// Sends a command to the subscriber actor and waits for Redis to
    /// confirm it.
    async fn confirmed(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<(), Error>>) -> Command,
    ) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(command(tx))
            .map_err(|_| Error::Unavailable("bus stopped".into()))?;
        rx.await
            .map_err(|_| Error::Unavailable("bus stopped".into()))?
    }

    /// Removes one local subscriber of `topic`.
    pub fn unsubscribe(&self, topic: &str) {
        let _ = self.commands.send(Command::Unsubscribe(topic.to_owned()));
    }

    /// Subscribes `{prefix}{name}` for messages addressed to this pod, apart
    /// from topics: they go to [`Sink::direct`], never to subscribers of a
    /// topic of the same name, and the subscription is kept (across
    /// reconnects) for as long as the bus runs. Resolves once Redis confirmed.
    ///
    /// # Errors
    /// When Redis is unreachable or does not confirm in time; nothing is
    /// kept then, so calling again retries.
    pub async fn listen(&self, name: &str) -> Result<(), Error> {
        self.confirmed(|tx| Command::Listen(name.to_owned(), tx))
            .await
    }

    /// Publishes an encoded envelope to `topic` on every pod. Returns how
    /// many subscriber connections Redis delivered it to (with `cluster`,
    /// those of the shard that owns the channel): 0 tells a sender that no
    /// pod listens, which the long-poll relay reads as "that pod is gone".
    ///
    /// # Errors
    /// When Redis is unreachable or refuses the command.
    pub async fn publish(&self, topic: &str, envelope: Bytes) -> Result<u64, Error> {
        let command = if matches!(self.publisher, Publisher::Cluster(_)) {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let mut cmd = redis::cmd(command);
        cmd.arg(self.channel(topic)).arg(envelope.as_ref());
        let receivers: i64 = self.query(&cmd).await?;
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        Ok(u64::try_from(receivers).unwrap_or(0))
    }

    /// `topic`'s Redis channel.
    fn channel(&self, topic: &str) -> String {
        format!("{}{}", self.prefix, topic)
    }

    /// The Redis name of the channel or key `name`: the prefix and `name`,
    /// as backends must write it.
    pub fn channel_name(&self, name: &str) -> String {
        self.channel(name)
    }

    /// Runs one command on a publishing connection.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Error> {
        match &self.publisher {
            Publisher::Pool(conns, next) => {
                let i = next.fetch_add(1, Ordering::Relaxed) % conns.len() as u64;
                conns[usize::try_from(i).unwrap_or(0)].query(cmd).await
            }
            Publisher::Cluster(p) => {
                let conn = p
                    .conn
                    .get_or_try_init(|| async {
                        tokio::time::timeout(p.timeout, p.client.get_async_connection())
                            .await
                            .map_err(|_| Error::Unavailable("cluster connect timed out".into()))?
                            .map_err(Error::from)
                    })
                    .await?;
                Ok(cmd.query_async::<T>(&mut conn.clone()).await?)
            }
        }
    }

    /// Loads the history functions ([`history::library`]) now and after
    /// every reconnect of the subscriber connection, so that backends can
    /// `FCALL` them even after Redis lost them in a restart. Called once, by
    /// a pod whose topics keep history; later calls do nothing.
    pub fn keep_history_library(&self) {
        if self.history_kept.swap(true, Ordering::Relaxed) {
            return;
        }
        let bus = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = bus.load_history_library().await {
                    tracing::warn!(error = %e, "loading the history functions into Redis failed; retrying on the next reconnect or publish");
                }
                bus.stats.came_up.notified().await;
            }
        });
    }

    async fn load_history_library(&self) -> Result<(), Error> {
        let mut cmd = redis::cmd("FUNCTION");
        cmd.arg("LOAD")
            .arg("REPLACE")
            .arg(history::library(matches!(
                self.publisher,
                Publisher::Cluster(_)
            )));
        let _: redis::Value = self.query(&cmd).await?;
        Ok(())
    }

    /// Calls a history function on `topic`'s channel, loading the library
    /// first if Redis lost it.
    async fn fcall(
        &self,
        function: &str,
        topic: &str,
        args: &[&[u8]],
    ) -> Result<redis::Value, Error> {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(function).arg(1).arg(self.channel(topic));
        for a in args {
            cmd.arg(*a);
        }
        match self.query(&cmd).await {
            Err(e) if history::not_loaded(&e) => {
                self.load_history_library().await?;
                self.query(&cmd).await
            }
            r => r,
        }
    }

    /// Keeps an encoded envelope in `topic`'s history and publishes it with
    /// its position, atomically (`gateway_publish`). Returns the position
    /// and whether it was published (false: an idempotency key seen
    /// before, whose first position is returned).
    ///
    /// # Errors
    /// When Redis is unreachable or refuses the message.
    pub async fn publish_kept(
        &self,
        topic: &str,
        envelope: &[u8],
        idempotency_key: Option<&str>,
        size: usize,
        ttl: Duration,
    ) -> Result<(String, bool), Error> {
        let (size, ttl) = (size.to_string(), ttl.as_millis().max(1).to_string());
        let args: [&[u8]; 4] = [
            envelope,
            idempotency_key.unwrap_or("").as_bytes(),
            size.as_bytes(),
            ttl.as_bytes(),
        ];
        let value = self.fcall(history::PUBLISH, topic, &args).await?;
        let answer: (String, i64) = redis::from_redis_value(value).map_err(|e| {
            Error::Unavailable(format!("unexpected answer from gateway_publish: {e}"))
        })?;
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        Ok((answer.0, answer.1 == 1))
    }

    /// Reads `topic`'s history (`gateway_read`), starting it if it has none.
    ///
    /// # Errors
    /// When Redis is unreachable or answers something else.
    pub async fn read_history(
        &self,
        topic: &str,
        mode: history::Mode<'_>,
        max: usize,
        size: usize,
        ttl: Duration,
    ) -> Result<history::Read, Error> {
        let (a, b) = match mode {
            history::Mode::Top => (String::new(), String::new()),
            history::Mode::Since(epoch, offset) => (epoch.to_owned(), offset.to_string()),
            history::Mode::Last(n) => (n.to_string(), String::new()),
        };
        let mode = match mode {
            history::Mode::Top => "top",
            history::Mode::Since(..) => "since",
            history::Mode::Last(_) => "last",
        };
        let (max, size, ttl) = (
            max.to_string(),
            size.to_string(),
            ttl.as_millis().max(1).to_string(),
        );
        let args: [&[u8]; 6] = [
            mode.as_bytes(),
            a.as_bytes(),
            b.as_bytes(),
            max.as_bytes(),
            size.as_bytes(),
            ttl.as_bytes(),
        ];
        history::Read::from_value(self.fcall(history::READ, topic, &args).await?)
    }

    /// The client publishing uses on a Redis Cluster, for stores'
    /// connections of their own (`store_conn`); `None` on a single server.
    pub(crate) fn cluster_client(&self) -> Option<&redis::cluster::ClusterClient> {
        match &self.publisher {
            Publisher::Cluster(p) => Some(&p.client),
            Publisher::Pool(..) => None,
        }
    }

    /// Counters for metrics and health checks.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Where the bus connects, without secrets: for logs and `/readyz`.
    pub fn address(&self) -> &str {
        self.source.address()
    }

    /// Whether the subscriber connection is up.
    pub fn is_connected(&self) -> bool {
        self.stats.connected.load(Ordering::Relaxed)
    }

    /// How long the subscriber connection has been down (since the bus
    /// started, if it never came up); `None` while it is up. What readiness
    /// decides on: a pod cut off from Redis delivers nothing.
    pub fn down_for(&self) -> Option<Duration> {
        if self.is_connected() {
            return None;
        }
        let since = self.stats.changed_at_ms.load(Ordering::Relaxed);
        Some(Duration::from_millis(clock_ms().saturating_sub(since)))
    }
}

/// Refuses what [`RedisBus::start`] would refuse (a malformed URL,
/// unreadable TLS material, Sentinel with Cluster), without connecting.
///
/// # Errors
/// [`Error::Config`] saying what is wrong.
pub fn check(config: &Config) -> Result<(), Error> {
    source::Source::new(config).map(|_| ())
}

/// Milliseconds since the first call in this process: the clock of
/// [`Stats::changed_at_ms`] and [`health::Failure::at_ms`].
pub fn clock_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Stats {
    /// Failures per cause since start (`gateway_redis_errors_total`).
    pub fn failures(&self) -> [(health::Cause, u64); health::Cause::ALL.len()] {
        self.health.counts()
    }

    /// The latest failure of any connection of the bus.
    pub fn last_failure(&self) -> Option<health::Failure> {
        self.health.last()
    }

    /// Records the subscriber connection going up or down.
    pub(crate) fn set_connected(&self, up: bool) {
        self.changed_at_ms.store(clock_ms(), Ordering::Relaxed);
        self.connected.store(up, Ordering::Relaxed);
        if up {
            self.came_up.notify_one();
        }
    }
}
