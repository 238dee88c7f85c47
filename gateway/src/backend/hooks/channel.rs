//! The join and push hooks of a `[[channel]]` rule, as steps a rule
//! channel takes: ask the hook, apply its answer to the channel (assigns,
//! broadcasts), and turn it, or its failure, into the client's reply.

use super::client::Hook;
use super::wire::{join_request, push_request, JoinAnswer};
use crate::backend::answer::{Reply, Status};
use crate::channel::{ChannelContext, HandleIn};
use crate::metrics::Source;
use crate::protocol::{Payload, Refusal};
use crate::pubsub::PublishError;
use serde_json::{Map, Value};

/// What an admitted join takes from the join hook.
#[derive(Debug)]
pub(crate) struct Joined {
    /// The join's reply.
    pub(crate) reply: Payload,
    /// Merged into the client's presence meta, if the rule tracks presence.
    pub(crate) presence_meta: Option<Map<String, Value>>,
}

/// Asks the join hook; its assigns are set on the channel.
///
/// # Errors
/// The join's error reply: the hook's reason, or why the hook failed.
pub(crate) async fn join<I: Send + 'static>(
    hook: &Hook,
    topic: &str,
    params: &Payload,
    ctx: &mut ChannelContext<I>,
) -> Result<Joined, Payload> {
    let body = join_request(topic, params, ctx.assigns(), ctx.socket_id(), ctx.node());
    match hook.call::<JoinAnswer>(&body).await {
        Ok(JoinAnswer::Ok {
            reply,
            assigns,
            presence_meta,
        }) => {
            for (k, v) in assigns.unwrap_or_default() {
                ctx.assign(k, v);
            }
            Ok(Joined {
                reply: reply.map_or_else(Payload::empty, |r| Payload::json(&r)),
                presence_meta,
            })
        }
        Ok(JoinAnswer::Error { reason }) => Err(Payload::reason(
            reason.as_deref().unwrap_or(Refusal::Unauthorized.reason()),
        )),
        Err(e) => Err(Payload::reason(e.reason())),
    }
}

/// Asks the push hook, publishes the broadcasts it asks for (in order,
/// stopping at the first that fails; `from`, the pusher when its rule says
/// `include_sender = false`, is skipped by them), and replies as it says.
pub(crate) async fn push<I: Send + 'static>(
    hook: &Hook,
    event: &str,
    payload: &Payload,
    from: Option<u64>,
    ctx: &ChannelContext<I>,
) -> HandleIn {
    if matches!(payload, Payload::Binary(_)) {
        return HandleIn::error(Payload::reason("binary payloads cannot be sent to a hook"));
    }
    let body = push_request(
        ctx.topic(),
        event,
        payload,
        ctx.assigns(),
        ctx.socket_id(),
        ctx.node(),
    );
    let answer = match hook.call::<Reply>(&body).await {
        Ok(a) => a,
        Err(e) => return HandleIn::error(Payload::reason(e.reason())),
    };
    for msg in answer.broadcasts(from) {
        let pubsub = &ctx.services().pubsub;
        if let Err(e) = pubsub.broadcast_counted(Source::Client, msg, None).await {
            tracing::warn!(topic = ctx.topic(), error = %e, "push hook broadcast failed");
            let refusal = match e {
                PublishError::TooLarge { .. } => Refusal::BroadcastTooLarge,
                PublishError::Reserved { .. } => Refusal::EventNotAllowed,
                PublishError::Broker(_) => Refusal::BroadcastFailed,
            };
            return HandleIn::error(refusal.payload());
        }
    }
    match answer.status {
        Status::Ok => HandleIn::ok(answer.response()),
        Status::Error => HandleIn::error(answer.response()),
    }
}
