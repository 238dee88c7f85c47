//! Payloads as they travel: JSON kept as its original text, or raw bytes.
//!
//! Payloads pass through the gateway without being re-parsed: a JSON payload
//! is held as validated JSON text and copied into outbound frames verbatim.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use std::fmt;

/// Validated JSON text, shared cheaply between frames.
#[derive(Clone, PartialEq, Eq)]
pub struct Json(Bytes);

impl Json {
    /// The empty object `{}`, which Phoenix uses when there is nothing to say.
    pub fn empty() -> Self {
        Json(Bytes::from_static(b"{}"))
    }

    /// Serializes a value. Panics only if `T`'s `Serialize` impl fails, which
    /// for `serde_json::Value` and derived structs with string keys cannot happen.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(v) => Json(Bytes::from(v)),
            Err(e) => panic!("payload serialization failed: {e}"),
        }
    }

    /// Checks that `bytes` hold exactly one JSON value and keeps them as they are.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, serde_json::Error> {
        serde_json::from_slice::<&RawValue>(&bytes)?;
        Ok(Json(bytes))
    }

    /// Wraps bytes already known to be valid JSON (taken from a parsed frame).
    pub(crate) fn from_trusted(bytes: Bytes) -> Self {
        Json(bytes)
    }

    /// Deserializes into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.0)
    }

    /// Parses into a `serde_json::Value` for ad-hoc inspection.
    pub fn value(&self) -> serde_json::Value {
        // The text was validated when this Json was built.
        serde_json::from_slice(&self.0).unwrap_or(serde_json::Value::Null)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        // Constructed only from serde_json output or validated JSON, both UTF-8.
        std::str::from_utf8(&self.0).unwrap_or("null")
    }

    /// The JSON text as shared bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// True when the value is a JSON object (Phoenix requires object payloads
    /// for pushes; clients send objects in practice).
    pub fn is_object(&self) -> bool {
        self.0.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<serde_json::Value> for Json {
    fn from(v: serde_json::Value) -> Self {
        Json::encode(&v)
    }
}

/// A message body: JSON, or opaque bytes carried by V2 binary frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A JSON value (an object in practice).
    Json(Json),
    /// Raw bytes, from or for a V2 binary frame (`ArrayBuffer` in phoenix.js).
    Binary(Bytes),
}

impl Payload {
    /// The empty object `{}`.
    pub fn empty() -> Self {
        Payload::Json(Json::empty())
    }

    /// A JSON payload from any serializable value.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Self {
        Payload::Json(Json::encode(value))
    }

    /// `{"reason": reason}`: the shape of every error reply in Phoenix
    /// (`{:error, %{reason: "..."}}`), so clients read refusals one way.
    pub fn reason(reason: impl fmt::Display) -> Self {
        Payload::json(&serde_json::json!({ "reason": reason.to_string() }))
    }

    /// Bytes of the payload as it travels: its JSON text, or its raw bytes.
    pub fn size(&self) -> usize {
        match self {
            Payload::Json(j) => j.bytes().len(),
            Payload::Binary(b) => b.len(),
        }
    }

    /// The JSON, if this is a JSON payload.
    pub fn as_json(&self) -> Option<&Json> {
        match self {
            Payload::Json(j) => Some(j),
            Payload::Binary(_) => None,
        }
    }

    /// Parses a JSON payload into a `serde_json::Value`; binary gives `Null`.
    pub fn value(&self) -> serde_json::Value {
        self.as_json()
            .map(Json::value)
            .unwrap_or(serde_json::Value::Null)
    }

    /// Looks up a top-level key of a JSON object payload.
    pub fn get(&self, key: &str) -> Option<serde_json::Value> {
        match self.value() {
            serde_json::Value::Object(mut m) => m.remove(key),
            _ => None,
        }
    }
}

impl From<serde_json::Value> for Payload {
    fn from(v: serde_json::Value) -> Self {
        Payload::Json(v.into())
    }
}

impl From<Json> for Payload {
    fn from(j: Json) -> Self {
        Payload::Json(j)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_text_verbatim() {
        let j = Json::from_bytes(Bytes::from_static(b"{ \"a\" : 1 }")).unwrap();
        assert_eq!(j.as_str(), "{ \"a\" : 1 }");
        assert!(j.is_object());
    }

    #[test]
    fn rejects_invalid_and_trailing() {
        assert!(Json::from_bytes(Bytes::from_static(b"{")).is_err());
        assert!(Json::from_bytes(Bytes::from_static(b"{} {}")).is_err());
    }

    #[test]
    fn get_reads_keys() {
        let p = Payload::json(&serde_json::json!({"body": "hi"}));
        assert_eq!(p.get("body"), Some(serde_json::json!("hi")));
        assert_eq!(p.get("nope"), None);
        assert_eq!(Payload::Binary(Bytes::new()).get("x"), None);
    }
}
