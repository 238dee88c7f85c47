//! A real `redis-server` on a free port for the bus tests, killed on drop, a
//! sink that hands deliveries to the test, and small Redis helpers.
#![allow(dead_code, unreachable_pub)]

use pubsub_redis::{Config, Envelope, RedisBus, Sink};
use redis::aio::MultiplexedConnection;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// How long any expected event may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// How long a process may take to start, or Redis-side state to settle.
pub const SETTLE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);

pub fn unique(tag: &str) -> String {
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

/// A port the OS just handed out and released again.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` process, killed on drop.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let dir = std::env::temp_dir().join(format!("pubsub-redis-{}", unique("redis")));
        std::fs::create_dir_all(&dir).unwrap();
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = spawn(port, &dir).await {
                return RedisServer {
                    port,
                    dir,
                    child: Some(child),
                };
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL: every connection drops at once.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + SETTLE;
        loop {
            if let Some(child) = spawn(self.port, &self.dir).await {
                self.child = Some(child);
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not restart");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A plain connection for PUBLISH, NUMSUB and the like.
    pub async fn conn(&self) -> MultiplexedConnection {
        let client = redis::Client::open(self.url()).unwrap();
        tokio::time::timeout(TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .unwrap()
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
            eprintln!("----- redis-server log -----\n{log}");
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `None` when the server did not come up as the one answering on `port`.
async fn spawn(port: u16, dir: &std::path::Path) -> Option<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("redis.log"))
        .unwrap();
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run redis-server ({e}); install it (Debian package redis-server)")
        });
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).unwrap();
    let deadline = Instant::now() + SETTLE;
    loop {
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        if let Ok(Ok(mut c)) =
            tokio::time::timeout(TIMEOUT, client.get_multiplexed_async_connection()).await
        {
            if let Ok(info) = redis::cmd("INFO")
                .arg("server")
                .query_async::<String>(&mut c)
                .await
            {
                let ours = format!("process_id:{}", child.id());
                if info.lines().any(|l| l.trim() == ours) {
                    return Some(child);
                }
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-server on port {port} did not answer");
        }
        tokio::time::sleep(POLL).await;
    }
}

pub async fn publish(conn: &mut MultiplexedConnection, channel: &str, msg: &str) -> i64 {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(msg)
        .query_async(conn)
        .await
        .unwrap()
}

pub async fn numsub(conn: &mut MultiplexedConnection, channel: &str) -> i64 {
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(conn)
        .await
        .unwrap();
    n
}

/// Polls NUMSUB until it equals `want`, bounded.
pub async fn wait_numsub(conn: &mut MultiplexedConnection, channel: &str, want: i64) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let n = numsub(conn, channel).await;
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

/// Polls `cond` until it holds, bounded.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// Hands every delivery to the test.
pub struct Collect(pub mpsc::UnboundedSender<(String, Envelope)>);

impl Sink for Collect {
    fn deliver(&self, topic: &str, envelope: Envelope) {
        let _ = self.0.send((topic.to_owned(), envelope));
    }
}

/// A bus on `redis` with a unique prefix, and what it delivers.
pub struct TestBus {
    pub bus: RedisBus,
    pub rx: mpsc::UnboundedReceiver<(String, Envelope)>,
    pub prefix: String,
}

impl TestBus {
    pub fn start(url: &str, linger: Duration) -> TestBus {
        let prefix = format!("{}:", unique("b"));
        TestBus::with_prefix(url, &prefix, linger)
    }

    pub fn with_prefix(url: &str, prefix: &str, linger: Duration) -> TestBus {
        let mut config = Config::new(url);
        config.prefix = prefix.to_owned();
        config.linger = linger;
        let (tx, rx) = mpsc::unbounded_channel();
        let bus = RedisBus::start(config, Arc::new(Collect(tx))).unwrap();
        TestBus {
            bus,
            rx,
            prefix: prefix.to_owned(),
        }
    }

    pub fn channel(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// Subscribes, retrying while the bus is still connecting (bounded).
    pub async fn subscribe_eventually(&self, topic: &str) {
        let deadline = Instant::now() + SETTLE;
        loop {
            match self.bus.subscribe(topic).await {
                Ok(()) => return,
                Err(e) => {
                    assert!(e.is_connection(), "{e}");
                    assert!(Instant::now() < deadline, "{topic}: {e}");
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The next delivery.
    pub async fn next(&mut self) -> (String, Envelope) {
        tokio::time::timeout(TIMEOUT, self.rx.recv())
            .await
            .expect("no delivery in time")
            .expect("bus stopped")
    }

    /// The next delivery as (topic, event, payload text).
    pub async fn next_text(&mut self) -> (String, String, String) {
        let (topic, e) = self.next().await;
        let payload = String::from_utf8(e.payload.to_vec()).unwrap();
        (topic, e.event, payload)
    }

    pub fn stat(&self, f: impl Fn(&pubsub_redis::Stats) -> &AtomicU64) -> u64 {
        f(self.bus.stats()).load(Ordering::Relaxed)
    }
}
