//! What a pod does with a message from Redis pub/sub (`pubsub-redis`'s
//! `Envelope::decode`, then `pubsub/redis.rs` and the serializers), on
//! arbitrary message bodies.
//!
//! Checks:
//! - an envelope decodes exactly when the body is a JSON object with a
//!   non-empty string `event` (and, if it has a non-null `binary`, that is
//!   a base64 string and `payload` is absent or null), to that event and
//!   the exact text of `payload` (`{}` when absent or null) or the bytes of
//!   `binary`, and its `origin` exactly when that is
//!   `{"node": string, "conn": u64}` (docs/redis.md);
//! - the frames every client gets are valid V1 and V2 JSON that decode to
//!   that event and payload; a binary payload is a V2 binary frame (V1
//!   cannot carry it, as with the in-memory broker);
//! - decode(encode(envelope)) == envelope, origin included.
#![no_main]

use base64::Engine;
use bytes::Bytes;
use gateway::protocol::{Json, Outbound, Payload, Vsn};
use gateway_fuzz::lenient_only;
use libfuzzer_sys::fuzz_target;
use pubsub_redis::{Envelope, Origin};
use serde_json::value::RawValue;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let decoded = Envelope::decode(Bytes::copy_from_slice(data));
    let reference = serde_json::from_slice::<Value>(data)
        .ok()
        .and_then(|v| match v {
            Value::Object(o) => Some(o),
            _ => None,
        });
    let Ok(e) = decoded else {
        // Refused: not an object, or no non-empty string event (or a
        // duplicate field, which serde_json's Value would let through).
        if let Some(o) = reference {
            if let Some(Value::String(ev)) = o.get("event") {
                let dup = |k: &str| {
                    String::from_utf8_lossy(data)
                        .matches(&format!("\"{k}\""))
                        .count()
                        > 1
                };
                let binary = o.get("binary").is_some_and(|b| !b.is_null());
                assert!(
                    ev.is_empty()
                        || binary
                        || dup("event")
                        || dup("payload")
                        || dup("origin")
                        || dup("binary")
                        || has_escaped_keys(data),
                    "refused {o:?}"
                );
            }
        }
        return;
    };
    assert!(!e.event.is_empty());
    if e.binary {
        return binary(data, &e, reference.as_ref());
    }
    std::str::from_utf8(&e.payload).expect("payloads reach clients as UTF-8");
    let Some(o) = reference else {
        assert!(
            lenient_only(data),
            "a decoded envelope is not a JSON object"
        );
        return frames(&e);
    };
    assert_eq!(
        o.get("event").and_then(Value::as_str),
        Some(e.event.as_str())
    );
    let payload = serde_json::from_slice::<Value>(&e.payload).ok();
    match o.get("payload") {
        None | Some(Value::Null) => assert_eq!(&e.payload[..], b"{}"),
        Some(p) => assert_eq!(payload.as_ref(), Some(p)),
    }
    // Read from its text, as the pod does (a duplicate key makes it none).
    let fields: std::collections::HashMap<String, Box<RawValue>> =
        serde_json::from_slice(data).unwrap();
    let origin = fields
        .get("origin")
        .and_then(|v| serde_json::from_str::<Origin>(v.get()).ok());
    assert_eq!(e.origin, origin);
    frames(&e);
});

fn frames(e: &Envelope) {
    // The frames the hub queues for V1 and V2 subscribers.
    let json = Json::from_bytes(e.payload.clone()).expect("payload is valid JSON");
    let payload = Payload::Json(json);
    let out = Outbound::Message {
        join_ref: None,
        ref_: None,
        topic: "room:lobby",
        event: &e.event,
        payload: &payload,
    };
    for vsn in Vsn::ALL {
        let frame = vsn.encode(&out).expect("JSON payloads encode");
        std::str::from_utf8(frame.bytes()).expect("frames are UTF-8");
        let m = vsn.decode_text(frame.bytes()).expect("frames decode");
        assert_eq!(
            (m.topic.as_str(), &m.event, &m.payload),
            ("room:lobby", &e.event, &payload)
        );
    }

    // What a pod publishes reads back the same.
    let again = Envelope::decode(Envelope::encode(&e.event, &e.payload, e.origin.as_ref()))
        .expect("own envelopes decode");
    assert_eq!(&again, e);
}

/// A binary envelope: its bytes are `binary`'s base64, with no payload;
/// V2 clients get them in a binary broadcast frame, V1 clients none; it
/// reads back the same.
fn binary(data: &[u8], e: &Envelope, reference: Option<&serde_json::Map<String, Value>>) {
    if let Some(o) = reference {
        let b64 = o.get("binary").and_then(Value::as_str).expect("binary is a string");
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        assert_eq!(engine.decode(b64).ok().as_deref(), Some(&e.payload[..]));
        assert!(o.get("payload").is_none_or(Value::is_null), "binary with a payload");
    } else {
        assert!(lenient_only(data), "a decoded envelope is not a JSON object");
    }
    let payload = Payload::Binary(e.payload.clone());
    let out = Outbound::Message {
        join_ref: None,
        ref_: None,
        topic: "room:lobby",
        event: &e.event,
        payload: &payload,
    };
    assert!(Vsn::V1.encode(&out).is_err(), "V1 cannot carry binary");
    if e.event.len() <= 255 {
        let frame = Vsn::V2.encode(&out).expect("binary broadcasts encode");
        assert!(frame.bytes().ends_with(&e.payload));
    }
    let again = Envelope::decode(Envelope::encode_binary(
        &e.event,
        &e.payload,
        e.origin.as_ref(),
    ))
    .expect("own envelopes decode");
    assert_eq!(&again, e);
}

/// Keys written with escapes (`"\u0065vent"`) name the same field to
/// serde_json's Value but not to a borrowed struct field match; such
/// bodies are only checked for not crashing.
fn has_escaped_keys(data: &[u8]) -> bool {
    data.windows(2)
        .any(|w| w == b"\\u" || w == b"\\\"" || w == b"\\\\")
}
