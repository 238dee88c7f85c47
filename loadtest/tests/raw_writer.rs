//! Smoke run of `raw-writer` (the raw delivery ceiling `make bench` compares
//! the gateway with): a short `loadtest fanout --via api` against it.

use serde_json::Value;
use std::process::{Command, Stdio};
use test_support::http::Request;
use test_support::process::{start_on_free_port, Probe};
use test_support::TempDir;

#[tokio::test]
async fn loadtest_fanout_via_api_runs_against_raw_writer() {
    let dir = TempDir::new("raw-writer");
    let command = |port: u16| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_raw-writer"));
        cmd.args(["--listen", &format!("127.0.0.1:{port}")]);
        cmd
    };
    let healthz = |port: u16, _| async move {
        let r = Request::get("/healthz")
            .try_send(([127, 0, 0, 1], port).into())
            .await;
        match r {
            Some(r) if r.status == 200 => Probe::Ready,
            _ => Probe::Pending,
        }
    };
    let log = dir.path("raw-writer.log");
    let (_raw, port) = start_on_free_port("raw-writer", &log, command, healthz).await;
    let json = dir.path("fanout.json");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["fanout", "-s", "50", "-t", "2", "-p", "50", "--via", "api"])
        .arg("--api-url")
        .arg(format!("http://127.0.0.1:{port}/api/broadcast"))
        .arg("--url")
        .arg(format!("ws://127.0.0.1:{port}/socket/websocket?vsn=2.0.0"))
        .args(["--source-ips", "127.0.0.2,127.0.0.3"])
        .args(["--duration", "2s", "--drain", "1s"])
        .arg("--json")
        .arg(&json)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "loadtest against raw-writer failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let deliveries = v["counters"]["deliveries"].as_u64().unwrap();
    assert!(deliveries > 0, "no deliveries: {v}");
    assert_eq!(v["counters"]["joins_ok"], 50, "{v}");
    assert_eq!(v["missing"], 0, "{v}");
    assert_eq!(v["duplicates"], 0, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
}
