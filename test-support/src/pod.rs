//! `GatewayProcess`: the `gateway` binary (its path passed in: gateway tests
//! have `env!("CARGO_BIN_EXE_gateway")`, others [`built_binary`]) started on
//! a free port with a typed config, a `gateway::config::Config` written with
//! `toml::to_string`. Ready once its port answers `/healthz` and accepts its
//! own API key (so the answer came from this process, not from another
//! test's on a reused port); started again on a new port when the port was
//! taken.

use crate::http::Request;
use crate::phoenix::PhxClient;
use crate::process::{start_on_free_port, Probe, Process};
use crate::temp::{free_port, prefix, unique, TempDir};
use crate::wait::START_TIMEOUT;
use gateway::config::{ChannelRule, Config, JwtConfig, Mode, Policy, PresenceRule, SocketSection};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

/// The config pods start from: `/socket` with optional HS256 tokens
/// ([`crate::jwt::SECRET`]), socket ids `users_socket:{sub}`, long-poll on
/// and no push rate limit (ordering tests push faster than the default);
/// the channel rules of config/example.toml without presence (`room:*`,
/// `private:*`, `user:{sub}`), plus `quiet:*`, whose pushes skip their
/// sender; the API at `/api/broadcast`; no drain delay; and no per-source
/// limits (every test client comes from 127.0.0.1, and some open a thousand
/// at once; `longpoll_abuse.rs` sets them).
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.server.drain_delay_ms = 0;
    c.server.drain_period_ms = 0;
    c.server.max_connections_per_source = 0;
    c.server.connection_rate_per_source = 0;
    c.server.max_queued_joins_per_source = 0;
    c.log.level = "info,pubsub_redis=debug".into();
    // Every field at its default, as an empty `[socket.jwt]` table gives.
    let mut jwt: JwtConfig = toml::from_str("").unwrap();
    jwt.secret = Some(crate::jwt::SECRET.into());
    let mut socket = SocketSection {
        socket_id: Some("users_socket:{sub}".into()),
        push_rate: 0,
        jwt: Some(jwt),
        ..Default::default()
    };
    socket.longpoll.enabled = true;
    c.sockets = vec![socket];
    c.channels = vec![
        rule("room:*", Policy::Public, &["new_msg"], true, None),
        rule("private:*", Policy::Token, &["new_msg"], true, None),
        rule("user:{sub}", Policy::Token, &[], true, None),
        rule("quiet:*", Policy::Public, &["new_msg"], false, None),
    ];
    c
}

fn rule(
    pattern: &str,
    policy: Policy,
    events: &[&str],
    include_sender: bool,
    presence: Option<PresenceRule>,
) -> ChannelRule {
    ChannelRule {
        pattern: pattern.into(),
        policy,
        sockets: None,
        events: events.iter().map(|e| e.to_string()).collect(),
        mode: Mode::Broadcast,
        include_sender,
        max_payload: gateway::config::DEFAULT_MAX_PAYLOAD,
        presence,
        history: None,
        hooks: None,
        forward: None,
        lifecycle: None,
    }
}

/// The path of a workspace binary for tests of another package (which have
/// no `CARGO_BIN_EXE_` for it): `$GATEWAY_BIN` when `name` is `gateway` and
/// it is set (as `make test-e2e` does); else `<target>/<profile>/{name}` next
/// to the running test, which `cargo test --workspace` builds before any
/// test runs; else built now with `cargo build -p {package} --bin {name}`,
/// in a target directory of its own (the main one may be locked).
pub fn built_binary(package: &str, name: &str) -> PathBuf {
    if let Some(bin) = std::env::var_os("GATEWAY_BIN").filter(|_| name == "gateway") {
        return bin.into();
    }
    let exe = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/<test>-<hash>
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let bin = profile_dir.join(name);
    if bin.exists() {
        return bin;
    }
    let own = profile_dir.join("..").join("test-support-build");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-p", package, "--bin", name])
        .env("CARGO_TARGET_DIR", &own)
        .current_dir(crate::temp::repo_path(""))
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cargo build -p {package} --bin {name} failed"
    );
    own.join("debug").join(name)
}

/// How to start a [`GatewayProcess`]; cheap to clone for several pods.
#[derive(Debug, Clone)]
pub struct GatewayBuilder {
    bin: PathBuf,
    config: Config,
    metrics_port: bool,
    shell_prefix: Option<String>,
    /// Whether `start` waits for the pod's Redis subscriber connection.
    wait_redis: bool,
}

impl GatewayBuilder {
    /// Redis at `url`: the Redis broker.
    pub fn redis(mut self, url: &str) -> Self {
        self.config.redis.url = Some(url.into());
        self
    }

    /// The Redis channel prefix, to share one with other pods (by default
    /// each builder has one of its own).
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.config.redis.prefix = prefix.into();
        self
    }

    /// `[redis] cluster = true`: `url` lists seed nodes of a Redis Cluster.
    pub fn cluster(mut self) -> Self {
        self.config.redis.cluster = true;
        self
    }

    pub fn linger_ms(mut self, ms: u64) -> Self {
        self.config.redis.linger_ms = ms;
        self
    }

    /// One more rule, `presence:*`, with presence keyed by the `user` join
    /// param and `tab` in the meta; dead pods' presences reaped after
    /// `pod_timeout_ms`; diffs batched over 100 ms (the shortest window).
    /// Again: a new timeout.
    pub fn presence(mut self, pod_timeout_ms: u64) -> Self {
        self.config.presence.batch_ms = 100;
        self.config.presence.pod_timeout_ms = pod_timeout_ms;
        if self
            .config
            .channels
            .iter()
            .any(|r| r.pattern == "presence:*")
        {
            return self;
        }
        let presence = PresenceRule {
            key_claim: None,
            key_param: Some("user".into()),
            meta_params: vec!["tab".into()],
            update_event: None,
        };
        let r = rule("presence:*", Policy::Public, &[], true, Some(presence));
        self.config.channels.push(r);
        self
    }

    /// Do not wait for Redis at start: a test whose Redis is down, or that
    /// the pod cannot use (wrong password, untrusted certificate).
    pub fn redis_down(mut self) -> Self {
        self.wait_redis = false;
        self
    }

    /// Changes the config.
    pub fn configure(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// Replaces the config, its Redis prefix included (the listen address
    /// and API key are still set at start).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// A separate `/metrics` listener on a free port of its own.
    pub fn metrics_port(mut self) -> Self {
        self.metrics_port = true;
        self
    }

    /// Runs the binary through `sh -c "{sh} && exec …"` (e.g. `ulimit`); the
    /// shell becomes the gateway, with the same pid.
    pub fn shell_prefix(mut self, sh: &str) -> Self {
        self.shell_prefix = Some(sh.into());
        self
    }

    /// Starts the process and waits until it is ready.
    pub async fn start(self) -> GatewayProcess {
        let GatewayBuilder {
            bin,
            mut config,
            metrics_port,
            shell_prefix,
            wait_redis,
        } = self;
        let wait_redis = wait_redis && config.redis.url.is_some();
        let dir = TempDir::new("pod");
        let api_key = unique("key");
        config.api.key = Some(api_key.clone());
        let api_path = config.api.path.clone();
        let redis_prefix = config.redis.prefix.clone();
        let config_path = dir.path("gateway.toml");
        let mut metrics = None;
        let command = |port: u16| {
            config.server.listen = format!("127.0.0.1:{port}");
            if metrics_port {
                let m: SocketAddr = ([127, 0, 0, 1], free_port()).into();
                config.server.metrics_listen = Some(m.to_string());
                metrics = Some(m);
            }
            std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
            let mut cmd = match &shell_prefix {
                Some(sh) => {
                    let mut cmd = Command::new("sh");
                    cmd.arg("-c")
                        .arg(format!("{sh} && exec \"$0\" \"$@\""))
                        .arg(&bin);
                    cmd
                }
                None => Command::new(&bin),
            };
            for (name, _) in gateway::config::ENV_VARS {
                cmd.env_remove(name);
            }
            cmd.arg("--config").arg(&config_path).env("NO_COLOR", "1");
            cmd
        };
        let probe = |port: u16, _pid: u32| is_ours(port, api_path.clone(), api_key.clone());
        let log = dir.path("gateway.log");
        let (process, port) = start_on_free_port("gateway", &log, command, probe).await;
        let pod = GatewayProcess {
            addr: ([127, 0, 0, 1], port).into(),
            api_key,
            api_path,
            prefix: redis_prefix,
            metrics_addr: metrics,
            process,
            config_path: config_path.clone(),
            _dir: dir,
        };
        if wait_redis {
            // Joins and long-poll sessions need the subscriber connection,
            // which comes up just after the port: wait for it, as a
            // readiness probe would.
            let at = pod.metrics_addr.unwrap_or(pod.addr);
            crate::wait::until("the pod's Redis subscriber", START_TIMEOUT, || async move {
                let text = crate::scrape::scrape_at(at).await;
                match crate::scrape::sample(&text, "gateway_redis_up", &[]) {
                    Some(1.0) => Ok(()),
                    other => Err(other),
                }
            })
            .await;
        }
        pod
    }
}

/// Ready when `/healthz` answers and the API takes `key` (a body it then
/// refuses as a bad request, or 503 while Redis is down): this process.
async fn is_ours(port: u16, api_path: String, key: String) -> Probe {
    let addr = ([127, 0, 0, 1], port).into();
    match Request::get("/healthz").try_send(addr).await {
        Some(r) if r.status == 200 => {}
        _ => return Probe::Pending,
    }
    match Request::post(&api_path)
        .bearer(&key)
        .json("{}")
        .try_send(addr)
        .await
    {
        Some(r) if r.status == 401 || r.status == 404 => Probe::Taken,
        Some(_) => Probe::Ready,
        None => Probe::Pending,
    }
}

/// A `gateway` process, killed on drop (its log printed if the test panics).
#[derive(Debug)]
pub struct GatewayProcess {
    pub addr: SocketAddr,
    /// This pod's API key (unique, so readiness knows the process is ours).
    pub api_key: String,
    api_path: String,
    prefix: String,
    metrics_addr: Option<SocketAddr>,
    process: Process,
    config_path: PathBuf,
    _dir: TempDir,
}

impl GatewayProcess {
    /// A builder starting from [`test_config`].
    pub fn builder(bin: impl Into<PathBuf>) -> GatewayBuilder {
        let mut config = test_config();
        config.redis.prefix = prefix("gw");
        GatewayBuilder {
            bin: bin.into(),
            config,
            metrics_port: false,
            shell_prefix: None,
            wait_redis: true,
        }
    }

    /// `ws://addr/socket/websocket?vsn=2.0.0` plus `extra` params.
    pub fn url(&self, extra: &str) -> String {
        let sep = if extra.is_empty() { "" } else { "&" };
        format!("ws://{}/socket/websocket?vsn=2.0.0{sep}{extra}", self.addr)
    }

    /// The Redis channel prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis channel of `topic`: `{prefix}{topic}`.
    pub fn channel(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// The separate `/metrics` listener of [`GatewayBuilder::metrics_port`].
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr.expect("started without metrics_port()")
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
        self.api_post(json!({"topic": topic, "event": event, "payload": payload}))
            .await
    }

    /// `POST /api/broadcast` of any JSON body with this pod's key: (status,
    /// body).
    pub async fn api_post(&self, body: Value) -> (u16, String) {
        let r = Request::post(&self.api_path)
            .bearer(&self.api_key)
            .json(&body.to_string())
            .send(self.addr)
            .await;
        (r.status, r.body)
    }

    /// `GET path`: (status, body), or `None` if nothing answers.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let r = Request::get(path).try_send(self.addr).await?;
        Some((r.status, r.body))
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The config file the process runs, with its port: what `gateway
    /// <command> --config` reads to reach it.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// SIGSTOP: the pod neither answers nor closes its connections.
    pub fn pause(&mut self) {
        self.process.pause();
    }

    /// SIGCONT after [`GatewayProcess::pause`].
    pub fn resume(&mut self) {
        self.process.resume();
    }

    /// SIGTERM: a clean stop, as Kubernetes asks for one.
    pub fn terminate(&self) {
        self.process.terminate();
    }

    /// SIGKILL: no cleanup.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Whether the process is still running (it did not crash).
    pub fn alive(&mut self) -> bool {
        self.process.alive()
    }

    /// The exit status once the process has ended, without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process.exited()
    }

    /// Waits (bounded by `within`) until the process has exited.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        self.process.wait_exit(within).await
    }

    /// What the process has logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}
