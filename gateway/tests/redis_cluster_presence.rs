//! Presence on a Redis Cluster (three masters, `[redis] cluster = true`)
//! across `gateway` processes: `presence_state` and `presence_diff` between
//! two pods for topics on different shards, the entries in each topic's
//! hash on the shard owning its tag, and a pod killed with SIGKILL whose
//! presences the survivor removes with exactly one leave each, within the
//! pod timeout, leaving nothing of the dead pod in Redis.
//!
//! Needs `redis-server` on PATH.

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use test_support::temp::prefix;
use test_support::{wait, GatewayProcess, Member, Received, RedisCluster, SETTLE};

/// Pod timeout of these tests: a killed pod's presences leave within it.
const POD_TIMEOUT_MS: u64 = 1500;

async fn pod(cluster: &RedisCluster, prefix: &str) -> GatewayProcess {
    GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway"))
        .redis(&cluster.seeds())
        .cluster()
        .prefix(prefix)
        .presence(POD_TIMEOUT_MS)
        .start()
        .await
}

async fn member(pod: &GatewayProcess, topic: &str, user: &str) -> Member {
    Member::join(
        pod.client().await,
        topic,
        "1",
        json!({"user": user, "tab": 1}),
    )
    .await
}

/// Three `presence:*` topics whose presence hashes are on three different
/// shards.
async fn topics_on_every_shard(cluster: &RedisCluster, prefix: &str) -> Vec<(String, usize)> {
    let mut shards = BTreeSet::new();
    let mut topics = Vec::new();
    for i in 0..1000 {
        let topic = format!("presence:t{i}");
        let owner = cluster
            .owner(&format!("{prefix}presence:{{{topic}}}"))
            .await;
        if shards.insert(owner) {
            topics.push((topic, owner));
        }
        if topics.len() == 3 {
            return topics;
        }
    }
    panic!("no topics spread over the shards");
}

/// Reads `m`'s frames until its view shows `want`, counting the diffs that
/// list `user` among the leaves.
async fn leaves_of(m: &mut Member, user: &str, want: &[(&str, usize)]) -> usize {
    let want: std::collections::BTreeMap<String, usize> =
        want.iter().map(|(k, n)| (k.to_string(), *n)).collect();
    let deadline = Instant::now() + Duration::from_millis(POD_TIMEOUT_MS * 3) + SETTLE;
    let mut leaves = 0;
    while m.view.counts() != want {
        let left = deadline.saturating_duration_since(Instant::now());
        match m.client.next_within(left).await {
            Some(Received::Text(f)) => {
                if f[3] == "presence_diff" && f[4]["leaves"].get(user).is_some() {
                    leaves += 1;
                }
                m.view.apply(&m.topic, &f);
            }
            other => panic!(
                "{}: waiting for {want:?}, view {:?}, got {other:?}",
                m.topic,
                m.view.counts()
            ),
        }
    }
    leaves
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_across_two_pods_on_a_cluster_and_a_dead_pod_leaves_once() {
    let cluster = RedisCluster::start().await;
    let p = prefix("rcp");
    let a = pod(&cluster, &p).await;
    let mut b = pod(&cluster, &p).await;
    let topics = topics_on_every_shard(&cluster, &p).await;

    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    for (t, _) in &topics {
        let mut alice = member(&a, t, "alice").await;
        let mut bob = member(&b, t, "bob").await;
        // Each learns of the other: from the state or the diffs.
        alice.wait_for(&[("alice", 1), ("bob", 1)], SETTLE).await;
        bob.wait_for(&[("alice", 1), ("bob", 1)], SETTLE).await;
        // A join on pod A lists pod B's presence in its presence_state.
        let mut carol = Member::join(a.client().await, t, "1", json!({"user": "carol"})).await;
        carol
            .wait_for(&[("alice", 1), ("bob", 1), ("carol", 1)], SETTLE)
            .await;
        alice
            .wait_for(&[("alice", 1), ("bob", 1), ("carol", 1)], SETTLE)
            .await;
        on_a.push((alice, carol));
        on_b.push(bob);
    }
    // Each topic's hash is on the shard its tag names (the last write may
    // still be on its way: diffs go out as soon as the state changed).
    for (t, owner) in &topics {
        let key = format!("{p}presence:{{{t}}}");
        let (key, cluster) = (&key, &cluster);
        wait::until(&format!("3 entries in {key}"), SETTLE, || async move {
            let n: i64 = cluster.cmd(*owner, &["HLEN", key]).await;
            (n == 3).then_some(()).ok_or(n)
        })
        .await;
    }

    // SIGKILL pod B: no cleanup. Pod A reaps bob in every topic, one leave
    // each, within the pod timeout.
    let killed = Instant::now();
    b.kill();
    drop(on_b);
    for (alice, carol) in &mut on_a {
        let n = leaves_of(alice, "bob", &[("alice", 1), ("carol", 1)]).await;
        assert_eq!(n, 1, "{}: leaves of bob", alice.topic);
        carol.wait_for(&[("alice", 1), ("carol", 1)], SETTLE).await;
    }
    let took = killed.elapsed();
    // The bound is POD_TIMEOUT_MS; the slack is for a busy test machine.
    assert!(
        took < Duration::from_millis(POD_TIMEOUT_MS + 1000),
        "leaves took {took:?}"
    );

    // A later change still arrives, and no second leave of bob came before
    // it.
    let (t0, _) = &topics[0];
    let dave = member(&a, t0, "dave").await;
    let (alice, _) = &mut on_a[0];
    let n = leaves_of(alice, "bob", &[("alice", 1), ("carol", 1), ("dave", 1)]).await;
    assert_eq!(n, 0, "bob left twice");
    drop(dave);

    // Nothing of the dead pod is left: no entry of bob, one holder.
    for (t, owner) in &topics {
        let key = format!("{p}presence:{{{t}}}");
        let values: Vec<String> = cluster.cmd(*owner, &["HVALS", &key]).await;
        let keys: BTreeSet<String> = values
            .iter()
            .map(|v| serde_json::from_str::<Value>(v).unwrap()["key"].to_string())
            .collect();
        assert!(!keys.contains("\"bob\""), "{key}: {keys:?}");
    }
    let holders = format!("{p}presence-holders");
    let node = cluster.owner(&holders).await;
    let pods: i64 = cluster.cmd(node, &["SCARD", &holders]).await;
    assert_eq!(pods, 1, "the killed pod left the holders set");
}
