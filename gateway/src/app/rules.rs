//! The channel that serves `[[channel]]` rules: join policies, and client
//! events broadcast to the topic.

use super::auth::claim_str;
use crate::channel::{ChannelContext, HandleIn, JoinResult, Next, StopReason, TopicPattern};
use crate::config::{ChannelRule, Mode, Policy};
use crate::protocol::Payload;
use crate::socket::Assigns;
use crate::Channel;
use async_trait::async_trait;
use serde_json::{json, Value};
use std::sync::Arc;

/// A `[[channel]]` rule, compiled.
#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) pattern: TopicPattern,
    policy: Policy,
    events: Vec<String>,
    mode: Mode,
    include_sender: bool,
    /// The socket's `topics_claim`.
    topics_claim: Option<String>,
}

impl Rule {
    pub(crate) fn new(rule: &ChannelRule, topics_claim: Option<String>) -> Option<Rule> {
        Some(Rule {
            pattern: TopicPattern::parse(&rule.pattern).ok()?,
            policy: rule.policy,
            events: rule.events.clone(),
            mode: rule.mode,
            include_sender: rule.include_sender,
            topics_claim,
        })
    }

    /// Whether a connection with these assigns may join `topic`.
    pub(crate) fn allows(&self, topic: &str, assigns: &Assigns) -> bool {
        let authenticated = !assigns.is_empty();
        if self.policy == Policy::Token && !authenticated {
            return false;
        }
        let Some(captures) = self.pattern.captures(topic) else {
            return false;
        };
        for (name, value) in captures {
            if assigns.get(name).and_then(claim_str).as_deref() != Some(value) {
                return false;
            }
        }
        if let Some(claim) = &self.topics_claim {
            if let Some(list) = assigns.get(claim) {
                let Value::Array(patterns) = list else {
                    return false;
                };
                let listed = patterns.iter().filter_map(Value::as_str).any(|p| {
                    TopicPattern::parse(p)
                        .is_ok_and(|p| p.matches(topic) && p.placeholders().next().is_none())
                });
                if !listed {
                    return false;
                }
            }
        }
        true
    }
}

/// One joined topic served by a rule.
#[derive(Debug)]
pub(crate) struct RuleChannel(pub(crate) Arc<Rule>);

fn unauthorized() -> Payload {
    Payload::json(&json!({"reason": "unauthorized"}))
}

#[async_trait]
impl Channel for RuleChannel {
    type Info = ();

    async fn join(&mut self, topic: &str, _: Payload, ctx: &mut ChannelContext<()>) -> JoinResult {
        if self.0.allows(topic, ctx.assigns()) {
            Ok(Payload::empty())
        } else {
            Err(unauthorized())
        }
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext<()>,
    ) -> HandleIn {
        if !self.0.events.iter().any(|e| e == event) {
            return HandleIn::error(json!({"reason": "event not allowed"}));
        }
        let sent = match self.0.mode {
            Mode::Broadcast if self.0.include_sender => ctx.broadcast(event, payload).await,
            Mode::Broadcast => ctx.broadcast_from(event, payload).await,
        };
        match sent {
            Ok(()) => HandleIn::ok(Payload::empty()),
            Err(e) => {
                tracing::warn!(topic = ctx.topic(), error = %e, "client broadcast failed");
                HandleIn::error(json!({"reason": "broadcast failed"}))
            }
        }
    }

    async fn handle_assigns(&mut self, ctx: &mut ChannelContext<()>) -> Next {
        if self.0.allows(ctx.topic(), ctx.assigns()) {
            Next::Continue
        } else {
            Next::Stop(StopReason::Shutdown("unauthorized".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str, policy: Policy, topics_claim: Option<&str>) -> Rule {
        let r = ChannelRule {
            pattern: pattern.into(),
            policy,
            sockets: None,
            events: vec![],
            mode: Mode::Broadcast,
            include_sender: true,
        };
        Rule::new(&r, topics_claim.map(Into::into)).unwrap()
    }

    fn claims(v: Value) -> Assigns {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn policies_and_placeholders() {
        let anon = Assigns::new();
        let alice = claims(json!({"sub": "alice", "team": 7}));
        assert!(rule("room:*", Policy::Public, None).allows("room:a", &anon));
        assert!(!rule("private:*", Policy::Token, None).allows("private:a", &anon));
        assert!(rule("private:*", Policy::Token, None).allows("private:a", &alice));
        let user = rule("user:{sub}", Policy::Token, None);
        assert!(user.allows("user:alice", &alice));
        assert!(!user.allows("user:bob", &alice));
        let n = rule("notifications:t-{team}:u-{sub}", Policy::Token, None);
        assert!(n.allows("notifications:t-7:u-alice", &alice));
        assert!(!n.allows("notifications:t-8:u-alice", &alice));
    }

    #[test]
    fn topics_claim_narrows() {
        let r = rule("private:*", Policy::Token, Some("topics"));
        let limited = claims(json!({"sub": "a", "topics": ["private:x*"]}));
        assert!(r.allows("private:xy", &limited));
        assert!(!r.allows("private:z", &limited));
        let unlimited = claims(json!({"sub": "a"}));
        assert!(r.allows("private:z", &unlimited));
        let wrong = claims(json!({"sub": "a", "topics": "private:*"}));
        assert!(!r.allows("private:z", &wrong));
    }
}
