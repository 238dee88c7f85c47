//! Message history: what a topic keeps, where a message sits in it, and
//! what a join asks of it.
//!
//! A topic with history gives every broadcast a [`Position`]: an epoch and
//! an offset that grows by exactly one per message. A client that reconnects
//! names the last position it saw and gets what it missed, or is told that
//! continuity is lost (another epoch, messages trimmed or expired) and gets
//! nothing: never a partial replay. The brokers keep the messages (Redis in
//! a stream per topic, the in-memory broker in a ring); this module holds
//! the shared vocabulary and the registry of which topics keep history.

use crate::protocol::Payload;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How much of a topic's history is kept, and how much a join may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History {
    /// Messages kept per topic; older ones are trimmed.
    pub size: usize,
    /// How long a topic's history lives after its last message.
    pub ttl: Duration,
    /// Most messages one join replays, for a `since` or a `last`: a client
    /// further behind is told to refetch instead.
    pub max_recover: usize,
}

impl History {
    /// Keeps `size` messages for `ttl` after the last one; a join replays up
    /// to `size`.
    pub fn new(size: usize, ttl: Duration) -> Self {
        History {
            size,
            ttl,
            max_recover: size,
        }
    }

    /// Replays at most `n` messages per join (default: `size`).
    pub fn max_recover(mut self, n: usize) -> Self {
        self.max_recover = n;
        self
    }
}

/// Where a message sits in its topic's history: `"<epoch>:<offset>"` on the
/// wire, in the broadcast's ref slot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    /// Changes whenever continuity can no longer be promised.
    pub epoch: Arc<str>,
    /// Grows by one per message of the topic, from 1; 0 before the first.
    pub offset: u64,
}

/// Longest position accepted, bytes: epochs are short.
const MAX_POSITION: usize = 64;

impl Position {
    /// Parses `"<epoch>:<offset>"`: a non-empty epoch of letters, digits,
    /// `-` or `_`, and a decimal offset.
    pub fn parse(s: &str) -> Option<Position> {
        if s.len() > MAX_POSITION {
            return None;
        }
        let (epoch, offset) = s.rsplit_once(':')?;
        let epoch_ok = !epoch.is_empty()
            && epoch
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let digits_ok = !offset.is_empty() && offset.bytes().all(|b| b.is_ascii_digit());
        if !epoch_ok || !digits_ok {
            return None;
        }
        Some(Position {
            epoch: Arc::from(epoch),
            offset: offset.parse().ok()?,
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

/// What a join asks of its topic's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// Only the current position, to recover from later.
    Top,
    /// Everything after this position, or nothing.
    Since(Position),
    /// The last `n` messages kept (a chat room's recent lines).
    Last(usize),
}

impl Ask {
    /// Reads a join's `history` param: `{"since": "<epoch>:<offset>"}`
    /// (a null or absent `since` falls back to `last`), `{"last": N}`, or
    /// nothing (only the position). `last` is clamped to `max`.
    ///
    /// # Errors
    /// What is wrong with the param, for the join's error reply.
    pub fn from_join(params: &Payload, max: usize) -> Result<Ask, String> {
        let Some(h) = params.get("history") else {
            return Ok(Ask::Top);
        };
        let h = match h {
            serde_json::Value::Null => return Ok(Ask::Top),
            serde_json::Value::Object(h) => h,
            _ => {
                return Err(
                    "history must be an object: {\"since\": position} or {\"last\": n}".into(),
                )
            }
        };
        match h.get("since") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(s)) => {
                return Position::parse(s).map(Ask::Since).ok_or_else(|| {
                    "history.since must be a position \"<epoch>:<offset>\" as received".into()
                })
            }
            Some(_) => return Err("history.since must be a string \"<epoch>:<offset>\"".into()),
        }
        match h.get("last") {
            None | Some(serde_json::Value::Null) => Ok(Ask::Top),
            Some(serde_json::Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
                (Some(n), _) => Ok(Ask::Last(usize::try_from(n).unwrap_or(max).min(max))),
                (None, Some(f)) if f >= 0.0 => Ok(Ask::Last(max)),
                _ => Err("history.last must be a non-negative integer".into()),
            },
            Some(_) => Err("history.last must be a non-negative integer".into()),
        }
    }
}

/// A kept message.
#[derive(Debug, Clone)]
pub struct Kept {
    /// Its position.
    pub position: Position,
    /// Its event.
    pub event: String,
    /// Its payload.
    pub payload: Payload,
}

/// A history read's answer.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// The topic's current position: the last message's, or `epoch:0`.
    pub top: Position,
    /// For [`Ask::Since`]: whether everything missed is in `messages`.
    pub recovered: bool,
    /// The messages to replay, in order.
    pub messages: Vec<Kept>,
}

/// Which history a topic keeps, if any: the endpoint's routes decide.
pub(crate) type Lookup = Box<dyn Fn(&str) -> Option<History> + Send + Sync>;

/// The pubsub's view of which topics keep history, set once the endpoint
/// is built (pubsub sits below the routes that know).
#[derive(Default)]
pub(crate) struct HistoryTopics(OnceLock<Lookup>);

impl fmt::Debug for HistoryTopics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HistoryTopics")
            .field("set", &self.0.get().is_some())
            .finish()
    }
}

impl HistoryTopics {
    /// Sets the lookup once; later calls are ignored (one endpoint per pubsub).
    pub(crate) fn set(&self, lookup: Lookup) {
        let _ = self.0.set(lookup);
    }

    /// The history `topic` keeps, if any.
    pub(crate) fn of(&self, topic: &str) -> Option<History> {
        self.0.get().and_then(|f| f(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_refuse_junk() {
        let p = Position::parse("a1b2:42").unwrap();
        assert_eq!(&*p.epoch, "a1b2");
        assert_eq!(p.offset, 42);
        assert_eq!(p.to_string(), "a1b2:42");
        for bad in [
            "",
            ":",
            "a:",
            ":1",
            "a:-1",
            "a:1.5",
            "a: 1",
            "a b:1",
            "a:99999999999999999999",
            "42",
        ] {
            assert!(Position::parse(bad).is_none(), "{bad:?}");
        }
        assert!(Position::parse(&format!("{}:1", "e".repeat(70))).is_none());
    }

    #[test]
    fn join_params() {
        let ask = |v: serde_json::Value| Ask::from_join(&Payload::json(&v), 50);
        use serde_json::json;
        assert_eq!(ask(json!({})), Ok(Ask::Top));
        assert_eq!(ask(json!({"history": null})), Ok(Ask::Top));
        assert_eq!(ask(json!({"history": {}})), Ok(Ask::Top));
        assert_eq!(
            ask(json!({"history": {"since": "e:3", "last": 5}})),
            Ok(Ask::Since(Position::parse("e:3").unwrap()))
        );
        assert_eq!(
            ask(json!({"history": {"since": null, "last": 5}})),
            Ok(Ask::Last(5))
        );
        assert_eq!(
            ask(json!({"history": {"last": 1_000_000_000}})),
            Ok(Ask::Last(50))
        );
        assert_eq!(ask(json!({"history": {"last": 1e300}})), Ok(Ask::Last(50)));
        for bad in [
            json!({"history": 3}),
            json!({"history": {"since": 3}}),
            json!({"history": {"since": "nocolon"}}),
            json!({"history": {"since": "e:-1"}}),
            json!({"history": {"last": "5"}}),
            json!({"history": {"last": -1}}),
        ] {
            assert!(ask(bad.clone()).is_err(), "{bad}");
        }
    }
}
