//! The long-poll POST body (`transport/longpoll/http.rs` splits it,
//! `session.rs` decodes each line), spec §8.4.
//!
//! Input: one byte of flags (ndjson or not, V1 or V2, which size limit,
//! and whether the rest is raw body bytes or a recipe of messages), then
//! the rest.
//!
//! Checks, on raw bodies: non-UTF-8 is refused; an ndjson body gives at most
//! 100 lines, the first 100 of the body; each line, `\r` trimmed, is skipped
//! when empty, refused over the limit, decoded as a text frame when it
//! starts with `[` or `{` and as base64 of a binary frame otherwise, with
//! the connection's serializer.
//! On recipes: messages encoded as phoenix.js posts them (V2 arrays, binary
//! pushes as base64, `\n` or `\r\n` between lines) come back exactly.
#![no_main]

use arbitrary::Unstructured;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use gateway::fuzzing::{longpoll_body, longpoll_line};
use gateway::protocol::{Json, Message, Payload, Vsn};
use gateway_fuzz::{json, word};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let ndjson = flags & 1 != 0;
    let vsn = if flags & 2 != 0 { Vsn::V2 } else { Vsn::V1 };
    let max = [16, 256, 4096, 1 << 20][usize::from(flags >> 2 & 3)];
    if flags & 16 != 0 {
        recipe(rest, flags & 32 != 0);
    } else {
        raw(rest, ndjson, vsn, max);
    }
});

fn raw(body: &[u8], ndjson: bool, vsn: Vsn, max: usize) {
    let Some(lines) = longpoll_body(body, ndjson) else {
        assert!(std::str::from_utf8(body).is_err(), "UTF-8 body refused");
        return;
    };
    let text = std::str::from_utf8(body).expect("non-UTF-8 body accepted");
    if ndjson {
        let want: Vec<&str> = text.split('\n').take(100).collect();
        assert_eq!(lines, want);
    } else {
        assert_eq!(lines, [text]);
    }
    for line in &lines {
        let got = longpoll_line(vsn, line, max);
        let line = line.trim_end_matches('\r');
        let want = if line.is_empty() {
            Ok(None)
        } else if line.len() > max {
            Err(())
        } else if line.starts_with(['[', '{']) {
            vsn.decode_text(&Bytes::copy_from_slice(line.as_bytes()))
                .map(Some)
                .map_err(|_| ())
        } else {
            match STANDARD.decode(line) {
                Ok(b) => vsn.decode_binary(&Bytes::from(b)).map(Some).map_err(|_| ()),
                Err(_) => Err(()),
            }
        };
        assert_eq!(
            got.as_ref().map_err(|_| ()),
            want.as_ref().map_err(|_| ()),
            "line {line:?}"
        );
    }
}

fn recipe(data: &[u8], crlf: bool) {
    let mut u = Unstructured::new(data);
    let mut sent = Vec::new();
    let mut lines = Vec::new();
    while !u.is_empty() && sent.len() < 120 {
        let Ok(m) = message(&mut u) else { break };
        let Some(line) = phoenix_js_line(&m) else {
            continue;
        };
        lines.push(line);
        sent.push(m);
    }
    let body = lines.join(if crlf { "\r\n" } else { "\n" });
    let got: Vec<Message> = longpoll_body(body.as_bytes(), true)
        .expect("UTF-8")
        .iter()
        .filter_map(|l| longpoll_line(Vsn::V2, l, 1 << 20).expect("phoenix.js lines decode"))
        .collect();
    let want: Vec<Message> = if body.is_empty() {
        vec![]
    } else {
        sent.into_iter().take(100).collect()
    };
    assert_eq!(got, want);
}

fn message(u: &mut Unstructured<'_>) -> arbitrary::Result<Message> {
    let opt = |u: &mut Unstructured<'_>| -> arbitrary::Result<Option<String>> {
        Ok(if u.arbitrary()? {
            Some(word(u)?).filter(|s| !s.is_empty())
        } else {
            None
        })
    };
    let (join_ref, ref_, topic, event) = (opt(u)?, opt(u)?, word(u)?, word(u)?);
    let payload = if u.ratio(1, 4)? {
        Payload::Binary(Bytes::from(u.arbitrary::<Vec<u8>>()?))
    } else {
        let text = serde_json::to_vec(&json(u, 3)?).unwrap();
        Payload::Json(Json::from_bytes(text.into()).unwrap())
    };
    Ok(Message {
        join_ref,
        ref_,
        topic,
        event,
        payload,
    })
}

/// The line phoenix.js's LongPoll transport posts for `m`, if it can.
fn phoenix_js_line(m: &Message) -> Option<String> {
    match &m.payload {
        Payload::Json(j) => Some(format!(
            "[{},{},{},{},{}]",
            serde_json::to_string(&m.join_ref).unwrap(),
            serde_json::to_string(&m.ref_).unwrap(),
            serde_json::to_string(&m.topic).unwrap(),
            serde_json::to_string(&m.event).unwrap(),
            j.as_str()
        )),
        Payload::Binary(p) => {
            let jr = m.join_ref.as_deref().unwrap_or("");
            let r = m.ref_.as_deref().unwrap_or("");
            let fields = [jr, r, &m.topic, &m.event];
            if fields.iter().any(|f| f.len() > 255) {
                return None;
            }
            let mut f = vec![0u8];
            f.extend(fields.iter().map(|s| s.len() as u8));
            for s in fields {
                f.extend_from_slice(s.as_bytes());
            }
            f.extend_from_slice(p);
            Some(STANDARD.encode(f))
        }
    }
}
