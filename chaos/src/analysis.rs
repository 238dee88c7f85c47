//! What a run's records mean, exactly: which deliveries were due (a message
//! Redis confirmed, published while the subscriber was joined), which of
//! them never came and when they were published relative to the fault, how
//! long delivery took to come back, what the pods' memory and readiness
//! did. Pure arithmetic over the publisher's log, the subscribers' records
//! and the probes' samples.

use crate::fleet::Record;
use crate::probes::Sample;
use crate::publisher::{Log, Outcome};
use serde::Serialize;

/// A message published within this long before a subscriber left (churn)
/// is not due to it: it may have been on its way.
pub(crate) const LEAVE_GRACE_NS: u64 = 1_000_000_000;

/// Messages published this long before a fault began count as lost during
/// it: they were on their way (in Redis's or the pod's buffers, on the wire)
/// when it hit.
pub(crate) const IN_FLIGHT_NS: u64 = 500_000_000;

/// The fault: from its start to the moment it was repaired (the process
/// answering again, the link restored; the same instant for a kill).
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Window {
    pub(crate) start_ns: u64,
    pub(crate) end_ns: u64,
}

/// Whose deliveries the fault is expected to cost.
#[derive(Debug, Clone, Serialize)]
pub(crate) enum Affected {
    All,
    /// Subscribers joined on this pod when the fault began.
    Pod(usize),
    /// Subscribers of these topics.
    Topics(Vec<usize>),
}

/// Deliveries, due and lost, in subscriber-messages.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub(crate) struct Losses {
    pub(crate) published_ok: u64,
    /// Confirmed with 0 receivers: no pod was subscribed at that moment.
    pub(crate) published_to_no_pod: u64,
    pub(crate) publish_failed: u64,
    pub(crate) publish_timed_out: u64,
    pub(crate) skipped: u64,
    /// Deliveries due (confirmed messages × subscribers joined then).
    pub(crate) due: u64,
    pub(crate) lost: u64,
    /// ...of messages published before the fault began (and before
    /// [`IN_FLIGHT_NS`] ahead of it).
    pub(crate) lost_before: u64,
    /// ...published during the fault, or just before it (in flight).
    pub(crate) lost_during: u64,
    /// ...published after the repair, before the subscriber received again.
    pub(crate) lost_recovering: u64,
    /// ...published after the subscriber received again: gaps that should
    /// not exist.
    pub(crate) lost_after_recovery: u64,
    /// What the fault was expected to cost: deliveries due of messages
    /// published during it, to affected subscribers.
    pub(crate) expected_lost: u64,
    pub(crate) duplicates: u64,
    /// Received although PUBLISH failed or timed out at the publisher.
    pub(crate) delivered_unconfirmed: u64,
    pub(crate) subscribers_with_gaps_after_recovery: u64,
}

/// How long delivery took to come back after the repair.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Recovery {
    /// Per pod: repair → the first delivery on it (None: none after the
    /// repair, e.g. the pod was killed).
    pub(crate) per_pod_ms: Vec<Option<f64>>,
    /// Repair → the first delivery again on every pod that still runs.
    pub(crate) every_pod_ms: Option<f64>,
    /// Repair → the last affected subscriber's first delivery.
    pub(crate) all_subscribers_ms: Option<f64>,
    /// Affected subscribers that received nothing after the repair.
    pub(crate) never: u64,
}

/// Delivery windows of one subscriber: from a join to a voluntary leave
/// (minus the grace), a lost connection running on into the next join
/// (what was published while it reconnected was due: a client behind a
/// balancer expects it), or to `end_ns` when it never came back.
fn windows(r: &Record, end_ns: u64) -> Vec<(u64, u64)> {
    let mut segs = r.segments.clone();
    segs.sort_by_key(|s| s.joined_ns);
    let mut out = Vec::new();
    let mut open: Option<u64> = None;
    for s in &segs {
        let start = *open.get_or_insert(s.joined_ns);
        if s.voluntary {
            out.push((start, s.left_ns.saturating_sub(LEAVE_GRACE_NS)));
            open = None;
        }
    }
    if let Some(start) = open {
        out.push((start, end_ns));
    }
    out
}

/// The pod a subscriber was joined on at `t` (its last join before).
fn pod_at(r: &Record, t: u64) -> Option<usize> {
    r.segments
        .iter()
        .filter(|s| s.joined_ns <= t)
        .max_by_key(|s| s.joined_ns)
        .map(|s| s.pod)
}

fn is_affected(a: &Affected, r: &Record, fault: Option<Window>) -> bool {
    match (a, fault) {
        (Affected::All, _) => true,
        (Affected::Pod(p), Some(f)) => pod_at(r, f.start_ns) == Some(*p),
        (Affected::Pod(_), None) => false,
        (Affected::Topics(t), _) => t.contains(&r.topic),
    }
}

/// Losses over every subscriber; `end_ns`: when the run stopped.
pub(crate) fn losses(
    log: &Log,
    records: &[Record],
    fault: Option<Window>,
    affected: &Affected,
    end_ns: u64,
) -> Losses {
    let mut l = Losses {
        skipped: log.skipped,
        ..Losses::default()
    };
    for entries in &log.topics {
        for e in entries {
            match e.outcome {
                Outcome::Ok(0) => {
                    l.published_ok += 1;
                    l.published_to_no_pod += 1;
                }
                Outcome::Ok(_) => l.published_ok += 1,
                Outcome::Failed => l.publish_failed += 1,
                Outcome::TimedOut | Outcome::Pending => l.publish_timed_out += 1,
            }
        }
    }
    for r in records {
        l.duplicates += r.duplicates;
        let Some(entries) = log.topics.get(r.topic) else {
            continue;
        };
        let wins = windows(r, end_ns);
        let hit = is_affected(affected, r, fault);
        let back = r.first_after_mark.map(|(t, _)| t);
        let mut gaps_after = false;
        for (seq, e) in entries.iter().enumerate() {
            let got = r.has(seq as u64);
            if !matches!(e.outcome, Outcome::Ok(_)) {
                l.delivered_unconfirmed += u64::from(got);
                continue;
            }
            let due = wins.iter().any(|&(a, b)| a <= e.start_ns && e.end_ns <= b);
            if !due {
                continue;
            }
            l.due += 1;
            let during = fault.is_some_and(|f| f.start_ns <= e.start_ns && e.start_ns <= f.end_ns);
            if during && hit {
                l.expected_lost += 1;
            }
            if got {
                continue;
            }
            l.lost += 1;
            match fault {
                None => {
                    l.lost_after_recovery += 1;
                    gaps_after = true;
                }
                Some(f) if e.start_ns + IN_FLIGHT_NS < f.start_ns => l.lost_before += 1,
                Some(f) if e.start_ns <= f.end_ns => l.lost_during += 1,
                Some(_) => match back {
                    Some(b) if e.start_ns >= b => {
                        l.lost_after_recovery += 1;
                        gaps_after = true;
                    }
                    _ => l.lost_recovering += 1,
                },
            }
        }
        l.subscribers_with_gaps_after_recovery += u64::from(gaps_after);
    }
    l
}

/// Recovery after the repair at `fault.end_ns`, over `pods` pods of which
/// those in `dead` were killed.
pub(crate) fn recovery(
    records: &[Record],
    fault: Window,
    affected: &Affected,
    pods: usize,
    dead: &[usize],
) -> Recovery {
    let ms = |t: u64| t.saturating_sub(fault.end_ns) as f64 / 1e6;
    let mut per_pod: Vec<Option<u64>> = vec![None; pods];
    let mut all: Option<u64> = None;
    let mut never = 0;
    for r in records {
        if let Some((t, p)) = r.first_after_mark {
            if let Some(slot) = per_pod.get_mut(p) {
                *slot = Some(slot.map_or(t, |s| s.min(t)));
            }
        }
        if !is_affected(affected, r, Some(fault)) {
            continue;
        }
        match r.first_after_mark {
            Some((t, _)) => all = Some(all.map_or(t, |a| a.max(t))),
            None => never += 1,
        }
    }
    let live: Vec<Option<u64>> = (0..pods)
        .filter(|p| !dead.contains(p))
        .map(|p| per_pod[p])
        .collect();
    let every_pod_ms = if live.iter().all(Option::is_some) {
        live.iter().flatten().max().map(|&t| ms(t))
    } else {
        None
    };
    Recovery {
        per_pod_ms: per_pod.iter().map(|t| t.map(ms)).collect(),
        every_pod_ms,
        all_subscribers_ms: all.map(ms),
        never,
    }
}

/// One pod's memory, descriptors and readiness over a run.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct PodView {
    pub(crate) pod: usize,
    /// Highest VmRSS before the fault, and over the whole run (MB).
    pub(crate) rss_before_mb: f64,
    pub(crate) rss_peak_mb: f64,
    pub(crate) fds_peak: u64,
    /// Probes without an answer within a second, during the run.
    pub(crate) unanswered: u64,
    /// Fault start → first probe not answering 200 (ms), and repair → the
    /// first 200 again.
    pub(crate) not_ready_after_ms: Option<f64>,
    pub(crate) ready_again_ms: Option<f64>,
    /// Fault start → first probe saying `redis: disconnected`, and repair →
    /// the first `redis: connected` after it.
    pub(crate) redis_down_after_ms: Option<f64>,
    pub(crate) redis_up_again_ms: Option<f64>,
}

pub(crate) fn pod_views(samples: &[Sample], pods: usize, fault: Option<Window>) -> Vec<PodView> {
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    (0..pods)
        .map(|p| {
            let mine: Vec<&Sample> = samples.iter().filter(|s| s.pod == p).collect();
            let mut v = PodView {
                pod: p,
                ..PodView::default()
            };
            for s in &mine {
                let rss = s.rss.map(mb).unwrap_or(0.0);
                v.rss_peak_mb = v.rss_peak_mb.max(rss);
                if fault.is_none_or(|f| s.t_ns < f.start_ns) {
                    v.rss_before_mb = v.rss_before_mb.max(rss);
                }
                v.fds_peak = v.fds_peak.max(s.fds.unwrap_or(0));
                v.unanswered += u64::from(s.rss.is_some() && s.ready.is_none());
            }
            if let Some(f) = fault {
                let since = |t: u64, from: u64| t.saturating_sub(from) as f64 / 1e6;
                let after: Vec<&&Sample> = mine
                    .iter()
                    .filter(|s| s.t_ns >= f.start_ns && s.rss.is_some())
                    .collect();
                if let Some(i) = after.iter().position(|s| s.ready != Some(200)) {
                    v.not_ready_after_ms = Some(since(after[i].t_ns, f.start_ns));
                    v.ready_again_ms = after[i..]
                        .iter()
                        .find(|s| s.ready == Some(200) && s.t_ns >= f.end_ns)
                        .map(|s| since(s.t_ns, f.end_ns));
                }
                if let Some(i) = after.iter().position(|s| s.redis_connected == Some(false)) {
                    v.redis_down_after_ms = Some(since(after[i].t_ns, f.start_ns));
                    v.redis_up_again_ms = after[i..]
                        .iter()
                        .find(|s| s.redis_connected == Some(true))
                        .map(|s| since(s.t_ns, f.end_ns));
                }
            }
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Segment;
    use crate::publisher::Entry;

    const S: u64 = 1_000_000_000;

    fn entry(t: u64, outcome: Outcome) -> Entry {
        Entry {
            start_ns: t,
            end_ns: t + 1_000_000,
            outcome,
        }
    }

    /// One topic, a message a second from t = 10 s to 29 s; Redis down
    /// (publishes failing) from 15 s to 17 s.
    fn log() -> Log {
        let entries = (10..30)
            .map(|s| {
                let o = if (15..=16).contains(&s) {
                    Outcome::Failed
                } else {
                    Outcome::Ok(3)
                };
                entry(s * S, o)
            })
            .collect();
        Log {
            topics: vec![entries],
            skipped: 0,
        }
    }

    fn record(got: &[u64], segments: Vec<Segment>, back: Option<u64>) -> Record {
        let mut r = Record {
            topic: 0,
            segments,
            first_after_mark: back.map(|t| (t, 0)),
            ..Record::default()
        };
        for &g in got {
            r.got.resize(1, 0);
            r.got[0] |= 1 << g;
        }
        r
    }

    fn seg(pod: usize, joined: u64, left: u64, voluntary: bool) -> Segment {
        Segment {
            pod,
            joined_ns: joined * S,
            left_ns: left * S,
            voluntary,
        }
    }

    #[test]
    fn losses_are_sorted_by_when_the_message_was_published() {
        let fault = Window {
            start_ns: 15 * S,
            end_ns: 17 * S,
        };
        // seqs 0-19 at t = 10..29 s. Lost: 4 (t=14, before), 7 and 8
        // (t=17 during, t=18 recovering: it came back at t=19), 12 (after).
        let got: Vec<u64> = (0..20).filter(|s| ![4, 7, 8, 12].contains(s)).collect();
        let r = record(&got, vec![seg(0, 5, 40, true)], Some(19 * S));
        let l = losses(&log(), &[r], Some(fault), &Affected::All, 40 * S);
        assert_eq!(l.published_ok, 18);
        assert_eq!(l.publish_failed, 2);
        assert_eq!(l.due, 18);
        assert_eq!(l.lost, 4);
        assert_eq!(
            (
                l.lost_before,
                l.lost_during,
                l.lost_recovering,
                l.lost_after_recovery
            ),
            (1, 1, 1, 1)
        );
        // Seq 5 and 6 failed at the publisher but arrived anyway.
        assert_eq!(l.delivered_unconfirmed, 2);
        // Only t = 17 s was confirmed during the fault.
        assert_eq!(l.expected_lost, 1);
        assert_eq!(l.subscribers_with_gaps_after_recovery, 1);
    }

    #[test]
    fn a_lost_connection_keeps_messages_due_and_a_leave_does_not() {
        // Lost its socket at 12 s, joined again at 14 s: 12 and 13 were due.
        let got: Vec<u64> = (0..20).filter(|s| ![2, 3].contains(s)).collect();
        let r = record(
            &got,
            vec![seg(1, 5, 12, false), seg(2, 14, 40, true)],
            Some(14 * S),
        );
        let f = Window {
            start_ns: 12 * S,
            end_ns: 12 * S,
        };
        let l = losses(
            &log(),
            std::slice::from_ref(&r),
            Some(f),
            &Affected::Pod(1),
            40 * S,
        );
        assert_eq!(l.due, 18);
        assert_eq!((l.lost_during, l.lost_recovering), (1, 1));
        assert_eq!(l.expected_lost, 1, "only t = 12 s is at the fault instant");
        // Left at 12 s of its own accord: nothing is due until it joins again.
        let mut r2 = r;
        r2.segments[0].voluntary = true;
        let l = losses(&log(), &[r2], None, &Affected::All, 40 * S);
        assert_eq!(l.lost, 0);
        assert_eq!(l.due, 18 - 2 - 1, "12, 13 while away; 11 within the grace");
    }

    #[test]
    fn recovery_is_per_pod_and_over_affected_subscribers() {
        let f = Window {
            start_ns: 10 * S,
            end_ns: 20 * S,
        };
        let mut a = record(&[], vec![seg(0, 1, 40, true)], Some(21 * S));
        let mut b = record(&[], vec![seg(1, 1, 40, true)], Some(23 * S));
        b.first_after_mark = Some((23 * S, 1));
        a.first_after_mark = Some((21 * S, 0));
        let c = record(&[], vec![seg(2, 1, 40, true)], None);
        let r = recovery(&[a, b, c], f, &Affected::All, 3, &[2]);
        assert_eq!(r.per_pod_ms, vec![Some(1000.0), Some(3000.0), None]);
        assert_eq!(r.every_pod_ms, Some(3000.0));
        assert_eq!(r.all_subscribers_ms, Some(3000.0));
        assert_eq!(r.never, 1);
    }

    #[test]
    fn readiness_and_redis_state_are_timed_from_the_fault() {
        let f = Window {
            start_ns: 10 * S,
            end_ns: 20 * S,
        };
        let s = |t: u64, ready: Option<u16>, up: Option<bool>| Sample {
            t_ns: t * S,
            pod: 0,
            rss: Some(100 << 20),
            fds: Some(50),
            ready,
            redis_connected: up,
        };
        let samples = [
            s(9, Some(200), Some(true)),
            s(11, Some(200), Some(true)),
            s(13, Some(200), Some(false)),
            s(21, Some(200), Some(false)),
            s(22, Some(200), Some(true)),
        ];
        let v = &pod_views(&samples, 1, Some(f))[0];
        assert_eq!(v.not_ready_after_ms, None);
        assert_eq!(v.redis_down_after_ms, Some(3000.0));
        assert_eq!(v.redis_up_again_ms, Some(2000.0));
        assert_eq!(v.rss_peak_mb, 100.0);
        assert_eq!(v.fds_peak, 50);
    }
}
