//! Topic patterns: exact topics, a trailing wildcard (`room:*`), and claim
//! placeholders (`notifications:t-{team}:u-{sub}`).
//!
//! A placeholder matches one or more characters other than `:`, so it never
//! spans topic segments; what it captured is checked against token claims by
//! whoever authorizes the join.

use std::collections::HashSet;
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
        let mut m = Matcher {
            parts: &self.parts,
            prefix: self.prefix,
            topic,
            caps: Vec::new(),
            dead: HashSet::new(),
        };
        m.from(0, 0).then_some(m.caps)
    }
}

/// One match of a pattern against a topic, by backtracking: each
/// placeholder tries its shortest value first. `dead` remembers where the
/// parts after a placeholder cannot match, so each (part, offset) fails
/// once: without it, `{a}-{b}-{c}-…` against a topic of dashes took time
/// exponential in the placeholders (found by the `topic_pattern` fuzz target).
struct Matcher<'p, 't> {
    parts: &'p [Part],
    prefix: bool,
    topic: &'t str,
    caps: Vec<(&'p str, &'t str)>,
    dead: HashSet<(usize, usize)>,
}

impl Matcher<'_, '_> {
    /// Whether parts `i..` match the topic from byte `at`.
    fn from(&mut self, i: usize, at: usize) -> bool {
        let rest = &self.topic[at..];
        let Some(part) = self.parts.get(i) else {
            return self.prefix || rest.is_empty();
        };
        match part {
            Part::Lit(lit) => rest.starts_with(lit.as_str()) && self.from(i + 1, at + lit.len()),
            Part::Var(name) => {
                if self.dead.contains(&(i, at)) {
                    return false;
                }
                let max = rest.find(':').unwrap_or(rest.len());
                for end in (1..=max).filter(|e| rest.is_char_boundary(*e)) {
                    self.caps.push((name.as_str(), &rest[..end]));
                    if self.from(i + 1, at + end) {
                        return true;
                    }
                    self.caps.pop();
                }
                self.dead.insert((i, at));
                false
            }
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

    /// Found by the `topic_pattern` fuzz target: backtracking over many
    /// placeholders in one segment took exponential time (this ran for
    /// hours); now each (placeholder, offset) fails once.
    #[test]
    fn many_placeholders_match_in_polynomial_time() {
        let p = TopicPattern::parse("t:{a}-{b}-{c}-{d}-{e}-{f}-{g}-{h}-{i}-{j}-{k}-{l}x").unwrap();
        let topic = format!("t:{}", "-".repeat(250));
        assert!(!p.matches(&topic));
        let topic = format!("t:{}x", "a-".repeat(120));
        let caps = p.captures(&topic).unwrap();
        assert_eq!(caps[0], ("a", "a"));
        assert_eq!(caps[11], ("l", "a-".repeat(109).as_str()));
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
