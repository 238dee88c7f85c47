//! The layers of `gateway/src` import only downward, in the order
//! `docs/architecture.md` declares between its `layers:begin` and
//! `layers:end` markers. A module that imports one above it, or that the
//! document does not place, fails this test, which `make lint` runs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The declared order, top first: the first word of each line between the
/// markers, skipping fences.
fn declared_layers() -> Vec<String> {
    let doc = fs::read_to_string(repo().join("docs/architecture.md")).unwrap();
    let begin = doc.find("<!-- layers:begin -->").unwrap();
    let end = doc.find("<!-- layers:end -->").unwrap();
    doc[begin..end]
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty() && !l.starts_with("```"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its trailing
/// `#[cfg(test)]` module (tests may reach anywhere).
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod ") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules a file's code names through `crate::`, including
/// those of a `use crate::{a, b::c}` group.
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start => {
                        found.insert(ident(&group[i..]).to_owned());
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest).to_owned());
        }
    }
    found
}

#[test]
fn modules_import_only_downward() {
    let layers = declared_layers();
    let rank: BTreeMap<&str, usize> = layers
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let src = repo().join("gateway/src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut modules = BTreeSet::new();
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        modules.insert(module.clone());
        let Some(&mine) = rank.get(module.as_str()) else {
            continue;
        };
        for target in imports(&code(&fs::read_to_string(file).unwrap())) {
            match rank.get(target.as_str()) {
                Some(&theirs) if theirs > mine => {}
                Some(_) if target == module => {}
                Some(_) => wrong.push(format!("{} imports {target}, a layer above", rel.display())),
                None => {}
            }
        }
    }
    let declared: BTreeSet<String> = layers.iter().cloned().collect();
    let unplaced: Vec<_> = modules.difference(&declared).collect();
    let stale: Vec<_> = declared.difference(&modules).collect();
    assert!(
        unplaced.is_empty() && stale.is_empty(),
        "docs/architecture.md's layers and gateway/src's modules differ: \
         not declared {unplaced:?}, declared but absent {stale:?}"
    );
    assert!(
        wrong.is_empty(),
        "imports against the layer order:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_import_scanner_reads_paths_and_groups() {
    let code = code(
        "use crate::a::B;\nuse crate::{c, d::{E, F}, g};\nfn f() { crate::h::i() }\n// crate::no\n",
    );
    let want: BTreeSet<String> = ["a", "c", "d", "g", "h"].map(String::from).into();
    assert_eq!(imports(&code), want);
}
