//! Graceful drain of a real `gateway` process: SIGTERM with 1,000 joined
//! WebSocket clients. `/readyz` fails at once, every client is closed with
//! 1001 at a point spread over the drain period, new connections are refused
//! after the drain delay, and the process exits cleanly before its deadline.
//!
//! Needs `redis-server` on PATH.

mod support;

use futures_util::{SinkExt as _, StreamExt as _};
use std::time::{Duration, Instant};
use support::redis::{Pod, RedisServer};
use tokio_tungstenite::tungstenite::Message;

const CLIENTS: usize = 1000;
const DELAY: Duration = Duration::from_millis(500);
const PERIOD: Duration = Duration::from_secs(4);
const DEADLINE: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_spreads_closes_over_the_drain_period_and_exits_before_the_deadline() {
    let redis = RedisServer::start().await;
    let server = format!(
        "drain_delay_ms = {}\ndrain_period_ms = {}\nshutdown_deadline_ms = {}\n",
        DELAY.as_millis(),
        PERIOD.as_millis(),
        DEADLINE.as_millis()
    );
    let mut pod = Pod::start_with_server(&server, &redis.url(), "drain:").await;
    assert_eq!(pod.get("/readyz").await.map(|r| r.0), Some(200));

    // 1,000 clients, each joined to a room; each reports how its connection ended.
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    let (end_tx, mut end_rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..CLIENTS {
        let url = pod.url("");
        let (ready_tx, end_tx) = (ready_tx.clone(), end_tx.clone());
        tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url)
                .await
                .expect("connect");
            let join = format!(r#"["1","1","room:drain{}","phx_join",{{}}]"#, i % 10);
            ws.send(Message::text(join)).await.expect("send join");
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.contains("phx_reply") => {
                        let _ = ready_tx.send(());
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.map(|f| u16::from(f.code));
                        let _ = end_tx.send((Instant::now(), code));
                        return;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        let _ = end_tx.send((Instant::now(), None));
                        return;
                    }
                }
            }
        });
    }
    drop((ready_tx, end_tx));
    for _ in 0..CLIENTS {
        tokio::time::timeout(Duration::from_secs(30), ready_rx.recv())
            .await
            .expect("every client joins")
            .expect("client task alive");
    }

    pod.terminate();
    let sigterm = Instant::now();
    // Not ready at once (the signal is delivered asynchronously: poll briefly).
    loop {
        if pod.get("/readyz").await.map(|r| r.0) == Some(503) {
            break;
        }
        assert!(
            sigterm.elapsed() < DELAY,
            "/readyz still not 503 {:?} after SIGTERM",
            sigterm.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut ends = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let end = tokio::time::timeout(DEADLINE, end_rx.recv())
            .await
            .expect("every client is closed before the deadline")
            .expect("client task alive");
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
        tokio_tungstenite::connect_async(pod.url("")).await.is_err(),
        "a new connection was accepted while draining"
    );

    // The process exits, cleanly, before its deadline.
    let status = loop {
        if let Some(status) = pod.exited() {
            break status;
        }
        assert!(
            sigterm.elapsed() < DEADLINE + Duration::from_secs(2),
            "still running past the shutdown deadline"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
    let log = pod.log();
    assert!(!log.contains("panicked"), "panic in the log:\n{log}");
    assert!(log.contains("draining"), "no drain logged:\n{log}");
}
