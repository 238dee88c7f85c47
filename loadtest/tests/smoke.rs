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
