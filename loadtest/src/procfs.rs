//! What the kernel says the `--gateway-pid` processes use: resident memory,
//! open files and CPU time, read from /proc (and summed over the pids, one
//! per pod).
//!
//! Also the machine's busy CPU time (/proc/stat), so a run on one machine
//! can tell the clients' share from the servers'.
//!
//! Read-only and Linux-only. It must not read anything of loadtest's own
//! processes, nor compute per-connection or per-delivery figures (the
//! report does, from these totals).

use anyhow::Context as _;

/// VmRSS of a process in bytes.
pub fn rss(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .context("bad VmRSS")?
        .parse()?;
    Ok(kb * 1024)
}

/// Open file descriptors of a process (entries of /proc/PID/fd).
pub fn fds(pid: u32) -> anyhow::Result<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("read /proc/{pid}/fd"))?;
    Ok(dir.count() as u64)
}

pub fn total_rss(pids: &[u32]) -> anyhow::Result<u64> {
    pids.iter().map(|&p| rss(p)).sum()
}

/// CPU time (user + system) a process has used, in seconds: utime and stime of
/// /proc/PID/stat, in USER_HZ ticks (100 per second on Linux).
fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // Fields after "(comm)": state is the 3rd field, utime the 14th, stime the 15th.
    let rest = s.rsplit_once(')').context("bad /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<f64> {
        Ok(f.get(i).context("short /proc stat")?.parse::<u64>()? as f64 / 100.0)
    };
    Ok(tick(11)? + tick(12)?)
}

pub fn total_cpu(pids: &[u32]) -> anyhow::Result<f64> {
    pids.iter().map(|&p| cpu_secs(p)).sum()
}

/// CPU time every core of the machine spent busy (not idle or waiting for
/// I/O), in seconds, from the first line of /proc/stat.
pub fn machine_busy_secs() -> anyhow::Result<f64> {
    let s = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let line = s.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(ticks.len() == 8, "short /proc/stat line");
    let total: u64 = ticks.iter().sum();
    Ok((total - ticks[3] - ticks[4]) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(total_rss(&[me]).unwrap() > 0);
        assert!(total_cpu(&[me]).unwrap() >= 0.0);
        assert_eq!(total_rss(&[]).unwrap(), 0);
        assert!(rss(u32::MAX).is_err());
        assert!(fds(me).unwrap() >= 3);
        assert!(machine_busy_secs().unwrap() > 0.0);
    }
}
