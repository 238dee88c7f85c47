//! What whole connection lifecycles cost (the `connect` scenario with
//! `--gateway-pid`): the gateway's and this process's CPU time, user and
//! system apart, from before the first connection until the gateway has
//! closed the last one (its open files back where they were), so accept,
//! handshake, join and teardown are all in it.
//!
//! It measures; the report divides by connections.

use loadtest::procfs;
use serde::Serialize;
use std::time::{Duration, Instant};

/// CPU seconds over the run, user and system apart.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct LifecycleCpu {
    pub(crate) gateway_user_secs: f64,
    pub(crate) gateway_system_secs: f64,
    /// This process's: the client's when it runs the only worker.
    pub(crate) client_user_secs: f64,
    pub(crate) client_system_secs: f64,
    /// The gateway still held more open files than before when the wait
    /// for its teardown gave up.
    pub(crate) teardown_incomplete: bool,
}

/// Readings taken before the first connection.
#[derive(Debug)]
pub(crate) struct Mark {
    pids: Vec<u32>,
    fds: u64,
    gateway: (f64, f64),
    client: (f64, f64),
}

fn cpu(pids: &[u32]) -> anyhow::Result<(f64, f64)> {
    pids.iter().try_fold((0.0, 0.0), |(u, s), &p| {
        let (pu, ps) = procfs::cpu_split(p)?;
        Ok((u + pu, s + ps))
    })
}

fn fds(pids: &[u32]) -> anyhow::Result<u64> {
    pids.iter().map(|&p| procfs::fds(p)).sum()
}

impl Mark {
    pub(crate) fn take(gateway_pids: &[u32]) -> anyhow::Result<Mark> {
        Ok(Mark {
            pids: gateway_pids.to_vec(),
            fds: fds(gateway_pids)?,
            gateway: cpu(gateway_pids)?,
            client: procfs::cpu_split(std::process::id())?,
        })
    }

    /// Waits (up to 10 s) until the gateway has closed the run's
    /// connections, then reads again.
    pub(crate) async fn finish(self) -> anyhow::Result<LifecycleCpu> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut incomplete = true;
        while Instant::now() < deadline {
            if fds(&self.pids)? <= self.fds {
                incomplete = false;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Ticks are 10 ms: let the last teardown's tick land.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (gu, gs) = cpu(&self.pids)?;
        let (cu, cs) = procfs::cpu_split(std::process::id())?;
        Ok(LifecycleCpu {
            gateway_user_secs: gu - self.gateway.0,
            gateway_system_secs: gs - self.gateway.1,
            client_user_secs: cu - self.client.0,
            client_system_secs: cs - self.client.1,
            teardown_incomplete: incomplete,
        })
    }
}
