//! The channel that serves `[[channel]]` rules: join policies, client
//! events broadcast to the topic, and presence.

use crate::auth::claim_str;
use crate::backend::hooks::Hook;
use crate::backend::{Budget, Forward, Forwarder, Push};
use crate::channel::{
    ChannelContext, HandleIn, JoinResult, Next, StopReason, Terminate, TopicPattern,
};
use crate::config::{ChannelSettings, Mode, Policy, PresenceRule};
use crate::conn::Disconnect;
use crate::lifecycle::{End, Join, Lifecycle, Membership, StreamId};
use crate::protocol::{Payload, Refusal};
use crate::pubsub::PublishError;
use crate::socket::Assigns;
use crate::Channel;
use async_trait::async_trait;
use serde_json::Value;
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
    presence: Option<PresenceRule>,
    /// Where joins, leaves and disconnects are reported.
    lifecycle: Option<(Lifecycle, StreamId)>,
    /// `[channel.hooks]`, shared by the rule's copies on every socket.
    join_hook: Option<Arc<Hook>>,
    push_hook: Option<Arc<Hook>>,
    /// Where `mode = "forward"` sends pushes, and the pod's forwarding.
    forward: Option<(Forward, Arc<Forwarder>)>,
}

/// Longest presence key accepted, bytes.
const MAX_KEY: usize = 256;
/// Largest meta built from join params, bytes of JSON: every joiner of the
/// topic receives every meta, so one client must not make that costly.
const MAX_META: usize = 4096;

impl Rule {
    /// `forwarder`: the pod's, when its broker is Redis.
    pub(crate) fn new(
        rule: &ChannelSettings,
        topics_claim: Option<String>,
        forwarder: Option<&Arc<Forwarder>>,
    ) -> Rule {
        Rule {
            pattern: rule.pattern.clone(),
            policy: rule.policy,
            events: rule.events.clone(),
            mode: rule.mode,
            include_sender: rule.include_sender,
            topics_claim,
            presence: rule.presence.clone(),
            lifecycle: None,
            join_hook: None,
            push_hook: None,
            forward: rule.forward.clone().zip(forwarder.cloned()),
        }
    }

    /// The rule's join and push hooks.
    pub(crate) fn hooks(mut self, join: Option<Arc<Hook>>, push: Option<Arc<Hook>>) -> Rule {
        self.join_hook = join;
        self.push_hook = push;
        self
    }

    /// Reports the rule's joins, leaves and disconnects to `stream`.
    pub(crate) fn with_lifecycle(mut self, lifecycle: Option<(Lifecycle, StreamId)>) -> Rule {
        self.lifecycle = lifecycle;
        self
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

/// The presence key and meta of a joining client, per the rule: `None` when
/// the claim or param that names the key is absent (the client watches
/// without being listed), or why the join is refused: a key that is not a
/// string, number or boolean, empty or too long, or a meta that is too large.
fn presence_of(
    p: &PresenceRule,
    assigns: &Assigns,
    params: &Payload,
) -> Result<Option<(String, Value)>, String> {
    let (given, what) = match (&p.key_claim, &p.key_param) {
        (Some(claim), _) => (
            assigns.get(claim).cloned(),
            format!("token claim {claim:?}"),
        ),
        (None, Some(param)) => (params.get(param), format!("join param {param:?}")),
        (None, None) => return Ok(None),
    };
    let key = match given {
        None | Some(Value::Null) => return Ok(None),
        // Strings, numbers and booleans, as claim placeholders compare them.
        Some(v) => claim_str(&v).unwrap_or_default(),
    };
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(format!(
            "the presence key, {what}, must be a string of 1 to {MAX_KEY} bytes"
        ));
    }
    let mut meta = serde_json::Map::new();
    for name in &p.meta_params {
        if let Some(v) = params.get(name) {
            meta.insert(name.clone(), v);
        }
    }
    if serde_json::to_vec(&meta).map_or(0, |v| v.len()) > MAX_META {
        return Err(format!(
            "presence meta params take more than {MAX_META} bytes"
        ));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // A string of seconds, as Phoenix's generated presence example sends it.
    meta.insert("online_at".into(), Value::String(now.to_string()));
    Ok(Some((key, Value::Object(meta))))
}

/// Self-sent messages of a rule channel.
#[derive(Debug)]
pub(crate) enum RuleInfo {
    /// Joined and subscribed: track, then push `presence_state`.
    AfterJoin,
}

/// One joined topic served by a rule.
#[derive(Debug)]
pub(crate) struct RuleChannel {
    rule: Arc<Rule>,
    /// This client's presence key and meta, while joined with presence
    /// (boxed: most joins have none, and every idle channel holds this).
    presence: Option<Box<(String, Value)>>,
    /// The presence is tracked (after the join's `AfterJoin`).
    tracked: bool,
    /// The join was reported (after the join's `AfterJoin`); its end will be
    /// (boxed: most channels are not on a lifecycle stream).
    member: Option<Box<Membership>>,
    /// Forwarded pushes awaiting answers, and the rate (boxed, made on the
    /// first forwarded push: most channels never forward).
    budget: Option<Box<Budget>>,
}

impl RuleChannel {
    pub(crate) fn new(rule: Arc<Rule>) -> Self {
        RuleChannel {
            rule,
            presence: None,
            tracked: false,
            member: None,
            budget: None,
        }
    }
}

impl RuleChannel {
    /// The rule's `update_event`: the whitelisted params in `payload` replace
    /// those in this client's meta (others, and `online_at`, are kept), and
    /// every client of the topic sees the change as a `presence_diff`.
    fn update_presence(
        &mut self,
        p: &PresenceRule,
        payload: &Payload,
        ctx: &mut ChannelContext<RuleInfo>,
    ) -> HandleIn {
        let Some((key, Value::Object(meta))) = self.presence.as_deref_mut() else {
            return HandleIn::error(Refusal::NotPresent.payload());
        };
        let mut new = meta.clone();
        for name in &p.meta_params {
            if let Some(v) = payload.get(name) {
                new.insert(name.clone(), v);
            }
        }
        if serde_json::to_vec(&new).map_or(0, |v| v.len()) > MAX_META + 64 {
            return HandleIn::error(Payload::reason(format_args!(
                "presence meta params take more than {MAX_META} bytes"
            )));
        }
        if !self.tracked {
            // Client events are handled before the join's AfterJoin: it
            // tracks the updated meta.
            *meta = new;
            return HandleIn::ok(Payload::empty());
        }
        match ctx.update(key, Value::Object(new.clone())) {
            Ok(()) => {
                *meta = new;
                HandleIn::ok(Payload::empty())
            }
            Err(e) => HandleIn::error(Payload::reason(e)),
        }
    }
}

#[async_trait]
impl Channel for RuleChannel {
    type Info = RuleInfo;

    async fn join(
        &mut self,
        topic: &str,
        params: Payload,
        ctx: &mut ChannelContext<RuleInfo>,
    ) -> JoinResult {
        if !self.rule.allows(topic, ctx.assigns()) {
            return Err(Refusal::Unauthorized.payload());
        }
        let rule = self.rule.clone();
        let joined = match &rule.join_hook {
            Some(hook) => Some(crate::backend::hooks::join(hook, topic, &params, ctx).await?),
            None => None,
        };
        let (reply, hook_meta) =
            joined.map_or((Payload::empty(), None), |j| (j.reply, j.presence_meta));
        if let Some(p) = &self.rule.presence {
            let mut me = presence_of(p, ctx.assigns(), &params).map_err(Payload::reason)?;
            if let (Some((_, Value::Object(meta))), Some(extra)) = (&mut me, hook_meta) {
                // The gateway's own keys stay the gateway's.
                meta.extend(extra.into_iter().filter(|(k, _)| !k.starts_with("phx_")));
            }
            self.presence = me.map(Box::new);
        }
        if self.rule.presence.is_some() || self.rule.lifecycle.is_some() {
            // The reply and the subscription come first; Phoenix apps do the
            // same with `send(self(), :after_join)`.
            ctx.info_sender().send(RuleInfo::AfterJoin);
        }
        Ok(reply)
    }

    async fn handle_info(&mut self, info: RuleInfo, ctx: &mut ChannelContext<RuleInfo>) -> Next {
        match info {
            RuleInfo::AfterJoin => {
                self.report_join(ctx);
                if self.rule.presence.is_none() {
                    return Next::Continue;
                }
                if let Some((key, meta)) = self.presence.as_deref() {
                    match ctx.track(key.clone(), meta.clone()) {
                        Ok(()) => self.tracked = true,
                        Err(e) => {
                            tracing::warn!(topic = ctx.topic(), error = %e, "presence track failed")
                        }
                    }
                }
                match ctx.push_presence_state().await {
                    Ok(()) => Next::Continue,
                    Err(e) => {
                        tracing::warn!(topic = ctx.topic(), error = %e, "presence_state failed");
                        // phx_error: phoenix.js rejoins, and gets a state then.
                        Next::Stop(StopReason::Error("presence unavailable".into()))
                    }
                }
            }
        }
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext<RuleInfo>,
    ) -> HandleIn {
        let rule = self.rule.clone();
        if let Some(p) = &rule.presence {
            if p.update_event.as_deref() == Some(event) {
                return self.update_presence(p, &payload, ctx);
            }
        }
        if !self.rule.events.iter().any(|e| e == event) {
            return HandleIn::error(Refusal::EventNotAllowed.payload());
        }
        let sent = match self.rule.mode {
            Mode::Broadcast if self.rule.include_sender => ctx.broadcast(event, payload).await,
            Mode::Broadcast => ctx.broadcast_from(event, payload).await,
            Mode::Hook => {
                return match &self.rule.push_hook {
                    Some(hook) => {
                        let from = (!self.rule.include_sender).then(|| ctx.conn().id());
                        crate::backend::hooks::push(hook, event, &payload, from, ctx).await
                    }
                    None => HandleIn::error(Refusal::EventNotAllowed.payload()),
                }
            }
            Mode::Forward => return self.forward(event, &payload, ctx).await,
        };
        match sent {
            Ok(()) => HandleIn::ok(Payload::empty()),
            Err(e) => {
                tracing::warn!(topic = ctx.topic(), error = %e, "client broadcast failed");
                HandleIn::error(publish_refusal(&e).payload())
            }
        }
    }

    async fn terminate(&mut self, reason: Terminate, ctx: &mut ChannelContext<RuleInfo>) {
        if let Some(m) = self.member.take() {
            m.end(lifecycle_end(&reason, ctx.conn().reason()));
        }
    }

    async fn handle_assigns(&mut self, ctx: &mut ChannelContext<RuleInfo>) -> Next {
        if self.rule.allows(ctx.topic(), ctx.assigns()) {
            Next::Continue
        } else {
            Next::Stop(StopReason::Shutdown("unauthorized".into()))
        }
    }
}

impl RuleChannel {
    /// `mode = "forward"`: hands the push to backends; the reply is theirs.
    async fn forward(
        &mut self,
        event: &str,
        payload: &Payload,
        ctx: &mut ChannelContext<RuleInfo>,
    ) -> HandleIn {
        let Some((rule, forwarder)) = &self.rule.forward else {
            // Validation pairs the mode with its table and Redis.
            return HandleIn::error(Payload::reason("forwarding is not configured"));
        };
        let Some(json) = payload.as_json() else {
            return HandleIn::error(Payload::reason("binary pushes cannot be forwarded"));
        };
        let slot = match self
            .budget
            .get_or_insert_with(|| Box::new(Budget::new(rule)))
            .admit(rule)
        {
            Ok(slot) => slot,
            Err(refused) => return refused,
        };
        let claims = match &rule.claims {
            None => serde_json::to_string(ctx.assigns()),
            Some(names) => serde_json::to_string(
                &names
                    .iter()
                    .filter_map(|n| Some((n, ctx.assigns().get(n)?)))
                    .collect::<std::collections::BTreeMap<_, _>>(),
            ),
        }
        .unwrap_or_else(|_| "{}".into());
        let from = (!self.rule.include_sender).then(|| ctx.conn().id());
        let push = Push {
            topic: ctx.topic(),
            event,
            payload: json,
            ref_: ctx.current_ref.as_deref(),
            join_ref: ctx.join_ref(),
            socket_id: ctx.socket_id(),
            conn: ctx.conn().id(),
            pod: ctx.node(),
            claims,
        };
        forwarder
            .forward(rule, push, ctx.reply_ref(), from, slot)
            .await
    }
}

impl RuleChannel {
    /// Queues the join's lifecycle event, once the reply is decided.
    fn report_join(&mut self, ctx: &ChannelContext<RuleInfo>) {
        let Some((lifecycle, stream)) = &self.rule.lifecycle else {
            return;
        };
        if ctx.conn().is_closed() {
            // Its disconnect may be reported already; its end comes next.
            return;
        }
        let claims = serde_json::to_string(ctx.assigns()).unwrap_or_else(|_| "{}".into());
        let join = Join {
            conn: ctx.conn().id(),
            topic: ctx.topic_arc().clone(),
            socket_id: ctx.socket_id().map(Arc::from),
            claims: Arc::from(claims),
            node: Arc::from(ctx.node()),
        };
        self.member = lifecycle.join(*stream, join).map(Box::new);
    }
}

/// The lifecycle event of a channel's end: a `leave` with why, or, when the
/// connection closed, its `disconnect` with the close reason's label.
fn lifecycle_end(reason: &Terminate, closed: Option<Disconnect>) -> End {
    match reason {
        Terminate::Leave => End::Leave("leave"),
        Terminate::DuplicateJoin => End::Leave("replaced"),
        Terminate::Lost => End::Leave("lost"),
        Terminate::Stop(StopReason::Error(_)) => End::Leave("error"),
        Terminate::Stop(_) => End::Leave("stopped"),
        Terminate::Closed => End::Disconnect(closed.map_or("transport_error", Disconnect::label)),
    }
}

/// What a client reads when its push could not be broadcast.
fn publish_refusal(e: &PublishError) -> Refusal {
    match e {
        PublishError::Reserved { .. } => Refusal::EventNotAllowed,
        PublishError::TooLarge { .. } => Refusal::BroadcastTooLarge,
        PublishError::Broker(_) => Refusal::BroadcastFailed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(pattern: &str, policy: Policy, topics_claim: Option<&str>) -> Rule {
        let r = ChannelSettings {
            pattern: TopicPattern::parse(pattern).unwrap(),
            policy,
            sockets: None,
            events: vec![],
            mode: Mode::Broadcast,
            include_sender: true,
            max_payload: None,
            presence: None,
            history: None,
            lifecycle: None,
            hooks: Default::default(),
            forward: None,
        };
        Rule::new(&r, topics_claim.map(Into::into), None)
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
