//! A backend's answer to a client's push, the same over either way in: a
//! push hook's HTTP answer, and a forwarded push's answer on the pod's reply
//! channel, which also names its push (docs/backends.md, docs/hooks.md):
//!
//! ```json
//! {"ref": "<reply_ref>", "status": "ok", "response": {...},
//!  "broadcasts": [{"topic": "chat:lobby", "event": "new_msg", "payload": {...}}]}
//! ```
//!
//! A forwarded push's answer is read leniently in one respect: one whose
//! `ref` is readable but whose rest is not still answers its push, with an
//! error, so the client is not left to time out over a backend's bug.

use crate::protocol::{reserved_event, valid_topic, Json, Payload};
use crate::pubsub::Broadcast;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Most broadcasts one answer may ask for.
pub(crate) const MAX_BROADCASTS: usize = 100;

/// The reply to a push and the broadcasts to send with it.
#[derive(Debug, Deserialize)]
pub(crate) struct Reply {
    /// The client's `receive("ok")` or `receive("error")`.
    pub(crate) status: Status,
    #[serde(default)]
    response: Option<Box<RawValue>>,
    #[serde(default)]
    broadcasts: Vec<Outgoing>,
}

/// The status of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// One broadcast a reply asks for.
#[derive(Debug, Deserialize)]
struct Outgoing {
    topic: String,
    event: String,
    #[serde(default)]
    payload: Option<Box<RawValue>>,
}

impl Reply {
    /// What the types cannot check: the response is an object, and the
    /// broadcasts are few and ones a client could make (a valid topic, an
    /// event publishers may send).
    pub(crate) fn check(&self) -> Result<(), String> {
        if self
            .response
            .as_ref()
            .is_some_and(|r| !r.get().starts_with('{'))
        {
            return Err("\"response\" is not an object".into());
        }
        if self.broadcasts.len() > MAX_BROADCASTS {
            return Err(format!("more than {MAX_BROADCASTS} broadcasts"));
        }
        for b in &self.broadcasts {
            if !valid_topic(&b.topic) {
                return Err(format!("a broadcast to the invalid topic {:?}", b.topic));
            }
            if b.event.is_empty() || reserved_event(&b.event).is_some() {
                return Err(format!("a broadcast of the event {:?}", b.event));
            }
        }
        Ok(())
    }

    /// The reply's response (`{}` when none was given).
    pub(crate) fn response(&self) -> Payload {
        self.response
            .as_deref()
            .map_or_else(Payload::empty, payload)
    }

    /// The broadcasts, in order; `from` is skipped by them.
    pub(crate) fn broadcasts(&self, from: Option<u64>) -> impl Iterator<Item = Broadcast> + '_ {
        self.broadcasts.iter().map(move |b| Broadcast {
            topic: b.topic.clone(),
            event: b.event.clone(),
            payload: b.payload.as_deref().map_or_else(Payload::empty, payload),
            from,
        })
    }
}

/// A forwarded push's answer, read.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The push it answers.
    pub(crate) reply_ref: u64,
    /// The reply, checked, or why it is malformed.
    pub(crate) reply: Result<Reply, String>,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "ref", borrow)]
    reply_ref: Option<&'a RawValue>,
}

/// Reads a forwarded push's answer; `Err` when not even its `ref` is
/// readable (then no push can be told).
pub(crate) fn read(body: &Bytes) -> Result<Answer, String> {
    let head: Head<'_> =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON object: {e}"))?;
    let raw = head.reply_ref.ok_or("no \"ref\"")?;
    let reply_ref = serde_json::from_str::<&str>(raw.get())
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| format!("\"ref\" {} is not one this pod gave", raw.get()))?;
    let reply = serde_json::from_slice::<Reply>(body)
        .map_err(|e| e.to_string())
        .and_then(|r| r.check().map(|()| r));
    Ok(Answer { reply_ref, reply })
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
        let reply = a.reply.unwrap();
        assert_eq!(reply.status, Status::Ok);
        assert_eq!(reply.response().value(), serde_json::json!({"id": "1-0"}));
        let b: Vec<_> = reply.broadcasts(Some(3)).collect();
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].topic.as_str(), b[0].from), ("chat:a", Some(3)));
        assert_eq!(b[0].payload.value(), serde_json::json!({"body": "hi"}));
    }

    #[test]
    fn defaults() {
        let reply = answer(r#"{"ref":"1","status":"error","extra":true}"#)
            .unwrap()
            .reply
            .unwrap();
        assert_eq!(reply.status, Status::Error);
        assert_eq!(reply.response(), Payload::empty());
        assert_eq!(reply.broadcasts(None).count(), 0);
    }

    #[test]
    fn malformed_with_a_ref_still_answers() {
        for text in [
            r#"{"ref":"3","status":"maybe"}"#,
            r#"{"ref":"3","status":"ok","response":[1]}"#,
            r#"{"ref":"3"}"#,
            r#"{"ref":"3","status":"ok","broadcasts":[{"topic":"","event":"e"}]}"#,
            r#"{"ref":"3","status":"ok","broadcasts":[{"topic":"a b","event":"e"}]}"#,
            r#"{"ref":"3","status":"ok","broadcasts":[{"topic":"t","event":"phx_reply"}]}"#,
            r#"{"ref":"3","status":"ok","broadcasts":[{"topic":"t","event":"presence_diff"}]}"#,
        ] {
            let a = answer(text).unwrap();
            assert_eq!(a.reply_ref, 3, "{text}");
            assert!(a.reply.is_err(), "{text}");
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
