//! A slow consumer of a real `gateway` process: a client that joins a topic
//! and then stops reading while the topic is flooded through Redis. The
//! gateway closes it as a slow consumer once its outbound queue overflows,
//! its resident memory stays bounded by that queue rather than growing with
//! the flood, and a well-behaved client on the same topic receives every
//! message.
//!
//! Needs `redis-server` on PATH.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use test_support::memory::{mib, peak, reset_peak, rss};
use test_support::{broadcast, wait, GatewayProcess, PhxClient, Received, RedisServer};

const TOPIC: &str = "room:flood";
/// `[[socket]] outbound_queue` of the pod, in frames.
const QUEUE: usize = 32;
/// Bytes of filler in each message's payload.
const PAYLOAD: usize = 8 * 1024;
/// The frame a subscriber gets is the payload plus the Phoenix envelope
/// (`[null,null,"room:flood","flood",{"n":12345,"data":"…"}]`).
const FRAME: usize = PAYLOAD + 64;
/// Client receive buffer of the slow client. Linux doubles it and keeps
/// its own minimum; what matters is that it is far below the default
/// (autotuned up to `tcp_rmem`'s maximum, 32 MiB here), which would let
/// the kernel absorb a large part of the flood before the gateway sees any
/// back-pressure.
const SLOW_RCVBUF: u32 = 4096;
/// How much the gateway's resident memory may grow over its baseline.
///
/// The slow connection holds at most `2 × QUEUE` frames in user space: the
/// batch its writer took from the queue and is stuck writing, plus a full
/// queue behind it; the next frame overflows the queue and closes the
/// connection. Frames are shared with the good client (encode-once), and
/// the publisher below keeps at most `2 × WINDOW` messages unread by the
/// good client, so that adds at most another `2 × WINDOW` frames. Kernel
/// socket buffers (the slow socket's send buffer, autotuned up to
/// `tcp_wmem`'s 4 MiB, and the client's receive buffer) are kernel memory,
/// not the process's RSS. On top of that: the Redis subscriber connection's
/// read buffer, JSON validation of each envelope, jemalloc's size-class
/// caches and dirty pages it has not yet returned (10 s decay), and a debug
/// build's larger stack frames: 8 MiB of slack, measured at well under
/// that. Unbounded buffering of the flood below would need `FLOOD × FRAME`,
/// ten times this bound.
const BOUND: usize = 2 * QUEUE * FRAME + 2 * WINDOW as usize * FRAME + 8 * 1024 * 1024;
/// Messages published: ten times what [`BOUND`] could hold.
const FLOOD: u64 = (10 * BOUND / FRAME) as u64 + 1;
/// Messages published per pipeline; the publisher keeps at most two windows
/// unread by the good client, well under [`QUEUE`], so the good client is
/// never a slow consumer itself however the machine schedules it.
const WINDOW: u64 = 8;
/// The whole flood must be over within this.
const FLOOD_TIME: Duration = Duration::from_secs(120);
/// Any single expected event (a frame, a close, a pipeline reply).
const STEP: Duration = Duration::from_secs(20);

/// The number after `connections: ` in the pod's `/readyz` body.
async fn open_connections(pod: &GatewayProcess) -> usize {
    let (_, body) = pod.get("/readyz").await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix("connections: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no connection count in /readyz: {body}"))
}

/// The `n` of a `flood` broadcast, `None` for any other frame.
fn flood_n(frame: &Value) -> Option<u64> {
    (frame[2] == TOPIC && frame[3] == "flood").then(|| frame[4]["n"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_and_memory_stays_bounded() {
    let redis = RedisServer::start().await;
    let mut pod = GatewayProcess::builder(env!("CARGO_BIN_EXE_gateway"))
        .redis(&redis.url())
        .configure(|c| c.sockets[0].outbound_queue = QUEUE)
        .start()
        .await;
    let pid = pod.pid();

    // The slow client: a small kernel receive buffer, joins, then reads
    // nothing until the flood is over.
    let mut slow = PhxClient::connect_small_rcvbuf(&pod.url(""), pod.addr, SLOW_RCVBUF).await;
    slow.join(TOPIC, "1").await;

    // The good client joins the same topic and reads everything.
    let mut good = pod.client().await;
    good.join(TOPIC, "1").await;
    assert_eq!(open_connections(&pod).await, 2);

    let mut publisher = redis.conn().await;
    let channel = pod.channel(TOPIC);
    // Both joins were answered, so the pod is subscribed: exactly one receiver.
    let receivers = publisher
        .publish(&channel, r#"{"event":"warmup","payload":{}}"#)
        .await;
    assert_eq!(receivers, 1, "the pod is not subscribed to {channel}");
    good.expect(broadcast(TOPIC, "warmup", json!({}))).await;

    let baseline = rss(pid);
    let hwm_reset = reset_peak(pid);

    // The good client counts what it receives, in order, and reports progress.
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0u64);
    let reader = tokio::spawn(async move {
        let mut received = 0u64;
        while received < FLOOD {
            match good.next_within(STEP).await {
                Some(Received::Text(frame)) => {
                    let n = flood_n(&frame).unwrap_or_else(|| panic!("unexpected frame {frame}"));
                    assert_eq!(n, received, "good client: out of order or lost");
                    received += 1;
                    let _ = progress_tx.send(received);
                }
                other => panic!("good client: after {received} messages got {other:?}"),
            }
        }
        // Keep the connection open: the slow client's close is observed as
        // the pod's connection count going down to this one.
        (received, good)
    });

    // The flood, WINDOW messages per pipeline, at most two windows ahead of
    // the good client.
    let filler = "x".repeat(PAYLOAD);
    let started = Instant::now();
    let mut peak_sampled = baseline;
    let mut slow_closed_at: Option<u64> = None;
    let mut sent = 0u64;
    while sent < FLOOD {
        assert!(
            started.elapsed() < FLOOD_TIME,
            "flood not over within {FLOOD_TIME:?}: {sent} of {FLOOD} sent"
        );
        let want = sent.saturating_sub(WINDOW);
        tokio::time::timeout(STEP, progress.wait_for(|&r| r >= want))
            .await
            .unwrap_or_else(|_| panic!("good client stuck below {want} of {sent} sent"))
            .unwrap();
        let mut pipe = redis::pipe();
        let batch = WINDOW.min(FLOOD - sent);
        for n in sent..sent + batch {
            let msg = format!(r#"{{"event":"flood","payload":{{"n":{n},"data":"{filler}"}}}}"#);
            pipe.publish(&channel, msg);
        }
        let replies: Vec<i64> = tokio::time::timeout(STEP, pipe.query_async(&mut publisher))
            .await
            .unwrap()
            .unwrap();
        assert!(replies.iter().all(|&r| r == 1), "receivers: {replies:?}");
        sent += batch;
        peak_sampled = peak_sampled.max(rss(pid));
        // Every 64 messages (512 KiB), until it happened: is the slow one gone?
        if slow_closed_at.is_none() && sent % (8 * WINDOW) == 0 && open_connections(&pod).await == 1
        {
            slow_closed_at = Some(sent);
        }
    }
    let flood_time = started.elapsed();
    let (received, _good) = tokio::time::timeout(STEP, reader).await.unwrap().unwrap();
    let peak_hwm = peak(pid);
    let peak = if hwm_reset {
        peak_sampled.max(peak_hwm)
    } else {
        peak_sampled
    };

    // (c) One slow consumer did not hold up the other client.
    assert_eq!(received, FLOOD);

    // (b) Memory stayed bounded.
    eprintln!(
        "slow consumer: queue {QUEUE} frames of {FRAME} B; flood {FLOOD} messages \
         ({:.1} MiB) in {flood_time:?}; slow client gone by message {slow_closed_at:?}; \
         RSS baseline {:.1} MiB, peak {:.1} MiB (sampled {:.1} MiB, VmHWM {} {:.1} MiB), \
         growth {:.1} MiB, bound {:.1} MiB",
        mib(FLOOD as usize * FRAME),
        mib(baseline),
        mib(peak),
        mib(peak_sampled),
        if hwm_reset { "reset" } else { "not reset" },
        mib(peak_hwm),
        mib(peak.saturating_sub(baseline)),
        mib(BOUND),
    );
    assert!(
        peak <= baseline + BOUND,
        "RSS grew by {:.1} MiB over its baseline of {:.1} MiB, more than the bound of {:.1} MiB",
        mib(peak.saturating_sub(baseline)),
        mib(baseline),
        mib(BOUND)
    );

    // (a) The slow client was closed during the flood; what it finds once it
    // reads again is a prefix of the flood, then 1008 "slow consumer" or,
    // as the writer was cut off mid-write, the end of the stream.
    let slow_closed_at = match slow_closed_at {
        Some(n) => n,
        None => {
            let what = "the slow client closed after the whole flood";
            wait::until(what, STEP, || async {
                let n = open_connections(&pod).await;
                (n == 1).then_some(()).ok_or(n)
            })
            .await;
            FLOOD
        }
    };
    let mut slow_got = 0u64;
    let mut warmup = false;
    let end = loop {
        match slow.next_within(STEP).await {
            Some(Received::Text(frame)) => {
                if !warmup && frame[3] == "warmup" {
                    warmup = true;
                    continue;
                }
                assert_eq!(flood_n(&frame), Some(slow_got), "slow client: {frame}");
                slow_got += 1;
            }
            // A close frame, or the end of the stream (`None`).
            Some(Received::Close(_)) => break slow.close_frame().map(|(c, r)| (c, r.to_owned())),
            other => panic!("slow client: neither a frame nor the end: {other:?}"),
        }
    };
    if let Some((code, reason)) = &end {
        assert_eq!((*code, reason.as_str()), (1008, "slow consumer"));
    }
    assert!(
        slow_got < slow_closed_at,
        "the slow client got {slow_got} messages, closed by {slow_closed_at}"
    );

    eprintln!("slow consumer: the slow client read {slow_got} messages, then {end:?}");

    assert!(pod.alive(), "the gateway exited");
    let log = pod.log();
    assert!(!log.contains("panicked"), "panic in the log:\n{log}");
}
