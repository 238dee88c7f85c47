//! Which events only the gateway itself may send to clients. phoenix.js 1.8
//! acts on them: `phx_close` ends the channel for good, `phx_error` makes it
//! rejoin, `phx_reply` resolves a push, and `presence_state` /
//! `presence_diff` rewrite its presence list. A publisher (the HTTP API, a
//! backend on Redis, a client push a rule broadcasts) that could send them
//! would break every client of a topic, so they are refused or dropped.

/// Why an event may not be published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReservedEvent {
    /// `phx_*`: the Phoenix protocol's own events.
    #[error("phx_* events are the Phoenix protocol's own and cannot be published")]
    Protocol,
    /// `presence_state` and `presence_diff`: only presence publishes them.
    #[error("presence events are published only by the gateway's presence")]
    Presence,
}

/// Whether `event` is one only the gateway sends, and which kind.
pub fn reserved_event(event: &str) -> Option<ReservedEvent> {
    if event.starts_with("phx_") {
        Some(ReservedEvent::Protocol)
    } else if is_presence_event(event) {
        Some(ReservedEvent::Presence)
    } else {
        None
    }
}

/// `presence_state` or `presence_diff`.
pub fn is_presence_event(event: &str) -> bool {
    matches!(event, "presence_state" | "presence_diff")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_and_presence_events_are_reserved() {
        for e in ["phx_close", "phx_error", "phx_reply", "phx_join", "phx_"] {
            assert_eq!(reserved_event(e), Some(ReservedEvent::Protocol), "{e}");
        }
        for e in ["presence_diff", "presence_state"] {
            assert_eq!(reserved_event(e), Some(ReservedEvent::Presence), "{e}");
        }
        for e in ["new_msg", "phx", "presence", "presence_diffs", "disconnect"] {
            assert_eq!(reserved_event(e), None, "{e}");
        }
    }
}
