//! The subscribers: WebSocket clients (loadtest's connection) spread over
//! the pods, one topic each, behaving as phoenix.js does when things fail —
//! a lost socket is reconnected with phoenix.js's backoff through the
//! "balancer" (the next pod), a refused or crashed join is retried with its
//! rejoin backoff, a heartbeat unanswered by the next one closes the socket —
//! and, for the soak, leaving and coming back on their own (churn).
//!
//! Each subscriber keeps an exact [`Record`] of what it received (one bit per
//! sequence number of its topic) and when it was joined; what that means is
//! `analysis`'s job.

use hdrhistogram::Histogram;
use loadtest::conn::{self, Frame, Msg, Target};
use loadtest::stats::{new_hist, now_ns, record};
use parking_lot::Mutex;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;

use futures_util::{SinkExt as _, StreamExt as _};

/// phoenix.js `reconnectAfterMs`, then 5 s.
const RECONNECT_MS: [u64; 9] = [10, 50, 100, 150, 200, 250, 500, 1000, 2000];
/// phoenix.js `rejoinAfterMs`, then 10 s.
const REJOIN_MS: [u64; 3] = [1000, 2000, 5000];
/// phoenix.js `heartbeatIntervalMs`.
const HEARTBEAT: Duration = Duration::from_secs(30);
/// Sequence numbers above this are ignored (bounds a record's memory).
const MAX_SEQ: u64 = 1 << 24;

/// What the fleet is.
#[derive(Debug, Clone)]
pub(crate) struct FleetSpec {
    pub(crate) subscribers: usize,
    /// Subscriber `i` joins `topics[i % len]`...
    pub(crate) topics: Vec<String>,
    /// ...on pod `i % len` first.
    pub(crate) pods: Vec<SocketAddr>,
    /// New connections per second while starting.
    pub(crate) connect_rate: f64,
    /// With churn, each connection lives a time drawn from this range, then
    /// closes and the subscriber connects again (to the next pod).
    pub(crate) churn: Option<(Duration, Duration)>,
}

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Events of the whole fleet, live.
        #[derive(Debug, Default)]
        pub(crate) struct Counters { $(pub(crate) $name: AtomicU64,)* }

        /// A snapshot of [`Counters`].
        #[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
        pub(crate) struct Snapshot { $(pub(crate) $name: u64,)* }

        impl Counters {
            pub(crate) fn snapshot(&self) -> Snapshot {
                Snapshot { $($name: self.$name.load(Relaxed),)* }
            }
        }

        impl Snapshot {
            /// What happened since `earlier`.
            pub(crate) fn since(&self, earlier: &Snapshot) -> Snapshot {
                Snapshot { $($name: self.$name - earlier.$name,)* }
            }
        }
    };
}

counters!(
    connects,
    connect_failures,
    // Sockets lost without the client closing them (closed or reset by the
    // pod, or a read error).
    disconnects,
    heartbeat_timeouts,
    churned,
    joins_ok,
    join_errors,
    // phx_error / phx_close on a joined topic.
    channel_errors,
    channel_closes,
    deliveries,
    duplicates,
    open,
);

/// What every subscriber shares with the run.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) counters: Counters,
    /// Publish→receive latencies (µs) since the runner last took them.
    pub(crate) interval: Mutex<Histogram<u64>>,
    /// Deliveries at or after this instant (ns since the epoch) count as
    /// "after the fault" in a subscriber's record.
    pub(crate) mark_ns: AtomicU64,
    stop: watch::Sender<bool>,
}

impl Shared {
    /// The latencies since the last call.
    pub(crate) fn take_interval(&self) -> Histogram<u64> {
        std::mem::replace(&mut *self.interval.lock(), new_hist())
    }

    pub(crate) fn set_mark(&self, ns: u64) {
        self.mark_ns.store(ns, Relaxed);
    }
}

/// One stretch of a subscriber being joined on one pod.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Segment {
    pub(crate) pod: usize,
    /// When the join reply arrived.
    pub(crate) joined_ns: u64,
    pub(crate) left_ns: u64,
    /// The client ended it (churn, the end of the run), rather than a lost
    /// socket or a channel error.
    pub(crate) voluntary: bool,
}

/// Everything one subscriber saw.
#[derive(Debug, Clone, Default)]
pub(crate) struct Record {
    pub(crate) topic: usize,
    /// Bit `seq` set: message `seq` of the topic arrived.
    pub(crate) got: Vec<u64>,
    pub(crate) duplicates: u64,
    pub(crate) segments: Vec<Segment>,
    /// The first delivery at or after the mark: when, and on which pod.
    pub(crate) first_after_mark: Option<(u64, usize)>,
}

impl Record {
    pub(crate) fn has(&self, seq: u64) -> bool {
        self.got
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    /// Marks `seq` received; false when it already was.
    fn set(&mut self, seq: u64) -> bool {
        let w = (seq / 64) as usize;
        if self.got.len() <= w {
            self.got.resize(w + 1, 0);
        }
        let bit = 1 << (seq % 64);
        let new = self.got[w] & bit == 0;
        self.got[w] |= bit;
        new
    }
}

/// The running fleet.
#[derive(Debug)]
pub(crate) struct Fleet {
    pub(crate) shared: Arc<Shared>,
    tasks: JoinSet<Record>,
}

impl Fleet {
    /// Starts the subscribers at `connect_rate` and returns at once.
    pub(crate) fn start(spec: FleetSpec) -> Fleet {
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            interval: Mutex::new(new_hist()),
            mark_ns: AtomicU64::new(u64::MAX),
            stop,
        });
        let target = Arc::new(Target {
            endpoints: spec
                .pods
                .iter()
                .map(|a| (*a, format!("ws://{a}/socket/websocket?vsn=2.0.0")))
                .collect(),
            source_ips: Vec::new(),
        });
        let spec = Arc::new(spec);
        let mut tasks = JoinSet::new();
        let t0 = Instant::now();
        for i in 0..spec.subscribers {
            let at = t0 + Duration::from_secs_f64(i as f64 / spec.connect_rate.max(1.0));
            let sub = Subscriber {
                i,
                spec: spec.clone(),
                target: target.clone(),
                shared: shared.clone(),
                stop: stop_rx.clone(),
                rng: Rng(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1)),
            };
            tasks.spawn(async move {
                sleep_until(at).await;
                sub.run().await
            });
        }
        Fleet { shared, tasks }
    }

    /// Waits until `n` joins have succeeded, for at most `within`.
    pub(crate) async fn joined(&self, n: u64, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.shared.counters.joins_ok.load(Relaxed) < n {
            if Instant::now() >= deadline {
                return false;
            }
            sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// Closes every subscriber and returns their records, by index.
    pub(crate) async fn stop(mut self) -> Vec<Record> {
        self.shared.stop.send_replace(true);
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let next = tokio::time::timeout_at(deadline, self.tasks.join_next()).await;
            match next {
                Ok(Some(Ok(r))) => out.push(r),
                Ok(Some(Err(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }
        self.tasks.abort_all();
        out
    }
}

/// xorshift64: churn lifetimes, reproducible per subscriber.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(if span == 0 { 0 } else { self.next() % span })
    }
}

/// Why a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Stopped,
    Churned,
    Lost,
}

struct Subscriber {
    i: usize,
    spec: Arc<FleetSpec>,
    target: Arc<Target>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    rng: Rng,
}

/// The state of one connection's channel.
struct Channel {
    topic: String,
    join_ref: u64,
    /// The pending join's ref, if a join is on its way.
    pending: Option<u64>,
    /// When joined: since when (ns).
    joined: Option<u64>,
    rejoin_at: Option<Instant>,
    rejoins: usize,
    closed: bool,
}

impl Subscriber {
    async fn run(mut self) -> Record {
        let n = self.spec.pods.len();
        let mut pod = self.i % n;
        let mut rec = Record {
            topic: self.i % self.spec.topics.len(),
            ..Record::default()
        };
        let mut attempt = 0usize;
        let shared = self.shared.clone();
        let c = &shared.counters;
        while !*self.stop.borrow() {
            let ws = tokio::select! {
                r = conn::connect(&self.target, pod as u64) => r,
                _ = self.stop.changed() => break,
            };
            let Ok(ws) = ws else {
                c.connect_failures.fetch_add(1, Relaxed);
                let ms = RECONNECT_MS.get(attempt).copied().unwrap_or(5000);
                attempt += 1;
                pod = (pod + 1) % n;
                tokio::select! {
                    _ = sleep(Duration::from_millis(ms)) => {}
                    _ = self.stop.changed() => {}
                }
                continue;
            };
            c.connects.fetch_add(1, Relaxed);
            c.open.fetch_add(1, Relaxed);
            let end = self.connection(ws, pod, &mut rec, &mut attempt).await;
            c.open.fetch_sub(1, Relaxed);
            match end {
                End::Stopped => break,
                End::Churned => {
                    c.churned.fetch_add(1, Relaxed);
                    pod = (pod + 1) % n;
                    let pause = self
                        .rng
                        .between(Duration::from_millis(50), Duration::from_millis(500));
                    tokio::select! {
                        _ = sleep(pause) => {}
                        _ = self.stop.changed() => {}
                    }
                }
                End::Lost => {
                    // The socket is gone: phoenix.js waits, then dials the
                    // same URL, which a balancer sends to a live pod.
                    let ms = RECONNECT_MS.get(attempt).copied().unwrap_or(5000);
                    attempt += 1;
                    pod = (pod + 1) % n;
                    tokio::select! {
                        _ = sleep(Duration::from_millis(ms)) => {}
                        _ = self.stop.changed() => {}
                    }
                }
            }
        }
        rec
    }

    /// One socket, from connect to close.
    async fn connection(
        &mut self,
        mut ws: conn::Ws,
        pod: usize,
        rec: &mut Record,
        attempt: &mut usize,
    ) -> End {
        let c = &self.shared.counters;
        let mut ch = Channel {
            topic: self.spec.topics[rec.topic].clone(),
            join_ref: 0,
            pending: None,
            joined: None,
            rejoin_at: Some(Instant::now()),
            rejoins: 0,
            closed: false,
        };
        let lifetime = self
            .spec
            .churn
            .map(|(lo, hi)| Instant::now() + self.rng.between(lo, hi));
        let mut next_ref = 1_000_000u64;
        let mut heartbeat_pending: Option<u64> = None;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + HEARTBEAT, HEARTBEAT);
        let far = Instant::now() + Duration::from_secs(1 << 30);
        let end = loop {
            if *self.stop.borrow() {
                break End::Stopped;
            }
            tokio::select! {
                m = ws.next() => {
                    let text = match m {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break End::Lost,
                        Some(Ok(_)) => continue,
                    };
                    let now = now_ns();
                    let Ok(Frame(_, r, _, event, payload)) = serde_json::from_str::<Frame>(text.as_str()) else {
                        continue;
                    };
                    let r: Option<u64> = r.and_then(|r| r.parse().ok());
                    match event {
                        "phx_reply" if r.is_some() && r == ch.pending => {
                            ch.pending = None;
                            if payload.get().contains(r#""status":"ok""#) {
                                c.joins_ok.fetch_add(1, Relaxed);
                                ch.joined = Some(now);
                                ch.rejoins = 0;
                                *attempt = 0;
                            } else {
                                c.join_errors.fetch_add(1, Relaxed);
                                ch.rejoin_at = Some(Instant::now() + rejoin_after(ch.rejoins));
                                ch.rejoins += 1;
                            }
                        }
                        "phx_reply" if r.is_some() && r == heartbeat_pending => heartbeat_pending = None,
                        "phx_error" | "phx_close" if ch.joined.is_some() => {
                            if let Some(since) = ch.joined.take() {
                                rec.segments.push(Segment { pod, joined_ns: since, left_ns: now, voluntary: false });
                            }
                            if event == "phx_close" {
                                // phoenix.js does not rejoin a closed channel.
                                c.channel_closes.fetch_add(1, Relaxed);
                                ch.closed = true;
                            } else {
                                c.channel_errors.fetch_add(1, Relaxed);
                                ch.rejoin_at = Some(Instant::now() + rejoin_after(ch.rejoins));
                                ch.rejoins += 1;
                            }
                        }
                        _ => {
                            if let Ok(msg) = serde_json::from_str::<Msg>(payload.get()) {
                                if msg.s as usize == rec.topic && msg.seq < MAX_SEQ {
                                    self.delivered(rec, &msg, now, pod);
                                }
                            }
                        }
                    }
                }
                _ = sleep_until(ch.rejoin_at.unwrap_or(far)), if ch.rejoin_at.is_some() && !ch.closed => {
                    ch.rejoin_at = None;
                    ch.join_ref += 1;
                    next_ref += 1;
                    ch.pending = Some(next_ref);
                    let f = format!(r#"["{}","{next_ref}","{}","phx_join",{{}}]"#, ch.join_ref, ch.topic);
                    if ws.send(Message::text(f)).await.is_err() {
                        break End::Lost;
                    }
                }
                _ = heartbeat.tick() => {
                    if heartbeat_pending.is_some() {
                        c.heartbeat_timeouts.fetch_add(1, Relaxed);
                        break End::Lost;
                    }
                    next_ref += 1;
                    heartbeat_pending = Some(next_ref);
                    let f = format!(r#"[null,"{next_ref}","phoenix","heartbeat",{{}}]"#);
                    if ws.send(Message::text(f)).await.is_err() {
                        break End::Lost;
                    }
                }
                _ = sleep_until(lifetime.unwrap_or(far)), if lifetime.is_some() => break End::Churned,
                _ = self.stop.changed() => {}
            }
        };
        let now = now_ns();
        if let Some(since) = ch.joined {
            rec.segments.push(Segment {
                pod,
                joined_ns: since,
                left_ns: now,
                voluntary: end != End::Lost,
            });
        }
        if end == End::Lost {
            c.disconnects.fetch_add(1, Relaxed);
        } else {
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
        }
        end
    }

    fn delivered(&self, rec: &mut Record, msg: &Msg, now: u64, pod: usize) {
        let c = &self.shared.counters;
        if !rec.set(msg.seq) {
            rec.duplicates += 1;
            c.duplicates.fetch_add(1, Relaxed);
            return;
        }
        c.deliveries.fetch_add(1, Relaxed);
        record(
            &mut self.shared.interval.lock(),
            now.saturating_sub(msg.ts) / 1000,
        );
        if rec.first_after_mark.is_none() && now >= self.shared.mark_ns.load(Relaxed) {
            rec.first_after_mark = Some((now, pod));
        }
    }
}

fn rejoin_after(n: usize) -> Duration {
    Duration::from_millis(REJOIN_MS.get(n).copied().unwrap_or(10_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_count_each_sequence_number_once() {
        let mut r = Record::default();
        assert!(r.set(0));
        assert!(r.set(130));
        assert!(!r.set(130));
        assert!(r.has(0) && r.has(130) && !r.has(1) && !r.has(100_000));
        assert_eq!(r.got.len(), 3);
    }

    #[test]
    fn churn_lifetimes_stay_in_range() {
        let mut rng = Rng(42);
        let (lo, hi) = (Duration::from_secs(30), Duration::from_secs(90));
        for _ in 0..1000 {
            let d = rng.between(lo, hi);
            assert!(d >= lo && d < hi, "{d:?}");
        }
        assert_eq!(rng.between(lo, lo), lo);
    }
}
