//! Real processes for the multi-pod tests: `redis-server` on a free port,
//! `gateway` binaries with a temporary config, a minimal RESP client for
//! PUBLISH / PUBSUB NUMSUB / CLIENT KILL / DEBUG SLEEP / MONITOR, HS256 token
//! minting and a bare HTTP/1.1 client.
//!
//! Every process is killed when its handle drops; every wait is bounded. Ports
//! come from the OS and every [`Cluster`] has its own Redis and its own channel
//! prefix, so tests run in parallel. When a test panics, the logs of its
//! processes are printed to help with the diagnosis.

use super::{PhxClient, Received, TIMEOUT};
use serde_json::{json, Value};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The HS256 secret the pods get through `GATEWAY_JWT_SECRET`.
pub const SECRET: &str = "redis-tests-secret-0123456789";

/// How long a process may take to answer after it was started.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How long Redis-side state (NUMSUB, a resubscribe) may take to settle.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Pause between two polls of an observable value.
const POLL: Duration = Duration::from_millis(20);

/// The channel rules of config/example.toml without presence, plus `quiet:*`,
/// whose pushes skip their sender (`include_sender = false`).
const RULES: &str = r#"
[[socket]]
path = "/socket"
require_token = false
socket_id = "users_socket:{sub}"
push_rate = 0                          # ordering tests push faster than the default limit

[socket.jwt]
algorithm = "HS256"
secret = "dev-only-secret-change-me"   # replaced through GATEWAY_JWT_SECRET

[socket.longpoll]
enabled = true

[[channel]]
pattern = "room:*"
policy = "public"
events = ["new_msg"]
include_sender = true

[[channel]]
pattern = "private:*"
policy = "token"
events = ["new_msg"]

[[channel]]
pattern = "user:{sub}"
policy = "token"

[[channel]]
pattern = "quiet:*"
policy = "public"
events = ["new_msg"]
include_sender = false
"#;

fn unique(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("gateway-{}", unique(tag)));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port the OS just handed out and released again.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid} failed");
}

fn print_log(what: &str, path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(60)..];
    eprintln!("----- {what} ({}) -----", path.display());
    for l in tail {
        eprintln!("{l}");
    }
}

// ---------------------------------------------------------------------------
// RESP client

/// A reply from Redis.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    pub fn int(&self) -> i64 {
        match self {
            Reply::Int(n) => *n,
            other => panic!("expected an integer reply, got {other:?}"),
        }
    }

    pub fn text(&self) -> String {
        match self {
            Reply::Status(s) => s.clone(),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("expected a string reply, got {other:?}"),
        }
    }
}

type ReadFuture<'a> = Pin<Box<dyn Future<Output = std::io::Result<Reply>> + Send + 'a>>;

fn read_reply(r: &mut BufReader<TcpStream>) -> ReadFuture<'_> {
    Box::pin(async move {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at(1);
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        Ok(match kind {
            "+" => Reply::Status(rest.to_owned()),
            "-" => Reply::Error(rest.to_owned()),
            ":" => Reply::Int(rest.parse().map_err(|_| bad(line))?),
            "$" => {
                let len: i64 = rest.parse().map_err(|_| bad(line))?;
                if len < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut buf = vec![0; len as usize + 2];
                    r.read_exact(&mut buf).await?;
                    buf.truncate(len as usize);
                    Reply::Bulk(Some(buf))
                }
            }
            "*" => {
                let len: i64 = rest.parse().map_err(|_| bad(line))?;
                if len < 0 {
                    Reply::Array(None)
                } else {
                    let mut items = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        items.push(read_reply(r).await?);
                    }
                    Reply::Array(Some(items))
                }
            }
            _ => return Err(bad(line)),
        })
    })
}

/// One plain connection to Redis.
pub struct Resp {
    stream: BufReader<TcpStream>,
}

impl Resp {
    pub async fn connect(port: u16) -> Resp {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("connect to redis timed out")
            .expect("connect to redis failed");
        Resp {
            stream: BufReader::new(stream),
        }
    }

    async fn try_connect(port: u16) -> Option<Resp> {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
            .await
            .ok()?
            .ok()?;
        Some(Resp {
            stream: BufReader::new(stream),
        })
    }

    /// Writes one command without reading its reply.
    pub async fn send(&mut self, args: &[&[u8]]) {
        let mut buf = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a);
            buf.extend_from_slice(b"\r\n");
        }
        self.stream.get_mut().write_all(&buf).await.unwrap();
    }

    /// The next reply, within `within`.
    pub async fn read_within(&mut self, within: Duration) -> Reply {
        tokio::time::timeout(within, read_reply(&mut self.stream))
            .await
            .expect("timed out waiting for a redis reply")
            .expect("redis connection failed")
    }

    /// The next reply.
    pub async fn read(&mut self) -> Reply {
        self.read_within(TIMEOUT).await
    }

    /// Runs one command.
    pub async fn cmd(&mut self, args: &[&str]) -> Reply {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.send(&args).await;
        self.read().await
    }

    async fn try_cmd(&mut self, args: &[&str]) -> Option<Reply> {
        let mut buf = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        // While a server starts, the port may still belong to someone else
        // who drops the connection: that is a failed try, not a test failure.
        self.stream.get_mut().write_all(&buf).await.ok()?;
        tokio::time::timeout(TIMEOUT, read_reply(&mut self.stream))
            .await
            .ok()?
            .ok()
    }

    /// PUBLISH; returns how many subscribers (pods) received it.
    pub async fn publish(&mut self, channel: &str, message: &str) -> i64 {
        self.cmd(&["PUBLISH", channel, message]).await.int()
    }

    /// PUBSUB NUMSUB for one channel.
    pub async fn numsub(&mut self, channel: &str) -> i64 {
        match self.cmd(&["PUBSUB", "NUMSUB", channel]).await {
            Reply::Array(Some(items)) if items.len() == 2 => items[1].int(),
            other => panic!("unexpected NUMSUB reply {other:?}"),
        }
    }

    /// Polls NUMSUB until it equals `want` (bounded by [`SETTLE_TIMEOUT`]).
    pub async fn wait_numsub(&mut self, channel: &str, want: i64) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let n = self.numsub(channel).await;
            if n == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "NUMSUB {channel} stayed {n}, expected {want}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

// ---------------------------------------------------------------------------
// redis-server

/// A `redis-server` process on a free port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
    /// Stopped with SIGSTOP and not yet continued.
    paused: bool,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub async fn start() -> RedisServer {
        let dir = TempDir::new("redis");
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = spawn_redis(port, &dir).await {
                return RedisServer {
                    port,
                    dir,
                    child: Some(child),
                    paused: false,
                };
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// `redis://127.0.0.1:{port}/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("redis-server is not running")
            .id()
    }

    /// A new client connection.
    pub async fn client(&self) -> Resp {
        Resp::connect(self.port).await
    }

    /// Kills the server (SIGKILL): every connection drops at once.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.paused {
                signal(c.id(), "-CONT");
                self.paused = false;
            }
            kill(&mut c);
        }
    }

    /// Starts the server again on the same port, with an empty dataset.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = spawn_redis(self.port, &self.dir).await {
                self.child = Some(child);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server could not start again on port {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGSTOP: the server neither answers nor closes connections.
    pub fn pause(&mut self) {
        signal(self.pid(), "-STOP");
        self.paused = true;
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&mut self) {
        signal(self.pid(), "-CONT");
        self.paused = false;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_log("redis-server log", &self.dir.path("redis.log"));
        }
        self.kill();
    }
}

/// Spawns `redis-server` on `port`; `None` when it did not come up as the
/// process answering on that port (the port was taken).
async fn spawn_redis(port: u16, dir: &TempDir) -> Option<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path("redis.log"))
        .unwrap();
    let mut child = match Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .arg("--dir")
        .arg(&dir.0)
        .args(["--enable-debug-command", "local"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot run redis-server ({e}); install it (Debian package redis-server, \
             or scripts/setup-test-deps.sh)"
        ),
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        if let Some(mut c) = Resp::try_connect(port).await {
            if let Some(Reply::Bulk(Some(info))) = c.try_cmd(&["INFO", "server"]).await {
                let info = String::from_utf8_lossy(&info).into_owned();
                let ours = format!("process_id:{}", child.id());
                if info.lines().any(|l| l.trim() == ours) {
                    return Some(child);
                }
                // Another server answers on this port.
                kill(&mut child);
                return None;
            }
        }
        if Instant::now() >= deadline {
            kill(&mut child);
            panic!("redis-server on port {port} did not answer within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs `redis-cli -p PORT ARGS...`, returning its trimmed output.
pub async fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        TIMEOUT,
        tokio::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("redis-cli timed out")
    .expect("cannot run redis-cli");
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

// ---------------------------------------------------------------------------
// gateway pods

/// The `[log]` section of test pods.
const DEFAULT_LOG: &str = "format = \"human\"\nlevel = \"info,pubsub_redis=debug\"\n";

/// A `gateway` process with the Redis broker, killed on drop.
pub struct Pod {
    pub addr: SocketAddr,
    /// This pod's `GATEWAY_API_KEY` (unique, so readiness checks know it is ours).
    pub api_key: String,
    child: Child,
    dir: TempDir,
}

impl Pod {
    /// Starts a pod on a free port and waits until `/healthz` answers.
    pub async fn start(redis_url: &str, prefix: &str, linger_ms: u64) -> Pod {
        Pod::start_with(
            "",
            format!("url = \"{redis_url}\"\nprefix = \"{prefix}\"\nlinger_ms = {linger_ms}\n"),
        )
        .await
    }

    /// Starts a pod with one more rule, `presence:*`, with presence keyed by
    /// the `user` join param and `tab` in the meta, whose dead presences are
    /// reaped after `pod_timeout_ms`, with diffs batched over 20 ms.
    pub async fn start_presence(redis_url: &str, prefix: &str, pod_timeout_ms: u64) -> Pod {
        Pod::start_with(
            "",
            format!(
                "url = \"{redis_url}\"\nprefix = \"{prefix}\"\nlinger_ms = 200\n\n\
             [presence]\nbatch_ms = 20\npod_timeout_ms = {pod_timeout_ms}\n\n\
             [[channel]]\npattern = \"presence:*\"\n\
             [channel.presence]\nkey_param = \"user\"\nmeta_params = [\"tab\"]\n"
            ),
        )
        .await
    }

    /// Starts a pod on a Redis Cluster (sharded pub/sub) given its seed URLs.
    pub async fn start_cluster(seeds: &str, prefix: &str, linger_ms: u64) -> Pod {
        Pod::start_with(
            "",
            format!(
            "url = \"{seeds}\"\ncluster = true\nprefix = \"{prefix}\"\nlinger_ms = {linger_ms}\n"
        ),
        )
        .await
    }

    /// Starts a pod with more `[server]` settings (TOML lines, e.g. drain timing).
    pub async fn start_with_server(server: &str, redis_url: &str, prefix: &str) -> Pod {
        Pod::start_with(
            server,
            format!("url = \"{redis_url}\"\nprefix = \"{prefix}\"\n"),
        )
        .await
    }

    /// Starts a pod whose `[log]` section is `log` (TOML lines).
    pub async fn start_with_log(log: &str, redis_url: &str, prefix: &str) -> Pod {
        Pod::start_full(
            "",
            format!("url = \"{redis_url}\"\nprefix = \"{prefix}\"\n"),
            "",
            log,
        )
        .await
    }

    /// Starts a pod whose `[[socket]]` table also holds `socket` (TOML lines,
    /// e.g. a small `outbound_queue`).
    pub async fn start_with_socket(socket: &str, redis_url: &str, prefix: &str) -> Pod {
        Pod::start_full(
            "",
            format!("url = \"{redis_url}\"\nprefix = \"{prefix}\"\n"),
            socket,
            DEFAULT_LOG,
        )
        .await
    }

    /// Starts a pod whose `[server]` section also holds `server` and whose
    /// `[redis]` section holds `redis` (TOML lines).
    async fn start_with(server: &str, redis: String) -> Pod {
        Pod::start_full(server, redis, "", DEFAULT_LOG).await
    }

    /// [`Pod::start_with`], with `socket` (TOML lines) added to the
    /// `[[socket]]` table and `log` as the `[log]` section.
    async fn start_full(server: &str, redis: String, socket: &str, log: &str) -> Pod {
        // Tests stop pods at once unless they test the drain itself.
        let server = if server.is_empty() {
            "drain_delay_ms = 0\ndrain_period_ms = 0\n"
        } else {
            server
        };
        let dir = TempDir::new("pod");
        let rules = RULES.replacen("[[socket]]\n", &format!("[[socket]]\n{socket}\n"), 1);
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:4000\"\n{server}\n\
             [log]\n{log}\n\
             [api]\npath = \"/api/broadcast\"\n\n\
             [redis]\n{redis}\
             {rules}"
        );
        let config_path = dir.path("gateway.toml");
        std::fs::write(&config_path, config).unwrap();
        let api_key = unique("key");
        for _ in 0..5 {
            let port = free_port();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.path("gateway.log"))
                .unwrap();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
            for (name, _) in gateway::config::ENV_VARS {
                cmd.env_remove(name);
            }
            let mut child = cmd
                .arg("--config")
                .arg(&config_path)
                .env("PORT", port.to_string())
                .env("GATEWAY_API_KEY", &api_key)
                .env("GATEWAY_JWT_SECRET", SECRET)
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap();
            if wait_pod(addr, &api_key, &mut child).await {
                return Pod {
                    addr,
                    api_key,
                    child,
                    dir,
                };
            }
            kill(&mut child);
        }
        panic!("gateway did not start on any of 5 free ports");
    }

    /// `ws://addr/socket/websocket?vsn=2.0.0` plus `extra` params.
    pub fn url(&self, extra: &str) -> String {
        let sep = if extra.is_empty() { "" } else { "&" };
        format!("ws://{}/socket/websocket?vsn=2.0.0{sep}{extra}", self.addr)
    }

    /// An anonymous V2 client.
    pub async fn client(&self) -> PhxClient {
        PhxClient::connect(&self.url("")).await
    }

    /// A V2 client with `token`; returns once the connection is set up (its
    /// socket id subscribed), which a heartbeat reply proves.
    pub async fn client_with_token(&self, token: &str) -> PhxClient {
        let mut c = PhxClient::connect(&self.url(&format!("token={token}"))).await;
        c.heartbeat("hb0").await;
        c
    }

    /// `POST /api/broadcast` with this pod's key: (status, body).
    pub async fn api_broadcast(&self, topic: &str, event: &str, payload: Value) -> (u16, String) {
        let body = json!({"topic": topic, "event": event, "payload": payload}).to_string();
        http_post(self.addr, "/api/broadcast", &self.api_key, &body).await
    }

    /// The process id, e.g. to read `/proc/{pid}/status`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (a clean stop, as Kubernetes asks for one).
    pub fn terminate(&mut self) {
        signal(self.child.id(), "-TERM");
    }

    /// Whether the process is still running (it did not crash).
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The exit status once the process has ended, without waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// `GET path` on this pod: (status, body), or `None` if nothing answers.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        try_http(self.addr, "GET", path, None, "").await
    }

    /// What the process has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("gateway.log")).unwrap_or_default()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_log(
                &format!("gateway {} log", self.addr),
                &self.dir.path("gateway.log"),
            );
        }
        kill(&mut self.child);
    }
}

/// Waits until the pod at `addr` answers `/healthz` and knows `key` (so it is
/// our process, not another test's on a reused port). `false` if it exited.
async fn wait_pod(addr: SocketAddr, key: &str, child: &mut Child) -> bool {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if let Some((200, _)) = try_http(addr, "GET", "/healthz", None, "").await {
            // 200 or 503 (Redis not yet up): both mean the key was accepted.
            let (status, _) = http_post(addr, "/api/broadcast", key, "{}").await;
            return status != 401 && child.try_wait().unwrap().is_none();
        }
        assert!(
            Instant::now() < deadline,
            "gateway at {addr} did not answer /healthz within {START_TIMEOUT:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> Option<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let auth = bearer
            .map(|k| format!("Authorization: Bearer {k}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.ok()?;
        let text = String::from_utf8_lossy(&resp).into_owned();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(TIMEOUT, exchange).await.ok()?
}

/// `POST path` with a bearer key and a JSON body: (status, body).
pub async fn http_post(addr: SocketAddr, path: &str, key: &str, body: &str) -> (u16, String) {
    try_http(addr, "POST", path, Some(key), body)
        .await
        .unwrap_or_else(|| panic!("POST {path} to {addr} failed or timed out"))
}

// ---------------------------------------------------------------------------
// A Redis server and several pods sharing it.

/// One `redis-server` and `n` pods with a prefix unique to this cluster.
pub struct Cluster {
    pub pods: Vec<Pod>,
    pub redis: RedisServer,
    pub prefix: String,
}

impl Cluster {
    /// Redis plus `pods` gateways with `linger_ms = 200`.
    pub async fn start(pods: usize) -> Cluster {
        Cluster::with_linger(pods, 200).await
    }

    pub async fn with_linger(pods: usize, linger_ms: u64) -> Cluster {
        let redis = RedisServer::start().await;
        let prefix = format!("{}:", unique("t"));
        let url = redis.url();
        let pods =
            futures_util::future::join_all((0..pods).map(|_| Pod::start(&url, &prefix, linger_ms)))
                .await;
        Cluster {
            pods,
            redis,
            prefix,
        }
    }

    /// Redis plus `pods` gateways with presence timing for tests (see
    /// [`Pod::start_presence`]).
    pub async fn with_presence(pods: usize, pod_timeout_ms: u64) -> Cluster {
        let redis = RedisServer::start().await;
        let prefix = format!("{}:", unique("t"));
        let url = redis.url();
        let pods = futures_util::future::join_all(
            (0..pods).map(|_| Pod::start_presence(&url, &prefix, pod_timeout_ms)),
        )
        .await;
        Cluster {
            pods,
            redis,
            prefix,
        }
    }

    /// Like [`Cluster::start`], but Redis is down while the pods start (it
    /// got a port, then was killed): start it with `cluster.redis.restart()`.
    pub async fn with_redis_down(pods: usize) -> Cluster {
        let mut redis = RedisServer::start().await;
        redis.kill();
        let prefix = format!("{}:", unique("t"));
        let url = redis.url();
        let pods =
            futures_util::future::join_all((0..pods).map(|_| Pod::start(&url, &prefix, 200))).await;
        Cluster {
            pods,
            redis,
            prefix,
        }
    }

    /// The Redis channel of `topic`: `{prefix}{topic}`.
    pub fn channel(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// A new plain Redis connection.
    pub async fn resp(&self) -> Resp {
        self.redis.client().await
    }

    /// Publishes probes to `topic` until every pod has a subscription to it
    /// (PUBLISH reports `pods` receivers), e.g. after a reconnect.
    /// Bounded by [`SETTLE_TIMEOUT`].
    pub async fn wait_delivering(&self, resp: &mut Resp, topic: &str, pods: i64) {
        let channel = self.channel(topic);
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let mut n = 0;
        loop {
            let probe = json!({"event": "probe", "payload": {"n": n}}).to_string();
            if resp.publish(&channel, &probe).await == pods {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{topic}: pods did not resubscribe within {SETTLE_TIMEOUT:?}"
            );
            n += 1;
            tokio::time::sleep(POLL).await;
        }
    }

    /// Asserts every pod is still running.
    pub fn assert_alive(&mut self) {
        for p in &mut self.pods {
            assert!(p.alive(), "gateway {} exited", p.addr);
        }
    }
}

// ---------------------------------------------------------------------------
// Tokens and client helpers

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token for `sub`, valid for an hour, signed with [`SECRET`].
pub fn token(sub: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": now() + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The frame every subscriber gets for a broadcast.
pub fn broadcast(topic: &str, event: &str, payload: Value) -> Value {
    json!([null, null, topic, event, payload])
}

impl PhxClient {
    /// The next data or close frame within `within`; `None` on timeout.
    ///
    /// The end of the connection (a close frame, EOF or an error) is reported
    /// once, as `Close`. After that no frame can come, so a later call waits
    /// out `within` and returns `None`: a loop that does not stop on `Close`
    /// polls at the caller's pace instead of spinning without yielding (which
    /// starves the runtime and can hang its shutdown).
    pub async fn next_within(&mut self, within: Duration) -> Option<Received> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message as WsMessage;
        let deadline = tokio::time::Instant::now() + within;
        if self.ended {
            tokio::time::sleep_until(deadline).await;
            return None;
        }
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            return Some(match msg {
                None | Some(Err(_)) => {
                    self.ended = true;
                    Received::Close(None)
                }
                Some(Ok(WsMessage::Text(t))) => {
                    Received::Text(serde_json::from_str(t.as_str()).unwrap())
                }
                Some(Ok(WsMessage::Binary(b))) => Received::Binary(b.to_vec()),
                Some(Ok(WsMessage::Close(c))) => {
                    self.ended = true;
                    Received::Close(c.map(|c| u16::from(c.code)))
                }
                Some(Ok(_)) => continue,
            });
        }
    }

    /// Sends `phx_join` and returns its reply (ok or error), skipping nothing:
    /// the reply must be the next frame.
    pub async fn try_join(&mut self, topic: &str, jr: &str) -> Value {
        self.send(json!([jr, jr, topic, "phx_join", {}])).await;
        let reply = self.recv().await;
        assert_eq!(reply[3], "phx_reply", "{reply}");
        assert_eq!(reply[1], jr, "{reply}");
        reply
    }

    /// Leaves `topic` (joined with `jr`) and waits for the ok and `phx_close`,
    /// skipping broadcasts that were already on their way.
    pub async fn leave(&mut self, topic: &str, jr: &str, r: &str) {
        self.send(json!([jr, r, topic, "phx_leave", {}])).await;
        loop {
            let f = self.recv().await;
            if f[2] == topic && f[3] == "phx_close" {
                return;
            }
            assert!(
                f[0].is_null() || (f[1] == r && f[4]["status"] == "ok"),
                "unexpected frame while leaving: {f}"
            );
        }
    }

    /// Reads until `want`, asserting that everything before it is an event
    /// named `skip` on `topic` (probes, messages that may or may not arrive).
    pub async fn recv_skipping(&mut self, want: &Value, skip: &str) {
        loop {
            let f = self.recv().await;
            if &f == want {
                return;
            }
            assert!(
                f[0].is_null() && f[1].is_null() && f[2] == want[2] && f[3] == skip,
                "expected {want} (after {skip:?} events only), got {f}"
            );
        }
    }
}
