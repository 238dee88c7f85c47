//! The reconnect storm: what a pod restart does to its clients. N clients
//! are connected and joined; then the pod goes away (the parent sends the
//! gateway a signal and starts it again with `--restart-cmd`), or, without
//! a restart command, the clients drop their connections themselves. Every
//! client then reconnects with phoenix.js's default backoff, which has no
//! jitter, so the whole population retries in lockstep, and rejoins its
//! topics as phoenix.js does on reopening.
//!
//! The client side ([`run`]) runs in the workers; the parent side
//! ([`drive`]) ends and restarts the pod and measures the machine around
//! it. Neither merges results nor judges the run.

use crate::cli::{Cli, StormArgs};
use crate::collect::Collector;
use crate::supervisor::Workers;
use crate::worker::Control;
use anyhow::{bail, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use loadtest::conn::{self, Frame, Phase, Reply, Spec, Target, Ws, HEARTBEAT};
use loadtest::procfs;
use loadtest::stats::{now_ns, record, Stats};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt as _;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::{self, Message};

/// phoenix.js's default `reconnectAfterMs`: the wait before reconnect
/// attempt `tries` (from 1), reset once a connection opens.
pub(crate) fn reconnect_after(tries: u32) -> Duration {
    const STEPS: [u64; 9] = [10, 50, 100, 150, 200, 250, 500, 1000, 2000];
    let i = tries.saturating_sub(1) as usize;
    Duration::from_millis(STEPS.get(i).copied().unwrap_or(5000))
}

/// phoenix.js's default `rejoinAfterMs`: the wait before joining a channel
/// again after an error reply or a timeout.
pub(crate) fn rejoin_after(tries: u32) -> Duration {
    const STEPS: [u64; 3] = [1000, 2000, 5000];
    let i = tries.saturating_sub(1) as usize;
    Duration::from_millis(STEPS.get(i).copied().unwrap_or(10_000))
}

/// phoenix.js's default push timeout, after which a join is tried again.
pub(crate) const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How a connection attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Nothing listened (ECONNREFUSED).
    Refused,
    /// The gateway answered the handshake with an HTTP error status.
    Status(u16),
    /// Anything else: a timeout, a reset.
    Other,
}

fn classify(e: &anyhow::Error) -> Failure {
    for cause in e.chain() {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return Failure::Refused;
            }
        }
        match cause.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Http(resp)) => return Failure::Status(resp.status().as_u16()),
            Some(tungstenite::Error::Io(io))
                if io.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                return Failure::Refused
            }
            _ => {}
        }
    }
    Failure::Other
}

/// Counts a failed attempt: refusals and errors once the gateway listens
/// (`up`), expected failures before.
pub(crate) fn failed(stats: &Stats, e: &anyhow::Error, up: bool) {
    let live = &stats.live;
    match classify(e) {
        Failure::Status(status) => {
            if live.refused.fetch_add(1, Relaxed) < 3 {
                eprintln!("reconnect refused: HTTP {status}");
            }
        }
        Failure::Refused if up => {
            if live.refused.fetch_add(1, Relaxed) < 3 {
                eprintln!("reconnect refused: {e:#}");
            }
        }
        Failure::Other if up => {
            if live.connect_errors.fetch_add(1, Relaxed) < 3 {
                eprintln!("reconnect error: {e:#}");
            }
        }
        Failure::Refused | Failure::Other => {
            live.attempts_down.fetch_add(1, Relaxed);
        }
    }
}

/// How a client's time on one connection ended.
enum End {
    /// The connection was lost (or dropped by the client for the storm).
    Lost,
    /// The run is over.
    Stop,
}

/// One client: connects and joins, then holds its connection; whenever
/// it is lost, reconnects with [`reconnect_after`] and rejoins. With
/// `drop_on_go`, the client drops its own connection when the storm starts.
/// `up` tells whether the gateway listens again (failures before are
/// expected).
pub(crate) async fn run(
    target: Arc<Target>,
    stats: Arc<Stats>,
    spec: Spec,
    mut phase: watch::Receiver<Phase>,
    up: watch::Receiver<bool>,
    drop_on_go: bool,
) {
    let live = &stats.live;
    let mut ws = match conn::connect(&target, spec.idx).await {
        Ok(ws) => ws,
        Err(e) => return conn::connect_failed(&stats, &e),
    };
    live.connects_ok.fetch_add(1, Relaxed);
    live.open.fetch_add(1, Relaxed);
    let mut refs = 0u64;
    let joined = join(&mut ws, &spec.topics, &mut refs, &stats, &mut phase, false).await;
    live.settled.fetch_add(1, Relaxed);
    match joined {
        Ok(()) => live.storm_ready.fetch_add(1, Relaxed),
        Err(_) => {
            live.open.fetch_sub(1, Relaxed);
            return;
        }
    };
    let mut dropped = !drop_on_go;
    loop {
        let end = hold(&mut ws, &mut phase, &mut dropped).await;
        live.open.fetch_sub(1, Relaxed);
        if let End::Stop = end {
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
            return;
        }
        // Dropped without a close frame, as a vanished pod leaves it.
        drop(ws);
        live.drops.fetch_add(1, Relaxed);
        let lost = Instant::now();
        match reconnect(&target, &stats, &spec, &mut phase, &up, &mut refs).await {
            Some(again) => {
                ws = again;
                stats.rejoined(now_ns(), lost.elapsed().as_micros() as u64);
            }
            None => return,
        }
    }
}

/// Holds an established connection: reads (and ignores) what arrives,
/// sends heartbeats, until it is lost or the run stops.
async fn hold(ws: &mut Ws, phase: &mut watch::Receiver<Phase>, dropped: &mut bool) -> End {
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    let mut next_ref = 1_000_000u64;
    loop {
        let cur = *phase.borrow_and_update();
        match cur {
            Phase::Stop => return End::Stop,
            Phase::Go | Phase::Halt if !*dropped => {
                *dropped = true;
                return End::Lost;
            }
            _ => {}
        }
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return End::Lost,
                Some(Ok(_)) => {}
            },
            _ = heartbeat.tick() => {
                next_ref += 1;
                let f = format!(r#"[null,"{next_ref}","phoenix","heartbeat",{{}}]"#);
                if ws.send(Message::text(f)).await.is_err() {
                    return End::Lost;
                }
            }
            ch = phase.changed() => if ch.is_err() { return End::Stop },
        }
    }
}

/// Reconnects and rejoins after a loss, with phoenix.js's backoff; `None`
/// when the run stopped first.
async fn reconnect(
    target: &Target,
    stats: &Stats,
    spec: &Spec,
    phase: &mut watch::Receiver<Phase>,
    up: &watch::Receiver<bool>,
    refs: &mut u64,
) -> Option<Ws> {
    let live = &stats.live;
    let mut tries = 0;
    loop {
        tries += 1;
        tokio::select! {
            _ = tokio::time::sleep(reconnect_after(tries)) => {}
            _ = stopped(phase) => return None,
        }
        let up_now = *up.borrow();
        let t0 = Instant::now();
        let mut ws = match conn::connect(target, spec.idx).await {
            Ok(ws) => ws,
            Err(e) => {
                failed(stats, &e, up_now);
                continue;
            }
        };
        record(&mut stats.connect.lock(), t0.elapsed().as_micros() as u64);
        live.connects_ok.fetch_add(1, Relaxed);
        live.open.fetch_add(1, Relaxed);
        match join(&mut ws, &spec.topics, refs, stats, phase, true).await {
            Ok(()) => return Some(ws),
            Err(End::Stop) => {
                live.open.fetch_sub(1, Relaxed);
                return None;
            }
            Err(End::Lost) => {
                // Lost while joining: phoenix.js starts over, its backoff
                // reset by the open.
                live.open.fetch_sub(1, Relaxed);
                live.drops.fetch_add(1, Relaxed);
                tries = 0;
            }
        }
    }
}

/// Resolves once the run is told to stop.
async fn stopped(phase: &mut watch::Receiver<Phase>) {
    while *phase.borrow_and_update() != Phase::Stop {
        if phase.changed().await.is_err() {
            return;
        }
    }
}

/// One topic's join as phoenix.js drives it.
struct Pending<'a> {
    topic: &'a str,
    /// The ref of the join in flight, and when it was sent.
    sent: Option<(String, Instant)>,
    /// When to try again after an error or a timeout.
    retry_at: Option<Instant>,
    tries: u32,
}

/// Joins every topic on `ws`, all at once as phoenix.js does when a socket
/// opens; an error reply or no reply within [`JOIN_TIMEOUT`] is counted and
/// the join tried again after [`rejoin_after`]. `timed`: record each join's
/// latency (the storm's joins, not the setup's).
async fn join(
    ws: &mut Ws,
    topics: &[String],
    refs: &mut u64,
    stats: &Stats,
    phase: &mut watch::Receiver<Phase>,
    timed: bool,
) -> Result<(), End> {
    let live = &stats.live;
    let mut pending: Vec<Pending> = topics
        .iter()
        .map(|t| Pending {
            topic: t,
            sent: None,
            retry_at: Some(Instant::now()),
            tries: 0,
        })
        .collect();
    loop {
        let now = Instant::now();
        for p in pending.iter_mut() {
            if p.retry_at.is_some_and(|at| at <= now) {
                *refs += 1;
                let r = refs.to_string();
                let f = format!(r#"["{r}","{r}","{}","phx_join",{{}}]"#, p.topic);
                if ws.send(Message::text(f)).await.is_err() {
                    return Err(End::Lost);
                }
                p.sent = Some((r, Instant::now()));
                p.retry_at = None;
            }
            if let Some((_, at)) = &p.sent {
                if at.elapsed() >= JOIN_TIMEOUT {
                    live.join_errors.fetch_add(1, Relaxed);
                    p.sent = None;
                    p.tries += 1;
                    p.retry_at = Some(now + rejoin_after(p.tries));
                }
            }
        }
        pending.retain(|p| p.sent.is_some() || p.retry_at.is_some());
        if pending.is_empty() {
            return Ok(());
        }
        let wake = pending
            .iter()
            .filter_map(|p| {
                p.retry_at
                    .or(p.sent.as_ref().map(|(_, at)| *at + JOIN_TIMEOUT))
            })
            .min()
            .unwrap_or(now + JOIN_TIMEOUT);
        tokio::select! {
            m = ws.next() => {
                let text = match m {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Err(End::Lost),
                    Some(Ok(_)) => continue,
                };
                let Ok(Frame(_, Some(r), _, "phx_reply", payload)) =
                    serde_json::from_str::<Frame>(text.as_str())
                else {
                    continue;
                };
                let Some(p) = pending
                    .iter_mut()
                    .find(|p| p.sent.as_ref().is_some_and(|(s, _)| s == r))
                else {
                    continue;
                };
                let ok = serde_json::from_str::<Reply>(payload.get())
                    .is_ok_and(|reply| reply.status == "ok");
                let Some((_, at)) = p.sent.take() else { continue };
                if ok {
                    if timed {
                        stats.joined(at.elapsed().as_micros() as u64);
                    } else {
                        live.joins_ok.fetch_add(1, Relaxed);
                    }
                } else {
                    live.join_errors.fetch_add(1, Relaxed);
                    p.tries += 1;
                    p.retry_at = Some(Instant::now() + rejoin_after(p.tries));
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = stopped(phase) => return Err(End::Stop),
        }
    }
}

/// What the parent saw of the storm, for the report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Outcome {
    /// "restart" (the pod was ended and started again) or "client-drop".
    pub(crate) mode: &'static str,
    pub(crate) signal: Option<String>,
    /// Clients joined before the storm.
    pub(crate) clients: u64,
    pub(crate) new_gateway_pid: Option<u32>,
    /// From the storm's start (the signal, or the clients' drop) until the
    /// old process had exited, and until the new one listened.
    pub(crate) exited_after_secs: Option<f64>,
    pub(crate) listening_after_secs: f64,
    /// Until the run stopped waiting: every client rejoined, or the timeout.
    pub(crate) waited_secs: f64,
    pub(crate) timed_out: bool,
    /// Deltas of the machine's TCP counters over the storm
    /// (/proc/net/netstat, `nstat`'s TcpExt*).
    pub(crate) tcp: BTreeMap<String, u64>,
    /// CPU seconds of the gateway serving the storm (the new process from
    /// its start, or the same process over the storm), user and system.
    pub(crate) gateway_user_secs: Option<f64>,
    pub(crate) gateway_system_secs: Option<f64>,
    /// CPU seconds of loadtest (its workers and itself) over the storm.
    pub(crate) client_user_secs: f64,
    pub(crate) client_system_secs: f64,
    /// When the storm started (ns since the Unix epoch).
    #[serde(skip)]
    pub(crate) started_ns: u64,
}

/// The TcpExt counters a connect storm moves: accept queue full
/// (`ListenOverflows`, counted again in `ListenDrops`), SYN queue full.
const TCP_COUNTERS: [&str; 5] = [
    "ListenOverflows",
    "ListenDrops",
    "TCPReqQFullDrop",
    "TCPReqQFullDoCookies",
    "SyncookiesSent",
];

pub(crate) fn cpu_of(pids: &[u32]) -> anyhow::Result<(f64, f64)> {
    let mut sum = (0.0, 0.0);
    for &pid in pids {
        let (u, s) = procfs::cpu_split(pid)?;
        sum.0 += u;
        sum.1 += s;
    }
    Ok(sum)
}

/// The parent's side: starts the storm, ends and restarts the pod when a
/// restart command is given, and waits until every client joined again
/// (or `--rejoin-timeout`), measuring the machine around it.
pub(crate) async fn drive(
    cli: &Cli,
    a: &StormArgs,
    workers: &Workers,
    col: &mut Collector,
) -> anyhow::Result<Outcome> {
    let clients = col.total().storm_ready;
    let client_pids = workers.pids();
    let tcp_before = procfs::tcp_ext()?;
    let client_before = cpu_of(&client_pids)?;
    let old_pid = cli.gateway_pid.first().copied();
    let gw_before = match (&a.restart_cmd, old_pid) {
        (None, Some(pid)) => Some(procfs::cpu_split(pid)?),
        _ => None,
    };
    let addr = gateway_addr(cli).await?;
    let start = Instant::now();
    let started_ns = now_ns();
    workers.send(Control::Go);
    let (mut exited_after, mut new_pid) = (None, None);
    if let Some(cmd) = &a.restart_cmd {
        let pid = old_pid.context("--restart-cmd needs the running gateway's --gateway-pid")?;
        signal(pid, &a.signal)?;
        let deadline = start + a.rejoin_timeout;
        while !procfs::exited(pid) {
            if Instant::now() > deadline {
                bail!("gateway {pid} did not exit within --rejoin-timeout");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        exited_after = Some(start.elapsed().as_secs_f64());
        new_pid = Some(restart(cmd).await?);
        wait_listening(addr, deadline).await?;
    }
    let listening_after = start.elapsed().as_secs_f64();
    workers.send(Control::Up);
    col.pump(Some(start + a.rejoin_timeout), |c| {
        c.total().rejoined >= clients
    })
    .await;
    let waited = start.elapsed().as_secs_f64();
    let timed_out = col.total().rejoined < clients;
    let tcp_after = procfs::tcp_ext()?;
    let client_after = cpu_of(&client_pids)?;
    let gw = match (new_pid, gw_before, old_pid) {
        (Some(pid), _, _) => Some(procfs::cpu_split(pid)?),
        (None, Some((u, s)), Some(pid)) => {
            let (u2, s2) = procfs::cpu_split(pid)?;
            Some((u2 - u, s2 - s))
        }
        _ => None,
    };
    let tcp = TCP_COUNTERS
        .iter()
        .map(|&n| {
            let d = tcp_after.get(n).copied().unwrap_or(0);
            let b = tcp_before.get(n).copied().unwrap_or(0);
            (n.to_owned(), d.saturating_sub(b))
        })
        .collect();
    Ok(Outcome {
        mode: if a.restart_cmd.is_some() {
            "restart"
        } else {
            "client-drop"
        },
        signal: a.restart_cmd.as_ref().map(|_| a.signal.clone()),
        clients,
        new_gateway_pid: new_pid,
        exited_after_secs: exited_after,
        listening_after_secs: listening_after,
        waited_secs: waited,
        timed_out,
        tcp,
        gateway_user_secs: gw.map(|g| g.0),
        gateway_system_secs: gw.map(|g| g.1),
        client_user_secs: client_after.0 - client_before.0,
        client_system_secs: client_after.1 - client_before.1,
        started_ns,
    })
}

/// The address of the first `--url`, where the new process will listen.
pub(crate) async fn gateway_addr(cli: &Cli) -> anyhow::Result<SocketAddr> {
    let target = crate::target::resolve(cli, crate::cli::TransportKind::Websocket).await?;
    target
        .endpoints
        .first()
        .map(|(addr, _)| *addr)
        .context("no --url given")
}

pub(crate) fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .context("run kill")?;
    if !status.success() {
        bail!("kill -{name} {pid} failed ({status})");
    }
    Ok(())
}

/// Runs the restart command; the new pid is the last line it prints.
pub(crate) async fn restart(cmd: &str) -> anyhow::Result<u32> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("run --restart-cmd")?;
    let mut stdout = child.stdout.take().context("restart command stdout")?;
    let mut out = String::new();
    // EOF comes when every holder of the pipe is gone: a gateway started in
    // the background with its output not redirected would hold it for ever.
    tokio::time::timeout(Duration::from_secs(30), stdout.read_to_string(&mut out))
        .await
        .context("--restart-cmd still holds its standard output after 30 s: redirect the gateway's output")??;
    let status = child.wait().await?;
    if !status.success() {
        bail!("--restart-cmd failed ({status})");
    }
    let last = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    last.trim()
        .parse()
        .with_context(|| format!("--restart-cmd printed {last:?}, not the new gateway's pid"))
}

/// Until a TCP connection to `addr` is accepted: the new process listens.
pub(crate) async fn wait_listening(addr: SocketAddr, deadline: Instant) -> anyhow::Result<()> {
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the restarted gateway did not listen on {addr} in time");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_phoenix_js_default() {
        let waits: Vec<u64> = (1..=11)
            .map(|t| reconnect_after(t).as_millis() as u64)
            .collect();
        assert_eq!(
            waits,
            [10, 50, 100, 150, 200, 250, 500, 1000, 2000, 5000, 5000]
        );
        assert_eq!(rejoin_after(1), Duration::from_secs(1));
        assert_eq!(rejoin_after(4), Duration::from_secs(10));
    }

    #[test]
    fn failures_are_classified() {
        let refused =
            anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
                .context("tcp connect");
        assert_eq!(classify(&refused), Failure::Refused);
        let resp = tungstenite::http::Response::builder()
            .status(503)
            .body(None)
            .unwrap();
        let status =
            anyhow::Error::from(tungstenite::Error::Http(resp)).context("websocket handshake");
        assert_eq!(classify(&status), Failure::Status(503));
        assert_eq!(classify(&anyhow::anyhow!("timed out")), Failure::Other);

        let stats = Stats::default();
        failed(&stats, &refused, false);
        failed(&stats, &refused, true);
        failed(&stats, &status, false);
        let c = stats.live.snapshot();
        assert_eq!((c.attempts_down, c.refused), (1, 2));
    }
}
