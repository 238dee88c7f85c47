//! Memory abuse against a real `gateway` process with config/example.toml's
//! limits (push rate on, `max_frame_size` 128 KiB, rules' `max_payload`
//! 64 KiB, `outbound_queue_bytes` 4 MiB), each beside a canary client that
//! heartbeats and pushes on its own room and must stay unaffected:
//!
//! - clients that push the largest payload allowed on a room that sends it
//!   back to them, and never read: each is closed as a slow consumer by its
//!   byte budget, long before the 1024-frame queue would fill;
//! - a subscriber that never reads while large messages are published to
//!   its topic through Redis: closed the same way;
//! - a push over `max_payload`: refused with `payload too large`, never
//!   broadcast.
//!
//! The pod's resident memory is asserted against a bound derived from the
//! budgets, well below what the frame count alone let these clients make
//! it hold. Needs `redis-server` on PATH.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use test_support::memory::{mib, peak, reset_peak, rss};
use test_support::scrape::sample;
use test_support::{
    broadcast, reply, wait, GatewayBuilder, GatewayProcess, PhxClient, Received, RedisServer,
};
use tokio::sync::watch;

/// `max_payload` of the rules (the default) and `max_frame_size` of the
/// socket, as config/example.toml.
const MAX_PAYLOAD: usize = 64 * 1024;
const MAX_FRAME: usize = 128 * 1024;
/// `outbound_queue_bytes` (the default) and `outbound_queue` (the default).
const BUDGET: usize = 4 * 1024 * 1024;
const QUEUE: usize = 1024;
/// Receive buffer of the clients that never read: far below the default,
/// so the kernel absorbs little before the gateway's queue fills.
const SLOW_RCVBUF: u32 = 4096;
/// Any single expected event.
const STEP: Duration = Duration::from_secs(20);
/// The canary's worst answer time allowed: generous for a debug build on
/// a loaded machine; what it guards against is a pod stalled for seconds.
const CANARY_MAX: Duration = Duration::from_secs(5);

/// A pod on `redis` with config/example.toml's limits.
fn pod(redis: &RedisServer) -> GatewayBuilder {
    GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway"))
        .redis(&redis.url())
        .configure(|c| {
            let example = gateway::config::SocketSection::default();
            let s = &mut c.sockets[0];
            s.push_rate = example.push_rate;
            s.push_burst = example.push_burst;
            s.max_frame_size = MAX_FRAME;
            assert_eq!((s.outbound_queue_bytes, s.outbound_queue), (BUDGET, QUEUE));
            c.server.max_memory_mb = 1024;
        })
}

/// A client with a tiny receive buffer that will stop reading after its join.
async fn never_reading(pod: &GatewayProcess, topic: &str) -> PhxClient {
    let mut c = PhxClient::connect_small_rcvbuf(&pod.url(""), pod.addr, SLOW_RCVBUF).await;
    c.join(topic, "1").await;
    c
}

/// `gateway_connections_closed_total{reason}` of the pod.
async fn closed(pod: &GatewayProcess, reason: &str) -> f64 {
    let (_, text) = pod.get("/metrics").await.unwrap();
    sample(
        &text,
        "gateway_connections_closed_total",
        &[("reason", reason)],
    )
    .unwrap_or(0.0)
}

/// A well-behaved client beside the abuse: every 200 ms a heartbeat and a
/// push on its own room, each answered (and the push broadcast back) within
/// [`CANARY_MAX`]. Runs until `stop` turns true; returns its rounds and
/// slowest answer.
fn canary(
    mut client: PhxClient,
    topic: &'static str,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<(u32, Duration)> {
    tokio::spawn(async move {
        let (mut rounds, mut slowest) = (0u32, Duration::ZERO);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = tick.tick() => {}
            }
            let (hb, push) = (format!("h{rounds}"), format!("p{rounds}"));
            let started = Instant::now();
            client
                .send(json!([null, hb, "phoenix", "heartbeat", {}]))
                .await;
            client
                .send(json!(["1", push, topic, "new_msg", {"n": rounds}]))
                .await;
            let expected = vec![
                reply(None, &hb, "phoenix", "ok", json!({})),
                reply(Some("1"), &push, topic, "ok", json!({})),
                broadcast(topic, "new_msg", json!({"n": rounds})),
            ];
            tokio::time::timeout(CANARY_MAX, client.expect_unordered(expected))
                .await
                .unwrap_or_else(|_| {
                    panic!("canary: round {rounds} not answered in {CANARY_MAX:?}")
                });
            slowest = slowest.max(started.elapsed());
            rounds += 1;
        }
        (rounds, slowest)
    })
}

/// Samples the pod's RSS until `stop`, returning the highest seen.
fn sampler(pid: u32, mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut highest = rss(pid);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = tick.tick() => highest = highest.max(rss(pid)),
            }
        }
        highest
    })
}

/// The peak RSS of `pid` over a phase: sampled, and `VmHWM` where it could
/// be reset at the start.
fn phase_peak(pid: u32, sampled: usize, hwm_reset: bool) -> usize {
    if hwm_reset {
        sampled.max(peak(pid))
    } else {
        sampled
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_pushing_big_messages_they_never_read_are_closed_and_memory_stays_bounded() {
    /// Abusive clients, each on a room of its own.
    const ABUSERS: usize = 4;
    /// Pushes per second each abuser sends: under the push rate, so what
    /// stops it is its outbound budget, not the rate limit.
    const RATE: u64 = 80;
    /// Pushes after which an abuser not yet closed fails the test: enough
    /// to fill the 1024-frame queue (two frames a push), which the byte
    /// budget must beat.
    const MAX_PUSHES: usize = QUEUE + 256;
    /// Each abuser holds at most its budget (the kernel's socket buffers
    /// are not RSS); on top, its pushes on their way (read buffer, Redis
    /// publish and subscriber buffers, a frame encoded per serializer), the
    /// allocator's caches and a debug build's slack. Measured: 19–29 MiB of
    /// growth; the bound is twice the budgets plus 32 MiB, 64 MiB. Without
    /// the byte budget the same abuse grew the pod by 150 MiB (each could
    /// hold 2 × 1024 frames of 64 KiB, 128 MiB).
    const BOUND: usize = 2 * ABUSERS * BUDGET + 32 * 1024 * 1024;

    let redis = RedisServer::start().await;
    let pod = pod(&redis).start().await;
    let pid = pod.pid();

    let mut c = pod.client().await;
    c.join("room:canary-a", "1").await;
    let (stop_tx, stop) = watch::channel(false);
    let canary = canary(c, "room:canary-a", stop.clone());

    let mut abusers = Vec::new();
    for i in 0..ABUSERS {
        abusers.push(never_reading(&pod, &format!("room:abuse-{i}")).await);
    }
    let baseline = rss(pid);
    let hwm_reset = reset_peak(pid);
    let sampled = sampler(pid, stop.clone());
    let started = Instant::now();

    let filler = "x".repeat(MAX_PAYLOAD - 64);
    let tasks: Vec<_> = abusers
        .into_iter()
        .enumerate()
        .map(|(i, mut abuser)| {
            let topic = format!("room:abuse-{i}");
            let filler = filler.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
                for n in 0..MAX_PUSHES {
                    tick.tick().await;
                    let frame = json!(["1", n.to_string(), topic, "new_msg", {"body": filler}]);
                    match tokio::time::timeout(STEP, abuser.try_send_text(&frame.to_string())).await
                    {
                        Ok(Ok(())) => {}
                        // The gateway closed it.
                        Ok(Err(_)) => return n,
                        Err(_) => panic!("abuser {i}: a push blocked for {STEP:?}"),
                    }
                }
                panic!("abuser {i}: still open after {MAX_PUSHES} pushes")
            })
        })
        .collect();
    // Each abuser is closed as a slow consumer (the metric counts it before
    // its socket is gone, and the abuser notices on a later push).
    let what = format!("{ABUSERS} slow consumers closed");
    wait::until(&what, Duration::from_secs(60), || async {
        let n = closed(&pod, "slow_consumer").await;
        (n >= ABUSERS as f64).then_some(()).ok_or(n)
    })
    .await;
    let mut pushes = Vec::new();
    for t in tasks {
        pushes.push(tokio::time::timeout(STEP, t).await.unwrap().unwrap());
    }
    let took = started.elapsed();
    stop_tx.send(true).unwrap();
    let sampled = sampled.await.unwrap();
    let peak = phase_peak(pid, sampled, hwm_reset);
    let (rounds, slowest) = canary.await.unwrap();

    eprintln!(
        "abuse: {ABUSERS} clients pushing {} KiB, never reading: closed after {pushes:?} pushes \
         within {took:?}; RSS baseline {:.1} MiB, peak {:.1} MiB (VmHWM {}), growth {:.1} MiB, \
         bound {:.1} MiB; canary {rounds} rounds, slowest {slowest:?}",
        MAX_PAYLOAD / 1024,
        mib(baseline),
        mib(peak),
        if hwm_reset { "reset" } else { "not reset" },
        mib(peak.saturating_sub(baseline)),
        mib(BOUND),
    );
    assert_eq!(closed(&pod, "slow_consumer").await, ABUSERS as f64);
    assert_eq!(closed(&pod, "rate_limited").await, 0.0);
    // Each push queues two frames for its sender (the reply and the
    // broadcast): the frame count would stop it after about QUEUE / 2.
    assert!(
        pushes.iter().all(|&n| n < QUEUE / 2),
        "closed only after {pushes:?} pushes: the frame count, not the bytes, stopped them"
    );
    assert!(
        peak <= baseline + BOUND,
        "RSS grew by {:.1} MiB, more than the bound of {:.1} MiB",
        mib(peak.saturating_sub(baseline)),
        mib(BOUND)
    );
    assert!(rounds > 0 && slowest < CANARY_MAX);
    assert!(!pod.log().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_a_flood_of_large_messages_is_closed() {
    /// Bytes of each published message's filler: larger than a client may
    /// push, as publishers may send (`[api] max_body` is 1 MiB).
    const MESSAGE: usize = 512 * 1024;
    /// Messages published in all: what 2 × 1024 frames could hold is far
    /// beyond; the budget closes the subscriber within the first ~16.
    const FLOOD: usize = 64;
    /// The subscriber's budget, and the flood's messages on their way
    /// (Redis reply buffer, envelope validation, one frame per serializer)
    /// plus slack: 24 MiB. The frame count alone would allow the whole
    /// flood, 32 MiB, and its in-flight batch.
    const BOUND: usize = BUDGET + 24 * 1024 * 1024;
    const TOPIC: &str = "room:flooded";

    let redis = RedisServer::start().await;
    let pod = pod(&redis).start().await;
    let pid = pod.pid();

    let mut c = pod.client().await;
    c.join("room:canary-b", "1").await;
    let (stop_tx, stop) = watch::channel(false);
    let canary = canary(c, "room:canary-b", stop.clone());

    let mut slow = never_reading(&pod, TOPIC).await;
    let mut publisher = redis.conn().await;
    let channel = pod.channel(TOPIC);
    let baseline = rss(pid);
    let hwm_reset = reset_peak(pid);
    let sampled = sampler(pid, stop.clone());

    let filler = "y".repeat(MESSAGE);
    let mut sent = 0;
    while sent < FLOOD && closed(&pod, "slow_consumer").await == 0.0 {
        let msg = json!({"event": "flood", "payload": {"n": sent, "data": filler}});
        let receivers = publisher.publish(&channel, &msg.to_string()).await;
        assert_eq!(receivers, 1, "the pod is not subscribed to {channel}");
        sent += 1;
    }
    wait::until("the subscriber closed", STEP, || async {
        let n = closed(&pod, "slow_consumer").await;
        (n == 1.0).then_some(()).ok_or(n)
    })
    .await;
    stop_tx.send(true).unwrap();
    let sampled = sampled.await.unwrap();
    let peak = phase_peak(pid, sampled, hwm_reset);
    let (rounds, slowest) = canary.await.unwrap();

    // What the subscriber finds once it reads: a prefix of the flood, then
    // 1008 "slow consumer" or the end of the stream.
    let mut got = 0;
    let end = loop {
        match slow.next_within(STEP).await {
            Some(Received::Text(frame)) => {
                assert_eq!(frame[4]["n"], json!(got), "{}", frame[3]);
                got += 1;
            }
            Some(Received::Close(_)) => break slow.close_frame().map(|(c, r)| (c, r.to_owned())),
            other => panic!("subscriber: neither a frame nor the end: {other:?}"),
        }
    };
    eprintln!(
        "flood: {sent} messages of {} KiB published, the subscriber read {got} then {end:?}; \
         RSS baseline {:.1} MiB, peak {:.1} MiB, growth {:.1} MiB, bound {:.1} MiB; \
         canary {rounds} rounds, slowest {slowest:?}",
        MESSAGE / 1024,
        mib(baseline),
        mib(peak),
        mib(peak.saturating_sub(baseline)),
        mib(BOUND),
    );
    if let Some((code, reason)) = &end {
        assert_eq!((*code, reason.as_str()), (1008, "slow consumer"));
    }
    assert!(
        sent < FLOOD,
        "still open after {sent} messages of {MESSAGE} bytes"
    );
    assert!(
        peak <= baseline + BOUND,
        "RSS grew by {:.1} MiB, more than the bound of {:.1} MiB",
        mib(peak.saturating_sub(baseline)),
        mib(BOUND)
    );
    assert!(rounds > 0 && slowest < CANARY_MAX);
}

#[tokio::test]
async fn a_push_over_max_payload_is_refused_and_not_broadcast() {
    let redis = RedisServer::start().await;
    let pod = pod(&redis).start().await;
    let topic = "room:big";
    let mut sender = pod.client().await;
    sender.join(topic, "1").await;
    let mut other = pod.client().await;
    other.join(topic, "1").await;

    // Fits in a frame (128 KiB), not in the rule's 64 KiB.
    let big = json!({"body": "z".repeat(MAX_PAYLOAD)});
    sender.send(json!(["1", "2", topic, "new_msg", big])).await;
    sender
        .expect(reply(
            Some("1"),
            "2",
            topic,
            "error",
            json!({"reason": "payload too large"}),
        ))
        .await;
    // Exactly the limit passes.
    let body = "z".repeat(MAX_PAYLOAD - r#"{"body":""}"#.len());
    let fits: Value = json!({ "body": body });
    assert_eq!(fits.to_string().len(), MAX_PAYLOAD);
    sender.send(json!(["1", "3", topic, "new_msg", fits])).await;
    // The other client's next frame is the one that fit: the big one was
    // never broadcast.
    other
        .expect(broadcast(topic, "new_msg", fits.clone()))
        .await;

    let (_, text) = pod.get("/metrics").await.unwrap();
    let hits = sample(
        &text,
        "gateway_limit_hits_total",
        &[("limit", "max_payload")],
    );
    assert_eq!(hits, Some(1.0));
}
