//! Smoke run of `push-rtt` (make bench-backends), seconds long, against a
//! real `redis-server` and `gateway` on config/example.toml plus a forward,
//! a hook and a broadcast rule, with push-rtt's own worker and hook server:
//! every push and join is answered `ok`, so the bench cannot rot.
//!
//! Needs `redis-server` on PATH; the gateway binary as in tests/smoke.rs.

use gateway::config::Config;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;
use test_support::pod::built_binary;
use test_support::process::Process;
use test_support::temp::{free_port, prefix, repo_path};
use test_support::{GatewayProcess, RedisServer, TempDir};

const RTT: &str = env!("CARGO_BIN_EXE_push-rtt");

fn config(hook_port: u16) -> Config {
    let mut text = std::fs::read_to_string(repo_path("config/example.toml")).unwrap();
    for (pattern, extra) in [
        ("bench:*", String::new()),
        (
            "fwd:*",
            "mode = \"forward\"\n[channel.forward]\nstream = \"chat\"\n".into(),
        ),
        (
            "hk:*",
            format!(
                "mode = \"hook\"\n[channel.hooks]\njoin = \"http://127.0.0.1:{hook_port}/join\"\n\
                 push = \"http://127.0.0.1:{hook_port}/push\"\n"
            ),
        ),
    ] {
        text += &format!(
            "\n[[channel]]\npattern = \"{pattern}\"\npolicy = \"public\"\nevents = [\"new_msg\"]\n\
             include_sender = true\n{extra}"
        );
    }
    text += "\n[hooks]\nsecret = \"push-rtt-smoke-secret-0123456789\"\n";
    Config::parse(&text, "push-rtt smoke").unwrap()
}

/// `push-rtt load ARGS` for a second at 40/s; returns its JSON.
fn load(dir: &TempDir, gw: &GatewayProcess, name: &str, args: &[&str]) -> Value {
    let json = dir.path(&format!("{name}.json"));
    let out = Command::new(RTT)
        .args([
            "load",
            "--url",
            &gw.url(""),
            "--clients",
            "4",
            "--rate",
            "40",
        ])
        .args(["--duration", "1s", "--warmup", "300ms", "--drain", "3s"])
        .args(["--gateway-pid", &gw.pid().to_string(), "--label", name])
        .arg("--json")
        .arg(&json)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "push-rtt load {name} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("p99"), "{name}: no report:\n{stdout}");
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_path_answers_every_push_and_join() {
    let redis = RedisServer::start().await;
    let dir = TempDir::new("push-rtt-smoke");
    let hook_port = free_port();
    let gw = GatewayProcess::builder(built_binary("gateway", "gateway"))
        .config(config(hook_port))
        .redis(&redis.url())
        .prefix(&prefix("rtt"))
        .configure(|c| c.log.level = "warn".into())
        .start()
        .await;

    let mut hook = Command::new(RTT);
    hook.args(["hook", "--broadcast", "--listen"])
        .arg(format!("127.0.0.1:{hook_port}"));
    let _hook = Process::spawn("push-rtt hook", hook, dir.path("hook.log"));
    let mut worker = Command::new(RTT);
    worker
        .args(["worker", "--broadcast", "--redis-url", &redis.url()])
        .args(["--stream", &format!("{}in:chat", gw.prefix())]);
    let _worker = Process::spawn("push-rtt worker", worker, dir.path("worker.log"));
    let ready = async {
        while tokio::net::TcpStream::connect(("127.0.0.1", hook_port))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), ready)
        .await
        .expect("the hook server listens");

    for (name, args) in [
        ("broadcast", &["--topic-prefix", "bench:s"][..]),
        ("forward", &["--topic-prefix", "fwd:s"][..]),
        ("hook", &["--topic-prefix", "hk:s"][..]),
        (
            "join-plain",
            &["--op", "join", "--topic-prefix", "bench:j"][..],
        ),
        ("join-hook", &["--op", "join", "--topic-prefix", "hk:j"][..]),
    ] {
        let v = load(&dir, &gw, name, args);
        let sent = v["sent"].as_u64().unwrap();
        assert!(sent >= 30, "{name}: {v}");
        assert_eq!(v["ok"].as_u64(), Some(sent), "{name}: {v}");
        assert_eq!(v["error"].as_u64(), Some(0), "{name}: {v}");
        assert_eq!(v["timeouts"].as_u64(), Some(0), "{name}: {v}");
        assert!(
            v["latency_ms"]["p99"].as_f64().unwrap() > 0.0,
            "{name}: {v}"
        );
        if !name.starts_with("join") {
            assert!(
                v["broadcasts_received"].as_u64().unwrap() >= sent,
                "{name}: {v}"
            );
        }
    }
}
