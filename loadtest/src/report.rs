//! The end-of-run table, the JSON results and the HTML report, written
//! where `--json` and `--html` say.
//!
//! It presents merged results; it must not collect or merge them, nor
//! measure anything itself beyond describing the machine and commit.

use crate::cli::Cli;
use crate::lifecycle::LifecycleCpu;
use crate::presence_join;
use crate::recover;
use crate::redis_use;
use crate::stats::{encode_hist, Merged, MergedPresence};
use crate::storm;
use anyhow::Context as _;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde_json::{json, Value};
use std::collections::HashMap;

/// Facts about the run besides the merged counters.
#[derive(Debug)]
pub(crate) struct Extra {
    pub(crate) workers: u64,
    pub(crate) setup_secs: f64,
    pub(crate) run_secs: f64,
    pub(crate) expected: Option<u64>,
    pub(crate) rss_before: Option<u64>,
    pub(crate) rss_after: Option<u64>,
    /// CPU seconds the `--gateway-pid` processes used from the start of the
    /// measured phase to the end of the drain.
    pub(crate) gateway_cpu_secs: Option<f64>,
    pub(crate) connections: u64,
    /// The presence-join scenario's server-side figures.
    pub(crate) presence: Option<PresenceExtra>,
    /// What the parent saw of a reconnect storm.
    pub(crate) storm: Option<storm::Outcome>,
    /// connect: CPU over whole connection lifecycles.
    pub(crate) lifecycle_cpu: Option<LifecycleCpu>,
    /// fan-out with --redis-pid: what Redis did over the measured phase and drain.
    pub(crate) redis: Option<redis_use::Use>,
    /// What the parent saw of a recover run.
    pub(crate) recover: Option<recover::Outcome>,
    /// loadtest's own CPU seconds (this process and its workers) from the
    /// start of the measured phase to the end of the drain.
    pub(crate) client_cpu_secs: f64,
}

/// What the parent reads before and after the presence-join measured phase.
#[derive(Debug)]
pub(crate) struct Probe {
    /// `INFO commandstats` (with `--redis-url`).
    pub(crate) commands: Option<HashMap<String, i64>>,
    /// The machine's busy CPU seconds.
    pub(crate) machine_cpu: f64,
    /// redis-server's CPU seconds (with `--redis-pid`).
    pub(crate) redis_cpu: Option<f64>,
    /// loadtest's own CPU seconds (this process and its workers).
    pub(crate) client_cpu: f64,
    /// Presences written straight into Redis (`--seeded`).
    pub(crate) seeded: u64,
}

/// The differences over the measured phase and the settling after it.
#[derive(Debug)]
pub(crate) struct PresenceExtra {
    /// Redis calls per command, most first.
    pub(crate) commands: Option<Vec<(String, i64)>>,
    pub(crate) machine_cpu_secs: f64,
    pub(crate) redis_cpu_secs: Option<f64>,
    pub(crate) client_cpu_secs: f64,
    pub(crate) seeded: u64,
    /// Each pod's `presence_state` for a new watcher after the settling:
    /// (keys, metas, digest), in `--url` order.
    pub(crate) pods: Vec<(u64, u64, u64)>,
}

impl PresenceExtra {
    pub(crate) fn between(before: Option<Probe>, after: Option<Probe>) -> Option<PresenceExtra> {
        let (b, a) = (before?, after?);
        Some(PresenceExtra {
            commands: match (&b.commands, &a.commands) {
                (Some(b), Some(a)) => Some(presence_join::delta(b, a)),
                _ => None,
            },
            machine_cpu_secs: a.machine_cpu - b.machine_cpu,
            redis_cpu_secs: a.redis_cpu.zip(b.redis_cpu).map(|(a, b)| a - b),
            client_cpu_secs: a.client_cpu - b.client_cpu,
            seeded: a.seeded,
            pods: Vec::new(),
        })
    }
}

#[derive(Debug)]
pub(crate) struct Report<'a> {
    cli: &'a Cli,
    m: Merged,
    x: Extra,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn percentiles(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.5)),
        "p90_ms": ms(h.value_at_quantile(0.9)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
        "mean_ms": h.mean() / 1000.0,
    })
}

fn machine() -> Value {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string();
    json!({"cores": cores, "memory_bytes": mem_kb * 1024, "hostname": host, "os": std::env::consts::OS})
}

fn git_commit() -> Option<String> {
    git_in(".").or_else(|| git_in(env!("CARGO_MANIFEST_DIR")))
}

fn git_in(dir: &str) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["-C", dir, "rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The presence-join lines of the table.
fn presence_table(p: &Value) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let lat = |name: &str, v: &Value| {
        format!(
            "{name:<22}p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2} ms ({} joins)\n",
            f(&v["p50_ms"]),
            f(&v["p90_ms"]),
            f(&v["p99_ms"]),
            f(&v["max_ms"]),
            v["count"]
        )
    };
    let mut s = String::from("\npresence\n");
    s += &lat("join reply", &p["join_reply"]);
    s += &lat("presence_state", &p["presence_state"]);
    s += &format!(
        "largest state         {:.0} kB\n",
        f(&p["state_bytes_max"]) / 1000.0
    );
    match p["redis_commands"].as_i64() {
        Some(t) => {
            s += &format!(
            "Redis commands/join   {:.2} ({t} in all: {}); HSET, HDEL and PUBLISH alone {:.2}\n",
            f(&p["redis_commands_per_join"]),
            p["redis_commands_by_name"],
            f(&p["redis_join_writes_and_publishes_per_join"])
        )
        }
        None => s += "Redis commands/join   - (no --redis-url)\n",
    }
    s += &format!(
        "presence_diff/client  {:.2} per second on average, {} in the busiest second\n",
        f(&p["diff_frames_per_client_sec"]),
        p["diff_frames_max_in_one_sec"]
    );
    let keys: Vec<String> = p["observers"]
        .as_array()
        .map(|o| {
            o.iter()
                .map(|o| format!("{} (connection {})", o["keys"], o["connection"]))
                .collect()
        })
        .unwrap_or_default();
    let pods: Vec<String> = p["pods"]
        .as_array()
        .map(|o| o.iter().map(|o| o["keys"].to_string()).collect())
        .unwrap_or_default();
    s += &format!(
        "lists agree           {} (observers' keys {}; pods' states {}; expected {})\n",
        if p["lists_agree"] == true {
            "yes"
        } else {
            "NO"
        },
        keys.join(", "),
        pods.join(", "),
        p["expected_keys"]
    );
    let cpu = &p["cpu_secs"];
    s += &format!(
        "CPU seconds           machine {:.1}: gateway {:.1}, redis {:.1}, loadtest {:.1}, other processes {:.1}\n",
        f(&cpu["machine"]),
        f(&cpu["gateway"]),
        f(&cpu["redis"]),
        f(&cpu["clients"]),
        f(&cpu["other"])
    );
    s
}

impl<'a> Report<'a> {
    pub(crate) fn new(cli: &'a Cli, m: Merged, x: Extra) -> Report<'a> {
        Report { cli, m, x }
    }

    fn missing(&self) -> u64 {
        let distinct = self.m.counters.deliveries;
        self.x.expected.map_or(0, |e| e.saturating_sub(distinct))
    }

    fn errors(&self) -> u64 {
        let c = &self.m.counters;
        c.connect_errors
            + c.join_errors
            + c.disconnects
            + c.push_errors
            + c.publish_errors
            + c.duplicates
            + c.pos_gaps
            + c.pos_dups
            + self.missing()
            + c.refused
            + self.not_rejoined()
            + self.recover_lost()
            + c.not_recovered
    }

    /// recover: positions the clients should have had and did not.
    fn recover_lost(&self) -> u64 {
        self.x.recover.as_ref().map_or(0, |r| {
            r.expected_positions
                .saturating_sub(self.m.counters.positioned)
        })
    }

    /// fan-out with --redis-pid: Redis's time per published message.
    fn redis_json(&self) -> Option<Value> {
        let u = self.x.redis.as_ref()?;
        let published = self.m.counters.published.max(1) as f64;
        let per_call = |name: &str| {
            let c = u.of(name);
            (c.calls > 0).then(|| c.usec as f64 / c.calls as f64)
        };
        Some(json!({
            "use": u,
            "cpu_us_per_published": u.cpu_secs.map(|s| s * 1e6 / published),
            "command_us_per_published": u.total_usec() as f64 / published,
            "fcall_us_per_call": per_call("fcall"),
            "publish_us_per_call": per_call("publish"),
        }))
    }

    /// The recover figures as the table and the JSON give them.
    fn recover_json(&self) -> Option<Value> {
        let r = self.x.recover.as_ref()?;
        let c = &self.m.counters;
        let all_back = (!r.timed_out && self.m.last_rejoin_ns > r.started_ns)
            .then(|| (self.m.last_rejoin_ns - r.started_ns) as f64 / 1e9);
        let gw = r.gateway_user_secs + r.gateway_system_secs;
        let client = r.client_user_secs + r.client_system_secs;
        let redis = r.redis_rejoin.cpu_secs;
        let fc = r.redis_rejoin.of("fcall");
        let down = r.redis_while_down.of("fcall");
        Some(json!({
            "outcome": r,
            "rejoined": c.rejoined,
            "not_rejoined": self.not_rejoined(),
            "recovered": c.recovered,
            "not_recovered": c.not_recovered,
            "positions_received": c.positioned,
            "positions_expected": r.expected_positions,
            "lost": self.recover_lost(),
            "skipped": c.pos_gaps,
            "repeated": c.pos_dups,
            "epoch_changes": c.epoch_changes,
            "all_back_after_secs": all_back,
            "all_back_after_listening_secs": all_back.map(|t| t - r.listening_after_secs),
            "join_replay": percentiles(&self.m.replay),
            "redis_rejoin_usec": r.redis_rejoin.total_usec(),
            "redis_rejoin_fcall": {"calls": fc.calls, "usec": fc.usec},
            "redis_rejoin_cpu_secs": redis,
            "redis_while_down_fcall": {"calls": down.calls, "usec": down.usec,
                "us_per_call": (down.calls > 0).then(|| down.usec as f64 / down.calls as f64)},
            "redis_while_down_cpu_secs": r.redis_while_down.cpu_secs,
            "cpu_secs": {"gateway": gw, "clients": client, "redis": redis},
            "gateway_share_of_cpu": gw / (gw + client + redis.unwrap_or(0.0)).max(1e-9),
        }))
    }

    fn recover_table(&self) -> String {
        let (Some(r), Some(j)) = (&self.x.recover, self.recover_json()) else {
            return String::new();
        };
        let f = |v: &Value| v.as_f64().map_or("-".to_owned(), |v| format!("{v:.2}"));
        let mut t = format!(
            "recover (SIG{})       {} clients over {} topics, {} behind; rejoined {}, not rejoined {}\n",
            r.signal, r.clients, r.topics, r.behind, j["rejoined"], j["not_rejoined"]
        );
        t += &format!(
            "recovered             true {}, false {}\n",
            j["recovered"], j["not_recovered"]
        );
        t += &format!(
            "positions             {} received of {} expected: lost {}, skipped {}, repeated {}, epoch changes {}\n",
            j["positions_received"], j["positions_expected"], j["lost"], j["skipped"], j["repeated"], j["epoch_changes"]
        );
        t += &format!(
            "published             {} while down (FCALL, pipelined, {:.2} s), {} live during the rejoins\n",
            r.published_while_down, r.publish_while_down_secs, r.published_live
        );
        t += &format!(
            "timeline              old process gone {:.3} s, listening {:.3} s, all back (joined + replayed) {} s{}\n",
            r.exited_after_secs,
            r.listening_after_secs,
            f(&j["all_back_after_secs"]),
            if r.timed_out { " — TIMED OUT" } else { "" }
        );
        t += &format!(
            "Redis while down      fcall {} calls, {} µs in all ({} µs/call), redis-server CPU {} s\n",
            j["redis_while_down_fcall"]["calls"],
            j["redis_while_down_fcall"]["usec"],
            f(&j["redis_while_down_fcall"]["us_per_call"]),
            f(&j["redis_while_down_cpu_secs"])
        );
        t += &format!(
            "Redis rejoins         fcall {} calls, {} µs; all commands {} µs; redis-server CPU {} s\n",
            j["redis_rejoin_fcall"]["calls"],
            j["redis_rejoin_fcall"]["usec"],
            j["redis_rejoin_usec"],
            f(&j["redis_rejoin_cpu_secs"])
        );
        t += &format!(
            "CPU from the restart  gateway {:.2} s (user {:.2}), loadtest {:.2} s, redis {} s (gateway share {:.0}%)\n",
            r.gateway_user_secs + r.gateway_system_secs,
            r.gateway_user_secs,
            r.client_user_secs + r.client_system_secs,
            f(&j["redis_rejoin_cpu_secs"]),
            j["gateway_share_of_cpu"].as_f64().unwrap_or(0.0) * 100.0
        );
        t
    }

    /// CPU µs per connection over whole lifecycles: gateway user, system,
    /// client user, system.
    fn lifecycle_us(&self) -> Option<[f64; 4]> {
        let l = self.x.lifecycle_cpu?;
        let n = self.m.counters.connects_ok.max(1) as f64;
        Some(
            [
                l.gateway_user_secs,
                l.gateway_system_secs,
                l.client_user_secs,
                l.client_system_secs,
            ]
            .map(|secs| secs * 1e6 / n),
        )
    }

    /// Storm (or recover) clients that had not joined again when the run
    /// stopped waiting.
    fn not_rejoined(&self) -> u64 {
        let c = &self.m.counters;
        let clients = match (&self.x.storm, &self.x.recover) {
            (Some(s), _) => s.clients,
            (None, Some(r)) => r.clients,
            (None, None) => return 0,
        };
        clients.saturating_sub(c.rejoined)
    }

    /// The storm's figures as the table and the JSON give them.
    fn storm_json(&self) -> Option<Value> {
        let s = self.x.storm.as_ref()?;
        let c = &self.m.counters;
        let all_rejoined = (!s.timed_out && self.m.last_rejoin_ns > s.started_ns)
            .then(|| (self.m.last_rejoin_ns - s.started_ns) as f64 / 1e9);
        let per = |secs: Option<f64>| secs.map(|v| v * 1e6 / c.rejoined.max(1) as f64);
        let gw = s.gateway_user_secs.zip(s.gateway_system_secs);
        let client = s.client_user_secs + s.client_system_secs;
        Some(json!({
            "outcome": s,
            "rejoined": c.rejoined,
            "not_rejoined": self.not_rejoined(),
            "refused": c.refused,
            "connect_errors": c.connect_errors,
            "attempts_while_down": c.attempts_down,
            "drops": c.drops,
            "all_rejoined_after_secs": all_rejoined,
            "all_rejoined_after_listening_secs": all_rejoined.map(|t| t - s.listening_after_secs),
            "gateway_us_per_rejoin": {
                "user": per(s.gateway_user_secs),
                "system": per(s.gateway_system_secs),
            },
            "client_us_per_rejoin": {
                "user": per(Some(s.client_user_secs)),
                "system": per(Some(s.client_system_secs)),
            },
            "gateway_share_of_cpu": gw.map(|(u, sy)| (u + sy) / (u + sy + client).max(1e-9)),
        }))
    }

    fn storm_table(&self) -> String {
        let (Some(s), Some(j)) = (&self.x.storm, self.storm_json()) else {
            return String::new();
        };
        let f = |v: &Value| v.as_f64().map_or("-".to_owned(), |v| format!("{v:.2}"));
        let mut t = format!(
            "storm ({}{})        {} clients joined before; rejoined {}, not rejoined {}\n",
            s.mode,
            s.signal
                .as_ref()
                .map_or(String::new(), |sig| format!(", SIG{sig}")),
            s.clients,
            j["rejoined"],
            j["not_rejoined"],
        );
        t += &format!(
            "refused / errors      {} / {} after the gateway listened ({} attempts failed before)\n",
            j["refused"], j["connect_errors"], j["attempts_while_down"]
        );
        t += &format!(
            "gateway listening     after {:.3} s{}\n",
            s.listening_after_secs,
            s.exited_after_secs.map_or(String::new(), |e| format!(
                " (old process gone after {e:.3} s)"
            ))
        );
        t += &format!(
            "all rejoined          after {} s ({} s after listening){}\n",
            f(&j["all_rejoined_after_secs"]),
            f(&j["all_rejoined_after_listening_secs"]),
            if s.timed_out { " — TIMED OUT" } else { "" }
        );
        let tcp: Vec<String> = s.tcp.iter().map(|(k, v)| format!("{k} {v}")).collect();
        t += &format!("TcpExt deltas         {}\n", tcp.join(", "));
        t += &format!(
            "gateway CPU           user {} + system {} µs per rejoined client\n",
            f(&j["gateway_us_per_rejoin"]["user"]),
            f(&j["gateway_us_per_rejoin"]["system"])
        );
        t += &format!(
            "client CPU            user {} + system {} µs per rejoined client (gateway share {})\n",
            f(&j["client_us_per_rejoin"]["user"]),
            f(&j["client_us_per_rejoin"]["system"]),
            j["gateway_share_of_cpu"]
                .as_f64()
                .map_or("-".to_owned(), |v| format!("{:.0}%", v * 100.0))
        );
        t
    }

    /// Errors over operations (connects, joins, expected deliveries, pushes, publishes).
    pub(crate) fn error_rate(&self) -> f64 {
        let c = &self.m.counters;
        let ops = (c.connects_ok + c.connect_errors)
            + (c.joins_ok + c.join_errors)
            + self.x.expected.unwrap_or(c.deliveries)
            + c.pushes_sent
            + c.published
            + c.publish_errors;
        self.errors() as f64 / ops.max(1) as f64
    }

    fn deliveries_per_sec(&self) -> f64 {
        self.m.counters.deliveries as f64 / self.x.run_secs.max(0.001)
    }

    fn conn_join_per_sec(&self) -> f64 {
        (self.m.counters.connects_ok + self.m.counters.joins_ok) as f64
            / self.x.setup_secs.max(0.001)
    }

    /// Gateway CPU time per delivered message: where the fan-out time goes.
    fn cpu_per_delivery_us(&self) -> Option<f64> {
        let d = self.m.counters.deliveries;
        (d > 0).then_some(self.x.gateway_cpu_secs? * 1e6 / d as f64)
    }

    fn memory(&self) -> Option<(u64, u64, f64)> {
        let (b, a) = (self.x.rss_before?, self.x.rss_after?);
        let per = (a as f64 - b as f64) / self.m.counters.connects_ok.max(1) as f64;
        Some((b, a, per))
    }

    pub(crate) fn table(&self) -> String {
        let c = &self.m.counters;
        let mut s = String::new();
        s += &format!(
            "\nloadtest {} over {} — {} connections, {} worker process(es), setup {:.2}s, run {:.2}s\n\n",
            self.cli.name(),
            self.cli.transport.name(),
            self.x.connections,
            self.x.workers,
            self.x.setup_secs,
            self.x.run_secs
        );
        s += &format!(
            "{:<22}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>12}\n",
            "latency (ms)", "p50", "p90", "p99", "p99.9", "max", "mean", "count"
        );
        for (name, h) in [
            ("connect", &self.m.connect),
            ("join", &self.m.join),
            ("publish->receive", &self.m.latency),
            ("drop->rejoined", &self.m.rejoin),
            ("join+replay", &self.m.replay),
        ] {
            if h.is_empty() {
                continue;
            }
            s += &format!(
                "{:<22}{:>10.3}{:>10.3}{:>10.3}{:>10.3}{:>10.3}{:>10.3}{:>12}\n",
                name,
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.9)),
                ms(h.value_at_quantile(0.99)),
                ms(h.value_at_quantile(0.999)),
                ms(h.max()),
                h.mean() / 1000.0,
                h.len()
            );
        }
        s += "\n";
        s += &format!(
            "connections ok/err    {} / {}\njoins ok/err          {} / {}\nconnections+joins/s   {:.0}\n",
            c.connects_ok, c.connect_errors, c.joins_ok, c.join_errors, self.conn_join_per_sec()
        );
        if c.published + c.pushes_sent > 0 {
            s += &format!(
                "published             {} (+{} errors)\npushes sent/ok/err    {} / {} / {}\n",
                c.published, c.publish_errors, c.pushes_sent, c.pushes_ok, c.push_errors
            );
        }
        if c.deliveries > 0 || self.x.expected.is_some() {
            s += &format!(
                "deliveries            {} ({:.0}/s)\nexpected              {}\nmissing / duplicates  {} / {}\n",
                c.deliveries,
                self.deliveries_per_sec(),
                self.x.expected.map_or("-".into(), |e| e.to_string()),
                self.missing(),
                c.duplicates
            );
        }
        if c.positioned + c.pos_dups + c.epoch_changes > 0 {
            s += &format!(
                "history positions     {} in order; {} skipped, {} repeated, {} epoch changes\n",
                c.positioned, c.pos_gaps, c.pos_dups, c.epoch_changes
            );
        }
        if let Some(cpu) = self.x.gateway_cpu_secs {
            s += &format!(
                "gateway CPU           {cpu:.2} s (loadtest {:.2} s)",
                self.x.client_cpu_secs
            );
            if let Some(us) = self.cpu_per_delivery_us() {
                s += &format!(" ({us:.2} µs per delivery)");
            }
            s += "\n";
        }
        if let Some((b, a, per)) = self.memory() {
            s += &format!(
                "gateway RSS           {:.1} MiB -> {:.1} MiB ({:.0} bytes per connection)\n",
                b as f64 / 1048576.0,
                a as f64 / 1048576.0,
                per
            );
        }
        if let Some(p) = self.presence_json() {
            s += &presence_table(&p);
        }
        s += &self.storm_table();
        s += &self.recover_table();
        if let Some(j) = self.redis_json() {
            let f = |v: &Value| v.as_f64().map_or("-".to_owned(), |v| format!("{v:.2}"));
            s += &format!(
                "Redis                 fcall {} µs/call, publish {} µs/call; commands {} µs and redis-server CPU {} µs per published message\n",
                f(&j["fcall_us_per_call"]),
                f(&j["publish_us_per_call"]),
                f(&j["command_us_per_published"]),
                f(&j["cpu_us_per_published"])
            );
        }
        if let Some([gu, gs, cu, cs]) = self.lifecycle_us() {
            s += &format!(
                "per connection CPU    gateway user {gu:.1} + system {gs:.1} µs, client user {cu:.1} + system {cs:.1} µs{}\n",
                if self.x.lifecycle_cpu.is_some_and(|l| l.teardown_incomplete) {
                    " (gateway teardown not finished)"
                } else {
                    ""
                }
            );
        }
        s += &format!(
            "disconnects           {}\nerrors                {} ({:.3}%)\n",
            c.disconnects,
            self.errors(),
            self.error_rate() * 100.0
        );
        s
    }

    pub(crate) fn json(&self) -> Value {
        let c = &self.m.counters;
        let t0 = self.m.timeline.first().map_or(0, |t| t.0);
        let timeline: Vec<Value> = self
            .m
            .timeline
            .iter()
            .map(|(sec, ops, h)| {
                json!({"t": sec - t0, "unix_sec": sec, "ops": ops,
                       "p50_ms": ms(h.value_at_quantile(0.5)), "p99_ms": ms(h.value_at_quantile(0.99)),
                       "max_ms": ms(h.max())})
            })
            .collect();
        json!({
            "scenario": self.cli.name(),
            "transport": self.cli.transport.name(),
            "parameters": serde_json::to_value(&self.cli.scenario).unwrap_or(Value::Null),
            "command": std::env::args().collect::<Vec<_>>(),
            "git_commit": git_commit(),
            "machine": machine(),
            "url": self.cli.url,
            "duration_secs": self.cli.duration.as_secs_f64(),
            "workers": self.x.workers,
            "setup_secs": self.x.setup_secs,
            "run_secs": self.x.run_secs,
            "counters": c,
            "expected_deliveries": self.x.expected,
            "missing": self.missing(),
            "duplicates": c.duplicates,
            "errors": self.errors(),
            "error_rate": self.error_rate(),
            "deliveries_per_sec": self.deliveries_per_sec(),
            "redis_messages_per_publish": (c.redis_receivers > 0)
                .then(|| c.redis_receivers as f64 / c.published.max(1) as f64),
            "connections_joins_per_sec": self.conn_join_per_sec(),
            "gateway_cpu": self.x.gateway_cpu_secs.map(|secs| json!({"secs": secs, "us_per_delivery": self.cpu_per_delivery_us()})),
            "client_cpu_secs": self.x.client_cpu_secs,
            "memory": self.memory().map(|(b, a, per)| json!({"rss_before": b, "rss_after": a, "bytes_per_connection": per})),
            "latency": {
                "connect": percentiles(&self.m.connect),
                "join": percentiles(&self.m.join),
                "delivery": percentiles(&self.m.latency),
                "rejoin": percentiles(&self.m.rejoin),
                "join_replay": percentiles(&self.m.replay),
            },
            "histograms_v2_base64": {
                "connect": encode_hist(&self.m.connect),
                "join": encode_hist(&self.m.join),
                "delivery": encode_hist(&self.m.latency),
                "rejoin": encode_hist(&self.m.rejoin),
                "join_replay": encode_hist(&self.m.replay),
            },
            "storm": self.storm_json(),
            "recover": self.recover_json(),
            "redis": self.redis_json(),
            "lifecycle_cpu": self.x.lifecycle_cpu.map(|l| {
                let us = self.lifecycle_us().unwrap_or_default();
                json!({"secs": l, "us_per_connection": {
                    "gateway_user": us[0], "gateway_system": us[1],
                    "client_user": us[2], "client_system": us[3],
                }})
            }),
            "timeline": timeline,
            "presence": self.presence_json(),
        })
    }

    /// The presence-join figures: join and state latency of the measured
    /// phase, Redis commands per join, diff frames per client, whether the
    /// observers' lists agree, and who used the machine's CPU.
    fn presence_json(&self) -> Option<Value> {
        let p: &MergedPresence = self.m.presence.as_ref()?;
        let joins = p.join.len();
        let x = self.x.presence.as_ref();
        let commands = x.and_then(|x| x.commands.as_ref());
        let total: Option<i64> = commands.map(|c| c.iter().map(|(_, n)| n).sum());
        // What joins cause (their writes, and the per-window publications),
        // apart from what pods do periodically whatever the joins.
        let driven: Option<i64> = commands.map(|c| {
            c.iter()
                .filter(|(cmd, _)| ["hset", "hdel", "publish"].contains(&cmd.as_str()))
                .map(|(_, n)| n)
                .sum()
        });
        // Every client that joined (present users and joiners) is listed,
        // and every seeded presence.
        let expected = self.m.counters.joins_ok + x.map_or(0, |x| x.seeded);
        // Observers' lists (what clients of each pod show) and each pod's
        // state (what a client joining now gets) must all be the same list.
        let pods: &[(u64, u64, u64)] = x.map_or(&[], |x| &x.pods);
        let mut lists: Vec<(u64, u64, u64)> = p.observers.iter().map(|o| (o.1, o.2, o.3)).collect();
        lists.extend(pods);
        let agree =
            !lists.is_empty() && lists.iter().all(|l| *l == lists[0]) && lists[0].0 == expected;
        let gateway = self.x.gateway_cpu_secs;
        let machine = x.map(|x| x.machine_cpu_secs);
        let redis = x.and_then(|x| x.redis_cpu_secs);
        let clients = x.map(|x| x.client_cpu_secs);
        let other = machine
            .map(|m| m - gateway.unwrap_or(0.0) - redis.unwrap_or(0.0) - clients.unwrap_or(0.0));
        Some(json!({
            "joins": joins,
            "seeded": x.map_or(0, |x| x.seeded),
            "join_reply": percentiles(&p.join),
            "presence_state": percentiles(&p.state),
            "state_bytes_max": p.state_bytes,
            "redis_commands": total,
            "redis_commands_per_join": total.map(|t| t as f64 / joins.max(1) as f64),
            "redis_join_writes_and_publishes_per_join": driven.map(|t| t as f64 / joins.max(1) as f64),
            "redis_commands_by_name": commands.map(|c| c.iter().map(|(k, n)| (k.clone(), json!(n))).collect::<serde_json::Map<String, Value>>()),
            "diff_frames": p.diff_frames,
            "diff_frames_per_client_sec": p.diff_frames as f64 / p.client_secs.max(0.001),
            "diff_frames_max_in_one_sec": p.max_per_sec,
            "observers": p.observers.iter().map(|o| json!({"connection": o.0, "keys": o.1, "metas": o.2, "digest": format!("{:016x}", o.3)})).collect::<Vec<_>>(),
            "pods": pods.iter().map(|o| json!({"keys": o.0, "metas": o.1, "digest": format!("{:016x}", o.2)})).collect::<Vec<_>>(),
            "expected_keys": expected,
            "lists_agree": agree,
            "cpu_secs": {"machine": machine, "gateway": gateway, "redis": redis, "clients": clients, "other": other},
        }))
    }

    /// The main latency histogram of this scenario and its name.
    fn main_hist(&self) -> (&Histogram<u64>, &'static str) {
        if self.m.latency.is_empty() {
            (&self.m.join, "join latency")
        } else {
            (&self.m.latency, "publish→receive latency")
        }
    }

    fn histogram_svg(&self) -> anyhow::Result<String> {
        let (h, name) = self.main_hist();
        let mut buckets: Vec<(f64, f64, u64)> = Vec::new();
        if !h.is_empty() {
            let mut lo = 0.0;
            for v in h.iter_log(10, 1.25) {
                let hi = ms(v.value_iterated_to());
                buckets.push((lo, hi.max(lo + 0.001), v.count_since_last_iteration()));
                lo = hi;
            }
        }
        let xmax = buckets.last().map_or(1.0, |b| b.1).max(0.01);
        let ymax = buckets.iter().map(|b| b.2).max().unwrap_or(1).max(1);
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (900, 360)).into_drawing_area();
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(format!("{name} histogram (ms)"), ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(64)
                .build_cartesian_2d(0.0..xmax * 1.02, 0u64..ymax + ymax / 10 + 1)?;
            chart
                .configure_mesh()
                .x_desc("latency (ms)")
                .y_desc("count")
                .draw()?;
            chart.draw_series(
                buckets
                    .iter()
                    .map(|&(lo, hi, c)| Rectangle::new([(lo, 0), (hi, c)], BLUE.mix(0.6).filled())),
            )?;
            root.present()?;
        }
        Ok(svg)
    }

    fn timeline_svg(&self) -> anyhow::Result<String> {
        let t0 = self.m.timeline.first().map_or(0, |t| t.0);
        let pts: Vec<(f64, f64, f64)> = self
            .m
            .timeline
            .iter()
            .map(|(s, ops, h)| ((s - t0) as f64, *ops as f64, ms(h.value_at_quantile(0.99))))
            .collect();
        let xmax = pts.last().map_or(1.0, |p| p.0).max(1.0);
        let omax = pts.iter().map(|p| p.1).fold(1.0, f64::max);
        let lmax = pts.iter().map(|p| p.2).fold(0.01, f64::max);
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (900, 360)).into_drawing_area();
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(
                    "timeline: operations/s (joins + deliveries, blue) and p99 latency (ms, red)",
                    ("sans-serif", 18),
                )
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(72)
                .right_y_label_area_size(64)
                .build_cartesian_2d(0.0..xmax, 0.0..omax * 1.1)?
                .set_secondary_coord(0.0..xmax, 0.0..lmax * 1.1);
            chart
                .configure_mesh()
                .x_desc("seconds")
                .y_desc("ops/s")
                .draw()?;
            chart.configure_secondary_axes().y_desc("p99 ms").draw()?;
            chart.draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), &BLUE))?;
            chart.draw_secondary_series(LineSeries::new(pts.iter().map(|p| (p.0, p.2)), &RED))?;
            root.present()?;
        }
        Ok(svg)
    }

    pub(crate) fn html(&self) -> anyhow::Result<String> {
        let json = serde_json::to_string_pretty(&self.json())?;
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        Ok(format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>loadtest {name}</title>\
             <style>body{{font-family:sans-serif;margin:2em;max-width:960px}}pre{{background:#f4f4f4;padding:1em;overflow:auto}}</style>\
             </head><body>\n<h1>loadtest: {name}</h1>\n<pre>{table}</pre>\n<h2>Latency</h2>\n{hist}\n\
             <h2>Timeline</h2>\n{tl}\n<h2>Full results</h2>\n<pre>{json}</pre>\n</body></html>\n",
            name = self.cli.name(),
            table = esc(&self.table()),
            hist = self.histogram_svg()?,
            tl = self.timeline_svg()?,
            json = esc(&json),
        ))
    }

    /// Writes the JSON and HTML reports `--json` and `--html` ask for.
    pub(crate) fn write_files(&self) -> anyhow::Result<()> {
        if let Some(p) = &self.cli.json {
            std::fs::write(p, serde_json::to_string_pretty(&self.json())?)
                .with_context(|| format!("write {}", p.display()))?;
        }
        if let Some(p) = &self.cli.html {
            std::fs::write(p, self.html()?).with_context(|| format!("write {}", p.display()))?;
        }
        Ok(())
    }
}
