//! Presence kept by each pod: three `gateway` processes on one
//! `redis-server` and a topic with thousands of presences. A join gets its
//! `presence_state` from its pod's own state of the topic, not from Redis
//! (the Redis commands per join are counted with `INFO commandstats`), and
//! what Redis holds that no diff announced — a presence written or removed
//! behind the pods' backs — reaches every client within the pod timeout
//! (the pods' periodic reconcile).
//!
//! Needs `redis-server` on PATH.

use futures_util::future::join_all;
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use test_support::{Cluster, GatewayBuilder, GatewayProcess, Member, SimulatedPod, SETTLE};

const TOPIC: &str = "presence:local";
/// Presences held by a simulated pod (written to Redis, no process).
const SEEDED: usize = 3000;
const JOINS: usize = 100;

fn pod(pod_timeout_ms: u64) -> GatewayBuilder {
    GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway")).presence(pod_timeout_ms)
}

fn seeds(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("seed{i}"), format!("seed-ref-{i}")))
        .collect()
}

fn want(keys: &[String]) -> Vec<(&str, usize)> {
    keys.iter().map(|k| (k.as_str(), 1)).collect()
}

/// Redis, three pods, `SEEDED` presences of a simulated pod and one
/// observer (present as `obs{i}`) per pod, every list converged.
async fn topic_with_many(pod_timeout_ms: u64) -> (Cluster, SimulatedPod, Vec<Member>, Vec<String>) {
    let cluster = Cluster::start(pod(pod_timeout_ms), 3).await;
    let mut resp = cluster.conn().await;
    let sim = SimulatedPod::start(&mut resp, &cluster.prefix, "simulated").await;
    let seeded = seeds(SEEDED);
    sim.track(&mut resp, TOPIC, &seeded).await;
    let mut keys: Vec<String> = seeded.into_iter().map(|(k, _)| k).collect();
    let mut observers = Vec::new();
    for (i, p) in cluster.pods.iter().enumerate() {
        let user = format!("obs{i}");
        observers.push(Member::join(p.client().await, TOPIC, "1", json!({"user": user})).await);
        keys.push(user);
    }
    for o in &mut observers {
        o.wait_for(&want(&keys), SETTLE).await;
    }
    (cluster, sim, observers, keys)
}

fn delta(before: &HashMap<String, i64>, after: &HashMap<String, i64>) -> Vec<(String, i64)> {
    let mut d: Vec<(String, i64)> = after
        .iter()
        .filter(|(cmd, _)| *cmd != "info")
        .map(|(cmd, n)| (cmd.clone(), n - before.get(cmd).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    d.sort();
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn a_join_lists_the_topic_from_its_pods_own_state() {
    // A long timeout: liveness, reaping and reconciling stay out of the count.
    let (cluster, _sim, mut observers, mut keys) = topic_with_many(30_000).await;
    let mut resp = cluster.conn().await;

    let before = resp.commandstats().await;
    let joiners = join_all((0..JOINS).map(|i| {
        let pod = &cluster.pods[i % cluster.pods.len()];
        async move {
            let c = pod.client().await;
            Member::join(c, TOPIC, "1", json!({"user": format!("j{i}")})).await
        }
    }))
    .await;
    let mut joiners = joiners;
    // Each joiner's presence_state lists everyone present before it.
    for j in &mut joiners {
        while !j.view.synced {
            let f = j.client.recv().await;
            j.view.apply(TOPIC, &f);
        }
        assert!(
            j.view.state.len() > SEEDED + 2,
            "presence_state has {} keys",
            j.view.state.len()
        );
    }
    let after = resp.commandstats().await;
    let d = delta(&before, &after);
    let total: i64 = d.iter().map(|(_, n)| n).sum();
    let get = |cmd: &str| d.iter().find(|(c, _)| c == cmd).map_or(0, |(_, n)| *n);
    println!(
        "{JOINS} joins into a topic of {} presences on 3 pods: {total} Redis commands \
         ({:.2} per join): {d:?}",
        SEEDED + 3,
        total as f64 / JOINS as f64
    );
    assert!(
        total as f64 / JOINS as f64 <= 3.0,
        "{total} Redis commands for {JOINS} joins: {d:?}"
    );
    // Listing stays with the pods: at most a reconcile per pod, not one per join.
    assert!(get("hgetall") <= 3, "{d:?}");

    // Every list, on every pod, ends the same.
    keys.extend((0..JOINS).map(|i| format!("j{i}")));
    for m in observers.iter_mut().chain(joiners.iter_mut()) {
        m.wait_for(&want(&keys), SETTLE).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn what_redis_holds_reaches_every_list_within_the_pod_timeout() {
    const POD_TIMEOUT_MS: u64 = 2000;
    let (cluster, sim, mut observers, mut keys) = topic_with_many(POD_TIMEOUT_MS).await;
    let mut resp = cluster.conn().await;

    // Behind the pods' backs, with no diff: a presence appears in Redis and
    // another one vanishes from it (a ghost in every pod's state).
    let start = Instant::now();
    sim.track(
        &mut resp,
        TOPIC,
        &[("appeared".into(), "appeared-ref".into())],
    )
    .await;
    sim.forget(&mut resp, TOPIC, "seed-ref-0").await;
    keys.retain(|k| k != "seed0");
    keys.push("appeared".into());
    for o in &mut observers {
        o.wait_for(&want(&keys), Duration::from_millis(POD_TIMEOUT_MS * 3))
            .await;
    }
    let took = start.elapsed();
    println!("reconciled on every pod after {took:?} (pod_timeout_ms = {POD_TIMEOUT_MS})");
    // The bound is the pod timeout; the slack is for a machine busy with
    // other tests.
    assert!(
        took < Duration::from_millis(POD_TIMEOUT_MS + 1000),
        "reconciled after {took:?}"
    );
}
