//! The embedded single-node broker: publishing is local fan-out.

use super::hub::{Broadcast, Hub};
use super::{Broker, BrokerError};
use async_trait::async_trait;
use std::sync::Arc;

/// Delivers every broadcast to this node's hub, synchronously.
#[derive(Debug)]
pub struct MemoryBroker {
    hub: Arc<Hub>,
}

impl MemoryBroker {
    /// A broker for `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        MemoryBroker { hub }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn subscribe(&self, _topic: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    fn unsubscribe(&self, _topic: &str) {}

    async fn publish(&self, msg: Broadcast) -> Result<(), BrokerError> {
        self.hub.dispatch(&msg);
        Ok(())
    }
}
