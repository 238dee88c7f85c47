//! Autobahn 1–5: framing, pings and pongs, reserved bits, opcodes,
//! fragmentation; and RFC 6455 framing rules Autobahn does not exercise.

use crate::case::*;
use test_support::raw_ws::{RawFrame as F, TEXT};

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
    let labels = [("transport", "websocket"), ("reason", "protocol_error")];
    let closed = "gateway_connections_closed_total";
    test_support::scrape::wait_for(pod.gw.addr, closed, &labels, 7.0).await;
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
