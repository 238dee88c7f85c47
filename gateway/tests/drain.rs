//! Graceful drain of a real `gateway` process: SIGTERM with 1,000 joined
//! WebSocket clients. `/readyz` fails at once, every client is closed with
//! 1001 at a point spread over the drain period, new connections are refused
//! after the drain delay, and the process exits cleanly before its deadline.
//!
//! Needs `redis-server` on PATH.

use std::time::{Duration, Instant};
use test_support::{wait, GatewayProcess, PhxClient, Received, RedisServer};

const CLIENTS: usize = 1000;
const DELAY: Duration = Duration::from_millis(500);
const PERIOD: Duration = Duration::from_secs(4);
const DEADLINE: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_spreads_closes_over_the_drain_period_and_exits_before_the_deadline() {
    let redis = RedisServer::start().await;
    let mut pod = GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway"))
        .redis(&redis.url())
        .configure(|c| {
            c.server.drain_delay_ms = DELAY.as_millis() as u64;
            c.server.drain_period_ms = PERIOD.as_millis() as u64;
            c.server.shutdown_deadline_ms = DEADLINE.as_millis() as u64;
        })
        .start()
        .await;
    assert_eq!(pod.get("/readyz").await.map(|r| r.0), Some(200));

    // 1,000 clients, each joined to a room; each reports how its connection ended.
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    let (end_tx, mut end_rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..CLIENTS {
        let url = pod.url("");
        let (ready_tx, end_tx) = (ready_tx.clone(), end_tx.clone());
        tokio::spawn(async move {
            let mut c = PhxClient::connect(&url).await;
            c.join(&format!("room:drain{}", i % 10), "1").await;
            let _ = ready_tx.send(());
            // Until the drain ends the connection (bounded far beyond it).
            while let Some(frame) = c.next_within(Duration::from_secs(120)).await {
                if let Received::Close(code) = frame {
                    let _ = end_tx.send((Instant::now(), code));
                    return;
                }
            }
        });
    }
    drop((ready_tx, end_tx));
    for _ in 0..CLIENTS {
        tokio::time::timeout(Duration::from_secs(30), ready_rx.recv())
            .await
            .unwrap()
            .unwrap();
    }

    pod.terminate();
    let sigterm = Instant::now();
    // Not ready at once (the signal is delivered asynchronously: poll briefly).
    wait::until("/readyz 503 after SIGTERM", DELAY, || async {
        let status = pod.get("/readyz").await.map(|r| r.0);
        (status == Some(503)).then_some(()).ok_or(status)
    })
    .await;

    let mut ends = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let end = tokio::time::timeout(DEADLINE, end_rx.recv())
            .await
            .unwrap()
            .unwrap();
        ends.push(end);
    }
    let codes: Vec<_> = ends.iter().filter(|e| e.1 != Some(1001)).collect();
    assert!(
        codes.is_empty(),
        "{} clients not closed with 1001",
        codes.len()
    );
    let at: Vec<Duration> = ends.iter().map(|e| e.0 - sigterm).collect();
    let late = at
        .iter()
        .filter(|d| **d > PERIOD + Duration::from_secs(1))
        .count();
    assert_eq!(late, 0, "closes after the drain period");
    let first_half = at.iter().filter(|d| **d < PERIOD / 2).count();
    assert!(
        (CLIENTS / 4..=CLIENTS * 3 / 4).contains(&first_half),
        "closes not spread over the period: {first_half} of {CLIENTS} in its first half"
    );

    // New connections are refused after the delay (the listener is closed).
    assert!(sigterm.elapsed() > DELAY);
    assert!(
        PhxClient::try_connect(pod.url("")).await.is_err(),
        "a new connection was accepted while draining"
    );

    // The process exits, cleanly, before its deadline.
    let left = (DEADLINE + Duration::from_secs(2)).saturating_sub(sigterm.elapsed());
    let status = pod.wait_exit(left).await;
    assert!(status.success(), "exit status {status}");
    let log = pod.log();
    assert!(!log.contains("panicked"), "panic in the log:\n{log}");
    assert!(log.contains("draining"), "no drain logged:\n{log}");
}
