//! The `gateway` binary: configuration, logging, and the server until a signal.

/// jemalloc keeps per-connection memory lower than glibc malloc here: 5,000
/// idle joined WebSocket connections measured 11.1 kB each vs 15.3 kB.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use anyhow::Context;
use clap::Parser;
use gateway::config::{Config, Env, LogFormat, ENV_VARS};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Exit code for a bad configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn env_help() -> String {
    let mut s = String::from("Environment variables (override the config file):\n");
    for (name, what) in ENV_VARS {
        s.push_str(&format!("  {name:<20} {what}\n"));
    }
    s.push_str("\nReference: docs/configuration.md");
    s
}

/// A Phoenix Channels-compatible real-time gateway.
#[derive(Debug, Parser)]
#[command(version, about, after_help = env_help())]
struct Cli {
    /// TOML config file (see config/example.toml). Without one, a single
    /// socket at /socket with no channel rules is served.
    #[arg(long, short, env = "GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the configuration, print a summary and exit.
    #[arg(long)]
    check: bool,
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref(), &Env::from_process()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gateway: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.check {
        println!(
            "config ok: {} socket(s), {} channel rule(s), listen {}",
            config.sockets.len(),
            config.channels.len(),
            config.server.listen
        );
        return ExitCode::SUCCESS;
    }
    init_logging(&config);
    let mut config = config;
    raise_open_files_limit(&mut config);
    gateway::server::install_panic_hook();
    // Without background threads jemalloc returns freed pages to the OS only
    // while the process allocates, so a pod whose connections left would keep
    // their memory until the next burst of traffic; with them, unused pages
    // go back within jemalloc's decay time (10 s) even when idle.
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "jemalloc background threads not enabled");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Every connection holds a file descriptor, and the usual default soft limit
/// (1024) would refuse connections long before memory runs out, so the soft
/// limit goes up to the hard limit, which is what the operator (or the
/// container runtime) allows. A `max_connections` that limit cannot hold is
/// lowered to fit, so the pod refuses the excess with a clean 503 and fails
/// `/readyz` instead of failing accepts.
fn raise_open_files_limit(config: &mut Config) {
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => {
            let hard = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(soft, |(_, hard)| hard);
            tracing::info!(soft, hard, "open files limit");
            soft
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open files limit");
            return;
        }
    };
    let max = &mut config.server.max_connections;
    let fits = usize::try_from(soft.saturating_sub(FD_MARGIN)).unwrap_or(usize::MAX);
    if *max > fits {
        tracing::warn!(
            configured = *max,
            lowered_to = fits,
            open_files = soft,
            "max_connections lowered to fit the open files limit"
        );
        *max = fits.max(1);
    }
}

/// File descriptors kept for what is not a client connection: the listener,
/// Redis connections, the runtime, logs.
const FD_MARGIN: u64 = 64;

async fn run(config: Config) -> anyhow::Result<()> {
    let addr = config.listen_addr()?;
    let (pubsub, broker) = match config.redis.bus_config() {
        Some(bus) => (gateway::pubsub::PubSub::redis(bus)?, "redis"),
        None => (gateway::pubsub::PubSub::memory(), "memory"),
    };
    let endpoint = gateway::app::build(&config, pubsub)?;
    let presence = endpoint.presence().clone();
    let listener =
        gateway::server::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        node = endpoint.node(),
        longpoll_pod = endpoint.longpoll_pod(),
        broker,
        "gateway listening"
    );
    if let Some(addr) = config.metrics_addr()? {
        let metrics = gateway::server::bind(addr)
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        tracing::info!(addr = %metrics.local_addr()?, "metrics listening");
        tokio::spawn(gateway::server::serve_metrics(metrics, endpoint.clone()));
    }
    let ep = endpoint.clone();
    let delay = Duration::from_millis(config.server.drain_delay_ms);
    let period = Duration::from_millis(config.server.drain_period_ms);
    let (deadline_tx, deadline_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        shutdown_signal().await;
        let now = tokio::time::Instant::now();
        let deadline = now + Duration::from_millis(config.server.shutdown_deadline_ms);
        let _ = deadline_tx.send((now + delay + period, deadline));
        tracing::info!(?delay, ?period, "draining");
        ep.drain(delay, period).await;
    });
    gateway::server::serve(listener, endpoint.clone()).await?;
    let now = tokio::time::Instant::now();
    let (drain_end, deadline) = deadline_rx.await.unwrap_or((now, now));
    // Connections close over the drain period; presences still held after
    // that leave now rather than after pod_timeout_ms. Both before the
    // deadline, keeping up to 5 s of it for the presences.
    let presence_budget = Duration::from_secs(5);
    let close_by = deadline
        .checked_sub(presence_budget)
        .unwrap_or(deadline)
        .max(drain_end + Duration::from_millis(500))
        .min(deadline);
    if tokio::time::timeout_at(close_by, endpoint.closed())
        .await
        .is_err()
    {
        tracing::warn!("connections still open at the shutdown deadline");
    }
    if tokio::time::timeout_at(deadline, presence.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("presences not removed in time; other pods will reap them");
    }
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM (what Kubernetes sends) or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
