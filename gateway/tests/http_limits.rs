//! Clients that stall or hoard plain HTTP connections, against a real
//! `gateway` process on a real `redis-server`: a body trickled a byte at a
//! time (long-poll POST and `POST /api/broadcast`) is answered 408 once
//! `body_timeout_ms` passed; an idle keep-alive connection is closed after
//! `header_timeout_ms`; a flood of plain connections is refused at
//! `max_http_connections`, and at the sockets the open-files limit leaves
//! room for, while `/healthz` and `/readyz` on the metrics listener keep
//! answering and a WebSocket canary keeps working. Each test asserts the
//! pod's resident memory and the canary's answer times with generous bounds.
//!
//! Needs `redis-server` on PATH.

use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use test_support::http::{HttpConn, Request};
use test_support::memory;
use test_support::scrape::{sample, scrape_at, wait_for};
use test_support::{broadcast, GatewayBuilder, GatewayProcess, LpClient, PhxClient};
use test_support::{RedisServer, TIMEOUT};

const BIN: &str = env!("CARGO_BIN_EXE_gateway");
/// How much the pod's resident memory may grow during an abuse: each
/// abusive connection holds a few kB at most; this is far above that and
/// far below what holding them for ever would grow to at scale.
const RSS_SLACK: usize = 32 * 1024 * 1024;
/// Longest a canary heartbeat may take to be answered while the pod is
/// abused (an idle pod answers in about a millisecond).
const CANARY_ANSWER: Duration = Duration::from_secs(2);

fn pod(redis: &RedisServer) -> GatewayBuilder {
    GatewayProcess::builder(BIN).redis(&redis.url())
}

/// A client joined to `topic` that must stay unaffected, and its join_ref.
async fn canary(pod: &GatewayProcess, topic: &str) -> (PhxClient, String) {
    let mut c = pod.client().await;
    let jr = c.join_retrying(topic, "c").await;
    (c, jr)
}

/// A heartbeat round trip of the canary, which must be quick.
async fn canary_beat(c: &mut PhxClient, r: &str) {
    let start = Instant::now();
    c.heartbeat(r).await;
    let took = start.elapsed();
    assert!(took < CANARY_ANSWER, "canary heartbeat took {took:?}");
}

/// Sends `req`'s head at once, then trickles its body a byte every
/// 200 ms; returns the answer and how many body bytes were sent.
async fn trickled(addr: SocketAddr, req: &Request) -> (u16, usize, HttpConn) {
    let bytes = req.to_bytes(addr);
    let split = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut conn = HttpConn::connect(addr).await;
    conn.write(&bytes[..split]).await.unwrap();
    let (resp, sent) = conn
        .trickle(&bytes[split..], Duration::from_millis(200))
        .await;
    let resp = resp.unwrap_or_else(|| panic!("closed without an answer after {sent} bytes"));
    assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");
    (resp.status, sent, conn)
}

#[tokio::test]
async fn trickled_bodies_get_408_when_the_body_timeout_passes() {
    const ABUSERS: usize = 10;
    const BODY: usize = 4096;
    let redis = RedisServer::start().await;
    let pod = pod(&redis)
        .configure(|c| c.server.body_timeout_ms = 1000)
        .start()
        .await;
    let (mut c, _) = canary(&pod, "room:canary-408").await;
    let baseline = memory::rss(pod.pid());
    let mut lp = LpClient::new(pod.addr, "vsn=2.0.0");
    lp.open().await;
    let lp_post = Request::post(&lp.target())
        .header("Content-Type", "application/x-ndjson")
        .body(vec![b' '; BODY]);
    let api_post = Request::post("/api/broadcast")
        .bearer(&pod.api_key)
        .json(&" ".repeat(BODY));
    let started = Instant::now();
    let abusers: Vec<_> = (0..ABUSERS)
        .flat_map(|_| [lp_post.clone(), api_post.clone()])
        .map(|req| {
            let addr = pod.addr;
            tokio::spawn(async move { trickled(addr, &req).await })
        })
        .collect();
    for r in 0..5 {
        canary_beat(&mut c, &format!("hb{r}")).await;
    }
    for a in abusers {
        let (status, sent, mut conn) = a.await.unwrap();
        assert_eq!(status, 408, "after {sent} trickled bytes");
        assert!(sent < BODY, "the whole body went through ({sent} bytes)");
        assert!(
            conn.closed_within(TIMEOUT).await,
            "still open after the 408"
        );
    }
    // 1 s of body timeout, not the minutes a trickle of 4 kB would take.
    let took = started.elapsed();
    assert!(took < TIMEOUT, "408s took {took:?}");
    let grew = memory::rss(pod.pid()).saturating_sub(baseline);
    assert!(grew < RSS_SLACK, "pod grew by {grew} bytes");
    wait_for(
        pod.addr,
        "gateway_limit_hits_total",
        &[("limit", "body_timeout")],
        (2 * ABUSERS) as f64,
    )
    .await;
    // The session and the publish API still serve well-behaved clients.
    assert_eq!(
        lp.post(&[json!(["1", "1", "room:lp", "phx_join", {}])])
            .await,
        200
    );
    let (status, body) = pod
        .api_broadcast("room:canary-408", "new_msg", json!({"n": 1}))
        .await;
    assert_eq!(status, 200, "{body}");
    c.expect(broadcast("room:canary-408", "new_msg", json!({"n": 1})))
        .await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let redis = RedisServer::start().await;
    let pod = pod(&redis)
        .configure(|c| c.server.header_timeout_ms = 500)
        .start()
        .await;
    let (mut c, _) = canary(&pod, "room:canary-idle").await;
    let mut idle = HttpConn::connect(pod.addr).await;
    let r = idle.send(&Request::get("/healthz").keep_alive()).await;
    assert_eq!(r.status, 200);
    // Kept alive for a second request right away...
    let r = idle.send(&Request::get("/readyz").keep_alive()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // ...then closed once it sat idle past the header timeout.
    let started = Instant::now();
    assert!(
        idle.closed_within(TIMEOUT).await,
        "idle connection kept open"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    // A connection that never sends a byte goes the same way.
    let mut silent = HttpConn::connect(pod.addr).await;
    assert!(
        silent.closed_within(TIMEOUT).await,
        "silent connection kept open"
    );
    canary_beat(&mut c, "hb").await;
}

/// Opens plain connections that sent half a request line, so each is held
/// until the header timeout (30 s, longer than the test).
async fn hoard(addr: SocketAddr, n: usize) -> Vec<HttpConn> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut conn = HttpConn::connect(addr).await;
        conn.write(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        held.push(conn);
    }
    held
}

/// The next connection to the main port is refused at once with 503.
async fn refused(addr: SocketAddr) -> String {
    let mut conn = HttpConn::connect(addr).await;
    let r = conn.read_response().await;
    assert_eq!(r.status, 503, "{r:?}");
    r.body
}

/// `/healthz` answers 200 and `/readyz` 503 naming `why`, on the metrics
/// listener.
async fn probes_say(metrics: SocketAddr, why: &str) {
    let health = Request::get("/healthz").send(metrics).await;
    assert_eq!(health.status, 200, "{health:?}");
    let ready = Request::get("/readyz").send(metrics).await;
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(ready.body.contains(why), "{}", ready.body);
}

#[tokio::test]
async fn a_flood_of_http_connections_stops_at_max_http_connections() {
    const CAP: usize = 40;
    let redis = RedisServer::start().await;
    let pod = pod(&redis)
        .configure(|c| c.server.max_http_connections = CAP)
        .metrics_port()
        .start()
        .await;
    let metrics = pod.metrics_addr();
    let topic = "room:canary-flood";
    let (mut c, _) = canary(&pod, topic).await;
    let baseline = memory::rss(pod.pid());
    let held = hoard(pod.addr, CAP).await;
    wait_for(metrics, "gateway_http_connections", &[], CAP as f64).await;
    assert!(refused(pod.addr).await.contains("connection limit"));
    probes_say(metrics, "at http connection limit").await;
    let text = scrape_at(metrics).await;
    let hits = sample(
        &text,
        "gateway_limit_hits_total",
        &[("limit", "max_http_connections")],
    );
    assert!(hits >= Some(1.0), "{hits:?}");
    // The canary (upgraded, so not a plain connection) is served: a
    // heartbeat, and a broadcast from a backend through Redis.
    canary_beat(&mut c, "hb1").await;
    redis
        .publish(
            &pod.channel(topic),
            r#"{"event":"new_msg","payload":{"n":1}}"#,
        )
        .await;
    c.expect(broadcast(topic, "new_msg", json!({"n": 1}))).await;
    let grew = memory::rss(pod.pid()).saturating_sub(baseline);
    assert!(grew < RSS_SLACK, "pod grew by {grew} bytes");
    drop(held);
    wait_for(metrics, "gateway_http_connections", &[], 0.0).await;
    let ready = Request::get("/readyz").send(pod.addr).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
}

#[tokio::test]
async fn plain_connections_leave_descriptors_for_the_probes_at_the_open_files_limit() {
    // 256 descriptors: 64 kept for Redis, listeners and probes, 192 for
    // client sockets, WebSocket and plain HTTP together.
    const OPEN_FILES: usize = 256;
    const SOCKETS: usize = OPEN_FILES - 64;
    let redis = RedisServer::start().await;
    let pod = pod(&redis)
        .shell_prefix(&format!("ulimit -n {OPEN_FILES}"))
        .metrics_port()
        .start()
        .await;
    let metrics = pod.metrics_addr();
    let topic = "room:canary-fd";
    let (mut c, jr) = canary(&pod, topic).await;
    let baseline = memory::rss(pod.pid());
    let held = hoard(pod.addr, SOCKETS - 1).await;
    wait_for(
        metrics,
        "gateway_http_connections",
        &[],
        (SOCKETS - 1) as f64,
    )
    .await;
    refused(pod.addr).await;
    probes_say(metrics, "at socket limit").await;
    canary_beat(&mut c, "hb1").await;
    c.send(json!([jr, "p1", topic, "new_msg", {"n": 2}])).await;
    c.expect_unordered(vec![
        json!([jr, "p1", topic, "phx_reply", {"status": "ok", "response": {}}]),
        broadcast(topic, "new_msg", json!({"n": 2})),
    ])
    .await;
    let grew = memory::rss(pod.pid()).saturating_sub(baseline);
    assert!(grew < RSS_SLACK, "pod grew by {grew} bytes");
    drop(held);
    wait_for(metrics, "gateway_http_connections", &[], 0.0).await;
    assert_eq!(Request::get("/healthz").send(pod.addr).await.status, 200);
    let log = pod.log();
    assert!(
        !log.contains("accept failed"),
        "the pod ran out of descriptors:\n{log}"
    );
}
