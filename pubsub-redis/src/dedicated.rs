//! A connection of one's own to the bus's Redis, for the stores whose
//! commands must not queue behind the publishing connections' (presence,
//! lifecycle): a large reply there would hold up what waits behind it. The
//! publishing connections are of this kind too. Opened on first use (at
//! the server the [`Source`] names then: after a Sentinel failover, the
//! new master) and afresh after a failure of the connection; every command
//! bounded by the bus's timeout; every failure reported to the bus's
//! [health](crate::health).

use crate::source::Source;
use crate::{Error, Publisher, RedisBus, Stats};
use redis::aio::MultiplexedConnection;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Where dedicated connections go, and where their failures are told.
#[derive(Clone)]
pub(crate) struct Link {
    source: Source,
    stats: Arc<Stats>,
}

impl Link {
    pub(crate) fn new(source: &Source, stats: &Arc<Stats>) -> Link {
        Link {
            source: source.clone(),
            stats: stats.clone(),
        }
    }
}

/// One dedicated connection; clones share it.
#[derive(Clone)]
pub(crate) struct Dedicated {
    link: Link,
    slot: Arc<Mutex<Option<MultiplexedConnection>>>,
    timeout: Duration,
    /// Names the connection in timeout errors.
    what: &'static str,
}

impl Dedicated {
    /// `bus`'s Redis for a store that runs scripts over keys of many
    /// slots, which a cluster refuses; `store` names it in the error.
    ///
    /// # Errors
    /// [`Error::Config`] on a Redis Cluster.
    pub(crate) fn single_server(bus: &RedisBus, store: &str) -> Result<Link, Error> {
        let Publisher::Pool(..) = &bus.publisher else {
            return Err(Error::Config(format!(
                "{store} needs a single Redis server, not a cluster"
            )));
        };
        Ok(Link::new(&bus.source, &bus.stats))
    }

    pub(crate) fn new(link: &Link, timeout: Duration, what: &'static str) -> Self {
        Dedicated {
            link: link.clone(),
            slot: Arc::default(),
            timeout,
            what,
        }
    }

    /// Whether a connection from earlier commands is kept.
    pub(crate) async fn is_open(&self) -> bool {
        self.slot.lock().await.is_some()
    }

    /// The connection, opened if there is none; and whether it was kept
    /// from earlier commands.
    async fn connection(&self) -> Result<(MultiplexedConnection, bool), Error> {
        let mut slot = self.slot.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok((c.clone(), true));
        }
        let client = self.link.source.client().await?;
        // Replies wait as long as the bus's timeout, not redis-rs's 500 ms.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(self.timeout));
        let connect = client.get_multiplexed_async_connection_with_config(&config);
        let c = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| Error::Unavailable("connect timed out".into()))??;
        *slot = Some(c.clone());
        Ok((c, false))
    }

    async fn attempt<T, F, Fut>(&self, conn: MultiplexedConnection, query: &F) -> Result<T, Error>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        tokio::time::timeout(self.timeout, query(conn))
            .await
            .map_err(|_| Error::Unavailable(format!("{} timed out", self.what)))
            .and_then(|r| r)
    }

    /// Runs `query` on the connection within the timeout; after a failure
    /// of the connection (not an error answer, except `READONLY`: the
    /// master moved) the next command opens a fresh one. A kept connection
    /// found already closed (its server restarted or failed over since the
    /// last command) is replaced and the query tried once more on the new
    /// one: the command never left, so it is not repeated.
    pub(crate) async fn run<T, F, Fut>(&self, query: F) -> Result<T, Error>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let result = match self.connection().await {
            Ok((conn, kept)) => {
                let r = self.attempt(conn, &query).await;
                match r {
                    Err(Error::Redis(e)) if kept && closed_before(&e) => {
                        *self.slot.lock().await = None;
                        match self.connection().await {
                            Ok((conn, _)) => self.attempt(conn, &query).await,
                            Err(e) => Err(e),
                        }
                    }
                    r => r,
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            let answered =
                matches!(e, Error::Redis(r) if r.code().is_some_and(|c| c != "READONLY"));
            if !answered {
                *self.slot.lock().await = None;
            }
            if !answered || crate::health::Cause::of(e) != crate::health::Cause::Other {
                self.link.stats.health.failed(self.what, e);
            }
        }
        result
    }

    /// One command, as [`run`](Self::run).
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, Error> {
        self.run(|mut c| async move { Ok(cmd.query_async::<T>(&mut c).await?) })
            .await
    }

    /// One pipeline, as [`run`](Self::run).
    pub(crate) async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, Error> {
        self.run(|mut c| async move { Ok(pipe.query_async::<T>(&mut c).await?) })
            .await
    }
}

/// Whether a command failed because its connection had closed before it
/// was written (redis-rs: a broken pipe, or the connection's task gone).
fn closed_before(e: &redis::RedisError) -> bool {
    if !e.is_io_error() || e.is_timeout() {
        return false;
    }
    let text = e.to_string().to_ascii_lowercase();
    text.contains("broken pipe") || text.contains("closed") || text.contains("dropped")
}
