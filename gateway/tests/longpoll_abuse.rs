//! Long-poll priced like WebSocket (issue 14, findings 2 and 3), against a
//! real `gateway` process and `redis-server`: an abusive client on
//! 127.0.0.1 and a canary on another loopback address (another source).
//!
//! - Join amplification: the abuser opens sessions until its source is at
//!   its limit and floods each with joins; it is refused with clear reasons,
//!   the pod's memory stays bounded and the canary's joins are answered
//!   promptly throughout.
//! - Session flood over keep-alive connections: the abuser is refused (429)
//!   past its source's limits, the canary still connects, `/readyz` stays 200.
//! - Sessions that never poll end after `unpolled_timeout_ms` and never
//!   count against `max_connections`.
//!
//! Needs `redis-server` on PATH. Figures at full scale:
//! `longpoll_abuse_measure.rs`.

use serde_json::{json, Value};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::http::{tcp_from, HttpConn, Request};
use test_support::memory;
use test_support::{wait, GatewayBuilder, GatewayProcess, LpClient, PhxClient, RedisServer};

const CANARY: [u8; 4] = [127, 0, 0, 2];
/// Generous: a canary's join is one Redis round trip.
const PROMPT: Duration = Duration::from_secs(2);

fn pod(redis: &RedisServer) -> GatewayBuilder {
    GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway")).redis(&redis.url())
}

/// A WebSocket client from the canary's address.
async fn canary_ws(pod: &GatewayProcess) -> PhxClient {
    let stream = tcp_from(CANARY.into(), pod.addr).await.unwrap();
    PhxClient::connect_stream(&pod.url(""), stream).await
}

/// `n` join lines for `topics`, ndjson.
fn joins(topics: impl Iterator<Item = String>) -> String {
    topics
        .enumerate()
        .map(|(i, t)| json!([i.to_string(), i.to_string(), t, "phx_join", {}]).to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Opens a session on a kept-alive connection: its token, or the refusal.
async fn open(conn: &mut HttpConn) -> Result<String, (u16, String)> {
    let r = conn
        .send(&Request::get("/socket/longpoll?vsn=2.0.0").keep_alive())
        .await;
    match r.status {
        200 => Ok(r.json()["token"].as_str().unwrap().to_owned()),
        _ => Err((r.status, r.body)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_flood_is_refused_past_its_limits_and_never_delays_other_joins() {
    const SESSIONS: usize = 20;
    const MAX_CHANNELS: usize = 100;
    let redis = RedisServer::start().await;
    let pod = pod(&redis)
        .configure(|c| {
            c.server.max_connections_per_source = SESSIONS;
            c.server.max_queued_joins_per_source = 100;
            c.sockets[0].max_channels = MAX_CHANNELS;
        })
        .start()
        .await;
    let pid = pod.pid();
    let baseline = memory::rss(pid);

    // The canary joins a new topic every 50 ms while the flood runs.
    let mut canary = canary_ws(&pod).await;
    canary.join_retrying("room:canary-0", "c0").await;
    let flooding = Arc::new(AtomicBool::new(true));
    let canary_task = {
        let flooding = flooding.clone();
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            let mut n = 0;
            while flooding.load(Ordering::Relaxed) || n < 5 {
                n += 1;
                let jr = n.to_string();
                let t = Instant::now();
                let topic = format!("room:canary-{n}");
                let reply = canary.try_join(&topic, &jr).await;
                slowest = slowest.max(t.elapsed());
                assert_eq!(reply[4]["status"], "ok", "{reply}");
                canary.leave(&topic, &jr, "leave").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (n, slowest)
        })
    };

    // The abuser: sessions until its source is refused.
    let mut conn = HttpConn::connect(pod.addr).await;
    let mut tokens = Vec::new();
    let refusal = loop {
        match open(&mut conn).await {
            Ok(t) => tokens.push(t),
            Err(refused) => break refused,
        }
        assert!(tokens.len() <= SESSIONS, "more sessions than the limit");
    };
    assert_eq!(tokens.len(), SESSIONS);
    assert_eq!(refusal.0, 429, "{refusal:?}");
    assert_eq!(
        refusal.1,
        format!("too many connections from 127.0.0.1 ({SESSIONS} of {SESSIONS})")
    );
    let session = |token: &String| {
        let mut lp = LpClient::new(pod.addr, "vsn=2.0.0");
        lp.token = Some(token.clone());
        lp
    };

    // One session joins its fill (its joins fit in its source's lane,
    // whose queue holds 100), then one more: refused.
    let mut first = session(&tokens[0]);
    let fill = joins((0..MAX_CHANNELS).map(|j| format!("room:flood-0-{j}")));
    assert_eq!(first.post_raw(fill.as_bytes()).await, 200);
    let replies = first.messages(MAX_CHANNELS).await;
    assert!(
        replies.iter().all(|r| r[4]["status"] == "ok"),
        "{replies:?}"
    );
    let extra = json!(["x", "x", "room:flood-0-x", "phx_join", {}]);
    assert_eq!(first.post(&[extra]).await, 200);
    assert_eq!(
        first.messages(1).await[0][4],
        json!({"status": "error", "response": {"reason": "too many channels joined"}})
    );
    // Every other session floods a POST's worth of joins (100 lines are
    // applied, as Phoenix) at once.
    let mut posts = Vec::new();
    for (s, token) in tokens.iter().enumerate().skip(1) {
        let lp = session(token);
        let lines = joins((0..MAX_CHANNELS).map(|j| format!("room:flood-{s}-{j}")));
        posts.push(tokio::spawn(async move {
            assert_eq!(lp.post_raw(lines.as_bytes()).await, 200);
            lp
        }));
    }
    // Every join is answered: ok, or refused with a clear reason.
    let mut reasons = std::collections::BTreeMap::new();
    for post in posts {
        let mut lp = post.await.unwrap();
        let replies = lp.messages(MAX_CHANNELS).await;
        for r in replies.iter().filter(|r| r[4]["status"] != "ok") {
            let reason: &Value = &r[4]["response"]["reason"];
            *reasons
                .entry(reason.as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
    }
    let known = [
        "too many channels joined",
        "too many joins waiting, try again",
    ];
    assert!(
        reasons.keys().all(|r| known.contains(&r.as_str())),
        "{reasons:?}"
    );
    assert!(
        reasons.contains_key("too many joins waiting, try again"),
        "the source's join queue never filled: {reasons:?}"
    );

    flooding.store(false, Ordering::Relaxed);
    let (canary_joins, slowest) = canary_task.await.unwrap();
    assert!(
        slowest < PROMPT,
        "the canary's slowest join took {slowest:?} ({canary_joins} joins)"
    );
    // 20 sessions of at most 100 channels: a few MiB; 64 MiB is generous
    // (a debug build, jemalloc's caches).
    let grown = memory::rss(pid).saturating_sub(baseline);
    assert!(grown < 64 << 20, "the pod grew by {} MiB", grown >> 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_flood_is_refused_per_source_and_the_pod_stays_ready() {
    const PER_SOURCE: usize = 30;
    let redis = RedisServer::start().await;
    let pod = pod(&redis)
        .configure(|c| {
            c.server.max_connections = 40;
            c.server.max_connections_per_source = PER_SOURCE;
            c.server.connection_rate_per_source = 5;
            c.server.connection_burst_per_source = 20;
        })
        .start()
        .await;

    // 16 keep-alive connections open sessions as fast as they are answered.
    let mut flood = Vec::new();
    for _ in 0..16 {
        let addr = pod.addr;
        flood.push(tokio::spawn(async move {
            let mut conn = HttpConn::connect(addr).await;
            let (mut opened, mut refused) = (Vec::new(), Vec::new());
            for _ in 0..20 {
                match open(&mut conn).await {
                    Ok(t) => opened.push(t),
                    Err(r) => refused.push(r),
                }
            }
            (opened, refused)
        }));
    }
    let (mut opened, mut refused) = (Vec::new(), Vec::new());
    for f in flood {
        let (o, r) = f.await.unwrap();
        opened.extend(o);
        refused.extend(r);
    }
    // The burst, plus what the rate refilled meanwhile.
    assert!(
        (20..=PER_SOURCE).contains(&opened.len()),
        "{} sessions opened",
        opened.len()
    );
    for (status, body) in &refused {
        assert_eq!(*status, 429, "{body}");
        assert!(
            body.starts_with("connecting too fast from 127.0.0.1")
                || body.starts_with("too many connections from 127.0.0.1"),
            "{body}"
        );
    }
    // The abuser polls every session it got: they are real now, and its
    // source is refused past its limit even when its rate allows.
    for token in &opened {
        let mut lp = LpClient::new(pod.addr, "vsn=2.0.0");
        lp.token = Some(token.clone());
        lp.post(&[json!([null, "1", "phoenix", "heartbeat", {}])])
            .await;
        lp.messages(1).await;
    }

    let (status, body) = pod.get("/readyz").await.unwrap();
    assert_eq!(status, 200, "{body}");

    // The canary, from another address: long-poll and WebSocket.
    let mut lp = LpClient::new(pod.addr, "vsn=2.0.0");
    lp.from = Some(IpAddr::from(CANARY));
    lp.open().await;
    let t = Instant::now();
    assert_eq!(
        lp.post(&[json!(["1", "1", "room:canary", "phx_join", {}])])
            .await,
        200
    );
    let reply = lp.messages(1).await;
    assert_eq!(reply[0][4]["status"], "ok", "{reply:?}");
    assert!(
        t.elapsed() < PROMPT,
        "the canary's join took {:?}",
        t.elapsed()
    );
    let mut ws = canary_ws(&pod).await;
    ws.join("room:canary", "1").await;
    let (status, body) = pod.get("/readyz").await.unwrap();
    assert_eq!(status, 200, "{body}");
}

/// `/readyz`'s `connections:` and `unpolled long-poll sessions:` lines.
async fn counts(pod: &GatewayProcess) -> (u16, usize, usize) {
    let (status, body) = pod.get("/readyz").await.unwrap();
    let line = |prefix: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} in {body}"))
    };
    (
        status,
        line("connections: "),
        line("unpolled long-poll sessions: "),
    )
}

#[tokio::test]
async fn unpolled_sessions_end_soon_and_do_not_count_against_max_connections() {
    let redis = RedisServer::start().await;
    let pod = pod(&redis)
        // unpolled_timeout_ms at its default, 5 s.
        .configure(|c| c.server.max_connections = 2)
        .start()
        .await;

    // Five sessions that never poll: all opened, none counted.
    let mut unpolled = Vec::new();
    for _ in 0..5 {
        let mut lp = LpClient::new(pod.addr, "vsn=2.0.0");
        lp.open().await;
        unpolled.push(lp);
    }
    assert_eq!(counts(&pod).await, (200, 0, 5));

    // Two that poll fill the pod's two connection slots.
    let mut polled = Vec::new();
    for _ in 0..2 {
        let mut lp = LpClient::new(pod.addr, "vsn=2.0.0");
        lp.open().await;
        lp.post(&[json!([null, "1", "phoenix", "heartbeat", {}])])
            .await;
        lp.messages(1).await;
        polled.push(lp);
    }
    let (status, connections, _) = counts(&pod).await;
    assert_eq!((status, connections), (503, 2));

    // The unpolled ones end after unpolled_timeout_ms: their token is gone.
    wait::until("unpolled sessions end", wait::SETTLE, || async {
        match counts(&pod).await {
            (_, 2, 0) => Ok(()),
            other => Err(other),
        }
    })
    .await;
    let v = unpolled[0].get().await;
    assert_eq!(v["status"], 410, "{v}");
    // The polled ones live on (session_timeout_ms is 15 s).
    polled[0]
        .call(
            &[json!([null, "2", "phoenix", "heartbeat", {}])],
            &[json!([null, "2", "phoenix", "phx_reply", {"status": "ok", "response": {}}])],
        )
        .await;
}
