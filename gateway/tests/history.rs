//! History and recovery against real `redis-server` processes and `gateway`
//! binaries (docs/history.md):
//!
//! - every publisher (a client push under the rule, `POST /api/broadcast`,
//!   `FCALL gateway_publish` as a backend runs it) gives the topic's
//!   messages consecutive positions in the ref slot, and a plain `PUBLISH`
//!   still delivers, with a null ref;
//! - a join with `since` gets what it missed, in order, then live messages;
//!   `last` replays the newest kept; an idempotency key publishes once;
//! - what cannot be recovered whole — another epoch, trimmed past `size`,
//!   expired past `ttl`, more than `max_recover`, a position beyond the
//!   top, a Redis restarted without persistence — answers
//!   `recovered: false` and replays nothing;
//! - malformed history params get a clear join error, `last` is clamped,
//!   and a topic flooded beyond `size` stays bounded in Redis;
//! - the seam: 100 clients rejoining with positions while messages are
//!   published at ~1,000/s each see strictly consecutive offsets;
//! - the in-memory broker (no Redis) behaves the same.
//!
//! Needs `redis-server` on PATH.

use gateway::config::{Config, HistoryRule};
use serde_json::{json, Value};
use std::time::Duration;
use test_support::{wait, GatewayBuilder, GatewayProcess, PhxClient, RedisConn, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_gateway");

/// `hist:*`: public, clients push `new_msg` to everyone, history kept.
fn with_history(c: &mut Config, size: usize, ttl: u64, max_recover: Option<usize>) {
    let mut rule = c.channels[0].clone();
    rule.pattern = "hist:*".into();
    rule.history = Some(HistoryRule {
        size,
        ttl,
        max_recover,
    });
    c.channels.insert(0, rule);
}

fn pod(redis: Option<&RedisServer>, size: usize, ttl: u64, max: Option<usize>) -> GatewayBuilder {
    let b = GatewayProcess::builder(BIN).configure(|c| with_history(c, size, ttl, max));
    match redis {
        Some(r) => b.redis(&r.url()),
        None => b,
    }
}

/// Joins with `params`; returns the reply's `history` object.
async fn join(c: &mut PhxClient, topic: &str, jr: &str, params: Value) -> Value {
    let reply = c.join_with(topic, jr, params).await;
    reply[4]["response"]["history"].clone()
}

/// Joins with no params, retrying (bounded) while the pod's Redis bus comes
/// up; returns the join_ref and the reply's `history`.
async fn join_first(c: &mut PhxClient, topic: &str) -> (String, Value) {
    for attempt in 0.. {
        let jr = format!("first{attempt}");
        c.send(json!([jr, jr, topic, "phx_join", {}])).await;
        let reply = c.recv().await;
        if reply[4]["status"] == "ok" {
            return (jr, reply[4]["response"]["history"].clone());
        }
        assert!(attempt < 500, "join {topic}: still refused: {reply}");
        tokio::time::sleep(wait::POLL).await;
    }
    unreachable!()
}

/// The next broadcast of `event`: (ref, payload).
async fn next_msg(c: &mut PhxClient) -> (Value, Value) {
    loop {
        let f = c.recv().await;
        if f[3] == "new_msg" {
            assert_eq!(f[0], Value::Null, "{f}");
            return (f[1].clone(), f[4].clone());
        }
        assert_eq!(f[3], "phx_reply", "unexpected {f}");
    }
}

fn offset(pos: &Value) -> u64 {
    let s = pos.as_str().unwrap_or_else(|| panic!("no position: {pos}"));
    s.rsplit_once(':').unwrap().1.parse().unwrap()
}

fn epoch(pos: &Value) -> String {
    pos.as_str().unwrap().rsplit_once(':').unwrap().0.to_owned()
}

fn at(epoch: &str, offset: u64) -> String {
    format!("{epoch}:{offset}")
}

/// `FCALL gateway_publish 1 {channel} {envelope}`: the position.
async fn fcall(conn: &mut RedisConn, channel: &str, n: u64) -> String {
    let env = json!({"event": "new_msg", "payload": {"n": n}}).to_string();
    let (pos, _): (String, i64) = conn
        .cmd(&["FCALL", "gateway_publish", "1", channel, &env])
        .await;
    pos
}

#[tokio::test]
async fn every_publisher_gets_consecutive_positions_and_a_rejoin_recovers_the_gap() {
    let redis = RedisServer::start().await;
    let pod = pod(Some(&redis), 100, 300, None).start().await;
    let topic = "hist:every";
    let channel = pod.channel(topic);
    let mut a = pod.client().await;
    let (_, h) = join_first(&mut a, topic).await;
    assert_eq!(h["recovered"], false, "{h}");
    let e = epoch(&h["position"]);
    assert_eq!(offset(&h["position"]), 0);

    // A client push, the API, a backend's FCALL, and a plain PUBLISH.
    let mut b = pod.client().await;
    let jb = b.join_retrying(topic, "b").await;
    b.send(json!([jb, "p1", topic, "new_msg", {"n": 1}])).await;
    let (status, body) = pod.api_broadcast(topic, "new_msg", json!({"n": 2})).await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let mut conn = redis.conn().await;
    let third = fcall(&mut conn, &channel, 3).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next_msg(&mut a).await);
    }
    seen.sort_by_key(|(_, p)| p["n"].as_u64());
    let offsets: Vec<u64> = seen.iter().map(|(r, _)| offset(r)).collect();
    let mut sorted = offsets.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [1, 2, 3]);
    assert_eq!(body["position"], seen[1].0, "the API answers the position");
    assert_eq!(json!(third), seen[2].0);
    assert!(seen.iter().all(|(r, _)| epoch(r) == e));
    conn.publish(&channel, r#"{"event":"new_msg","payload":{"n":"plain"}}"#)
        .await;
    let (r, p) = next_msg(&mut a).await;
    assert_eq!((r, p), (Value::Null, json!({"n": "plain"})));

    // Away: five more, then back with the last position seen.
    a.close().await;
    for n in 4..=8 {
        fcall(&mut conn, &channel, n).await;
    }
    let mut a = pod.client().await;
    let h = join(&mut a, topic, "r", json!({"history": {"since": at(&e, 3)}})).await;
    assert_eq!(h, json!({"recovered": true, "position": at(&e, 8)}));
    for n in 4..=8 {
        let (r, p) = next_msg(&mut a).await;
        assert_eq!((r, p), (json!(at(&e, n)), json!({"n": n})));
    }
    fcall(&mut conn, &channel, 9).await;
    assert_eq!(next_msg(&mut a).await.0, json!(at(&e, 9)));

    // The newest kept, for a first join.
    let mut c = pod.client().await;
    join(&mut c, topic, "l", json!({"history": {"last": 2}})).await;
    assert_eq!(next_msg(&mut c).await.0, json!(at(&e, 8)));
    assert_eq!(next_msg(&mut c).await.0, json!(at(&e, 9)));
}

#[tokio::test]
async fn an_idempotency_key_publishes_once() {
    let redis = RedisServer::start().await;
    let pod = pod(Some(&redis), 100, 300, None).start().await;
    let topic = "hist:idem";
    let mut a = pod.client().await;
    let (_, h) = join_first(&mut a, topic).await;
    let e = epoch(&h["position"]);
    let msg = |n: u64| json!({"topic": topic, "event": "new_msg", "payload": {"n": n}, "idempotency_key": "order-17"});
    let (s1, b1) = pod.api_post(msg(1)).await;
    let (s2, b2) = pod.api_post(msg(1)).await;
    assert_eq!((s1, s2), (200, 200), "{b1} {b2}");
    assert_eq!(b1, b2, "the retry answers the first position");
    let (s, b) = pod
        .api_post(
            json!({"topic": topic, "event": "new_msg", "payload": {"n": 2}, "idempotency_key": ""}),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    pod.api_broadcast(topic, "new_msg", json!({"n": 2})).await;
    assert_eq!(next_msg(&mut a).await, (json!(at(&e, 1)), json!({"n": 1})));
    assert_eq!(next_msg(&mut a).await, (json!(at(&e, 2)), json!({"n": 2})));
}

/// Joins with `since` and checks the answer is `recovered: false` with the
/// topic's position, and that nothing was replayed: the next frame is the
/// live message published after the join.
async fn not_recovered(
    pod: &GatewayProcess,
    conn: &mut RedisConn,
    topic: &str,
    since: &str,
) -> Value {
    let mut c = pod.client().await;
    let h = join(&mut c, topic, "n", json!({"history": {"since": since}})).await;
    assert_eq!(h["recovered"], false, "since {since}: {h}");
    let live = fcall(conn, &pod.channel(topic), 1000).await;
    assert_eq!(
        next_msg(&mut c).await.0,
        json!(live),
        "since {since}: replayed something"
    );
    h
}

#[tokio::test]
async fn what_cannot_be_recovered_whole_is_not_replayed_at_all() {
    let mut redis = RedisServer::start().await;
    let pod = pod(Some(&redis), 5, 2, Some(3)).start().await;
    let mut conn = redis.conn().await;
    let mut a = pod.client().await;

    // Trimmed: 8 messages, 5 kept; from 1 on, 2 and 3 are gone.
    let topic = "hist:trimmed";
    let (_, h) = join_first(&mut a, topic).await;
    let e = epoch(&h["position"]);
    for n in 1..=8 {
        fcall(&mut conn, &pod.channel(topic), n).await;
    }
    let xlen: i64 = conn
        .cmd(&["XLEN", &format!("{{{}}}:s", pod.channel(topic))])
        .await;
    assert_eq!(xlen, 5);
    not_recovered(&pod, &mut conn, topic, &at(&e, 1)).await;
    // More than max_recover (3) missed, though all kept.
    not_recovered(&pod, &mut conn, topic, &at(&e, 4)).await;
    // Another epoch, and beyond the top.
    not_recovered(&pod, &mut conn, topic, "someother:5").await;
    not_recovered(&pod, &mut conn, topic, &at(&e, 99)).await;

    // Expired: the messages go `ttl` (2 s) after the last one.
    let topic = "hist:expired";
    let (_, h) = join_first(&mut a, topic).await;
    let e = epoch(&h["position"]);
    fcall(&mut conn, &pod.channel(topic), 1).await;
    let stream = format!("{{{}}}:s", pod.channel(topic));
    wait::until("the stream to expire", Duration::from_secs(10), || {
        let stream = stream.clone();
        let url = redis.url();
        async move {
            let mut conn = RedisConn::open(&url).await;
            let n: i64 = conn.cmd(&["EXISTS", &stream]).await;
            if n == 0 {
                Ok(())
            } else {
                Err("still there")
            }
        }
    })
    .await;
    let h = not_recovered(&pod, &mut conn, topic, &at(&e, 0)).await;
    assert_eq!(epoch(&h["position"]), e, "the epoch outlives the messages");
    // Nothing missed is still a whole recovery, however old.
    let mut c = pod.client().await;
    let top = at(&e, offset(&h["position"]) + 1);
    let h = join(&mut c, topic, "w", json!({"history": {"since": top}})).await;
    assert_eq!(h, json!({"recovered": true, "position": top}));

    // Redis restarted without persistence: a new epoch.
    redis.restart().await;
    // Joins are refused until the pod's subscriber is back: retry, bounded.
    let h = wait::until("a join after the restart", test_support::SETTLE, || async {
        let mut c = pod.client().await;
        c.send(json!(["x", "x", topic, "phx_join", {"history": {"since": top}}]))
            .await;
        let reply = c.recv().await;
        if reply[4]["status"] == "ok" {
            Ok(reply[4]["response"]["history"].clone())
        } else {
            Err(reply)
        }
    })
    .await;
    assert_eq!(h["recovered"], false, "{h}");
    assert_ne!(epoch(&h["position"]), e, "a new epoch after the restart");
}

#[tokio::test]
async fn malformed_history_params_get_a_clear_join_error() {
    let redis = RedisServer::start().await;
    let pod = pod(Some(&redis), 10, 300, None).start().await;
    let topic = "hist:bad";
    let mut c = pod.client().await;
    c.join_retrying(topic, "first").await;
    for (i, (params, reason)) in [
        (
            json!({"history": {"since": 3}}),
            "history.since must be a string",
        ),
        (
            json!({"history": {"since": "nocolon"}}),
            "history.since must be a position",
        ),
        (
            json!({"history": {"since": "e:-1"}}),
            "history.since must be a position",
        ),
        (
            json!({"history": {"since": "e:1.5"}}),
            "history.since must be a position",
        ),
        (
            json!({"history": {"last": "5"}}),
            "history.last must be a non-negative integer",
        ),
        (
            json!({"history": {"last": -1}}),
            "history.last must be a non-negative integer",
        ),
        (json!({"history": [1]}), "history must be an object"),
    ]
    .into_iter()
    .enumerate()
    {
        let jr = format!("bad{i}");
        c.send(json!([jr, jr, topic, "phx_join", params])).await;
        let mut reply = c.recv().await;
        if reply[3] == "phx_close" {
            // The first join, replaced by this one (as Phoenix does).
            reply = c.recv().await;
        }
        assert_eq!(reply[4]["status"], "error", "{params}: {reply}");
        let got = reply[4]["response"]["reason"].as_str().unwrap_or_default();
        assert!(got.starts_with(reason), "{params}: {reply}");
    }
    // A huge last is clamped to max_recover (= size, 10): 12 published, 10 replayed.
    let mut conn = redis.conn().await;
    for n in 1..=12 {
        fcall(&mut conn, &pod.channel(topic), n).await;
    }
    let mut d = pod.client().await;
    join(
        &mut d,
        topic,
        "big",
        json!({"history": {"last": 1_000_000_000u64}}),
    )
    .await;
    for n in 3..=12 {
        assert_eq!(offset(&next_msg(&mut d).await.0), n);
    }
    // The pod is fine: the first client is still joined and receives.
    let live = fcall(&mut conn, &pod.channel(topic), 13).await;
    assert_eq!(next_msg(&mut d).await.0, json!(live));
}

#[tokio::test]
async fn a_topic_flooded_beyond_size_stays_bounded_in_redis() {
    let redis = RedisServer::start().await;
    let pod = pod(Some(&redis), 10, 300, None).start().await;
    let topic = "hist:flood";
    let mut c = pod.client().await;
    let jr = c.join_retrying(topic, "f").await;
    let payload = "x".repeat(1000);
    for n in 0..500 {
        c.send(json!([jr, format!("p{n}"), topic, "new_msg", {"n": n, "pad": payload}]))
            .await;
    }
    // Every push answered and broadcast back; then count what Redis keeps.
    let mut replies = 0;
    let mut msgs = 0;
    while replies < 500 || msgs < 500 {
        let f = c.recv().await;
        match f[3].as_str() {
            Some("phx_reply") => replies += 1,
            Some("new_msg") => msgs += 1,
            _ => panic!("{f}"),
        }
    }
    let mut conn = redis.conn().await;
    let stream = format!("{{{}}}:s", pod.channel(topic));
    let xlen: i64 = conn.cmd(&["XLEN", &stream]).await;
    assert_eq!(xlen, 10);
    let bytes: i64 = conn.cmd(&["MEMORY", "USAGE", &stream]).await;
    assert!(bytes < 64 * 1024, "the stream holds {bytes} bytes");
}

#[tokio::test]
async fn without_redis_the_in_memory_broker_keeps_history_the_same_way() {
    let pod = pod(None, 5, 300, None).start().await;
    let topic = "hist:memory";
    let mut a = pod.client().await;
    let h = join(&mut a, topic, "a", json!({})).await;
    let e = epoch(&h["position"]);
    for n in 1..=3 {
        pod.api_broadcast(topic, "new_msg", json!({"n": n})).await;
        assert_eq!(next_msg(&mut a).await.0, json!(at(&e, n)));
    }
    a.close().await;
    for n in 4..=6 {
        pod.api_broadcast(topic, "new_msg", json!({"n": n})).await;
    }
    let mut a = pod.client().await;
    let h = join(&mut a, topic, "r", json!({"history": {"since": at(&e, 3)}})).await;
    assert_eq!(h, json!({"recovered": true, "position": at(&e, 6)}));
    for n in 4..=6 {
        assert_eq!(next_msg(&mut a).await, (json!(at(&e, n)), json!({"n": n})));
    }
    let mut b = pod.client().await;
    let h = join(&mut b, topic, "t", json!({"history": {"since": at(&e, 0)}})).await;
    assert_eq!(h["recovered"], false, "1 was trimmed (size 5)");
}

/// The seam: while a publisher sends ~1,000 messages/s, 100 clients each
/// leave and rejoin with the last position they saw, twice; every client
/// sees every offset after its first join exactly once, in order.
#[tokio::test]
async fn rejoining_under_load_sees_every_offset_once_in_order() {
    const CLIENTS: usize = 100;
    const MESSAGES: u64 = 3000;
    let redis = RedisServer::start().await;
    // Room for a whole replay however late a loaded machine lets a client
    // back (a replay may take half the outbound queue).
    let pod = pod(Some(&redis), 10_000, 300, None)
        .configure(|c| c.sockets[0].outbound_queue = 3 * MESSAGES as usize)
        .start()
        .await;
    let topic = "hist:seam";
    let mut first = pod.client().await;
    let (_, h) = join_first(&mut first, topic).await;
    let e = epoch(&h["position"]);
    drop(first);

    let channel = pod.channel(topic);
    let url = redis.url();
    let publisher = tokio::spawn(async move {
        let mut conn = RedisConn::open(&url).await;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut n = 0;
        while n < MESSAGES {
            tick.tick().await;
            for _ in 0..10 {
                n += 1;
                fcall(&mut conn, &channel, n).await;
            }
        }
    });

    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let url = pod.url("/socket/websocket?vsn=2.0.0");
        let topic = topic.to_owned();
        let e = e.clone();
        clients.push(tokio::spawn(async move {
            let mut seen: Vec<u64> = Vec::new();
            let mut c = PhxClient::connect(&url).await;
            let h = join(&mut c, &topic, "a", json!({})).await;
            let mut last = offset(&h["position"]);
            let start = last;
            // Two rejoins, after a few messages each, at different times.
            for round in 0..3 {
                let take = 5 + (i * 7 + round * 13) % 40;
                for _ in 0..take {
                    let (r, _) = next_msg(&mut c).await;
                    assert_eq!(epoch(&r), e);
                    last = offset(&r);
                    seen.push(last);
                    if last == MESSAGES {
                        break;
                    }
                }
                if round < 2 && last < MESSAGES {
                    c.close().await;
                    c = PhxClient::connect(&url).await;
                    let h = join(
                        &mut c,
                        &topic,
                        "r",
                        json!({"history": {"since": at(&e, last)}}),
                    )
                    .await;
                    assert_eq!(h["recovered"], true, "client {i} since {last}: {h}");
                }
            }
            (start, seen)
        }));
    }
    publisher.await.unwrap();
    for (i, c) in clients.into_iter().enumerate() {
        let (start, seen) = c.await.unwrap();
        let expected: Vec<u64> = (start + 1..start + 1 + seen.len() as u64).collect();
        assert_eq!(
            seen, expected,
            "client {i}: offsets not consecutive from {start}"
        );
    }
}

/// On a Redis Cluster of three masters: the functions are loaded on every
/// master, a topic's stream and metadata sit in its channel's slot (so the
/// functions touch one shard and SPUBLISH from there), and a rejoin
/// recovers what was published while away, from a backend's `FCALL` too.
#[tokio::test]
async fn on_a_redis_cluster_a_topics_keys_share_its_slot_and_recovery_works() {
    let cluster = test_support::RedisCluster::start().await;
    let pod = GatewayProcess::builder(BIN)
        .redis(&cluster.seeds())
        .cluster()
        .configure(|c| with_history(c, 100, 300, None))
        .start()
        .await;
    let topic = "hist:cluster";
    let channel = pod.channel(topic);
    let mut a = pod.client().await;
    let (_, h) = join_first(&mut a, topic).await;
    let e = epoch(&h["position"]);
    for n in 1..=2 {
        pod.api_broadcast(topic, "new_msg", json!({"n": n})).await;
        assert_eq!(next_msg(&mut a).await.0, json!(at(&e, n)));
    }
    a.close().await;
    pod.api_broadcast(topic, "new_msg", json!({"n": 3})).await;
    // A backend, as docs/history.md shows it: redis-cli follows MOVED.
    let env = json!({"event": "new_msg", "payload": {"n": 4}}).to_string();
    let out = test_support::redis_server::redis_cli(
        cluster.port(0),
        &["-c", "FCALL", "gateway_publish", "1", &channel, &env],
    )
    .await;
    assert!(out.starts_with(&at(&e, 4)), "FCALL answered {out:?}");
    let mut a = pod.client().await;
    let h = join(&mut a, topic, "r", json!({"history": {"since": at(&e, 2)}})).await;
    assert_eq!(h, json!({"recovered": true, "position": at(&e, 4)}));
    for n in 3..=4 {
        assert_eq!(next_msg(&mut a).await, (json!(at(&e, n)), json!({"n": n})));
    }
    let want: i64 = cluster.cmd(0, &["CLUSTER", "KEYSLOT", &channel]).await;
    for suffix in ["m", "s"] {
        let key = format!("{{{channel}}}:{suffix}");
        let got: i64 = cluster.cmd(0, &["CLUSTER", "KEYSLOT", &key]).await;
        assert_eq!(got, want, "{key}");
    }
    let owner = cluster.owner(&channel).await;
    let n: i64 = cluster
        .cmd(
            owner,
            &[
                "EXISTS",
                &format!("{{{channel}}}:m"),
                &format!("{{{channel}}}:s"),
            ],
        )
        .await;
    assert_eq!(n, 2, "both keys on the shard that owns the channel");
}

/// The pod's Redis subscriber connection is cut while messages are kept:
/// once it is back, the next message shows the gap, its channel ends with
/// `phx_error` (counted in `gateway_history_gaps_total`), and a rejoin from
/// the last position recovers what the pod never received live.
#[tokio::test]
async fn after_a_redis_reconnect_channels_with_history_error_and_recover_on_rejoin() {
    let redis = RedisServer::start().await;
    let pod = pod(Some(&redis), 100, 300, None)
        .metrics_port()
        .start()
        .await;
    let topic = "hist:cut";
    let channel = pod.channel(topic);
    let mut a = pod.client().await;
    let (jr, h) = join_first(&mut a, topic).await;
    let e = epoch(&h["position"]);
    let mut conn = redis.conn().await;
    fcall(&mut conn, &channel, 1).await;
    assert_eq!(next_msg(&mut a).await.0, json!(at(&e, 1)));
    let _: i64 = conn.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    for n in 2..=4 {
        fcall(&mut conn, &channel, n).await;
    }
    // Once the pod is subscribed again, the next message shows the gap.
    redis.wait_numsub(&channel, 1).await;
    fcall(&mut conn, &channel, 5).await;
    let error = a.recv_within(test_support::SETTLE).await;
    assert_eq!(error[3], "phx_error", "{error}");
    assert_eq!((&error[0], &error[2]), (&json!(jr), &json!(topic)));
    let h = join(
        &mut a,
        topic,
        "again",
        json!({"history": {"since": at(&e, 1)}}),
    )
    .await;
    assert_eq!(h["recovered"], true, "{h}");
    let top = offset(&h["position"]);
    for n in 2..=top {
        assert_eq!(next_msg(&mut a).await.0, json!(at(&e, n)));
    }
    test_support::scrape::wait_for(pod.metrics_addr(), "gateway_history_gaps_total", &[], 1.0)
        .await;
    test_support::scrape::wait_for(
        pod.metrics_addr(),
        "gateway_history_recoveries_total",
        &[("result", "recovered")],
        1.0,
    )
    .await;
}

/// A kept message clients may not receive (over `max_publish_bytes`, from a
/// backend) is dropped, and the topic's channels move past its offset: the
/// next message arrives with no `phx_error`, and a replay skips it too.
#[tokio::test]
async fn a_kept_message_clients_may_not_receive_is_skipped_not_taken_for_a_gap() {
    let redis = RedisServer::start().await;
    let pod = pod(Some(&redis), 100, 300, None)
        .configure(|c| c.server.max_publish_bytes = 1000)
        .start()
        .await;
    let topic = "hist:oversize";
    let channel = pod.channel(topic);
    let mut a = pod.client().await;
    let (_, h) = join_first(&mut a, topic).await;
    let e = epoch(&h["position"]);
    let mut conn = redis.conn().await;
    let big = json!({"event": "new_msg", "payload": {"pad": "x".repeat(2000)}}).to_string();
    let (pos, _): (String, i64) = conn
        .cmd(&["FCALL", "gateway_publish", "1", &channel, &big])
        .await;
    assert_eq!(pos, at(&e, 1));
    fcall(&mut conn, &channel, 2).await;
    let (r, p) = next_msg(&mut a).await;
    assert_eq!((r, p), (json!(at(&e, 2)), json!({"n": 2})));
    let mut b = pod.client().await;
    let h = join(&mut b, topic, "r", json!({"history": {"since": at(&e, 0)}})).await;
    assert_eq!(h, json!({"recovered": true, "position": at(&e, 2)}));
    assert_eq!(next_msg(&mut b).await.0, json!(at(&e, 2)));
}
