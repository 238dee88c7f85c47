//! V2 JSON: `[join_ref, ref, topic, event, payload]` arrays.

use super::{reply_body, write_opt_str, write_payload, write_str};
use super::{Json, Message, Outbound, Payload, ProtocolError};
use bytes::Bytes;
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt;

/// A ref or join_ref: a string, or null. Numbers are accepted and turned into
/// their decimal text, since some third-party clients send integer refs.
pub(super) struct Ref(pub(super) Option<String>);

impl<'de> Deserialize<'de> for Ref {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ref;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, an integer or null")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ref, E> {
                Ok(Ref(Some(v.to_owned())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Ref, E> {
                Ok(Ref(Some(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ref, E> {
                Ok(Ref(Some(v.to_string())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Ref, E> {
                Ok(Ref(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Ref, E> {
                Ok(Ref(None))
            }
        }
        d.deserialize_any(V)
    }
}

struct Raw<'a> {
    join_ref: Option<String>,
    ref_: Option<String>,
    topic: String,
    event: String,
    payload: &'a RawValue,
}

impl<'de: 'a, 'a> Deserialize<'de> for Raw<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Raw<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("[join_ref, ref, topic, event, payload]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw<'a>, A::Error> {
                let missing = || de::Error::custom("expected 5 elements");
                let join_ref = seq.next_element::<Ref>()?.ok_or_else(missing)?.0;
                let ref_ = seq.next_element::<Ref>()?.ok_or_else(missing)?.0;
                let topic = seq.next_element::<String>()?.ok_or_else(missing)?;
                let event = seq.next_element::<String>()?.ok_or_else(missing)?;
                let payload = seq.next_element::<&'a RawValue>()?.ok_or_else(missing)?;
                // Phoenix reads the first five elements and ignores the rest.
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Raw {
                    join_ref,
                    ref_,
                    topic,
                    event,
                    payload,
                })
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

pub(super) fn decode(text: &Bytes) -> Result<Message, ProtocolError> {
    let raw: Raw<'_> = serde_json::from_slice(text).map_err(|e| {
        if e.is_data() {
            ProtocolError::Shape("expected [join_ref, ref, topic, event, payload]")
        } else {
            ProtocolError::Json(e.to_string())
        }
    })?;
    let payload = Json::from_trusted(text.slice_ref(raw.payload.get().as_bytes()));
    Ok(Message {
        join_ref: raw.join_ref,
        ref_: raw.ref_,
        topic: raw.topic,
        event: raw.event,
        payload: Payload::Json(payload),
    })
}

pub(super) fn encode(out: &Outbound<'_>) -> Bytes {
    let mut buf = Vec::with_capacity(64 + out.size_hint());
    buf.push(b'[');
    match *out {
        Outbound::Message {
            join_ref,
            ref_,
            topic,
            event,
            payload,
        } => {
            head(&mut buf, join_ref, ref_, topic, event);
            write_payload(&mut buf, payload);
        }
        Outbound::Reply {
            join_ref,
            ref_,
            topic,
            status,
            response,
        } => {
            head(&mut buf, join_ref, ref_, topic, "phx_reply");
            reply_body(&mut buf, status, response);
        }
    }
    buf.push(b']');
    Bytes::from(buf)
}

fn head(buf: &mut Vec<u8>, jr: Option<&str>, r: Option<&str>, topic: &str, event: &str) {
    write_opt_str(buf, jr);
    buf.push(b',');
    write_opt_str(buf, r);
    buf.push(b',');
    write_str(buf, topic);
    buf.push(b',');
    write_str(buf, event);
    buf.push(b',');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &'static str) -> Result<Message, ProtocolError> {
        decode(&Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn decodes_join() {
        let m = dec(r#"["1","1","room:lobby","phx_join",{"a": [1]}]"#).unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("1"));
        assert_eq!(m.ref_.as_deref(), Some("1"));
        assert_eq!(m.topic, "room:lobby");
        assert_eq!(m.event, "phx_join");
        assert_eq!(m.payload.as_json().unwrap().as_str(), r#"{"a": [1]}"#);
    }

    #[test]
    fn accepts_nulls_numbers_and_extras() {
        let m = dec(r#"[null,7,"phoenix","heartbeat",{},"extra"]"#).unwrap();
        assert_eq!(m.join_ref, None);
        assert_eq!(m.ref_.as_deref(), Some("7"));
    }

    #[test]
    fn rejects_bad_shapes() {
        for s in [
            r#"["1","2"]"#,
            r#"{"topic":"room:lobby"}"#,
            r#"[1.5,"1","t","e",{}]"#,
            r#"["1","1",3,"e",{}]"#,
            r#"["1","1","t",null,{}]"#,
            "[",
            "",
            "null",
        ] {
            assert!(dec(s).is_err(), "{s}");
        }
    }

    #[test]
    fn encodes_reply_and_broadcast() {
        let p = Payload::json(&serde_json::json!({"pong": {}}));
        let r = encode(&Outbound::Reply {
            join_ref: Some("1"),
            ref_: Some("12"),
            topic: "room:lobby",
            status: "ok",
            response: &p,
        });
        assert_eq!(
            &r[..],
            br#"["1","12","room:lobby","phx_reply",{"status":"ok","response":{"pong":{}}}]"#
        );
        let b = encode(&Outbound::Message {
            join_ref: None,
            ref_: None,
            topic: "a\"b",
            event: "e",
            payload: &Payload::empty(),
        });
        assert_eq!(&b[..], br#"[null,null,"a\"b","e",{}]"#);
    }
}
