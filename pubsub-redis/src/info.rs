//! Reading `INFO` replies: what the benchmarks and tests count of the
//! commands pods send, so both read it the same way.

use std::collections::HashMap;

/// The calls per command in an `INFO commandstats` reply
/// (`cmdstat_hset:calls=3,usec=…`), lower-case command names.
pub fn commandstats(info: &str) -> HashMap<String, i64> {
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_calls_per_command() {
        let info = "# Commandstats\r\ncmdstat_hset:calls=3,usec=10,usec_per_call=3.33\r\n\
                    cmdstat_publish:calls=12,usec=40\r\nnot a line\r\n";
        let c = super::commandstats(info);
        assert_eq!(c.len(), 2);
        assert_eq!(c["hset"], 3);
        assert_eq!(c["publish"], 12);
    }
}
