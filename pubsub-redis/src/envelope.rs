//! The message on a Redis channel: a JSON object with `event` (required) and
//! `payload` (any JSON, default `{}`). Gateway pods add `v` (the envelope
//! version) and `origin` (`{"node","conn"}`) so `broadcast_from` can skip its
//! sender, and `"presence":true` on the presence diffs their presence
//! publishes, which pods accept presence events only with; `pos` on a
//! message kept in a topic's history (its position); other fields are
//! ignored, so any backend can publish with plain
//! `redis-cli PUBLISH phx:room:lobby '{"event":"new_msg","payload":{...}}'`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The envelope version gateway pods write.
pub const VERSION: u32 = 1;

/// Who published a message, when a gateway pod did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The publishing pod's id (random per process).
    pub node: String,
    /// The connection to skip on that pod.
    pub conn: u64,
}

/// A decoded envelope; `payload` is the raw JSON text, shared, not re-parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The event name.
    pub event: String,
    /// The payload's JSON text.
    pub payload: Bytes,
    /// The publisher, if it was a gateway pod that wants to be skipped.
    pub origin: Option<Origin>,
    /// Written by a gateway pod's presence (`"presence":true`): the only
    /// envelopes pods take presence events from. A mark against mistakes,
    /// not a signature: whoever can PUBLISH can also write presence entries.
    pub presence: bool,
    /// `"<epoch>:<offset>"`, given by the history function
    /// ([`crate::history`]) to a message it kept; `None` for a plain
    /// `PUBLISH`.
    pub position: Option<String>,
}

/// Why an envelope was dropped.
#[derive(Debug, thiserror::Error)]
#[error("malformed envelope: {0}")]
pub struct EnvelopeError(String);

#[derive(Deserialize)]
struct Wire<'a> {
    event: String,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    /// Kept raw: another publisher's own `origin` field, whatever its shape,
    /// is an extra field to ignore, not a reason to drop the message.
    #[serde(borrow, default)]
    origin: Option<&'a RawValue>,
    /// Kept raw for the same reason: only `true` marks presence.
    #[serde(borrow, default)]
    presence: Option<&'a RawValue>,
    /// Kept raw too: only a string is a position.
    #[serde(borrow, default)]
    pos: Option<&'a RawValue>,
}

impl Envelope {
    /// Decodes a message body.
    ///
    /// # Errors
    /// Not a JSON object, no string `event`, or an empty event.
    pub fn decode(body: Bytes) -> Result<Envelope, EnvelopeError> {
        // serde would also read the struct from a positional array.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(EnvelopeError("not a JSON object".into()));
        }
        let wire: Wire<'_> =
            serde_json::from_slice(&body).map_err(|e| EnvelopeError(e.to_string()))?;
        if wire.event.is_empty() {
            return Err(EnvelopeError("empty event".into()));
        }
        let payload = match wire.payload {
            Some(raw) => body.slice_ref(raw.get().as_bytes()),
            None => Bytes::from_static(b"{}"),
        };
        Ok(Envelope {
            event: wire.event,
            payload,
            origin: wire
                .origin
                .and_then(|raw| serde_json::from_str(raw.get()).ok()),
            presence: wire.presence.is_some_and(|raw| raw.get() == "true"),
            position: wire
                .pos
                .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok()),
        })
    }

    /// Encodes for publishing. `payload` must be valid JSON text.
    pub fn encode(event: &str, payload: &[u8], origin: Option<&Origin>) -> Bytes {
        Self::encode_marked(event, payload, origin, false)
    }

    /// [`encode`](Self::encode), marked as a presence event when `presence`.
    pub fn encode_marked(
        event: &str,
        payload: &[u8],
        origin: Option<&Origin>,
        presence: bool,
    ) -> Bytes {
        let mut buf = Vec::with_capacity(64 + event.len() + payload.len());
        buf.extend_from_slice(format!("{{\"v\":{VERSION},\"event\":").as_bytes());
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut buf, event);
        if let Some(o) = origin {
            buf.extend_from_slice(b",\"origin\":");
            let _ = serde_json::to_writer(&mut buf, o);
        }
        if presence {
            buf.extend_from_slice(b",\"presence\":true");
        }
        buf.extend_from_slice(b",\"payload\":");
        buf.extend_from_slice(payload);
        buf.push(b'}');
        Bytes::from(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_backend_message() {
        let e = Envelope::decode(Bytes::from_static(
            br#"{"event":"new_msg","payload":{"body":"hi"}}"#,
        ))
        .unwrap();
        assert_eq!(e.event, "new_msg");
        assert_eq!(&e.payload[..], br#"{"body":"hi"}"#);
        assert_eq!(e.origin, None);
        let e =
            Envelope::decode(Bytes::from_static(br#"{"event":"disconnect","extra":1}"#)).unwrap();
        assert_eq!(&e.payload[..], b"{}");
    }

    #[test]
    fn round_trip_with_origin() {
        let o = Origin {
            node: "n1".into(),
            conn: 7,
        };
        let b = Envelope::encode("e\"v", br#"[1,2]"#, Some(&o));
        let e = Envelope::decode(b).unwrap();
        assert_eq!(e.event, "e\"v");
        assert_eq!(&e.payload[..], b"[1,2]");
        assert_eq!(e.origin, Some(o));
        assert!(!e.presence);
    }

    #[test]
    fn presence_mark() {
        let b = Envelope::encode_marked("presence_diff", b"{}", None, true);
        assert!(Envelope::decode(b).unwrap().presence);
        for other in [
            &br#"{"event":"presence_diff"}"#[..],
            br#"{"event":"presence_diff","presence":"true"}"#,
            br#"{"event":"presence_diff","presence":1}"#,
        ] {
            let e = Envelope::decode(Bytes::copy_from_slice(other)).unwrap();
            assert!(!e.presence, "{}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn malformed() {
        for bad in [
            &b"nope"[..],
            b"[]",
            b"{}",
            br#"{"event":1}"#,
            br#"{"event":""}"#,
            br#"{"event":"x","payload":}"#,
            // An array read positionally as {event, payload} (found by the
            // redis_envelope fuzz target).
            br#"["new_msg",{"body":"hi"}]"#,
            br#" [")"]"#,
        ] {
            assert!(Envelope::decode(Bytes::copy_from_slice(bad)).is_err());
        }
    }
}
