//! A backend's answer to a forwarded push, as published to the pod's reply
//! channel (docs/backends.md):
//!
//! ```json
//! {"ref": "<reply_ref>", "status": "ok", "response": {...},
//!  "broadcasts": [{"topic": "chat:lobby", "event": "new_msg", "payload": {...}}]}
//! ```
//!
//! Read leniently in one respect: an answer whose `ref` is readable but whose
//! rest is not still answers its push, with an error, so the client is not
//! left to time out over a backend's bug.

use crate::protocol::{Json, Payload};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Most broadcasts one answer may ask for.
pub(crate) const MAX_BROADCASTS: usize = 100;

/// An answer, read.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The push it answers.
    pub(crate) reply_ref: u64,
    /// What the client is told, or why the answer is malformed.
    pub(crate) reply: Result<(Status, Payload), String>,
    /// Broadcasts to send, in order; none when the answer is malformed.
    pub(crate) broadcasts: Vec<Outgoing>,
}

/// The status of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Ok,
    Error,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
        }
    }
}

/// One broadcast an answer asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Outgoing {
    pub(crate) topic: String,
    pub(crate) event: String,
    pub(crate) payload: Payload,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "ref", borrow)]
    reply_ref: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    #[serde(rename = "ref")]
    _reply_ref: &'a RawValue,
    status: String,
    #[serde(borrow, default)]
    response: Option<&'a RawValue>,
    #[serde(borrow, default)]
    broadcasts: Option<Vec<WireOutgoing<'a>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireOutgoing<'a> {
    topic: String,
    event: String,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

/// Reads an answer; `Err` when not even its `ref` is readable (then no
/// push can be told).
pub(crate) fn read(body: &Bytes) -> Result<Answer, String> {
    let head: Head<'_> =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON object: {e}"))?;
    let raw = head.reply_ref.ok_or("no \"ref\"")?;
    let reply_ref = serde_json::from_str::<&str>(raw.get())
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| format!("\"ref\" {} is not one this pod gave", raw.get()))?;
    Ok(match rest(body) {
        Ok((status, response, broadcasts)) => Answer {
            reply_ref,
            reply: Ok((status, response)),
            broadcasts,
        },
        Err(why) => Answer {
            reply_ref,
            reply: Err(why),
            broadcasts: Vec::new(),
        },
    })
}

fn rest(body: &Bytes) -> Result<(Status, Payload, Vec<Outgoing>), String> {
    let wire: Wire<'_> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let status = match wire.status.as_str() {
        "ok" => Status::Ok,
        "error" => Status::Error,
        other => return Err(format!("\"status\" is {other:?}, not \"ok\" or \"error\"")),
    };
    let response = match wire.response {
        None => Payload::empty(),
        Some(r) if r.get().starts_with('{') => payload(r),
        Some(_) => return Err("\"response\" is not an object".into()),
    };
    let sends = wire.broadcasts.unwrap_or_default();
    if sends.len() > MAX_BROADCASTS {
        return Err(format!("more than {MAX_BROADCASTS} broadcasts"));
    }
    let mut broadcasts = Vec::with_capacity(sends.len());
    for s in sends {
        if s.topic.is_empty() || s.event.is_empty() {
            return Err("a broadcast with an empty topic or event".into());
        }
        broadcasts.push(Outgoing {
            topic: s.topic,
            event: s.event,
            payload: s.payload.map_or_else(Payload::empty, payload),
        });
    }
    Ok((status, response, broadcasts))
}

fn payload(raw: &RawValue) -> Payload {
    // serde_json validated the text.
    Payload::Json(Json::from_trusted(Bytes::copy_from_slice(
        raw.get().as_bytes(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(text: &str) -> Result<Answer, String> {
        read(&Bytes::from(text.to_owned()))
    }

    #[test]
    fn a_full_answer() {
        let a = answer(
            r#"{"ref":"7","status":"ok","response":{"id":"1-0"},
                "broadcasts":[{"topic":"chat:a","event":"new_msg","payload":{"body":"hi"}}]}"#,
        )
        .unwrap();
        assert_eq!(a.reply_ref, 7);
        let (status, response) = a.reply.unwrap();
        assert_eq!(status, Status::Ok);
        assert_eq!(response.value(), serde_json::json!({"id": "1-0"}));
        assert_eq!(a.broadcasts.len(), 1);
        assert_eq!(a.broadcasts[0].topic, "chat:a");
        assert_eq!(
            a.broadcasts[0].payload.value(),
            serde_json::json!({"body": "hi"})
        );
    }

    #[test]
    fn defaults() {
        let a = answer(r#"{"ref":"1","status":"error"}"#).unwrap();
        let (status, response) = a.reply.unwrap();
        assert_eq!(status, Status::Error);
        assert_eq!(response, Payload::empty());
        assert!(a.broadcasts.is_empty());
    }

    #[test]
    fn malformed_with_a_ref_still_answers() {
        for text in [
            r#"{"ref":"3","status":"maybe"}"#,
            r#"{"ref":"3","status":"ok","response":[1]}"#,
            r#"{"ref":"3","status":"ok","extra":1}"#,
            r#"{"ref":"3"}"#,
            r#"{"ref":"3","status":"ok","broadcasts":[{"topic":"","event":"e"}]}"#,
        ] {
            let a = answer(text).unwrap();
            assert_eq!(a.reply_ref, 3, "{text}");
            assert!(a.reply.is_err(), "{text}");
            assert!(a.broadcasts.is_empty());
        }
        let many: Vec<_> = (0..=MAX_BROADCASTS)
            .map(|_| serde_json::json!({"topic":"t","event":"e"}))
            .collect();
        let text = serde_json::json!({"ref":"3","status":"ok","broadcasts":many}).to_string();
        assert!(answer(&text).unwrap().reply.is_err());
    }

    #[test]
    fn unreadable() {
        for text in [
            "",
            "[]",
            "nope",
            r#"{"status":"ok"}"#,
            r#"{"ref":3}"#,
            r#"{"ref":"x"}"#,
        ] {
            assert!(answer(text).is_err(), "{text}");
        }
    }
}
