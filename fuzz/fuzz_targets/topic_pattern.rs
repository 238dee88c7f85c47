//! Topic patterns (`channel/pattern.rs`): `room:*`, `user:{sub}`,
//! `notifications:t-{team}:u-{sub}`, as `[[channel]]` rules, `socket_id`
//! templates and a token's `topics_claim` list write them, against the
//! topics clients join.
//!
//! Input: pattern and topic separated by the first `\n`.
//!
//! Checks, against a reference written from the pattern grammar:
//! - a pattern parses exactly when the grammar allows it, with the same
//!   placeholders;
//! - `matches` agrees with a dynamic-programming matcher, and `captures`
//!   gives the leftmost-shortest placeholder values that make the rest
//!   match (each non-empty, without `:`), which rebuild the topic.
#![no_main]

use gateway::channel::TopicPattern;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Var(String),
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, topic) = text.split_once('\n').unwrap_or((text, ""));
    let parsed = TopicPattern::parse(pattern);
    let want = grammar(pattern);
    let (parts, prefix) = match (&parsed, &want) {
        (Ok(p), Some((parts, prefix))) => {
            let names: Vec<&str> = parts
                .iter()
                .filter_map(|p| match p {
                    Part::Var(n) => Some(n.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(p.placeholders().collect::<Vec<_>>(), names);
            assert_eq!(p.as_str(), pattern);
            (parts.clone(), *prefix)
        }
        (Err(_), None) => return,
        _ => panic!("{pattern:?}: parse {parsed:?}, grammar {want:?}"),
    };
    let p = parsed.unwrap();
    let want = reference_captures(&parts, prefix, topic);
    let got = p.captures(topic);
    assert_eq!(got.is_some(), p.matches(topic));
    let got: Option<Vec<(String, String)>> = got.map(|c| {
        c.into_iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    });
    assert_eq!(got, want, "{pattern:?} against {topic:?}");
    if let Some(caps) = got {
        let mut rebuilt = String::new();
        let mut caps = caps.iter();
        for part in &parts {
            match part {
                Part::Lit(l) => rebuilt.push_str(l),
                Part::Var(_) => {
                    let (_, v) = caps.next().unwrap();
                    assert!(!v.is_empty() && !v.contains(':'));
                    rebuilt.push_str(v);
                }
            }
        }
        if prefix {
            assert!(topic.starts_with(&rebuilt));
        } else {
            assert_eq!(rebuilt, topic);
        }
    }
});

/// The grammar: an optional trailing `*` (the only one); literal text and
/// `{name}` placeholders, names `[A-Za-z0-9_]+`, never two placeholders in
/// a row nor one right before the `*`; not empty.
fn grammar(pattern: &str) -> Option<(Vec<Part>, bool)> {
    if pattern.is_empty() {
        return None;
    }
    let (body, prefix) = match pattern.strip_suffix('*') {
        Some(b) => (b, true),
        None => (pattern, false),
    };
    let mut parts: Vec<Part> = Vec::new();
    let mut chars = body.chars();
    let mut lit = String::new();
    while let Some(c) = chars.next() {
        match c {
            '*' | '}' => return None,
            '{' => {
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                } else if matches!(parts.last(), Some(Part::Var(_))) {
                    return None;
                }
                let mut name = String::new();
                loop {
                    match chars.next()? {
                        '}' => break,
                        c if c.is_ascii_alphanumeric() || c == '_' => name.push(c),
                        _ => return None,
                    }
                }
                if name.is_empty() {
                    return None;
                }
                parts.push(Part::Var(name));
            }
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        parts.push(Part::Lit(lit));
    }
    if prefix && matches!(parts.last(), Some(Part::Var(_))) {
        return None;
    }
    Some((parts, prefix))
}

/// `ok[i][j]`: parts `i..` match topic bytes `j..`; then the captures are
/// read off greedily, each placeholder taking its shortest feasible value.
fn reference_captures(parts: &[Part], prefix: bool, topic: &str) -> Option<Vec<(String, String)>> {
    let n = topic.len();
    let mut ok = vec![vec![false; n + 1]; parts.len() + 1];
    for j in 0..=n {
        ok[parts.len()][j] = prefix || j == n;
    }
    for i in (0..parts.len()).rev() {
        for j in 0..=n {
            if !topic.is_char_boundary(j) {
                continue;
            }
            ok[i][j] = match &parts[i] {
                Part::Lit(l) => topic[j..].starts_with(l.as_str()) && ok[i + 1][j + l.len()],
                Part::Var(_) => var_ends(topic, j).any(|e| ok[i + 1][e]),
            };
        }
    }
    if !ok[0][0] {
        return None;
    }
    let (mut caps, mut j) = (Vec::new(), 0);
    for (i, part) in parts.iter().enumerate() {
        match part {
            Part::Lit(l) => j += l.len(),
            Part::Var(name) => {
                let e = var_ends(topic, j).find(|&e| ok[i + 1][e]).unwrap();
                caps.push((name.clone(), topic[j..e].to_owned()));
                j = e;
            }
        }
    }
    Some(caps)
}

/// Where a placeholder starting at `j` may end: at least one character, no `:`.
fn var_ends(topic: &str, j: usize) -> impl Iterator<Item = usize> + '_ {
    let stop = topic[j..].find(':').map_or(topic.len(), |k| j + k);
    (j + 1..=stop).filter(move |&e| topic.is_char_boundary(e))
}
