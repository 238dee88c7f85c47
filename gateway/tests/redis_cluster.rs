//! `[redis] cluster = true` against a real Redis Cluster: three masters made
//! as `redis-cli --cluster create` does, and several `gateway` processes whose
//! only link is sharded pub/sub.
//!
//! - every topic's SSUBSCRIBE lands on the shard owning its slot (checked with
//!   `PUBSUB SHARDCHANNELS` on every node), one per pod (`PUBSUB SHARDNUMSUB`),
//!   and goes away once the last client left and the linger passed;
//! - client pushes, `SPUBLISH` from `redis-cli -c` and `POST /api/broadcast`
//!   reach every client on every pod;
//! - 500 numbered SPUBLISHes arrive in order everywhere;
//! - when a channel's slot moves to another shard (resharding), the old owner
//!   drops its subscribers and the pods subscribe again at the new owner;
//! - with the whole cluster down, joins, pushes and API broadcasts fail fast
//!   while the connections stay up, and once the cluster is back the pods
//!   resubscribe and every path delivers again;
//! - with a replica per master, one master SIGKILLed stops only its own
//!   topics: the other shards' keep reaching every client on every pod while
//!   the cluster fails over (`/readyz` stays 200 and says which shards are
//!   down, `gateway_redis_shards_down` is 1), and once the replica is
//!   promoted the dead shard's topics reach everyone again without a
//!   restart.
//!
//! Self-contained: it starts its own `redis-server` processes (cluster bus on
//! port + 10000; `test_support::RedisCluster`) and `gateway` binaries, and
//! kills them on drop. Needs `redis-server` and `redis-cli` 7.0+ on PATH.

use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use test_support::redis_server::redis_cli;
use test_support::temp::prefix;
use test_support::{broadcast, scrape, wait, GatewayProcess, RedisCluster};
use test_support::{START_TIMEOUT, TIMEOUT};

/// The gateways' `linger_ms`.
const LINGER_MS: u64 = 200;
/// How long a join may take to be refused while the cluster is down: the bus
/// bounds SSUBSCRIBE and connects by 5 s, plus slack for a loaded machine.
const REFUSAL_BOUND: Duration = Duration::from_secs(12);

/// A gateway on `cluster` (sharded pub/sub) with channel prefix `prefix`.
async fn pod(cluster: &RedisCluster, prefix: &str) -> GatewayProcess {
    GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway"))
        .redis(&cluster.seeds())
        .cluster()
        .prefix(prefix)
        .linger_ms(LINGER_MS)
        .metrics_port()
        .start()
        .await
}

/// `redis-cli -c -p {port} SPUBLISH channel message`: the receiver count the
/// owning shard reports (redis-cli follows the MOVED redirect).
async fn spublish_cli(port: u16, channel: &str, message: &str) -> i64 {
    let out = redis_cli(port, &["-c", "SPUBLISH", channel, message]).await;
    out.parse()
        .unwrap_or_else(|_| panic!("SPUBLISH {channel}: {out}"))
}

/// Eight `room:*` topics, at most three per shard, so they span all three.
async fn spread_topics(cluster: &RedisCluster, prefix: &str) -> Vec<(String, usize)> {
    let mut per_shard = [0usize; 3];
    let mut topics = Vec::new();
    for i in 0.. {
        if topics.len() == 8 {
            break;
        }
        assert!(i < 1000, "cannot spread topics over the shards");
        let topic = format!("room:t{i}");
        let owner = cluster.owner(&format!("{prefix}{topic}")).await;
        if per_shard[owner] < 3 {
            per_shard[owner] += 1;
            topics.push((topic, owner));
        }
    }
    topics
}

/// Polls until `PUBSUB SHARDNUMSUB` of every topic's channel, on its owner,
/// is `want`.
async fn wait_numsub(cluster: &RedisCluster, prefix: &str, topics: &[(String, usize)], want: i64) {
    for (topic, owner) in topics {
        let channel = &format!("{prefix}{topic}");
        let what = format!("SHARDNUMSUB {channel} = {want}");
        wait::until(&what, TIMEOUT, || async move {
            let n = cluster.shard_numsub(*owner, channel).await;
            (n == want).then_some(()).ok_or(n)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_pubsub_reaches_every_client_on_every_pod() {
    let cluster = RedisCluster::start().await;
    let prefix = prefix("rc");
    let mut pods = Vec::new();
    for _ in 0..3 {
        pods.push(pod(&cluster, &prefix).await);
    }
    let topics = spread_topics(&cluster, &prefix).await;
    let last = topics.len() - 1;

    // Two clients on pod 0, one on pods 1 and 2. Every client joins every
    // topic but the last, which only the clients of pods 0 and 1 join.
    let client_pods = [0usize, 0, 1, 2];
    let mut clients = Vec::new();
    for &p in &client_pods {
        clients.push(pods[p].client().await);
    }
    // joined[c] = (topic, join_ref) of client c.
    let mut joined: Vec<Vec<(String, String)>> = vec![Vec::new(); clients.len()];
    for (ti, (topic, _)) in topics.iter().enumerate() {
        for (c, client) in clients.iter_mut().enumerate() {
            if ti == last && client_pods[c] == 2 {
                continue;
            }
            let jr = client.join_retrying(topic, &format!("j{ti}")).await;
            joined[c].push((topic.clone(), jr));
        }
    }
    let members = |ti: usize| -> Vec<usize> {
        (0..client_pods.len())
            .filter(|&c| ti != last || client_pods[c] != 2)
            .collect()
    };
    let pods_of = |ti: usize| if ti == last { 2 } else { 3 };

    // Each channel is subscribed on the shard owning its slot, and only there.
    let pattern = format!("{prefix}*");
    let mut shards_used = BTreeSet::new();
    for node in 0..3 {
        let want: BTreeSet<String> = topics
            .iter()
            .filter(|(_, owner)| *owner == node)
            .map(|(t, _)| format!("{prefix}{t}"))
            .collect();
        assert_eq!(
            cluster.shard_channels(node, &pattern).await,
            want,
            "PUBSUB SHARDCHANNELS on node {node}"
        );
        if !want.is_empty() {
            shards_used.insert(node);
        }
    }
    assert!(shards_used.len() >= 2, "shards used: {shards_used:?}");
    // One subscription per pod with subscribers, not per client.
    for (ti, (topic, owner)) in topics.iter().enumerate() {
        let channel = format!("{prefix}{topic}");
        for node in 0..3 {
            let want = if node == *owner { pods_of(ti) } else { 0 };
            assert_eq!(
                cluster.shard_numsub(node, &channel).await,
                want,
                "PUBSUB SHARDNUMSUB {channel} on node {node} (owner {owner})"
            );
        }
    }

    // A client push on pod 0, broadcast to everyone, the sender included.
    let (room_x, _) = &topics[0];
    let sender_jr = joined[0][0].1.clone();
    clients[0]
        .send(json!([sender_jr, "push1", room_x, "new_msg", {"body": "from a client"}]))
        .await;
    let want = broadcast(room_x, "new_msg", json!({"body": "from a client"}));
    let ok = json!([sender_jr, "push1", room_x, "phx_reply", {"status": "ok", "response": {}}]);
    // The sender's reply and its copy of the broadcast come in either order.
    let mut sender = vec![clients[0].recv().await, clients[0].recv().await];
    sender.sort_by_key(|f| f[3].to_string());
    assert_eq!(sender, vec![want.clone(), ok]);
    for c in &mut clients[1..] {
        c.expect(want.clone()).await;
    }

    // SPUBLISH from redis-cli in cluster mode, through each node in turn (so
    // most go through a MOVED redirect), to every topic.
    for (ti, (topic, _)) in topics.iter().enumerate() {
        let receivers = spublish_cli(
            cluster.port(ti % 3),
            &format!("{prefix}{topic}"),
            r#"{"event":"new_msg","payload":{"body":"hi"}}"#,
        )
        .await;
        assert_eq!(receivers, pods_of(ti), "one delivery per pod for {topic}");
        for c in members(ti) {
            clients[c]
                .expect(json!([null, null, topic, "new_msg", {"body": "hi"}]))
                .await;
        }
    }

    // The HTTP API, on every pod in turn.
    for (p, pod) in pods.iter().enumerate() {
        let (status, body) = pod
            .api_broadcast(room_x, "new_msg", json!({"body": "api", "pod": p}))
            .await;
        assert_eq!((status, body.as_str()), (200, r#"{"ok":true}"#));
        for c in &mut clients {
            c.expect(broadcast(
                room_x,
                "new_msg",
                json!({"body": "api", "pod": p}),
            ))
            .await;
        }
    }

    // Ordering: 500 numbered SPUBLISHes from one publisher, read by every
    // client concurrently.
    const N: i64 = 500;
    let (room_y, _) = &topics[1];
    let channel_y = format!("{prefix}{room_y}");
    let publisher = async {
        let client = redis::cluster::ClusterClient::new(cluster.seed_urls()).unwrap();
        let mut conn = tokio::time::timeout(TIMEOUT, client.get_async_connection())
            .await
            .unwrap()
            .unwrap();
        for n in 0..N {
            let payload = json!({"event": "new_msg", "payload": {"n": n}}).to_string();
            let receivers: i64 = tokio::time::timeout(
                TIMEOUT,
                redis::cmd("SPUBLISH")
                    .arg(&channel_y)
                    .arg(payload)
                    .query_async(&mut conn),
            )
            .await
            .unwrap()
            .unwrap();
            assert_eq!(receivers, 3, "SPUBLISH #{n}");
        }
    };
    let readers = futures_util::future::join_all(clients.iter_mut().map(|c| async move {
        for n in 0..N {
            c.expect(broadcast(room_y, "new_msg", json!({"n": n})))
                .await;
        }
    }));
    tokio::join!(publisher, readers);
    for (c, client) in clients.iter_mut().enumerate() {
        client.heartbeat(&format!("hb-order-{c}")).await; // nothing else came
    }

    // Leaves: a pod keeps a channel while any of its clients is in it and
    // drops it once the last one left and the linger passed. First client 0
    // (pod 0 keeps client 1), then client 3 (pod 2's only client).
    clients[0].leave_all(&joined[0]).await;
    clients[3].leave_all(&joined[3]).await;
    wait_numsub(&cluster, &prefix, &topics, 2).await;
    // Had pod 0 dropped its subscriptions, it would have done so before pod
    // 2 (its linger started first), and client 1 would miss these.
    for (ti, (topic, _)) in topics.iter().enumerate() {
        let receivers = spublish_cli(
            cluster.port((ti + 1) % 3),
            &format!("{prefix}{topic}"),
            r#"{"event":"new_msg","payload":{"body":"still here"}}"#,
        )
        .await;
        assert_eq!(receivers, 2, "{topic}: pods 0 and 1");
        for c in [1, 2] {
            clients[c]
                .expect(broadcast(topic, "new_msg", json!({"body": "still here"})))
                .await;
        }
    }
    clients[1].leave_all(&joined[1]).await;
    wait_numsub(&cluster, &prefix, &topics, 1).await;
    clients[2].leave_all(&joined[2]).await;
    wait_numsub(&cluster, &prefix, &topics, 0).await;
    for node in 0..3 {
        assert_eq!(
            cluster.shard_channels(node, &pattern).await,
            BTreeSet::new(),
            "node {node}"
        );
    }
    for (c, client) in clients.iter_mut().enumerate() {
        client.heartbeat(&format!("hb-end-{c}")).await; // nothing else came
    }
    for pod in &mut pods {
        assert!(pod.alive());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_whose_slot_moves_is_subscribed_again_on_its_new_shard() {
    let cluster = RedisCluster::start().await;
    let prefix = prefix("rc-move");
    let pods = [pod(&cluster, &prefix).await, pod(&cluster, &prefix).await];
    let mut clients = [pods[0].client().await, pods[1].client().await];
    let mut joined = Vec::new();
    for c in &mut clients {
        joined.push(vec![(
            "room:moving".to_owned(),
            c.join_retrying("room:moving", "m").await,
        )]);
    }
    let channel = format!("{prefix}room:moving");
    let from = cluster.owner(&channel).await;
    let to = (from + 1) % 3;
    assert_eq!(cluster.shard_numsub(from, &channel).await, 2);

    // The old owner drops its subscribers (a `sunsubscribe` push to each
    // pod); the pods subscribe again, now at the new owner.
    cluster.move_slot(&channel, from, to).await;
    let topics = [("room:moving".to_owned(), to)];
    wait_numsub(&cluster, &prefix, &topics, 2).await;
    assert_eq!(cluster.shard_numsub(from, &channel).await, 0);
    let receivers = spublish_cli(
        cluster.port(from),
        &channel,
        r#"{"event":"new_msg","payload":{"body":"moved"}}"#,
    )
    .await;
    assert_eq!(receivers, 2);
    for c in &mut clients {
        c.expect(broadcast(
            "room:moving",
            "new_msg",
            json!({"body": "moved"}),
        ))
        .await;
    }
    // Client pushes still go round, and leaving unsubscribes at the new owner.
    let jr = &joined[0][0].1;
    clients[0]
        .send(json!([jr, "p", "room:moving", "new_msg", {"body": "push"}]))
        .await;
    let want = broadcast("room:moving", "new_msg", json!({"body": "push"}));
    let ok = json!([jr, "p", "room:moving", "phx_reply", {"status": "ok", "response": {}}]);
    let mut sender = vec![clients[0].recv().await, clients[0].recv().await];
    sender.sort_by_key(|f| f[3].to_string());
    assert_eq!(sender, vec![want.clone(), ok]);
    clients[1].expect(want).await;
    for (c, client) in clients.iter_mut().enumerate() {
        client.leave_all(&joined[c]).await;
    }
    wait_numsub(&cluster, &prefix, &topics, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cluster_down_joins_and_publishes_fail_fast_and_connections_stay_up() {
    let mut cluster = RedisCluster::start().await;
    let prefix = prefix("rc-down");
    let pods = [pod(&cluster, &prefix).await, pod(&cluster, &prefix).await];
    let mut clients = [pods[0].client().await, pods[1].client().await];
    let mut before_jr = Vec::new();
    for c in &mut clients {
        before_jr.push(c.join_retrying("room:before", "b").await);
    }
    let channel = format!("{prefix}room:before");
    let owner = cluster.owner(&channel).await;
    assert_eq!(cluster.shard_numsub(owner, &channel).await, 2);
    // Both pods publish once, so their publishing connections are open when
    // the cluster goes away.
    for (p, pod) in pods.iter().enumerate() {
        let (status, _) = pod
            .api_broadcast("room:before", "new_msg", json!({"before": p}))
            .await;
        assert_eq!(status, 200);
        for c in &mut clients {
            c.expect(broadcast("room:before", "new_msg", json!({"before": p})))
                .await;
        }
    }

    cluster.kill_all();

    for (i, c) in clients.iter_mut().enumerate() {
        // A join is refused, not left hanging.
        let jr = format!("d{i}");
        c.send(json!([jr, jr, "room:during", "phx_join", {}])).await;
        assert_eq!(
            c.recv_within(REFUSAL_BOUND).await,
            json!([jr, jr, "room:during", "phx_reply",
                {"status": "error", "response": {"reason": "subscription failed, try again"}}])
        );
        // So is a push to a joined channel.
        let jr = &before_jr[i];
        c.send(json!([jr, "push-down", "room:before", "new_msg", {"body": "lost"}]))
            .await;
        assert_eq!(
            c.recv_within(REFUSAL_BOUND).await,
            json!([jr, "push-down", "room:before", "phx_reply",
                {"status": "error", "response": {"reason": "broadcast failed"}}])
        );
        // The connection itself is fine.
        c.heartbeat(&format!("hb-down-{i}")).await;
    }
    for pod in &pods {
        let (status, body) = pod
            .api_broadcast("room:before", "new_msg", json!({"body": "lost"}))
            .await;
        assert_eq!(status, 503, "{body}");
    }

    // The cluster comes back (same ports, same nodes-P.conf): the pods
    // reconnect and resubscribe room:before, joins succeed again, and every
    // path delivers again.
    cluster.restart_all().await;
    let owner = cluster.owner(&channel).await;
    let what = "room:before resubscribed by both pods";
    wait::until(what, START_TIMEOUT, || async {
        let n = cluster.shard_numsub(owner, &channel).await;
        (n == 2).then_some(()).ok_or(n)
    })
    .await;
    for (i, c) in clients.iter_mut().enumerate() {
        c.join_retrying("room:after", &format!("a{i}")).await;
    }
    let receivers = spublish_cli(
        cluster.port(2),
        &channel,
        r#"{"event":"new_msg","payload":{"body":"back"}}"#,
    )
    .await;
    assert_eq!(receivers, 2);
    for c in &mut clients {
        c.expect(broadcast("room:before", "new_msg", json!({"body": "back"})))
            .await;
    }
    for (p, pod) in pods.iter().enumerate() {
        let (status, body) = pod
            .api_broadcast("room:before", "new_msg", json!({"after": p}))
            .await;
        assert_eq!((status, body.as_str()), (200, r#"{"ok":true}"#));
        for c in &mut clients {
            c.expect(broadcast("room:before", "new_msg", json!({"after": p})))
                .await;
        }
    }
    let jr = &before_jr[1];
    clients[1]
        .send(json!([jr, "push-up", "room:before", "new_msg", {"body": "up"}]))
        .await;
    let want = broadcast("room:before", "new_msg", json!({"body": "up"}));
    let ok = json!([jr, "push-up", "room:before", "phx_reply", {"status": "ok", "response": {}}]);
    let mut sender = vec![clients[1].recv().await, clients[1].recv().await];
    sender.sort_by_key(|f| f[3].to_string());
    assert_eq!(sender, vec![want.clone(), ok]);
    clients[0].expect(want).await;
}

/// The cluster's node timeout in the failover test: a master silent for this
/// long is failed over to its replica (Redis's default is 15 s).
const NODE_TIMEOUT_MS: u64 = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_master_stops_only_its_topics_which_resume_after_failover() {
    let mut cluster = RedisCluster::start_with_replicas(NODE_TIMEOUT_MS).await;
    let prefix = prefix("rc-kill");
    let pods = [pod(&cluster, &prefix).await, pod(&cluster, &prefix).await];
    let mut clients = [pods[0].client().await, pods[1].client().await];
    let topics = spread_topics(&cluster, &prefix).await;
    for (c, client) in clients.iter_mut().enumerate() {
        for (ti, (topic, _)) in topics.iter().enumerate() {
            client.join_retrying(topic, &format!("j{c}-{ti}")).await;
        }
    }
    wait_numsub(&cluster, &prefix, &topics, 2).await;
    for pod in &pods {
        scrape::wait_for(pod.metrics_addr(), "gateway_redis_shards", &[], 3.0).await;
    }

    let dead = 1;
    let replica = cluster.replica_of(dead).await;
    cluster.kill(dead);
    for pod in &pods {
        scrape::wait_for(pod.metrics_addr(), "gateway_redis_shards_down", &[], 1.0).await;
        let (status, body) = pod.get("/readyz").await.expect("/readyz answers");
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("redis: connected, 1 of 3 cluster shards down"),
            "{body}"
        );
    }
    // The live shards' topics reach every client during the failover.
    let mut n = 0;
    for (topic, owner) in topics.iter().filter(|(_, o)| *o != dead) {
        n += 1;
        let channel = format!("{prefix}{topic}");
        let msg = json!({"event": "new_msg", "payload": {"n": n}}).to_string();
        let receivers: i64 = cluster.cmd(*owner, &["SPUBLISH", &channel, &msg]).await;
        assert_eq!(receivers, 2, "{topic}");
        for c in &mut clients {
            c.expect(broadcast(topic, "new_msg", json!({"n": n}))).await;
        }
    }
    // So does an API broadcast to one of them, published by a pod.
    let (live, _) = topics.iter().find(|(_, o)| *o != dead).unwrap();
    let (status, body) = pods[0]
        .api_broadcast(live, "new_msg", json!({"api": "during"}))
        .await;
    assert_eq!((status, body.as_str()), (200, r#"{"ok":true}"#));
    for c in &mut clients {
        c.expect(broadcast(live, "new_msg", json!({"api": "during"})))
            .await;
    }
    assert!(
        !cluster.is_master(replica).await,
        "delivered before the failover"
    );

    // The replica takes over: both pods subscribe the dead shard's topics
    // there, and every topic reaches every client again.
    cluster.wait_master(replica).await;
    let moved: Vec<(String, usize)> = topics
        .iter()
        .map(|(t, o)| (t.clone(), if *o == dead { replica } else { *o }))
        .collect();
    wait_numsub(&cluster, &prefix, &moved, 2).await;
    for (topic, owner) in &moved {
        n += 1;
        let channel = format!("{prefix}{topic}");
        let msg = json!({"event": "new_msg", "payload": {"n": n}}).to_string();
        let receivers: i64 = cluster.cmd(*owner, &["SPUBLISH", &channel, &msg]).await;
        assert_eq!(receivers, 2, "{topic}");
        for c in &mut clients {
            c.expect(broadcast(topic, "new_msg", json!({"n": n}))).await;
        }
    }
    for pod in &pods {
        scrape::wait_for(pod.metrics_addr(), "gateway_redis_shards_down", &[], 0.0).await;
        let (status, body) = pod.get("/readyz").await.expect("/readyz answers");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("redis: connected to cluster "), "{body}");
    }
    for (c, client) in clients.iter_mut().enumerate() {
        client.heartbeat(&format!("hb-{c}")).await; // nothing else came
    }
}
