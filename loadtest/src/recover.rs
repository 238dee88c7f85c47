//! recover: what a pod restart costs topics with history. N clients are
//! joined (each remembering its topics' positions from the join reply and
//! every broadcast); the gateway is killed; while it is down the parent
//! publishes `--behind` messages to every topic with `FCALL gateway_publish`
//! (so every client is that many behind); the gateway is started again and
//! every client reconnects with phoenix.js's backoff and rejoins with
//! `{"history": {"since": last}}`, while the parent keeps publishing live
//! at `--live-rate`. Clients check that their offsets stay strictly
//! consecutive across the restart and time each join until its replay is in.
//!
//! The client side ([`run`]) runs in the workers; the parent side
//! ([`drive`]) kills, publishes, restarts and measures Redis and the
//! processes around it. Neither merges results nor judges the run.

use crate::cli::{Cli, RecoverArgs};
use crate::collect::Collector;
use crate::presence_join::redis_conn;
use crate::redis_use::{self, Use};
use crate::storm::{self, reconnect_after, rejoin_after, JOIN_TIMEOUT};
use crate::supervisor::Workers;
use crate::worker::Control;
use anyhow::{bail, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use loadtest::conn::{
    self, parse_position, reply_position, Frame, Phase, Positions, Reply, Spec, Target, Ws,
    HEARTBEAT,
};
use loadtest::procfs;
use loadtest::stats::{now_ns, Stats};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// One topic of a client, as phoenix.js drives its channel.
struct Topic {
    name: String,
    /// The name as a JSON string, as frames carry it.
    quoted: String,
    /// The join in flight: its ref, when it was sent, whether it asked `since`.
    join: Option<(String, Instant, bool)>,
    /// When to join (again).
    retry_at: Option<Instant>,
    tries: u32,
    /// A recovering join's replay: the reply's top offset, when the join was sent.
    replay: Option<(u64, Instant)>,
    /// Joined, and its replay (if any) received.
    done: bool,
}

/// How a connection ended.
enum End {
    Lost,
    Stop,
}

/// One client: connects and joins, then holds its connection, checking
/// positions; whenever the connection is lost, reconnects with phoenix.js's
/// backoff and rejoins from its last positions.
pub(crate) async fn run(
    target: Arc<Target>,
    stats: Arc<Stats>,
    spec: Spec,
    mut phase: watch::Receiver<Phase>,
    up: watch::Receiver<bool>,
) {
    let live = &stats.live;
    let mut ws = match conn::connect(&target, spec.idx).await {
        Ok(ws) => ws,
        Err(e) => return conn::connect_failed(&stats, &e),
    };
    live.connects_ok.fetch_add(1, Relaxed);
    live.open.fetch_add(1, Relaxed);
    let mut topics: Vec<Topic> = spec
        .topics
        .iter()
        .map(|t| Topic {
            name: t.clone(),
            quoted: format!("\"{t}\""),
            join: None,
            retry_at: None,
            tries: 0,
            replay: None,
            done: false,
        })
        .collect();
    let mut positions = Positions::default();
    let mut refs = 0u64;
    // Since when the client has been rejoining (None: the first joins).
    let mut lost: Option<Instant> = None;
    let mut ready = false;
    loop {
        let timed = lost.is_some();
        let mut on_done = || match lost.take() {
            Some(at) => stats.rejoined(now_ns(), at.elapsed().as_micros() as u64),
            None if !ready => {
                ready = true;
                live.storm_ready.fetch_add(1, Relaxed);
                live.settled.fetch_add(1, Relaxed);
            }
            None => {}
        };
        let s = Session {
            topics: &mut topics,
            positions: &mut positions,
            refs: &mut refs,
            stats: &stats,
            timed,
        };
        let end = s.run(&mut ws, &mut phase, &mut on_done).await;
        live.open.fetch_sub(1, Relaxed);
        if let End::Stop = end {
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
            return;
        }
        if !ready {
            // Lost before it ever joined: nothing to recover.
            live.settled.fetch_add(1, Relaxed);
            live.disconnects.fetch_add(1, Relaxed);
            return;
        }
        drop(ws);
        live.drops.fetch_add(1, Relaxed);
        lost.get_or_insert_with(Instant::now);
        let mut tries = 0;
        ws = loop {
            tries += 1;
            tokio::select! {
                _ = tokio::time::sleep(reconnect_after(tries)) => {}
                _ = stopped(&mut phase) => return,
            }
            let up_now = *up.borrow();
            match conn::connect(&target, spec.idx).await {
                Ok(ws) => break ws,
                Err(e) => storm::failed(&stats, &e, up_now),
            }
        };
        live.connects_ok.fetch_add(1, Relaxed);
        live.open.fetch_add(1, Relaxed);
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

/// One connection's life: join every topic (from its last position when
/// there is one), then read until the connection is lost or the run stops.
struct Session<'a> {
    topics: &'a mut [Topic],
    positions: &'a mut Positions,
    refs: &'a mut u64,
    stats: &'a Stats,
    /// Time the joins and replays (the rejoins, not the first joins).
    timed: bool,
}

impl Session<'_> {
    async fn run(
        mut self,
        ws: &mut Ws,
        phase: &mut watch::Receiver<Phase>,
        on_done: &mut impl FnMut(),
    ) -> End {
        let now = Instant::now();
        for t in self.topics.iter_mut() {
            t.join = None;
            t.retry_at = Some(now);
            t.tries = 0;
            t.replay = None;
            t.done = false;
        }
        let mut all_done = false;
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
        let mut next_hb = 1_000_000_001u64;
        loop {
            if *phase.borrow_and_update() == Phase::Stop {
                return End::Stop;
            }
            let now = Instant::now();
            for t in self.topics.iter_mut() {
                if t.retry_at.is_some_and(|at| at <= now) {
                    *self.refs += 1;
                    let r = self.refs.to_string();
                    let since = self
                        .positions
                        .last(&t.quoted)
                        .map(|(e, o)| format!("{e}:{o}"));
                    let params = since.as_ref().map_or("{}".to_owned(), |s| {
                        format!(r#"{{"history":{{"since":"{s}"}}}}"#)
                    });
                    let f = format!(r#"["{r}","{r}","{}","phx_join",{params}]"#, t.name);
                    if ws.send(Message::text(f)).await.is_err() {
                        return End::Lost;
                    }
                    t.join = Some((r, Instant::now(), since.is_some()));
                    t.retry_at = None;
                }
                if t.join
                    .as_ref()
                    .is_some_and(|j| j.1.elapsed() >= JOIN_TIMEOUT)
                {
                    self.stats.live.join_errors.fetch_add(1, Relaxed);
                    t.join = None;
                    t.tries += 1;
                    t.retry_at = Some(now + rejoin_after(t.tries));
                }
            }
            if !all_done && self.topics.iter().all(|t| t.done) {
                all_done = true;
                on_done();
            }
            let wake = self
                .topics
                .iter()
                .filter_map(|t| t.retry_at.or(t.join.as_ref().map(|j| j.1 + JOIN_TIMEOUT)))
                .min()
                .unwrap_or(now + HEARTBEAT);
            tokio::select! {
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) => self.handle(t.as_str()),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return End::Lost,
                    Some(Ok(_)) => {}
                },
                _ = heartbeat.tick() => {
                    next_hb += 2;
                    let f = format!(r#"[null,"{next_hb}","phoenix","heartbeat",{{}}]"#);
                    if ws.send(Message::text(f)).await.is_err() {
                        return End::Lost;
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
                ch = phase.changed() => if ch.is_err() { return End::Stop },
            }
        }
    }

    fn handle(&mut self, text: &str) {
        let live = &self.stats.live;
        let Ok(Frame(_, r, topic, event, payload)) = serde_json::from_str::<Frame>(text) else {
            return;
        };
        let Some(t) = self.topics.iter_mut().find(|t| t.quoted == topic.get()) else {
            return;
        };
        match event {
            "phx_reply" => {
                let Some(r) = r else { return };
                if t.join.as_ref().is_none_or(|j| j.0 != r) {
                    return;
                }
                let Some((_, at, since)) = t.join.take() else {
                    return;
                };
                let ok = serde_json::from_str::<Reply>(payload.get())
                    .is_ok_and(|reply| reply.status == "ok");
                if !ok {
                    live.join_errors.fetch_add(1, Relaxed);
                    t.tries += 1;
                    t.retry_at = Some(Instant::now() + rejoin_after(t.tries));
                    return;
                }
                if self.timed {
                    self.stats.joined(at.elapsed().as_micros() as u64);
                } else {
                    live.joins_ok.fetch_add(1, Relaxed);
                }
                t.done = true;
                let Some((recovered, pos)) = reply_position(payload.get()) else {
                    return;
                };
                let top = parse_position(&pos).map_or(0, |p| p.1);
                if !since {
                    self.positions.base(&t.quoted, &pos);
                } else if recovered {
                    live.recovered.fetch_add(1, Relaxed);
                    let last = self.positions.last(&t.quoted).map_or(0, |p| p.1);
                    if last < top {
                        t.replay = Some((top, at));
                        t.done = false;
                    } else if self.timed {
                        self.stats.replayed(at.elapsed().as_micros() as u64);
                    }
                } else {
                    // Nothing is replayed: what was missed is lost.
                    live.not_recovered.fetch_add(1, Relaxed);
                    self.positions.base(&t.quoted, &pos);
                }
            }
            "phx_error" | "phx_close" => {
                // The gateway ended the channel (a gap it saw, a Redis
                // reconnect): phoenix.js rejoins it from its last position.
                live.join_errors.fetch_add(1, Relaxed);
                t.join = None;
                t.replay = None;
                t.done = false;
                t.tries += 1;
                t.retry_at = Some(Instant::now() + rejoin_after(t.tries));
            }
            _ => {
                let Some(step) = r.and_then(|r| self.positions.see(&t.quoted, r)) else {
                    return;
                };
                Positions::count(self.stats, step);
                let last = self.positions.last(&t.quoted).map_or(0, |p| p.1);
                if let Some((top, at)) = t.replay {
                    if last >= top {
                        t.replay = None;
                        t.done = true;
                        if self.timed {
                            self.stats.replayed(at.elapsed().as_micros() as u64);
                        }
                    }
                }
            }
        }
    }
}

/// What the parent saw of the restart and recovery, for the report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Outcome {
    pub(crate) signal: String,
    /// Clients joined before the restart, and the topics they joined.
    pub(crate) clients: u64,
    pub(crate) topics: u64,
    pub(crate) behind: u64,
    pub(crate) new_gateway_pid: u32,
    pub(crate) exited_after_secs: f64,
    pub(crate) listening_after_secs: f64,
    pub(crate) waited_secs: f64,
    pub(crate) timed_out: bool,
    /// Messages published (FCALL gateway_publish, pipelined) while the pod
    /// was down, and how long that took.
    pub(crate) published_while_down: u64,
    pub(crate) publish_while_down_secs: f64,
    /// Messages published live from the restart until every client was back.
    pub(crate) published_live: u64,
    /// Positions the clients should have received after their first joins:
    /// every message published to each of their topics.
    pub(crate) expected_positions: u64,
    /// Redis while the pod was down (the publishes), and from the restart
    /// until the end of the drain (the rejoins' reads and the live publishes).
    pub(crate) redis_while_down: Use,
    pub(crate) redis_rejoin: Use,
    /// CPU seconds of the new gateway process from its start to the end of
    /// the drain, and of loadtest over the same time.
    pub(crate) gateway_user_secs: f64,
    pub(crate) gateway_system_secs: f64,
    pub(crate) client_user_secs: f64,
    pub(crate) client_system_secs: f64,
    #[serde(skip)]
    pub(crate) started_ns: u64,
}

/// The envelope `gateway_publish` stores for sequence number `seq` of topic `t`.
fn envelope(seq: u64, t: usize) -> String {
    let p = conn::payload(seq, t as u32, "");
    format!(r#"{{"event":"new_msg","payload":{p}}}"#)
}

/// The parent's side: kills the pod, publishes what its clients miss,
/// starts it again, publishes live while clients recover, waits until every
/// client has rejoined and received its replay (or `--rejoin-timeout`).
pub(crate) async fn drive(
    cli: &Cli,
    a: &RecoverArgs,
    workers: &Workers,
    col: &mut Collector,
) -> anyhow::Result<Outcome> {
    let clients = col.total().storm_ready;
    let client_pids = workers.pids();
    let (n, ..) = cli.shape();
    let topics: Vec<String> = (0..a.distinct_topics.max(1))
        .map(|t| cli.topic(t))
        .collect();
    let channels: Vec<String> = topics.iter().map(|t| format!("{}{t}", a.prefix)).collect();
    let old_pid = *cli
        .gateway_pid
        .first()
        .context("recover needs the running gateway's --gateway-pid")?;
    let addr = storm::gateway_addr(cli).await?;
    let mut redis = redis_conn(&a.redis_url).await?;

    let start = Instant::now();
    let started_ns = now_ns();
    let deadline = start + a.rejoin_timeout;
    workers.send(Control::Go);
    storm::signal(old_pid, &a.signal)?;
    while !procfs::exited(old_pid) {
        if Instant::now() > deadline {
            bail!("gateway {old_pid} did not exit within --rejoin-timeout");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let exited_after = start.elapsed().as_secs_f64();

    // While it is down: --behind messages to every topic, one pipeline of
    // one message per topic at a time.
    let mut seqs = vec![0u64; topics.len()];
    let down0 = redis_use::probe(&a.redis_url, a.redis_pid).await?;
    let t0 = Instant::now();
    for _ in 0..a.behind {
        let mut pipe = redis::pipe();
        for (t, ch) in channels.iter().enumerate() {
            pipe.cmd("FCALL")
                .arg("gateway_publish")
                .arg(1)
                .arg(ch)
                .arg(envelope(seqs[t], t));
        }
        let _: Vec<redis::Value> = pipe
            .query_async(&mut redis)
            .await
            .context("FCALL gateway_publish (is the gateway's function library loaded?)")?;
        for s in seqs.iter_mut() {
            *s += 1;
        }
    }
    let publish_secs = t0.elapsed().as_secs_f64();
    let down1 = redis_use::probe(&a.redis_url, a.redis_pid).await?;
    let published_while_down = a.behind * topics.len() as u64;

    let new_pid = storm::restart(&a.restart_cmd).await?;
    storm::wait_listening(addr, deadline).await?;
    let listening_after = start.elapsed().as_secs_f64();
    let client_before = storm::cpu_of(&client_pids)?;
    let rejoin0 = redis_use::probe(&a.redis_url, a.redis_pid).await?;
    workers.send(Control::Up);

    // Live messages while the clients rejoin: the seam.
    let stop = Arc::new(AtomicBool::new(false));
    let live = tokio::spawn(publish_live(
        redis.clone(),
        channels.clone(),
        seqs.clone(),
        a.live_rate,
        stop.clone(),
    ));
    col.pump(Some(deadline), |c| c.total().rejoined >= clients)
        .await;
    let waited = start.elapsed().as_secs_f64();
    let timed_out = col.total().rejoined < clients;
    stop.store(true, Relaxed);
    let live_counts = live.await.context("live publisher")??;
    col.pump(Some(Instant::now() + cli.drain), |_| false).await;
    let rejoin1 = redis_use::probe(&a.redis_url, a.redis_pid).await?;
    let gw = procfs::cpu_split(new_pid)?;
    let client_after = storm::cpu_of(&client_pids)?;

    let per_topic: HashMap<&str, u64> = topics
        .iter()
        .zip(&live_counts)
        .map(|(t, l)| (t.as_str(), a.behind + l))
        .collect();
    let expected_positions = (0..n)
        .flat_map(|g| cli.topics_of(g))
        .map(|t| per_topic.get(t.as_str()).copied().unwrap_or(0))
        .sum();
    Ok(Outcome {
        signal: a.signal.clone(),
        clients,
        topics: topics.len() as u64,
        behind: a.behind,
        new_gateway_pid: new_pid,
        exited_after_secs: exited_after,
        listening_after_secs: listening_after,
        waited_secs: waited,
        timed_out,
        published_while_down,
        publish_while_down_secs: publish_secs,
        published_live: live_counts.iter().sum(),
        expected_positions,
        redis_while_down: down0.until(&down1),
        redis_rejoin: rejoin0.until(&rejoin1),
        gateway_user_secs: gw.0,
        gateway_system_secs: gw.1,
        client_user_secs: client_after.0 - client_before.0,
        client_system_secs: client_after.1 - client_before.1,
        started_ns,
    })
}

/// Publishes `rate` messages a second round-robin over the channels until
/// told to stop; how many went to each.
async fn publish_live(
    mut redis: redis::aio::MultiplexedConnection,
    channels: Vec<String>,
    mut seqs: Vec<u64>,
    rate: f64,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<u64>> {
    let mut counts = vec![0u64; channels.len()];
    if rate <= 0.0 || channels.is_empty() {
        return Ok(counts);
    }
    let start = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Relaxed) {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            let t = (sent % channels.len() as u64) as usize;
            crate::publish::fcall_publish(&mut redis, &channels[t], &envelope(seqs[t], t)).await?;
            seqs[t] += 1;
            counts[t] += 1;
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(counts)
}
