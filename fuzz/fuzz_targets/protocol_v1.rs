//! The V1 JSON decoder and encoder (`protocol/v1.rs`) on arbitrary text
//! frames.
//!
//! Checks:
//! - what decodes is a JSON object whose `topic`, `event`, `ref` and
//!   `join_ref` are what serde_json reads there, with the exact payload text;
//! - arrays never decode as V1 (they are V2's shape);
//! - decode(encode(message)) == message without its join_ref, which V1
//!   frames from the server never carry.
#![no_main]

use bytes::Bytes;
use gateway::protocol::{Outbound, Vsn};
use gateway_fuzz::lenient_only;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let text = Bytes::copy_from_slice(data);
    let Ok(m) = Vsn::V1.decode_text(&text) else {
        return;
    };
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        assert!(lenient_only(data), "a decoded frame is not JSON");
        return;
    };
    let Value::Object(o) = v else {
        panic!("a V1 frame that is not an object decoded: {m:?}");
    };
    assert_eq!(
        o.get("topic").and_then(Value::as_str),
        Some(m.topic.as_str())
    );
    assert_eq!(
        o.get("event").and_then(Value::as_str),
        Some(m.event.as_str())
    );
    let r = |k: &str| match o.get(k) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => panic!("{k} {other:?} accepted"),
    };
    assert_eq!(r("ref"), m.ref_);
    assert_eq!(r("join_ref"), m.join_ref);
    let payload = m.payload.as_json().expect("text frames carry JSON");
    let pv = serde_json::from_slice::<Value>(payload.bytes()).ok();
    assert_eq!(pv.as_ref(), o.get("payload"));

    let push = Outbound::Message {
        join_ref: m.join_ref.as_deref(),
        ref_: m.ref_.as_deref(),
        topic: &m.topic,
        event: &m.event,
        payload: &m.payload,
    };
    let frame = Vsn::V1.encode(&push).expect("JSON payloads encode");
    let back = Vsn::V1
        .decode_text(frame.bytes())
        .expect("own frames decode");
    assert_eq!(back.join_ref, None, "V1 frames carry no join_ref");
    assert_eq!(
        (&back.ref_, &back.topic, &back.event, &back.payload),
        (&m.ref_, &m.topic, &m.event, &m.payload)
    );
    // The same fields as a V2 array never pass as V1.
    if let Ok(v2) = Vsn::V2.encode(&push) {
        assert!(Vsn::V1.decode_text(v2.bytes()).is_err());
    }
});
