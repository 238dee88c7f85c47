//! The Grafana dashboard and the alerts of `k8s/` against a real Prometheus
//! (Debian's `prometheus` package, installed by `make test-deps`) scraping two
//! real `gateway` pods on a real `redis-server`: every dashboard query returns
//! data while clients connect, join, push and receive broadcasts; every
//! alerting rule evaluates without error and none is active while all is
//! well; at the connection limit and with Redis down, the matching alerts
//! become active for both pods.
//!
//! Needs `redis-server` and `prometheus` on PATH.

mod support;

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::redis::{free_port, http_post, Pod, RedisServer};
use support::Received;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NAMESPACE: &str = "gw-test";
/// Each pod's connection limit: the test fills one pod to it.
const MAX_CONNECTIONS: usize = 3;
/// How long Prometheus may take to show what the test waits for.
const SETTLE: Duration = Duration::from_secs(30);

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// The rules file inside the PrometheusRule: its `spec`, de-indented.
fn rules_file() -> String {
    let text = std::fs::read_to_string(repo_file("k8s/components/monitoring/prometheusrule.yaml"))
        .expect("the PrometheusRule");
    let spec = text.split_once("\nspec:\n").expect("a spec: section").1;
    spec.lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every query of the dashboard, with its variables filled in: the title of
/// its panel and the PromQL.
fn dashboard_queries() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(repo_file("k8s/dashboards/gateway.json")).expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
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
    child: Child,
    dir: PathBuf,
}

impl Prometheus {
    async fn start(pods: &[&Pod]) -> Prometheus {
        let dir = std::env::temp_dir().join(format!(
            "gateway-prometheus-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("rules.yaml"), rules_file()).expect("rules file");
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
        std::fs::write(dir.join("prometheus.yml"), config).expect("config");
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("prometheus on PATH (Debian package prometheus; make test-deps installs it)");
        let mut prom = Prometheus { addr, child, dir };
        let deadline = Instant::now() + SETTLE;
        while get(addr, "/-/ready").await.map(|r| r.0) != Some(200) {
            assert!(
                prom.child.try_wait().expect("wait").is_none(),
                "prometheus exited:\n{}",
                prom.log()
            );
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                prom.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        prom
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>`'s `data`, asserting success.
    async fn api(&self, path: &str) -> Value {
        let (status, body) = get(self.addr, &format!("/api/v1/{path}"))
            .await
            .expect("prometheus answers");
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
        let deadline = Instant::now() + SETTLE;
        loop {
            let result = self.query(promql).await;
            if result.len() >= n {
                return result;
            }
            assert!(
                Instant::now() < deadline,
                "{promql}: {} series, expected {n}",
                result.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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
        let deadline = Instant::now() + SETTLE;
        loop {
            let active = self.active_alerts().await;
            if pods
                .iter()
                .all(|p| active.contains(&(alert.to_owned(), (*p).to_owned())))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{alert} not active for {pods:?}; active: {active:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- prometheus log -----\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET path` as HTTP/1.0, so the body is never chunked: (status, body).
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.ok()?;
        let text = String::from_utf8_lossy(&resp).into_owned();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_and_alerts_work_on_real_scrapes() {
    let mut redis = RedisServer::start().await;
    let server =
        format!("drain_delay_ms = 0\ndrain_period_ms = 0\nmax_connections = {MAX_CONNECTIONS}\n");
    let pods = [
        Pod::start_with_server(&server, &redis.url(), "prom:").await,
        Pod::start_with_server(&server, &redis.url(), "prom:").await,
    ];
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
    let _ = support::PhxClient::try_connect(pods[1].url("token=bad")).await;

    // Broadcasts through the API every 100 ms until the dashboard has data.
    let publishing = {
        let stop = stop.clone();
        let (addr, key) = (pods[1].addr, pods[1].api_key.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let body = json!({"topic": "room:lobby", "event": "new_msg", "payload": {"n": n}});
                let (status, _) = http_post(addr, "/api/broadcast", &key, &body.to_string()).await;
                assert_eq!(status, 200);
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
    for group in rules["groups"].as_array().expect("rule groups") {
        for rule in group["rules"].as_array().expect("rules") {
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
        assert!(r.await.expect("reader") > 0, "a reader received broadcasts");
    }
    drop(third);
}
