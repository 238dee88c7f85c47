//! Autobahn 9 (limits and performance), scaled to `max_frame_size`.

use crate::case::*;
use test_support::raw_ws::{RawFrame as F, BINARY, TEXT};

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
        // The smallest heartbeat of each kind stands in for smaller sizes.
        let min = if op == TEXT {
            hb(b"").len()
        } else {
            BIN_HB_MIN
        };
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
