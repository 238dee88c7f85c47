//! Topic patterns: exact topics, a trailing wildcard (`room:*`), and claim
//! placeholders (`notifications:t-{team}:u-{sub}`).
//!
//! A placeholder matches one or more characters other than `:`, so it never
//! spans topic segments; what it captured is checked against token claims by
//! whoever authorizes the join.

use std::fmt;

/// A pattern that is not well formed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid topic pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(String),
}

/// A parsed topic pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct TopicPattern {
    source: String,
    parts: Vec<Part>,
    /// Ends in `*`: anything may follow the parts.
    prefix: bool,
}

impl fmt::Debug for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl TopicPattern {
    /// Parses a pattern.
    ///
    /// # Errors
    /// When `*` is not last, braces are unbalanced or empty, a placeholder
    /// name is not `[A-Za-z0-9_]+`, or two placeholders touch.
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        let err = |reason| PatternError {
            pattern: pattern.to_owned(),
            reason,
        };
        let (body, prefix) = match pattern.strip_suffix('*') {
            Some(b) => (b, true),
            None => (pattern, false),
        };
        if body.contains('*') {
            return Err(err("a wildcard may only end the pattern"));
        }
        if pattern.is_empty() {
            return Err(err("empty pattern"));
        }
        let mut parts = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(Part::Lit(rest.to_owned()));
                    break;
                }
                Some(i) if rest.as_bytes()[i] == b'}' => return Err(err("unbalanced '}'")),
                Some(i) => {
                    if i > 0 {
                        parts.push(Part::Lit(rest[..i].to_owned()));
                    } else if matches!(parts.last(), Some(Part::Var(_))) {
                        return Err(err("two placeholders must be separated by text"));
                    }
                    let close = rest[i..].find('}').ok_or_else(|| err("unclosed '{'"))? + i;
                    let name = &rest[i + 1..close];
                    if name.is_empty()
                        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        return Err(err("placeholder names are [A-Za-z0-9_]+"));
                    }
                    parts.push(Part::Var(name.to_owned()));
                    rest = &rest[close + 1..];
                }
            }
        }
        if prefix && matches!(parts.last(), Some(Part::Var(_))) {
            return Err(err("a placeholder cannot be followed by '*'"));
        }
        Ok(TopicPattern {
            source: pattern.to_owned(),
            parts,
            prefix,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Placeholder names, in order.
    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(n) => Some(n.as_str()),
            Part::Lit(_) => None,
        })
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        self.captures(topic).is_some()
    }

    /// The placeholder values when `topic` matches.
    pub fn captures<'t>(&self, topic: &'t str) -> Option<Vec<(&str, &'t str)>> {
        let mut caps = Vec::new();
        match_from(&self.parts, self.prefix, topic, &mut caps).then_some(caps)
    }
}

fn match_from<'p, 't>(
    parts: &'p [Part],
    prefix: bool,
    topic: &'t str,
    caps: &mut Vec<(&'p str, &'t str)>,
) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return prefix || topic.is_empty();
    };
    match first {
        Part::Lit(lit) => match topic.strip_prefix(lit.as_str()) {
            Some(t) => match_from(rest, prefix, t, caps),
            None => false,
        },
        Part::Var(name) => {
            let max = topic.find(':').unwrap_or(topic.len());
            for end in (1..=max).filter(|e| topic.is_char_boundary(*e)) {
                caps.push((name.as_str(), &topic[..end]));
                if match_from(rest, prefix, &topic[end..], caps) {
                    return true;
                }
                caps.pop();
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_wildcard_and_placeholders() {
        let p = TopicPattern::parse("room:*").unwrap();
        assert!(p.matches("room:lobby") && p.matches("room:") && !p.matches("rooms"));
        let p = TopicPattern::parse("ping").unwrap();
        assert!(p.matches("ping") && !p.matches("ping:1"));
        let p = TopicPattern::parse("notifications:t-{team}:u-{sub}").unwrap();
        assert_eq!(
            p.captures("notifications:t-7:u-42"),
            Some(vec![("team", "7"), ("sub", "42")])
        );
        assert!(!p.matches("notifications:t-7:u-42:x"));
        assert!(!p.matches("notifications:t-:u-42"));
        let p = TopicPattern::parse("user:{sub}").unwrap();
        assert!(!p.matches("user:a:b"));
        let p = TopicPattern::parse("t:{a}-x*").unwrap();
        assert_eq!(p.captures("t:1-x-x-more"), Some(vec![("a", "1")]));
    }

    #[test]
    fn rejects_bad_patterns() {
        for bad in [
            "a*b", "a:{", "a:}", "a:{}", "a:{x}{y}", "a:{x-y}", "", "a:{x}*",
        ] {
            assert!(TopicPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
