//! `[demo]`: the chat page at `/`, which must connect to a configured socket.

use super::socket::DEFAULT_PATH;
use super::{ConfigError, Key};
use serde::{Deserialize, Serialize};

/// `[demo]`.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// Serve the demo chat page at `/` and phoenix.js at `/assets/phoenix.js`.
    /// Default false.
    pub enabled: bool,
    /// The socket path the page connects to. Default `/socket`.
    pub socket: Option<String>,
}

impl DemoConfig {
    /// The socket path the page connects to, when the page is served.
    pub(super) fn settings(
        &self,
        key: &Key,
        socket_paths: &[&str],
    ) -> Result<Option<String>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let path = self.socket.as_deref().unwrap_or(DEFAULT_PATH);
        if !socket_paths.contains(&path) {
            return Err(key
                .field("socket")
                .invalid(format!("no [[socket]] has path {path:?}")));
        }
        Ok(Some(path.to_owned()))
    }
}
