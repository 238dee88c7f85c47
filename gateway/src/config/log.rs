//! `[log]`: the format and filter of the binary's logs. Nothing to convert:
//! the binary reads it as written.

use serde::{Deserialize, Serialize};

/// Log output format.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (default).
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `human` (default) or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `info,gateway=debug`. Default `info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}
