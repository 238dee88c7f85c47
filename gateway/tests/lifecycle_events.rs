//! Lifecycle events (docs/lifecycle.md) from real `gateway` processes
//! sharing one `redis-server`: one event per join, leave and disconnect
//! with its fields; a pod killed with SIGKILL has its connections reported
//! as disconnected (`pod_down`) by exactly one survivor within the pod
//! timeout; Redis down loses events, counted, without hurting the pod.
//!
//! Every wait reads the stream (`XREAD BLOCK`) or a frame. Needs
//! `redis-server` on PATH.

use gateway::config::{ChannelRule, LifecycleRule, Mode, Policy};
use redis::Value as Rv;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use test_support::scrape::{sample, scrape_at, wait_for};
use test_support::{jwt, wait, Cluster, GatewayBuilder, GatewayProcess, SETTLE, TIMEOUT};

/// Pod timeout of these tests: a killed pod's connections are reported
/// within it.
const POD_TIMEOUT_MS: u64 = 1500;

/// Pod timeout of the tests that kill no pod: long enough that a machine
/// busy with other tests never delays a liveness refresh past the key's
/// lifetime (which would add `restored` joins to the stream).
const CALM_MS: u64 = 10_000;

/// Pods with `lc:*` reporting to the stream `events`.
fn pod(pod_timeout_ms: u64) -> GatewayBuilder {
    GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway"))
        .metrics_port()
        .configure(|c| {
            c.presence.pod_timeout_ms = pod_timeout_ms;
            c.channels.push(ChannelRule {
                pattern: "lc:*".into(),
                policy: Policy::Public,
                sockets: None,
                events: vec!["new_msg".into()],
                mode: Mode::Broadcast,
                include_sender: true,
                max_payload: gateway::config::DEFAULT_MAX_PAYLOAD,
                presence: None,
                history: None,
                hooks: None,
                forward: None,
                lifecycle: Some(LifecycleRule {
                    stream: "events".into(),
                    max_len: 1000,
                }),
            });
        })
}

type Event = HashMap<String, String>;

/// Reads a stream in order on a connection of its own (XREAD BLOCK holds
/// its connection).
struct Stream {
    conn: redis::aio::MultiplexedConnection,
    key: String,
    last: String,
}

impl Stream {
    async fn open(cluster: &Cluster, name: &str) -> Stream {
        // Replies wait as long as the BLOCK, not redis-rs's 500 ms.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        let conn = cluster
            .redis
            .client()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap();
        Stream {
            conn,
            key: cluster.channel(name),
            last: "0".into(),
        }
    }

    /// The next event, or `None` after `within`.
    async fn next_within(&mut self, within: Duration) -> Option<Event> {
        let block = within.as_millis().max(1) as u64;
        let reply: Rv = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(&self.last)
            .query_async(&mut self.conn)
            .await
            .unwrap();
        let (id, fields) = first_entry(reply)?;
        self.last = id;
        Some(fields)
    }

    async fn next(&mut self) -> Event {
        self.next_within(TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("no event on {} within {TIMEOUT:?}", self.key))
    }
}

fn text(v: &Rv) -> String {
    match v {
        Rv::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Rv::SimpleString(s) => s.clone(),
        other => panic!("not a string: {other:?}"),
    }
}

/// The one entry of an `XREAD COUNT 1` reply (RESP2 or RESP3 shape).
fn first_entry(reply: Rv) -> Option<(String, Event)> {
    let streams = match reply {
        Rv::Nil => return None,
        Rv::Array(streams) => streams.into_iter().next()?,
        Rv::Map(streams) => {
            let (k, v) = streams.into_iter().next()?;
            Rv::Array(vec![k, v])
        }
        other => panic!("XREAD answered {other:?}"),
    };
    let Rv::Array(mut pair) = streams else {
        panic!("XREAD stream {streams:?}")
    };
    let Rv::Array(entries) = pair.remove(1) else {
        panic!("XREAD entries")
    };
    let Rv::Array(mut entry) = entries.into_iter().next()? else {
        panic!("XREAD entry")
    };
    let Rv::Array(fields) = entry.remove(1) else {
        panic!("XREAD fields")
    };
    let id = text(&entry[0]);
    let map = fields
        .chunks(2)
        .map(|kv| (text(&kv[0]), text(&kv[1])))
        .collect();
    Some((id, map))
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{s:?} is not JSON: {e}"))
}

/// Leaves `topic`: its `ok` reply, then its `phx_close`.
async fn leave(client: &mut test_support::PhxClient, topic: &str, jr: &str) {
    client.send(json!([jr, "9", topic, "phx_leave", {}])).await;
    loop {
        let f = client.recv().await;
        if f[3] == "phx_reply" && f[1] == "9" {
            assert_eq!(f[4]["status"], "ok", "{f}");
        }
        if f[3] == "phx_close" && f[2] == topic {
            return;
        }
    }
}

#[tokio::test]
async fn one_event_per_join_leave_and_disconnect() {
    let cluster = Cluster::start(pod(CALM_MS), 1).await;
    let pod = &cluster.pods[0];
    let mut events = Stream::open(&cluster, "events").await;
    let mut alice = pod.client_with_token(&jwt::token("alice")).await;

    alice.join("lc:a", "1").await;
    let join = events.next().await;
    assert_eq!(join["type"], "join", "{join:?}");
    assert_eq!(join["topic"], "lc:a");
    assert_eq!(join["socket_id"], "users_socket:alice");
    assert_eq!(json_of(&join["claims"])["sub"], "alice");
    assert!(
        !join["pod"].is_empty() && !join["conn"].is_empty(),
        "{join:?}"
    );
    let at: u64 = join["at"].parse().unwrap();
    assert!(at.abs_diff(jwt::now() * 1000) < 60_000, "at {at}");
    let conn = join["conn"].clone();

    alice.join("lc:b", "2").await;
    // A topic without lifecycle reports nothing: the next event is lc:b's.
    alice.join("room:quiet", "3").await;
    let join_b = events.next().await;
    assert_eq!(
        (join_b["type"].as_str(), join_b["topic"].as_str()),
        ("join", "lc:b")
    );
    assert_eq!(join_b["conn"], conn);

    leave(&mut alice, "lc:a", "1").await;
    let left = events.next().await;
    assert_eq!(left["type"], "leave", "{left:?}");
    assert_eq!(
        (left["topic"].as_str(), left["reason"].as_str()),
        ("lc:a", "leave")
    );
    assert_eq!(left["conn"], conn);

    // Joining lc:b again replaces its channel: a leave, then the new join.
    alice.join("lc:b", "4").await;
    let replaced = events.next().await;
    assert_eq!(
        (
            replaced["type"].as_str(),
            replaced["topic"].as_str(),
            replaced["reason"].as_str()
        ),
        ("leave", "lc:b", "replaced"),
        "{replaced:?}"
    );
    let rejoined = events.next().await;
    assert_eq!(
        (rejoined["type"].as_str(), rejoined["topic"].as_str()),
        ("join", "lc:b")
    );
    assert!(!rejoined.contains_key("reason"), "{rejoined:?}");

    // The pod's record of its connections names lc:b alone.
    let mut redis = cluster.conn().await;
    let hash = cluster.channel(&format!("lifecycle:{}", pod_id(&conn)));
    let held: Vec<String> = redis.cmd(&["HVALS", &hash]).await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(json_of(&held[0])["topics"], r#"["lc:b"]"#);

    alice.close().await;
    let gone = events.next().await;
    assert_eq!(gone["type"], "disconnect", "{gone:?}");
    assert_eq!(gone["conn"], conn);
    assert_eq!(json_of(&gone["topics"]), json!(["lc:b"]));
    assert_eq!(gone["reason"], "client_closed");
    assert_eq!(gone["socket_id"], "users_socket:alice");
    assert!(!gone.contains_key("topic"), "{gone:?}");

    // One event each: nothing follows, and the record is gone.
    assert_eq!(events.next_within(Duration::from_millis(300)).await, None);
    let left: i64 = redis.cmd(&["EXISTS", &hash]).await;
    assert_eq!(left, 0);
    let text = wait_for(
        pod.metrics_addr(),
        "gateway_lifecycle_events_total",
        &[("type", "join")],
        3.0,
    )
    .await;
    assert_eq!(
        sample(
            &text,
            "gateway_lifecycle_events_total",
            &[("type", "leave")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "gateway_lifecycle_events_total",
            &[("type", "disconnect")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "gateway_lifecycle_dropped_total", &[]),
        Some(0.0)
    );
}

/// The pod id in a `conn` field (`{pod id}:{n}`).
fn pod_id(conn: &str) -> &str {
    conn.rsplit_once(':').map(|(p, _)| p).unwrap()
}

#[tokio::test]
async fn a_killed_pods_connections_are_reported_once_within_the_timeout() {
    let mut cluster = Cluster::start(pod(POD_TIMEOUT_MS), 3).await;
    let mut events = Stream::open(&cluster, "events").await;
    let mut a = cluster.pods[1].client().await;
    a.join("lc:k1", "1").await;
    a.join("lc:k2", "2").await;
    let mut b = cluster.pods[1].client_with_token(&jwt::token("bob")).await;
    b.join("lc:k3", "1").await;
    let mut conns: HashMap<String, Vec<String>> = HashMap::new();
    let mut node = String::new();
    let mut bob = String::new();
    for _ in 0..3 {
        let e = events.next().await;
        assert_eq!(e["type"], "join", "{e:?}");
        node = e["pod"].clone();
        if json_of(&e["claims"])["sub"] == "bob" {
            bob = e["conn"].clone();
        }
        conns
            .entry(e["conn"].clone())
            .or_default()
            .push(e["topic"].clone());
    }
    assert_eq!(conns.len(), 2);
    let dead = pod_id(conns.keys().next().unwrap()).to_owned();

    // SIGKILL: no cleanup; a survivor reports both connections.
    let killed = Instant::now();
    cluster.pods[1].kill();
    let mut reports = 0;
    while reports < 2 {
        let e = events
            .next_within(Duration::from_millis(POD_TIMEOUT_MS * 3))
            .await
            .expect("pod_down reported");
        if e.get("reason").map(String::as_str) == Some("restored") {
            // A survivor's liveness refresh came late on a busy machine.
            continue;
        }
        reports += 1;
        assert_eq!(
            (e["type"].as_str(), e["reason"].as_str()),
            ("disconnect", "pod_down"),
            "{e:?}"
        );
        assert_eq!(e["pod"], node);
        let mut want = conns.remove(&e["conn"]).unwrap_or_else(|| panic!("{e:?}"));
        want.sort();
        let mut got: Vec<String> = serde_json::from_str(&e["topics"]).unwrap();
        got.sort();
        assert_eq!(got, want);
        if e["conn"] == bob {
            assert_eq!(json_of(&e["claims"])["sub"], "bob");
            assert_eq!(e["socket_id"], "users_socket:bob");
        }
    }
    // The bound is POD_TIMEOUT_MS; the slack is for a busy test machine.
    let took = killed.elapsed();
    eprintln!("pod_down reported {took:?} after SIGKILL (pod_timeout_ms = {POD_TIMEOUT_MS})");
    assert!(
        took < Duration::from_millis(POD_TIMEOUT_MS + 1000),
        "took {took:?}"
    );

    // Exactly once: the script that reported them removed the record.
    let mut redis = cluster.conn().await;
    let hash = cluster.channel(&format!("lifecycle:{dead}"));
    let exists: i64 = redis.cmd(&["EXISTS", &hash]).await;
    assert_eq!(exists, 0);
    let listed: i64 = redis
        .cmd(&["SISMEMBER", &cluster.channel("lifecycle-pods"), &dead])
        .await;
    assert_eq!(listed, 0);
    let mut reported = 0.0;
    for p in [&cluster.pods[0], &cluster.pods[2]] {
        let text = scrape_at(p.metrics_addr()).await;
        reported += sample(&text, "gateway_lifecycle_pod_down_total", &[]).unwrap_or(0.0);
    }
    assert_eq!(reported, 2.0);
    drop((a, b));
}

#[tokio::test]
async fn redis_down_loses_events_counted_and_the_pod_goes_on() {
    let mut cluster = Cluster::start(pod(CALM_MS), 1).await;
    let mut events = Stream::open(&cluster, "events").await;
    let mut c = cluster.pods[0].client().await;
    c.join("lc:d", "1").await;
    assert_eq!(events.next().await["type"], "join");

    cluster.redis.kill();
    // The leave is answered without Redis; its event cannot be written.
    leave(&mut c, "lc:d", "1").await;
    let metrics = cluster.pods[0].metrics_addr();
    wait::until("the lost leave counted", SETTLE, || async move {
        let text = scrape_at(metrics).await;
        match sample(&text, "gateway_lifecycle_dropped_total", &[]) {
            Some(n) if n >= 1.0 => Ok(()),
            other => Err(other),
        }
    })
    .await;
    // Heartbeats still answered: the connection and the pod are fine.
    c.send(json!([null, "h", "phoenix", "heartbeat", {}])).await;
    loop {
        let f = c.recv().await;
        if f[1] == "h" {
            assert_eq!(f[4]["status"], "ok", "{f}");
            break;
        }
    }
    cluster.assert_alive();

    // Redis back (empty): events flow again.
    cluster.redis.restart().await;
    let mut events = Stream::open(&cluster, "events").await;
    let mut d = cluster.pods[0].client().await;
    // Joins are refused until the pod resubscribed; phoenix.js retries too.
    let deadline = Instant::now() + SETTLE;
    loop {
        let r = d.try_join("lc:e", "5").await;
        if r[4]["status"] == "ok" {
            break;
        }
        assert!(Instant::now() < deadline, "join after the restart: {r}");
        tokio::time::sleep(wait::POLL).await;
    }
    let e = events.next().await;
    assert_eq!(
        (e["type"].as_str(), e["topic"].as_str()),
        ("join", "lc:e"),
        "{e:?}"
    );
    cluster.assert_alive();
}

#[tokio::test]
async fn a_clean_stop_reports_its_disconnects_itself() {
    let mut cluster = Cluster::start(pod(CALM_MS), 1).await;
    let mut events = Stream::open(&cluster, "events").await;
    let mut c = cluster.pods[0].client().await;
    c.join("lc:s", "1").await;
    assert_eq!(events.next().await["type"], "join");
    // SIGTERM: the drain closes the connection; the pod writes its
    // disconnect before exiting (no pod_down from anyone).
    cluster.pods[0].terminate();
    let e = events.next().await;
    assert_eq!(
        (
            e["type"].as_str(),
            e["reason"].as_str(),
            e["topics"].as_str()
        ),
        ("disconnect", "shutdown", r#"["lc:s"]"#),
        "{e:?}"
    );
    cluster.pods[0].wait_exit(TIMEOUT).await;
}

#[tokio::test]
async fn after_redis_lost_its_data_held_topics_are_reported_again() {
    let mut cluster = Cluster::start(pod(CALM_MS), 1).await;
    let mut events = Stream::open(&cluster, "events").await;
    let mut c = cluster.pods[0].client().await;
    c.join("lc:r", "1").await;
    c.join("lc:gone", "2").await;
    let first = events.next().await;
    assert_eq!(first["type"], "join");
    assert_eq!(events.next().await["topic"], "lc:gone");

    // Redis restarts empty: the stream and the pod's record are gone. A
    // leave right away waits for the pod's liveness key (a record written
    // without it could be taken for a dead pod's) instead of being lost;
    // the liveness refresh finds its key gone, so the pod writes its record
    // again and reports the topic it still holds as a restored join.
    cluster.redis.restart().await;
    leave(&mut c, "lc:gone", "2").await;
    let mut events = Stream::open(&cluster, "events").await;
    let left = events.next().await;
    assert_eq!(
        (left["type"].as_str(), left["topic"].as_str()),
        ("leave", "lc:gone"),
        "{left:?}"
    );
    let e = events.next().await;
    assert_eq!(
        (
            e["type"].as_str(),
            e["topic"].as_str(),
            e["reason"].as_str()
        ),
        ("join", "lc:r", "restored"),
        "{e:?}"
    );
    assert_eq!(e["conn"], first["conn"]);
    let mut redis = cluster.conn().await;
    let hash = cluster.channel(&format!("lifecycle:{}", pod_id(&e["conn"])));
    let held: i64 = redis.cmd(&["HLEN", &hash]).await;
    assert_eq!(held, 1);

    // And the connection's end is reported as usual.
    c.close().await;
    let gone = events.next().await;
    assert_eq!(
        (gone["type"].as_str(), gone["reason"].as_str()),
        ("disconnect", "client_closed")
    );
    let text = scrape_at(cluster.pods[0].metrics_addr()).await;
    assert_eq!(
        sample(&text, "gateway_lifecycle_dropped_total", &[]),
        Some(0.0)
    );
}

#[tokio::test]
async fn after_a_redis_restart_an_idle_survivor_still_reports_a_dead_pod() {
    let mut cluster = Cluster::start(pod(POD_TIMEOUT_MS), 2).await;
    let mut c = cluster.pods[1].client().await;
    c.join("lc:after", "1").await;
    // Redis restarts empty; pod 1 writes its record again (a restored
    // join), pod 0 has nothing to write and only checks for dead pods.
    cluster.redis.restart().await;
    let mut events = Stream::open(&cluster, "events").await;
    let restored = loop {
        // A busy machine may delay a liveness refresh past the key's
        // lifetime, adding a pod_down and another restored join.
        let e = events.next().await;
        if e.get("reason").map(String::as_str) == Some("restored") {
            break e;
        }
    };
    let killed_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    cluster.pods[1].kill();
    loop {
        let e = events.next().await;
        let at: u64 = e["at"].parse().unwrap();
        if e["reason"] != "pod_down" || at < killed_ms {
            continue;
        }
        assert_eq!(
            (e["type"].as_str(), e["topics"].as_str()),
            ("disconnect", r#"["lc:after"]"#),
            "{e:?}"
        );
        assert_eq!(e["conn"], restored["conn"]);
        break;
    }
    drop(c);
}

/// What lifecycle costs: Redis commands per event, and join latency of a
/// lifecycle topic beside a plain one, for a storm of concurrent joins on
/// one pod. A measurement, not a check (`--ignored --nocapture`).
#[tokio::test]
#[ignore]
async fn measure_cost_of_a_join_storm() {
    const N: usize = 500;
    let cluster = Cluster::start(pod(CALM_MS), 1).await;
    let pod = &cluster.pods[0];
    let mut redis = cluster.conn().await;
    let mut clients = futures_util::future::join_all((0..N).map(|_| pod.client())).await;

    // Plain topics before and after lifecycle topics (the first storm also
    // warms the pod up): p50 and p99 of the replies.
    for (kind, prefix) in [
        ("plain", "room:m"),
        ("lifecycle", "lc:m"),
        ("plain", "quiet:m"),
    ] {
        let before = redis.commandstats().await;
        let started = Instant::now();
        let took = futures_util::future::join_all(clients.iter_mut().enumerate().map(
            |(i, c)| async move {
                let t = Instant::now();
                c.join(&format!("{prefix}{}", i % 10), "1").await;
                t.elapsed()
            },
        ))
        .await;
        let all = started.elapsed();
        let mut took = took;
        took.sort();
        if kind == "lifecycle" {
            // Every join event written: the stream holds N entries.
            let key = cluster.channel("events");
            wait::until("every join written", SETTLE, || {
                let mut r = redis.clone();
                let key = key.clone();
                async move {
                    let n: i64 = r.cmd(&["XLEN", &key]).await;
                    (n as usize == N).then_some(()).ok_or(n)
                }
            })
            .await;
        }
        let after = redis.commandstats().await;
        let delta = |c: &str| after.get(c).unwrap_or(&0) - before.get(c).unwrap_or(&0);
        eprintln!(
            "{kind}: {N} joins in {all:?}, reply p50 {:?} p99 {:?}; redis: xadd {} hset {} eval {}",
            took[N / 2],
            took[N * 99 / 100],
            delta("xadd"),
            delta("hset"),
            delta("eval"),
        );
    }
    let before = redis.commandstats().await;
    for c in clients {
        c.close().await;
    }
    let key = cluster.channel("events");
    wait::until("every disconnect written", SETTLE, || {
        let mut r = redis.clone();
        let key = key.clone();
        async move {
            let n: i64 = r.cmd(&["XLEN", &key]).await;
            (n as usize == 2 * N).then_some(()).ok_or(n)
        }
    })
    .await;
    let after = redis.commandstats().await;
    let delta = |c: &str| after.get(c).unwrap_or(&0) - before.get(c).unwrap_or(&0);
    eprintln!(
        "{N} disconnects: redis: xadd {} hdel {} eval {}",
        delta("xadd"),
        delta("hdel"),
        delta("eval"),
    );
}
