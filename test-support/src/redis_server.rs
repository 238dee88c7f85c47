//! `RedisServer`: a `redis-server` of the test's own on a free port, in a
//! temp dir, without persistence (`--save "" --appendonly no`), spoken to
//! with the `redis` crate; killed, restarted on the same port, paused
//! (SIGSTOP) and resumed, or kept busy (`DEBUG SLEEP`), to test what Redis
//! going away does. `RedisConn` is one connection with the commands tests
//! use (PUBLISH, PUBSUB NUMSUB); [`redis_cli`] runs the CLI for the
//! documented one-liners.

use crate::process::{start_on, start_on_free_port, Probe, Process};
use crate::temp::TempDir;
use crate::wait::{SETTLE, START_TIMEOUT, TIMEOUT};
use futures_util::Stream;
use redis::aio::MultiplexedConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Value};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A `redis-server` process, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    process: Process,
    /// Arguments beyond the defaults, kept for restarts.
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers.
    pub async fn start() -> RedisServer {
        Self::start_with(&[]).await
    }

    /// [`start`](Self::start) with more `redis-server` arguments (ACL
    /// users, TLS, `--replicaof`, ...). The plain port stays open to the
    /// default user, for the test's own commands.
    pub async fn start_with(extra: &[String]) -> RedisServer {
        let dir = TempDir::new("redis");
        let log = dir.path("redis.log");
        let args: Vec<&str> = extra.iter().map(String::as_str).collect();
        let (process, port) = start_on_free_port(
            "redis-server",
            &log,
            |port| redis_command(&dir, port, &args),
            is_ours,
        )
        .await;
        RedisServer {
            port,
            dir,
            process,
            extra: extra.to_vec(),
        }
    }

    /// The server's temp dir (its log, files a test writes beside it).
    pub fn dir(&self) -> &TempDir {
        &self.dir
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:{port}/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap()
    }

    /// A new connection.
    pub async fn conn(&self) -> RedisConn {
        RedisConn::open(&self.url()).await
    }

    /// PUBLISH on a new connection; returns how many subscribers got it.
    pub async fn publish(&self, channel: &str, message: &str) -> i64 {
        self.conn().await.publish(channel, message).await
    }

    /// `PUBSUB NUMSUB channel` on a new connection.
    pub async fn numsub(&self, channel: &str) -> i64 {
        self.conn().await.numsub(channel).await
    }

    /// Polls `PUBSUB NUMSUB` until it is `want` (bounded by [`SETTLE`]).
    pub async fn wait_numsub(&self, channel: &str, want: i64) {
        self.conn().await.wait_numsub(channel, want).await;
    }

    /// Every command the server runs from now on (MONITOR, confirmed), as
    /// its text lines.
    pub async fn monitor(&self) -> impl Stream<Item = String> + Unpin {
        let monitor = tokio::time::timeout(TIMEOUT, self.client().get_async_monitor())
            .await
            .unwrap()
            .unwrap();
        Box::pin(monitor.into_on_message::<String>())
    }

    /// Sends `DEBUG SLEEP secs` on a connection of its own and returns once
    /// the command is written: from then on Redis answers nobody until the
    /// sleep is over. [`DebugSleep::done`] reads its reply.
    pub fn debug_sleep(&self, secs: u32) -> DebugSleep {
        let mut conn = self.client().get_connection_with_timeout(TIMEOUT).unwrap();
        let cmd = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(secs)
            .get_packed_command();
        conn.send_packed_command(&cmd).unwrap();
        DebugSleep(conn)
    }

    /// SIGKILL: every connection drops at once.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port, with an empty dataset.
    pub async fn restart(&mut self) {
        self.kill();
        let port = self.port;
        let args: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        self.process = crate::wait::until("redis-server restart", START_TIMEOUT, || {
            start_redis_on(&self.dir, port, &args, "redis.log")
        })
        .await;
    }

    /// SIGSTOP: the server neither answers nor closes connections.
    pub fn pause(&mut self) {
        self.process.pause();
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&mut self) {
        self.process.resume();
    }
}

/// The connection of [`RedisServer::debug_sleep`].
pub struct DebugSleep(redis::Connection);

impl std::fmt::Debug for DebugSleep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DebugSleep")
    }
}

impl DebugSleep {
    /// The reply to `DEBUG SLEEP` (`OK`), within `within`.
    pub async fn done(self, within: Duration) -> String {
        let mut conn = self.0;
        conn.set_read_timeout(Some(within)).unwrap();
        let reply = tokio::task::spawn_blocking(move || conn.recv_response())
            .await
            .unwrap()
            .unwrap();
        String::from_redis_value(reply).unwrap()
    }
}

/// The `redis-server` command for `port` in `dir`, plus `extra` arguments.
pub(crate) fn redis_command(dir: &TempDir, port: u16, extra: &[&str]) -> Command {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--enable-debug-command", "local"])
        .arg("--dir")
        .arg(dir.root())
        .args(extra);
    cmd
}

/// Starts `redis-server` on `port` (`extra` arguments, output to `log` in
/// `dir`): `Err` when it did not come up as the server answering there.
pub(crate) async fn start_redis_on(
    dir: &TempDir,
    port: u16,
    extra: &[&str],
    log: &str,
) -> Result<Process, String> {
    let cmd = redis_command(dir, port, extra);
    start_on("redis-server", cmd, &dir.path(log), port, is_ours)
        .await
        .ok_or_else(|| format!("port {port} taken"))
}

/// Ready when the server on `port` reports `pid` as its process id: then it
/// is ours, not another test's on a reused port.
pub(crate) async fn is_ours(port: u16, pid: u32) -> Probe {
    let url = format!("redis://127.0.0.1:{port}");
    match cmd_on::<String>(&url, &["INFO", "server"]).await {
        Ok(info)
            if info
                .lines()
                .any(|l| l.trim() == format!("process_id:{pid}")) =>
        {
            Probe::Ready
        }
        Ok(_) => Probe::Taken,
        Err(_) => Probe::Pending,
    }
}

/// One command on a new connection to `url`, bounded by [`TIMEOUT`].
pub(crate) async fn cmd_on<T: FromRedisValue>(url: &str, args: &[&str]) -> Result<T, String> {
    let run = async {
        let mut conn = redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await?;
        command(args).query_async::<T>(&mut conn).await
    };
    match tokio::time::timeout(TIMEOUT, run).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("{args:?} on {url} timed out")),
    }
}

fn command(args: &[&str]) -> Cmd {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd
}

/// One connection, with the commands tests use. It is a
/// `redis::aio::ConnectionLike`, so `redis::cmd(..).query_async(&mut conn)`
/// and pipelines work on it too.
#[derive(Clone)]
pub struct RedisConn(MultiplexedConnection);

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisConn")
    }
}

impl RedisConn {
    pub async fn open(url: &str) -> RedisConn {
        let client = redis::Client::open(url).unwrap();
        let conn = tokio::time::timeout(TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .unwrap_or_else(|_| panic!("connecting to {url} timed out"))
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        RedisConn(conn)
    }

    /// One command, bounded by [`TIMEOUT`].
    pub async fn cmd<T: FromRedisValue>(&mut self, args: &[&str]) -> T {
        tokio::time::timeout(TIMEOUT, command(args).query_async::<T>(&mut self.0))
            .await
            .unwrap_or_else(|_| panic!("{args:?} timed out"))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// PUBLISH; returns how many subscribers got it.
    pub async fn publish(&mut self, channel: &str, message: &str) -> i64 {
        self.cmd(&["PUBLISH", channel, message]).await
    }

    /// `PUBSUB NUMSUB channel`.
    pub async fn numsub(&mut self, channel: &str) -> i64 {
        let (_, n): (String, i64) = self.cmd(&["PUBSUB", "NUMSUB", channel]).await;
        n
    }

    /// `INFO commandstats` as command -> calls, to count what pods ask of
    /// Redis (the difference of two calls; `info` counts itself).
    pub async fn commandstats(&mut self) -> std::collections::HashMap<String, i64> {
        let text: String = self.cmd(&["INFO", "commandstats"]).await;
        pubsub_redis::info::commandstats(&text)
    }

    /// Polls `PUBSUB NUMSUB` until it is `want` (bounded by [`SETTLE`]).
    pub async fn wait_numsub(&mut self, channel: &str, want: i64) {
        let what = format!("NUMSUB {channel} = {want}");
        crate::wait::until(&what, SETTLE, || {
            let mut conn = self.clone();
            async move {
                let n = conn.numsub(channel).await;
                (n == want).then_some(()).ok_or(n)
            }
        })
        .await;
    }
}

impl redis::aio::ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.0.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.0.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

/// Runs `redis-cli -h 127.0.0.1 -p PORT ARGS...` (bounded by
/// [`START_TIMEOUT`]), asserting success; its trimmed output.
pub async fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        START_TIMEOUT,
        tokio::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("redis-cli {args:?} timed out"))
    .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): is it installed?"));
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
