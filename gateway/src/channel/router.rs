//! Topic patterns → channel implementations, as Phoenix's `channel "room:*", RoomChannel`.

use super::pattern::{PatternError, TopicPattern};
use super::runner::{self, Start};
use super::slot::Inbox;
use super::Channel;
use crate::pubsub::History;
use std::fmt;
use std::sync::Arc;

/// Makes and starts a channel for one join.
pub(crate) trait Factory: Send + Sync {
    /// Starts the join; the inbox takes the channel's messages.
    fn start(&self, start: Start) -> Inbox;
}

struct FnFactory<F>(F);

impl<C, F> Factory for FnFactory<F>
where
    C: Channel,
    F: Fn() -> C + Send + Sync + 'static,
{
    fn start(&self, start: Start) -> Inbox {
        runner::start((self.0)(), start)
    }
}

/// Topics one channel implementation serves, and the limits of their pushes.
#[derive(Clone)]
pub(crate) struct Route {
    pattern: TopicPattern,
    pub(crate) factory: Arc<dyn Factory>,
    /// Largest payload of a client push, bytes; `None`: only the socket's
    /// `max_frame_size` bounds it.
    pub(crate) max_payload: Option<usize>,
    /// The history the route's topics keep.
    history: Option<History>,
    /// Its channels' callbacks are the gateway's own and never block, so
    /// a join (and an end at close) may run on the connection's task.
    pub(crate) inline: bool,
}

/// Routes a topic to the channel that serves it; the first matching route wins.
#[derive(Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.routes.iter().map(|r| (&r.pattern, r.max_payload)))
            .finish()
    }
}

impl Router {
    /// An empty router: every join is answered `unmatched topic`.
    pub fn new() -> Self {
        Router::default()
    }

    /// The patterns served, in the order they were added.
    pub(crate) fn patterns(&self) -> impl Iterator<Item = &TopicPattern> {
        self.routes.iter().map(|r| &r.pattern)
    }

    /// Serves topics matching `pattern` with channels made by `make`, one per
    /// join. A pattern is an exact topic (`"ping"`), ends in a wildcard
    /// (`"room:*"` matches every topic starting with `room:`), or holds
    /// placeholders (`"user:{sub}"`; see [`TopicPattern`]).
    ///
    /// # Panics
    /// If the pattern is malformed: a programming error, caught when the
    /// router is built. Use [`Router::try_channel`] for patterns from config.
    pub fn channel<C, F>(self, pattern: &str, make: F) -> Self
    where
        C: Channel,
        F: Fn() -> C + Send + Sync + 'static,
    {
        match self.try_channel(pattern, make) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`Router::channel`], returning an error for a malformed pattern.
    ///
    /// # Errors
    /// When the pattern does not parse.
    pub fn try_channel<C, F>(mut self, pattern: &str, make: F) -> Result<Self, PatternError>
    where
        C: Channel,
        F: Fn() -> C + Send + Sync + 'static,
    {
        let pattern = TopicPattern::parse(pattern)?;
        self.routes.push(Route {
            pattern,
            factory: Arc::new(FnFactory(make)),
            max_payload: None,
            history: None,
            inline: false,
        });
        Ok(self)
    }

    /// Limits the payload of client pushes on the route added last to
    /// `bytes` (its JSON text, or its binary bytes). A larger push is
    /// answered with an error reply, reason `payload too large`, and never
    /// reaches the channel, so it is neither queued for the channel nor
    /// broadcast. Without it only the socket's `max_frame_size` bounds a push.
    ///
    /// # Panics
    /// If no route was added yet: a programming error.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        match self.routes.last_mut() {
            Some(route) => route.max_payload = Some(bytes),
            None => panic!("Router::max_payload: add a channel route first"),
        }
        self
    }

    /// Keeps the history of the topics of the route added last: every
    /// broadcast to them gets a position (in the ref slot), and a join can
    /// recover what it missed (see [`History`]). The first route that
    /// matches a topic decides, over every socket of the endpoint, for
    /// broadcasts from anywhere (`PubSub::broadcast`, the HTTP API).
    ///
    /// # Panics
    /// If no route was added yet: a programming error.
    pub fn history(mut self, history: History) -> Self {
        match self.routes.last_mut() {
            Some(route) => route.history = Some(history),
            None => panic!("Router::history: add a channel route first"),
        }
        self
    }

    /// Marks the route added last as the gateway's own (a config rule):
    /// its channels' callbacks return without blocking, so their joins, and
    /// their ends when the connection closes, run on the connection's task
    /// unless they have to wait. Never for a library's channels, whose
    /// slow callbacks must stall only their own channel.
    ///
    /// # Panics
    /// If no route was added yet: a programming error.
    pub(crate) fn inline(mut self) -> Self {
        match self.routes.last_mut() {
            Some(route) => route.inline = true,
            None => panic!("Router::inline: add a channel route first"),
        }
        self
    }

    /// Each route's pattern and history, in order.
    pub(crate) fn histories(&self) -> impl Iterator<Item = (TopicPattern, Option<History>)> + '_ {
        self.routes.iter().map(|r| (r.pattern.clone(), r.history))
    }

    pub(crate) fn route(&self, topic: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.pattern.matches(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{ChannelContext, JoinResult};
    use crate::protocol::Payload;

    struct Nop;
    #[async_trait::async_trait]
    impl Channel for Nop {
        type Info = ();
        async fn join(&mut self, _: &str, _: Payload, _: &mut ChannelContext<()>) -> JoinResult {
            Ok(Payload::empty())
        }
    }

    #[test]
    fn exact_and_wildcard() {
        let r = Router::new()
            .channel("ping", || Nop)
            .channel("room:*", || Nop);
        assert!(r.route("ping").is_some());
        assert!(r.route("ping:1").is_none());
        assert!(r.route("room:lobby").is_some());
        assert!(r.route("room:").is_some());
        assert!(r.route("rooms").is_none());
    }

    #[test]
    fn max_payload_applies_to_the_route_added_last() {
        let r = Router::new()
            .channel("ping", || Nop)
            .channel("room:*", || Nop)
            .max_payload(100);
        assert_eq!(r.route("ping").unwrap().max_payload, None);
        assert_eq!(r.route("room:a").unwrap().max_payload, Some(100));
    }

    #[test]
    #[should_panic(expected = "wildcard may only end")]
    fn inner_wildcard_is_refused() {
        let _ = Router::new().channel("a:*:b", || Nop);
    }
}
