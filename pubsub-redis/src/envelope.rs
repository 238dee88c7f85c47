//! The message on a Redis channel: a JSON object with `event` (required) and
//! either `payload` (any JSON, default `{}`) or `binary` (bytes, standard
//! base64: a binary broadcast, which V2 clients get as a binary frame).
//! Gateway pods add `v` (the envelope version: [`VERSION`], or
//! [`BINARY_VERSION`] on binary ones) and `origin` (`{"node","conn"}`) so
//! `broadcast_from` can skip its sender, and `"presence":true` on the
//! presence diffs their presence publishes, which pods accept presence
//! events only with; `pos` on a message kept in a topic's history (its
//! position); other fields are ignored, so any backend can publish with plain
//! `redis-cli PUBLISH phx:room:lobby '{"event":"new_msg","payload":{...}}'`
//! or `'{"event":"frame","binary":"3q2+7w=="}'`.

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The envelope version gateway pods write on JSON payloads.
pub const VERSION: u32 = 1;

/// The version pods write on binary envelopes: the first with `binary`.
/// Pods before it ignore the field (they would deliver the event with a
/// `{}` payload), which is why it is told apart.
pub const BINARY_VERSION: u32 = 2;

/// Standard base64 (RFC 4648 §4), padding optional: what `base64` and
/// every language's default encoder write.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Who published a message, when a gateway pod did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The publishing pod's id (random per process).
    pub node: String,
    /// The connection to skip on that pod.
    pub conn: u64,
}

/// A decoded envelope; `payload` is the raw JSON text, shared, not re-parsed,
/// or the bytes of a binary one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The event name.
    pub event: String,
    /// The payload's JSON text, or its bytes when `binary`.
    pub payload: Bytes,
    /// Whether `payload` is bytes (the envelope's `binary` field) rather
    /// than JSON text.
    pub binary: bool,
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
    /// Base64; borrowed unless the string has escapes.
    #[serde(borrow, default)]
    binary: Option<Cow<'a, str>>,
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
    /// Not a JSON object, no string `event`, or an empty event; a `binary`
    /// that is not a base64 string, or comes with a `payload`.
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
        let (payload, binary) = match (wire.binary, wire.payload) {
            (Some(_), Some(raw)) if raw.get() != "null" => {
                return Err(EnvelopeError("both payload and binary".into()))
            }
            (Some(b64), _) => {
                let bytes = BASE64
                    .decode(b64.as_bytes())
                    .map_err(|e| EnvelopeError(format!("binary is not base64: {e}")))?;
                (Bytes::from(bytes), true)
            }
            (None, Some(raw)) => (body.slice_ref(raw.get().as_bytes()), false),
            (None, None) => (Bytes::from_static(b"{}"), false),
        };
        Ok(Envelope {
            event: wire.event,
            payload,
            binary,
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
        let mut buf = head(VERSION, event, origin, payload.len());
        if presence {
            buf.extend_from_slice(b",\"presence\":true");
        }
        buf.extend_from_slice(b",\"payload\":");
        buf.extend_from_slice(payload);
        buf.push(b'}');
        Bytes::from(buf)
    }

    /// Encodes a binary broadcast: `data` as base64 in `binary`.
    pub fn encode_binary(event: &str, data: &[u8], origin: Option<&Origin>) -> Bytes {
        let mut buf = head(BINARY_VERSION, event, origin, data.len().div_ceil(3) * 4);
        buf.extend_from_slice(b",\"binary\":\"");
        let start = buf.len();
        buf.resize(start + data.len().div_ceil(3) * 4, 0);
        // The buffer was sized for the padded encoding.
        let written = BASE64.encode_slice(data, &mut buf[start..]).unwrap_or(0);
        buf.truncate(start + written);
        buf.extend_from_slice(b"\"}");
        Bytes::from(buf)
    }
}

/// `{"v":N,"event":...` and the origin, with room for `body` more bytes.
fn head(version: u32, event: &str, origin: Option<&Origin>, body: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64 + event.len() + body);
    buf.extend_from_slice(format!("{{\"v\":{version},\"event\":").as_bytes());
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut buf, event);
    if let Some(o) = origin {
        buf.extend_from_slice(b",\"origin\":");
        let _ = serde_json::to_writer(&mut buf, o);
    }
    buf
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
    fn binary_round_trip() {
        let o = Origin {
            node: "n1".into(),
            conn: 3,
        };
        for data in [
            &b""[..],
            &[0],
            &[0xde, 0xad],
            &[0, 1, 2, 0xff, 0xfe],
            b"{\"x\"}",
        ] {
            let b = Envelope::encode_binary("frame", data, Some(&o));
            assert!(b.starts_with(br#"{"v":2,"event":"frame","origin":"#));
            let e = Envelope::decode(b).unwrap();
            assert!(e.binary);
            assert_eq!(&e.payload[..], data);
            assert_eq!(e.origin.as_ref(), Some(&o));
        }
        // A JSON envelope is not binary.
        let e = Envelope::decode(Envelope::encode("x", b"{}", None)).unwrap();
        assert!(!e.binary);
    }

    #[test]
    fn binary_from_a_backend() {
        // What `printf '\xde\xad\xbe\xef' | base64` prints, padded or not,
        // and with a JSON escape (`\/`) in the string.
        for body in [
            &br#"{"event":"frame","binary":"3q2+7w=="}"#[..],
            br#"{"event":"frame","binary":"3q2+7w"}"#,
            br#"{"event":"frame","binary":"3q2+7w==","payload":null}"#,
            br#"{"binary":"3q2+7w==","event":"frame","v":2}"#,
        ] {
            let e = Envelope::decode(Bytes::copy_from_slice(body)).unwrap();
            assert_eq!((e.event.as_str(), e.binary), ("frame", true));
            assert_eq!(&e.payload[..], &[0xde, 0xad, 0xbe, 0xef]);
        }
        let e = Envelope::decode(Bytes::from_static(br#"{"event":"f","binary":"\/w=="}"#)).unwrap();
        assert_eq!(&e.payload[..], &[0xff]);
        // `binary: null` is no binary.
        let e = Envelope::decode(Bytes::from_static(br#"{"event":"f","binary":null}"#)).unwrap();
        assert!(!e.binary);
        assert_eq!(&e.payload[..], b"{}");
    }

    #[test]
    fn malformed_binary() {
        for bad in [
            &br#"{"event":"f","binary":"not base64!"}"#[..],
            br#"{"event":"f","binary":"3q2+7w=="x"}"#,
            br#"{"event":"f","binary":"3q2-7w=="}"#,
            br#"{"event":"f","binary":1}"#,
            br#"{"event":"f","binary":["AA=="]}"#,
            br#"{"event":"f","binary":"AA==","payload":{}}"#,
            br#"{"event":"f","payload":1,"binary":"AA=="}"#,
        ] {
            let r = Envelope::decode(Bytes::copy_from_slice(bad));
            assert!(r.is_err(), "{}: {r:?}", String::from_utf8_lossy(bad));
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
