//! `loadtest`: a Phoenix-protocol (V2 JSON over WebSocket or long-poll) load
//! generator. See loadtest/README.md.
//!
//! The run's order of events, and nothing else: start workers, wait until
//! they are ready, measure (publishing for fan-out), drain, stop, merge,
//! report. The how of each step lives in its module; this file must not
//! grow one.

mod cli;
mod collect;
mod http;
mod lifecycle;
mod longpoll;
mod presence_join;
mod publish;
mod recover;
mod redis_use;
mod report;
mod storm;
mod supervisor;
mod target;
mod worker;

use anyhow::bail;
use clap::Parser as _;
use cli::{Cli, Scenario, TransportKind};
use collect::Collector;
use loadtest::{conn, procfs, stats};
use stats::Stats;
use std::sync::Arc;
use std::time::{Duration, Instant};
use supervisor::Workers;
use tokio::sync::mpsc;
use worker::Control;

async fn parent_main(cli: Cli) -> anyhow::Result<i32> {
    let cli = Arc::new(cli);
    let (n, connect_rate, ..) = cli.shape();
    let count = supervisor::worker_count(&cli);
    let rss_before = procfs::total_rss(&cli.gateway_pid)?;
    if let Scenario::PresenceJoin(a) = &cli.scenario {
        if a.seeded > 0 && a.redis_url.is_none() {
            bail!("--seeded needs --redis-url");
        }
    }
    let seeded = seeded(&cli);
    if let Some((a, url)) = seeded {
        let ttl = Duration::from_secs(600) + cli.duration + a.settle;
        presence_join::seed(url, &a.prefix, &cli.topic(0), a.seeded, ttl).await?;
    }
    // connect: whole lifecycles, from before the first connection.
    let lifecycle = (matches!(cli.scenario, Scenario::Connect(_)) && !cli.gateway_pid.is_empty())
        .then(|| lifecycle::Mark::take(&cli.gateway_pid))
        .transpose()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let workers = Workers::spawn(&cli, count, tx)?;
    let parent_stats = Arc::new(Stats::default());
    let mut col = Collector::new(rx, count, parent_stats.clone());

    let setup_deadline = Instant::now()
        + Duration::from_secs(120)
        + Duration::from_secs_f64(n as f64 / connect_rate.max(1.0));
    col.pump(Some(setup_deadline), Collector::all_ready).await;
    if !col.all_ready() {
        bail!("workers did not get ready in time");
    }
    let setup_secs = col.started.elapsed().as_secs_f64();

    let probe_before = presence_probe(&cli, &workers).await?;
    let go_at = Instant::now();
    let go_ns = stats::now_ns();
    let cpu_before = procfs::total_cpu(&cli.gateway_pid)?;
    let client_cpu_before = procfs::total_cpu(&workers.pids())?;
    let mut published: Option<Vec<u64>> = None;
    let mut rss_after = None;
    let mut storm = None;
    let mut recover = None;
    let redis_before = match &cli.scenario {
        Scenario::Fanout(a) if a.redis_pid.is_some() => {
            Some(redis_use::probe(&a.redis_url, a.redis_pid).await?)
        }
        _ => None,
    };
    // The storm starts its own way: it may end the gateway first.
    if !matches!(
        cli.scenario,
        Scenario::ReconnectStorm(_) | Scenario::Recover(_)
    ) {
        workers.send(Control::Go);
    }
    match &cli.scenario {
        Scenario::Connect(_) => {}
        Scenario::Idle(_) => {
            col.pump(Some(go_at + cli.duration), |_| false).await;
            rss_after = Some(procfs::total_rss(&cli.gateway_pid)?);
        }
        Scenario::Fanout(a) => {
            // The push publisher is a WebSocket client whatever --transport says.
            let target = target::resolve(&cli, TransportKind::Websocket).await?;
            let done = publish::spawn_thread(cli.publish_spec(a), target, parent_stats.clone())?;
            match col.pump_until(done).await {
                Some(r) => published = Some(r?),
                None => bail!("the publisher thread died"),
            }
        }
        Scenario::Chat(_) | Scenario::PresenceJoin(_) => {
            col.pump(Some(go_at + cli.duration), |_| false).await;
        }
        Scenario::ReconnectStorm(a) => {
            storm = Some(storm::drive(&cli, a, &workers, &mut col).await?);
        }
        Scenario::Recover(a) => {
            recover = Some(recover::drive(&cli, a, &workers, &mut col).await?);
        }
    }
    let publish_secs = go_at.elapsed().as_secs_f64();
    if !matches!(
        cli.scenario,
        Scenario::Connect(_)
            | Scenario::Idle(_)
            | Scenario::ReconnectStorm(_)
            | Scenario::Recover(_)
    ) {
        workers.send(Control::Halt);
        let drain = match &cli.scenario {
            // Lists take up to two diff windows (and a loaded machine) to agree.
            Scenario::PresenceJoin(a) => a.settle.max(cli.drain),
            _ => cli.drain,
        };
        col.pump(Some(Instant::now() + drain), |_| false).await;
    }
    // The gateway's CPU over the measured phase and the drain, before closing.
    // (The storm measures its gateway itself: the pid may have changed.)
    let gateway_cpu_secs = (!cli.gateway_pid.is_empty() && storm.is_none() && recover.is_none())
        .then(|| procfs::total_cpu(&cli.gateway_pid).map(|c| c - cpu_before))
        .transpose()?;
    let client_cpu_secs = procfs::total_cpu(&workers.pids())? - client_cpu_before;
    let redis = match (&cli.scenario, redis_before) {
        (Scenario::Fanout(a), Some(before)) => {
            Some(before.until(&redis_use::probe(&a.redis_url, a.redis_pid).await?))
        }
        _ => None,
    };

    let probe_after = presence_probe(&cli, &workers).await?;
    let mut presence = report::PresenceExtra::between(probe_before, probe_after);
    if let Some(p) = &mut presence {
        let target = target::resolve(&cli, TransportKind::Websocket).await?;
        p.pods = presence_join::pod_states(&target, &cli.topic(0)).await?;
    }

    workers.send(Control::Stop);
    col.pump(
        Some(Instant::now() + Duration::from_secs(30)),
        Collector::all_reported,
    )
    .await;
    col.print();
    if let Some((a, url)) = seeded {
        presence_join::unseed(url, &a.prefix, &cli.topic(0), a.seeded).await?;
    }
    let results = col.take_results()?;
    let mut merged = stats::merge(&results)?;
    merged.counters.add(&parent_stats.live.snapshot());
    // Deliveries/s are over the time from the start of publishing to the last
    // delivery (which may fall in the drain period when receivers lag).
    let run_secs = if merged.last_delivery_ns > go_ns {
        publish_secs.max((merged.last_delivery_ns - go_ns) as f64 / 1e9)
    } else {
        publish_secs
    };
    drop(workers);
    let lifecycle_cpu = match lifecycle {
        // Only this process's CPU is the client's when it ran every connection.
        Some(mark) if count == 1 => Some(mark.finish().await?),
        _ => None,
    };

    let expected = cli.expected_deliveries(published.as_deref(), &merged.counters);
    let rep = report::Report::new(
        &cli,
        merged,
        report::Extra {
            workers: count,
            setup_secs,
            run_secs,
            expected,
            rss_before: (!cli.gateway_pid.is_empty()).then_some(rss_before),
            rss_after,
            gateway_cpu_secs,
            connections: n,
            presence,
            storm,
            lifecycle_cpu,
            redis,
            recover,
            client_cpu_secs,
        },
    );
    print!("{}", rep.table());
    rep.write_files()?;
    if rep.error_rate() * 100.0 > cli.max_error_rate {
        eprintln!(
            "loadtest: error rate {:.3}% exceeds --max-error-rate {}%",
            rep.error_rate() * 100.0,
            cli.max_error_rate
        );
        return Ok(2);
    }
    Ok(0)
}

/// The presence-join scenario's `--seeded` presences and the Redis to write
/// them to, if it has any.
fn seeded(cli: &Cli) -> Option<(&cli::PresenceJoinArgs, &str)> {
    match &cli.scenario {
        Scenario::PresenceJoin(a) if a.seeded > 0 => Some((a, a.redis_url.as_deref()?)),
        _ => None,
    }
}

/// Redis's command counts, the machine's and redis-server's CPU time, for
/// the presence-join scenario (None in the others).
async fn presence_probe(cli: &Cli, workers: &Workers) -> anyhow::Result<Option<report::Probe>> {
    let Scenario::PresenceJoin(a) = &cli.scenario else {
        return Ok(None);
    };
    if cli.transport != TransportKind::Websocket {
        bail!("presence-join runs over WebSocket only");
    }
    let commands = match &a.redis_url {
        Some(url) => Some(presence_join::commandstats(url).await?),
        None => None,
    };
    Ok(Some(report::Probe {
        commands,
        machine_cpu: procfs::machine_busy_secs()?,
        redis_cpu: a.redis_pid.map(|p| procfs::total_cpu(&[p])).transpose()?,
        client_cpu: procfs::total_cpu(&workers.pids())?,
        seeded: a.seeded,
    }))
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async move {
        match (cli.worker_index, cli.worker_count) {
            (Some(i), Some(c)) => match worker::worker_main(cli, i, c).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("loadtest worker: {e:#}");
                    1
                }
            },
            _ => match parent_main(cli).await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("loadtest: {e:#}");
                    1
                }
            },
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    std::process::exit(code);
}
