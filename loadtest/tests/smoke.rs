//! Smoke run of every `loadtest` scenario, seconds long, against a real
//! `redis-server` and a real `gateway` process configured from
//! config/example.toml, so the tool cannot rot.
//!
//! Needs `redis-server` on PATH. The gateway binary is `$GATEWAY_BIN`, or the
//! one `cargo test --workspace` builds next to this test, or built now (see
//! `test_support::pod::built_binary`).

use gateway::config::Config;
use serde_json::Value;
use std::process::Stdio;
use test_support::pod::built_binary;
use test_support::temp::{prefix, repo_path};
use test_support::{GatewayProcess, RedisServer, TempDir};

struct Env {
    dir: TempDir,
    redis: RedisServer,
    gateway: GatewayProcess,
}

impl Env {
    async fn start() -> Env {
        let redis = RedisServer::start().await;
        let example = std::fs::read_to_string(repo_path("config/example.toml")).unwrap();
        let example = Config::parse(&example, "config/example.toml").unwrap();
        assert!(
            example.sockets[0].longpoll.enabled,
            "config/example.toml must enable long-poll for the long-poll smoke run"
        );
        let gateway = GatewayProcess::builder(built_binary("gateway", "gateway"))
            .config(example)
            .redis(&redis.url())
            .prefix(&prefix("lt"))
            .configure(|c| c.log.level = "warn".into())
            .start()
            .await;
        Env {
            dir: TempDir::new("loadtest-smoke"),
            redis,
            gateway,
        }
    }

    /// Runs `loadtest SCENARIO ARGS --json --html` and returns the parsed JSON.
    async fn run(&self, name: &str, args: &[&str]) -> Value {
        let json = self.dir.path(&format!("{name}.json"));
        let html = self.dir.path(&format!("{name}.html"));
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args(args)
            .arg("--url")
            .arg(self.gateway.url(""))
            .args(["--duration", "2s", "--drain", "1s"])
            .arg("--json")
            .arg(&json)
            .arg("--html")
            .arg(&html)
            .env_remove("GATEWAY_API_KEY")
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "loadtest {name} failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        assert!(stdout.contains("p99.9"), "{name}: no table:\n{stdout}");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap())
            .unwrap_or_else(|e| panic!("{name}: bad JSON: {e}"));
        let page = std::fs::read_to_string(&html).unwrap();
        assert!(page.starts_with("<!doctype html>"), "{name}: not HTML");
        assert!(
            page.matches("<svg").count() >= 2,
            "{name}: the HTML has no plots"
        );
        assert!(v["machine"]["cores"].as_u64().unwrap() >= 1, "{name}: {v}");
        assert!(v["command"].as_array().unwrap().len() > 3, "{name}: {v}");
        assert_eq!(v["errors"], 0, "{name}: {v}");
        v
    }

    fn api_url(&self) -> String {
        format!("http://{}/api/broadcast", self.gateway.addr)
    }
}

fn assert_delivered(name: &str, v: &Value) {
    let deliveries = v["counters"]["deliveries"].as_u64().unwrap();
    assert!(deliveries > 0, "{name}: no deliveries: {v}");
    assert_eq!(v["missing"], 0, "{name}: {v}");
    assert_eq!(v["duplicates"], 0, "{name}: {v}");
    assert_eq!(
        v["expected_deliveries"].as_u64(),
        Some(deliveries),
        "{name}: {v}"
    );
    assert!(v["latency"]["delivery"]["count"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn every_scenario_runs_against_a_real_gateway_and_redis() {
    let env = Env::start().await;
    let pid = env.gateway.pid().to_string();

    let v = env
        .run("connect", &["connect", "-n", "50", "-r", "500", "-t", "2"])
        .await;
    assert_eq!(v["counters"]["connects_ok"], 50, "{v}");
    assert_eq!(v["counters"]["joins_ok"], 100, "{v}");
    assert!(v["connections_joins_per_sec"].as_f64().unwrap() > 0.0);

    let v = env
        .run("idle", &["idle", "-n", "50", "--gateway-pid", &pid])
        .await;
    assert_eq!(v["counters"]["joins_ok"], 50, "{v}");
    assert!(v["memory"]["rss_after"].as_u64().unwrap() > 0, "{v}");

    let (redis_url, api_url) = (env.redis.url(), env.api_url());
    let fanout = [
        "fanout",
        "-s",
        "50",
        "-t",
        "2",
        "-p",
        "50",
        "--redis-url",
        &redis_url,
        "--prefix",
        env.gateway.prefix(),
        "--api-url",
        &api_url,
        "--api-key",
        &env.gateway.api_key,
        "--source-ips",
        "127.0.0.2,127.0.0.3",
    ];
    for via in ["redis", "api", "push"] {
        let mut args = fanout.to_vec();
        args.extend(["--via", via]);
        let v = env.run(&format!("fanout-{via}"), &args).await;
        assert_delivered(&format!("fanout via {via}"), &v);
    }

    // Past --per-worker, connections are spread over worker processes.
    let mut args = fanout.to_vec();
    args.extend(["--per-worker", "20"]);
    let v = env.run("fanout-workers", &args).await;
    assert_eq!(v["workers"], 3, "{v}");
    assert_delivered("fanout over 3 workers", &v);

    let v = env.run("chat", &["chat", "-c", "20", "-p", "2"]).await;
    assert_delivered("chat", &v);
    assert!(v["counters"]["pushes_ok"].as_u64().unwrap() > 0, "{v}");
}

/// The same scenarios over Phoenix long-poll (`--transport longpoll`): the
/// example config enables `[socket.longpoll]` on `/socket`.
/// `loadtest --transport longpoll ARGS`, which must report that transport.
async fn run_longpoll(env: &Env, name: &str, args: &[&str]) -> Value {
    let args: Vec<&str> = ["--transport", "longpoll"]
        .iter()
        .chain(args)
        .copied()
        .collect();
    let v = env.run(name, &args).await;
    assert_eq!(v["transport"], "longpoll", "{name}: {v}");
    v
}

#[tokio::test]
async fn scenarios_run_over_longpoll() {
    let env = Env::start().await;
    let v = run_longpoll(
        &env,
        "lp-connect",
        &["connect", "-n", "20", "-r", "200", "-t", "2"],
    )
    .await;
    assert_eq!(v["counters"]["connects_ok"], 20, "{v}");
    assert_eq!(v["counters"]["joins_ok"], 40, "{v}");

    let redis_url = env.redis.url();
    let v = run_longpoll(
        &env,
        "lp-fanout-redis",
        &[
            "fanout",
            "-s",
            "20",
            "-t",
            "2",
            "-p",
            "50",
            "--via",
            "redis",
            "--redis-url",
            &redis_url,
            "--prefix",
            env.gateway.prefix(),
            "--source-ips",
            "127.0.0.2,127.0.0.3",
        ],
    )
    .await;
    assert_eq!(v["counters"]["joins_ok"], 20, "{v}");
    assert_delivered("long-poll fanout via redis", &v);

    let v = run_longpoll(&env, "lp-chat", &["chat", "-c", "15", "-p", "2"]).await;
    assert_delivered("long-poll chat", &v);
    assert!(v["counters"]["pushes_ok"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["counters"]["disconnects"], 0, "{v}");
}

/// `reconnect-storm` without a restart command: the clients drop their
/// connections at once and all rejoin the same gateway; `connect` reports
/// the CPU of whole lifecycles.
#[tokio::test]
async fn clients_that_drop_at_once_all_rejoin() {
    let env = Env::start().await;
    let pid = env.gateway.pid().to_string();
    let v = env
        .run(
            "storm-drop",
            &["reconnect-storm", "-n", "40", "--gateway-pid", &pid],
        )
        .await;
    let s = &v["storm"];
    assert_eq!(s["outcome"]["mode"], "client-drop", "{v}");
    assert_eq!(s["outcome"]["clients"], 40, "{v}");
    assert_eq!(s["rejoined"], 40, "{v}");
    assert_eq!(s["refused"], 0, "{v}");
    assert!(s["all_rejoined_after_secs"].as_f64().unwrap() > 0.0, "{v}");
    assert!(s["outcome"]["tcp"]["ListenOverflows"].is_u64(), "{v}");
    assert_eq!(v["latency"]["rejoin"]["count"], 40, "{v}");

    let v = env
        .run(
            "connect-cpu",
            &["connect", "-n", "30", "--gateway-pid", &pid],
        )
        .await;
    let cpu = &v["lifecycle_cpu"]["us_per_connection"];
    assert!(cpu["gateway_system"].as_f64().unwrap() >= 0.0, "{v}");
    assert!(cpu["client_user"].as_f64().is_some(), "{v}");
}

/// Kills the gateway whose pid the file holds when the test ends.
struct KillOnDrop(std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", pid.trim()])
                .status();
        }
    }
}

/// `reconnect-storm` ending the gateway with SIGKILL and starting it again
/// with `--restart-cmd`: every client rejoins the new process.
#[tokio::test]
async fn clients_rejoin_a_killed_and_restarted_gateway() {
    let redis = RedisServer::start().await;
    let dir = TempDir::new("loadtest-storm");
    let port = test_support::free_port();
    let config = dir.path("gateway.toml");
    let example = std::fs::read_to_string(repo_path("config/example.toml")).unwrap();
    let redis_section = format!(
        "\n[redis]\nurl = \"{}\"\nprefix = \"{}\"\n",
        redis.url(),
        prefix("storm")
    );
    std::fs::write(&config, example + &redis_section).unwrap();
    let pidfile = dir.path("gateway.pid");
    let _guard = KillOnDrop(pidfile.clone());
    let unset: String = gateway::config::ENV_VARS
        .iter()
        .map(|(name, _)| format!("-u {name} "))
        .collect();
    let start = format!(
        "env {unset}PORT={port} GATEWAY_LOG=warn {} --config {} >>{} 2>&1 </dev/null & echo $! | tee {}",
        built_binary("gateway", "gateway").display(),
        config.display(),
        dir.path("gateway.log").display(),
        pidfile.display(),
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &start])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let url = format!("ws://127.0.0.1:{port}/socket/websocket?vsn=2.0.0");
    let addr = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "gateway did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let json = dir.path("storm.json");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["reconnect-storm", "-n", "40", "--gateway-pid", &pid])
        .args(["--url", &url, "--restart-cmd", &start, "--json"])
        .arg(&json)
        // A join that reaches the new process before its Redis subscriber
        // connection is up is refused ("try again") and retried after 1 s,
        // as phoenix.js does; counted as an error, not a failure here.
        .args(["--max-error-rate", "100"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let s = &v["storm"];
    assert_eq!(s["outcome"]["mode"], "restart", "{v}");
    assert_eq!(s["outcome"]["signal"], "KILL", "{v}");
    assert_eq!(s["rejoined"], 40, "{v}");
    assert_eq!(s["refused"], 0, "{v}");
    let new_pid = s["outcome"]["new_gateway_pid"].as_u64().unwrap();
    assert_ne!(new_pid.to_string(), pid, "{v}");
    assert!(
        s["gateway_us_per_rejoin"]["system"].as_f64().is_some(),
        "{v}"
    );
}
