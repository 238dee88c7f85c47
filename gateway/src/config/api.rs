//! `[api]`: the HTTP publish API, off until a bearer key is set.

use super::{ConfigError, Key};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// `[api]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer key for `POST {path}`; the API is off when unset.
    pub key: Option<String>,
    /// Path of the broadcast endpoint. Default `/api/broadcast`.
    pub path: String,
    /// Largest accepted request body, bytes. Default 1 MiB.
    pub max_body: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            key: None,
            path: "/api/broadcast".into(),
            max_body: 1 << 20,
        }
    }
}

/// `[api]`, converted: what the route needs.
#[derive(Clone)]
pub struct ApiSettings {
    /// The bearer key.
    pub key: Arc<str>,
    /// The route's path.
    pub path: String,
    /// Largest accepted request body, bytes.
    pub max_body: usize,
}

/// Without the key, which must not reach logs.
impl fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiSettings")
            .field("path", &self.path)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl ApiConfig {
    /// The API's settings, when it is on.
    pub(super) fn settings(&self, key: &Key) -> Result<Option<ApiSettings>, ConfigError> {
        if !self.path.starts_with('/') {
            return Err(key.field("path").invalid("must start with '/'"));
        }
        let Some(bearer) = &self.key else {
            return Ok(None);
        };
        // A blank key (`GATEWAY_API_KEY=' '`) is a mistake, not a secret.
        if bearer.trim().is_empty() {
            return Err(key
                .field("key")
                .invalid("must not be empty or blank (unset it to disable the API)"));
        }
        Ok(Some(ApiSettings {
            key: Arc::from(bearer.as_str()),
            path: self.path.clone(),
            max_body: self.max_body,
        }))
    }
}
