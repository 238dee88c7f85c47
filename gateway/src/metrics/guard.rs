//! Guards that count something for as long as it lives: an open
//! connection, a joined channel.

use super::{metrics, Limit};
use crate::protocol::Transport;
use prometheus::IntGauge;

/// An open connection, counted in `gateway_connections` until dropped.
#[derive(Debug)]
pub(crate) struct OpenConnection {
    pub(super) gauge: IntGauge,
    pub(super) transport: Transport,
}

impl OpenConnection {
    /// Counts how the connection ended (its close reason's label), and the
    /// limit that ended it, if one did.
    pub(crate) fn closed(&self, reason: &str, limit: Option<Limit>) {
        let m = metrics();
        m.closed
            .with_label_values(&[self.transport.as_str(), reason])
            .inc();
        if let Some(l) = limit {
            m.limit_hit(l);
        }
    }

    /// The transport the connection arrived on.
    pub(crate) fn transport(&self) -> Transport {
        self.transport
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// A joined channel, counted in `gateway_channels_joined` until dropped.
#[derive(Debug)]
pub(crate) struct JoinedChannel(pub(super) IntGauge);

impl Drop for JoinedChannel {
    fn drop(&mut self) {
        self.0.dec();
    }
}
