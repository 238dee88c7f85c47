//! The presence-join scenario's clients: present users that join during
//! setup and stay, and joiners that join during the measured phase at their
//! slot and stay. Every client counts the `presence_diff` frames it gets per
//! second; a joiner times its join reply and its `presence_state`; one
//! observer per pod keeps the list phoenix.js's `Presence` would show and
//! reports a digest of it at the end, so the parent can tell whether every
//! pod's clients agree. Also the parent's two probes: Redis's `INFO
//! commandstats` and the machine's busy CPU time.
//!
//! Like `conn`, it knows one connection and the numbers it feeds; the
//! schedule and the judging are the worker's and the report's.

use crate::conn::{self, Phase, Target};
use crate::stats::{encode_hist, new_hist, record, PresenceResult, Stats};
use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// What one worker's clients saw, summed.
#[derive(Debug)]
pub(crate) struct Shared {
    /// When the measured phase began in this worker.
    pub(crate) go: OnceLock<Instant>,
    diff_frames: AtomicU64,
    client_us: AtomicU64,
    max_per_sec: AtomicU64,
    state_bytes: AtomicU64,
    join: Mutex<Histogram<u64>>,
    state: Mutex<Histogram<u64>>,
    observers: Mutex<Vec<(u64, u64, u64, u64)>>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            go: OnceLock::new(),
            diff_frames: AtomicU64::new(0),
            client_us: AtomicU64::new(0),
            max_per_sec: AtomicU64::new(0),
            state_bytes: AtomicU64::new(0),
            join: Mutex::new(new_hist()),
            state: Mutex::new(new_hist()),
            observers: Mutex::new(Vec::new()),
        }
    }
}

impl Shared {
    pub(crate) fn result(&self) -> PresenceResult {
        PresenceResult {
            diff_frames: self.diff_frames.load(Relaxed),
            client_secs: self.client_us.load(Relaxed) as f64 / 1e6,
            max_per_sec: self.max_per_sec.load(Relaxed),
            join: encode_hist(&self.join.lock()),
            state: encode_hist(&self.state.lock()),
            state_bytes: self.state_bytes.load(Relaxed),
            observers: self.observers.lock().clone(),
        }
    }
}

/// What a connection does.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role {
    /// Joins during setup; an observer also keeps the list.
    Present { observer: bool },
    /// Joins this long after the measured phase began.
    Joiner { after: Duration },
}

#[derive(Deserialize)]
struct Reply<'a> {
    status: &'a str,
}

#[derive(Deserialize)]
struct Metas {
    metas: Vec<RefOnly>,
}

#[derive(Deserialize)]
struct RefOnly {
    phx_ref: String,
}

#[derive(Deserialize, Default)]
struct DiffWire {
    #[serde(default)]
    joins: HashMap<String, Metas>,
    #[serde(default)]
    leaves: HashMap<String, Metas>,
}

/// The list as phoenix.js's `Presence` keeps it: key -> refs; diffs that
/// arrive before the first state wait for it.
#[derive(Debug, Default)]
struct View {
    state: HashMap<String, BTreeSet<String>>,
    synced: bool,
    early: Vec<String>,
}

impl View {
    fn set_state(&mut self, payload: &str) {
        let Ok(s) = serde_json::from_str::<HashMap<String, Metas>>(payload) else {
            return;
        };
        self.state = s
            .into_iter()
            .map(|(k, m)| (k, m.metas.into_iter().map(|r| r.phx_ref).collect()))
            .collect();
        self.synced = true;
        for d in std::mem::take(&mut self.early) {
            self.diff(&d);
        }
    }

    fn diff(&mut self, payload: &str) {
        if !self.synced {
            self.early.push(payload.to_owned());
            return;
        }
        let Ok(d) = serde_json::from_str::<DiffWire>(payload) else {
            return;
        };
        for (k, m) in d.joins {
            self.state
                .entry(k)
                .or_default()
                .extend(m.metas.into_iter().map(|r| r.phx_ref));
        }
        for (k, m) in d.leaves {
            if let Some(refs) = self.state.get_mut(&k) {
                for r in m.metas {
                    refs.remove(&r.phx_ref);
                }
                if refs.is_empty() {
                    self.state.remove(&k);
                }
            }
        }
    }

    /// (keys, metas, a digest of every key and ref, the same on every
    /// process for the same list).
    fn digest(&self) -> (u64, u64, u64) {
        let mut keys: Vec<(&String, &BTreeSet<String>)> = self.state.iter().collect();
        keys.sort();
        let mut h = std::hash::DefaultHasher::new();
        let mut metas = 0;
        for (k, refs) in keys {
            k.hash(&mut h);
            refs.hash(&mut h);
            metas += refs.len() as u64;
        }
        (self.state.len() as u64, metas, h.finish())
    }
}

/// `presence_diff` frames one client got, per second of the measured phase.
#[derive(Debug, Default)]
struct Rate {
    second: u64,
    in_second: u64,
    max: u64,
    frames: u64,
}

impl Rate {
    fn frame(&mut self, since_go: Duration) {
        let s = since_go.as_secs();
        if s != self.second {
            self.second = s;
            self.in_second = 0;
        }
        self.in_second += 1;
        self.max = self.max.max(self.in_second);
        self.frames += 1;
    }
}

/// Each pod's list as a new client sees it: a watcher (no `user`, so not
/// listed) joins `topic` on every pod of `target` and reads its
/// `presence_state`; (keys, metas, digest) per pod, in `--url` order.
pub(crate) async fn pod_states(
    target: &Target,
    topic: &str,
) -> anyhow::Result<Vec<(u64, u64, u64)>> {
    let mut out = Vec::new();
    for i in 0..target.endpoints.len() as u64 {
        let mut ws = connect(target, i).await?;
        let join = format!(r#"["1","1","{topic}","phx_join",{{}}]"#);
        ws.send(Message::text(join)).await?;
        let mut view = View::default();
        let read = async {
            while let Some(m) = ws.next().await {
                if let Message::Text(t) = m? {
                    if let Some((_, "presence_state", payload)) = header(t.as_str()) {
                        view.set_state(payload);
                        return anyhow::Ok(());
                    }
                }
            }
            anyhow::bail!("pod {i} closed before its presence_state")
        };
        tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .context("no presence_state within 60 s")??;
        out.push(view.digest());
        let _ = ws.close(None).await;
    }
    Ok(out)
}

/// Splits a V2 frame `[join_ref, ref, topic, event, payload]` without
/// parsing its payload (a `presence_state` of a large topic is megabytes,
/// and only observers need to read it): (ref, event, payload text). The
/// gateway's refs, topics and events here hold no escaped quotes.
fn header(text: &str) -> Option<(Option<&str>, &str, &str)> {
    let mut rest = text.strip_prefix('[')?;
    let mut field = || -> Option<Option<&str>> {
        let (value, after) = if let Some(r) = rest.strip_prefix("null") {
            (None, r)
        } else {
            let r = rest.strip_prefix('"')?;
            let end = r.find('"')?;
            (Some(&r[..end]), &r[end + 1..])
        };
        rest = after.strip_prefix(',')?;
        Some(value)
    };
    let (_, r, _, event) = (field()?, field()?, field()?, field()??);
    let payload = rest.strip_suffix(']')?;
    Some((r, event, payload))
}

/// Opens a WebSocket that takes a `presence_state` of a large topic.
async fn connect(target: &Target, idx: u64) -> anyhow::Result<conn::Ws> {
    let fut = async {
        let (stream, url) = conn::tcp(target, idx).await?;
        let config = WebSocketConfig::default()
            .read_buffer_size(16 << 10)
            .write_buffer_size(0)
            .max_message_size(Some(1 << 30))
            .max_frame_size(Some(1 << 30));
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .context("websocket handshake")?;
        anyhow::Ok(ws)
    };
    tokio::time::timeout(conn::CONNECT_TIMEOUT, fut)
        .await
        .context("connect timed out")?
}

/// Runs one client until the phase is Stop.
pub(crate) async fn run(
    target: Arc<Target>,
    stats: Arc<Stats>,
    shared: Arc<Shared>,
    idx: u64,
    topic: String,
    role: Role,
    mut phase: watch::Receiver<Phase>,
) {
    let live = &stats.live;
    if let Role::Joiner { after } = role {
        while *phase.borrow() < Phase::Go {
            if phase.changed().await.is_err() {
                return;
            }
        }
        let go = *shared.go.get_or_init(Instant::now);
        if *phase.borrow() != Phase::Go {
            return;
        }
        tokio::time::sleep_until((go + after).into()).await;
    }
    let t0 = Instant::now();
    let mut ws = match connect(&target, idx).await {
        Ok(ws) => ws,
        Err(e) => {
            conn::connect_failed(&stats, &e);
            return;
        }
    };
    record(&mut stats.connect.lock(), t0.elapsed().as_micros() as u64);
    live.connects_ok.fetch_add(1, Relaxed);
    live.open.fetch_add(1, Relaxed);
    let present = matches!(role, Role::Present { .. });
    let user = if present {
        format!("p{idx}")
    } else {
        format!("j{idx}")
    };
    let join = format!(r#"["1","1","{topic}","phx_join",{{"user":"{user}"}}]"#);
    let sent = Instant::now();
    let mut ok = ws.send(Message::text(join)).await.is_ok();
    let mut settled = false;
    let settle = |settled: &mut bool| {
        if present && !*settled {
            live.settled.fetch_add(1, Relaxed);
        }
        *settled = true;
    };
    let mut joined_at: Option<Instant> = None;
    let mut got_state = false;
    let mut view = matches!(role, Role::Present { observer: true }).then(View::default);
    let mut rate = Rate::default();
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + conn::HEARTBEAT,
        conn::HEARTBEAT,
    );
    let mut hb_ref = 1u64;
    let mut cur = *phase.borrow();
    let mut halted_at: Option<Instant> = None;
    // An observer's list once nothing arrived for a second after Halt.
    let mut quiet = None;
    let mut last_frame = Instant::now();
    while ok && cur != Phase::Stop {
        let quiet_at = last_frame + Duration::from_secs(1);
        tokio::select! {
            _ = tokio::time::sleep_until(quiet_at.into()), if cur == Phase::Halt && view.is_some() => {
                quiet = view.as_ref().map(View::digest);
                last_frame = Instant::now();
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    last_frame = Instant::now();
                    let Some((r, event, payload)) = header(t.as_str()) else {
                        continue;
                    };
                    match event {
                        "phx_reply" if r == Some("1") && !settled => {
                            let us = sent.elapsed().as_micros() as u64;
                            let status_ok = serde_json::from_str::<Reply>(payload)
                                .is_ok_and(|p| p.status == "ok");
                            if status_ok {
                                stats.joined(us);
                                joined_at = Some(Instant::now());
                                if !present {
                                    record(&mut shared.join.lock(), us);
                                }
                            } else {
                                live.join_errors.fetch_add(1, Relaxed);
                            }
                            settle(&mut settled);
                        }
                        "presence_state" => {
                            if !present && !got_state {
                                record(&mut shared.state.lock(), sent.elapsed().as_micros() as u64);
                            }
                            got_state = true;
                            shared.state_bytes.fetch_max(payload.len() as u64, Relaxed);
                            if let Some(v) = &mut view {
                                v.set_state(payload);
                            }
                        }
                        "presence_diff" => {
                            if let (Phase::Go, Some(go)) = (cur, shared.go.get()) {
                                rate.frame(go.elapsed());
                            }
                            if let Some(v) = &mut view {
                                v.diff(payload);
                            }
                        }
                        "phx_error" | "phx_close" => {
                            live.join_errors.fetch_add(1, Relaxed);
                            settle(&mut settled);
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = heartbeat.tick() => {
                hb_ref += 2;
                let f = format!(r#"[null,"{hb_ref}","phoenix","heartbeat",{{}}]"#);
                ok = ws.send(Message::text(f)).await.is_ok();
            }
            ch = phase.changed() => {
                if ch.is_err() { break; }
                cur = *phase.borrow();
                if cur >= Phase::Halt && halted_at.is_none() {
                    halted_at = Some(Instant::now());
                }
            }
        }
    }
    settle(&mut settled);
    // Time joined within the measured phase, for frames per client-second.
    if let (Some(go), Some(joined)) = (shared.go.get(), joined_at) {
        let end = halted_at.unwrap_or_else(Instant::now);
        let from = joined.max(*go);
        if end > from {
            shared
                .client_us
                .fetch_add((end - from).as_micros() as u64, Relaxed);
        }
    }
    shared.diff_frames.fetch_add(rate.frames, Relaxed);
    shared.max_per_sec.fetch_max(rate.max, Relaxed);
    if let Some(v) = &view {
        // The list from before Stop: at Stop every client leaves.
        let (keys, metas, digest) = quiet.unwrap_or_else(|| v.digest());
        shared.observers.lock().push((idx, keys, metas, digest));
    }
    live.open.fetch_sub(1, Relaxed);
    if cur == Phase::Stop {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    } else {
        live.disconnects.fetch_add(1, Relaxed);
    }
}

/// A connection to `url` whose replies may take long: a busy machine, a
/// large pipeline.
pub(crate) async fn redis_conn(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// The simulated pod that holds `--seeded` presences.
const SEEDED_POD: &str = "loadtest-seeded";

fn seeded_ref(i: u64) -> String {
    format!("loadtest-seeded-{i:07}")
}

/// Writes `n` presences of `topic` into Redis as the pods do, held by a pod
/// that is alive for `ttl`, so that every pod lists them.
pub(crate) async fn seed(
    url: &str,
    prefix: &str,
    topic: &str,
    n: u64,
    ttl: Duration,
) -> anyhow::Result<()> {
    let mut c = redis_conn(url).await?;
    let index = format!("{prefix}presence-pod:{SEEDED_POD}");
    let hash = format!("{prefix}presence:{topic}");
    let _: () = redis::pipe()
        .cmd("SET")
        .arg(format!("{prefix}presence-alive:{SEEDED_POD}"))
        .arg(1)
        .arg("PX")
        .arg(ttl.as_millis() as u64)
        .ignore()
        .sadd(format!("{prefix}presence-pods"), SEEDED_POD)
        .ignore()
        .query_async(&mut c)
        .await?;
    let ids: Vec<u64> = (0..n).collect();
    for chunk in ids.chunks(1000) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            let r = seeded_ref(i);
            let v = serde_json::json!({"key": format!("s{i}"), "meta": {"online_at": "1763790000", "phx_ref": r}});
            pipe.hset(&hash, &r, v.to_string()).ignore();
            pipe.hset(&index, &r, topic).ignore();
        }
        let _: () = pipe.query_async(&mut c).await?;
    }
    Ok(())
}

/// Removes what [`seed`] wrote, quietly: no pod publishes their leaves.
pub(crate) async fn unseed(url: &str, prefix: &str, topic: &str, n: u64) -> anyhow::Result<()> {
    let mut c = redis_conn(url).await?;
    let hash = format!("{prefix}presence:{topic}");
    let ids: Vec<u64> = (0..n).collect();
    for chunk in ids.chunks(1000) {
        let refs: Vec<String> = chunk.iter().map(|&i| seeded_ref(i)).collect();
        let _: () = redis::cmd("HDEL")
            .arg(&hash)
            .arg(refs)
            .query_async(&mut c)
            .await?;
    }
    let _: () = redis::pipe()
        .del(format!("{prefix}presence-pod:{SEEDED_POD}"))
        .ignore()
        .srem(format!("{prefix}presence-pods"), SEEDED_POD)
        .ignore()
        .del(format!("{prefix}presence-alive:{SEEDED_POD}"))
        .ignore()
        .query_async(&mut c)
        .await?;
    Ok(())
}

/// `INFO commandstats` of the Redis at `url`: command -> calls.
pub(crate) async fn commandstats(url: &str) -> anyhow::Result<HashMap<String, i64>> {
    let mut c = redis_conn(url).await?;
    let text: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await?;
    Ok(pubsub_redis::info::commandstats(&text))
}

/// Calls per command between two `INFO commandstats` (without `info`).
pub(crate) fn delta(
    before: &HashMap<String, i64>,
    after: &HashMap<String, i64>,
) -> Vec<(String, i64)> {
    let mut d: Vec<(String, i64)> = after
        .iter()
        .filter(|(c, _)| *c != "info")
        .map(|(c, n)| (c.clone(), n - before.get(c).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    d.sort_by_key(|c| std::cmp::Reverse(c.1));
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_applies_diffs_as_phoenix_js_and_waits_for_the_state() {
        let mut v = View::default();
        v.diff(r#"{"joins":{"b":{"metas":[{"phx_ref":"2"}]}},"leaves":{}}"#);
        v.set_state(r#"{"a":{"metas":[{"phx_ref":"1"}]}}"#);
        assert_eq!(v.digest().0, 2, "the early diff applies after the state");
        v.diff(r#"{"joins":{},"leaves":{"a":{"metas":[{"phx_ref":"1"}]},"x":{"metas":[{"phx_ref":"9"}]}}}"#);
        let mut w = View::default();
        w.set_state(r#"{"b":{"metas":[{"phx_ref":"2","online_at":"5"}]}}"#);
        assert_eq!(v.digest(), w.digest());
    }

    #[test]
    fn headers_split_without_parsing_the_payload() {
        let f = r#"["1","1","room:lt:0","phx_reply",{"status":"ok","response":{}}]"#;
        assert_eq!(
            header(f),
            Some((Some("1"), "phx_reply", r#"{"status":"ok","response":{}}"#))
        );
        let f = r#"[null,null,"room:lt:0","presence_diff",{"joins":{},"leaves":{}}]"#;
        assert_eq!(header(f).map(|h| (h.0, h.1)), Some((None, "presence_diff")));
        assert_eq!(header("[1,2]"), None);
    }

    #[test]
    fn rates_count_the_busiest_second() {
        let mut r = Rate::default();
        for ms in [0, 100, 200, 1100, 1150, 1200, 1250] {
            r.frame(Duration::from_millis(ms));
        }
        assert_eq!((r.frames, r.max), (7, 4));
        let mut before = HashMap::new();
        before.insert("hset".to_owned(), 2);
        let mut after = before.clone();
        after.insert("hset".to_owned(), 5);
        after.insert("info".to_owned(), 9);
        assert_eq!(delta(&before, &after), [("hset".to_owned(), 3)]);
    }
}
