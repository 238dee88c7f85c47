//! The Grafana dashboard and the alerts of `k8s/` against a real Prometheus
//! (Debian's `prometheus` package, installed by `make test-deps`) scraping two
//! real `gateway` pods on a real `redis-server`: every dashboard query returns
//! data while clients connect, join, push and receive broadcasts; every
//! alerting rule evaluates without error and none is active while all is
//! well; at the connection limit and with Redis down, the matching alerts
//! become active for both pods.
//!
//! Needs `redis-server` and `prometheus` on PATH.

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use test_support::http::Request;
use test_support::process::{start_on_free_port, Probe, Process};
use test_support::temp::repo_path;
use test_support::{wait, GatewayProcess, PhxClient, Received, RedisServer, TempDir};

const NAMESPACE: &str = "gw-test";
/// Each pod's connection limit: the test fills one pod to it.
const MAX_CONNECTIONS: usize = 3;
/// How long Prometheus may take to show what the test waits for.
const SETTLE: Duration = Duration::from_secs(30);
/// Interval of the queries that wait for it.
const QUERY_EVERY: Duration = Duration::from_millis(200);

/// The rules file inside the PrometheusRule: its `spec`, de-indented.
fn rules_file() -> String {
    let rule = repo_path("k8s/components/monitoring/prometheusrule.yaml");
    let text = std::fs::read_to_string(rule).unwrap();
    let spec = text.split_once("\nspec:\n").unwrap().1;
    spec.lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every query of the dashboard, with its variables filled in: the title of
/// its panel and the PromQL.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_path("k8s/dashboards/gateway.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let Some(expr) = target["expr"].as_str() else {
                continue;
            };
            let expr = expr
                .replace("$namespace", NAMESPACE)
                .replace("$pod", ".*")
                .replace("$__rate_interval", "15s");
            queries.push((panel["title"].as_str().unwrap_or("").to_owned(), expr));
        }
    }
    assert!(queries.len() > 20, "the dashboard has its panels");
    queries
}

/// A `prometheus` server scraping the pods every second, killed on drop.
struct Prometheus {
    addr: SocketAddr,
    _process: Process,
    _dir: TempDir,
}

impl Prometheus {
    async fn start(pods: &[&GatewayProcess]) -> Prometheus {
        let dir = TempDir::new("prometheus");
        dir.write("rules.yaml", rules_file());
        let targets: String = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                format!(
                    "      - targets: [\"{}\"]\n        labels: {{namespace: {NAMESPACE}, pod: gateway-{i}}}\n",
                    p.addr
                )
            })
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [rules.yaml]\n\
             scrape_configs:\n  - job_name: gateway\n    static_configs:\n{targets}"
        );
        let config = dir.write("prometheus.yml", config);
        // (Debian package prometheus; make test-deps installs it.)
        let command = |port: u16| {
            let mut cmd = Command::new("prometheus");
            cmd.arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"));
            cmd
        };
        let ready = |port: u16, _| async move {
            match get(([127, 0, 0, 1], port).into(), "/-/ready").await {
                Some((200, _)) => Probe::Ready,
                _ => Probe::Pending,
            }
        };
        let log = dir.path("prometheus.log");
        let (process, port) = start_on_free_port("prometheus", &log, command, ready).await;
        Prometheus {
            addr: ([127, 0, 0, 1], port).into(),
            _process: process,
            _dir: dir,
        }
    }

    /// `GET /api/v1/<path>`'s `data`, asserting success.
    async fn api(&self, path: &str) -> Value {
        let (status, body) = get(self.addr, &format!("/api/v1/{path}")).await.unwrap();
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"));
        assert_eq!(status, 200, "{path}: {v}");
        assert_eq!(v["status"], "success", "{path}: {v}");
        v["data"].clone()
    }

    /// An instant query's result vector.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let q: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let data = self.api(&format!("query?query={q}")).await;
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Polls until `promql` returns a sample for each of `n` series or more.
    async fn wait_series(&self, promql: &str, n: usize) -> Vec<Value> {
        let what = format!("{promql}: {n} series");
        wait::until_every(&what, SETTLE, QUERY_EVERY, || async {
            let result = self.query(promql).await;
            (result.len() >= n).then_some(result.clone()).ok_or(result)
        })
        .await
    }

    /// The names of the alerts pending or firing, with their pods.
    async fn active_alerts(&self) -> Vec<(String, String)> {
        let data = self.api("alerts").await;
        let mut active: Vec<(String, String)> = data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or("").to_owned(),
                    a["labels"]["pod"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        active.sort();
        active
    }

    /// Polls until `alert` is active for every pod in `pods`.
    async fn wait_alert(&self, alert: &str, pods: &[&str]) {
        let what = format!("{alert} active for {pods:?}");
        wait::until_every(&what, SETTLE, QUERY_EVERY, || async {
            let active = self.active_alerts().await;
            let of = |p: &&str| active.contains(&(alert.to_owned(), (*p).to_owned()));
            pods.iter().all(of).then_some(()).ok_or(active)
        })
        .await
    }
}

/// `GET path`: (status, body), or `None` when nothing answers.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let r = Request::get(path).try_send(addr).await?;
    Some((r.status, r.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_and_alerts_work_on_real_scrapes() {
    let mut redis = RedisServer::start().await;
    // Two pods on one Redis prefix, rebalancing on (its panels need its
    // gauges; with a few clients nothing is shed).
    let pod = GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway"))
        .redis(&redis.url())
        .configure(|c| {
            c.server.max_connections = MAX_CONNECTIONS;
            c.rebalance.enabled = true;
            c.rebalance.interval_ms = 1000;
        });
    let pods = [pod.clone().start().await, pod.start().await];
    let prom = Prometheus::start(&[&pods[0], &pods[1]]).await;

    // One reader on each pod joined to room:lobby, reading until the end; a
    // client push and a bad token for the counters that need them.
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for pod in &pods {
        let mut c = pod.client().await;
        c.join("room:lobby", "1").await;
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut frames = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match c.next_within(Duration::from_millis(200)).await {
                    Some(Received::Close(_)) => break,
                    Some(_) => frames += 1,
                    None => {}
                }
            }
            frames
        }));
    }
    let mut pusher = pods[0].client().await;
    pusher.join("room:lobby", "1").await;
    pusher
        .send(json!(["1", "p", "room:lobby", "new_msg", {"n": 0}]))
        .await;
    let _ = PhxClient::try_connect(pods[1].url("token=bad")).await;

    // Broadcasts through the API every 100 ms until the dashboard has data.
    let publishing = {
        let stop = stop.clone();
        let (addr, key) = (pods[1].addr, pods[1].api_key.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let body = json!({"topic": "room:lobby", "event": "new_msg", "payload": {"n": n}});
                let req = Request::post("/api/broadcast").bearer(&key);
                assert_eq!(req.json(&body.to_string()).send(addr).await.status, 200);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Enough scrapes of both pods, with deliveries in them, for rate() over 15 s.
    prom.wait_series(r#"count_over_time(up{job="gateway"}[1m]) >= 6"#, 2)
        .await;
    prom.wait_series(
        r#"rate(gateway_messages_sent_total{kind="broadcast"}[15s]) > 0"#,
        2,
    )
    .await;

    for (title, expr) in dashboard_queries() {
        let result = prom.query(&expr).await;
        assert!(!result.is_empty(), "panel {title:?}: no data for {expr}");
        for r in &result {
            let v = r["value"][1].as_str().unwrap_or("");
            assert!(
                v != "NaN",
                "panel {title:?}: NaN for {expr} ({})",
                r["metric"]
            );
        }
    }

    // Every rule evaluates cleanly, and nothing is wrong yet.
    let rules = prom.api("rules").await;
    let mut evaluated = 0;
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
            evaluated += 1;
        }
    }
    assert!(evaluated >= 8, "{rules}");
    assert_eq!(prom.active_alerts().await, Vec::<(String, String)>::new());

    // Pod 0 at its limit (3 connections): near max connections.
    let third = pods[0].client().await;
    prom.wait_alert("GatewayPodNearMaxConnections", &["gateway-0"])
        .await;
    // Redis down: both pods report it.
    publishing.abort();
    redis.kill();
    prom.wait_alert("GatewayRedisDown", &["gateway-0", "gateway-1"])
        .await;

    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.await.unwrap() > 0, "a reader received broadcasts");
    }
    drop(third);
}
