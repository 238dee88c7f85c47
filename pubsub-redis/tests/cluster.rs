//! The bus on a real Redis Cluster of three masters with a replica each:
//! one subscriber connection per master, so that a master SIGKILLed stops
//! only its own slots' topics. The other shards' topics keep arriving while
//! the cluster fails over, a join on them succeeds and one on the dead
//! shard is refused at once, and once the replica is promoted the dead
//! shard's topics are subscribed again at it and arrive again — the bus is
//! never restarted.
//!
//! Needs `redis-server` 7.0+ on PATH.

use pubsub_redis::{Config, RedisBus, Stats};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::bus::Collect;
use test_support::temp::prefix;
use test_support::wait::{until, until_true};
use test_support::{RedisCluster, SETTLE, TIMEOUT};
use tokio::sync::mpsc;

/// The cluster's node timeout: a master that does not answer for this long
/// is failed over to its replica (Redis's default is 15 s).
const NODE_TIMEOUT_MS: u64 = 3000;
/// Topics per shard.
const PER_SHARD: usize = 2;

struct Bus {
    bus: RedisBus,
    rx: mpsc::UnboundedReceiver<(String, pubsub_redis::Envelope)>,
}

impl Bus {
    fn start(cluster: &RedisCluster, prefix: &str) -> Bus {
        let mut config = Config::new(cluster.seeds());
        config.cluster = true;
        config.prefix = prefix.to_owned();
        let (tx, rx) = mpsc::unbounded_channel();
        let bus = RedisBus::start(config, Arc::new(Collect(tx))).unwrap();
        Bus { bus, rx }
    }

    fn stat(&self, f: impl Fn(&Stats) -> &AtomicU64) -> u64 {
        f(self.bus.stats()).load(Ordering::Relaxed)
    }

    /// Waits for `topic`'s message carrying `n`, skipping other topics'.
    async fn expect(&mut self, topic: &str, n: u64) {
        let want = format!(r#"{{"n":{n}}}"#);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (t, e) = tokio::time::timeout(left, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("{topic} #{n} not delivered in time"))
                .expect("bus stopped");
            if t == topic && e.payload.as_ref() == want.as_bytes() {
                return;
            }
        }
    }
}

/// `PER_SHARD` topics on each master, with their owner: (topic, node).
async fn spread(cluster: &RedisCluster, prefix: &str, tag: &str) -> Vec<(String, usize)> {
    let mut per_shard = [0usize; 3];
    let mut topics = Vec::new();
    for i in 0..1000 {
        if topics.len() == 3 * PER_SHARD {
            return topics;
        }
        let topic = format!("room:{tag}{i}");
        let owner = cluster.owner(&format!("{prefix}{topic}")).await;
        if per_shard[owner] < PER_SHARD {
            per_shard[owner] += 1;
            topics.push((topic, owner));
        }
    }
    panic!("cannot spread topics over the shards");
}

/// SPUBLISHes message `n` to `topic` on node `node`; returns the receivers.
async fn spublish(cluster: &RedisCluster, node: usize, prefix: &str, topic: &str, n: u64) -> i64 {
    let channel = format!("{prefix}{topic}");
    let msg = format!(r#"{{"event":"e","payload":{{"n":{n}}}}}"#);
    cluster.cmd(node, &["SPUBLISH", &channel, &msg]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_master_stops_only_its_shard_and_its_topics_resume_after_failover() {
    let mut cluster = RedisCluster::start_with_replicas(NODE_TIMEOUT_MS).await;
    let prefix = prefix("shards");
    let topics = spread(&cluster, &prefix, "t").await;
    let later = spread(&cluster, &prefix, "later").await;
    let mut b = Bus::start(&cluster, &prefix);
    for (topic, _) in &topics {
        until(topic, SETTLE, || b.bus.subscribe(topic)).await;
    }
    assert_eq!(b.stat(|s| &s.shards), 3);
    assert_eq!(b.stat(|s| &s.shards_down), 0);
    assert_eq!(b.stat(|s| &s.subscriptions), topics.len() as u64);
    let mut n = 0;
    for (topic, owner) in &topics {
        n += 1;
        assert_eq!(spublish(&cluster, *owner, &prefix, topic, n).await, 1);
        b.expect(topic, n).await;
    }

    // Master 0 (a seed node, too) dies.
    let dead = 0;
    let replica = cluster.replica_of(dead).await;
    let killed = Instant::now();
    cluster.kill(dead);
    until_true("the bus sees one shard down", TIMEOUT, || {
        b.stat(|s| &s.shards_down) == 1
    })
    .await;
    assert!(b.bus.is_connected(), "two shards are up");
    assert_eq!(
        b.stat(|s| &s.subscriptions),
        (topics.len() - PER_SHARD) as u64,
        "only the dead shard's topics are lost"
    );

    // The other shards deliver while the cluster fails over.
    for (topic, owner) in topics.iter().filter(|(_, o)| *o != dead) {
        n += 1;
        assert_eq!(spublish(&cluster, *owner, &prefix, topic, n).await, 1);
        b.expect(topic, n).await;
    }
    // Joins: at once on a live shard, refused at once on the dead one.
    let (live_topic, live_owner) = later.iter().find(|(_, o)| *o != dead).unwrap();
    b.bus.subscribe(live_topic).await.unwrap();
    n += 1;
    assert_eq!(
        spublish(&cluster, *live_owner, &prefix, live_topic, n).await,
        1
    );
    b.expect(live_topic, n).await;
    let (dead_topic, _) = later.iter().find(|(_, o)| *o == dead).unwrap();
    let started = Instant::now();
    let refused = b.bus.subscribe(dead_topic).await;
    assert!(refused.is_err(), "a join on the dead shard: {refused:?}");
    assert!(refused.unwrap_err().is_connection());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        !cluster.is_master(replica).await,
        "all of the above happened before the failover"
    );
    assert_eq!(b.stat(|s| &s.shards_down), 1);

    // The replica takes over; the dead shard's topics are subscribed there
    // and arrive again, with no restart of the bus.
    cluster.wait_master(replica).await;
    for (topic, _) in topics.iter().filter(|(_, o)| *o == dead) {
        let channel = format!("{prefix}{topic}");
        let (cluster, channel) = (&cluster, &channel);
        until(
            &format!("{topic} subscribed at the new master"),
            SETTLE,
            || async move {
                let subs = cluster.shard_numsub(replica, channel).await;
                (subs == 1).then_some(()).ok_or(subs)
            },
        )
        .await;
    }
    eprintln!(
        "the dead shard's topics were subscribed at the promoted replica {:?} after the kill",
        killed.elapsed()
    );
    for (topic, owner) in &topics {
        let node = if *owner == dead { replica } else { *owner };
        n += 1;
        assert_eq!(spublish(&cluster, node, &prefix, topic, n).await, 1);
        b.expect(topic, n).await;
    }
    until_true("no shard down", SETTLE, || b.stat(|s| &s.shards_down) == 0).await;
    assert_eq!(b.stat(|s| &s.shards), 3);
    assert!(b.stat(|s| &s.reconnects) >= 1);
    assert!(b.bus.is_connected());
    // A join on the former dead shard works again.
    b.bus.subscribe(dead_topic).await.unwrap();
    n += 1;
    assert_eq!(spublish(&cluster, replica, &prefix, dead_topic, n).await, 1);
    b.expect(dead_topic, n).await;
}
