//! Regression guard for the gateway's hot paths: decoding client frames,
//! encoding broadcasts, fanning one broadcast out to local subscribers, and
//! presence in a large topic (encoding `presence_state` from a pod's local
//! state, applying a received `presence_diff` to it), and a connection's
//! life: its handshake, and connect → join → close against a served endpoint.
//!
//! Run with `cargo bench -p gateway` (add `-- --quick` for a short run).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gateway::channel::{Channel, ChannelContext, JoinResult};
use gateway::protocol::{Json, Outbound, Payload, Vsn};
use gateway::pubsub::{Broadcast, Hub};
use gateway::{AcceptAll, Endpoint, Router, Socket};
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOPIC: &str = "room:lobby";
const EVENT: &str = "new_msg";

/// A JSON object `{"body":"xxx…"}` of exactly `size` bytes.
fn json_of_size(size: usize) -> Json {
    let overhead = r#"{"body":""}"#.len();
    let body = "x".repeat(size.saturating_sub(overhead));
    let json =
        Json::from_bytes(Bytes::from(format!(r#"{{"body":"{body}"}}"#))).expect("valid json");
    assert_eq!(json.bytes().len(), size.max(overhead));
    json
}

/// A client push carrying `payload`, as the client would send it on `vsn`.
fn push_frame(vsn: Vsn, payload: &str) -> Bytes {
    Bytes::from(match vsn {
        Vsn::V2 => format!(r#"["1","2","{TOPIC}","{EVENT}",{payload}]"#),
        Vsn::V1 => format!(
            r#"{{"topic":"{TOPIC}","event":"{EVENT}","payload":{payload},"ref":"2","join_ref":"1"}}"#
        ),
    })
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    let cases = [
        ("typical", r#"{"body":"hello world"}"#.to_owned()),
        ("1KiB", json_of_size(1024).as_str().to_owned()),
    ];
    for vsn in [Vsn::V2, Vsn::V1] {
        for (name, payload) in &cases {
            let frame = push_frame(vsn, payload);
            // Fail loudly rather than benchmark the error path.
            vsn.decode_text(&frame).expect("decodes");
            group.throughput(Throughput::Bytes(frame.len() as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{vsn:?}"), name),
                &frame,
                |b, frame| b.iter(|| vsn.decode_text(black_box(frame))),
            );
        }
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_broadcast");
    for size in [100, 1024] {
        let payload = Payload::Json(json_of_size(size));
        let out = Outbound::Message {
            join_ref: None,
            ref_: None,
            topic: TOPIC,
            event: EVENT,
            payload: &payload,
        };
        for vsn in [Vsn::V2, Vsn::V1] {
            vsn.encode(&out).expect("encodes");
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{vsn:?}"), format!("{size}B")),
                &out,
                |b, out| b.iter(|| vsn.encode(black_box(out))),
            );
        }
    }
    group.finish();
}

/// One broadcast of a 100-byte payload to `n` local V2 subscribers. Only
/// `Hub::dispatch` is timed; the subscribers' queues are drained (as their
/// writers would) between iterations, outside the measurement.
fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("fan_out");
    for n in [100usize, 1_000, 10_000] {
        let hub = Hub::default();
        let mut drains: Vec<_> = (0..n)
            .map(|_| hub.bench_subscribe(TOPIC, Vsn::V2, 1024))
            .collect();
        let msg = Broadcast {
            topic: TOPIC.into(),
            event: EVENT.into(),
            payload: Payload::Json(json_of_size(100)),
            from: None,
        };
        assert_eq!(hub.dispatch(&msg), n);
        let drained: usize = drains.iter_mut().map(|d| d()).sum();
        assert_eq!(drained, n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let delivered = hub.dispatch(black_box(&msg));
                    total += start.elapsed();
                    debug_assert_eq!(delivered, n);
                    for drain in &mut drains {
                        drain();
                    }
                }
                total
            })
        });
    }
    group.finish();
}

/// One broadcast to one subscriber whose writer then finds its queue empty,
/// as for a connection that receives now and then: the queue's buffer is
/// taken by the writer and released when nothing more is queued, so an idle
/// connection holds none. Dispatch and both drains are timed.
fn deliver_idle(c: &mut Criterion) {
    let hub = Hub::default();
    let mut drain = hub.bench_subscribe(TOPIC, Vsn::V2, 1024);
    let msg = Broadcast {
        topic: TOPIC.into(),
        event: EVENT.into(),
        payload: Payload::Json(json_of_size(100)),
        from: None,
    };
    c.bench_function("deliver_idle", |b| {
        b.iter(|| {
            let delivered = hub.dispatch(black_box(&msg));
            let written = drain();
            // Finds nothing: releases the buffers.
            let rest = drain();
            debug_assert_eq!((delivered, written, rest), (1, 1, 0));
        })
    });
}

/// A join into a large presence topic encodes its `presence_state` from the
/// pod's local state (at most once per window), and every pod applies each
/// `presence_diff` it receives to that state: both are O(topic) or O(diff)
/// work on the actor's single task.
fn presence(c: &mut Criterion) {
    use gateway::presence::bench::{diff, Topic};
    let mut group = c.benchmark_group("presence");
    for n in [10_000usize, 100_000] {
        let mut topic = Topic::with(n);
        assert_eq!(topic.len(), n);
        assert!(topic.encode_state() > n * 50, "a state of every presence");
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("encode_state", n), |b| {
            b.iter(|| topic.encode_state())
        });
        // 100 joins and 100 leaves per diff: a window of a busy topic.
        let per = 100;
        let mut next = n;
        assert!(topic.apply_diff(&diff(next, per)) > 0);
        next += per;
        group.throughput(Throughput::Elements(2 * per as u64));
        group.bench_function(BenchmarkId::new("apply_diff_100+100", n), |b| {
            b.iter_batched(
                || {
                    next += per;
                    diff(next - per, per)
                },
                |payload| topic.apply_diff(&payload),
                criterion::BatchSize::SmallInput,
            )
        });
        assert_eq!(topic.len(), n, "joins and leaves balance");
    }
    group.finish();
}

/// A browser-like opening handshake (Chrome's headers, no cookies).
const HANDSHAKE: &str = "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\n\
    Host: gateway.example.com\r\nConnection: Upgrade\r\nPragma: no-cache\r\n\
    Cache-Control: no-cache\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) \
    AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n\
    Upgrade: websocket\r\nOrigin: https://app.example.com\r\n\
    Sec-WebSocket-Version: 13\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n\
    Accept-Language: en-US,en;q=0.9\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
    Sec-WebSocket-Protocol: phoenix\r\n\r\n";

/// The CPU part of answering a handshake before admission: the head parsed,
/// the RFC 6455 checks, the params, the 101 answer (what a connect storm
/// pays per connection besides the kernel and admission).
fn handshake(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    let head = Bytes::from_static(HANDSHAKE.as_bytes());
    let answer = gateway::server::bench_handshake(&head).expect("a valid handshake");
    assert!(answer.starts_with(b"HTTP/1.1 101 "));
    group.throughput(Throughput::Elements(1));
    group.bench_function("head_to_101", |b| {
        b.iter(|| gateway::server::bench_handshake(black_box(&head)))
    });
    group.finish();
}

/// A channel that accepts every join.
struct Open;

#[async_trait::async_trait]
impl Channel for Open {
    type Info = ();
    async fn join(&mut self, _: &str, _: Payload, _: &mut ChannelContext<()>) -> JoinResult {
        Ok(Payload::empty())
    }
}

/// A client frame: text, masked (with a zero mask, which leaves it as is).
fn client_text(text: &str) -> Vec<u8> {
    assert!(text.len() < 126);
    let mut f = vec![0x81, 0x80 | text.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(text.as_bytes());
    f
}

/// One connection's life as a client sees it: connect, the handshake,
/// joining a topic, its reply, and closing the socket (reset).
async fn lifecycle(addr: SocketAddr, join: &[u8]) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    // Closed with a reset: thousands of iterations would otherwise leave as
    // many ports in TIME_WAIT and run out of them. (Deprecated because a
    // non-zero linger blocks the thread on drop; a zero one never does.)
    #[allow(deprecated)]
    s.set_linger(Some(Duration::ZERO)).expect("linger");
    s.write_all(HANDSHAKE.as_bytes()).await.expect("handshake");
    let mut buf = vec![0u8; 1024];
    let mut n = 0;
    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        let m = s.read(&mut buf[n..]).await.expect("101");
        assert!(m > 0, "closed during the handshake");
        n += m;
    }
    assert!(buf.starts_with(b"HTTP/1.1 101 "));
    s.write_all(join).await.expect("join");
    // The reply is one small text frame; any byte of it will do.
    let m = s.read(&mut buf).await.expect("reply");
    assert!(m > 0, "closed before the join reply");
}

/// Connect → join → close against an endpoint served on loopback, client
/// included: the whole of a connection's life as a connect storm repeats it.
fn connect(c: &mut Criterion) {
    let mut group = c.benchmark_group("connect");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let addr = rt.block_on(async {
        let router = Router::new().channel("bench:*", || Open);
        let ep = Endpoint::builder()
            .socket(Socket::new("/socket", AcceptAll, router))
            .build();
        let listener = gateway::server::bind(([127, 0, 0, 1], 0).into()).expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(gateway::server::serve(listener, ep));
        addr
    });
    let join = client_text(r#"["1","1","bench:lobby","phx_join",{}]"#);
    rt.block_on(lifecycle(addr, &join));
    group.throughput(Throughput::Elements(1));
    group.bench_function("join_and_close", |b| {
        b.iter(|| rt.block_on(lifecycle(addr, &join)))
    });
    group.finish();
}

criterion_group!(
    benches,
    decode,
    encode,
    fan_out,
    deliver_idle,
    presence,
    handshake,
    connect
);
criterion_main!(benches);
