//! The subscriber connection, plain or clustered, behind one interface.
//!
//! A single Redis uses SUBSCRIBE on a dedicated pub/sub connection. A Redis
//! Cluster uses sharded pub/sub (SSUBSCRIBE) over a RESP3 cluster
//! connection, which routes each channel to the shard that owns its slot;
//! sharded commands for channels of different slots cannot share one command,
//! so they are sent concurrently, one per channel.

use crate::source::Source;
use crate::{Config, Error};
use futures_util::future::try_join_all;
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use std::time::Duration;
use tokio::sync::mpsc;

/// How to reach Redis.
pub(crate) enum Target {
    /// The server, and a channel to SUBSCRIBE and UNSUBSCRIBE at once on
    /// every connect: an ACL that denies the prefix's channels fails the
    /// connect, not the first join.
    Single(Source, String),
    Cluster(Box<ClusterClient>),
}

impl Target {
    pub(crate) fn new(source: &Source, config: &Config) -> Result<Target, Error> {
        if config.cluster {
            let client = source
                .cluster(&config.url)
                .use_protocol(redis::ProtocolVersion::RESP3)
                .build()
                .map_err(|e| Error::Config(e.to_string()))?;
            Ok(Target::Cluster(Box::new(client)))
        } else {
            let probe = format!("{}~probe", config.prefix);
            Ok(Target::Single(source.clone(), probe))
        }
    }

    /// Opens a subscriber connection.
    pub(crate) async fn connect(&self, timeout: Duration) -> Result<Conn, Error> {
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
                Target::Cluster(client) => {
                    let (tx, pushes) = mpsc::unbounded_channel();
                    let config = redis::cluster::ClusterConfig::new().set_push_sender(tx);
                    let conn = client.get_async_connection_with_config(config).await?;
                    Ok(Conn::Cluster { conn, pushes })
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| Error::Unavailable("connect timed out".into()))?
    }
}

/// What an open subscriber connection delivers.
pub(crate) enum Event {
    /// A message published to a channel: (channel, payload).
    Message(String, Vec<u8>),
    /// A shard channel is no longer subscribed: a cluster node says so when
    /// the channel's slot moved to another shard, and to confirm our own
    /// SUNSUBSCRIBE.
    Unsubscribed(String),
}

/// An open subscriber connection.
pub(crate) enum Conn {
    Single {
        sink: PubSubSink,
        stream: PubSubStream,
    },
    Cluster {
        conn: ClusterConnection,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
    },
}

impl Conn {
    /// Subscribes and waits for Redis's confirmation of every channel.
    pub(crate) async fn subscribe(&mut self, channels: &[String]) -> Result<(), Error> {
        match self {
            Conn::Single { sink, .. } => Ok(sink.subscribe(channels).await?),
            Conn::Cluster { conn, .. } => {
                try_join_all(channels.iter().map(|c| {
                    let mut conn = conn.clone();
                    async move { conn.ssubscribe(c).await }
                }))
                .await?;
                Ok(())
            }
        }
    }

    pub(crate) async fn unsubscribe(&mut self, channels: &[String]) -> Result<(), Error> {
        match self {
            Conn::Single { sink, .. } => Ok(sink.unsubscribe(channels).await?),
            Conn::Cluster { conn, .. } => {
                try_join_all(channels.iter().map(|c| {
                    let mut conn = conn.clone();
                    async move { conn.sunsubscribe(c).await }
                }))
                .await?;
                Ok(())
            }
        }
    }

    pub(crate) async fn ping(&mut self) -> Result<(), Error> {
        match self {
            Conn::Single { sink, .. } => {
                // Subscribed, RESP2 answers ["pong", ""], not a string.
                sink.ping::<Value>().await?;
            }
            Conn::Cluster { conn, .. } => {
                redis::cmd("PING").query_async::<Value>(conn).await?;
            }
        }
        Ok(())
    }

    /// The next message or dropped subscription; `None` once the connection
    /// is lost.
    pub(crate) async fn next(&mut self) -> Option<Event> {
        match self {
            Conn::Single { stream, .. } => {
                let msg = stream.next().await?;
                Some(Event::Message(
                    msg.get_channel_name().to_owned(),
                    msg.get_payload_bytes().to_vec(),
                ))
            }
            Conn::Cluster { pushes, .. } => loop {
                let push = pushes.recv().await?;
                match push.kind {
                    PushKind::SMessage | PushKind::Message => {
                        let mut data = push.data.into_iter();
                        if let (
                            Some(Value::BulkString(channel)),
                            Some(Value::BulkString(payload)),
                        ) = (data.next(), data.next())
                        {
                            return Some(Event::Message(
                                String::from_utf8_lossy(&channel).into_owned(),
                                payload,
                            ));
                        }
                    }
                    PushKind::SUnsubscribe => {
                        if let Some(Value::BulkString(channel)) = push.data.into_iter().next() {
                            return Some(Event::Unsubscribed(
                                String::from_utf8_lossy(&channel).into_owned(),
                            ));
                        }
                    }
                    PushKind::Disconnection => return None,
                    _ => {}
                }
            },
        }
    }
}
