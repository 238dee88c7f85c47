//! A process's memory as Linux reports it in `/proc/<pid>/status`: what
//! abuse tests assert on (a pod's resident memory stays within a bound
//! whatever its clients do).

/// `VmRSS` (resident now) or `VmHWM` (peak resident) of `pid`, in bytes.
pub fn status_bytes(pid: u32, field: &str) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kb: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line:?}"));
    kb * 1024
}

/// Resident memory of `pid` now, bytes.
pub fn rss(pid: u32) -> usize {
    status_bytes(pid, "VmRSS:")
}

/// Peak resident memory of `pid` since it started or [`reset_peak`], bytes.
pub fn peak(pid: u32) -> usize {
    status_bytes(pid, "VmHWM:")
}

/// Resets `VmHWM` (peak RSS) of `pid` to its current RSS; false where the
/// kernel does not allow it (then only sampled values are known).
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Bytes in MiB, for messages.
pub fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
