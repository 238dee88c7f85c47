//! Autobahn 7: the closing handshake.

use crate::case::*;
use test_support::raw_ws::RawFrame as F;

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
