//! `push-rtt`: what a client's push (or join) costs on its way to a backend
//! and back, for `make bench-backends` (loadtest/backends.sh,
//! docs/performance.md#backends). Part of the benchmarks, not the product.
//!
//! Three roles, one binary, so the bench measures the gateway rather than a
//! slow stand-in backend:
//!
//! - `load`: N WebSocket clients (Phoenix V2 JSON), each joined to its own
//!   topic, push (or join and leave) on an **open-loop** schedule: operation
//!   k of client i is due at `start + (k + i/N) * N/rate` whatever the
//!   replies do, and its latency runs from that due time to the reply, so a
//!   slow gateway cannot lower the offered rate and hide its own queueing
//!   (coordinated omission). Only operations due in the measured window
//!   (after `--warmup`) count; replies are awaited `--drain` after it, the
//!   rest count as timeouts. CPU of `--gateway-pid`, `--redis-pid` and
//!   `--other-pid` is read from /proc at the window's edges.
//! - `worker`: a backend for `mode = "forward"`: XREADGROUP COUNT/BLOCK, then
//!   one pipeline of PUBLISH answers and one XACK per batch.
//! - `hook`: an HTTP/1.1 keep-alive server answering join, connect and push
//!   hooks at once (bodies parsed as JSON, signatures not checked).
//!
//! Everything from the network is parsed without panicking: a bad frame or
//! request is counted or answered 400, never unwrapped.

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use loadtest::conn::{connect, Frame, Target};
use loadtest::procfs;
use loadtest::stats::{new_hist, record};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Parser)]
#[command(
    name = "push-rtt",
    about = "Push/join round trips through forward, hook and broadcast rules (make bench-backends)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Clients pushing (or joining) at a fixed total rate; reports latency and CPU.
    Load(LoadArgs),
    /// A Redis stream consumer answering every forwarded push.
    Worker(WorkerArgs),
    /// An HTTP server answering connect, join and push hooks at once.
    Hook(HookArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Op {
    /// `new_msg` pushes to the client's joined topic: push sent → its reply.
    Push,
    /// A leave and a join of the client's topic: join sent → its reply.
    Join,
}

#[derive(Debug, Args)]
struct LoadArgs {
    #[arg(long, default_value = "ws://127.0.0.1:4000/socket/websocket?vsn=2.0.0")]
    url: String,
    /// Loopback addresses the clients bind to, round-robin.
    #[arg(long, value_delimiter = ',')]
    source_ips: Vec<IpAddr>,
    #[arg(long, default_value_t = 100)]
    clients: u32,
    /// Operations per second, all clients together.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    #[arg(long, value_enum, default_value = "push")]
    op: Op,
    /// Client i uses the topic `PREFIX:i`.
    #[arg(long, default_value = "bench:rtt")]
    topic_prefix: String,
    #[arg(long, default_value = "new_msg")]
    event: String,
    /// Bytes of padding in each push's payload.
    #[arg(long, default_value_t = 0)]
    pad: usize,
    /// The measured window.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Load before the window, not counted (connections, Redis and the worker warm up).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    warmup: Duration,
    /// How long replies are awaited after the window; later ones are timeouts.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    drain: Duration,
    #[arg(long, value_delimiter = ',')]
    gateway_pid: Vec<u32>,
    #[arg(long)]
    redis_pid: Option<u32>,
    /// Other processes whose CPU the window should report (worker, hook server).
    #[arg(long, value_delimiter = ',')]
    other_pid: Vec<u32>,
    /// A name for the run, kept in the output.
    #[arg(long, default_value = "")]
    label: String,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct WorkerArgs {
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// The stream's key, prefix included (`phx:in:chat`).
    #[arg(long, default_value = "phx:in:chat")]
    stream: String,
    #[arg(long, default_value = "bench")]
    group: String,
    #[arg(long, default_value = "push-rtt")]
    consumer: String,
    /// Entries per XREADGROUP.
    #[arg(long, default_value_t = 500)]
    count: usize,
    #[arg(long, default_value_t = 1000)]
    block_ms: u64,
    /// Also broadcast each push's payload to its topic (as a chat backend does).
    #[arg(long)]
    broadcast: bool,
}

#[derive(Debug, Args)]
struct HookArgs {
    #[arg(long, default_value = "127.0.0.1:4100")]
    listen: SocketAddr,
    /// Answer each push with a broadcast of its payload to its topic.
    #[arg(long)]
    broadcast: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.cmd {
        Cmd::Load(a) => rt.block_on(load(a)),
        Cmd::Worker(a) => rt.block_on(worker(a)),
        Cmd::Hook(a) => rt.block_on(hook(a)),
    }
}

// ---------------------------------------------------------------- load

/// What one client saw, merged at the end.
#[derive(Debug)]
struct ClientResult {
    hist: Histogram<u64>,
    /// Due time → the frame handed to the socket: how far the load
    /// generator itself fell behind its schedule (part of `hist`).
    lag: Histogram<u64>,
    sent: u64,
    ok: u64,
    error: u64,
    timeouts: u64,
    reasons: BTreeMap<String, u64>,
    broadcasts: u64,
    failure: Option<String>,
}

/// An operation awaiting its reply: when it was due, whether it is measured.
type Pending = Mutex<HashMap<u64, (Instant, bool)>>;

#[derive(Debug, Deserialize)]
struct ReplyPayload<'a> {
    status: &'a str,
    #[serde(borrow, default)]
    response: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
struct Reason {
    reason: String,
}

struct Window {
    start: Instant,
    measure_from: Instant,
    measure_to: Instant,
    drain_to: Instant,
}

async fn resolve(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .context("--url must start with ws://")?;
    let hostport = rest.split(['/', '?']).next().unwrap_or(rest);
    tokio::net::lookup_host(hostport)
        .await?
        .next()
        .with_context(|| format!("cannot resolve {hostport}"))
}

fn cpu(pids: &[u32]) -> f64 {
    procfs::total_cpu(pids).unwrap_or(f64::NAN)
}

/// Seconds every thread of `pids` spent waiting on a run queue (runnable,
/// no core free), from /proc/PID/task/TID/schedstat (run ns, wait ns,
/// slices): how much of a run's latency is the machine's cores being
/// taken, as against one stage being slow. NaN if unreadable.
fn runqueue_wait(pids: &[u32]) -> f64 {
    let mut total = 0u64;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return f64::NAN;
        };
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue; // a thread that just ended
            };
            let wait = stat
                .split_whitespace()
                .nth(1)
                .and_then(|w| w.parse::<u64>().ok());
            total += wait.unwrap_or(0);
        }
    }
    total as f64 / 1e9
}

async fn load(a: LoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.clients > 0 && a.rate > 0.0,
        "--clients and --rate must be > 0"
    );
    let target = Arc::new(Target {
        endpoints: vec![(resolve(&a.url).await?, a.url.clone())],
        source_ips: a.source_ips.clone(),
    });
    let a = Arc::new(a);

    // Connect and join every client, 64 at a time.
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut joined = Vec::with_capacity(a.clients as usize);
    for i in 0..a.clients {
        if set.len() >= 64 {
            let r = set.join_next().await.context("join set")?;
            joined.push(r??);
        }
        let (target, a) = (target.clone(), a.clone());
        set.spawn(async move { setup(&target, &a, i).await });
    }
    while let Some(r) = set.join_next().await {
        joined.push(r??);
    }
    eprintln!(
        "push-rtt: {} clients connected and joined in {:.1} s",
        joined.len(),
        t0.elapsed().as_secs_f64()
    );

    let start = Instant::now() + Duration::from_millis(200);
    let w = Arc::new(Window {
        start,
        measure_from: start + a.warmup,
        measure_to: start + a.warmup + a.duration,
        drain_to: start + a.warmup + a.duration + a.drain,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (i, ws) in joined {
        let (a, w) = (a.clone(), w.clone());
        tasks.spawn(async move { client(ws, i, &a, &w).await });
    }

    let gw = a.gateway_pid.clone();
    let redis: Vec<u32> = a.redis_pid.into_iter().collect();
    let others = a.other_pid.clone();
    let me = vec![std::process::id()];
    sleep_until(w.measure_from).await;
    let waits = |ps: [&[u32]; 4]| ps.map(runqueue_wait);
    let wait_before = waits([&gw, &redis, &others, &me]);
    let before = (
        cpu(&gw),
        cpu(&redis),
        cpu(&others),
        cpu(&me),
        procfs::machine_busy_secs().unwrap_or(f64::NAN),
    );
    sleep_until(w.measure_to).await;
    let after = (
        cpu(&gw),
        cpu(&redis),
        cpu(&others),
        cpu(&me),
        procfs::machine_busy_secs().unwrap_or(f64::NAN),
    );
    let wait_after = waits([&gw, &redis, &others, &me]);
    let wait: Vec<f64> = (0..4).map(|i| wait_after[i] - wait_before[i]).collect();

    let mut hist = new_hist();
    let mut lag = new_hist();
    let (mut sent, mut ok, mut error, mut timeouts, mut broadcasts) = (0, 0, 0, 0, 0);
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        let r = r?;
        hist.add(&r.hist)?;
        lag.add(&r.lag)?;
        sent += r.sent;
        ok += r.ok;
        error += r.error;
        timeouts += r.timeouts;
        broadcasts += r.broadcasts;
        for (k, v) in r.reasons {
            *reasons.entry(k).or_default() += v;
        }
        if let Some(f) = r.failure {
            *failures.entry(f).or_default() += 1;
        }
    }

    let secs = a.duration.as_secs_f64();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let per_op = |d: f64| d / sent.max(1) as f64 * 1e6;
    let (gw_s, redis_s, other_s, me_s, busy_s) = (
        after.0 - before.0,
        after.1 - before.1,
        after.2 - before.2,
        after.3 - before.3,
        after.4 - before.4,
    );
    let op = match a.op {
        Op::Push => "push",
        Op::Join => "join",
    };
    println!(
        "{} {op}: {} clients, offered {:.0}/s, window {:.0} s",
        a.label, a.clients, a.rate, secs
    );
    println!(
        "  sent {sent} ({:.0}/s)  ok {ok}  error {error}  timeouts {timeouts}  broadcasts received (whole run) {broadcasts}",
        sent as f64 / secs
    );
    if !reasons.is_empty() {
        println!("  error reasons: {reasons:?}");
    }
    if !failures.is_empty() {
        println!("  client failures: {failures:?}");
    }
    println!(
        "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        hist.max() as f64 / 1000.0,
        hist.mean() / 1000.0
    );
    let lag_ms = |q: f64| lag.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "  send lag ms (due → written, included above): p50 {:.2}  p99 {:.2}  max {:.2}",
        lag_ms(0.5),
        lag_ms(0.99),
        lag.max() as f64 / 1000.0
    );
    println!(
        "  CPU s in window: gateway {gw_s:.2} ({:.1} µs/{op})  redis {redis_s:.2} ({:.1} µs/{op})  other {other_s:.2} ({:.1} µs/{op})  push-rtt {me_s:.2}  machine busy {busy_s:.2} of {:.0}",
        per_op(gw_s),
        per_op(redis_s),
        per_op(other_s),
        secs * std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64),
    );
    println!(
        "  run-queue wait s in window (threads runnable, no core free): gateway {:.2}  redis {:.2}  other {:.2}  push-rtt {:.2}",
        wait[0], wait[1], wait[2], wait[3]
    );
    if let Some(path) = &a.json {
        let out = json!({
            "label": a.label,
            "op": op,
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "clients": a.clients,
            "offered_rate": a.rate,
            "window_s": secs,
            "sent": sent,
            "achieved_rate": sent as f64 / secs,
            "ok": ok,
            "error": error,
            "timeouts": timeouts,
            "reasons": reasons,
            "failures": failures,
            "broadcasts_received": broadcasts,
            "latency_ms": {
                "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999),
                "max": hist.max() as f64 / 1000.0, "mean": hist.mean() / 1000.0,
            },
            "send_lag_ms": {
                "p50": lag_ms(0.5), "p99": lag_ms(0.99), "max": lag.max() as f64 / 1000.0,
            },
            "cpu_s": {
                "gateway": gw_s, "redis": redis_s, "other": other_s,
                "push_rtt": me_s, "machine_busy": busy_s,
            },
            "runqueue_wait_s": {
                "gateway": wait[0], "redis": wait[1], "other": wait[2], "push_rtt": wait[3],
            },
            "cpu_us_per_op": {
                "gateway": per_op(gw_s), "redis": per_op(redis_s), "other": per_op(other_s),
            },
        });
        std::fs::write(path, serde_json::to_vec_pretty(&out)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

type Ws = loadtest::conn::Ws;

fn topic(a: &LoadArgs, i: u32) -> String {
    format!("{}:{i}", a.topic_prefix)
}

/// Connects client `i` and, for pushes, joins its topic (an error if refused).
async fn setup(target: &Target, a: &LoadArgs, i: u32) -> anyhow::Result<(u32, Ws)> {
    let mut ws = connect(target, u64::from(i)).await?;
    if a.op == Op::Join {
        return Ok((i, ws));
    }
    let t = topic(a, i);
    ws.send(Message::text(
        json!(["1", "1", t, "phx_join", {}]).to_string(),
    ))
    .await?;
    let wait = async {
        while let Some(msg) = ws.next().await {
            if let Message::Text(text) = msg? {
                let Ok(Frame(_, r, _, event, payload)) = serde_json::from_str(text.as_str()) else {
                    continue;
                };
                if event == "phx_reply" && r == Some("1") {
                    let p: ReplyPayload = serde_json::from_str(payload.get())?;
                    if p.status != "ok" {
                        bail!("join {t} refused: {}", payload.get());
                    }
                    return Ok(());
                }
            }
        }
        bail!("closed before the join reply of {t}")
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .with_context(|| format!("join {t} timed out"))??;
    Ok((i, ws))
}

/// One client's run: a writer on the open-loop schedule and a reader
/// matching replies to refs, until the drain ends or nothing is pending.
async fn client(ws: Ws, i: u32, a: &LoadArgs, w: &Window) -> ClientResult {
    let (mut sink, mut stream) = ws.split();
    let pending: Arc<Pending> = Arc::default();
    let writing = Arc::new(AtomicBool::new(true));
    let t = topic(a, i);
    let pad = "x".repeat(a.pad);
    let every = Duration::from_secs_f64(f64::from(a.clients) / a.rate);
    let first = w.start + every.mul_f64(f64::from(i) / f64::from(a.clients));

    let writer = {
        let (pending, writing, t, event, op) = (
            pending.clone(),
            writing.clone(),
            t.clone(),
            a.event.clone(),
            a.op,
        );
        let (from, to) = (w.measure_from, w.measure_to);
        async move {
            let mut sent = 0u64;
            let mut lag = new_hist();
            let mut r: u64 = 1;
            let mut last_beat = Instant::now();
            let mut joined: Option<u64> = None;
            let result = async {
                for k in 0u32.. {
                    let due = first + every * k;
                    if due >= to {
                        break;
                    }
                    sleep_until(due).await;
                    let measured = due >= from;
                    if last_beat.elapsed() > Duration::from_secs(25) {
                        r += 1;
                        sink.send(Message::text(
                            json!([null, r.to_string(), "phoenix", "heartbeat", {}]).to_string(),
                        ))
                        .await?;
                        last_beat = Instant::now();
                    }
                    let (op_ref, frame) = match op {
                        Op::Push => {
                            r += 1;
                            let f = json!(["1", r.to_string(), t, event, {"body": "b", "k": k, "pad": pad}]);
                            (r, f)
                        }
                        Op::Join => {
                            if let Some(jr) = joined.take() {
                                r += 1;
                                let leave = json!([jr.to_string(), r.to_string(), t, "phx_leave", {}]);
                                sink.send(Message::text(leave.to_string())).await?;
                            }
                            r += 1;
                            joined = Some(r);
                            (r, json!([r.to_string(), r.to_string(), t, "phx_join", {}]))
                        }
                    };
                    pending.lock().insert(op_ref, (due, measured));
                    sink.send(Message::text(frame.to_string())).await?;
                    if measured {
                        sent += 1;
                        record(&mut lag, due.elapsed().as_micros() as u64);
                    }
                }
                anyhow::Ok(())
            }
            .await;
            writing.store(false, Relaxed);
            (
                sent,
                lag,
                result.err().map(|e| format!("send: {e:#}")),
                sink,
            )
        }
    };

    let reader = {
        let pending = pending.clone();
        let writing = writing.clone();
        let drain_to = w.drain_to;
        async move {
            let mut res = ClientResult {
                hist: new_hist(),
                lag: new_hist(),
                sent: 0,
                ok: 0,
                error: 0,
                timeouts: 0,
                reasons: BTreeMap::new(),
                broadcasts: 0,
                failure: None,
            };
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                let msg = tokio::select! {
                    m = stream.next() => m,
                    _ = sleep_until(drain_to) => break,
                    _ = tick.tick() => {
                        if !writing.load(Relaxed) && pending.lock().is_empty() { break; }
                        continue;
                    }
                };
                let text = match msg {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | None => {
                        res.failure = Some("closed by the gateway".into());
                        break;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        res.failure = Some(format!("read: {e}"));
                        break;
                    }
                };
                let now = Instant::now();
                let Ok(Frame(_, r, _, event, payload)) = serde_json::from_str(text.as_str()) else {
                    *res.reasons.entry("unparsable frame".into()).or_default() += 1;
                    continue;
                };
                if event != "phx_reply" {
                    // phx_close after a leave is not a broadcast.
                    if !event.starts_with("phx_") {
                        res.broadcasts += 1;
                    }
                    continue;
                }
                let Some(r) = r.and_then(|r| r.parse::<u64>().ok()) else {
                    continue;
                };
                let Some((due, measured)) = pending.lock().remove(&r) else {
                    continue; // a leave's or heartbeat's reply
                };
                if !measured {
                    continue;
                }
                record(&mut res.hist, (now - due).as_micros() as u64);
                match serde_json::from_str::<ReplyPayload>(payload.get()) {
                    Ok(p) if p.status == "ok" => res.ok += 1,
                    Ok(p) => {
                        res.error += 1;
                        let reason = p
                            .response
                            .and_then(|v| serde_json::from_str::<Reason>(v.get()).ok())
                            .map_or_else(|| p.status.to_owned(), |r| r.reason);
                        if res.reasons.len() < 20 || res.reasons.contains_key(&reason) {
                            *res.reasons.entry(reason).or_default() += 1;
                        }
                    }
                    Err(_) => *res.reasons.entry("unparsable reply".into()).or_default() += 1,
                }
            }
            res
        }
    };

    let ((sent, lag, send_failure, mut sink), mut res) = tokio::join!(writer, reader);
    res.sent = sent;
    res.lag = lag;
    res.timeouts = pending.lock().values().filter(|(_, m)| *m).count() as u64;
    if res.failure.is_none() {
        res.failure = send_failure;
    }
    let _ = sink.close().await;
    res
}

// ---------------------------------------------------------------- worker

/// A Redis reply as text, for the bulk strings of XREADGROUP's answer.
fn text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The entries of an XREADGROUP answer on one stream: (id, field → value).
/// RESP2 (arrays) or RESP3 (a map of streams); anything else is no entries.
fn entries(v: &redis::Value) -> Vec<(String, HashMap<String, String>)> {
    use redis::Value::{Array, Map};
    let streams: Vec<&redis::Value> = match v {
        Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                Array(pair) => pair.get(1),
                _ => None,
            })
            .collect(),
        Map(streams) => streams.iter().map(|(_, e)| e).collect(),
        _ => vec![],
    };
    let mut out = vec![];
    for list in streams {
        let Array(list) = list else { continue };
        for entry in list {
            let Array(entry) = entry else { continue };
            let (Some(id), Some(Array(fields))) = (entry.first().and_then(text), entry.get(1))
            else {
                continue;
            };
            let map = fields
                .chunks(2)
                .filter_map(|kv| Some((text(kv.first()?)?, text(kv.get(1)?)?)))
                .collect();
            out.push((id, map));
        }
    }
    out
}

/// The answer to one forwarded push, or None for an entry without `reply_to`.
fn answer(id: &str, e: &HashMap<String, String>, broadcast: bool) -> Option<(String, String)> {
    let reply_to = e.get("reply_to")?;
    let reply_ref = e.get("reply_ref")?;
    let payload = e
        .get("payload")
        .and_then(|p| serde_json::from_str::<Box<RawValue>>(p).ok());
    let body = match (payload, broadcast) {
        (Some(p), true) => json!({
            "ref": reply_ref, "status": "ok", "response": {"id": id},
            "broadcasts": [{"topic": e.get("topic"), "event": e.get("event"), "payload": p}],
        }),
        (Some(_), false) => json!({"ref": reply_ref, "status": "ok", "response": {"id": id}}),
        (None, _) => {
            json!({"ref": reply_ref, "status": "error", "response": {"reason": "bad payload"}})
        }
    };
    Some((reply_to.clone(), body.to_string()))
}

async fn worker(a: WorkerArgs) -> anyhow::Result<()> {
    let client = redis::Client::open(a.redis_url.as_str())?;
    // XREADGROUP BLOCK outlasts the default 500 ms response timeout.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .context("connect to redis")?;
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&a.stream)
        .arg(&a.group)
        .arg("0") // entries appended before this worker started are answered too
        .arg("MKSTREAM")
        .query_async(&mut con)
        .await;
    if let Err(e) = created {
        if e.code() != Some("BUSYGROUP") {
            return Err(e).context("XGROUP CREATE");
        }
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (mut answered, mut batches) = (0u64, 0u64);
    eprintln!("push-rtt worker: reading {} as {}", a.stream, a.group);
    loop {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&a.group)
            .arg(&a.consumer)
            .arg("COUNT")
            .arg(a.count)
            .arg("BLOCK")
            .arg(a.block_ms)
            .arg("STREAMS")
            .arg(&a.stream)
            .arg(">");
        let read = cmd.query_async::<redis::Value>(&mut con);
        let v = tokio::select! {
            v = read => v.context("XREADGROUP")?,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let batch = entries(&v);
        if batch.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        let mut ack = redis::cmd("XACK");
        ack.arg(&a.stream).arg(&a.group);
        for (id, e) in &batch {
            if let Some((to, body)) = answer(id, e, a.broadcast) {
                pipe.cmd("PUBLISH").arg(to).arg(body).ignore();
            }
            ack.arg(id);
        }
        pipe.add_command(ack).ignore();
        pipe.query_async::<()>(&mut con)
            .await
            .context("PUBLISH+XACK")?;
        answered += batch.len() as u64;
        batches += 1;
    }
    eprintln!(
        "push-rtt worker: {answered} entries answered in {batches} batches ({:.1} per batch)",
        answered as f64 / batches.max(1) as f64
    );
    Ok(())
}

// ---------------------------------------------------------------- hook

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;

async fn hook(a: HookArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("bind {}", a.listen))?;
    eprintln!("push-rtt hook: listening on {}", a.listen);
    let broadcast = a.broadcast;
    loop {
        let (sock, _) = listener.accept().await?;
        let _ = sock.set_nodelay(true);
        tokio::spawn(async move {
            if let Err(e) = hook_conn(sock, broadcast).await {
                eprintln!("push-rtt hook: connection: {e:#}");
            }
        });
    }
}

/// The answer to one hook request: (status, body).
fn hook_answer(path: &str, body: &[u8], broadcast: bool) -> (u16, String) {
    let Ok(req) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (400, r#"{"error":"body is not JSON"}"#.into());
    };
    match path {
        "/connect" | "/join" => (200, r#"{"result":"ok"}"#.into()),
        "/push" if broadcast => (
            200,
            json!({"status": "ok", "response": {},
                   "broadcasts": [{"topic": req["topic"], "event": req["event"], "payload": req["payload"]}]})
            .to_string(),
        ),
        "/push" => (200, r#"{"status":"ok","response":{}}"#.into()),
        _ => (404, r#"{"error":"no such hook"}"#.into()),
    }
}

/// Serves keep-alive HTTP/1.1 requests with a Content-Length body.
async fn hook_conn(mut sock: TcpStream, broadcast: bool) -> anyhow::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut out = Vec::with_capacity(256);
    loop {
        // The head.
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() > MAX_HEAD {
                bail!("request head too large");
            }
            if read_more(&mut sock, &mut buf).await? == 0 {
                return Ok(()); // closed between requests (or mid-head)
            }
        };
        let head = std::str::from_utf8(&buf[..head_end]).context("head not UTF-8")?;
        let mut lines = head.split("\r\n");
        let path = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .context("no request line")?
            .to_owned();
        let mut len = 0usize;
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().context("bad content-length")?;
                }
            }
        }
        anyhow::ensure!(len <= MAX_BODY, "body too large");
        while buf.len() < head_end + len {
            if read_more(&mut sock, &mut buf).await? == 0 {
                bail!("closed mid-body");
            }
        }
        let (status, body) = hook_answer(&path, &buf[head_end..head_end + len], broadcast);
        buf.drain(..head_end + len);
        out.clear();
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                if status == 200 { "OK" } else { "Error" },
                body.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(body.as_bytes());
        sock.write_all(&out).await?;
    }
}

async fn read_more(sock: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<usize> {
    let mut chunk = [0u8; 8192];
    let n = sock.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert!(parse_duration("1h").is_err() && parse_duration("x").is_err());
    }

    #[test]
    fn stream_entries_and_answers() {
        use redis::Value::{Array, BulkString, Nil};
        let b = |s: &str| BulkString(s.as_bytes().to_vec());
        let v = Array(vec![Array(vec![
            b("phx:in:chat"),
            Array(vec![
                Array(vec![
                    b("1-0"),
                    Array(vec![
                        b("topic"),
                        b("chat:1"),
                        b("event"),
                        b("new_msg"),
                        b("payload"),
                        b(r#"{"body":"hi"}"#),
                        b("reply_to"),
                        b("phx:rp:x"),
                        b("reply_ref"),
                        b("7"),
                    ]),
                ]),
                Array(vec![b("2-0")]), // malformed: skipped
                Nil,
            ]),
        ])]);
        let e = entries(&v);
        assert_eq!(e.len(), 1);
        let (to, body) = answer(&e[0].0, &e[0].1, true).unwrap();
        assert_eq!(to, "phx:rp:x");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["ref"], "7");
        assert_eq!(body["broadcasts"][0]["payload"]["body"], "hi");
        assert!(entries(&Nil).is_empty());
        let mut bad = e[0].1.clone();
        bad.insert("payload".into(), "{".into());
        assert!(answer("1-0", &bad, false)
            .unwrap()
            .1
            .contains("bad payload"));
        bad.remove("reply_to");
        assert!(answer("1-0", &bad, false).is_none());
    }

    #[test]
    fn hook_answers() {
        assert_eq!(hook_answer("/join", b"{}", false).0, 200);
        assert_eq!(hook_answer("/join", b"nope", false).0, 400);
        assert_eq!(hook_answer("/other", b"{}", false).0, 404);
        let (_, body) = hook_answer(
            "/push",
            br#"{"topic":"t:1","event":"e","payload":{"a":1}}"#,
            true,
        );
        assert!(body.contains(r#""broadcasts""#), "{body}");
    }
}
