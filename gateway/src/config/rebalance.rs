//! `[rebalance]`: shedding WebSocket connections of a pod above the fleet's
//! average after a scale-out, as [`RebalanceConfig`] (whose defaults these
//! are). Off by default; needs Redis, where the pods share their counts.

use super::{millis, ConfigError, Key};
use crate::rebalance::RebalanceConfig;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[rebalance]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RebalanceSection {
    /// Shed connections of a pod above the fleet's average. Default false.
    pub enabled: bool,
    /// How often each pod reports its count and plans a round,
    /// milliseconds. Default 5000.
    pub interval_ms: u64,
    /// Over how long an excess is shed, milliseconds. Default 300000.
    pub period_ms: u64,
    /// How far above the average a pod may stay, as a fraction of it.
    /// Default 0.1.
    pub margin: f64,
    /// The smallest margin, in connections. Default 20.
    pub margin_min: u64,
    /// At most this many connections are closed per round. Default 500.
    pub max_per_round: u64,
}

impl Default for RebalanceSection {
    fn default() -> Self {
        let lib = RebalanceConfig::default();
        RebalanceSection {
            enabled: false,
            interval_ms: millis(lib.interval),
            period_ms: millis(lib.period),
            margin: lib.margin,
            margin_min: lib.margin_min,
            max_per_round: lib.max_per_round,
        }
    }
}

impl RebalanceSection {
    /// The library's settings when enabled; `redis` tells whether a Redis
    /// broker is configured.
    pub(super) fn settings(
        &self,
        key: &Key,
        redis: bool,
    ) -> Result<Option<RebalanceConfig>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        if !redis {
            return Err(key.field("enabled").invalid(
                "rebalancing needs Redis, where the pods share their connection counts: set [redis] url",
            ));
        }
        if !(100..=600_000).contains(&self.interval_ms) {
            return Err(key
                .field("interval_ms")
                .invalid("must be between 100 and 600000"));
        }
        if self.period_ms < self.interval_ms || self.period_ms > 86_400_000 {
            return Err(key.field("period_ms").invalid(format!(
                "must be between interval_ms ({}) and 86400000",
                self.interval_ms
            )));
        }
        // `!(..)` also refuses NaN.
        if !(0.0..=10.0).contains(&self.margin) {
            return Err(key.field("margin").invalid("must be between 0.0 and 10.0"));
        }
        if self.max_per_round == 0 {
            return Err(key.field("max_per_round").invalid("must be at least 1"));
        }
        Ok(Some(RebalanceConfig {
            interval: Duration::from_millis(self.interval_ms),
            period: Duration::from_millis(self.period_ms),
            margin: self.margin,
            margin_min: self.margin_min,
            max_per_round: self.max_per_round,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, redis: bool) -> Result<Option<RebalanceConfig>, ConfigError> {
        let section: RebalanceSection = toml::from_str(text).unwrap();
        section.settings(&Key::root("rebalance"), redis)
    }

    fn refused(text: &str, redis: bool) -> String {
        check(text, redis).unwrap_err().to_string()
    }

    #[test]
    fn off_by_default_even_without_redis() {
        assert_eq!(check("", false).unwrap(), None);
        assert_eq!(check("margin = -1.0", false).unwrap(), None);
    }

    #[test]
    fn enabled_takes_the_library_defaults_and_the_keys() {
        assert_eq!(
            check("enabled = true", true).unwrap(),
            Some(RebalanceConfig::default())
        );
        let c = check(
            "enabled = true\ninterval_ms = 500\nperiod_ms = 3000\nmargin = 0.25\n\
             margin_min = 3\nmax_per_round = 7",
            true,
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.interval, Duration::from_millis(500));
        assert_eq!(c.period, Duration::from_secs(3));
        assert_eq!((c.margin, c.margin_min, c.max_per_round), (0.25, 3, 7));
    }

    #[test]
    fn enabled_without_redis_is_refused_naming_the_key() {
        let e = refused("enabled = true", false);
        assert!(e.contains("`rebalance.enabled`"), "{e}");
        assert!(e.contains("[redis] url"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_naming_their_key() {
        for (text, key) in [
            ("interval_ms = 99", "rebalance.interval_ms"),
            ("interval_ms = 600001", "rebalance.interval_ms"),
            ("interval_ms = 1000\nperiod_ms = 999", "rebalance.period_ms"),
            ("period_ms = 86400001", "rebalance.period_ms"),
            ("margin = -0.1", "rebalance.margin"),
            ("margin = nan", "rebalance.margin"),
            ("margin = 11.0", "rebalance.margin"),
            ("max_per_round = 0", "rebalance.max_per_round"),
        ] {
            let e = refused(&format!("enabled = true\n{text}"), true);
            assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
        }
    }
}
