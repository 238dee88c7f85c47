//! `[log]`: the format and filter of the binary's logs. The binary reads
//! it as written; the filter is checked here, since one that does not
//! parse, or a word that is no level (`verbose`), would silence the logs.

use super::{ConfigError, Key};
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

/// The levels a directive without `=` may name.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

impl LogConfig {
    /// Refuses a filter tracing cannot parse, and a bare word that is not a
    /// level: tracing would read `verbose` as a target and log nothing else.
    pub(super) fn check(&self, key: &Key) -> Result<(), ConfigError> {
        let invalid = |why: String| key.field("level").invalid(why);
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.level) {
            return Err(invalid(format!(
                "{:?} is not a log filter: {e}",
                self.level
            )));
        }
        for directive in self.level.split(',').map(str::trim) {
            let bare = !directive.is_empty() && !directive.contains(['=', '[']);
            if bare && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
                return Err(invalid(format!(
                    "{directive:?} is not a level ({}); a target takes one: {directive}=debug",
                    LEVELS.join(", ")
                )));
            }
        }
        Ok(())
    }
}
