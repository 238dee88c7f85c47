//! Presence across `gateway` processes sharing one `redis-server`: joins and
//! leaves on different pods, two tabs of one user on two pods, a pod killed
//! with SIGKILL (its presences leave within the pod timeout) or stopped with
//! SIGTERM (they leave at once), a pod started
//! again (no ghosts), a Redis restart (pods re-announce, lists converge) and
//! the Redis keys left behind.
//!
//! Needs `redis-server` on PATH.

use serde_json::json;
use std::time::Duration;
use test_support::{wait, Cluster, GatewayBuilder, GatewayProcess, Member, SETTLE};

/// Pod timeout of these tests: a killed pod's presences leave within it.
const POD_TIMEOUT_MS: u64 = 1500;

/// Pods with the `presence:*` rule.
fn pod() -> GatewayBuilder {
    GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway")).presence(POD_TIMEOUT_MS)
}

async fn member(pod: &GatewayProcess, topic: &str, user: &str, tab: u32) -> Member {
    Member::join(
        pod.client().await,
        topic,
        "1",
        json!({"user": user, "tab": tab}),
    )
    .await
}

async fn converge(members: &mut [Member], want: &[(&str, usize)], within: Duration) {
    for m in members.iter_mut() {
        m.wait_for(want, within).await;
    }
}

#[tokio::test]
async fn joins_leaves_and_two_tabs_across_three_pods() {
    let cluster = Cluster::start(pod(), 3).await;
    let t = "presence:three";
    let mut ms = vec![
        member(&cluster.pods[0], t, "alice", 1).await,
        member(&cluster.pods[1], t, "bob", 1).await,
        member(&cluster.pods[2], t, "carol", 1).await,
    ];
    converge(&mut ms, &[("alice", 1), ("bob", 1), ("carol", 1)], SETTLE).await;
    // alice's second tab, on another pod: one key, two metas.
    ms.push(member(&cluster.pods[2], t, "alice", 2).await);
    converge(&mut ms, &[("alice", 2), ("bob", 1), ("carol", 1)], SETTLE).await;
    let tabs: Vec<_> = ms[0].view.state["alice"]
        .iter()
        .map(|m| m["tab"].clone())
        .collect();
    assert!(
        tabs.contains(&json!(1)) && tabs.contains(&json!(2)),
        "{tabs:?}"
    );
    // bob leaves; alice's first tab disconnects.
    let bob = ms.remove(1);
    bob.client.close().await;
    let alice1 = ms.remove(0);
    alice1.client.close().await;
    converge(&mut ms, &[("alice", 1), ("carol", 1)], SETTLE).await;
    assert_eq!(ms[0].view.state["alice"][0]["tab"], 2);
}

#[tokio::test]
async fn a_killed_pod_leaves_within_the_timeout_and_a_restart_has_no_ghosts() {
    let mut cluster = Cluster::start(pod(), 3).await;
    let t = "presence:kill";
    let mut ms = vec![
        member(&cluster.pods[0], t, "alice", 1).await,
        member(&cluster.pods[1], t, "bob", 1).await,
        member(&cluster.pods[2], t, "carol", 1).await,
        member(&cluster.pods[2], t, "bob", 2).await,
    ];
    converge(&mut ms, &[("alice", 1), ("bob", 2), ("carol", 1)], SETTLE).await;

    // SIGKILL pod 1: no cleanup, its bob tab must leave everywhere else.
    let killed = std::time::Instant::now();
    drop(cluster.pods.remove(1));
    ms.remove(1);
    converge(
        &mut ms,
        &[("alice", 1), ("bob", 1), ("carol", 1)],
        Duration::from_millis(POD_TIMEOUT_MS * 3),
    )
    .await;
    // The bound is POD_TIMEOUT_MS; the slack is for a test machine busy with
    // other tests.
    let took = killed.elapsed();
    assert!(
        took < Duration::from_millis(POD_TIMEOUT_MS + 1000),
        "leaves took {took:?}"
    );

    // A new pod on the same Redis: its clients see the truth, no ghosts.
    let pod = cluster.add_pod().await;
    ms.push(member(&pod, t, "dave", 1).await);
    converge(
        &mut ms,
        &[("alice", 1), ("bob", 1), ("carol", 1), ("dave", 1)],
        SETTLE,
    )
    .await;

    // Nothing of the killed pod is left in Redis.
    let mut resp = cluster.conn().await;
    let pods: i64 = resp
        .cmd(&["SCARD", &cluster.channel("presence-holders")])
        .await;
    assert_eq!(pods, 3, "the killed pod was removed from the holders set");
    let entries: i64 = resp
        .cmd(&["HLEN", &cluster.channel(&format!("presence:{{{t}}}"))])
        .await;
    assert_eq!(entries, 4);
}

#[tokio::test]
async fn a_pod_stopped_with_sigterm_removes_its_presences_at_once() {
    // A pod timeout far beyond the wait: only the clean stop can explain the leave.
    let cluster = Cluster::start(pod().presence(60_000), 2).await;
    let t = "presence:term";
    let mut ms = vec![
        member(&cluster.pods[0], t, "alice", 1).await,
        member(&cluster.pods[1], t, "bob", 1).await,
    ];
    converge(&mut ms, &[("alice", 1), ("bob", 1)], SETTLE).await;
    cluster.pods[1].terminate();
    ms.remove(1);
    converge(&mut ms, &[("alice", 1)], Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_redis_restart_converges_and_reaps_a_pod_that_died_meanwhile() {
    let mut cluster = Cluster::start(pod(), 3).await;
    let t = "presence:redis";
    let mut ms = vec![
        member(&cluster.pods[0], t, "alice", 1).await,
        member(&cluster.pods[1], t, "bob", 1).await,
        member(&cluster.pods[2], t, "carol", 1).await,
    ];
    converge(&mut ms, &[("alice", 1), ("bob", 1), ("carol", 1)], SETTLE).await;
    let old_ref = ms[0].view.state["alice"][0]["phx_ref"].clone();

    // Redis loses everything; pod 2 dies while it is away.
    cluster.redis.kill();
    drop(cluster.pods.remove(2));
    ms.remove(2);
    cluster.redis.restart().await;

    converge(&mut ms, &[("alice", 1), ("bob", 1)], SETTLE * 2).await;
    // Re-announced under new refs, in Redis again.
    assert_ne!(ms[0].view.state["alice"][0]["phx_ref"], old_ref);
    let mut resp = cluster.conn().await;
    let key = cluster.channel(&format!("presence:{{{t}}}"));
    wait::until("2 presence entries in Redis", SETTLE, || {
        let (mut resp, key) = (resp.clone(), key.clone());
        async move {
            let entries: i64 = resp.cmd(&["HLEN", &key]).await;
            (entries == 2).then_some(()).ok_or(entries)
        }
    })
    .await;
    // A client joining now gets the same list.
    ms.push(member(&cluster.pods[0], t, "erin", 1).await);
    converge(&mut ms, &[("alice", 1), ("bob", 1), ("erin", 1)], SETTLE).await;
    let exists: i64 = resp
        .cmd(&["EXISTS", &cluster.channel("presence-holders")])
        .await;
    assert_eq!(exists, 1);
}
