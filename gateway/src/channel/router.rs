//! Topic patterns → channel implementations, as Phoenix's `channel "room:*", RoomChannel`.

use super::runner::{self, Start};
use super::Channel;
use std::fmt;
use std::sync::Arc;

/// Makes and starts a channel for one join.
pub(crate) trait Factory: Send + Sync {
    fn start(&self, start: Start);
}

struct FnFactory<F>(F);

impl<C, F> Factory for FnFactory<F>
where
    C: Channel,
    F: Fn() -> C + Send + Sync + 'static,
{
    fn start(&self, start: Start) {
        tokio::spawn(runner::run((self.0)(), start));
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn matches(&self, topic: &str) -> bool {
        match self {
            Pattern::Exact(t) => t == topic,
            Pattern::Prefix(p) => topic.starts_with(p.as_str()),
        }
    }
}

/// Routes a topic to the channel that serves it; the first matching route wins.
#[derive(Clone, Default)]
pub struct Router {
    routes: Vec<(Pattern, Arc<dyn Factory>)>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.routes.iter().map(|(p, _)| p))
            .finish()
    }
}

impl Router {
    /// An empty router: every join is answered `unmatched topic`.
    pub fn new() -> Self {
        Router::default()
    }

    /// Serves topics matching `pattern` with channels made by `make`, one per
    /// join. A pattern is an exact topic (`"ping"`) or ends in a wildcard
    /// (`"room:*"` matches every topic starting with `room:`).
    ///
    /// # Panics
    /// If `*` appears anywhere but at the end of the pattern: that is a
    /// programming error, caught when the router is built.
    pub fn channel<C, F>(mut self, pattern: &str, make: F) -> Self
    where
        C: Channel,
        F: Fn() -> C + Send + Sync + 'static,
    {
        let pattern = match pattern.strip_suffix('*') {
            Some(prefix) if !prefix.contains('*') => Pattern::Prefix(prefix.to_owned()),
            None if !pattern.contains('*') => Pattern::Exact(pattern.to_owned()),
            _ => panic!("channel pattern {pattern:?}: a wildcard may only end the pattern"),
        };
        self.routes.push((pattern, Arc::new(FnFactory(make))));
        self
    }

    pub(crate) fn route(&self, topic: &str) -> Option<&Arc<dyn Factory>> {
        self.routes
            .iter()
            .find(|(p, _)| p.matches(topic))
            .map(|(_, f)| f)
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
    #[should_panic(expected = "wildcard")]
    fn inner_wildcard_is_refused() {
        let _ = Router::new().channel("a:*:b", || Nop);
    }
}
