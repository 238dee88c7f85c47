//! `[presence]`: the timing of presence diffs and dead-pod cleanup, as
//! [`PresenceConfig`] (whose defaults these are). Which topics have presence
//! is `[channel.presence]`'s business.

use super::{millis, ConfigError, Key};
use crate::presence::{PresenceConfig, MIN_BATCH};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[presence]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceSection {
    /// Changes of a topic are published as one `presence_diff` per window
    /// this long, milliseconds: each client gets at most one diff per
    /// window and topic. Default 100, at least 100.
    pub batch_ms: u64,
    /// A pod that dies without cleaning up has its presences removed and
    /// `leaves` broadcast within this time, milliseconds. Default 30000.
    pub pod_timeout_ms: u64,
}

impl Default for PresenceSection {
    fn default() -> Self {
        let lib = PresenceConfig::default();
        PresenceSection {
            batch_ms: millis(lib.batch),
            pod_timeout_ms: millis(lib.pod_timeout),
        }
    }
}

impl PresenceSection {
    pub(super) fn settings(&self, key: &Key) -> Result<PresenceConfig, ConfigError> {
        if self.batch_ms > 10_000 {
            return Err(key.field("batch_ms").invalid("must be at most 10000"));
        }
        if Duration::from_millis(self.batch_ms) < MIN_BATCH {
            // Clients would get more than ten diffs a second in a busy topic.
            return Err(key
                .field("batch_ms")
                .invalid(format!("must be at least {}", MIN_BATCH.as_millis())));
        }
        if self.pod_timeout_ms < 1000 {
            return Err(key.field("pod_timeout_ms").invalid("must be at least 1000"));
        }
        Ok(PresenceConfig {
            batch: Duration::from_millis(self.batch_ms),
            pod_timeout: Duration::from_millis(self.pod_timeout_ms),
        })
    }
}
