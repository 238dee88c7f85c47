//! Per-pod limits of a real `gateway` process: at `max_connections` new
//! WebSocket and long-poll connections are refused with 503 and `/readyz`
//! fails (its body says why and reports Redis); below it again, both recover.
//! At start the process raises its open-files soft limit to the hard limit.
//!
//! Needs `redis-server` on PATH.

mod support;

use futures_util::StreamExt as _;
use std::time::{Duration, Instant};
use support::redis::{free_port, Pod, RedisServer, TempDir};
use tokio_tungstenite::tungstenite::Error as WsError;

const MAX: usize = 5;

#[tokio::test]
async fn at_the_connection_limit_new_connections_are_refused_and_readyz_fails() {
    let redis = RedisServer::start().await;
    let server = format!("max_connections = {MAX}\n");
    let pod = Pod::start_with_server(&server, &redis.url(), "limits:").await;
    let (status, body) = pod.get("/readyz").await.expect("readyz answers");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ready\n"), "{body}");
    assert!(body.contains("redis: connected"), "{body}");

    let mut clients = Vec::new();
    for _ in 0..MAX {
        let (ws, _) = tokio_tungstenite::connect_async(pod.url(""))
            .await
            .expect("below the limit");
        clients.push(ws);
    }
    let (status, body) = pod.get("/readyz").await.expect("readyz answers");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with(&format!("at connection limit ({MAX} of {MAX})")),
        "{body}"
    );

    match tokio_tungstenite::connect_async(pod.url("")).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 503),
        other => panic!("expected a 503 refusal, got {:?}", other.map(|_| ())),
    }
    let (status, _) = pod
        .get("/socket/longpoll?vsn=2.0.0")
        .await
        .expect("long-poll answers");
    assert_eq!(status, 503, "a long-poll session opened past the limit");

    // One client leaves: ready again, and a new connection is accepted.
    let mut gone = clients.pop().expect("a client");
    gone.close(None).await.expect("close");
    while gone.next().await.is_some() {}
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if pod.get("/readyz").await.map(|r| r.0) == Some(200) {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz did not recover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio_tungstenite::connect_async(pod.url(""))
        .await
        .expect("accepted again below the limit");
}

/// The open files limits of process `pid`, (soft, hard), from `/proc/{pid}/limits`.
fn open_files_limit(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no Max open files in /proc/{pid}/limits"));
    let mut n = line["Max open files".len()..]
        .split_whitespace()
        .map(|v| v.parse().expect("a number of files"));
    (n.next().expect("soft"), n.next().expect("hard"))
}

#[tokio::test]
async fn the_open_files_soft_limit_is_raised_to_the_hard_limit() {
    let (_, hard) = open_files_limit(std::process::id());
    let low = hard.min(256);
    let dir = TempDir::new("rlimit");
    let config = dir.path("gateway.toml");
    std::fs::write(
        &config,
        // More connections than the hard limit allows: lowered to fit.
        format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\nmax_connections = {}\n",
            free_port(),
            hard + 100
        ),
    )
    .unwrap();
    let log_path = dir.path("gateway.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // The shell lowers its soft limit, then becomes the gateway (same pid).
    let mut cmd = std::process::Command::new("sh");
    for (name, _) in gateway::config::ENV_VARS {
        cmd.env_remove(name);
    }
    let mut child = cmd
        .arg("-c")
        .arg(format!("ulimit -S -n {low} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_gateway"))
        .arg("--config")
        .arg(&config)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(log.try_clone().unwrap()))
        .stderr(std::process::Stdio::from(log))
        .spawn()
        .expect("run sh");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(15);
    let logged = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let line = |what: &str| text.lines().find(|l| l.contains(what)).map(str::to_owned);
        if let (Some(raised), Some(lowered)) =
            (line("open files limit"), line("max_connections lowered"))
        {
            break (raised, lowered);
        }
        let exited = child.try_wait().unwrap();
        if exited.is_some() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no open files limit logged (exit {exited:?}):\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (logged, lowered) = logged;
    let limits = open_files_limit(pid);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(limits, (hard, hard), "started with soft {low}; {logged}");
    assert!(
        logged.contains("INFO") && logged.contains(&format!("soft={hard} hard={hard}")),
        "{logged}"
    );
    assert!(
        lowered.contains("WARN") && lowered.contains(&format!("lowered_to={}", hard - 64)),
        "{lowered}"
    );
}
