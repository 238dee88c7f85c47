//! The subscriber connection, plain or clustered, behind one interface.
//!
//! A single Redis uses SUBSCRIBE on a dedicated pub/sub connection: it is up
//! or down as a whole. A Redis Cluster uses sharded pub/sub (SSUBSCRIBE) over
//! one connection per master ([`Shards`]): a channel is refused, or lost and
//! retried, with its master, while the other masters' channels stay.

use crate::cluster::{ClusterTarget, Shards};
use crate::source::Source;
use crate::{Config, Error, Stats};
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::Value;
use std::sync::Arc;
use std::time::Duration;

/// How to reach Redis.
pub(crate) enum Target {
    /// The server, and a channel to SUBSCRIBE and UNSUBSCRIBE at once on
    /// every connect: an ACL that denies the prefix's channels fails the
    /// connect, not the first join.
    Single(Source, String),
    Cluster(ClusterTarget),
}

impl Target {
    pub(crate) fn new(source: &Source, config: &Config) -> Result<Target, Error> {
        if config.cluster {
            Ok(Target::Cluster(ClusterTarget::new(&config.url, source)?))
        } else {
            let probe = format!("{}~probe", config.prefix);
            Ok(Target::Single(source.clone(), probe))
        }
    }

    /// Opens a subscriber connection; on a cluster, reads the slot map and
    /// connects to the masters, and succeeds once one of them is up.
    pub(crate) async fn connect(
        &self,
        timeout: Duration,
        stats: &Arc<Stats>,
    ) -> Result<Conn, Error> {
        let fut = async {
            match self {
                Target::Single(source, probe) => {
                    let client = source.client().await?;
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(probe).await?;
                    pubsub.unsubscribe(probe).await?;
                    let (sink, stream) = pubsub.split();
                    Ok(Conn::Single { sink, stream })
                }
                Target::Cluster(target) => Ok(Conn::Cluster(Box::new(
                    Shards::connect(target.clone(), timeout, stats.clone()).await?,
                ))),
            }
        };
        // A cluster's connect asks several nodes, each bounded by `timeout`.
        let bound = match self {
            Target::Single(..) => timeout,
            Target::Cluster(_) => timeout * 3,
        };
        tokio::time::timeout(bound, fut)
            .await
            .map_err(|_| Error::Unavailable("connect timed out".into()))?
    }
}

/// What an open subscriber connection delivers.
pub(crate) enum Event {
    /// A message published to a channel: (channel, payload).
    Message(String, Vec<u8>),
    /// A cluster node no longer sends this shard channel: its slot moved to
    /// another shard.
    Unsubscribed(String),
    /// A cluster master's connection was lost: these channels are no longer
    /// subscribed anywhere.
    Lost(Vec<String>),
}

/// Channels a subscribe command could not subscribe, and why.
#[derive(Default)]
pub(crate) struct Refused {
    pub(crate) channels: Vec<String>,
    pub(crate) error: Option<Error>,
}

/// An open subscriber connection.
pub(crate) enum Conn {
    Single {
        sink: PubSubSink,
        stream: PubSubStream,
    },
    Cluster(Box<Shards>),
}

impl Conn {
    /// Subscribes and waits for Redis's confirmation. `Err` means the
    /// connection is no longer usable (single Redis); a cluster refuses
    /// channels one by one instead, with their master.
    pub(crate) async fn subscribe(
        &mut self,
        channels: &[String],
        timeout: Duration,
    ) -> Result<Refused, Error> {
        match self {
            Conn::Single { sink, .. } => {
                tokio::time::timeout(timeout, sink.subscribe(channels))
                    .await
                    .map_err(|_| Error::Unavailable("SUBSCRIBE not confirmed in time".into()))??;
                Ok(Refused::default())
            }
            // Every command to a node is bounded by the node connection's
            // own response timeout.
            Conn::Cluster(shards) => {
                let (channels, error) = shards.subscribe(channels).await;
                Ok(Refused { channels, error })
            }
        }
    }

    pub(crate) async fn unsubscribe(
        &mut self,
        channels: &[String],
        timeout: Duration,
    ) -> Result<(), Error> {
        match self {
            Conn::Single { sink, .. } => {
                Ok(tokio::time::timeout(timeout, sink.unsubscribe(channels))
                    .await
                    .map_err(|_| {
                        Error::Unavailable("UNSUBSCRIBE not confirmed in time".into())
                    })??)
            }
            Conn::Cluster(shards) => {
                shards.unsubscribe(channels).await;
                Ok(())
            }
        }
    }

    /// Checks the connection. `Err` for a single Redis that did not answer;
    /// a cluster master that did not is closed and its channels are
    /// reported [lost](Event::Lost).
    pub(crate) async fn ping(&mut self, timeout: Duration) -> Result<(), Error> {
        match self {
            Conn::Single { sink, .. } => {
                // Subscribed, RESP2 answers ["pong", ""], not a string.
                tokio::time::timeout(timeout, sink.ping::<Value>())
                    .await
                    .map_err(|_| Error::Unavailable("PING not answered in time".into()))??;
            }
            Conn::Cluster(shards) => shards.ping().await,
        }
        Ok(())
    }

    /// Whether [`repair`](Conn::repair) is due: a cluster master lacks its
    /// connection, or the slot map may be out of date.
    pub(crate) fn needs_repair(&self) -> bool {
        match self {
            Conn::Single { .. } => false,
            Conn::Cluster(shards) => shards.needs_repair(),
        }
    }

    /// Reads a cluster's slot map again and connects to its masters.
    pub(crate) async fn repair(&mut self) {
        if let Conn::Cluster(shards) = self {
            shards.repair().await;
        }
    }

    /// The next message or dropped subscriptions; `None` once the
    /// connection is lost (a single Redis; a cluster reports lost masters
    /// as [`Event::Lost`] instead).
    pub(crate) async fn next(&mut self) -> Option<Event> {
        match self {
            Conn::Single { stream, .. } => {
                let msg = stream.next().await?;
                Some(Event::Message(
                    msg.get_channel_name().to_owned(),
                    msg.get_payload_bytes().to_vec(),
                ))
            }
            Conn::Cluster(shards) => shards.next().await,
        }
    }
}
