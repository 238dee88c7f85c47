//! The `gateway` binary: configuration, logging, and the server until a signal.

/// jemalloc keeps per-connection memory lower than glibc malloc here: 5,000
/// idle joined WebSocket connections measured 11.1 kB each vs 15.3 kB.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod cli;

use anyhow::Context;
use clap::Parser;
use gateway::config::{
    Config, ConfigError, Env, LogConfig, LogFormat, Lowered, Settings, Shutdown, ENV_VARS,
};
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
    #[arg(long, short, env = "GATEWAY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Validate the configuration, print a summary and exit (as `gateway
    /// check`).
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<cli::Command>,
}

fn init_logging(log: &LogConfig) {
    // The config refused a filter that does not parse.
    let filter = tracing_subscriber::EnvFilter::try_new(&log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: escape codes in files, in
    // `kubectl logs` and in log shippers are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

/// The config as the binary runs it: loaded, fitted to the open-files
/// limit, then validated, so what is validated is what runs.
fn load(
    cli: &Cli,
    open_files: Option<u64>,
) -> Result<(Config, Settings, Option<Lowered>), ConfigError> {
    let mut config = Config::load(cli.config.as_deref(), &Env::from_process())?;
    let lowered = open_files.and_then(|soft| config.fit_to_fd_limit(soft));
    let settings = config.validate()?;
    Ok((config, settings, lowered))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before the config is validated, which needs the limit the process
    // will really have; logged once logging is set up.
    let open_files = raise_open_files_limit();
    let soft = open_files.as_ref().ok().map(|&(soft, _)| soft);
    let (config, settings, lowered) = match load(&cli, soft) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("gateway: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let check = cli.check || matches!(cli.command, Some(cli::Command::Check));
    match cli.command {
        None | Some(cli::Command::Serve) | Some(cli::Command::Check) => {}
        Some(command) => return cli::run(command, &config, &settings),
    }
    if check {
        println!(
            "config ok: {} socket(s), {} channel rule(s), listen {}",
            config.sockets.len(),
            config.channels.len(),
            config.server.listen
        );
        return ExitCode::SUCCESS;
    }
    init_logging(&settings.log);
    match open_files {
        Ok((soft, hard)) => tracing::info!(soft, hard, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
    if let Some(l) = lowered {
        tracing::warn!(
            configured = l.configured,
            lowered_to = l.lowered_to,
            open_files = l.open_files,
            "max_connections lowered to fit the open files limit"
        );
    }
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
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, in the log (which a person at a terminal sees too):
            // an eprintln beside it reported every start failure twice.
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Every connection holds a file descriptor, and the usual default soft limit
/// (1024) would refuse connections long before memory runs out, so the soft
/// limit goes up to the hard limit, which is what the operator (or the
/// container runtime) allows. Returns the new (soft, hard) limits; the config
/// then fits `max_connections` to the soft one.
fn raise_open_files_limit() -> std::io::Result<(u64, u64)> {
    let soft = rlimit::increase_nofile_limit(u64::MAX)?;
    let hard = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(soft, |(_, hard)| hard);
    Ok((soft, hard))
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let server = settings.server.clone();
    let addr = server.listen;
    let (pubsub, broker) = match settings.redis.clone() {
        Some(bus) => (gateway::pubsub::PubSub::redis(bus)?, "redis"),
        None => (gateway::pubsub::PubSub::memory(), "memory"),
    };
    let endpoint = gateway::app::assemble(settings, pubsub)?;
    let presence = endpoint.presence().clone();
    let listener =
        gateway::server::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    endpoint.listening_on(listener.local_addr()?);
    tracing::info!(
        addr = %listener.local_addr()?,
        node = endpoint.node(),
        longpoll_pod = endpoint.longpoll_pod(),
        broker,
        "gateway listening"
    );
    if let Some(addr) = server.metrics_listen {
        let metrics = gateway::server::bind(addr)
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        tracing::info!(addr = %metrics.local_addr()?, "metrics listening");
        tokio::spawn(gateway::server::serve_metrics(metrics, endpoint.clone()));
    }
    let ep = endpoint.clone();
    let Shutdown {
        drain_delay: delay,
        drain_period: period,
        deadline: deadline_after,
    } = server.shutdown;
    let (deadline_tx, deadline_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        shutdown_signal().await;
        let now = tokio::time::Instant::now();
        let deadline = now + deadline_after;
        let _ = deadline_tx.send((now + delay + period, deadline));
        tracing::info!(?delay, ?period, "draining");
        ep.drain(delay, period).await;
    });
    // On a worker of the runtime, not on this thread: a connection task it
    // spawns then goes to that worker's own queue, often to run next on
    // it, instead of through the shared queue with a wake-up of a parked
    // worker (and of this thread, for every accept) each time.
    let accept = tokio::spawn(gateway::server::serve(listener, endpoint.clone()));
    accept.await.context("accept loop panicked")??;
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
    // Their disconnects, before presence stops the liveness refresh.
    if tokio::time::timeout_at(deadline, endpoint.flush_lifecycle())
        .await
        .is_err()
    {
        tracing::warn!("lifecycle events not written in time; other pods will report pod_down");
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
