//! Per-pod limits of a real `gateway` process: at `max_connections` new
//! WebSocket and long-poll connections are refused with 503 and `/readyz`
//! fails (its body says why and reports Redis); below it again, both recover.
//! At start the process raises its open-files soft limit to the hard limit.
//! One client address at `max_connections_per_source` is refused with 429
//! while another connects and the pod stays ready.
//!
//! Needs `redis-server` on PATH.

use std::time::Duration;
use test_support::{wait, GatewayBuilder, GatewayProcess, PhxClient, RedisServer};

const MAX: usize = 5;

fn pod() -> GatewayBuilder {
    GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway"))
}

#[tokio::test]
async fn at_the_connection_limit_new_connections_are_refused_and_readyz_fails() {
    let redis = RedisServer::start().await;
    let pod = pod()
        .redis(&redis.url())
        .configure(|c| c.server.max_connections = MAX)
        .start()
        .await;
    let (status, body) = pod.get("/readyz").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ready\n"), "{body}");
    assert!(body.contains("redis: connected"), "{body}");

    let mut clients = Vec::new();
    for _ in 0..MAX {
        clients.push(pod.client().await);
    }
    let (status, body) = pod.get("/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with(&format!("at connection limit ({MAX} of {MAX})")),
        "{body}"
    );

    assert_eq!(PhxClient::refused_status(pod.url("")).await, 503);
    let (status, _) = pod.get("/socket/longpoll?vsn=2.0.0").await.unwrap();
    assert_eq!(status, 503, "a long-poll session opened past the limit");

    // One client leaves: ready again, and a new connection is accepted.
    clients.pop().unwrap().close().await;
    wait::until("/readyz recovers", Duration::from_secs(10), || async {
        let status = pod.get("/readyz").await.map(|r| r.0);
        (status == Some(200)).then_some(()).ok_or(status)
    })
    .await;
    pod.client().await;
}

/// The open files limits of process `pid`, (soft, hard), from `/proc/{pid}/limits`.
fn open_files_limit(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no Max open files in /proc/{pid}/limits"));
    let mut n = line["Max open files".len()..]
        .split_whitespace()
        .map(|v| v.parse().unwrap());
    (n.next().unwrap(), n.next().unwrap())
}

#[tokio::test]
async fn the_open_files_soft_limit_is_raised_to_the_hard_limit() {
    let (_, hard) = open_files_limit(std::process::id());
    let low = hard.min(256);
    // The shell lowers its soft limit, then becomes the gateway (same pid),
    // configured for more connections than the hard limit allows.
    let pod = pod()
        .configure(|c| c.server.max_connections = hard as usize + 100)
        .shell_prefix(&format!("ulimit -S -n {low}"))
        .start()
        .await;
    // Both are logged at start, before the port answers.
    let log = pod.log();
    let line = |what: &str| {
        let l = log.lines().find(|l| l.contains(what));
        l.unwrap_or_else(|| panic!("no {what:?} line:\n{log}"))
    };
    let (logged, lowered) = (line("open files limit"), line("max_connections lowered"));
    assert_eq!(
        open_files_limit(pod.pid()),
        (hard, hard),
        "started with soft {low}; {logged}"
    );
    assert!(
        logged.contains("INFO") && logged.contains(&format!("soft={hard} hard={hard}")),
        "{logged}"
    );
    assert!(
        lowered.contains("WARN") && lowered.contains(&format!("lowered_to={}", hard - 64)),
        "{lowered}"
    );
}

/// A WebSocket handshake from `from` (a loopback address of its own), as a
/// plain HTTP request: the status tells admitted (101) from refused.
async fn handshake_from(
    pod: &GatewayProcess,
    from: std::net::IpAddr,
) -> test_support::http::Response {
    test_support::http::Request::get("/socket/websocket?vsn=2.0.0")
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send_from(pod.addr, from, Duration::from_secs(10))
        .await
}

#[tokio::test]
async fn one_source_at_its_limit_is_refused_while_others_connect_and_the_pod_stays_ready() {
    let redis = RedisServer::start().await;
    let pod = pod()
        .redis(&redis.url())
        .configure(|c| c.server.max_connections_per_source = 2)
        .start()
        .await;
    // The abuser holds its two connections (127.0.0.1, the clients' default).
    let _held = [pod.client().await, pod.client().await];
    let refused = handshake_from(&pod, "127.0.0.1".parse().unwrap()).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.body.contains("127.0.0.1"), "{}", refused.body);
    // Another address is its own source; the pod stays ready for it.
    let canary = handshake_from(&pod, "127.0.0.2".parse().unwrap()).await;
    assert_eq!(canary.status, 101, "{}", canary.body);
    let (status, body) = pod.get("/readyz").await.unwrap();
    assert_eq!(status, 200, "{body}");
}
