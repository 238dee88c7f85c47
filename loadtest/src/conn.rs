//! One Phoenix V2 JSON client connection over WebSocket.

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
pub(crate) enum Phase {
    Setup,
    Go,
    Halt,
    Stop,
}

/// Where and how to connect.
#[derive(Debug)]
pub(crate) struct Target {
    /// Gateway endpoints (address, URL); connection `idx` goes to `idx % len`,
    /// so connections spread evenly over several pods.
    pub(crate) endpoints: Vec<(SocketAddr, String)>,
    pub(crate) source_ips: Vec<IpAddr>,
}

pub(crate) type Ws = WebSocketStream<TcpStream>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const HEARTBEAT: Duration = Duration::from_secs(30);

/// Opens a WebSocket from the `idx`-th source address, with small buffers.
pub(crate) async fn connect(target: &Target, idx: u64) -> anyhow::Result<Ws> {
    let n = target.endpoints.len().max(1) as u64;
    let Some((addr, url)) = target.endpoints.get((idx % n) as usize) else {
        anyhow::bail!("no --url given");
    };
    let fut = async {
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
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config))
                .await
                .context("websocket handshake")?;
        anyhow::Ok(ws)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, fut)
        .await
        .context("connect timed out")?
}

/// A V2 frame `[join_ref, ref, topic, event, payload]`.
#[derive(Deserialize)]
pub(crate) struct Frame<'a>(
    pub(crate) serde::de::IgnoredAny,
    pub(crate) Option<&'a str>,
    #[serde(borrow)] pub(crate) &'a RawValue,
    pub(crate) &'a str,
    #[serde(borrow)] pub(crate) &'a RawValue,
);

/// The payload loadtest publishes: a sequence number per sender, a send time.
#[derive(Deserialize)]
pub(crate) struct Msg {
    pub(crate) seq: u64,
    pub(crate) ts: u64,
    pub(crate) s: u32,
}

#[derive(Deserialize)]
pub(crate) struct Reply<'a> {
    pub(crate) status: &'a str,
}

/// What one client connection does.
#[derive(Debug)]
pub(crate) struct Spec {
    pub(crate) idx: u64,
    pub(crate) topics: Vec<String>,
    /// Push `new_msg` to the first topic at this interval while the phase is Go.
    pub(crate) push_every: Option<Duration>,
    pub(crate) pad: usize,
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

pub(crate) fn push_frame(topic: &str, r: u64, sender: u32, seq: u64, pad: &str) -> String {
    format!(
        r#"[null,"{r}","{topic}","new_msg",{{"seq":{seq},"ts":{},"s":{sender},"pad":"{pad}"}}]"#,
        now_ns()
    )
}

/// Runs one client until the phase is Stop; counts everything in `stats`.
pub(crate) async fn run(
    target: Arc<Target>,
    stats: Arc<Stats>,
    spec: Spec,
    mut phase: watch::Receiver<Phase>,
) {
    let live = &stats.live;
    let t0 = Instant::now();
    let mut ws = match connect(&target, spec.idx).await {
        Ok(ws) => ws,
        Err(e) => {
            if live.connect_errors.fetch_add(1, Relaxed) < 3 {
                eprintln!("connect error: {e:#}");
            }
            live.settled.fetch_add(1, Relaxed);
            return;
        }
    };
    record(&mut stats.connect.lock(), t0.elapsed().as_micros() as u64);
    live.connects_ok.fetch_add(1, Relaxed);
    live.open.fetch_add(1, Relaxed);

    let n = spec.topics.len() as u64;
    let mut pending: Vec<Option<Instant>> = vec![None; spec.topics.len()];
    let mut ok = true;
    for (i, topic) in spec.topics.iter().enumerate() {
        let r = i + 1;
        pending[i] = Some(Instant::now());
        let f = format!(r#"["{r}","{r}","{topic}","phx_join",{{}}]"#);
        if ws.send(Message::text(f)).await.is_err() {
            ok = false;
            break;
        }
    }
    let mut unsettled = spec.topics.len();
    if unsettled == 0 {
        live.settled.fetch_add(1, Relaxed);
    }
    let mut next_ref = n + 1;
    let mut seen = Seen::default();
    let mut seq = 0u64;
    let pad = "x".repeat(spec.pad);
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
                let text = match m {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                let Ok(Frame(_, r, _topic, event, payload)) = serde_json::from_str::<Frame>(text.as_str()) else { continue };
                match event {
                    "phx_reply" => {
                        let r: u64 = r.and_then(|r| r.parse().ok()).unwrap_or(0);
                        let status_ok = serde_json::from_str::<Reply>(payload.get()).map(|p| p.status == "ok").unwrap_or(false);
                        if r >= 1 && r <= n {
                            if let Some(t) = pending[(r - 1) as usize].take() {
                                if status_ok { stats.joined(t.elapsed().as_micros() as u64); }
                                else { live.join_errors.fetch_add(1, Relaxed); }
                                unsettled -= 1;
                                if unsettled == 0 { live.settled.fetch_add(1, Relaxed); }
                            }
                        } else if r > n && r % 2 == 0 {
                            // even refs are pushes, odd ones heartbeats
                            if status_ok { live.pushes_ok.fetch_add(1, Relaxed); }
                            else { live.push_errors.fetch_add(1, Relaxed); }
                        }
                    }
                    "phx_error" | "phx_close" => { live.join_errors.fetch_add(1, Relaxed); }
                    _ => {
                        if let Ok(msg) = serde_json::from_str::<Msg>(payload.get()) {
                            if seen.see(msg.s, msg.seq) {
                                let now = now_ns();
                                stats.delivery(now, now.saturating_sub(msg.ts) / 1000);
                            } else {
                                live.duplicates.fetch_add(1, Relaxed);
                            }
                        }
                    }
                }
            }
            _ = heartbeat.tick() => {
                if next_ref % 2 == 0 { next_ref += 1; }
                let f = format!(r#"[null,"{next_ref}","phoenix","heartbeat",{{}}]"#);
                next_ref += 1;
                if ws.send(Message::text(f)).await.is_err() { ok = false; }
            }
            _ = push.tick(), if pushing && cur == Phase::Go && unsettled == 0 => {
                if next_ref % 2 == 1 { next_ref += 1; }
                let f = push_frame(&spec.topics[0], next_ref, spec.idx as u32, seq, &pad);
                next_ref += 1;
                seq += 1;
                live.pushes_sent.fetch_add(1, Relaxed);
                if ws.send(Message::text(f)).await.is_err() { ok = false; }
            }
            c = phase.changed() => {
                if c.is_err() { break; }
                cur = *phase.borrow();
            }
        }
    }
    live.open.fetch_sub(1, Relaxed);
    if unsettled > 0 {
        live.join_errors.fetch_add(unsettled as u64, Relaxed);
        live.settled.fetch_add(1, Relaxed);
    }
    if cur == Phase::Stop {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    } else {
        live.disconnects.fetch_add(1, Relaxed);
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
