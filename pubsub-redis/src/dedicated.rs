//! A connection of one's own to the bus's Redis, for the stores whose
//! commands must not queue behind the publish pool's (presence, lifecycle):
//! every checkout of a pooled connection costs two more commands, and a
//! large reply there would hold up what waits behind it. Opened on first
//! use and afresh after any failure; every command bounded by the bus's
//! timeout.

use crate::{Error, Publisher, RedisBus};
use redis::aio::MultiplexedConnection;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// One dedicated connection; clones share it.
#[derive(Clone)]
pub(crate) struct Dedicated {
    client: redis::Client,
    slot: Arc<Mutex<Option<MultiplexedConnection>>>,
    timeout: Duration,
    /// Names the connection in timeout errors.
    what: &'static str,
}

impl Dedicated {
    /// A client of `bus`'s Redis for a store that runs scripts over keys of
    /// many slots, which a cluster refuses; `store` names it in the error.
    ///
    /// # Errors
    /// [`Error::Config`] on a Redis Cluster or for a malformed URL.
    pub(crate) fn single_server(bus: &RedisBus, store: &str) -> Result<redis::Client, Error> {
        let Publisher::Pool(_) = &bus.publisher else {
            return Err(Error::Config(format!(
                "{store} needs a single Redis server, not a cluster"
            )));
        };
        redis::Client::open(bus.url.as_ref()).map_err(|e| Error::Config(e.to_string()))
    }

    pub(crate) fn new(client: &redis::Client, timeout: Duration, what: &'static str) -> Self {
        Dedicated {
            client: client.clone(),
            slot: Arc::default(),
            timeout,
            what,
        }
    }

    /// Whether a connection from earlier commands is kept.
    pub(crate) async fn is_open(&self) -> bool {
        self.slot.lock().await.is_some()
    }

    /// The connection, opened if there is none.
    async fn connection(&self) -> Result<MultiplexedConnection, Error> {
        let mut slot = self.slot.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        // Replies wait as long as the bus's timeout, not redis-rs's 500 ms.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(self.timeout));
        let connect = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        let c = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| Error::Unavailable("connect timed out".into()))??;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Runs `query` on the connection within the timeout; after a failure
    /// the next command opens a fresh connection.
    pub(crate) async fn run<T, F, Fut>(&self, query: F) -> Result<T, Error>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let conn = self.connection().await?;
        let result = tokio::time::timeout(self.timeout, query(conn))
            .await
            .map_err(|_| Error::Unavailable(format!("{} timed out", self.what)))
            .and_then(|r| r);
        if result.is_err() {
            *self.slot.lock().await = None;
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
