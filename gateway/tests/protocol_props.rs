//! Property tests of the serializers through the public API: decoding
//! anything returns `Ok` or `Err` without panicking, and what the server
//! encodes decodes back to the same fields.

use bytes::Bytes;
use gateway::protocol::{EncodeError, Frame, Message, Outbound, Vsn};
use gateway::Payload;
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::{Map, Number, Value};

/// Strings a message is made of: protocol words, or anything.
fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "phoenix",
            "heartbeat",
            "phx_join",
            "phx_leave",
            "room:lobby",
            "1",
            "topic",
            "event",
            "payload",
            "ref",
            "join_ref",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ]
}

/// Any JSON value, nested a few levels.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        word().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..8).prop_map(Value::Array),
            vec((word(), inner), 0..8).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn object() -> impl Strategy<Value = Map<String, Value>> {
    vec((word(), json()), 0..6).prop_map(|kv| kv.into_iter().collect())
}

/// A V2-shaped array whose slots are mostly, but not always, well typed.
fn near_v2() -> impl Strategy<Value = Vec<Value>> {
    let opt_str = prop_oneof![Just(Value::Null), word().prop_map(Value::String), json()];
    let str_ = prop_oneof![3 => word().prop_map(Value::String), 1 => json()];
    (
        opt_str.clone(),
        opt_str,
        str_.clone(),
        str_,
        json(),
        vec(json(), 0..3),
    )
        .prop_map(|(a, b, c, d, e, extra)| {
            let mut v = vec![a, b, c, d, e];
            v.extend(extra);
            v
        })
}

/// A V1-shaped object: the message keys and others, with any values.
fn near_v1() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        3 => prop::sample::select(vec!["topic", "event", "payload", "ref", "join_ref"])
            .prop_map(str::to_owned),
        1 => word(),
    ];
    vec((key, json()), 0..7).prop_map(|kv| Value::Object(kv.into_iter().collect()))
}

/// Decodes with both serializers, as text and as binary; must not panic.
fn decode_all(data: &[u8]) {
    let data = Bytes::copy_from_slice(data);
    for vsn in Vsn::ALL {
        let _ = vsn.decode_text(&data);
        let _ = vsn.decode_binary(&data);
    }
}

fn payload_text(m: &Message) -> &str {
    m.payload.as_json().unwrap().as_str()
}

fn decode_v2(frame: &Frame) -> Message {
    match frame {
        Frame::Text(t) => Vsn::V2.decode_text(t).unwrap(),
        Frame::Binary(_) => panic!("expected a text frame"),
    }
}

/// A client's binary push (kind 0), as phoenix.js writes it.
fn client_push(jr: &str, r: &str, topic: &str, event: &str, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8];
    for s in [jr, r, topic, event] {
        f.push(u8::try_from(s.len()).unwrap());
    }
    for s in [jr, r, topic, event] {
        f.extend_from_slice(s.as_bytes());
    }
    f.extend_from_slice(payload);
    f
}

/// A string of at most 255 bytes, for binary header fields.
fn short() -> impl Strategy<Value = String> {
    word().prop_map(|mut s| {
        while s.len() > 255 {
            s.pop();
        }
        s
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..512)) {
        decode_all(&data);
    }

    #[test]
    fn arbitrary_strings_never_panic(s in any::<String>()) {
        decode_all(s.as_bytes());
    }

    #[test]
    fn arbitrary_json_never_panics(v in json()) {
        decode_all(&serde_json::to_vec(&v).unwrap());
    }

    #[test]
    fn arbitrary_arrays_never_panic(vs in vec(json(), 0..8)) {
        decode_all(&serde_json::to_vec(&vs).unwrap());
    }

    #[test]
    fn truncated_json_never_panics(v in near_v2(), cut in any::<prop::sample::Index>()) {
        let text = serde_json::to_vec(&v).unwrap();
        decode_all(&text[..cut.index(text.len() + 1)]);
    }

    #[test]
    fn v2_decodes_what_it_reads(v in near_v2()) {
        let text = Bytes::from(serde_json::to_vec(&v).unwrap());
        if let Ok(m) = Vsn::V2.decode_text(&text) {
            prop_assert_eq!(Some(m.topic.as_str()), v[2].as_str());
            prop_assert_eq!(Some(m.event.as_str()), v[3].as_str());
            prop_assert_eq!(payload_text(&m), serde_json::to_string(&v[4]).unwrap());
        }
    }

    #[test]
    fn v1_decodes_objects_only(v in near_v1(), arr in vec(json(), 0..8)) {
        let text = Bytes::from(serde_json::to_vec(&v).unwrap());
        if let Ok(m) = Vsn::V1.decode_text(&text) {
            prop_assert_eq!(Some(m.topic.as_str()), v["topic"].as_str());
            prop_assert_eq!(Some(m.event.as_str()), v["event"].as_str());
            prop_assert_eq!(payload_text(&m), serde_json::to_string(&v["payload"]).unwrap());
        }
        let arr = Bytes::from(serde_json::to_vec(&arr).unwrap());
        prop_assert!(Vsn::V1.decode_text(&arr).is_err());
    }

    #[test]
    fn client_binary_push_round_trips(
        jr in short(), r in short(), topic in short(), event in short(),
        payload in vec(any::<u8>(), 0..64), cut in any::<prop::sample::Index>(),
    ) {
        let frame = client_push(&jr, &r, &topic, &event, &payload);
        let m = Vsn::V2.decode_binary(&Bytes::from(frame.clone())).unwrap();
        let none_if_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        prop_assert_eq!(m.join_ref, none_if_empty(&jr));
        prop_assert_eq!(m.ref_, none_if_empty(&r));
        prop_assert_eq!(m.topic, topic);
        prop_assert_eq!(m.event, event);
        prop_assert_eq!(m.payload, Payload::Binary(Bytes::from(payload)));
        prop_assert!(Vsn::V1.decode_binary(&Bytes::from(frame.clone())).is_err());
        decode_all(&frame[..cut.index(frame.len() + 1)]);
    }

    #[test]
    fn v2_message_round_trips(
        jr in proptest::option::of(word()), r in proptest::option::of(word()),
        topic in word(), event in word(), payload in object(),
    ) {
        let p = Payload::json(&payload);
        let out = Outbound::Message {
            join_ref: jr.as_deref(),
            ref_: r.as_deref(),
            topic: &topic,
            event: &event,
            payload: &p,
        };
        let m = decode_v2(&Vsn::V2.encode(&out).unwrap());
        prop_assert_eq!(&m.join_ref, &jr);
        prop_assert_eq!(&m.ref_, &r);
        prop_assert_eq!(&m.topic, &topic);
        prop_assert_eq!(&m.event, &event);
        prop_assert_eq!(payload_text(&m), serde_json::to_string(&payload).unwrap());

        // V1 writes the same message without its join_ref.
        let Frame::Text(v1) = Vsn::V1.encode(&out).unwrap() else {
            panic!("V1 writes text")
        };
        let m1 = Vsn::V1.decode_text(&v1).unwrap();
        prop_assert_eq!(m1.join_ref, None);
        prop_assert_eq!(&m1.ref_, &r);
        prop_assert_eq!((m1.topic, m1.event), (topic, event));
        prop_assert_eq!(m1.payload, m.payload);
        let v1: Value = serde_json::from_slice(&v1).unwrap();
        prop_assert!(v1.get("join_ref").is_none());
    }

    #[test]
    fn v2_reply_round_trips(
        jr in proptest::option::of(word()), r in proptest::option::of(word()),
        topic in word(), status in word(), response in object(),
    ) {
        let p = Payload::json(&response);
        let out = Outbound::Reply {
            join_ref: jr.as_deref(),
            ref_: r.as_deref(),
            topic: &topic,
            status: &status,
            response: &p,
        };
        let m = decode_v2(&Vsn::V2.encode(&out).unwrap());
        prop_assert_eq!(&m.join_ref, &jr);
        prop_assert_eq!(&m.ref_, &r);
        prop_assert_eq!(&m.topic, &topic);
        prop_assert_eq!(m.event.as_str(), "phx_reply");
        let want = format!(
            r#"{{"status":{},"response":{}}}"#,
            serde_json::to_string(&status).unwrap(),
            serde_json::to_string(&response).unwrap(),
        );
        prop_assert_eq!(payload_text(&m), want);
    }

    #[test]
    fn v2_binary_reply_layout(
        jr in short(), r in short(), topic in word(), status in short(),
        data in vec(any::<u8>(), 0..64),
    ) {
        let p = Payload::Binary(Bytes::from(data.clone()));
        let out = Outbound::Reply {
            join_ref: Some(&jr),
            ref_: Some(&r),
            topic: &topic,
            status: &status,
            response: &p,
        };
        prop_assert_eq!(Vsn::V1.encode(&out), Err(EncodeError::BinaryOnV1));
        if topic.len() > 255 {
            prop_assert_eq!(Vsn::V2.encode(&out), Err(EncodeError::FieldTooLong("topic")));
            return Ok(());
        }
        let Frame::Binary(b) = Vsn::V2.encode(&out).unwrap() else {
            panic!("binary replies are binary frames")
        };
        let mut want = client_push(&jr, &r, &topic, &status, &data);
        want[0] = 1;
        prop_assert_eq!(&b[..], &want[..]);
    }
}
