//! Autobahn 6: UTF-8 handling.

use crate::case::*;
use test_support::raw_ws::{RawFrame as F, TEXT};

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
    let groups = utf8_sequences();
    let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
    let autobahn = [5, 11, 4, 2, 4, 3, 5, 8, 5, 10, 1, 3, 5, 5, 5, 7, 8, 34, 7];
    assert_eq!(sizes, autobahn, "cases per group, 6.5 to 6.23");
    for (g, group) in groups.into_iter().enumerate() {
        for (j, (valid, payload)) in group.into_iter().enumerate() {
            let id = format!("6.{}.{}", g + 5, j + 1);
            // The table is Autobahn's; any correct validator agrees with it.
            assert_eq!(valid, std::str::from_utf8(&payload).is_ok(), "{id}");
            cases.push(utf8_case(id, valid, &payload, one));
        }
    }
    Pod::start().await.run(cases).await;
}
