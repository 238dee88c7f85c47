//! The gateway's own refusals, with the `reason` a client reads in them.
//!
//! One vocabulary for every error reply the gateway itself sends (a refused
//! join, a push over the rate limit, a message for a topic that is not
//! joined), so the wire strings are written once and tests and clients can
//! rely on them.

use super::Payload;

/// Why the gateway refused a join or a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No route serves the topic, or a message names a topic the connection
    /// has not joined.
    UnmatchedTopic,
    /// The topic is empty, too long, or holds characters topics may not hold.
    InvalidTopic,
    /// The connection has joined `max_channels` channels already.
    TooManyChannels,
    /// The connection sends faster than its push rate allows.
    RateLimited,
    /// The broker did not confirm the subscription (Redis is down).
    SubscriptionFailed,
    /// The topic's history could not be read (Redis is down).
    HistoryUnavailable,
    /// Too many joins from the client's address are waiting for their turn.
    JoinQueueFull,
    /// The channel's `join` panicked.
    JoinCrashed,
    /// The channel refused the client's credentials.
    Unauthorized,
    /// A `[[channel]]` rule does not let clients push this event.
    EventNotAllowed,
    /// The broker did not take a client's broadcast (Redis is down).
    BroadcastFailed,
    /// A broadcast's payload is over the pod's `max_publish_bytes`.
    BroadcastTooLarge,
    /// A presence update from a client the channel does not track.
    NotPresent,
    /// The channel crashed after joining: the `phx_error` a client rejoins on.
    ChannelCrash,
    /// A push's payload is larger than its route allows (`max_payload`).
    PayloadTooLarge,
}

impl Refusal {
    /// The `reason` the client reads.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::UnmatchedTopic => "unmatched topic",
            Refusal::InvalidTopic => "invalid topic",
            Refusal::TooManyChannels => "too many channels joined",
            Refusal::RateLimited => "rate limited",
            Refusal::SubscriptionFailed => "subscription failed, try again",
            Refusal::HistoryUnavailable => "history unavailable, try again",
            Refusal::JoinQueueFull => "too many joins waiting, try again",
            Refusal::JoinCrashed => "join crashed",
            Refusal::Unauthorized => "unauthorized",
            Refusal::EventNotAllowed => "event not allowed",
            Refusal::BroadcastFailed => "broadcast failed",
            Refusal::BroadcastTooLarge => "broadcast too large",
            Refusal::NotPresent => "not present",
            Refusal::ChannelCrash => "channel_crash",
            Refusal::PayloadTooLarge => "payload too large",
        }
    }

    /// `{"reason": …}`, the payload of the error reply.
    pub fn payload(self) -> Payload {
        Payload::reason(self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_the_wire_reason() {
        assert_eq!(
            Refusal::TooManyChannels.payload(),
            Payload::json(&serde_json::json!({"reason": "too many channels joined"}))
        );
        assert_eq!(
            Refusal::ChannelCrash.payload().get("reason"),
            Some(serde_json::Value::String("channel_crash".into()))
        );
    }
}
