//! A store's connection of its own on a single Redis or a Redis Cluster,
//! for stores whose every command or pipeline touches keys of one slot
//! (presence): on a single server it is a [`Dedicated`] connection, on a
//! cluster a cluster connection that sends each command, or each pipeline,
//! to the master of its slot. Like [`Dedicated`], it opens on first use and
//! afresh after any failure, and bounds every command by the bus's timeout.

use crate::dedicated::{Dedicated, Link};
use crate::{Error, RedisBus};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Where a store's connections go: the bus's server or cluster.
// A few per pod, made once: their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub(crate) enum StoreClient {
    Single(Link),
    Cluster(ClusterClient),
}

impl StoreClient {
    /// The bus's Redis; `store` names the store in errors.
    ///
    /// # Errors
    /// [`Error::Config`] for a malformed URL.
    pub(crate) fn of(bus: &RedisBus, store: &str) -> Result<Self, Error> {
        match bus.cluster_client() {
            Some(c) => Ok(StoreClient::Cluster(c.clone())),
            None => Dedicated::single_server(bus, store).map(StoreClient::Single),
        }
    }

    /// Whether this is a Redis Cluster: channels then take `SPUBLISH`.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, StoreClient::Cluster(_))
    }

    /// A connection of its own; `what` names it in timeout errors.
    pub(crate) fn connection(&self, timeout: Duration, what: &'static str) -> StoreConn {
        match self {
            StoreClient::Single(c) => StoreConn::Single(Dedicated::new(c, timeout, what)),
            StoreClient::Cluster(c) => StoreConn::Cluster(ClusterDedicated {
                client: c.clone(),
                slot: Arc::default(),
                timeout,
                what,
            }),
        }
    }
}

/// One connection of a store; clones share it.
// Three per pod: their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub(crate) enum StoreConn {
    Single(Dedicated),
    Cluster(ClusterDedicated),
}

impl StoreConn {
    /// One command (routed by its first key on a cluster).
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, Error> {
        match self {
            StoreConn::Single(d) => d.query(cmd).await,
            StoreConn::Cluster(c) => c.query(cmd).await,
        }
    }

    /// One pipeline, whose keys must all be in one slot (a cluster refuses
    /// others).
    pub(crate) async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, Error> {
        match self {
            StoreConn::Single(d) => d.query_pipe(pipe).await,
            StoreConn::Cluster(c) => c.query_pipe(pipe).await,
        }
    }
}

/// A cluster connection of a store's own, opened on first use and afresh
/// after a failure.
#[derive(Clone)]
pub(crate) struct ClusterDedicated {
    client: ClusterClient,
    slot: Arc<Mutex<Option<ClusterConnection>>>,
    timeout: Duration,
    what: &'static str,
}

impl ClusterDedicated {
    async fn connection(&self) -> Result<ClusterConnection, Error> {
        let mut slot = self.slot.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        // Replies wait as long as the bus's timeout, not redis-rs's default.
        let config = ClusterConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout);
        let connect = self.client.get_async_connection_with_config(config);
        let c = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| Error::Unavailable("cluster connect timed out".into()))??;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn bounded<T>(
        &self,
        query: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Error> {
        let result = tokio::time::timeout(self.timeout, query)
            .await
            .map_err(|_| Error::Unavailable(format!("{} timed out", self.what)))
            .and_then(|r| r.map_err(Error::from));
        if result.is_err() {
            *self.slot.lock().await = None;
        }
        result
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Error> {
        let mut c = self.connection().await?;
        self.bounded(cmd.query_async::<T>(&mut c)).await
    }

    async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, Error> {
        let mut c = self.connection().await?;
        self.bounded(pipe.query_async::<T>(&mut c)).await
    }
}
