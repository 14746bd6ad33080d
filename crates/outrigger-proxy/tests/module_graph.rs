//! The crate's modules import each other without cycles, so each can be read (and changed)
//! knowing only the ones below it: sys < http < error < body < upstream < policy < record <
//! respond < runtime < path < downstream (docs/architecture.md has the map). Test modules are
//! left out: a test may reach anywhere.

#![allow(clippy::unwrap_used, reason = "a test: a panic is the failure report")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `src/a/b.rs` -> `a::b`, `src/a/mod.rs` -> `a`; the crate root is left out.
fn module_of(src: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).ok()?.with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    (parts != ["lib"]).then_some(parts)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its test module and comments.
fn code(text: &str) -> String {
    let body = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
    body.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every module's imports of other modules (`crate::` and `super::` paths), at `depth`
/// path components (1: top-level modules; 2: their files).
fn graph(depth: usize) -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().filter_map(|f| module_of(&src, f)).collect();
    let path = regex::Regex::new(r"\b(crate|super)((?:::[a-z_0-9]+)+)").unwrap();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(me) = module_of(&src, file) else { continue };
        let is_mod_rs = file.ends_with("mod.rs");
        let text = code(&std::fs::read_to_string(file).unwrap());
        for cap in path.captures_iter(&text) {
            let mut full: Vec<String> = if &cap[1] == "crate" {
                Vec::new()
            } else if is_mod_rs {
                me[..me.len().saturating_sub(1)].to_vec()
            } else {
                me[..me.len() - 1].to_vec()
            };
            full.extend(cap[2].split("::").filter(|p| !p.is_empty()).map(str::to_owned));
            // The longest prefix that is a module.
            let Some(target) = (1..=full.len())
                .rev()
                .map(|k| full[..k].to_vec())
                .find(|m| modules.contains(m))
            else {
                continue;
            };
            let (a, b) = (
                me.iter().take(depth).cloned().collect::<Vec<_>>(),
                target.iter().take(depth).cloned().collect::<Vec<_>>(),
            );
            // A module and its own submodules may use each other.
            if a != b && !me.starts_with(&target) && !target.starts_with(&me) {
                edges.entry(a.join("::")).or_default().insert(b.join("::"));
            }
        }
    }
    edges
}

/// The cycles of `edges` (strongly connected components of more than one module).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = edges.keys().chain(edges.values().flatten()).collect();
    let reach = |from: &String| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(n) = todo.pop() {
            for m in edges.get(&n).into_iter().flatten() {
                if seen.insert(m.clone()) {
                    todo.push(m.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> = nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut found: BTreeSet<Vec<String>> = BTreeSet::new();
    for n in &nodes {
        let mut comp: Vec<String> = nodes
            .iter()
            .filter(|m| reaches[*n].contains(**m) && reaches[**m].contains(*n))
            .map(|m| (*m).clone())
            .collect();
        comp.sort();
        if comp.len() > 1 {
            found.insert(comp);
        }
    }
    found.into_iter().collect()
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let edges = graph(1);
    assert!(
        edges.contains_key("path") && edges["path"].contains("runtime"),
        "the graph was read: {edges:#?}"
    );
    assert_eq!(cycles(&edges), Vec::<Vec<String>>::new(), "{edges:#?}");
}

#[test]
fn files_within_modules_import_each_other_without_cycles() {
    let edges = graph(2);
    assert_eq!(cycles(&edges), Vec::<Vec<String>>::new(), "{edges:#?}");
}

#[test]
fn a_cycle_is_found_when_there_is_one() {
    let mut edges = BTreeMap::new();
    edges.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    edges.insert("b".to_owned(), BTreeSet::from(["c".to_owned()]));
    edges.insert("c".to_owned(), BTreeSet::from(["a".to_owned(), "d".to_owned()]));
    assert_eq!(
        cycles(&edges),
        vec![vec!["a".to_owned(), "b".to_owned(), "c".to_owned()]]
    );
}
