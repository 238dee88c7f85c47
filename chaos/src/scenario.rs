//! One fault scenario from start to figures: the rig, the subscribers, the
//! probes and the publisher up; a steady warm-up; the fault and its repair;
//! the recovery watched; everything stopped; the records analysed.

use crate::analysis::{self, Affected, Losses, PodView, Recovery, Window};
use crate::fleet::{Fleet, FleetSpec, Shared, Snapshot};
use crate::probes::Sampler;
use crate::proxy::Mode;
use crate::publisher::{self, Publisher};
use crate::rig::{Rig, RigSpec};
use loadtest::stats::now_ns;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::sleep;

/// The faults, one per scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Fault {
    /// Redis SIGKILLed, started again (empty) on its port after `--down`.
    RedisKill,
    /// Redis SIGSTOPped for `--stop`, then SIGCONTed.
    RedisStop,
    /// Pod 1 SIGKILLed; its clients reconnect to the others.
    PodKill,
    /// Pod 0's link to Redis blackholed for `--cut`, then restored.
    LinkBlackhole,
    /// Pod 0's link to Redis reset (RST) and refused for `--down`, then restored.
    LinkReset,
    /// `CLUSTER FAILOVER` on the replica of the master of a third of the topics.
    ClusterFailover,
    /// That master SIGKILLed; its replica takes over.
    ClusterMasterKill,
}

impl Fault {
    pub(crate) const ALL: [Fault; 7] = [
        Fault::RedisKill,
        Fault::RedisStop,
        Fault::PodKill,
        Fault::LinkBlackhole,
        Fault::LinkReset,
        Fault::ClusterFailover,
        Fault::ClusterMasterKill,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Fault::RedisKill => "redis-kill",
            Fault::RedisStop => "redis-stop",
            Fault::PodKill => "pod-kill",
            Fault::LinkBlackhole => "link-blackhole",
            Fault::LinkReset => "link-reset",
            Fault::ClusterFailover => "cluster-failover",
            Fault::ClusterMasterKill => "cluster-master-kill",
        }
    }

    fn cluster(self) -> bool {
        matches!(self, Fault::ClusterFailover | Fault::ClusterMasterKill)
    }

    fn proxied(self) -> bool {
        matches!(self, Fault::LinkBlackhole | Fault::LinkReset)
    }
}

/// The load and the timings of a scenario.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Shape {
    pub(crate) pods: usize,
    pub(crate) subscribers: usize,
    pub(crate) topics: usize,
    pub(crate) rate: f64,
    pub(crate) connect_rate: f64,
    pub(crate) warmup: Duration,
    pub(crate) observe: Duration,
    /// Redis killed / link refused this long.
    pub(crate) down: Duration,
    /// Redis stopped this long.
    pub(crate) stop: Duration,
    /// Link blackholed this long.
    pub(crate) cut: Duration,
    pub(crate) sample_every: Duration,
}

/// Latency of one second of deliveries.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Tick {
    /// Seconds since the fault began (negative before).
    pub(crate) t: f64,
    pub(crate) deliveries: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

/// Everything a scenario measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Outcome {
    pub(crate) fault: Fault,
    pub(crate) shape: Shape,
    /// Fault start → repair (s).
    pub(crate) fault_secs: f64,
    pub(crate) affected: Affected,
    pub(crate) losses: Losses,
    pub(crate) recovery: Recovery,
    pub(crate) pods: Vec<PodView>,
    /// What the clients went through from the fault to the end.
    pub(crate) clients: Snapshot,
    /// Pods that exited without being killed by the scenario.
    pub(crate) crashed: Vec<usize>,
    pub(crate) timeline: Vec<Tick>,
}

/// Topic names under `room:` (public in config/example.toml).
fn topic(i: usize) -> String {
    format!("room:chaos:{i}")
}

/// The topics: on a cluster, as many on each master as can be (so a third
/// of them live on master 0, the one that fails).
async fn topics(rig: &mut Rig, n: usize) -> (Vec<String>, Vec<usize>) {
    if !matches!(rig.backend, crate::rig::Backend::Cluster(_)) {
        return ((0..n).map(topic).collect(), Vec::new());
    }
    let prefix = rig.prefix.clone();
    let cluster = rig.cluster();
    let mut by_owner: [Vec<String>; 3] = Default::default();
    let mut i = 0;
    while by_owner.iter().map(Vec::len).sum::<usize>() < n && i < 100 * n {
        let t = topic(i);
        let owner = cluster.owner(&format!("{prefix}{t}")).await;
        if by_owner[owner].len() < n.div_ceil(3) {
            by_owner[owner].push(t);
        }
        i += 1;
    }
    let mut names = Vec::new();
    let mut on_zero = Vec::new();
    for k in 0..n.div_ceil(3) {
        for (owner, list) in by_owner.iter().enumerate() {
            if let Some(t) = list.get(k) {
                if names.len() < n {
                    if owner == 0 {
                        on_zero.push(names.len());
                    }
                    names.push(t.clone());
                }
            }
        }
    }
    (names, on_zero)
}

/// One second of deliveries as the ticker takes it: (when, count,
/// [p50, p99, max] in ms).
type Second = (u64, u64, [f64; 3]);

/// Takes the latencies every second until stopped.
fn ticker(
    shared: Arc<Shared>,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<Vec<Second>>,
) {
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut out = Vec::new();
        let mut iv = tokio::time::interval(Duration::from_secs(1));
        iv.tick().await;
        loop {
            tokio::select! {
                _ = iv.tick() => {}
                _ = rx.changed() => break,
            }
            let h = shared.take_interval();
            let ms = |us: u64| us as f64 / 1000.0;
            out.push((
                now_ns(),
                h.len(),
                [
                    ms(h.value_at_quantile(0.5)),
                    ms(h.value_at_quantile(0.99)),
                    ms(h.max()),
                ],
            ));
        }
        out
    });
    (stop, task)
}

pub(crate) async fn run(fault: Fault, shape: &Shape, rig: &RigSpec) -> anyhow::Result<Outcome> {
    let spec = RigSpec {
        pods: shape.pods,
        cluster: fault.cluster(),
        proxied: fault.proxied().then_some(0),
        ..rig.clone()
    };
    let mut rig = Rig::start(&spec).await?;
    let (names, on_zero) = topics(&mut rig, shape.topics).await;
    let fleet = Fleet::start(FleetSpec {
        subscribers: shape.subscribers,
        topics: names.clone(),
        pods: rig.addrs(),
        connect_rate: shape.connect_rate,
        churn: None,
    });
    let setup = Duration::from_secs(60)
        + Duration::from_secs_f64(shape.subscribers as f64 / shape.connect_rate);
    anyhow::ensure!(
        fleet.joined(shape.subscribers as u64, setup).await,
        "{}: only {} of {} subscribers joined",
        fault.name(),
        fleet.shared.counters.snapshot().joins_ok,
        shape.subscribers
    );
    let sampler = Sampler::start(rig.probes(), shape.sample_every);
    let publisher = Publisher::start(publisher::Spec {
        redis: rig.publish_target(),
        channels: names.iter().map(|t| rig.channel(t)).collect(),
        rate: shape.rate,
    })?;
    let (tick_stop, ticks) = ticker(fleet.shared.clone());
    sleep(shape.warmup).await;

    let before = fleet.shared.counters.snapshot();
    let start_ns = now_ns();
    let (affected, dead) = inject(fault, shape, &mut rig, on_zero).await;
    let end_ns = now_ns();
    fleet.shared.set_mark(end_ns);
    sleep(shape.observe).await;

    let log = publisher.stop().await?;
    sleep(Duration::from_secs(2)).await;
    let stop_ns = now_ns();
    let clients = fleet.shared.counters.snapshot().since(&before);
    let records = fleet.stop().await;
    let samples = sampler.stop().await;
    tick_stop.send_replace(true);
    let ticks = ticks.await.unwrap_or_default();
    let mut crashed = Vec::new();
    for (i, p) in rig.pods.iter_mut().enumerate() {
        if !dead.contains(&i) && !p.alive() {
            crashed.push(i);
        }
    }

    let window = Window { start_ns, end_ns };
    Ok(Outcome {
        fault,
        shape: shape.clone(),
        fault_secs: (end_ns - start_ns) as f64 / 1e9,
        losses: analysis::losses(&log, &records, Some(window), &affected, stop_ns),
        recovery: analysis::recovery(&records, window, &affected, shape.pods, &dead),
        pods: analysis::pod_views(&samples, shape.pods, Some(window)),
        affected,
        clients,
        crashed,
        timeline: ticks
            .into_iter()
            .map(|(t, n, [p50, p99, max])| Tick {
                t: (t as f64 - start_ns as f64) / 1e9,
                deliveries: n,
                p50_ms: p50,
                p99_ms: p99,
                max_ms: max,
            })
            .collect(),
    })
}

/// Does the damage and repairs it; who it hits, and which pods it killed.
async fn inject(
    fault: Fault,
    shape: &Shape,
    rig: &mut Rig,
    on_zero: Vec<usize>,
) -> (Affected, Vec<usize>) {
    let proxy = |rig: &Rig, m: Mode| {
        if let Some(p) = &rig.proxy {
            p.set(m);
        }
    };
    match fault {
        Fault::RedisKill => {
            rig.redis().kill();
            sleep(shape.down).await;
            rig.redis().restart().await;
            (Affected::All, vec![])
        }
        Fault::RedisStop => {
            rig.redis().pause();
            sleep(shape.stop).await;
            rig.redis().resume();
            (Affected::All, vec![])
        }
        Fault::PodKill => {
            rig.pods[1].kill();
            (Affected::Pod(1), vec![1])
        }
        Fault::LinkBlackhole => {
            proxy(rig, Mode::Blackhole);
            sleep(shape.cut).await;
            proxy(rig, Mode::Forward);
            (Affected::Pod(0), vec![])
        }
        Fault::LinkReset => {
            proxy(rig, Mode::Reset);
            sleep(shape.down).await;
            proxy(rig, Mode::Forward);
            (Affected::Pod(0), vec![])
        }
        Fault::ClusterFailover => {
            let c = rig.cluster();
            let replica = c.replica_of(0).await;
            c.failover(replica).await;
            (Affected::Topics(on_zero), vec![])
        }
        Fault::ClusterMasterKill => {
            let c = rig.cluster();
            let replica = c.replica_of(0).await;
            c.kill(0);
            c.wait_master(replica).await;
            (Affected::Topics(on_zero), vec![])
        }
    }
}
