//! One Phoenix V2 JSON client connection over WebSocket, and the
//! transport-independent client logic the long-poll transport shares.
//!
//! It knows one connection and the counters it feeds; it must not know the
//! command line or the scenario (a [`Spec`] says all a connection needs).

use crate::stats::{now_ns, record, Stats};
use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The phases a run goes through; connections follow them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Setup,
    Go,
    Halt,
    Stop,
}

/// Where and how to connect.
#[derive(Debug)]
pub struct Target {
    /// Gateway endpoints (address, URL); connection `idx` goes to `idx % len`,
    /// so connections spread evenly over several pods.
    pub endpoints: Vec<(SocketAddr, String)>,
    pub source_ips: Vec<IpAddr>,
}

pub type Ws = WebSocketStream<TcpStream>;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// Opens a TCP connection to the endpoint of connection `idx`, from its
/// `--source-ips` address; returns it with the endpoint's URL.
pub async fn tcp(target: &Target, idx: u64) -> anyhow::Result<(TcpStream, &str)> {
    let n = target.endpoints.len().max(1) as u64;
    let Some((addr, url)) = target.endpoints.get((idx % n) as usize) else {
        anyhow::bail!("no --url given");
    };
    let sock = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if !target.source_ips.is_empty() {
        let ip = target.source_ips[(idx / n) as usize % target.source_ips.len()];
        sock.bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("bind {ip}"))?;
    }
    let stream = sock.connect(*addr).await.context("tcp connect")?;
    stream.set_nodelay(true)?;
    Ok((stream, url.as_str()))
}

/// Opens a WebSocket from the `idx`-th source address, with small buffers.
pub async fn connect(target: &Target, idx: u64) -> anyhow::Result<Ws> {
    let fut = async {
        let (stream, url) = tcp(target, idx).await?;
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .context("websocket handshake")?;
        anyhow::Ok(ws)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, fut)
        .await
        .context("connect timed out")?
}

/// A V2 frame `[join_ref, ref, topic, event, payload]`.
#[derive(Debug, Deserialize)]
pub struct Frame<'a>(
    pub serde::de::IgnoredAny,
    pub Option<&'a str>,
    #[serde(borrow)] pub &'a RawValue,
    pub &'a str,
    #[serde(borrow)] pub &'a RawValue,
);

/// The payload loadtest publishes: a sequence number per sender, a send time.
#[derive(Debug, Deserialize)]
pub struct Msg {
    pub seq: u64,
    pub ts: u64,
    pub s: u32,
}

#[derive(Debug, Deserialize)]
pub struct Reply<'a> {
    pub status: &'a str,
}

/// What one client connection does.
#[derive(Debug)]
pub struct Spec {
    pub idx: u64,
    pub topics: Vec<String>,
    /// Push `new_msg` to the first topic at this interval while the phase is Go.
    pub push_every: Option<Duration>,
    pub pad: usize,
    /// Join with `{"user": "u<idx>"}`, so a rule with a presence keyed by
    /// the `user` param tracks every connection.
    pub join_user: bool,
}

/// Per-sender delivery tracking: next expected sequence number.
#[derive(Debug, Default)]
struct Seen(Vec<(u32, u64)>);

impl Seen {
    /// Returns false for a duplicate (or a late, reordered message).
    fn see(&mut self, sender: u32, seq: u64) -> bool {
        match self.0.iter_mut().find(|(s, _)| *s == sender) {
            Some((_, next)) => {
                if seq < *next {
                    false
                } else {
                    *next = seq + 1;
                    true
                }
            }
            None => {
                self.0.push((sender, seq + 1));
                true
            }
        }
    }
}

/// A history position `"<epoch>:<offset>"` split in two.
pub fn parse_position(pos: &str) -> Option<(&str, u64)> {
    let (epoch, offset) = pos.rsplit_once(':')?;
    Some((epoch, offset.parse().ok()?))
}

/// What a position says about its topic's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The next offset (or the first position seen on the topic).
    Next,
    /// Ahead of the next offset: this many were skipped.
    Gap(u64),
    /// The offset was seen already (or is older).
    Dup,
    /// Another epoch: continuity was not promised.
    NewEpoch,
}

/// The last position seen per topic (the topic as its JSON string, quoted),
/// so that offsets can be checked to be consecutive.
#[derive(Debug, Default)]
pub struct Positions(Vec<(String, String, u64)>);

impl Positions {
    /// Takes `pos` as the topic's current position (a join reply's), whatever came before.
    pub fn base(&mut self, topic: &str, pos: &str) {
        let Some((epoch, offset)) = parse_position(pos) else {
            return;
        };
        match self.0.iter_mut().find(|(t, ..)| t == topic) {
            Some(e) => {
                e.1 = epoch.to_owned();
                e.2 = offset;
            }
            None => self.0.push((topic.to_owned(), epoch.to_owned(), offset)),
        }
    }

    /// Checks a broadcast's position against the last one of its topic and
    /// moves on to it (unless it is a duplicate); None when `pos` is not a position.
    pub fn see(&mut self, topic: &str, pos: &str) -> Option<Step> {
        let (epoch, offset) = parse_position(pos)?;
        let Some(e) = self.0.iter_mut().find(|(t, ..)| t == topic) else {
            self.0.push((topic.to_owned(), epoch.to_owned(), offset));
            return Some(Step::Next);
        };
        let step = if e.1 != epoch {
            e.1 = epoch.to_owned();
            Step::NewEpoch
        } else if offset <= e.2 {
            return Some(Step::Dup);
        } else if offset == e.2 + 1 {
            Step::Next
        } else {
            Step::Gap(offset - e.2 - 1)
        };
        e.2 = offset;
        Some(step)
    }

    /// The topic's last position.
    pub fn last(&self, topic: &str) -> Option<(&str, u64)> {
        self.0
            .iter()
            .find(|(t, ..)| t == topic)
            .map(|(_, e, o)| (e.as_str(), *o))
    }

    /// Counts a step in the position counters.
    pub fn count(stats: &Stats, step: Step) {
        let live = &stats.live;
        match step {
            Step::Next => live.positioned.fetch_add(1, Relaxed),
            Step::Gap(n) => {
                live.pos_gaps.fetch_add(n, Relaxed);
                live.positioned.fetch_add(1, Relaxed)
            }
            Step::Dup => live.pos_dups.fetch_add(1, Relaxed),
            Step::NewEpoch => {
                live.epoch_changes.fetch_add(1, Relaxed);
                live.positioned.fetch_add(1, Relaxed)
            }
        };
    }
}

/// The `history.position` of a join reply's payload, if it has one.
pub fn reply_position(payload: &str) -> Option<(bool, String)> {
    #[derive(Deserialize)]
    struct P {
        response: R,
    }
    #[derive(Deserialize)]
    struct R {
        history: H,
    }
    #[derive(Deserialize)]
    struct H {
        #[serde(default)]
        recovered: bool,
        position: String,
    }
    let p: P = serde_json::from_str(payload).ok()?;
    Some((p.response.history.recovered, p.response.history.position))
}

/// A published payload [`Msg`] reads: sequence number `seq` of sender
/// `sender`, sent now, with `pad` as padding.
pub fn payload(seq: u64, sender: u32, pad: &str) -> String {
    format!(
        r#"{{"seq":{seq},"ts":{},"s":{sender},"pad":"{pad}"}}"#,
        now_ns()
    )
}

pub fn push_frame(topic: &str, r: u64, sender: u32, seq: u64, pad: &str) -> String {
    let p = payload(seq, sender, pad);
    format!(r#"[null,"{r}","{topic}","new_msg",{p}]"#)
}

/// The transport-independent side of one client: the frames it sends, and
/// what it makes of the frames it receives (join replies, push replies,
/// deliveries with latency and duplicate detection).
#[derive(Debug)]
pub struct Client {
    stats: Arc<Stats>,
    /// Topics joined; join refs are 1..=n.
    n: u64,
    pending: Vec<Option<Instant>>,
    /// Joins not answered yet.
    pub unsettled: usize,
    seen: Seen,
    /// History positions per topic, checked to be consecutive.
    positions: Positions,
    next_ref: u64,
    seq: u64,
    sender: u32,
    pad: String,
    /// The payload of every join.
    join_params: String,
}

impl Client {
    /// A client that has connected (counted as open until `finish`).
    pub fn new(stats: Arc<Stats>, spec: &Spec) -> Client {
        let n = spec.topics.len();
        stats.live.connects_ok.fetch_add(1, Relaxed);
        stats.live.open.fetch_add(1, Relaxed);
        if n == 0 {
            stats.live.settled.fetch_add(1, Relaxed);
        }
        Client {
            stats,
            n: n as u64,
            pending: vec![None; n],
            unsettled: n,
            seen: Seen::default(),
            positions: Positions::default(),
            next_ref: n as u64 + 1,
            seq: 0,
            sender: spec.idx as u32,
            pad: "x".repeat(spec.pad),
            join_params: if spec.join_user {
                format!(r#"{{"user":"u{}"}}"#, spec.idx)
            } else {
                "{}".to_owned()
            },
        }
    }

    /// The join of the `i`-th topic; its reply is timed from now.
    pub fn join(&mut self, i: usize, topic: &str) -> String {
        let r = i + 1;
        if let Some(p) = self.pending.get_mut(i) {
            *p = Some(Instant::now());
        }
        format!(r#"["{r}","{r}","{topic}","phx_join",{}]"#, self.join_params)
    }

    /// A heartbeat (odd refs past the joins).
    pub fn heartbeat(&mut self) -> String {
        if self.next_ref % 2 == 0 {
            self.next_ref += 1;
        }
        let f = format!(r#"[null,"{}","phoenix","heartbeat",{{}}]"#, self.next_ref);
        self.next_ref += 1;
        f
    }

    /// A `new_msg` push to `topic` (even refs past the joins), counted as sent.
    pub fn push(&mut self, topic: &str) -> String {
        if self.next_ref % 2 == 1 {
            self.next_ref += 1;
        }
        let f = push_frame(topic, self.next_ref, self.sender, self.seq, &self.pad);
        self.next_ref += 1;
        self.seq += 1;
        self.stats.live.pushes_sent.fetch_add(1, Relaxed);
        f
    }

    /// Handles one incoming text frame; anything unparseable is ignored.
    pub fn handle(&mut self, text: &str) {
        let live = &self.stats.live;
        let Ok(Frame(_, r, topic, event, payload)) = serde_json::from_str::<Frame>(text) else {
            return;
        };
        match event {
            "phx_reply" => {
                let r: u64 = r.and_then(|r| r.parse().ok()).unwrap_or(0);
                let status_ok = serde_json::from_str::<Reply>(payload.get())
                    .map(|p| p.status == "ok")
                    .unwrap_or(false);
                if r >= 1 && r <= self.n {
                    if let Some(t) = self.pending[(r - 1) as usize].take() {
                        if let Some((_, pos)) = reply_position(payload.get()) {
                            self.positions.base(topic.get(), &pos);
                        }
                        if status_ok {
                            self.stats.joined(t.elapsed().as_micros() as u64);
                        } else {
                            live.join_errors.fetch_add(1, Relaxed);
                        }
                        self.unsettled -= 1;
                        if self.unsettled == 0 {
                            live.settled.fetch_add(1, Relaxed);
                        }
                    }
                } else if r > self.n && r % 2 == 0 {
                    // even refs are pushes, odd ones heartbeats
                    if status_ok {
                        live.pushes_ok.fetch_add(1, Relaxed);
                    } else {
                        live.push_errors.fetch_add(1, Relaxed);
                    }
                }
            }
            "phx_error" | "phx_close" => {
                live.join_errors.fetch_add(1, Relaxed);
            }
            _ => {
                if let Some(step) = r.and_then(|r| self.positions.see(topic.get(), r)) {
                    Positions::count(&self.stats, step);
                }
                if let Ok(msg) = serde_json::from_str::<Msg>(payload.get()) {
                    if self.seen.see(msg.s, msg.seq) {
                        let now = now_ns();
                        self.stats.delivery(now, now.saturating_sub(msg.ts) / 1000);
                    } else {
                        live.duplicates.fetch_add(1, Relaxed);
                    }
                }
            }
        }
    }

    /// The connection ended: `stopped` when the run told it to, otherwise it
    /// counts as a disconnect; unanswered joins count as errors.
    pub fn finish(self, stopped: bool) {
        let live = &self.stats.live;
        live.open.fetch_sub(1, Relaxed);
        if self.unsettled > 0 {
            live.join_errors.fetch_add(self.unsettled as u64, Relaxed);
            live.settled.fetch_add(1, Relaxed);
        }
        if !stopped {
            live.disconnects.fetch_add(1, Relaxed);
        }
    }
}

/// Counts a failed connection attempt (printing the first few).
pub fn connect_failed(stats: &Stats, e: &anyhow::Error) {
    let live = &stats.live;
    if live.connect_errors.fetch_add(1, Relaxed) < 3 {
        eprintln!("connect error: {e:#}");
    }
    live.settled.fetch_add(1, Relaxed);
}

/// Runs one WebSocket client until the phase is Stop; counts everything in `stats`.
pub async fn run(
    target: Arc<Target>,
    stats: Arc<Stats>,
    spec: Spec,
    mut phase: watch::Receiver<Phase>,
) {
    let t0 = Instant::now();
    let mut ws = match connect(&target, spec.idx).await {
        Ok(ws) => ws,
        Err(e) => return connect_failed(&stats, &e),
    };
    record(&mut stats.connect.lock(), t0.elapsed().as_micros() as u64);
    let mut c = Client::new(stats, &spec);

    let mut ok = true;
    for (i, topic) in spec.topics.iter().enumerate() {
        let f = c.join(i, topic);
        if ws.send(Message::text(f)).await.is_err() {
            ok = false;
            break;
        }
    }
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    let push_every = spec.push_every.unwrap_or(Duration::from_secs(3600));
    let mut push = tokio::time::interval(push_every);
    push.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let pushing = spec.push_every.is_some();
    let mut cur = *phase.borrow();

    while ok && cur != Phase::Stop {
        tokio::select! {
            m = ws.next() => {
                match m {
                    Some(Ok(Message::Text(t))) => c.handle(t.as_str()),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                }
            }
            _ = heartbeat.tick() => {
                let f = c.heartbeat();
                if ws.send(Message::text(f)).await.is_err() { ok = false; }
            }
            _ = push.tick(), if pushing && cur == Phase::Go && c.unsettled == 0 => {
                let f = c.push(&spec.topics[0]);
                if ws.send(Message::text(f)).await.is_err() { ok = false; }
            }
            ch = phase.changed() => {
                if ch.is_err() { break; }
                cur = *phase.borrow();
            }
        }
    }
    c.finish(cur == Phase::Stop);
    if cur == Phase::Stop {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_tracking_flags_duplicates_per_sender() {
        let mut s = Seen::default();
        assert!(s.see(1, 0));
        assert!(s.see(1, 1));
        assert!(s.see(2, 0));
        assert!(!s.see(1, 1), "duplicate");
        assert!(
            s.see(1, 5),
            "a gap is not a duplicate (it counts as missing)"
        );
        assert!(!s.see(1, 3), "late after a gap");
    }

    #[test]
    fn positions_are_checked_to_be_consecutive_per_topic() {
        let mut p = Positions::default();
        let t = "\"hist:1\"";
        p.base(t, "ab:5");
        assert_eq!(p.see(t, "ab:6"), Some(Step::Next));
        assert_eq!(p.see(t, "ab:6"), Some(Step::Dup));
        assert_eq!(p.see(t, "ab:4"), Some(Step::Dup));
        assert_eq!(p.see(t, "ab:9"), Some(Step::Gap(2)));
        assert_eq!(p.see(t, "cd:1"), Some(Step::NewEpoch));
        assert_eq!(p.last(t), Some(("cd", 1)));
        assert_eq!(p.see("\"other\"", "x:10"), Some(Step::Next));
        assert_eq!(p.see(t, "7"), None, "a plain ref is no position");
        assert_eq!(
            reply_position(
                r#"{"status":"ok","response":{"history":{"recovered":true,"position":"e:3"}}}"#
            ),
            Some((true, "e:3".to_owned()))
        );
        assert_eq!(reply_position(r#"{"status":"ok","response":{}}"#), None);
    }

    #[test]
    fn frames_parse_and_push_frames_round_trip() {
        let f = push_frame("room:1", 4, 9, 3, "xx");
        let Frame(_, r, topic, event, payload) = serde_json::from_str(&f).unwrap();
        assert_eq!(
            (r, topic.get(), event),
            (Some("4"), "\"room:1\"", "new_msg")
        );
        let m: Msg = serde_json::from_str(payload.get()).unwrap();
        assert_eq!((m.seq, m.s), (3, 9));
        assert!(m.ts > 0);
    }
}
