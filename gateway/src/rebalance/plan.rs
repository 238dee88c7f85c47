//! How many connections one round sheds: the arithmetic alone, apart from
//! Redis and the clock, so it can be checked on numbers.
//!
//! A pod sheds only what it holds above the fleet's average plus the margin
//! (its *ceiling*), so shedding never takes it below the average. The
//! excess found when it first rises above the ceiling is spread evenly over
//! the period's rounds; the plan is kept while the excess lasts (clients
//! that reconnect to this pod again are shed at the same pace), made anew
//! when the excess grows past it, and dropped once the pod is in the band.

use super::RebalanceConfig;

/// What one round found and decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Round {
    /// Pods that reported.
    pub(crate) pods: usize,
    /// Their mean connection count.
    pub(crate) average: f64,
    /// The count above which this pod sheds: the average plus the margin.
    pub(crate) ceiling: u64,
    /// Connections to close in this round.
    pub(crate) quota: u64,
}

/// The plan carried from round to round.
#[derive(Debug)]
pub(crate) struct Planner {
    config: RebalanceConfig,
    /// The excess being shed over one period; 0 while in the band.
    planned: u64,
}

impl Planner {
    pub(crate) fn new(config: RebalanceConfig) -> Self {
        Planner { config, planned: 0 }
    }

    /// The round for a pod holding `own` connections, when the fleet's
    /// reports (this pod's among them) are `fleet`.
    pub(crate) fn round(&mut self, own: u64, fleet: &[u64]) -> Round {
        let pods = fleet.len().max(1);
        let total: u64 = fleet.iter().sum();
        let average = total as f64 / pods as f64;
        let ceiling = self.config.ceiling(average);
        let excess = own.saturating_sub(ceiling);
        if excess == 0 {
            self.planned = 0;
        } else if excess > self.planned {
            self.planned = excess;
        }
        let rounds = (self.config.period.as_secs_f64() / self.config.interval.as_secs_f64())
            .floor()
            .max(1.0);
        let per_round = ((self.planned as f64 / rounds).ceil() as u64).max(1);
        let quota = excess.min(per_round).min(self.config.max_per_round);
        Round {
            pods,
            average,
            ceiling,
            quota,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config() -> RebalanceConfig {
        RebalanceConfig {
            interval: Duration::from_secs(1),
            period: Duration::from_secs(10),
            margin: 0.1,
            margin_min: 2,
            max_per_round: 1000,
        }
    }

    #[test]
    fn a_lone_pod_or_one_in_the_band_sheds_nothing() {
        let mut p = Planner::new(config());
        assert_eq!(p.round(500, &[500]).quota, 0);
        // Average 100, ceiling 110.
        let r = p.round(110, &[110, 95, 95]);
        assert_eq!((r.ceiling, r.quota), (110, 0));
    }

    #[test]
    fn the_excess_is_spread_over_the_period_and_never_below_the_ceiling() {
        let mut p = Planner::new(config());
        // 150 on one pod, none on two new ones: average 50, ceiling 55,
        // excess 95 over 10 rounds.
        let r = p.round(150, &[150, 0, 0]);
        assert_eq!((r.pods, r.ceiling, r.quota), (3, 55, 10));
        // The plan holds while the excess shrinks...
        assert_eq!(p.round(100, &[100, 25, 25]).quota, 10);
        // ...and never takes more than the excess left.
        assert_eq!(p.round(58, &[58, 46, 46]).quota, 3);
        // In the band: the plan is dropped.
        assert_eq!(p.round(55, &[55, 48, 47]).quota, 0);
        // A new excess is planned afresh: average 55, ceiling 61, 14 over
        // 10 rounds.
        assert_eq!(p.round(75, &[75, 45, 45]).quota, 2);
    }

    #[test]
    fn a_growing_excess_is_planned_anew_and_rounds_are_capped() {
        let mut p = Planner::new(RebalanceConfig {
            max_per_round: 15,
            ..config()
        });
        assert_eq!(p.round(60, &[60, 30, 30]).quota, 2); // excess 16
        assert_eq!(p.round(400, &[400, 30, 30]).quota, 15); // excess 231, capped
    }

    #[test]
    fn the_margin_is_a_fraction_with_a_floor() {
        let c = config();
        assert_eq!(c.ceiling(10.0), 12); // 10 % is 1, the floor 2 wins
        assert_eq!(c.ceiling(1000.0), 1100);
        assert_eq!(c.ceiling(33.4), 37); // 36.74 rounded up
    }
}
