//! `loadtest`: a Phoenix-protocol (V2 JSON over WebSocket or long-poll) load
//! generator. See loadtest/README.md.

mod conn;
mod http;
mod longpoll;
mod publish;
mod report;
mod stats;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use conn::{Phase, Spec, Target};
use serde::{Deserialize, Serialize};
use stats::{encode_hist, new_hist, Counters, Stats, Tick, WorkerResult};
use std::net::IpAddr;
use std::process::Stdio;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::{mpsc, watch};

#[derive(Debug, Parser, Clone)]
#[command(
    name = "loadtest",
    version,
    about = "Phoenix-protocol load generator for the gateway"
)]
pub(crate) struct Cli {
    /// WebSocket endpoint of the gateway; several, comma-separated, spread the
    /// connections round-robin over several pods. With `--transport longpoll`
    /// `ws://H/P/websocket?Q` means `http://H/P/longpoll?Q`; an `http://` URL
    /// of the long-poll endpoint is taken as it is.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:4000/socket/websocket?vsn=2.0.0"
    )]
    url: Vec<String>,
    /// How clients connect: WebSocket, or Phoenix long-poll (two keep-alive
    /// HTTP connections per client: one for polls, one for POSTs).
    #[arg(long, global = true, value_enum, default_value = "websocket")]
    transport: TransportKind,
    /// How long the measured phase lasts: 10, 10s, 500ms, 2m.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Loopback source addresses to spread client sockets over (127.0.0.2,127.0.0.3,...).
    #[arg(long, global = true, value_delimiter = ',')]
    source_ips: Vec<IpAddr>,
    /// Connections per worker process; more than this many are spread over several processes.
    #[arg(long, global = true, default_value_t = 15000)]
    per_worker: u64,
    /// Write the full results as JSON here.
    #[arg(long, global = true)]
    json: Option<std::path::PathBuf>,
    /// Write a self-contained HTML report here.
    #[arg(long, global = true)]
    html: Option<std::path::PathBuf>,
    /// Exit non-zero when errors exceed this percentage of operations.
    #[arg(long, global = true, default_value_t = 1.0)]
    max_error_rate: f64,
    /// Gateway process ids whose memory (VmRSS) is read before and after.
    #[arg(long, global = true, value_delimiter = ',')]
    gateway_pid: Vec<u32>,
    /// Topic names are PREFIX:N (room:* is public in config/example.toml).
    #[arg(long, global = true, default_value = "room:lt")]
    topic_prefix: String,
    /// Bytes of padding in each published payload.
    #[arg(long, global = true, default_value_t = 0)]
    payload_pad: usize,
    /// How long receivers keep reading after publishing stops.
    #[arg(long, global = true, default_value = "1s", value_parser = parse_duration)]
    drain: Duration,
    #[arg(long, global = true, hide = true)]
    worker_index: Option<u64>,
    #[arg(long, global = true, hide = true)]
    worker_count: Option<u64>,
    #[command(subcommand)]
    scenario: Scenario,
}

/// The client transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TransportKind {
    Websocket,
    Longpoll,
}

impl TransportKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            TransportKind::Websocket => "websocket",
            TransportKind::Longpoll => "longpoll",
        }
    }
}

#[derive(Debug, Subcommand, Clone, Serialize)]
#[serde(tag = "scenario", rename_all = "lowercase")]
enum Scenario {
    /// Ramp N connections at R/s, each joining T topics; connect and join latency.
    Connect(ConnectArgs),
    /// Hold N joined connections for the duration; gateway memory per connection.
    Idle(ConnectArgs),
    /// S subscribers over T topics; one publisher at P msgs/s; publish->receive latency.
    Fanout(FanoutArgs),
    /// Every client pushes into one shared room at a rate and receives everyone's.
    Chat(ChatArgs),
}

#[derive(Debug, Args, Clone, Serialize)]
struct ConnectArgs {
    /// Number of connections.
    #[arg(short = 'n', long, default_value_t = 1000)]
    connections: u64,
    /// New connections per second.
    #[arg(short = 'r', long, default_value_t = 1000.0)]
    rate: f64,
    /// Topics each connection joins.
    #[arg(short = 't', long, default_value_t = 1)]
    topics: u64,
}

#[derive(Debug, Args, Clone, Serialize)]
struct FanoutArgs {
    /// Subscribers (connections), spread round-robin over the topics.
    #[arg(short = 's', long, default_value_t = 1000)]
    subscribers: u64,
    /// Number of topics.
    #[arg(short = 't', long, default_value_t = 1)]
    topics: u64,
    /// Published messages per second (over all topics).
    #[arg(short = 'p', long, default_value_t = 100.0)]
    rate: f64,
    /// How the publisher publishes.
    #[arg(long, value_enum, default_value = "redis")]
    via: publish::Via,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// The gateway's [redis] prefix.
    #[arg(long, default_value = "phx:")]
    prefix: String,
    #[arg(long, default_value = "http://127.0.0.1:4000/api/broadcast")]
    api_url: String,
    #[arg(
        long,
        env = "GATEWAY_API_KEY",
        default_value = "",
        hide_env_values = true
    )]
    #[serde(skip)]
    api_key: String,
    /// Subscribers connected per second.
    #[arg(long, default_value_t = 2000.0)]
    connect_rate: f64,
}

#[derive(Debug, Args, Clone, Serialize)]
struct ChatArgs {
    /// Clients in the room.
    #[arg(short = 'c', long, default_value_t = 50)]
    clients: u64,
    /// Messages each client pushes per second.
    #[arg(short = 'p', long, default_value_t = 1.0)]
    rate: f64,
    /// Clients connected per second.
    #[arg(long, default_value_t = 2000.0)]
    connect_rate: f64,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    if !(v >= 0.0 && v.is_finite()) {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * mul))
}

impl Cli {
    /// (connections, connect rate per second, topics, topics per connection, push interval)
    fn shape(&self) -> (u64, f64, u64, u64, Option<Duration>) {
        match &self.scenario {
            Scenario::Connect(a) | Scenario::Idle(a) => {
                (a.connections, a.rate, a.topics.max(1), a.topics, None)
            }
            Scenario::Fanout(a) => (a.subscribers, a.connect_rate, a.topics.max(1), 1, None),
            Scenario::Chat(a) => (
                a.clients,
                a.connect_rate,
                1,
                1,
                Some(Duration::from_secs_f64(1.0 / a.rate.max(0.001))),
            ),
        }
    }

    fn name(&self) -> &'static str {
        match self.scenario {
            Scenario::Connect(_) => "connect",
            Scenario::Idle(_) => "idle",
            Scenario::Fanout(_) => "fanout",
            Scenario::Chat(_) => "chat",
        }
    }

    fn topic(&self, i: u64) -> String {
        format!("{}:{i}", self.topic_prefix)
    }
}

/// Parent -> worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Go,
    Halt,
    Stop,
}

/// Worker -> parent, one JSON line each on the worker's stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Out {
    Ready,
    Progress(Counters),
    Result(Box<WorkerResult>),
}

async fn resolve(url: &str) -> anyhow::Result<std::net::SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("http://"))
        .context("--url must start with ws:// or http://")?;
    let hostport = rest.split(['/', '?']).next().unwrap_or(rest);
    tokio::net::lookup_host(hostport)
        .await?
        .next()
        .with_context(|| format!("cannot resolve {hostport}"))
}

/// Where connections of `transport` go: every `--url` (as that transport's
/// URL), resolved once.
async fn target(cli: &Cli, transport: TransportKind) -> anyhow::Result<Target> {
    let mut endpoints = Vec::with_capacity(cli.url.len());
    for url in &cli.url {
        let url = match transport {
            TransportKind::Websocket => longpoll::websocket_url(url)?,
            TransportKind::Longpoll => longpoll::longpoll_url(url)?,
        };
        endpoints.push((resolve(&url).await?, url));
    }
    Ok(Target {
        endpoints,
        source_ips: cli.source_ips.clone(),
    })
}

/// One worker's share of the connections: global indices `index, index+count, ...`.
async fn worker(
    cli: Arc<Cli>,
    index: u64,
    count: u64,
    mut ctrl: mpsc::UnboundedReceiver<Control>,
    out: mpsc::UnboundedSender<Out>,
) -> anyhow::Result<()> {
    let target = Arc::new(target(&cli, cli.transport).await?);
    let stats = Arc::new(Stats::default());
    let (n, rate, ntopics, per_conn, push_every) = cli.shape();
    let is_connect = matches!(cli.scenario, Scenario::Connect(_));
    let mine: Vec<u64> = (index..n).step_by(count as usize).collect();
    let rate = (rate / count as f64).max(0.001);
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);

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

    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    for (k, &g) in mine.iter().enumerate() {
        let at = start + Duration::from_secs_f64(k as f64 / rate);
        if is_connect && start.elapsed() > cli.duration {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let topics = match &cli.scenario {
            Scenario::Connect(_) | Scenario::Idle(_) => (0..per_conn)
                .map(|j| cli.topic((g * per_conn + j) % ntopics.max(1)))
                .collect(),
            Scenario::Fanout(_) => vec![cli.topic(g % ntopics)],
            Scenario::Chat(_) => vec![cli.topic(0)],
        };
        let spec = Spec {
            idx: g,
            topics,
            push_every,
            pad: cli.payload_pad,
        };
        let (t, st, ph) = (target.clone(), stats.clone(), phase_rx.clone());
        match cli.transport {
            TransportKind::Websocket => tasks.spawn(conn::run(t, st, spec, ph)),
            TransportKind::Longpoll => tasks.spawn(longpoll::run(t, st, spec, ph)),
        };
    }
    let spawned = tasks.len() as u64;
    // Wait until every connection has connected and joined (or failed).
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.live.settled.load(Relaxed) < spawned && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = out.send(Out::Ready);
    while let Some(c) = ctrl.recv().await {
        match c {
            Control::Go => {
                let _ = phase_tx.send(Phase::Go);
            }
            Control::Halt => {
                let _ = phase_tx.send(Phase::Halt);
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
    };
    let _ = out.send(Out::Result(Box::new(result)));
    Ok(())
}

/// Runs as a child worker: control on stdin, JSON lines on stdout.
async fn worker_main(cli: Cli, index: u64, count: u64) -> anyhow::Result<()> {
    let (ctx, crx) = mpsc::unbounded_channel();
    let (otx, mut orx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            let c = match l.trim() {
                "go" => Control::Go,
                "halt" => Control::Halt,
                _ => Control::Stop,
            };
            if ctx.send(c).is_err() {
                return;
            }
        }
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

/// The parent's handle on one worker, in-process or a child process.
struct Handle {
    ctrl: Box<dyn Fn(Control) + Send + Sync>,
    _child: Option<tokio::process::Child>,
}

fn spawn_workers(
    cli: &Arc<Cli>,
    count: u64,
    out: mpsc::UnboundedSender<(usize, Out)>,
) -> anyhow::Result<Vec<Handle>> {
    let mut handles = Vec::new();
    if count == 1 {
        let (ctx, crx) = mpsc::unbounded_channel();
        let (otx, mut orx) = mpsc::unbounded_channel();
        let cli = cli.clone();
        tokio::spawn(async move {
            if let Err(e) = worker(cli, 0, 1, crx, otx).await {
                eprintln!("worker failed: {e:#}");
            }
        });
        tokio::spawn(async move {
            while let Some(o) = orx.recv().await {
                if out.send((0, o)).is_err() {
                    break;
                }
            }
        });
        handles.push(Handle {
            ctrl: Box::new(move |c| {
                let _ = ctx.send(c);
            }),
            _child: None,
        });
        return Ok(handles);
    }
    let exe = std::env::current_exe()?;
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    for i in 0..count {
        let mut child = tokio::process::Command::new(&exe)
            .args(&args)
            .arg("--worker-index")
            .arg(i.to_string())
            .arg("--worker-count")
            .arg(count.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawn worker")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let mut stdin = child.stdin.take().context("worker stdin")?;
        let out = out.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                match serde_json::from_str::<Out>(&l) {
                    Ok(o) => {
                        if out.send((i as usize, o)).is_err() {
                            break;
                        }
                    }
                    Err(e) => eprintln!("worker {i}: bad line ({e}): {l:.200}"),
                }
            }
        });
        let (ctx, mut crx) = mpsc::unbounded_channel::<Control>();
        tokio::spawn(async move {
            while let Some(c) = crx.recv().await {
                let s = match c {
                    Control::Go => "go\n",
                    Control::Halt => "halt\n",
                    Control::Stop => "stop\n",
                };
                if stdin.write_all(s.as_bytes()).await.is_err() {
                    break;
                }
                let _ = stdin.flush().await;
            }
        });
        handles.push(Handle {
            ctrl: Box::new(move |c| {
                let _ = ctx.send(c);
            }),
            _child: Some(child),
        });
    }
    Ok(handles)
}

/// Collects worker messages, printing a progress line once a second.
struct Collector {
    rx: mpsc::UnboundedReceiver<(usize, Out)>,
    progress: Vec<Counters>,
    ready: Vec<bool>,
    results: Vec<Option<WorkerResult>>,
    started: Instant,
    last_print: Instant,
    last_ops: u64,
    parent: Arc<Stats>,
}

impl Collector {
    fn total(&self) -> Counters {
        let mut t = self.parent.live.snapshot();
        for p in &self.progress {
            t.add(p);
        }
        t
    }

    fn print(&mut self) {
        let t = self.total();
        let ops = t.joins_ok + t.deliveries;
        let dt = self.last_print.elapsed().as_secs_f64().max(0.001);
        let errors =
            t.connect_errors + t.join_errors + t.disconnects + t.push_errors + t.publish_errors;
        eprintln!(
            "[{:>5.1}s] open {} joins {} published {} deliveries {} ({:.0} ops/s) dup {} errors {}",
            self.started.elapsed().as_secs_f64(),
            t.open,
            t.joins_ok,
            t.published + t.pushes_sent,
            t.deliveries,
            (ops - self.last_ops.min(ops)) as f64 / dt,
            t.duplicates,
            errors
        );
        self.last_ops = ops;
        self.last_print = Instant::now();
    }

    /// Handles messages until `done` holds or `until` passes.
    async fn pump(&mut self, until: Option<Instant>, done: impl Fn(&Collector) -> bool) {
        loop {
            if done(self) {
                return;
            }
            let now = Instant::now();
            if let Some(u) = until {
                if now >= u {
                    return;
                }
            }
            let next_print =
                (self.last_print + Duration::from_secs(1)).min(now + Duration::from_millis(50));
            let wake = until.map_or(next_print, |u| u.min(next_print));
            tokio::select! {
                m = self.rx.recv() => match m {
                    Some((i, Out::Ready)) => self.ready[i] = true,
                    Some((i, Out::Progress(c))) => self.progress[i] = c,
                    Some((i, Out::Result(r))) => { self.progress[i] = r.counters.clone(); self.results[i] = Some(*r); }
                    None => return,
                },
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            if self.last_print.elapsed() >= Duration::from_secs(1) {
                self.print();
            }
        }
    }
}

/// VmRSS of a process in bytes.
fn rss(pid: u32) -> anyhow::Result<u64> {
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

fn total_rss(pids: &[u32]) -> anyhow::Result<u64> {
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

fn total_cpu(pids: &[u32]) -> anyhow::Result<f64> {
    pids.iter().map(|&p| cpu_secs(p)).sum()
}

async fn parent_main(cli: Cli) -> anyhow::Result<i32> {
    let cli = Arc::new(cli);
    let (n, _, ntopics, _, _) = cli.shape();
    let count = n.div_ceil(cli.per_worker.max(1)).max(1);
    let rss_before = total_rss(&cli.gateway_pid)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let handles = spawn_workers(&cli, count, tx)?;
    let parent_stats = Arc::new(Stats::default());
    let mut col = Collector {
        rx,
        progress: vec![Counters::default(); count as usize],
        ready: vec![false; count as usize],
        results: (0..count).map(|_| None).collect(),
        started: Instant::now(),
        last_print: Instant::now(),
        last_ops: 0,
        parent: parent_stats.clone(),
    };
    let send = |c: Control| handles.iter().for_each(|h| (h.ctrl)(c));
    let setup_deadline = Instant::now()
        + Duration::from_secs(120)
        + Duration::from_secs_f64(n as f64 / cli.shape().1.max(1.0));
    col.pump(Some(setup_deadline), |c| c.ready.iter().all(|r| *r))
        .await;
    if !col.ready.iter().all(|r| *r) {
        bail!("workers did not get ready in time");
    }
    let setup_secs = col.started.elapsed().as_secs_f64();
    let go_at = Instant::now();
    let go_ns = stats::now_ns();
    let cpu_before = total_cpu(&cli.gateway_pid)?;
    send(Control::Go);
    let mut published: Option<Vec<u64>> = None;
    let mut rss_after = None;
    match &cli.scenario {
        Scenario::Connect(_) => {}
        Scenario::Idle(_) => {
            col.pump(Some(go_at + cli.duration), |_| false).await;
            rss_after = Some(total_rss(&cli.gateway_pid)?);
        }
        Scenario::Fanout(a) => {
            // The push publisher is a WebSocket client whatever --transport says.
            let target = target(&cli, TransportKind::Websocket).await?;
            let spec = publish::PublishSpec {
                via: a.via,
                topics: (0..ntopics).map(|t| cli.topic(t)).collect(),
                rate: a.rate,
                duration: cli.duration,
                pad: cli.payload_pad,
                redis_url: a.redis_url.clone(),
                prefix: a.prefix.clone(),
                api_url: a.api_url.clone(),
                api_key: a.api_key.clone(),
            };
            let ps = parent_stats.clone();
            // The publisher gets a thread and runtime of its own, so that a
            // busy receiving side does not delay its sends.
            let (ptx, mut prx) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name("publisher".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(anyhow::Error::from);
                    let r = rt.and_then(|rt| rt.block_on(publish::run(&spec, &target, &ps)));
                    let _ = ptx.send(r);
                })?;
            let mut res = None;
            while res.is_none() {
                col.pump(Some(Instant::now() + Duration::from_millis(100)), |_| false)
                    .await;
                match prx.try_recv() {
                    Ok(r) => res = Some(r),
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
                    Err(_) => bail!("the publisher thread died"),
                }
            }
            published = res.map(|r| r.map(Some)).transpose()?.flatten();
        }
        Scenario::Chat(_) => {
            col.pump(Some(go_at + cli.duration), |_| false).await;
        }
    }
    let publish_secs = go_at.elapsed().as_secs_f64();
    if !matches!(cli.scenario, Scenario::Connect(_) | Scenario::Idle(_)) {
        send(Control::Halt);
        col.pump(Some(Instant::now() + cli.drain), |_| false).await;
    }
    // The gateway's CPU over the measured phase and the drain, before closing.
    let gateway_cpu_secs =
        (!cli.gateway_pid.is_empty()).then(|| total_cpu(&cli.gateway_pid).map(|c| c - cpu_before));
    let gateway_cpu_secs = gateway_cpu_secs.transpose()?;
    send(Control::Stop);
    col.pump(Some(Instant::now() + Duration::from_secs(30)), |c| {
        c.results.iter().all(|r| r.is_some())
    })
    .await;
    col.print();
    let results: Vec<WorkerResult> = col.results.iter_mut().filter_map(|r| r.take()).collect();
    if results.len() as u64 != count {
        bail!("only {} of {count} workers reported results", results.len());
    }
    let mut merged = stats::merge(&results)?;
    merged.counters.add(&parent_stats.live.snapshot());
    // Deliveries/s are over the time from the start of publishing to the last
    // delivery (which may fall in the drain period when receivers lag).
    let run_secs = if merged.last_delivery_ns > go_ns {
        publish_secs.max((merged.last_delivery_ns - go_ns) as f64 / 1e9)
    } else {
        publish_secs
    };
    drop(handles);

    // Expected deliveries: each published message once per joined subscriber of its topic.
    let expected = match (&cli.scenario, &published) {
        (Scenario::Fanout(a), Some(p)) => {
            let mut e = 0;
            for (t, &c) in p.iter().enumerate() {
                let subs = (0..a.subscribers)
                    .filter(|g| g % ntopics == t as u64)
                    .count() as u64;
                e += c * subs;
            }
            Some(e)
        }
        (Scenario::Chat(_), _) => Some(merged.counters.pushes_sent * merged.counters.joins_ok),
        _ => None,
    };
    let rep = report::Report::new(
        &cli,
        merged,
        report::Extra {
            workers: count,
            setup_secs,
            run_secs,
            expected,
            rss_before: (!cli.gateway_pid.is_empty()).then_some(rss_before),
            rss_after,
            gateway_cpu_secs,
            connections: n,
        },
    );
    print!("{}", rep.table());
    if let Some(p) = &cli.json {
        std::fs::write(p, serde_json::to_string_pretty(&rep.json())?)
            .with_context(|| format!("write {}", p.display()))?;
    }
    if let Some(p) = &cli.html {
        std::fs::write(p, rep.html()?).with_context(|| format!("write {}", p.display()))?;
    }
    if rep.error_rate() * 100.0 > cli.max_error_rate {
        eprintln!(
            "loadtest: error rate {:.3}% exceeds --max-error-rate {}%",
            rep.error_rate() * 100.0,
            cli.max_error_rate
        );
        return Ok(2);
    }
    Ok(0)
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async move {
        match (cli.worker_index, cli.worker_count) {
            (Some(i), Some(c)) => match worker_main(cli, i, c).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("loadtest worker: {e:#}");
                    1
                }
            },
            _ => match parent_main(cli).await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("loadtest: {e:#}");
                    1
                }
            },
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn histograms_survive_serialization_and_merge() {
        let mut a = new_hist();
        let mut b = new_hist();
        for v in 1..=1000 {
            stats::record(&mut a, v);
            stats::record(&mut b, v * 1000);
        }
        let r = |h: &hdrhistogram::Histogram<u64>| WorkerResult {
            counters: Counters {
                deliveries: h.len(),
                ..Counters::default()
            },
            latency: encode_hist(h),
            connect: encode_hist(&new_hist()),
            join: encode_hist(&new_hist()),
            timeline: vec![Tick {
                unix_sec: 7,
                ops: h.len(),
                hist: encode_hist(h),
            }],
            last_delivery_ns: h.max(),
        };
        let m = stats::merge(&[r(&a), r(&b)]).unwrap();
        assert_eq!(m.counters.deliveries, 2000);
        assert_eq!(m.latency.len(), 2000);
        assert_eq!(m.latency.max(), b.max());
        assert_eq!(m.timeline.len(), 1);
        assert_eq!(m.timeline[0].1, 2000);
        assert_eq!(m.last_delivery_ns, b.max());
    }
}
