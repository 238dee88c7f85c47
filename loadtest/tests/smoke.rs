//! Smoke run of every `loadtest` scenario, seconds long, against a real
//! `redis-server` and a real `gateway` process configured from
//! config/example.toml, so the tool cannot rot.
//!
//! Needs `redis-server` on PATH. Uses `<target>/debug/gateway` (built by
//! `cargo test --workspace` for the gateway's own tests); builds it if missing.

use serde_json::Value;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const START_TIMEOUT: Duration = Duration::from_secs(20);

fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A temporary directory, removed on Drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on Drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn log_file(dir: &TempDir, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path(name))
        .unwrap()
}

fn redis_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

fn start_redis(dir: &TempDir) -> (Proc, u16) {
    for _ in 0..5 {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file(dir, "redis.log")))
            .stderr(Stdio::from(log_file(dir, "redis.log")))
            .spawn()
            .expect("cannot run redis-server: install it (scripts/setup-test-deps.sh)");
        let mut p = Proc(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if p.0.try_wait().unwrap().is_some() {
                break; // port taken: try another
            }
            if redis_ping(port) {
                return (p, port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("redis-server did not start");
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// `<target>/debug/gateway`, built if missing. (A separate target directory
/// for that build: the running `cargo test` may hold the main one's lock.)
fn gateway_bin() -> PathBuf {
    let bin = target_dir().join("debug/gateway");
    if bin.exists() {
        return bin;
    }
    let own = target_dir().join("loadtest-smoke");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-p", "gateway", "--bin", "gateway"])
        .env("CARGO_TARGET_DIR", &own)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .status()
        .expect("run cargo build -p gateway");
    assert!(status.success(), "cargo build -p gateway failed");
    own.join("debug/gateway")
}

fn healthz(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let req = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.1 200")
}

struct Env {
    dir: TempDir,
    _redis: Proc,
    gateway: Proc,
    redis_port: u16,
    port: u16,
    prefix: String,
    api_key: String,
}

impl Env {
    fn start() -> Env {
        let dir = TempDir::new("loadtest-smoke");
        let (redis, redis_port) = start_redis(&dir);
        let prefix = format!("{}:", unique("lt").replace('-', "_"));
        let example = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/example.toml"
        ))
        .unwrap();
        assert!(
            example.contains("[socket.longpoll]\nenabled = true"),
            "config/example.toml must enable long-poll for the long-poll smoke run"
        );
        let config = format!(
            "{example}\n[redis]\nurl = \"redis://127.0.0.1:{redis_port}\"\nprefix = \"{prefix}\"\n"
        );
        std::fs::write(dir.path("gateway.toml"), config).unwrap();
        let api_key = unique("key");
        let bin = gateway_bin();
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = Command::new(&bin);
            for v in [
                "GATEWAY_CONFIG",
                "GATEWAY_LISTEN",
                "REDIS_URL",
                "GATEWAY_LOG",
                "GATEWAY_LOG_FORMAT",
                "GATEWAY_NODE_NAME",
            ] {
                cmd.env_remove(v);
            }
            let child = cmd
                .arg("--config")
                .arg(dir.path("gateway.toml"))
                .env("PORT", port.to_string())
                .env("GATEWAY_API_KEY", &api_key)
                .env("GATEWAY_LOG", "warn")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::from(log_file(&dir, "gateway.log")))
                .stderr(Stdio::from(log_file(&dir, "gateway.log")))
                .spawn()
                .expect("run the gateway");
            let mut p = Proc(child);
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let deadline = Instant::now() + START_TIMEOUT;
            while Instant::now() < deadline {
                if p.0.try_wait().unwrap().is_some() {
                    break;
                }
                if healthz(addr) {
                    return Env {
                        dir,
                        _redis: redis,
                        gateway: p,
                        redis_port,
                        port,
                        prefix,
                        api_key,
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let log = std::fs::read_to_string(dir.path("gateway.log")).unwrap_or_default();
        panic!("the gateway did not start; its log:\n{log}");
    }

    /// Runs `loadtest SCENARIO ARGS --json --html` and returns the parsed JSON.
    fn run(&self, name: &str, args: &[&str]) -> Value {
        let json = self.dir.path(&format!("{name}.json"));
        let html = self.dir.path(&format!("{name}.html"));
        let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args(args)
            .arg("--url")
            .arg(format!(
                "ws://127.0.0.1:{}/socket/websocket?vsn=2.0.0",
                self.port
            ))
            .args(["--duration", "2s", "--drain", "1s"])
            .arg("--json")
            .arg(&json)
            .arg("--html")
            .arg(&html)
            .env_remove("GATEWAY_API_KEY")
            .stdin(Stdio::null())
            .output()
            .expect("run loadtest");
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

    fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis_port)
    }

    fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/broadcast", self.port)
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

#[test]
fn every_scenario_runs_against_a_real_gateway_and_redis() {
    let env = Env::start();
    let pid = env.gateway.0.id().to_string();

    let v = env.run("connect", &["connect", "-n", "50", "-r", "500", "-t", "2"]);
    assert_eq!(v["counters"]["connects_ok"], 50, "{v}");
    assert_eq!(v["counters"]["joins_ok"], 100, "{v}");
    assert!(v["connections_joins_per_sec"].as_f64().unwrap() > 0.0);

    let v = env.run("idle", &["idle", "-n", "50", "--gateway-pid", &pid]);
    assert_eq!(v["counters"]["joins_ok"], 50, "{v}");
    assert!(v["memory"]["rss_after"].as_u64().unwrap() > 0, "{v}");

    let (redis_url, api_url) = (env.redis_url(), env.api_url());
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
        &env.prefix,
        "--api-url",
        &api_url,
        "--api-key",
        &env.api_key,
        "--source-ips",
        "127.0.0.2,127.0.0.3",
    ];
    for via in ["redis", "api", "push"] {
        let mut args = fanout.to_vec();
        args.extend(["--via", via]);
        let v = env.run(&format!("fanout-{via}"), &args);
        assert_delivered(&format!("fanout via {via}"), &v);
    }

    // Past --per-worker, connections are spread over worker processes.
    let mut args = fanout.to_vec();
    args.extend(["--per-worker", "20"]);
    let v = env.run("fanout-workers", &args);
    assert_eq!(v["workers"], 3, "{v}");
    assert_delivered("fanout over 3 workers", &v);

    let v = env.run("chat", &["chat", "-c", "20", "-p", "2"]);
    assert_delivered("chat", &v);
    assert!(v["counters"]["pushes_ok"].as_u64().unwrap() > 0, "{v}");
}

/// The same scenarios over Phoenix long-poll (`--transport longpoll`): the
/// example config enables `[socket.longpoll]` on `/socket`.
#[test]
fn scenarios_run_over_longpoll() {
    let env = Env::start();
    let lp = ["--transport", "longpoll"];
    let with = |args: &[&str]| -> Vec<String> {
        lp.iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    let run = |name: &str, args: &[&str]| {
        let args = with(args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let v = env.run(name, &args);
        assert_eq!(v["transport"], "longpoll", "{name}: {v}");
        v
    };

    let v = run(
        "lp-connect",
        &["connect", "-n", "20", "-r", "200", "-t", "2"],
    );
    assert_eq!(v["counters"]["connects_ok"], 20, "{v}");
    assert_eq!(v["counters"]["joins_ok"], 40, "{v}");

    let redis_url = env.redis_url();
    let v = run(
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
            &env.prefix,
            "--source-ips",
            "127.0.0.2,127.0.0.3",
        ],
    );
    assert_eq!(v["counters"]["joins_ok"], 20, "{v}");
    assert_delivered("long-poll fanout via redis", &v);

    let v = run("lp-chat", &["chat", "-c", "15", "-p", "2"]);
    assert_delivered("long-poll chat", &v);
    assert!(v["counters"]["pushes_ok"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["counters"]["disconnects"], 0, "{v}");
}
