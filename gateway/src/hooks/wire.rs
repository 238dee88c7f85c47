//! The bodies of hook requests and the answers hooks give (docs/hooks.md),
//! with every check that makes an answer safe to act on. Unknown fields in
//! answers are ignored, so backends can add their own.

use super::client::Answer;
use crate::channel::Assigns;
use crate::protocol::{reserved_event, valid_topic, Payload};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Most broadcasts one push answer may ask for.
pub(crate) const MAX_BROADCASTS: usize = 100;

/// A JSON object of an answer.
type Object = Map<String, Value>;

/// `{"topic","payload","assigns","socket_id","pod"}`.
pub(crate) fn join_request(
    topic: &str,
    payload: &Payload,
    assigns: &Assigns,
    socket_id: Option<&str>,
    pod: &str,
) -> Value {
    json!({
        "topic": topic,
        "payload": payload.value(),
        "assigns": assigns,
        "socket_id": socket_id,
        "pod": pod,
    })
}

/// `{"topic","event","payload","assigns","socket_id","pod"}`.
pub(crate) fn push_request(
    topic: &str,
    event: &str,
    payload: &Payload,
    assigns: &Assigns,
    socket_id: Option<&str>,
    pod: &str,
) -> Value {
    json!({
        "topic": topic,
        "event": event,
        "payload": payload.value(),
        "assigns": assigns,
        "socket_id": socket_id,
        "pod": pod,
    })
}

/// The connect hook's answer.
#[derive(Debug, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub(crate) enum ConnectAnswer {
    /// Admit, with assigns merged over the token's claims.
    Ok {
        #[serde(default)]
        assigns: Option<Object>,
        #[serde(default)]
        socket_id: Option<String>,
    },
    /// Refuse with an HTTP status (403 by default).
    Error {
        #[serde(default)]
        status: Option<u16>,
        #[serde(default)]
        reason: Option<String>,
    },
}

impl Answer for ConnectAnswer {
    fn refused(&self) -> bool {
        matches!(self, ConnectAnswer::Error { .. })
    }

    fn valid(&self) -> bool {
        match self {
            // A socket id is subscribed like a topic.
            ConnectAnswer::Ok { socket_id, .. } => socket_id.as_deref().is_none_or(valid_topic),
            ConnectAnswer::Error { status, .. } => status.is_none_or(|s| (400..=599).contains(&s)),
        }
    }
}

/// The join hook's answer.
#[derive(Debug, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub(crate) enum JoinAnswer {
    /// Admit, replying `reply`; `assigns` are merged into the channel's,
    /// `presence_meta` into the client's presence meta.
    Ok {
        #[serde(default)]
        reply: Option<Object>,
        #[serde(default)]
        assigns: Option<Object>,
        #[serde(default)]
        presence_meta: Option<Object>,
    },
    /// Refuse; the client reads `{"reason": reason}`.
    Error {
        #[serde(default)]
        reason: Option<String>,
    },
}

impl Answer for JoinAnswer {
    fn refused(&self) -> bool {
        matches!(self, JoinAnswer::Error { .. })
    }
}

/// `ok` or `error`: the status of the push's reply.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PushStatus {
    Ok,
    Error,
}

/// A broadcast a push hook asks for.
#[derive(Debug, Deserialize)]
pub(crate) struct HookBroadcast {
    pub(crate) topic: String,
    pub(crate) event: String,
    #[serde(default)]
    pub(crate) payload: Object,
}

/// The push hook's answer: the reply, and broadcasts published first.
#[derive(Debug, Deserialize)]
pub(crate) struct PushAnswer {
    pub(crate) status: PushStatus,
    #[serde(default)]
    pub(crate) response: Object,
    #[serde(default)]
    pub(crate) broadcasts: Vec<HookBroadcast>,
}

impl Answer for PushAnswer {
    fn refused(&self) -> bool {
        self.status == PushStatus::Error
    }

    /// Broadcasts are checked as a client's would be: a valid topic and an
    /// event publishers may send.
    fn valid(&self) -> bool {
        self.broadcasts.len() <= MAX_BROADCASTS
            && self.broadcasts.iter().all(|b| {
                valid_topic(&b.topic) && !b.event.is_empty() && reserved_event(&b.event).is_none()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<A: Answer>(text: &str) -> Option<A> {
        serde_json::from_str::<A>(text).ok().filter(Answer::valid)
    }

    #[test]
    fn answers_are_checked() {
        let a: JoinAnswer = parse(r#"{"result":"ok","reply":{"a":1},"extra":true}"#).unwrap();
        assert!(matches!(a, JoinAnswer::Ok { reply: Some(_), .. }));
        assert!(parse::<JoinAnswer>(r#"{"result":"error","reason":"no"}"#)
            .unwrap()
            .refused());
        for bad in [
            r#"{"result":"maybe"}"#,
            r#"{"reply":{}}"#,
            r#"{"result":"ok","reply":[1]}"#,
            "not json",
        ] {
            assert!(parse::<JoinAnswer>(bad).is_none(), "{bad}");
        }
        assert!(parse::<ConnectAnswer>(r#"{"result":"error","status":200}"#).is_none());
        assert!(parse::<ConnectAnswer>(r#"{"result":"ok","socket_id":"a b"}"#).is_none());
        assert!(parse::<ConnectAnswer>(r#"{"result":"ok","socket_id":null}"#).is_some());
        let push = r#"{"status":"ok","broadcasts":[{"topic":"room:1","event":"phx_reply"}]}"#;
        assert!(parse::<PushAnswer>(push).is_none());
        let many: Vec<Value> = (0..=MAX_BROADCASTS)
            .map(|_| json!({"topic": "a", "event": "b"}))
            .collect();
        let text = json!({"status": "ok", "broadcasts": many}).to_string();
        assert!(parse::<PushAnswer>(&text).is_none());
    }
}
