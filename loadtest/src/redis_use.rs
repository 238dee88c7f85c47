//! What Redis did over a part of a run: redis-server's CPU time (from
//! `/proc` of its pid) and `INFO commandstats` (calls and microseconds per
//! command), read before and after.
//!
//! It reads and subtracts; it must not judge a run.

use crate::presence_join::redis_conn;
use loadtest::procfs;
use serde::Serialize;
use std::collections::BTreeMap;

/// One reading.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    cpu_secs: Option<f64>,
    /// command -> (calls, usec)
    commands: BTreeMap<String, (i64, i64)>,
}

/// The difference between two readings.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Use {
    /// redis-server's user+system CPU seconds (with its pid).
    pub(crate) cpu_secs: Option<f64>,
    /// Calls and microseconds (Redis's own time in the command) per command,
    /// `INFO` left out.
    pub(crate) commands: BTreeMap<String, Calls>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Calls {
    pub(crate) calls: i64,
    pub(crate) usec: i64,
}

impl Use {
    /// The calls and microseconds of one command (zero when it was not called).
    pub(crate) fn of(&self, command: &str) -> Calls {
        self.commands.get(command).copied().unwrap_or_default()
    }

    /// Microseconds Redis spent in commands, all of them.
    pub(crate) fn total_usec(&self) -> i64 {
        self.commands.values().map(|c| c.usec).sum()
    }
}

/// `cmdstat_fcall:calls=3,usec=10,usec_per_call=...` -> fcall: (3, 10).
fn parse(info: &str) -> BTreeMap<String, (i64, i64)> {
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let mut calls = None;
            let mut usec = None;
            for kv in rest.trim().split(',') {
                match kv.split_once('=') {
                    Some(("calls", v)) => calls = v.parse().ok(),
                    Some(("usec", v)) => usec = v.parse().ok(),
                    _ => {}
                }
            }
            Some((name.to_owned(), (calls?, usec?)))
        })
        .collect()
}

/// Reads redis-server's CPU time (`pid`) and its command statistics (`url`).
pub(crate) async fn probe(url: &str, pid: Option<u32>) -> anyhow::Result<Probe> {
    let mut c = redis_conn(url).await?;
    let text: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await?;
    Ok(Probe {
        cpu_secs: pid.map(|p| procfs::total_cpu(&[p])).transpose()?,
        commands: parse(&text),
    })
}

impl Probe {
    /// What happened from `self` to `after`.
    pub(crate) fn until(&self, after: &Probe) -> Use {
        let commands = after
            .commands
            .iter()
            .filter(|(name, _)| name.as_str() != "info")
            .filter_map(|(name, &(calls, usec))| {
                let (c0, u0) = self.commands.get(name).copied().unwrap_or((0, 0));
                (calls > c0).then(|| {
                    (
                        name.clone(),
                        Calls {
                            calls: calls - c0,
                            usec: usec - u0,
                        },
                    )
                })
            })
            .collect();
        Use {
            cpu_secs: after.cpu_secs.zip(self.cpu_secs).map(|(a, b)| a - b),
            commands,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_differences() {
        let before = Probe {
            cpu_secs: Some(1.0),
            commands: parse("# Commandstats\r\ncmdstat_fcall:calls=3,usec=30,usec_per_call=10.00,rejected_calls=0\r\ncmdstat_info:calls=1,usec=5\r\n"),
        };
        let after = Probe {
            cpu_secs: Some(1.5),
            commands: parse("cmdstat_fcall:calls=13,usec=130,usec_per_call=10.00\r\ncmdstat_publish:calls=2,usec=4\r\ncmdstat_info:calls=2,usec=9\r\n"),
        };
        let u = before.until(&after);
        assert_eq!(u.cpu_secs, Some(0.5));
        assert_eq!((u.of("fcall").calls, u.of("fcall").usec), (10, 100));
        assert_eq!(u.of("publish").calls, 2);
        assert_eq!(u.of("info").calls, 0);
        assert_eq!(u.total_usec(), 104);
    }
}
