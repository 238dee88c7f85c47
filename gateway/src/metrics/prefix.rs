//! The `topic_prefix` label: the part of a topic before its first `:`.
//!
//! Topics come from clients and publishers, so a label taken from them as
//! they are would let anyone create series without bound. Only prefixes
//! that the configuration names — a channel pattern or a socket-id template
//! starting with them — are reported; every other topic is `other`.

use parking_lot::RwLock;
use std::collections::HashSet;
use std::sync::LazyLock;

/// The label of topics whose prefix no pattern names.
pub(crate) const OTHER: &str = "other";

static KNOWN: LazyLock<RwLock<HashSet<Box<str>>>> = LazyLock::new(RwLock::default);

/// The prefix of a topic or pattern: up to the first `:`, or all of it.
fn head(topic: &str) -> &str {
    topic.split_once(':').map_or(topic, |(p, _)| p)
}

/// Makes the literal prefix of `pattern` (a `[[channel]]` pattern such as
/// `room:*`, or a socket-id template such as `user_socket:{sub}`) a label
/// value. A pattern whose prefix has a wildcard or placeholder (`*`,
/// `ro*`, `{team}:chat`) adds nothing: its topics stay `other`.
pub(crate) fn register_pattern(pattern: &str) {
    let p = head(pattern);
    if p.is_empty() || p.contains(['*', '{', '}']) || p == OTHER {
        return;
    }
    if !KNOWN.read().contains(p) {
        KNOWN.write().insert(p.into());
    }
}

/// Every label value so far: the configured prefixes and `other`.
pub(crate) fn all() -> Vec<String> {
    let mut v: Vec<String> = KNOWN.read().iter().map(|p| p.to_string()).collect();
    v.push(OTHER.to_owned());
    v
}

/// The label value for `topic`.
pub(crate) fn of(topic: &str) -> &str {
    let p = head(topic);
    if KNOWN.read().contains(p) {
        p
    } else {
        OTHER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_prefixes_are_labels() {
        register_pattern("metricsroom:*");
        register_pattern("metricsping");
        register_pattern("metricsuser_socket:{sub}");
        register_pattern("{team}:metricschat");
        register_pattern("metricsro*");
        assert_eq!(of("metricsroom:lobby"), "metricsroom");
        assert_eq!(of("metricsroom"), "metricsroom");
        assert_eq!(of("metricsping"), "metricsping");
        assert_eq!(of("metricsuser_socket:42"), "metricsuser_socket");
        assert_eq!(of("metricsrobot:1"), OTHER);
        assert_eq!(of("a-team:metricschat"), OTHER);
        assert_eq!(of("random-topic-123"), OTHER);
        assert_eq!(of(""), OTHER);
    }
}
