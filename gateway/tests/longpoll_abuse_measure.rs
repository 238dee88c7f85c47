//! Figures for docs/security.md, not a regression test (those are in
//! `longpoll_abuse.rs`): the long-poll join flood of issue 14 at full scale
//! against any `gateway` binary, e.g. a release build of main and of a
//! branch. Ignored by default; run with
//! `GATEWAY_BIN=target/release/gateway SESSIONS=2000 cargo test -p gateway
//! --test longpoll_abuse_measure -- --ignored --nocapture` (with `LIMITS=queue`
//! only the per-source join queue is on, so the whole flood gets in;
//! `LIMITS=none` for a binary that predates these settings).
//!
//! An abuser on 127.0.0.1 opens `SESSIONS` anonymous sessions over 32
//! keep-alive connections and POSTs 100 joins on distinct topics into each,
//! never polling; a canary WebSocket on 127.0.0.2 joins a new topic every
//! 200 ms throughout. Printed: the pod's peak RSS, the canary's slowest and
//! median join, and how the abuser was answered.

use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::http::{tcp_from, HttpConn, Request};
use test_support::memory;

fn rss(pid: u32) -> u64 {
    memory::rss(pid) as u64
}
use test_support::{GatewayProcess, PhxClient, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "measurement at full scale; see the module doc"]
async fn measure_join_flood() {
    let bin = std::env::var("GATEWAY_BIN").unwrap_or(env!("CARGO_BIN_EXE_gateway").into());
    let sessions: usize = std::env::var("SESSIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let redis = RedisServer::start().await;
    let pod = GatewayProcess::builder(bin)
        .redis(&redis.url())
        .configure(|c| {
            c.log.level = "warn".into();
            // The shipped defaults, which test pods turn off; LIMITS=queue
            // keeps only the join queue (the flood then runs at full size),
            // LIMITS=none (for main's binary) sets none of the new keys.
            let d = gateway::config::ServerConfig::default();
            let limits = std::env::var("LIMITS").unwrap_or_default();
            if limits != "none" {
                c.server.max_queued_joins_per_source = d.max_queued_joins_per_source;
            }
            if limits.is_empty() {
                c.server.max_connections_per_source = d.max_connections_per_source;
                c.server.connection_rate_per_source = d.connection_rate_per_source;
            }
        })
        .start()
        .await;
    let addr = pod.addr;
    let pid = pod.pid();
    let base = rss(pid);

    // The canary, from another source address.
    let stream = tcp_from([127, 0, 0, 2].into(), addr).await.unwrap();
    let mut canary = PhxClient::connect_stream(&pod.url(""), stream).await;
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(base));
    let canary_task = {
        let done = done.clone();
        let peak = peak.clone();
        tokio::spawn(async move {
            let mut times = Vec::new();
            let mut n = 0;
            while !done.load(Ordering::Relaxed) {
                n += 1;
                let topic = format!("room:canary-{n}");
                let t = Instant::now();
                canary
                    .send(json!([n.to_string(), n.to_string(), topic, "phx_join", {}]))
                    .await;
                let reply = canary.recv_within(Duration::from_secs(300)).await;
                times.push(t.elapsed());
                assert_eq!(reply[4]["status"], "ok", "{reply}");
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            times
        })
    };

    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let statuses = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let mut workers = Vec::new();
    for _ in 0..32 {
        let (next, statuses) = (next.clone(), statuses.clone());
        workers.push(tokio::spawn(async move {
            let mut conn = HttpConn::connect(addr).await;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= sessions {
                    return;
                }
                let r = conn
                    .send(&Request::get("/socket/longpoll?vsn=2.0.0").keep_alive())
                    .await;
                let token = (r.status == 200)
                    .then(|| r.json()["token"].as_str().map(str::to_owned))
                    .flatten();
                let Some(token) = token else {
                    *statuses
                        .lock()
                        .unwrap()
                        .entry(format!("open {} {}", r.status, r.body.trim()))
                        .or_insert(0) += 1;
                    continue;
                };
                let body: Vec<String> = (0..100)
                    .map(|j| {
                        json!([
                            j.to_string(),
                            j.to_string(),
                            format!("room:ab-{i}-{j}"),
                            "phx_join",
                            {}
                        ])
                        .to_string()
                    })
                    .collect();
                let r = conn
                    .send(
                        &Request::post(&format!("/socket/longpoll?vsn=2.0.0&token={token}"))
                            .header("Content-Type", "application/x-ndjson")
                            .body(body.join("\n"))
                            .keep_alive(),
                    )
                    .await;
                *statuses
                    .lock()
                    .unwrap()
                    .entry(format!("post {} {}", r.status, r.body.trim()))
                    .or_insert(0) += 1;
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let flood = started.elapsed();
    // Let the joins the pod still works through land, measuring meanwhile.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(10) {
        peak.fetch_max(rss(pid), Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done.store(true, Ordering::Relaxed);
    let mut times = canary_task.await.unwrap();
    times.sort();
    let (_, ready) = pod.get("/readyz").await.unwrap_or_default();
    println!(
        "sessions={sessions} flood={flood:?} rss_base={}MiB rss_peak={}MiB canary_joins={} \
         canary_p50={:?} canary_max={:?}\nabuser answers: {:?}\n/readyz: {ready}",
        base >> 20,
        peak.load(Ordering::Relaxed) >> 20,
        times.len(),
        times[times.len() / 2],
        times[times.len() - 1],
        statuses.lock().unwrap(),
    );
}
