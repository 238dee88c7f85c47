//! `docs/configuration.md` documents every key the parser accepts, only
//! those, and their defaults as the parser has them.
//!
//! The parser's keys are found by asking it rather than listed here, so a
//! new field cannot slip past: in a table, an unknown key makes serde name
//! every field the table accepts; a field is a section of its own when it
//! too answers a probe with a list of fields.

use crate::config::Config;
use std::collections::BTreeSet;

const DOCS: &str = include_str!("../../../../docs/configuration.md");

/// The fields of the table that `headers` (TOML table header lines) open,
/// or `None` when that is not a table of known fields.
fn fields(headers: &[String]) -> Option<Vec<String>> {
    let text = format!("{}\n__probe = 1\n", headers.join("\n"));
    let err = Config::parse(&text, "probe").err()?.to_string();
    // "…, expected one of `a`, `b`", "… `a` or `b`", "… `a`", or "…, there are no fields".
    let listed = err.split("unknown field `__probe`").nth(1)?;
    Some(
        listed
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect(),
    )
}

/// Every key the parser accepts, sections included: `server`,
/// `server.listen`, `socket.jwt`, `socket.jwt.secret`, …
fn accepted() -> BTreeSet<String> {
    fn walk(path: &str, headers: &[String], out: &mut BTreeSet<String>) {
        let names = fields(headers).unwrap_or_else(|| panic!("{path:?} lists no fields"));
        for name in names {
            let key = match path {
                "" => name,
                _ => format!("{path}.{name}"),
            };
            out.insert(key.clone());
            for header in [format!("[{key}]"), format!("[[{key}]]")] {
                let nested = [headers, &[header]].concat();
                if fields(&nested).is_some() {
                    walk(&key, &nested, out);
                    break;
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk("", &[], &mut out);
    out
}

/// The section a heading such as ``## `[api]` — HTTP publish`` or
/// ``### `[[channel]]` `` documents.
fn heading_section(line: &str) -> Option<String> {
    let quoted = line.split('`').nth(1)?;
    let name = quoted.strip_prefix('[')?.strip_suffix(']')?;
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    Some(name.to_owned())
}

/// A documented key: its full name and its default cell.
struct Documented {
    key: String,
    default: String,
}

/// Every section heading, and every row of a `| key | type | default | … |`
/// table under one.
fn documented() -> Vec<Documented> {
    let mut out = Vec::new();
    let mut section = None;
    let mut columns: Option<Vec<String>> = None;
    for line in DOCS.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            section = heading_section(line);
            if let Some(s) = &section {
                out.push(Documented {
                    key: s.clone(),
                    default: String::new(),
                });
            }
            columns = None;
            continue;
        }
        let Some(row) = line.strip_prefix('|') else {
            // A table ends at the first line that is not a row.
            columns = None;
            continue;
        };
        // `\|` separates alternatives inside a cell.
        let cells: Vec<String> = row
            .replace("\\|", "\u{0}")
            .split('|')
            .map(|c| c.trim().replace('\u{0}', "|"))
            .collect();
        match &columns {
            None if cells[0] == "key" => columns = Some(cells),
            None => {}
            Some(_) if cells[0].chars().all(|c| c == '-' || c == ':') => {}
            Some(columns) => {
                let section = section
                    .as_ref()
                    .unwrap_or_else(|| panic!("a key table outside a section: {line}"));
                let cell = |name: &str| {
                    let i = columns.iter().position(|c| c == name);
                    i.and_then(|i| cells.get(i)).cloned().unwrap_or_default()
                };
                out.push(Documented {
                    key: format!("{section}.{}", cell("key").trim_matches('`')),
                    default: cell("default"),
                });
            }
        }
    }
    out
}

#[test]
fn every_accepted_key_is_documented_and_every_documented_key_accepted() {
    let accepted = accepted();
    for known in [
        "server.listen",
        "socket.jwt.secret",
        "channel.presence.key_claim",
    ] {
        assert!(accepted.contains(known), "probing found {accepted:?}");
    }
    let documented: BTreeSet<String> = documented().into_iter().map(|d| d.key).collect();
    let undocumented: Vec<_> = accepted.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&accepted).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/configuration.md is out of step with the parser\n\
         accepted but not documented: {undocumented:?}\n\
         documented but not accepted: {unknown:?}"
    );
}

/// The value of `key` in `table`, looking into the first entry of arrays
/// of tables.
fn lookup<'a>(table: &'a toml::Value, key: &str) -> Option<&'a toml::Value> {
    key.split('.').try_fold(table, |v, part| match v {
        toml::Value::Array(entries) => entries.first()?.get(part),
        v => v.get(part),
    })
}

#[test]
fn documented_defaults_are_the_parsers() {
    // Every optional section present, with nothing set but what is required.
    let text = "[[socket]]\n[socket.jwt]\n[socket.hooks]\n[[channel]]\npattern = \"a:*\"\n[channel.presence]\n[channel.hooks]\n";
    let defaults = toml::Value::try_from(Config::parse(text, "defaults").unwrap()).unwrap();
    let mut compared = 0;
    for d in documented() {
        // The first `literal` of the cell, when it is a TOML value: `2000`,
        // `"phx:"`, `false`, `[]`, but not `gateway@$HOSTNAME`.
        let Some(literal) = d.default.split('`').nth(1) else {
            continue;
        };
        let Ok(parsed) = toml::from_str::<toml::Table>(&format!("v = {literal}")) else {
            continue;
        };
        // Keys whose default is decided later (e.g. `demo.socket`) are absent.
        let Some(actual) = lookup(&defaults, &d.key) else {
            continue;
        };
        assert_eq!(Some(actual), parsed.get("v"), "default of {}", d.key);
        compared += 1;
    }
    assert!(compared > 30, "only {compared} defaults compared");
}
