//! `chaos`: sustained fan-out over gateway pods on Redis while one thing at
//! a time fails, with figures (docs/reliability.md), and the soak.
//!
//! The order of events only; each step's how lives in its module:
//! [`rig`] starts Redis and the pods, [`fleet`] the subscribers,
//! [`publisher`] publishes, [`probes`] watches the pods, [`proxy`] cuts a
//! link, [`scenario`] and [`soak`] run one, [`analysis`] makes figures of
//! the records, [`report`] prints them.

mod analysis;
mod fleet;
mod probes;
mod proxy;
mod publisher;
mod report;
mod rig;
mod scenario;
mod soak;

use clap::{Args, Parser, Subcommand};
use rig::RigSpec;
use scenario::{Fault, Shape};
use soak::SoakShape;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "chaos", about = "Fault injection with figures for the gateway")]
struct Cli {
    /// The gateway binary under test (default: `gateway` next to this one,
    /// i.e. target/release/gateway for a release build).
    #[arg(long, global = true)]
    gateway_bin: Option<PathBuf>,
    /// The config every pod runs; only the listen address, the Redis URL and
    /// prefix and the API key are changed.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Results (JSON and Markdown) go here.
    #[arg(long, global = true, default_value = "bench/results/chaos")]
    out: PathBuf,
    /// Exit 2 when a run shows what must not happen: a loss outside the
    /// fault and its recovery, a duplicate, a subscriber that never
    /// received again, a pod that exited on its own.
    #[arg(long, global = true)]
    check: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every fault scenario (or those of --only), one after the other, each
    /// on a fresh Redis and fresh pods.
    Scenarios(ScenarioArgs),
    /// The fan-out with connection churn and no fault, for --seconds.
    Soak(SoakArgs),
}

#[derive(Debug, Args)]
struct Load {
    #[arg(long, default_value_t = 3)]
    pods: usize,
    /// Subscribers, spread round-robin over the pods and topics.
    #[arg(long, default_value_t = 2400)]
    subscribers: usize,
    #[arg(long, default_value_t = 10)]
    topics: usize,
    /// Messages published per second (round-robin over the topics).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Subscribers connected per second at the start.
    #[arg(long, default_value_t = 500.0)]
    connect_rate: f64,
}

#[derive(Debug, Args)]
struct ScenarioArgs {
    /// Scenarios to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Fault>,
    #[command(flatten)]
    load: Load,
    /// Seconds of steady fan-out before the fault.
    #[arg(long, default_value_t = 10.0)]
    warmup: f64,
    /// Seconds watched after the repair.
    #[arg(long, default_value_t = 20.0)]
    observe: f64,
    /// Seconds Redis stays killed (redis-kill) or the link refused (link-reset).
    #[arg(long, default_value_t = 5.0)]
    down: f64,
    /// Seconds Redis stays stopped (redis-stop).
    #[arg(long, default_value_t = 20.0)]
    stop: f64,
    /// Seconds the link stays blackholed (link-blackhole).
    #[arg(long, default_value_t = 30.0)]
    cut: f64,
}

#[derive(Debug, Args)]
struct SoakArgs {
    /// How long the soak runs.
    #[arg(long, env = "SOAK_SECONDS", default_value_t = 3600)]
    seconds: u64,
    /// Seconds per reported interval.
    #[arg(long, default_value_t = 60)]
    interval: u64,
    #[command(flatten)]
    load: Load,
    /// A connection lives between these many seconds, then reconnects.
    #[arg(long, default_value_t = 30)]
    churn_min: u64,
    #[arg(long, default_value_t = 120)]
    churn_max: u64,
}

fn rig_spec(cli: &Cli) -> RigSpec {
    RigSpec {
        gateway_bin: cli.gateway_bin.clone().unwrap_or_else(|| {
            let exe = std::env::current_exe().unwrap_or_default();
            exe.with_file_name("gateway")
        }),
        config: cli
            .config
            .clone()
            .unwrap_or_else(|| test_support::temp::repo_path("config/example.toml")),
        pods: 3,
        cluster: false,
        proxied: None,
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn write(out: &std::path::Path, name: &str, text: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join(name), text)?;
    eprintln!("chaos: wrote {}", out.join(name).display());
    Ok(())
}

async fn scenarios(cli: &Cli, a: &ScenarioArgs) -> anyhow::Result<bool> {
    let rig = rig_spec(cli);
    let shape = Shape {
        pods: a.load.pods,
        subscribers: a.load.subscribers,
        topics: a.load.topics,
        rate: a.load.rate,
        connect_rate: a.load.connect_rate,
        warmup: secs(a.warmup),
        observe: secs(a.observe),
        down: secs(a.down),
        stop: secs(a.stop),
        cut: secs(a.cut),
        sample_every: Duration::from_millis(250),
    };
    let faults = if a.only.is_empty() {
        Fault::ALL.to_vec()
    } else {
        a.only.clone()
    };
    let mut outcomes = Vec::new();
    let mut clean = true;
    for f in faults {
        eprintln!("chaos: {} ...", f.name());
        let o = scenario::run(f, &shape, &rig).await?;
        let l = &o.losses;
        let bad = l.lost_before + l.lost_after_recovery + l.duplicates > 0
            || o.recovery.never > 0
            || !o.crashed.is_empty();
        clean &= !bad;
        eprintln!("{}", report::summary(std::slice::from_ref(&o)));
        write(
            &cli.out,
            &format!("{}.json", f.name()),
            &serde_json::to_string_pretty(&o)?,
        )?;
        outcomes.push(o);
    }
    let mut md = report::summary(&outcomes);
    md.push('\n');
    for o in &outcomes {
        md.push_str(&report::details(o));
    }
    print!("{md}");
    write(&cli.out, "scenarios.md", &md)?;
    Ok(clean)
}

async fn soak_cmd(cli: &Cli, a: &SoakArgs) -> anyhow::Result<bool> {
    let shape = SoakShape {
        duration: Duration::from_secs(a.seconds),
        interval: Duration::from_secs(a.interval.max(1)),
        pods: a.load.pods,
        subscribers: a.load.subscribers,
        topics: a.load.topics,
        rate: a.load.rate,
        connect_rate: a.load.connect_rate,
        churn: (
            Duration::from_secs(a.churn_min),
            Duration::from_secs(a.churn_max.max(a.churn_min)),
        ),
        sample_every: Duration::from_secs(5),
    };
    let o = soak::run(&shape, &rig_spec(cli)).await?;
    let md = report::soak(&o);
    print!("{md}");
    write(&cli.out, "soak.json", &serde_json::to_string_pretty(&o)?)?;
    write(&cli.out, "soak.md", &md)?;
    Ok(o.losses.lost + o.losses.duplicates == 0 && o.crashed.is_empty())
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async {
        let run = async {
            match &cli.command {
                Command::Scenarios(a) => scenarios(&cli, a).await,
                Command::Soak(a) => soak_cmd(&cli, a).await,
            }
        };
        // Ctrl-C ends the run through the drops that kill Redis and the pods.
        let r = tokio::select! {
            r = run => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        match r {
            Ok(true) => 0,
            Ok(false) if cli.check => {
                eprintln!("chaos: --check: a run shows losses outside the faults, duplicates, a subscriber that never recovered or a crashed pod");
                2
            }
            Ok(false) => 0,
            Err(e) => {
                eprintln!("chaos: {e:#}");
                1
            }
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}
