//! The V2 JSON decoder and encoder (`protocol/v2.rs`) on arbitrary text
//! frames.
//!
//! Checks:
//! - a frame decodes exactly when serde_json reads it as an array of at
//!   least five elements shaped `[ref|null, ref|null, string, string, any]`
//!   (a ref being a string or an integer), and to the same fields;
//! - the payload is kept as the exact JSON text of the fifth element;
//! - decode(encode(message)) == message, for pushes; a reply encodes as
//!   `[jr, ref, topic, "phx_reply", {"status", "response"}]`.
#![no_main]

use bytes::Bytes;
use gateway::protocol::{Message, Outbound, Payload, Vsn};
use gateway_fuzz::lenient_only;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let text = Bytes::copy_from_slice(data);
    let decoded = Vsn::V2.decode_text(&text);
    let want = reference(data);
    if decoded.is_ok() && want.is_none() && lenient_only(data) {
        return round_trip(decoded.as_ref().unwrap());
    }
    match (&decoded, &want) {
        (Ok(m), Some(w)) => {
            assert_eq!(
                (&m.join_ref, &m.ref_, &m.topic, &m.event),
                (&w.0, &w.1, &w.2, &w.3)
            );
            let p = m.payload.as_json().expect("text frames carry JSON");
            let v = serde_json::from_slice::<Value>(p.bytes());
            assert_eq!(v.ok().as_ref(), Some(&w.4), "payload");
        }
        (Err(_), None) => {}
        _ => panic!("decoder {decoded:?} but reference {want:?}"),
    }
    if let Ok(m) = decoded {
        round_trip(&m);
    }
});

type Fields = (Option<String>, Option<String>, String, String, Value);

fn reference(data: &[u8]) -> Option<Fields> {
    let Value::Array(a) = serde_json::from_slice::<Value>(data).ok()? else {
        return None;
    };
    if a.len() < 5 {
        return None;
    }
    let r = |v: &Value| match v {
        Value::Null => Some(None),
        Value::String(s) => Some(Some(s.clone())),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(Some(n.to_string())),
        _ => None,
    };
    Some((
        r(&a[0])?,
        r(&a[1])?,
        a[2].as_str()?.to_owned(),
        a[3].as_str()?.to_owned(),
        a[4].clone(),
    ))
}

fn round_trip(m: &Message) {
    let push = Outbound::Message {
        join_ref: m.join_ref.as_deref(),
        ref_: m.ref_.as_deref(),
        topic: &m.topic,
        event: &m.event,
        payload: &m.payload,
    };
    let frame = Vsn::V2.encode(&push).expect("JSON payloads encode");
    let back = Vsn::V2
        .decode_text(frame.bytes())
        .expect("own frames decode");
    assert_eq!(&back, m, "decode(encode(m)) != m");

    let reply = Outbound::Reply {
        join_ref: m.join_ref.as_deref(),
        ref_: m.ref_.as_deref(),
        topic: &m.topic,
        status: &m.event,
        response: &m.payload,
    };
    let frame = Vsn::V2.encode(&reply).expect("JSON payloads encode");
    let (Ok(got), Ok(payload)) = (
        serde_json::from_slice::<Value>(frame.bytes()),
        serde_json::from_slice::<Value>(m.payload.as_json().unwrap().bytes()),
    ) else {
        return assert!(lenient_only(m.payload.as_json().unwrap().bytes()));
    };
    let want =
        json!([m.join_ref, m.ref_, m.topic, "phx_reply", {"status": m.event, "response": payload}]);
    assert_eq!(got, want);
    let _ = Payload::empty();
}
