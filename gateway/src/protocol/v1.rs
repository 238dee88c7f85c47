//! V1 JSON: `{"topic","event","payload","ref","join_ref"}` objects.
//! Outbound V1 frames never carry `join_ref`, as in Phoenix.

use super::v2::Ref;
use super::{reply_body, write_opt_str, write_payload, write_str};
use super::{Json, Message, Outbound, Payload, ProtocolError};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct Raw<'a> {
    topic: String,
    event: String,
    #[serde(borrow)]
    payload: &'a RawValue,
    #[serde(rename = "ref", default)]
    ref_: Option<Ref>,
    #[serde(default)]
    join_ref: Option<Ref>,
}

pub(super) fn decode(text: &Bytes) -> Result<Message, ProtocolError> {
    let raw: Raw<'_> = serde_json::from_slice(text).map_err(|e| {
        if e.is_data() {
            ProtocolError::Shape("expected {\"topic\",\"event\",\"payload\",\"ref\"}")
        } else {
            ProtocolError::Json(e.to_string())
        }
    })?;
    // V1 messages are objects; serde would also read the struct from a
    // positional array.
    if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ProtocolError::Shape("expected a JSON object"));
    }
    let payload = Json::from_trusted(text.slice_ref(raw.payload.get().as_bytes()));
    Ok(Message {
        join_ref: raw.join_ref.and_then(|r| r.0),
        ref_: raw.ref_.and_then(|r| r.0),
        topic: raw.topic,
        event: raw.event,
        payload: Payload::Json(payload),
    })
}

pub(super) fn encode(out: &Outbound<'_>) -> Bytes {
    let mut buf = Vec::with_capacity(80 + out.size_hint());
    buf.extend_from_slice(b"{\"topic\":");
    let r = match *out {
        Outbound::Message {
            ref_,
            topic,
            event,
            payload,
            ..
        } => {
            write_str(&mut buf, topic);
            buf.extend_from_slice(b",\"event\":");
            write_str(&mut buf, event);
            buf.extend_from_slice(b",\"payload\":");
            write_payload(&mut buf, payload);
            ref_
        }
        Outbound::Reply {
            ref_,
            topic,
            status,
            response,
            ..
        } => {
            write_str(&mut buf, topic);
            buf.extend_from_slice(b",\"event\":\"phx_reply\",\"payload\":");
            reply_body(&mut buf, status, response);
            ref_
        }
    };
    buf.extend_from_slice(b",\"ref\":");
    write_opt_str(&mut buf, r);
    buf.push(b'}');
    Bytes::from(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_shapes() {
        let m = decode(&Bytes::from_static(
            br#"{"topic":"room:lobby","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}"#,
        ))
        .unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("1"));
        let m = decode(&Bytes::from_static(
            br#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":null}"#,
        ))
        .unwrap();
        assert_eq!(m.ref_, None);
        assert!(decode(&Bytes::from_static(br#"{"topic":"room:lobby"}"#)).is_err());
        assert!(decode(&Bytes::from_static(br#"["1","1","t","e",{}]"#)).is_err());
        assert!(decode(&Bytes::from_static(br#"["t","e",{},"1","1"]"#)).is_err());

        let out = encode(&Outbound::Reply {
            join_ref: Some("1"),
            ref_: Some("3"),
            topic: "room:lobby",
            status: "ok",
            response: &Payload::empty(),
        });
        assert_eq!(
            &out[..],
            br#"{"topic":"room:lobby","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"3"}"#
        );
    }
}
