//! A worker: one process's share of the connections, driven through the
//! run's phases by [`Control`] messages, reporting [`Out`] messages (progress
//! once a second, then its result). Also the two ends of the line protocol
//! that carries both over a child worker's stdin and stdout.
//!
//! A worker only opens, drives and measures its own connections. It must not
//! spawn processes, publish, merge other workers' results or decide the run's
//! outcome; the parent does.

use crate::cli::{Cli, Scenario, TransportKind};
use crate::conn::{self, Phase, Spec};
use crate::longpoll;
use crate::presence_join::{self, Role};
use crate::recover;
use crate::stats::{self, encode_hist, new_hist, Counters, Stats, Tick, WorkerResult};
use crate::storm;
use crate::target;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::{mpsc, watch};

/// Parent -> worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Go,
    Halt,
    Stop,
    /// reconnect-storm: the gateway listens again.
    Up,
}

impl Control {
    /// Its line on a child worker's stdin.
    pub(crate) fn line(self) -> &'static str {
        match self {
            Control::Go => "go\n",
            Control::Halt => "halt\n",
            Control::Stop => "stop\n",
            Control::Up => "up\n",
        }
    }

    /// Anything unknown stops, so a confused parent ends its workers rather
    /// than leaving them running.
    fn parse(line: &str) -> Control {
        match line.trim() {
            "go" => Control::Go,
            "halt" => Control::Halt,
            "up" => Control::Up,
            _ => Control::Stop,
        }
    }
}

/// Worker -> parent, one JSON line each on the worker's stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Out {
    Ready,
    Progress(Counters),
    Result(Box<WorkerResult>),
}

/// One worker's share of the connections: global indices `index, index+count, ...`.
pub(crate) async fn worker(
    cli: Arc<Cli>,
    index: u64,
    count: u64,
    mut ctrl: mpsc::UnboundedReceiver<Control>,
    out: mpsc::UnboundedSender<Out>,
) -> anyhow::Result<()> {
    anyhow::ensure!(count > 0, "a run needs at least one worker");
    let target = Arc::new(target::resolve(&cli, cli.transport).await?);
    let stats = Arc::new(Stats::default());
    let (n, rate, _, _, push_every) = cli.shape();
    let is_connect = matches!(cli.scenario, Scenario::Connect(_));
    let mine: Vec<u64> = (index..n).step_by(count as usize).collect();
    let rate = (rate / count as f64).max(0.001);
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
    let (up_tx, up_rx) = watch::channel(false);
    let storm_drops = match &cli.scenario {
        Scenario::ReconnectStorm(a) => {
            anyhow::ensure!(
                cli.transport == TransportKind::Websocket,
                "reconnect-storm runs over WebSocket only"
            );
            Some(a.restart_cmd.is_none())
        }
        Scenario::Recover(_) => {
            anyhow::ensure!(
                cli.transport == TransportKind::Websocket,
                "recover runs over WebSocket only"
            );
            None
        }
        _ => None,
    };
    let recovering = matches!(cli.scenario, Scenario::Recover(_));

    // Progress and timeline, once a second.
    let timeline = Arc::new(parking_lot::Mutex::new(Vec::<Tick>::new()));
    let ticker = {
        let (stats, out, timeline) = (stats.clone(), out.clone(), timeline.clone());
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(Duration::from_secs(1));
            iv.tick().await;
            let mut last_ops = 0;
            loop {
                iv.tick().await;
                let c = stats.live.snapshot();
                let ops = c.joins_ok + c.deliveries;
                let h = std::mem::replace(&mut *stats.interval.lock(), new_hist());
                timeline.lock().push(Tick {
                    unix_sec: stats::now_ns() / 1_000_000_000 - 1,
                    ops: ops - last_ops,
                    hist: encode_hist(&h),
                });
                last_ops = ops;
                if out.send(Out::Progress(c)).is_err() {
                    break;
                }
            }
        })
    };

    // presence-join: (present users, joins per second); its joiners wait for Go.
    let presence = match &cli.scenario {
        Scenario::PresenceJoin(a) => Some((a.present, a.rate.max(0.001))),
        _ => None,
    };
    let shared = Arc::new(presence_join::Shared::default());
    let mut tasks = tokio::task::JoinSet::new();
    // Connections that join during setup, which Ready waits for.
    let mut settling = 0;
    let start = Instant::now();
    for (k, &g) in mine.iter().enumerate() {
        if let Some((present, jrate)) = presence {
            if g >= present {
                let after = Duration::from_secs_f64((g - present) as f64 / jrate);
                let role = Role::Joiner { after };
                let (t, st, sh, ph) = (
                    target.clone(),
                    stats.clone(),
                    shared.clone(),
                    phase_rx.clone(),
                );
                tasks.spawn(presence_join::run(t, st, sh, g, cli.topic(0), role, ph));
                continue;
            }
        }
        let at = start + Duration::from_secs_f64(k as f64 / rate);
        if is_connect && start.elapsed() > cli.duration {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let spec = Spec {
            idx: g,
            topics: cli.topics_of(g),
            push_every,
            pad: cli.payload_pad,
            join_user: cli.join_user,
        };
        let (t, st, ph) = (target.clone(), stats.clone(), phase_rx.clone());
        settling += 1;
        if presence.is_some() {
            // One observer per pod: connection g goes to pod g mod pods.
            let role = Role::Present {
                observer: g < target.endpoints.len() as u64,
            };
            let sh = shared.clone();
            tasks.spawn(presence_join::run(t, st, sh, g, cli.topic(0), role, ph));
            continue;
        }
        match (storm_drops, cli.transport) {
            _ if recovering => tasks.spawn(recover::run(t, st, spec, ph, up_rx.clone())),
            (Some(drop_on_go), _) => {
                tasks.spawn(storm::run(t, st, spec, ph, up_rx.clone(), drop_on_go))
            }
            (None, TransportKind::Websocket) => tasks.spawn(conn::run(t, st, spec, ph)),
            (None, TransportKind::Longpoll) => tasks.spawn(longpoll::run(t, st, spec, ph)),
        };
    }
    let spawned: u64 = settling;
    // Wait until every connection has connected and joined (or failed).
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.live.settled.load(Relaxed) < spawned && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The counters as of ready, so the parent knows them before it goes on.
    let _ = out.send(Out::Progress(stats.live.snapshot()));
    let _ = out.send(Out::Ready);
    while let Some(c) = ctrl.recv().await {
        match c {
            Control::Go => {
                shared.go.get_or_init(Instant::now);
                let _ = phase_tx.send(Phase::Go);
            }
            Control::Halt => {
                let _ = phase_tx.send(Phase::Halt);
            }
            Control::Up => {
                let _ = up_tx.send(true);
            }
            Control::Stop => break,
        }
    }
    let _ = phase_tx.send(Phase::Stop);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    ticker.abort();
    let mut counters = stats.live.snapshot();
    counters.settled = 0;
    let mut tl = std::mem::take(&mut *timeline.lock());
    let h = std::mem::replace(&mut *stats.interval.lock(), new_hist());
    let last: u64 = tl.iter().map(|t| t.ops).sum();
    tl.push(Tick {
        unix_sec: stats::now_ns() / 1_000_000_000,
        ops: (counters.joins_ok + counters.deliveries).saturating_sub(last),
        hist: encode_hist(&h),
    });
    let result = WorkerResult {
        counters,
        latency: encode_hist(&stats.latency.lock()),
        connect: encode_hist(&stats.connect.lock()),
        join: encode_hist(&stats.join.lock()),
        timeline: tl,
        last_delivery_ns: stats.last_delivery_ns.load(Relaxed),
        presence: presence.map(|_| shared.result()),
        rejoin: encode_hist(&stats.rejoin.lock()),
        last_rejoin_ns: stats.last_rejoin_ns.load(Relaxed),
        replay: encode_hist(&stats.replay.lock()),
    };
    let _ = out.send(Out::Result(Box::new(result)));
    Ok(())
}

/// Runs as a child worker: control on stdin, JSON lines on stdout.
pub(crate) async fn worker_main(cli: Cli, index: u64, count: u64) -> anyhow::Result<()> {
    let (ctx, crx) = mpsc::unbounded_channel();
    let (otx, mut orx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if ctx.send(Control::parse(&l)).is_err() {
                return;
            }
        }
        // The parent is gone (or closed our stdin): finish and report.
        let _ = ctx.send(Control::Stop);
    });
    let w = tokio::spawn(worker(Arc::new(cli), index, count, crx, otx));
    let mut stdout = tokio::io::stdout();
    while let Some(o) = orx.recv().await {
        let mut line = serde_json::to_string(&o)?;
        line.push('\n');
        stdout.write_all(line.as_bytes()).await?;
        stdout.flush().await?;
    }
    w.await??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_lines_round_trip_and_unknown_lines_stop() {
        for c in [Control::Go, Control::Halt, Control::Stop, Control::Up] {
            assert_eq!(Control::parse(c.line()), c);
        }
        assert_eq!(Control::parse("  go \r"), Control::Go);
        assert_eq!(Control::parse("what"), Control::Stop);
        assert_eq!(Control::parse(""), Control::Stop);
    }

    #[test]
    fn out_lines_round_trip() {
        let line = serde_json::to_string(&Out::Ready).unwrap();
        assert_eq!(line, r#""ready""#);
        assert!(matches!(serde_json::from_str(&line).unwrap(), Out::Ready));
        let c = Counters {
            deliveries: 3,
            ..Counters::default()
        };
        let line = serde_json::to_string(&Out::Progress(c)).unwrap();
        assert!(line.starts_with(r#"{"progress":{"#), "{line}");
        match serde_json::from_str(&line).unwrap() {
            Out::Progress(c) => assert_eq!(c.deliveries, 3),
            o => panic!("{o:?}"),
        }
    }
}
