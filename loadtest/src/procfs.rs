//! What the kernel says the `--gateway-pid` processes use: resident memory,
//! open files and CPU time, read from /proc (and summed over the pids, one
//! per pod). The reconnect storm also reads loadtest's own workers' CPU
//! time, so a run states the client's share of the machine.
//!
//! Also the machine's busy CPU time (/proc/stat), so a run on one machine
//! can tell the clients' share from the servers', and its TCP counters
//! (accept-queue overflows), which a connect storm moves.
//!
//! Read-only and Linux-only. It must not
//! compute per-connection or per-delivery figures (the
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

/// CPU time a process has used, in seconds: (user, system), from utime and
/// stime of /proc/PID/stat, in USER_HZ ticks (100 per second on Linux).
/// Apart because connection setup costs mostly kernel time, which the sum
/// hides.
pub fn cpu_split(pid: u32) -> anyhow::Result<(f64, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // Fields after "(comm)": state is the 3rd field, utime the 14th, stime the 15th.
    let rest = s.rsplit_once(')').context("bad /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<f64> {
        Ok(f.get(i).context("short /proc stat")?.parse::<u64>()? as f64 / 100.0)
    };
    Ok((tick(11)?, tick(12)?))
}

/// CPU time (user + system) a process has used, in seconds.
fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let (user, system) = cpu_split(pid)?;
    Ok(user + system)
}

/// Whether a process has exited: gone from /proc, or a zombie its parent
/// has not reaped yet (a pod killed under a shell that started it). A
/// zombie leader whose other threads are still ending is not gone: they
/// share its open files, its listening socket among them.
pub fn exited(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let zombie = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_none_or(|state| state == "Z" || state == "X");
    zombie
        && std::fs::read_dir(format!("/proc/{pid}/task"))
            .map_or(true, |threads| threads.count() <= 1)
}

/// The machine's TCP counters of /proc/net/netstat (`TcpExt:` lines) by
/// name, e.g. `ListenOverflows`: what `nstat` shows as `TcpExtListenOverflows`.
pub fn tcp_ext() -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let s = std::fs::read_to_string("/proc/net/netstat").context("read /proc/net/netstat")?;
    let mut lines = s.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (
        lines.next().context("no TcpExt names")?,
        lines.next().context("no TcpExt values")?,
    );
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .map(|(n, v)| Ok((n.to_owned(), v.parse()?)))
        .collect()
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
        let (user, system) = cpu_split(me).unwrap();
        assert!(user >= 0.0 && system >= 0.0);
        assert!(!exited(me) && exited(u32::MAX));
        let tcp = tcp_ext().unwrap();
        assert!(tcp.contains_key("ListenOverflows"), "{tcp:?}");
    }
}
