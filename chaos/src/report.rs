//! Markdown for docs/reliability.md and the terminal: the summary table of
//! every scenario, each scenario's per-pod details, and the soak's
//! intervals. Formatting only.

use crate::scenario::Outcome;
use crate::soak::SoakOutcome;
use std::fmt::Write as _;

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 10_000.0 => format!("{:.1} s", v / 1000.0),
        Some(v) => format!("{v:.0} ms"),
        None => "—".into(),
    }
}

/// The worst (last to happen) of the pods' readiness figures, as one cell.
fn readiness(o: &Outcome) -> String {
    let affected: Vec<_> = o.pods.iter().filter(|p| p.rss_peak_mb > 0.0).collect();
    let not_ready = affected.iter().filter_map(|p| p.not_ready_after_ms).count();
    let down: Vec<f64> = affected
        .iter()
        .filter_map(|p| p.redis_down_after_ms)
        .collect();
    let up: Vec<f64> = affected
        .iter()
        .filter_map(|p| p.redis_up_again_ms)
        .collect();
    let fmax = |v: &[f64]| {
        v.iter()
            .cloned()
            .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))))
    };
    let mut s = if not_ready == 0 {
        "200 throughout".to_owned()
    } else {
        format!("not 200 on {not_ready} pod(s)")
    };
    if down.is_empty() {
        s.push_str("; body never says disconnected");
    } else {
        let _ = write!(
            s,
            "; body `disconnected` on {} pod(s) after ≤{}, `connected` ≤{} after repair",
            down.len(),
            ms(fmax(&down)),
            ms(fmax(&up))
        );
    }
    s
}

pub(crate) fn summary(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    s.push_str("| scenario | fault | lost / expected-lost | lost: before · during · recovering · after recovery | dup | recovered: every pod · all subscribers | client disconnects (reconnects) | RSS peak (before) | /readyz |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for o in outcomes {
        let l = &o.losses;
        let r = &o.recovery;
        let peak = o.pods.iter().map(|p| p.rss_peak_mb).fold(0.0, f64::max);
        let before = o.pods.iter().map(|p| p.rss_before_mb).fold(0.0, f64::max);
        let _ = writeln!(
            s,
            "| {} | {:.1} s | {} / {} | {} · {} · {} · {} | {} | {} · {}{} | {} ({}) | {:.0} MB ({:.0}) | {} |",
            o.fault.name(),
            o.fault_secs,
            l.lost,
            l.expected_lost,
            l.lost_before,
            l.lost_during,
            l.lost_recovering,
            l.lost_after_recovery,
            l.duplicates,
            ms(r.every_pod_ms),
            ms(r.all_subscribers_ms),
            if r.never > 0 {
                format!(" ({} never)", r.never)
            } else {
                String::new()
            },
            o.clients.disconnects,
            o.clients.connects,
            peak,
            before,
            readiness(o),
        );
    }
    s
}

pub(crate) fn details(o: &Outcome) -> String {
    let mut s = String::new();
    let l = &o.losses;
    let _ = writeln!(s, "#### {}\n", o.fault.name());
    let _ = writeln!(
        s,
        "Fault {:.1} s; affected: {:?}. Publisher: {} confirmed ({} to no pod), {} failed, {} timed out, {} slots skipped; {} deliveries due, {} lost, {} duplicates, {} received although PUBLISH failed or timed out. Clients from the fault on: {} disconnects, {} heartbeat timeouts, {} connects ({} failed), {} joins ok, {} join errors, {} channel errors, {} channel closes.{}\n",
        o.fault_secs,
        o.affected,
        l.published_ok,
        l.published_to_no_pod,
        l.publish_failed,
        l.publish_timed_out,
        l.skipped,
        l.due,
        l.lost,
        l.duplicates,
        l.delivered_unconfirmed,
        o.clients.disconnects,
        o.clients.heartbeat_timeouts,
        o.clients.connects,
        o.clients.connect_failures,
        o.clients.joins_ok,
        o.clients.join_errors,
        o.clients.channel_errors,
        o.clients.channel_closes,
        if o.crashed.is_empty() {
            String::new()
        } else {
            format!(" **Pods that exited on their own: {:?}.**", o.crashed)
        }
    );
    s.push_str("| pod | first delivery after repair | RSS before → peak | fds peak | /readyz not 200 after fault start | 200 again after repair | `redis: disconnected` after fault start | `connected` after repair | probes unanswered |\n|---|---|---|---|---|---|---|---|---|\n");
    for p in &o.pods {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} → {:.0} MB | {} | {} | {} | {} | {} | {} |",
            p.pod,
            ms(o.recovery.per_pod_ms.get(p.pod).copied().flatten()),
            p.rss_before_mb,
            p.rss_peak_mb,
            p.fds_peak,
            ms(p.not_ready_after_ms),
            ms(p.ready_again_ms),
            ms(p.redis_down_after_ms),
            ms(p.redis_up_again_ms),
            p.unanswered
        );
    }
    s.push('\n');
    s.push_str("Deliveries and latency per second around the fault (t = 0 at the fault):\n\n");
    s.push_str("| t (s) | deliveries | p50 | p99 | max |\n|---|---|---|---|---|\n");
    for t in &o.timeline {
        let _ = writeln!(
            s,
            "| {:.0} | {} | {:.1} ms | {:.1} ms | {:.0} ms |",
            t.t, t.deliveries, t.p50_ms, t.p99_ms, t.max_ms
        );
    }
    s.push('\n');
    s
}

pub(crate) fn soak(o: &SoakOutcome) -> String {
    let mut s = String::new();
    let l = &o.losses;
    let _ = writeln!(
        s,
        "{} s, {} subscribers churning every {:?}–{:?}, {} msgs/s. Deliveries due {}, lost {}, duplicates {}; publisher: {} failed, {} timed out. Clients: {} connects, {} churned, {} disconnects, {} join errors. RSS slope per pod (after the first interval): {} MB/h; fds slope: {} /h.{}\n",
        o.shape.duration.as_secs(),
        o.shape.subscribers,
        o.shape.churn.0,
        o.shape.churn.1,
        o.shape.rate,
        l.due,
        l.lost,
        l.duplicates,
        l.publish_failed,
        l.publish_timed_out,
        o.clients.connects,
        o.clients.churned,
        o.clients.disconnects,
        o.clients.join_errors,
        o.rss_slope_mb_per_h
            .iter()
            .map(|v| format!("{v:+.1}"))
            .collect::<Vec<_>>()
            .join(" / "),
        o.fds_slope_per_h
            .iter()
            .map(|v| format!("{v:+.0}"))
            .collect::<Vec<_>>()
            .join(" / "),
        if o.crashed.is_empty() {
            String::new()
        } else {
            format!(" **Pods that exited: {:?}.**", o.crashed)
        }
    );
    s.push_str("| t (s) | deliveries | p50 | p99 | p99.9 | max | RSS per pod (MB) | fds per pod | reconnects (churn) | disconnects |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for i in &o.intervals {
        let _ = writeln!(
            s,
            "| {:.0} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.0} ms | {} | {} | {} | {} |",
            i.t,
            i.deliveries,
            i.p50_ms,
            i.p99_ms,
            i.p999_ms,
            i.max_ms,
            i.rss_mb
                .iter()
                .map(|m| format!("{m:.0}"))
                .collect::<Vec<_>>()
                .join(" / "),
            i.fds
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join(" / "),
            i.clients.churned,
            i.clients.disconnects
        );
    }
    s
}
