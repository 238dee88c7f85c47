//! Counters, latency histograms and the results a worker reports, and
//! merging several workers' results into one.
//!
//! Data and arithmetic only: it must not print, send, or judge a run.

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

/// Highest latency a histogram records, in microseconds (larger values are clamped).
const MAX_US: u64 = 120_000_000;

/// A new latency histogram in microseconds with 3 significant figures.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// Records `us` microseconds, clamped to the histogram's range.
pub fn record(h: &mut Histogram<u64>, us: u64) {
    let _ = h.record(us.clamp(1, MAX_US));
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A histogram as base64 of its V2 serialization.
pub fn encode_hist(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .expect("serialize histogram");
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// The inverse of [`encode_hist`].
pub fn decode_hist(s: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s)?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("bad histogram: {e:?}"))?;
    let mut out = new_hist();
    out.add(&h).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(out)
}

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// A snapshot of the counters, summed over workers.
        #[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
        pub struct Counters {
            $(pub $name: u64,)*
        }

        /// Live counters of one process.
        #[derive(Debug, Default)]
        pub struct Live {
            $(pub $name: AtomicU64,)*
        }

        impl Live {
            pub fn snapshot(&self) -> Counters {
                Counters { $($name: self.$name.load(Relaxed),)* }
            }
        }

        impl Counters {
            pub fn add(&mut self, o: &Counters) {
                $(self.$name += o.$name;)*
            }
        }
    };
}

counters!(
    connects_ok,
    connect_errors,
    joins_ok,
    join_errors,
    open,
    disconnects,
    deliveries,
    duplicates,
    pushes_sent,
    pushes_ok,
    push_errors,
    published,
    publish_errors,
    settled,
    // Sum of PUBLISH replies (Redis subscribers reached): Redis messages per
    // broadcast is this over `published`.
    redis_receivers,
    // reconnect-storm: clients joined before the storm, connections lost,
    // clients joined again, attempts refused once the gateway listened
    // (ECONNREFUSED or an HTTP error status), and attempts that failed while
    // it did not listen yet (what the backoff is for).
    storm_ready,
    drops,
    rejoined,
    refused,
    attempts_down,
    // History positions ("<epoch>:<offset>" in a broadcast's ref slot):
    // deliveries whose offset was the next one of their topic (or the first
    // seen), offsets skipped, offsets seen again (or older), epoch changes.
    positioned,
    pos_gaps,
    pos_dups,
    epoch_changes,
    // recover: rejoins answered recovered true / false.
    recovered,
    not_recovered,
);

/// Counters and histograms shared by the tasks of one process.
#[derive(Debug)]
pub struct Stats {
    pub live: Live,
    pub latency: Mutex<Histogram<u64>>,
    pub connect: Mutex<Histogram<u64>>,
    pub join: Mutex<Histogram<u64>>,
    /// Latencies (joins and deliveries) of the current second, for the timeline.
    pub interval: Mutex<Histogram<u64>>,
    /// When the last message was received (ns since the Unix epoch).
    pub last_delivery_ns: AtomicU64,
    /// reconnect-storm: from losing a connection to having joined again.
    pub rejoin: Mutex<Histogram<u64>>,
    /// When the last client joined again (ns since the Unix epoch).
    pub last_rejoin_ns: AtomicU64,
    /// recover: from a rejoin sent to the last message of its replay received.
    pub replay: Mutex<Histogram<u64>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            live: Live::default(),
            latency: Mutex::new(new_hist()),
            connect: Mutex::new(new_hist()),
            join: Mutex::new(new_hist()),
            interval: Mutex::new(new_hist()),
            last_delivery_ns: AtomicU64::new(0),
            rejoin: Mutex::new(new_hist()),
            last_rejoin_ns: AtomicU64::new(0),
            replay: Mutex::new(new_hist()),
        }
    }
}

impl Stats {
    pub fn delivery(&self, now_ns: u64, us: u64) {
        self.live.deliveries.fetch_add(1, Relaxed);
        self.last_delivery_ns.fetch_max(now_ns, Relaxed);
        record(&mut self.latency.lock(), us);
        record(&mut self.interval.lock(), us);
    }

    pub fn joined(&self, us: u64) {
        self.live.joins_ok.fetch_add(1, Relaxed);
        record(&mut self.join.lock(), us);
        record(&mut self.interval.lock(), us);
    }

    /// A recovering join sent `us` ago has received its whole replay.
    pub fn replayed(&self, us: u64) {
        record(&mut self.replay.lock(), us);
    }

    /// A client that lost its connection `us` ago has joined again.
    pub fn rejoined(&self, now_ns: u64, us: u64) {
        self.live.rejoined.fetch_add(1, Relaxed);
        self.last_rejoin_ns.fetch_max(now_ns, Relaxed);
        record(&mut self.rejoin.lock(), us);
    }
}

/// One second of the timeline: operations (joins + deliveries) and their latencies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tick {
    pub unix_sec: u64,
    pub ops: u64,
    pub hist: String,
}

/// What the clients of the presence-join scenario saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PresenceResult {
    /// `presence_diff` frames joined clients received in the measured phase.
    pub diff_frames: u64,
    /// Seconds clients were joined in the measured phase, summed.
    pub client_secs: f64,
    /// Most `presence_diff` frames one client received in one second.
    pub max_per_sec: u64,
    /// Join reply latency of the measured phase's joins (base64 histogram, µs).
    pub join: String,
    /// `phx_join` to `presence_state` of those joins (base64 histogram, µs).
    pub state: String,
    /// Largest `presence_state` received, bytes.
    pub state_bytes: u64,
    /// Each observer's final list: (its connection, keys, metas, digest of
    /// every key and ref).
    pub observers: Vec<(u64, u64, u64, u64)>,
}

/// What a worker reports at the end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerResult {
    pub counters: Counters,
    pub latency: String,
    pub connect: String,
    pub join: String,
    pub timeline: Vec<Tick>,
    pub last_delivery_ns: u64,
    /// The presence-join scenario's (absent in the others).
    #[serde(default)]
    pub presence: Option<PresenceResult>,
    /// reconnect-storm only (empty histogram, 0 otherwise).
    #[serde(default)]
    pub rejoin: String,
    #[serde(default)]
    pub last_rejoin_ns: u64,
    /// recover only (empty histogram otherwise).
    #[serde(default)]
    pub replay: String,
}

/// [`PresenceResult`]s merged over workers.
#[derive(Debug)]
pub struct MergedPresence {
    pub diff_frames: u64,
    pub client_secs: f64,
    pub max_per_sec: u64,
    pub join: Histogram<u64>,
    pub state: Histogram<u64>,
    pub state_bytes: u64,
    pub observers: Vec<(u64, u64, u64, u64)>,
}

/// Results merged over workers.
#[derive(Debug)]
pub struct Merged {
    pub counters: Counters,
    pub latency: Histogram<u64>,
    pub connect: Histogram<u64>,
    pub join: Histogram<u64>,
    /// (unix second, ops, latency histogram of that second)
    pub timeline: Vec<(u64, u64, Histogram<u64>)>,
    pub last_delivery_ns: u64,
    pub presence: Option<MergedPresence>,
    pub rejoin: Histogram<u64>,
    pub last_rejoin_ns: u64,
    pub replay: Histogram<u64>,
}

pub fn merge(results: &[WorkerResult]) -> anyhow::Result<Merged> {
    let mut m = Merged {
        counters: Counters::default(),
        latency: new_hist(),
        connect: new_hist(),
        join: new_hist(),
        timeline: Vec::new(),
        last_delivery_ns: 0,
        presence: None,
        rejoin: new_hist(),
        last_rejoin_ns: 0,
        replay: new_hist(),
    };
    let mut ticks: BTreeMap<u64, (u64, Histogram<u64>)> = BTreeMap::new();
    let add = |a: &mut Histogram<u64>, s: &str| -> anyhow::Result<()> {
        a.add(decode_hist(s)?).map_err(|e| anyhow::anyhow!("{e:?}"))
    };
    for r in results {
        m.counters.add(&r.counters);
        m.last_delivery_ns = m.last_delivery_ns.max(r.last_delivery_ns);
        add(&mut m.latency, &r.latency)?;
        add(&mut m.connect, &r.connect)?;
        add(&mut m.join, &r.join)?;
        if let Some(p) = &r.presence {
            let mp = m.presence.get_or_insert_with(|| MergedPresence {
                diff_frames: 0,
                client_secs: 0.0,
                max_per_sec: 0,
                join: new_hist(),
                state: new_hist(),
                state_bytes: 0,
                observers: Vec::new(),
            });
            mp.diff_frames += p.diff_frames;
            mp.client_secs += p.client_secs;
            mp.max_per_sec = mp.max_per_sec.max(p.max_per_sec);
            mp.state_bytes = mp.state_bytes.max(p.state_bytes);
            mp.observers.extend(&p.observers);
            add(&mut mp.join, &p.join)?;
            add(&mut mp.state, &p.state)?;
        }
        if !r.rejoin.is_empty() {
            add(&mut m.rejoin, &r.rejoin)?;
        }
        m.last_rejoin_ns = m.last_rejoin_ns.max(r.last_rejoin_ns);
        if !r.replay.is_empty() {
            add(&mut m.replay, &r.replay)?;
        }
        for t in &r.timeline {
            let e = ticks.entry(t.unix_sec).or_insert_with(|| (0, new_hist()));
            e.0 += t.ops;
            add(&mut e.1, &t.hist)?;
        }
    }
    m.timeline = ticks.into_iter().map(|(s, (o, h))| (s, o, h)).collect();
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_survive_serialization_and_merge() {
        let mut a = new_hist();
        let mut b = new_hist();
        for v in 1..=1000 {
            record(&mut a, v);
            record(&mut b, v * 1000);
        }
        let r = |h: &Histogram<u64>| WorkerResult {
            counters: Counters {
                deliveries: h.len(),
                ..Counters::default()
            },
            latency: encode_hist(h),
            connect: encode_hist(&new_hist()),
            join: encode_hist(&new_hist()),
            timeline: vec![Tick {
                unix_sec: 7,
                ops: h.len(),
                hist: encode_hist(h),
            }],
            last_delivery_ns: h.max(),
            presence: None,
            rejoin: String::new(),
            last_rejoin_ns: 0,
            replay: String::new(),
        };
        let m = merge(&[r(&a), r(&b)]).unwrap();
        assert_eq!(m.counters.deliveries, 2000);
        assert_eq!(m.latency.len(), 2000);
        assert_eq!(m.latency.max(), b.max());
        assert_eq!(m.timeline.len(), 1);
        assert_eq!(m.timeline[0].1, 2000);
        assert_eq!(m.last_delivery_ns, b.max());
    }
}
