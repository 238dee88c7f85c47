//! The V2 binary frame layout (spec §2.3): one-byte lengths, opaque payload.

use super::EncodeError;
use super::{Message, Outbound, Payload, ProtocolError};
use bytes::{BufMut, Bytes, BytesMut};

const PUSH: u8 = 0;
const REPLY: u8 = 1;
const BROADCAST: u8 = 2;

/// Decodes a client push: `0, len(jr), len(ref), len(topic), len(event), jr, ref, topic, event, payload`.
pub(super) fn decode(data: &Bytes) -> Result<Message, ProtocolError> {
    let header = data
        .get(..5)
        .ok_or(ProtocolError::Binary("truncated header"))?;
    if header[0] != PUSH {
        return Err(ProtocolError::Binary("clients may only send kind 0 (push)"));
    }
    let lens = [header[1], header[2], header[3], header[4]].map(usize::from);
    let mut at = 5;
    let mut fields: [&str; 4] = [""; 4];
    for (i, len) in lens.iter().enumerate() {
        let bytes = data
            .get(at..at + len)
            .ok_or(ProtocolError::Binary("field longer than frame"))?;
        fields[i] =
            std::str::from_utf8(bytes).map_err(|_| ProtocolError::Binary("field is not utf-8"))?;
        at += len;
    }
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Ok(Message {
        join_ref: opt(fields[0]),
        ref_: opt(fields[1]),
        topic: fields[2].to_owned(),
        event: fields[3].to_owned(),
        payload: Payload::Binary(data.slice(at..)),
    })
}

fn len(field: &'static str, s: &str) -> Result<u8, EncodeError> {
    u8::try_from(s.len()).map_err(|_| EncodeError::FieldTooLong(field))
}

pub(super) fn encode(out: &Outbound<'_>) -> Result<Bytes, EncodeError> {
    match *out {
        Outbound::Message {
            join_ref,
            ref_: _,
            topic,
            event,
            payload: Payload::Binary(data),
        } => {
            let (t, e) = (len("topic", topic)?, len("event", event)?);
            match join_ref {
                None => {
                    let mut b = BytesMut::with_capacity(3 + topic.len() + event.len() + data.len());
                    b.put_slice(&[BROADCAST, t, e]);
                    b.put_slice(topic.as_bytes());
                    b.put_slice(event.as_bytes());
                    b.put_slice(data);
                    Ok(b.freeze())
                }
                Some(jr) => {
                    let j = len("join_ref", jr)?;
                    let mut b = BytesMut::with_capacity(
                        4 + jr.len() + topic.len() + event.len() + data.len(),
                    );
                    b.put_slice(&[PUSH, j, t, e]);
                    b.put_slice(jr.as_bytes());
                    b.put_slice(topic.as_bytes());
                    b.put_slice(event.as_bytes());
                    b.put_slice(data);
                    Ok(b.freeze())
                }
            }
        }
        Outbound::Reply {
            join_ref,
            ref_,
            topic,
            status,
            response: Payload::Binary(data),
        } => {
            let (jr, r) = (join_ref.unwrap_or(""), ref_.unwrap_or(""));
            let lens = [
                REPLY,
                len("join_ref", jr)?,
                len("ref", r)?,
                len("topic", topic)?,
                len("status", status)?,
            ];
            let mut b = BytesMut::with_capacity(
                5 + jr.len() + r.len() + topic.len() + status.len() + data.len(),
            );
            b.put_slice(&lens);
            for s in [jr, r, topic, status] {
                b.put_slice(s.as_bytes());
            }
            b.put_slice(data);
            Ok(b.freeze())
        }
        // Vsn::encode only routes binary payloads here.
        _ => Err(EncodeError::BinaryOnV1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_vector_push_and_reply() {
        let mut f = vec![0u8, 1, 2, 10, 8];
        f.extend_from_slice(b"129room:lobbyecho_bin");
        f.extend_from_slice(&[0xDE, 0xAD]);
        let m = decode(&Bytes::from(f)).unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("1"));
        assert_eq!(m.ref_.as_deref(), Some("29"));
        assert_eq!(m.topic, "room:lobby");
        assert_eq!(m.event, "echo_bin");
        assert_eq!(
            m.payload,
            Payload::Binary(Bytes::from_static(&[0xDE, 0xAD]))
        );

        let reply = encode(&Outbound::Reply {
            join_ref: Some("1"),
            ref_: Some("29"),
            topic: "room:lobby",
            status: "ok",
            response: &m.payload,
        })
        .unwrap();
        let mut want = vec![1u8, 1, 2, 10, 2];
        want.extend_from_slice(b"129room:lobbyok");
        want.extend_from_slice(&[0xDE, 0xAD]);
        assert_eq!(&reply[..], &want[..]);
    }

    #[test]
    fn spec_vector_server_push_and_broadcast() {
        let p = Payload::Binary(Bytes::from_static(&[1, 2, 3]));
        let push = encode(&Outbound::Message {
            join_ref: Some(""),
            ref_: None,
            topic: "room:1",
            event: "bin_event",
            payload: &p,
        })
        .unwrap();
        let mut want = vec![0u8, 0, 6, 9];
        want.extend_from_slice(b"room:1bin_event");
        want.extend_from_slice(&[1, 2, 3]);
        assert_eq!(&push[..], &want[..]);
        let b = encode(&Outbound::Message {
            join_ref: None,
            ref_: None,
            topic: "t",
            event: "e",
            payload: &p,
        })
        .unwrap();
        assert_eq!(&b[..], &[2, 1, 1, b't', b'e', 1, 2, 3]);
    }

    #[test]
    fn rejects_truncated_and_wrong_kind() {
        assert!(decode(&Bytes::from_static(&[0, 1])).is_err());
        assert!(decode(&Bytes::from_static(&[0, 9, 0, 0, 0, b'x'])).is_err());
        assert!(decode(&Bytes::from_static(&[1, 0, 0, 0, 0])).is_err());
        assert!(decode(&Bytes::from_static(&[0, 1, 0, 0, 0, 0xff])).is_err());
    }
}
