//! The cost of presence in large topics, measured against real `gateway`
//! processes and `redis-server`; prints numbers that docs/presence.md quotes.
//! Ignored by default (it takes tens of seconds and most of the machine):
//!
//! ```sh
//! cargo test --release -p gateway --test presence_scale -- --ignored --nocapture
//! ```
//!
//! 1. A join storm: `STORM` clients join one topic on two pods while an
//!    observer counts the `presence_diff` frames it receives and the Redis
//!    commands the pods issue (`INFO commandstats`).
//! 2. A pod with half of them is killed (SIGKILL): time until the observer's
//!    list lost them.
//! 3. A topic with `SEEDED` more presences, held by a simulated pod (entries
//!    written to Redis in the pods' format, with a liveness key): a client
//!    joining it gets a `presence_state` of every presence; its size and the
//!    join-to-state time are printed.
//! 4. The simulated pod's liveness key is deleted: time until the survivors
//!    published all its leaves, and in how many diffs.

use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use test_support::{Cluster, GatewayProcess, Member, PhxClient, Received, View};
use tokio::sync::watch;

const STORM: usize = 2000;
const SEEDED: usize = 10_000;
const POD_TIMEOUT_MS: u64 = 3000;
const LONG: Duration = Duration::from_secs(120);

fn delta(before: &HashMap<String, i64>, after: &HashMap<String, i64>, cmd: &str) -> i64 {
    after.get(cmd).copied().unwrap_or(0) - before.get(cmd).copied().unwrap_or(0)
}

/// Reads frames into the view until `done`, counting `presence_diff`s.
async fn watch_until(m: &mut Member, diffs: &mut usize, done: impl Fn(&View) -> bool) {
    while !done(&m.view) {
        match m.client.next_within(LONG).await {
            Some(Received::Text(f)) => {
                if f[3] == "presence_diff" {
                    *diffs += 1;
                }
                m.view.apply(&m.topic, &f);
            }
            other => panic!("observer: {other:?}, view has {} keys", m.view.state.len()),
        }
    }
}

/// A client that joins `topic` on `pod` and reads everything until stopped.
fn storm_client(
    pod: &GatewayProcess,
    topic: &str,
    user: String,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let url = pod.url("");
    let topic = topic.to_owned();
    tokio::spawn(async move {
        let c = PhxClient::connect(&url).await;
        let mut c = Member::join(c, &topic, "1", json!({"user": user}))
            .await
            .client;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                f = c.next_within(LONG) => match f {
                    Some(Received::Text(_)) => {}
                    _ => return,
                },
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement; run by hand with --ignored --nocapture"]
async fn presence_at_scale() {
    let pod = GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway")).presence(POD_TIMEOUT_MS);
    let mut cluster = Cluster::start(pod, 2).await;
    let t = "presence:big";
    let mut resp = cluster.conn().await;
    let mut obs = Member {
        client: cluster.pods[0].client().await,
        topic: t.into(),
        view: View::default(),
    };
    obs.client
        .join_with(t, "1", json!({"user": "observer"}))
        .await;
    obs.wait_for(&[("observer", 1)], LONG).await;

    // 1. Join storm.
    let before = resp.commandstats().await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..STORM {
        tasks.push(storm_client(
            &cluster.pods[i % 2],
            t,
            format!("u{i}"),
            stop_rx.clone(),
        ));
    }
    let mut diffs = 0;
    watch_until(&mut obs, &mut diffs, |v| v.state.len() == STORM + 1).await;
    let storm = start.elapsed();
    let after = resp.commandstats().await;
    println!(
        "storm: {STORM} joins on 2 pods in {storm:?}; observer got {diffs} presence_diff frames \
         ({:.1} joins per diff); Redis: {} HSET, {} HDEL, {} HGETALL, {} PUBLISH",
        STORM as f64 / diffs as f64,
        delta(&before, &after, "hset"),
        delta(&before, &after, "hdel"),
        delta(&before, &after, "hgetall"),
        delta(&before, &after, "publish"),
    );

    // 2. SIGKILL the pod with half of them.
    let killed = Instant::now();
    drop(cluster.pods.remove(1));
    let mut diffs = 0;
    watch_until(&mut obs, &mut diffs, |v| v.state.len() == STORM / 2 + 1).await;
    println!(
        "sigkill: {} presences of the killed pod left the observer's list after {:?} in {diffs} diffs \
         (pod_timeout_ms = {POD_TIMEOUT_MS})",
        STORM / 2,
        killed.elapsed()
    );
    stop_tx.send(true).unwrap();
    for task in tasks {
        let _ = task.await;
    }
    let mut diffs = 0;
    watch_until(&mut obs, &mut diffs, |v| v.state.len() == 1).await;
    println!("storm clients closed: observer back to 1 key in {diffs} diffs");

    // 3. A topic with SEEDED more presences, held by a simulated live pod.
    let fake = "simulated-pod";
    let p = &cluster.prefix;
    let topic_key = format!("{p}presence:{{{t}}}");
    let alive_key = format!("{p}presence-alive:{fake}");
    let index_key = format!("{p}presence-pod:{{{alive_key}}}");
    let _: String = resp.cmd(&["SET", &alive_key, "1", "PX", "600000"]).await;
    let _: i64 = resp
        .cmd(&["SADD", &format!("{p}presence-holders"), fake])
        .await;
    for chunk in (0..SEEDED).collect::<Vec<_>>().chunks(1000) {
        let mut hset = vec!["HSET".to_owned(), topic_key.clone()];
        let mut index = vec!["HSET".to_owned(), index_key.clone()];
        for i in chunk {
            let r = format!("seed-ref-{i}");
            let value =
                json!({"key": format!("seed{i}"), "meta": {"phx_ref": r, "online_at": "0"}});
            hset.extend([r.clone(), value.to_string()]);
            index.extend([r, t.to_owned()]);
        }
        for cmd in [hset, index] {
            let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
            let _: i64 = resp.cmd(&args).await;
        }
    }
    let total = SEEDED + 1;
    let mut joiner = Member {
        client: cluster.pods[0].client().await,
        topic: t.into(),
        view: View::default(),
    };
    let asked = Instant::now();
    joiner
        .client
        .send(json!(["1", "1", t, "phx_join", {"user": "joiner"}]))
        .await;
    let state = loop {
        let f = joiner.client.recv().await;
        if f[3] == "presence_state" {
            break f;
        }
    };
    let took = asked.elapsed();
    let bytes = state.to_string().len();
    joiner.view.apply(t, &state);
    assert!(
        joiner.view.state.len() >= total,
        "state has {} keys",
        joiner.view.state.len()
    );
    println!(
        "large topic: join to presence_state with {} presences took {took:?}; state frame {} kB",
        joiner.view.state.len(),
        bytes / 1000
    );
    let mut diffs = 0;
    watch_until(&mut joiner, &mut diffs, |v| v.state.len() == total + 1).await;
    assert_eq!(joiner.view.state.len(), total + 1);

    // 4. The simulated pod dies: survivors reap its SEEDED presences.
    let before = resp.commandstats().await;
    let died = Instant::now();
    let _: i64 = resp.cmd(&["DEL", &alive_key]).await;
    let mut diffs = 0;
    watch_until(&mut joiner, &mut diffs, |v| v.state.len() == 2).await;
    let reaped = died.elapsed();
    let after = resp.commandstats().await;
    println!(
        "reap: {SEEDED} presences of a dead pod left the list {reaped:?} after its liveness key \
         vanished, in {diffs} diff(s); {} EVAL",
        delta(&before, &after, "eval")
    );
    assert_eq!(resp.cmd::<i64>(&["HLEN", &topic_key]).await, 2);
}
