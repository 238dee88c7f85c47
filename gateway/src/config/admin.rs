//! `[admin]`: the operators' API and page, off until a key is set.

use super::{millis, ConfigError, Key};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// `[admin]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer key of the admin API and page; both are off when unset. Not
    /// the publish API's key: who may disconnect clients is a different
    /// question from who may publish.
    pub key: Option<String>,
    /// Where the API's routes start. Default `/admin/api`.
    pub path: String,
    /// Serve the admin page too. Default false.
    pub page: bool,
    /// Where the page is served; its socket is `{page_path}/socket`.
    /// Default `/admin`.
    pub page_path: String,
    /// How long a fleet-wide question waits for the pods' answers, ms.
    /// Default 1000.
    pub timeout_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            key: None,
            path: "/admin/api".into(),
            page: false,
            page_path: "/admin".into(),
            timeout_ms: millis(Duration::from_secs(1)),
        }
    }
}

/// `[admin]`, converted: what the routes need.
#[derive(Clone)]
pub struct AdminSettings {
    /// The bearer key.
    pub key: Arc<str>,
    /// Where the API's routes start, without a trailing `/`.
    pub path: String,
    /// Where the page is served, when it is.
    pub page: Option<String>,
    /// How long a fleet-wide question waits.
    pub timeout: Duration,
}

/// Without the key, which must not reach logs.
impl fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminSettings")
            .field("path", &self.path)
            .field("page", &self.page)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn route_path(key: &Key, name: &str, path: &str) -> Result<String, ConfigError> {
    if !path.starts_with('/') || path.len() < 2 {
        return Err(key
            .field(name)
            .invalid("must start with '/' and name a path below the root"));
    }
    Ok(path.trim_end_matches('/').to_owned())
}

impl AdminConfig {
    /// The admin settings, when a key turns the API on.
    pub(super) fn settings(
        &self,
        key: &Key,
        socket_paths: &[&str],
    ) -> Result<Option<AdminSettings>, ConfigError> {
        let path = route_path(key, "path", &self.path)?;
        let page_path = route_path(key, "page_path", &self.page_path)?;
        if !(50..=30_000).contains(&self.timeout_ms) {
            return Err(key
                .field("timeout_ms")
                .invalid("must be between 50 and 30000"));
        }
        let Some(bearer) = &self.key else {
            if self.page {
                return Err(key
                    .field("page")
                    .invalid("the admin page needs admin.key (GATEWAY_ADMIN_KEY)"));
            }
            return Ok(None);
        };
        if bearer.trim().is_empty() {
            return Err(key
                .field("key")
                .invalid("must not be empty or blank (unset it to disable the admin API)"));
        }
        let admin_socket = format!("{page_path}/socket");
        if self.page && socket_paths.contains(&admin_socket.as_str()) {
            return Err(key.field("page_path").invalid(format!(
                "the admin page's socket {admin_socket} is a [[socket]] path too"
            )));
        }
        Ok(Some(AdminSettings {
            key: Arc::from(bearer.as_str()),
            path,
            page: self.page.then_some(page_path),
            timeout: Duration::from_millis(self.timeout_ms),
        }))
    }
}
