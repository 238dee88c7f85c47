//! RFC 6455 as Autobahn|Testsuite checks it: the suite's server cases of
//! sections 1–7 and 9 (scaled to `max_frame_size`), ported case by case and
//! named by their Autobahn numbers, run with raw frames ([`RawWs`]) against a
//! real `gateway` process; plus the opening handshake (§4.2.1). Results per
//! group, and why some cases differ: docs/websocket.md.
//!
//! The gateway is a Phoenix server, not an echo server, so a message that
//! Autobahn expects echoed is a heartbeat carrying the case's payload as its
//! ref, and the echo is the heartbeat's reply with that ref (which proves
//! the message arrived intact). Autobahn's waits become events: a pong
//! proves the server read everything before its ping. Each test has a
//! canary client that must still be answered at the end.

use serde_json::{json, Value};
use test_support::raw_ws::{Event, RawFrame as F, RawWs, BINARY, CONTINUATION, TEXT};
use test_support::{GatewayProcess, PhxClient};

const BIN: &str = env!("CARGO_BIN_EXE_gateway");
/// `[socket] max_frame_size` of the test pods (the default).
const MAX: usize = 1 << 20;

/// A close the server must send: its code and reason.
type Close = (u16, &'static str);
const PROTOCOL: Close = (1002, "protocol error");
const BAD_UTF8: Close = (1007, "invalid utf-8");
/// A well-formed WebSocket message that is not a Phoenix message.
const NOT_PHOENIX: Close = (1007, "malformed message");
const TOO_BIG: Close = (1009, "message too big");

/// A frame the server must send.
#[derive(Debug, Clone, PartialEq)]
enum Ev {
    /// The reply to a heartbeat whose ref was this.
    Reply(String),
    Pong(Vec<u8>),
}

impl Ev {
    fn matches(&self, got: &Event) -> bool {
        match (self, got) {
            (Ev::Reply(r), Event::Text(t)) => {
                let want =
                    json!([null, r, "phoenix", "phx_reply", {"status": "ok", "response": {}}]);
                serde_json::from_str::<Value>(t).is_ok_and(|v| v == want)
            }
            (Ev::Pong(p), Event::Pong(got)) => p == got,
            _ => false,
        }
    }
}

fn pong(p: impl Into<Vec<u8>>) -> Ev {
    Ev::Pong(p.into())
}

enum Step {
    /// The frames in one write.
    Send(Vec<F>),
    /// One write per frame (Autobahn's `sync`).
    FrameWise(Vec<F>),
    /// Writes of this many bytes (Autobahn's `chopsize`).
    Chopped(Vec<F>, usize),
    /// Raw bytes in one write (part of a frame).
    Bytes(Vec<u8>),
    /// The next frame must be this (where Autobahn waits).
    Recv(Ev),
}

/// How a case must end.
enum End {
    /// Exactly these frames; then the client closes with 1000, echoed.
    Clean(Vec<Ev>),
    /// The server fails the connection with this close, sending nothing before.
    Fails(Close),
    /// The same, after either these frames (OK) or none (Autobahn's
    /// NON-STRICT: they were queued when the bad frame was read).
    FailsAfter(Close, Vec<Ev>),
    /// The client closed: the server echoes this code, after a prefix of
    /// these frames (what it answered before it read the close).
    Echoes(u16, Vec<Ev>),
}

struct Case {
    id: String,
    steps: Vec<Step>,
    end: End,
}

fn case(id: impl Into<String>, steps: Vec<Step>, end: End) -> Case {
    Case {
        id: id.into(),
        steps,
        end,
    }
}

fn send(frames: Vec<F>) -> Vec<Step> {
    vec![Step::Send(frames)]
}

/// What comes before and after a heartbeat's ref.
const HB_HEAD: &[u8] = br#"[null,""#;
const HB_TAIL: &[u8] = br#"","phoenix","heartbeat",{}]"#;

/// A heartbeat with ref `r` (raw bytes, which may be invalid UTF-8).
fn hb(r: &[u8]) -> Vec<u8> {
    [HB_HEAD, r, HB_TAIL].concat()
}

/// A text heartbeat of exactly `len` bytes: its ref is `*` repeated.
fn hb_of(len: usize) -> (Vec<u8>, Ev) {
    let r = "*".repeat(len - hb(b"").len());
    (hb(r.as_bytes()), Ev::Reply(r))
}

/// A V2 binary heartbeat (kind 0 push) of exactly `len` bytes, padded
/// with 0xFE after ref `b`.
fn bin_hb_of(len: usize) -> (Vec<u8>, Ev) {
    let mut f = vec![0, 0, 1, 7, 9];
    f.extend_from_slice(b"bphoenixheartbeat");
    f.resize(len, 0xFE);
    (f, Ev::Reply("b".into()))
}

/// `msg` split at `at` into a fragmented message of `opcode`.
fn fragments(opcode: u8, msg: &[u8], at: &[usize]) -> Vec<F> {
    let mut cuts = vec![0];
    cuts.extend_from_slice(at);
    cuts.push(msg.len());
    let n = cuts.len() - 1;
    (0..n)
        .map(|i| {
            let op = if i == 0 { opcode } else { CONTINUATION };
            let f = F::new(op, &msg[cuts[i]..cuts[i + 1]]);
            if i + 1 < n {
                f.more()
            } else {
                f
            }
        })
        .collect()
}

/// `msg` in fragments of `size` bytes.
fn fragments_of(opcode: u8, msg: &[u8], size: usize) -> Vec<F> {
    let at: Vec<usize> = (size..msg.len()).step_by(size).collect();
    fragments(opcode, msg, &at)
}

/// A pod and a canary client that must stay unaffected.
struct Pod {
    gw: GatewayProcess,
    canary: PhxClient,
}

impl Pod {
    async fn start() -> Pod {
        let gw = GatewayProcess::builder(BIN).start().await;
        let mut canary = gw.client().await;
        canary.heartbeat("canary").await;
        Pod { gw, canary }
    }

    async fn ws(&self) -> RawWs {
        RawWs::connect(self.gw.addr, "/socket/websocket?vsn=2.0.0").await
    }

    /// Runs each case on a connection of its own, then checks the canary.
    async fn run(&mut self, cases: Vec<Case>) {
        for c in cases {
            self.run_case(c).await;
        }
        self.canary.heartbeat("canary").await;
        assert!(self.gw.alive());
    }

    async fn run_case(&self, c: Case) {
        let id = c.id;
        let mut ws = self.ws().await;
        for step in c.steps {
            match step {
                Step::Send(f) => ws.send(&f).await,
                Step::FrameWise(f) => ws.send_frame_wise(&f).await,
                Step::Chopped(f, n) => ws.send_chopped(&f, n).await,
                Step::Bytes(b) => ws.send_bytes(&b).await,
                Step::Recv(ev) => {
                    let got = ws.next().await;
                    assert!(ev.matches(&got), "{id}: expected {ev:?}, got {got:?}");
                }
            }
        }
        let same = |want: &[Ev], got: &[Event]| {
            want.len() == got.len() && want.iter().zip(got).all(|(w, g)| w.matches(g))
        };
        match c.end {
            End::Clean(want) => {
                for ev in want {
                    let got = ws.next().await;
                    assert!(ev.matches(&got), "{id}: expected {ev:?}, got {got:?}");
                }
                ws.send(&[F::close(Some(1000), b"")]).await;
                let (got, code, _) = ws.until_close().await;
                assert!(got.is_empty(), "{id}: unexpected {got:?}");
                assert_eq!(code, Some(1000), "{id}");
            }
            End::Fails((code, reason)) => {
                let (got, c, r) = ws.until_close().await;
                assert!(got.is_empty(), "{id}: unexpected {got:?}");
                assert_eq!((c, r.as_str()), (Some(code), reason), "{id}");
            }
            End::FailsAfter((code, reason), want) => {
                let (got, c, r) = ws.until_close().await;
                assert!(got.is_empty() || same(&want, &got), "{id}: got {got:?}");
                assert_eq!((c, r.as_str()), (Some(code), reason), "{id}");
            }
            End::Echoes(code, want) => {
                let (got, c, _) = ws.until_close().await;
                assert!(
                    same(&want[..got.len().min(want.len())], &got),
                    "{id}: got {got:?}"
                );
                assert_eq!(c, Some(code), "{id}");
            }
        }
    }
}

/// Autobahn 1: text and binary messages of every length encoding, whole
/// and in chops of 997 bytes.
#[tokio::test]
async fn framing_1() {
    let mut cases = vec![
        // An empty message is not a Phoenix message: not applicable.
        case("1.1.1", send(vec![F::text("")]), End::Fails(NOT_PHOENIX)),
        case("1.2.1", send(vec![F::binary("")]), End::Fails(NOT_PHOENIX)),
    ];
    let lens = [125, 126, 127, 128, 65535, 65536];
    for (i, len) in lens.into_iter().enumerate() {
        let (msg, ev) = hb_of(len);
        cases.push(case(
            format!("1.1.{}", i + 2),
            send(vec![F::text(msg)]),
            End::Clean(vec![ev]),
        ));
        let (msg, ev) = bin_hb_of(len);
        cases.push(case(
            format!("1.2.{}", i + 2),
            send(vec![F::binary(msg)]),
            End::Clean(vec![ev]),
        ));
    }
    let (msg, ev) = hb_of(65536);
    let steps = vec![Step::Chopped(vec![F::text(msg)], 997)];
    cases.push(case("1.1.8", steps, End::Clean(vec![ev])));
    let (msg, ev) = bin_hb_of(65536);
    let steps = vec![Step::Chopped(vec![F::binary(msg)], 997)];
    cases.push(case("1.2.8", steps, End::Clean(vec![ev])));
    Pod::start().await.run(cases).await;
}

/// Autobahn 2: pings are answered with pongs of the same payload, pongs
/// are ignored, a ping over 125 bytes is a protocol error.
#[tokio::test]
async fn pings_and_pongs_2() {
    let bin = b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff".to_vec();
    let ping = |p: &[u8]| send(vec![F::ping(p)]);
    let ten: Vec<F> = (0..10).map(|i| F::ping(format!("payload-{i}"))).collect();
    let pongs: Vec<Ev> = (0..10).map(|i| pong(format!("payload-{i}"))).collect();
    let cases = vec![
        case("2.1", ping(b""), End::Clean(vec![pong("")])),
        case(
            "2.2",
            ping(b"Hello, world!"),
            End::Clean(vec![pong("Hello, world!")]),
        ),
        case("2.3", ping(&bin), End::Clean(vec![pong(bin.clone())])),
        case(
            "2.4",
            ping(&[0xFE; 125]),
            End::Clean(vec![pong([0xFE; 125])]),
        ),
        case("2.5", ping(&[0xFE; 126]), End::Fails(PROTOCOL)),
        case(
            "2.6",
            vec![Step::Chopped(vec![F::ping([0xFE; 125])], 1)],
            End::Clean(vec![pong([0xFE; 125])]),
        ),
        case(
            "2.7",
            send(vec![F::pong(""), F::close(Some(1000), b"")]),
            End::Echoes(1000, vec![]),
        ),
        case(
            "2.8",
            send(vec![
                F::pong("unsolicited pong payload"),
                F::close(Some(1000), b""),
            ]),
            End::Echoes(1000, vec![]),
        ),
        case(
            "2.9",
            send(vec![
                F::pong("unsolicited pong payload"),
                F::ping("ping payload"),
            ]),
            End::Clean(vec![pong("ping payload")]),
        ),
        case("2.10", send(ten.clone()), End::Clean(pongs.clone())),
        case("2.11", vec![Step::Chopped(ten, 1)], End::Clean(pongs)),
    ];
    Pod::start().await.run(cases).await;
}

/// Autobahn 3: any RSV bit (no extension is negotiated) fails the connection.
#[tokio::test]
async fn reserved_bits_3() {
    let (msg, ev) = hb_of(40);
    let then_rsv = |rsv| {
        vec![
            F::text(msg.clone()),
            F::text(msg.clone()).rsv(rsv),
            F::ping(""),
        ]
    };
    let after = || End::FailsAfter(PROTOCOL, vec![ev.clone()]);
    let cases = vec![
        case(
            "3.1",
            send(vec![F::text(msg.clone()).rsv(1)]),
            End::Fails(PROTOCOL),
        ),
        case("3.2", send(then_rsv(2)), after()),
        case("3.3", vec![Step::FrameWise(then_rsv(3))], after()),
        case("3.4", vec![Step::Chopped(then_rsv(4), 1)], after()),
        case(
            "3.5",
            send(vec![F::binary(bin_hb_of(30).0).rsv(5)]),
            End::Fails(PROTOCOL),
        ),
        case(
            "3.6",
            send(vec![F::ping("Hello, world!").rsv(6)]),
            End::Fails(PROTOCOL),
        ),
        case(
            "3.7",
            send(vec![F::close(Some(1000), b"").rsv(7)]),
            End::Fails(PROTOCOL),
        ),
    ];
    let mut pod = Pod::start().await;
    pod.run(cases).await;
    // Counted under their own reason (when each connection's task ends).
    let gw = &pod.gw;
    test_support::wait::until("7 protocol_error closes", test_support::SETTLE, || async {
        let (_, metrics) = gw.get("/metrics").await.ok_or("no answer")?;
        let closed = metrics
            .lines()
            .find(|l| {
                l.starts_with("gateway_connections_closed_total{")
                    && l.contains(r#"transport="websocket""#)
                    && l.contains(r#"reason="protocol_error""#)
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        if closed == Some(7.0) {
            Ok(())
        } else {
            Err(format!("{closed:?}"))
        }
    })
    .await;
}

/// Autobahn 4: reserved opcodes, data (3–7) and control (11–15).
#[tokio::test]
async fn opcodes_4() {
    let (msg, ev) = hb_of(40);
    let mut cases = Vec::new();
    for (id, op, payload, chop) in [
        ("4.1.1", 3, false, None),
        ("4.1.2", 4, true, None),
        ("4.1.3", 5, false, None),
        ("4.1.4", 6, true, None),
        ("4.1.5", 7, true, Some(1)),
        ("4.2.1", 11, false, None),
        ("4.2.2", 12, true, None),
        ("4.2.3", 13, false, None),
        ("4.2.4", 14, true, None),
        ("4.2.5", 15, true, Some(1)),
    ] {
        let bad = F::new(
            op,
            if payload {
                b"reserved opcode payload".to_vec()
            } else {
                vec![]
            },
        );
        // Cases 1–2 send the frame alone; 3–5 after a message, before a ping.
        let c = if id.ends_with('1') || id.ends_with('2') {
            case(id, send(vec![bad]), End::Fails(PROTOCOL))
        } else {
            let frames = vec![F::text(msg.clone()), bad, F::ping("")];
            let step = match chop {
                Some(n) => Step::Chopped(frames, n),
                None => Step::Send(frames),
            };
            case(id, vec![step], End::FailsAfter(PROTOCOL, vec![ev.clone()]))
        };
        cases.push(c);
    }
    Pod::start().await.run(cases).await;
}

/// Autobahn 5: fragmentation, control frames between fragments, and
/// continuations with nothing to continue.
#[tokio::test]
async fn fragmentation_5() {
    let (msg, ev) = hb_of(40);
    let two = fragments(TEXT, &msg, &[20]);
    let with_ping = vec![two[0].clone(), F::ping("ping payload"), two[1].clone()];
    let stray = |fin: bool| {
        let c = F::cont("non-continuation payload");
        vec![if fin { c } else { c.more() }, F::text(msg.clone())]
    };
    let repeated = |fin: bool| {
        let c = F::cont("fragment1");
        let c = if fin { c } else { c.more() };
        let mut v = vec![c];
        v.extend(two.clone());
        [v.clone(), v].concat()
    };
    let pings_between = |sync: bool| {
        let five = fragments(TEXT, &msg, &[8, 16, 24, 32]);
        let part1 = vec![five[0].clone(), five[1].clone(), F::ping("pongme 1!")];
        let part2 = vec![
            five[2].clone(),
            five[3].clone(),
            F::ping("pongme 2!"),
            five[4].clone(),
        ];
        let step = |f| {
            if sync {
                Step::FrameWise(f)
            } else {
                Step::Send(f)
            }
        };
        vec![step(part1), Step::Recv(pong("pongme 1!")), step(part2)]
    };
    let clean = |evs: Vec<Ev>| End::Clean(evs);
    let fragmented_ping = vec![F::ping("fragment1").more(), F::cont("fragment2")];
    let fragmented_pong = vec![F::pong("fragment1").more(), F::cont("fragment2")];
    let mut after_complete = two.clone();
    after_complete.extend([F::cont("fragment3").more(), F::text("fragment4")]);
    let cases = vec![
        case("5.1", send(fragmented_ping), End::Fails(PROTOCOL)),
        case("5.2", send(fragmented_pong), End::Fails(PROTOCOL)),
        case("5.3", send(two.clone()), clean(vec![ev.clone()])),
        case(
            "5.4",
            vec![Step::FrameWise(two.clone())],
            clean(vec![ev.clone()]),
        ),
        case(
            "5.5",
            vec![Step::Chopped(two.clone(), 1)],
            clean(vec![ev.clone()]),
        ),
        case(
            "5.6",
            send(with_ping.clone()),
            clean(vec![pong("ping payload"), ev.clone()]),
        ),
        case(
            "5.7",
            vec![Step::FrameWise(with_ping.clone())],
            clean(vec![pong("ping payload"), ev.clone()]),
        ),
        case(
            "5.8",
            vec![Step::Chopped(with_ping, 1)],
            clean(vec![pong("ping payload"), ev.clone()]),
        ),
        case("5.9", send(stray(true)), End::Fails(PROTOCOL)),
        case(
            "5.10",
            vec![Step::FrameWise(stray(true))],
            End::Fails(PROTOCOL),
        ),
        case(
            "5.11",
            vec![Step::Chopped(stray(true), 1)],
            End::Fails(PROTOCOL),
        ),
        case("5.12", send(stray(false)), End::Fails(PROTOCOL)),
        case(
            "5.13",
            vec![Step::FrameWise(stray(false))],
            End::Fails(PROTOCOL),
        ),
        case(
            "5.14",
            vec![Step::Chopped(stray(false), 1)],
            End::Fails(PROTOCOL),
        ),
        case(
            "5.15",
            send(after_complete),
            End::FailsAfter(PROTOCOL, vec![ev.clone()]),
        ),
        case("5.16", send(repeated(false)), End::Fails(PROTOCOL)),
        case("5.17", send(repeated(true)), End::Fails(PROTOCOL)),
        case(
            "5.18",
            send(vec![F::text("fragment1").more(), F::text("fragment2")]),
            End::Fails(PROTOCOL),
        ),
        case(
            "5.19",
            pings_between(false),
            clean(vec![pong("pongme 2!"), ev.clone()]),
        ),
        case(
            "5.20",
            pings_between(true),
            clean(vec![pong("pongme 2!"), ev]),
        ),
    ];
    Pod::start().await.run(cases).await;
}

const KOSME: &[u8] = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5";

/// Autobahn 6.5–6.23 (its `case6_x_x.py`, from Markus Kuhn's UTF-8 decoder
/// test): groups of `(valid, bytes)`, numbered from 6.5.
fn utf8_sequences() -> Vec<Vec<(bool, Vec<u8>)>> {
    let all = |valid: bool, seqs: &[&[u8]]| seqs.iter().map(|s| (valid, s.to_vec())).collect();
    let prefixes = (1..=KOSME.len())
        .map(|i| ([2, 5, 7, 9, 11].contains(&i), KOSME[..i].to_vec()))
        .collect();
    let lonely = [
        (0xC0, 0xDF),
        (0xE0, 0xEF),
        (0xF0, 0xF7),
        (0xF8, 0xFB),
        (0xFC, 0xFD),
    ]
    .iter()
    .map(|&(a, b)| (false, (a..b).flat_map(|c| [c, 0x20]).collect()))
    .collect();
    let missing: [&[u8]; 10] = [
        b"\xc0",
        b"\xe0\x80",
        b"\xf0\x80\x80",
        b"\xf8\x80\x80\x80",
        b"\xfc\x80\x80\x80\x80",
        b"\xdf",
        b"\xef\xbf",
        b"\xf7\xbf\xbf",
        b"\xfb\xbf\xbf\xbf",
        b"\xfd\xbf\xbf\xbf\xbf",
    ];
    let mut continuations: Vec<(bool, Vec<u8>)> = all(
        false,
        &[
            b"\x80",
            b"\xbf",
            b"\x80\xbf",
            b"\x80\xbf\x80",
            b"\x80\xbf\x80\xbf",
        ],
    );
    continuations.extend(all(
        false,
        &[b"\x80\xbf\x80\xbf\x80", b"\x80\xbf\x80\xbf\x80\xbf"],
    ));
    continuations.push((false, (0x80..0xBF).collect()));
    let mut nonchars: Vec<(bool, Vec<u8>)> = all(true, &[b"\xef\xbf\xbe", b"\xef\xbf\xbf"]);
    for z1 in [0xF0u8, 0xF1, 0xF2, 0xF3, 0xF4] {
        for z2 in [0x8Fu8, 0x9F, 0xAF, 0xBF] {
            for z3 in [0xBEu8, 0xBF] {
                let overlong = z1 == 0xF0 && z2 == 0x8F;
                if (z1 != 0xF4 || z2 == 0x8F) && !overlong {
                    nonchars.push((true, vec![z1, z2, 0xBF, z3]));
                }
            }
        }
    }
    let surrogates: [&[u8]; 7] = [
        b"\xed\xa0\x80",
        b"\xed\xad\xbf",
        b"\xed\xae\x80",
        b"\xed\xaf\xbf",
        b"\xed\xb0\x80",
        b"\xed\xbe\x80",
        b"\xed\xbf\xbf",
    ];
    let paired = [
        (0, 4),
        (0, 6),
        (1, 4),
        (1, 6),
        (2, 4),
        (2, 6),
        (3, 4),
        (3, 6),
    ]
    .iter()
    .map(|&(a, b)| (false, [surrogates[a], surrogates[b]].concat()))
    .collect();
    let valid_first = b"hello\xF0\xA4\xAD\xA2world";
    let mut boundary: Vec<(bool, Vec<u8>)> = all(
        true,
        &[
            b"\xed\x9f\xbf",
            b"\xee\x80\x80",
            b"\xef\xbf\xbd",
            b"\xf4\x8f\xbf\xbf",
        ],
    );
    boundary.push((false, b"\xf4\x90\x80\x80".to_vec()));
    vec![
        all(
            true,
            &[
                b"hello\x24world",
                b"hello\xC2\xA2world",
                b"hello\xE2\x82\xACworld",
                valid_first,
                KOSME,
            ],
        ),
        prefixes,
        all(
            true,
            &[b"\x00", b"\xc2\x80", b"\xe0\xa0\x80", b"\xf0\x90\x80\x80"],
        ),
        all(
            false,
            &[b"\xf8\x88\x80\x80\x80", b"\xfc\x84\x80\x80\x80\x80"],
        ),
        all(
            true,
            &[b"\x7f", b"\xdf\xbf", b"\xef\xbf\xbf", b"\xf4\x8f\xbf\xbf"],
        ),
        all(
            false,
            &[
                b"\xf7\xbf\xbf\xbf",
                b"\xfb\xbf\xbf\xbf\xbf",
                b"\xfd\xbf\xbf\xbf\xbf\xbf",
            ],
        ),
        boundary,
        continuations,
        lonely,
        all(false, &missing),
        vec![(false, missing.concat())],
        all(false, &[b"\xfe", b"\xff", b"\xfe\xfe\xff\xff"]),
        all(
            false,
            &[
                b"\xc0\xaf",
                b"\xe0\x80\xaf",
                b"\xf0\x80\x80\xaf",
                b"\xf8\x80\x80\x80\xaf",
                b"\xfc\x80\x80\x80\x80\xaf",
            ],
        ),
        all(
            false,
            &[
                b"\xc1\xbf",
                b"\xe0\x9f\xbf",
                b"\xf0\x8f\xbf\xbf",
                b"\xf8\x87\xbf\xbf\xbf",
                b"\xfc\x83\xbf\xbf\xbf\xbf",
            ],
        ),
        all(
            false,
            &[
                b"\xc0\x80",
                b"\xe0\x80\x80",
                b"\xf0\x80\x80\x80",
                b"\xf8\x80\x80\x80\x80",
                b"\xfc\x80\x80\x80\x80\x80",
            ],
        ),
        all(false, &surrogates),
        paired,
        nonchars,
        all(
            true,
            &[
                b"\xef\xbf\xb9",
                b"\xef\xbf\xba",
                b"\xef\xbf\xbb",
                b"\xef\xbf\xbc",
                b"\xef\xbf\xbd",
                b"\xef\xbf\xbe",
                b"\xef\xbf\xbf",
            ],
        ),
    ]
}

/// A heartbeat whose ref is `payload`: echoed if it is valid UTF-8 (unless
/// JSON forbids it raw in a string: U+0000), else 1007 `invalid utf-8`.
fn utf8_case(
    id: String,
    valid: bool,
    payload: &[u8],
    steps: impl Fn(Vec<u8>) -> Vec<Step>,
) -> Case {
    let end = match std::str::from_utf8(payload) {
        Ok(s) if valid && s.bytes().all(|b| b >= 0x20) => End::Clean(vec![Ev::Reply(s.into())]),
        Ok(_) if valid => End::Fails(NOT_PHOENIX),
        _ => End::Fails(BAD_UTF8),
    };
    case(id, steps(hb(payload)), end)
}

/// Autobahn 6: UTF-8 in text messages, whole and fragmented anywhere;
/// invalid text fails fast, as soon as a fragment makes it invalid.
#[tokio::test]
async fn utf8_6() {
    let mut cases = vec![
        // Empty messages are not Phoenix messages: not applicable.
        case("6.1.1", send(vec![F::text("")]), End::Fails(NOT_PHOENIX)),
        case(
            "6.1.2",
            send(vec![F::text("").more(), F::cont("").more(), F::cont("")]),
            End::Fails(NOT_PHOENIX),
        ),
    ];
    let (msg, ev) = hb_of(40);
    let middle = vec![F::text("").more(), F::cont(msg).more(), F::cont("")];
    cases.push(case("6.1.3", send(middle), End::Clean(vec![ev])));
    let hello = "Hello-µ@ßöäüàá-UTF-8!!".as_bytes();
    let one = |m: Vec<u8>| send(vec![F::text(m)]);
    let octets = |m: Vec<u8>| send(fragments_of(TEXT, &m, 1));
    cases.push(utf8_case("6.2.1".into(), true, hello, one));
    let at = HB_HEAD.len() + "Hello-µ@ßöä".len();
    cases.push(utf8_case("6.2.2".into(), true, hello, |m| {
        send(fragments(TEXT, &m, &[at]))
    }));
    cases.push(utf8_case("6.2.3".into(), true, hello, octets));
    cases.push(utf8_case("6.2.4".into(), true, KOSME, octets));
    let invalid = [KOSME, b"\xed\xa0\x80", b"edited"].concat();
    cases.push(utf8_case("6.3.1".into(), false, &invalid, one));
    // Fail fast: octet-wise fragments up to the invalid octet (0xA0 after
    // 0xED); the rest never comes.
    let early = &hb(&invalid)[..HB_HEAD.len() + KOSME.len() + 2];
    let mut upto = fragments_of(TEXT, early, 1);
    if let Some(last) = upto.last_mut() {
        last.fin = false;
    }
    cases.push(case(
        "6.3.2",
        vec![Step::FrameWise(upto)],
        End::Fails(BAD_UTF8),
    ));
    // 6.4.1–2: a valid first fragment (a pong proves it was read), then the
    // fragment that makes the text invalid fails it, the last one unsent.
    let bad_at = |first: &[u8], second: &[u8]| {
        vec![
            Step::Send(vec![
                F::text([HB_HEAD, first].concat()).more(),
                F::ping("A"),
            ]),
            Step::Recv(pong("A")),
            Step::Send(vec![F::cont(second).more()]),
        ]
    };
    let p = [KOSME, b"\xf4\x90\x80\x80", b"edited"].concat();
    cases.push(case(
        "6.4.1",
        bad_at(KOSME, &p[11..15]),
        End::Fails(BAD_UTF8),
    ));
    cases.push(case(
        "6.4.2",
        bad_at(&p[..12], &p[12..13]),
        End::Fails(BAD_UTF8),
    ));
    // 6.4.3–4: the same cuts, as chops of one frame. Text is checked once a
    // frame is complete, so these fail at its end (NON-STRICT).
    let chops = |cuts: [usize; 2]| {
        let bytes = F::text(hb(&p)).to_bytes();
        let at = bytes.len() - hb(&p).len() + HB_HEAD.len();
        let (a, b) = (at + cuts[0], at + cuts[1]);
        [&bytes[..a], &bytes[a..b], &bytes[b..]]
            .map(|c| Step::Bytes(c.to_vec()))
            .into()
    };
    cases.push(case("6.4.3", chops([11, 15]), End::Fails(BAD_UTF8)));
    cases.push(case("6.4.4", chops([12, 13]), End::Fails(BAD_UTF8)));
    for (g, group) in utf8_sequences().into_iter().enumerate() {
        for (j, (valid, payload)) in group.into_iter().enumerate() {
            cases.push(utf8_case(
                format!("6.{}.{}", g + 5, j + 1),
                valid,
                &payload,
                one,
            ));
        }
    }
    Pod::start().await.run(cases).await;
}

/// Autobahn 7: the closing handshake. A client's close is echoed with its
/// code and ends the connection (frames after it are ignored); a bad close
/// frame fails it.
#[tokio::test]
async fn close_7() {
    let (msg, ev) = hb_of(40);
    let (big, big_ev) = hb_of(256 << 10);
    let bye = || F::close(Some(1000), b"");
    let echoes = |frames: Vec<F>| (send(frames), End::Echoes(1000, vec![]));
    let mut cases = vec![
        case(
            "7.1.1",
            send(vec![F::text(msg.clone())]),
            End::Clean(vec![ev.clone()]),
        ),
        {
            let (steps, end) = echoes(vec![bye(), F::close(None, b"")]);
            case("7.1.2", steps, end)
        },
        {
            let (steps, end) = echoes(vec![bye(), F::ping("")]);
            case("7.1.3", steps, end)
        },
        {
            let (steps, end) = echoes(vec![bye(), F::text(msg.clone())]);
            case("7.1.4", steps, end)
        },
        {
            let (steps, end) = echoes(vec![
                F::text("fragment1").more(),
                bye(),
                F::cont("fragment2"),
            ]);
            case("7.1.5", steps, end)
        },
        // Informational in Autobahn: the replies may or may not precede the close.
        case(
            "7.1.6",
            send(vec![F::text(big), F::text(msg), bye(), F::ping("")]),
            End::Echoes(1000, vec![big_ev, ev]),
        ),
        case(
            "7.3.1",
            send(vec![F::close(None, b"")]),
            End::Echoes(1000, vec![]),
        ),
        case("7.3.2", send(vec![F::new(0x8, "a")]), End::Fails(PROTOCOL)),
        case("7.3.3", send(vec![bye()]), End::Echoes(1000, vec![])),
    ];
    for (id, reason, end) in [
        ("7.3.4", b"Hello World!".to_vec(), End::Echoes(1000, vec![])),
        ("7.3.5", vec![b'*'; 123], End::Echoes(1000, vec![])),
        ("7.3.6", vec![b'*'; 124], End::Fails(PROTOCOL)),
        (
            "7.5.1",
            [KOSME, b"\xed\xa0\x80edited"].concat(),
            End::Fails(BAD_UTF8),
        ),
    ] {
        cases.push(case(id, send(vec![F::close(Some(1000), &reason)]), end));
    }
    let valid = [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ];
    for (i, code) in valid.into_iter().enumerate() {
        let steps = send(vec![F::close(Some(code), b"")]);
        cases.push(case(
            format!("7.7.{}", i + 1),
            steps,
            End::Echoes(code, vec![]),
        ));
    }
    let invalid = [0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999];
    for (i, code) in invalid.into_iter().enumerate() {
        let steps = send(vec![F::close(Some(code), b"")]);
        cases.push(case(format!("7.9.{}", i + 1), steps, End::Fails(PROTOCOL)));
    }
    // Undefined by the RFC (Autobahn: informational); refused as unassigned.
    for (id, code) in [("7.13.1", 5000), ("7.13.2", 65535)] {
        cases.push(case(
            id,
            send(vec![F::close(Some(code), b"")]),
            End::Fails(PROTOCOL),
        ));
    }
    Pod::start().await.run(cases).await;
}

/// Autobahn 9, scaled to `max_frame_size` (1 MiB by default, where the
/// suite goes to 16 MiB): large messages whole, fragmented and chopped up
/// to the limit, refused over it; 1000 round trips per message size.
#[tokio::test]
async fn limits_9() {
    type Make = fn(usize) -> (Vec<u8>, Ev);
    let kinds: [(u8, Make); 2] = [(TEXT, hb_of), (BINARY, bin_hb_of)];
    let mut cases = Vec::new();
    for (k, (op, make)) in kinds.into_iter().enumerate() {
        let whole = [64 << 10, 256 << 10, MAX, 4 << 20, 8 << 20, 16 << 20];
        for (i, len) in whole.into_iter().enumerate() {
            let (msg, ev) = make(len);
            let end = if len <= MAX {
                End::Clean(vec![ev])
            } else {
                End::Fails(TOO_BIG)
            };
            cases.push(case(
                format!("9.{}.{}", k + 1, i + 1),
                send(vec![F::new(op, msg)]),
                end,
            ));
        }
        let (msg, ev) = make(MAX);
        let sizes = [
            64,
            256,
            1 << 10,
            4 << 10,
            16 << 10,
            64 << 10,
            256 << 10,
            1 << 20,
            4 << 20,
        ];
        for (i, size) in sizes.into_iter().enumerate() {
            let steps = send(fragments_of(op, &msg, size));
            cases.push(case(
                format!("9.{}.{}", k + 3, i + 1),
                steps,
                End::Clean(vec![ev.clone()]),
            ));
        }
        for (i, chop) in [64, 128, 256, 512, 1024, 2048].into_iter().enumerate() {
            let steps = vec![Step::Chopped(vec![F::new(op, msg.clone())], chop)];
            cases.push(case(
                format!("9.{}.{}", k + 5, i + 1),
                steps,
                End::Clean(vec![ev.clone()]),
            ));
        }
        let min = make(40).0.len() - 40 + if op == TEXT { 34 } else { 22 };
        for (i, len) in [0, 16, 64, 256, 1024, 4096].into_iter().enumerate() {
            let (msg, ev) = make(len.max(min));
            let steps = (0..1000)
                .flat_map(|_| {
                    [
                        Step::Send(vec![F::new(op, msg.clone())]),
                        Step::Recv(ev.clone()),
                    ]
                })
                .collect();
            cases.push(case(
                format!("9.{}.{}", k + 7, i + 1),
                steps,
                End::Clean(vec![]),
            ));
        }
    }
    Pod::start().await.run(cases).await;
}

/// RFC 6455 §5.1–5.2 rules Autobahn does not exercise: unmasked client
/// frames, a 64-bit length with its most significant bit set.
#[tokio::test]
async fn framing_extras() {
    let (msg, _) = hb_of(40);
    let mut huge = vec![0x82, 0x80 | 127];
    huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
    huge.extend_from_slice(&[0; 4]);
    let cases = vec![
        case(
            "unmasked text",
            send(vec![F::text(msg).unmasked()]),
            End::Fails(PROTOCOL),
        ),
        case(
            "unmasked ping",
            send(vec![F::ping("x").unmasked()]),
            End::Fails(PROTOCOL),
        ),
        case("length msb", vec![Step::Bytes(huge)], End::Fails(PROTOCOL)),
    ];
    Pod::start().await.run(cases).await;
}

/// The opening handshake (§4.2.1): anything but a GET over HTTP/1.1 with
/// `Host`, `Upgrade`, `Connection`, version 13 and a key that is the base64
/// of 16 bytes is refused before any WebSocket frame, 426 naming version 13
/// for another version.
#[tokio::test]
async fn handshake_4_2_1() {
    let mut pod = Pod::start().await;
    let addr = pod.gw.addr;
    let request = |line: &str, headers: &[(&str, &str)]| {
        let mut r = format!("{line}\r\n");
        for (k, v) in headers {
            r.push_str(&format!("{k}: {v}\r\n"));
        }
        (r + "\r\n").into_bytes()
    };
    let get = "GET /socket/websocket?vsn=2.0.0 HTTP/1.1";
    let host = format!("{addr}");
    let good = |skip: &str, extra: &[(&'static str, &'static str)]| {
        let mut h: Vec<(&str, &str)> = vec![
            ("Host", &host),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", test_support::raw_ws::KEY),
        ];
        h.retain(|(k, _)| *k != skip);
        h.extend_from_slice(extra);
        request(get, &h)
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(
        test_support::raw_ws::KEY.as_bytes(),
    );
    let r = RawWs::handshake_answer(addr, &good("", &[])).await;
    assert_eq!(
        (r.status, r.header("sec-websocket-accept")),
        (101, Some(accept.as_str()))
    );
    let browser = [
        ("Connection", "keep-alive, Upgrade"),
        ("Upgrade", "WebSocket"),
    ];
    let r = RawWs::handshake_answer(addr, &good("Connection", &browser)).await;
    assert_eq!(r.status, 101, "Firefox's headers: {r:?}");

    let old = good("", &[]);
    let old = String::from_utf8(old)
        .unwrap()
        .replacen("HTTP/1.1", "HTTP/1.0", 1);
    let refused: Vec<(&str, Vec<u8>)> = vec![
        ("HTTP/1.0", old.into_bytes()),
        ("no Host", good("Host", &[])),
        ("no key", good("Sec-WebSocket-Key", &[])),
        (
            "key not base64",
            good("Sec-WebSocket-Key", &[("Sec-WebSocket-Key", "not base64!")]),
        ),
        (
            "key of 15 bytes",
            good(
                "Sec-WebSocket-Key",
                &[("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25j")],
            ),
        ),
        (
            "key of 17 bytes",
            good(
                "Sec-WebSocket-Key",
                &[("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZTE=")],
            ),
        ),
        (
            "two keys",
            good("", &[("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAA==")]),
        ),
        ("no version", good("Sec-WebSocket-Version", &[])),
        ("no Upgrade", good("Upgrade", &[])),
        (
            "POST",
            String::from_utf8(good("", &[]))
                .unwrap()
                .replacen("GET", "POST", 1)
                .into_bytes(),
        ),
    ];
    for (what, req) in refused {
        let r = RawWs::handshake_answer(addr, &req).await;
        assert_eq!(r.status, 400, "{what}: {r:?}");
    }
    for version in ["8", "12", "14"] {
        let v = [("Sec-WebSocket-Version", version)];
        let r = RawWs::handshake_answer(addr, &good("Sec-WebSocket-Version", &v)).await;
        assert_eq!(
            (r.status, r.header("sec-websocket-version")),
            (426, Some("13")),
            "{version}"
        );
    }
    pod.run(vec![]).await;
}
