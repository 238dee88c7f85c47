//! What the pods look like from outside, sampled at an interval: resident
//! memory and open descriptors (/proc, through loadtest's procfs) and what
//! `GET /readyz` answers — its status and the `redis: connected` /
//! `redis: disconnected` line of its body.

use loadtest::procfs;
use loadtest::stats::now_ns;
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;
use test_support::http::Request;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a readiness probe may take (a Kubernetes default is 1 s).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One look at one pod.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Sample {
    pub(crate) t_ns: u64,
    pub(crate) pod: usize,
    /// None once the process is gone.
    pub(crate) rss: Option<u64>,
    pub(crate) fds: Option<u64>,
    /// None: no answer within the probe timeout.
    pub(crate) ready: Option<u16>,
    /// What /readyz's body says of Redis.
    pub(crate) redis_connected: Option<bool>,
}

/// A pod to watch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pod {
    pub(crate) pid: u32,
    pub(crate) addr: SocketAddr,
}

/// The sampling task.
#[derive(Debug)]
pub(crate) struct Sampler {
    stop: watch::Sender<bool>,
    task: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    pub(crate) fn start(pods: Vec<Pod>, every: Duration) -> Sampler {
        let (stop, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut out = Vec::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = rx.changed() => break,
                }
                let looks = pods.iter().enumerate().map(|(i, p)| look(i, *p));
                out.extend(futures_util::future::join_all(looks).await);
            }
            out
        });
        Sampler { stop, task }
    }

    pub(crate) async fn stop(self) -> Vec<Sample> {
        self.stop.send_replace(true);
        self.task.await.unwrap_or_default()
    }
}

async fn look(i: usize, pod: Pod) -> Sample {
    let t_ns = now_ns();
    let rss = procfs::rss(pod.pid).ok();
    let fds = procfs::fds(pod.pid).ok();
    let answer = tokio::time::timeout(PROBE_TIMEOUT, Request::get("/readyz").try_send(pod.addr))
        .await
        .ok()
        .flatten();
    Sample {
        t_ns,
        pod: i,
        rss,
        fds,
        ready: answer.as_ref().map(|r| r.status),
        redis_connected: answer.as_ref().and_then(|r| redis_state(&r.body)),
    }
}

/// `redis: connected (reconnects 0)` → true; `redis: disconnected ...` → false.
fn redis_state(body: &str) -> Option<bool> {
    let line = body
        .lines()
        .find_map(|l| l.trim().strip_prefix("redis: "))?;
    Some(line.starts_with("connected"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_redis_line_of_readyz() {
        let ok = "ready\nconnections: 3\nredis: connected (reconnects 0)\n";
        assert_eq!(redis_state(ok), Some(true));
        assert_eq!(
            redis_state("ready\nredis: disconnected (reconnects 2)\n"),
            Some(false)
        );
        assert_eq!(redis_state("ready\nbroker: memory\n"), None);
    }
}
