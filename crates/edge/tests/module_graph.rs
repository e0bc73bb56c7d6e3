//! The top-level modules of the library import each other one way only
//! (docs/architecture.md, "Module layering").
//!
//! The graph is read from the source text: every `crate::<module>` path in
//! a module's files (in `use` lines, groups such as `use crate::{a, b::c}`
//! and inline paths) is an edge from that module to `<module>`; comments
//! and string literals are skipped. A cycle fails the test and is printed
//! with one reference per edge, so the import to move is easy to find.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Where a module refers to another: file (relative to `src`) and line.
type Sites = BTreeMap<String, BTreeMap<String, (String, usize)>>;

#[test]
fn top_level_modules_have_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = top_level_modules(&src);
    assert!(
        modules.len() >= 10,
        "expected the library's top-level modules under {}, found {modules:?}",
        src.display()
    );
    let mut edges: Sites = BTreeMap::new();
    for file in rust_files(&src) {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let Some(from) = owning_module(&rel) else {
            continue;
        };
        let text = fs::read_to_string(&file).unwrap();
        for (to, line) in crate_references(&text) {
            if to != from && modules.contains(&to) {
                edges
                    .entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_insert_with(|| (rel.clone(), line));
            }
        }
    }
    assert!(
        edges.values().map(BTreeMap::len).sum::<usize>() > 10,
        "the scan found almost no imports between modules: {edges:?}"
    );
    if let Some(cycle) = find_cycle(&modules, &edges) {
        let mut report = format!("module cycle: {}\n", cycle.join(" -> "));
        for pair in cycle.windows(2) {
            let (file, line) = &edges[&pair[0]][&pair[1]];
            report.push_str(&format!(
                "  {} -> {}: src/{file}:{line}\n",
                pair[0], pair[1]
            ));
        }
        panic!("{report}");
    }
}

#[test]
fn scanner_reads_paths_and_groups_but_not_comments_or_strings() {
    let text = r##"
use crate::alpha::Thing;
use crate::{beta, gamma::{One, Two}, self as _};
use crate::{
    delta::{self, x::Y},
    epsilon,
};
// crate::commented
/* crate::blocked /* nested crate::deeper */ */
fn f() -> crate::zeta::Z {
    let _ = "crate::quoted";
    let _ = r#"crate::raw"#;
    let _ = '"'; crate::eta::go();
}
"##;
    let found: BTreeSet<String> = crate_references(text).into_iter().map(|(m, _)| m).collect();
    let expected: BTreeSet<String> = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(found, expected);

    let modules: BTreeSet<String> = ["a", "b", "c"].into_iter().map(String::from).collect();
    let mut edges: Sites = BTreeMap::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a")] {
        edges
            .entry(from.into())
            .or_default()
            .insert(to.into(), (String::new(), 0));
    }
    assert_eq!(
        find_cycle(&modules, &edges),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    edges.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&modules, &edges), None);
}

/// The modules declared at the crate root: `x.rs` and `x/` under `src`.
fn top_level_modules(src: &Path) -> BTreeSet<String> {
    fs::read_dir(src)
        .unwrap()
        .filter_map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name()?.to_str()?.to_owned();
            if path.is_dir() {
                Some(name)
            } else {
                let stem = name.strip_suffix(".rs")?;
                (stem != "lib" && stem != "main").then(|| stem.to_owned())
            }
        })
        .collect()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// `hub/org/mod.rs` belongs to `hub`, `clock.rs` to `clock`; the crate
/// root belongs to none.
fn owning_module(rel: &str) -> Option<String> {
    let first = rel.split(['/', '\\']).next()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_owned())
}

/// The text with comments, string and char literals blanked out (newlines
/// kept, so line numbers hold).
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !chars[..i]
                .last()
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string: r"..." or r#"..."#, closed by as many hashes.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                match chars.get(j) {
                    None => break,
                    Some('"') if (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) => {
                        j += 1 + hashes;
                        break;
                    }
                    Some(_) => j += 1,
                }
            }
            out.extend(chars[i..j].iter().map(|&c| blank(c)));
            i = j;
        } else if c == '"' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(chars.len());
            out.extend(chars[i..end].iter().map(|&c| blank(c)));
            i = end;
        } else if c == '\'' {
            // A char literal ('x', '\n', '"'), not a lifetime ('a).
            let len = match (next, chars.get(i + 2)) {
                (Some('\\'), _) => chars[i + 2..]
                    .iter()
                    .position(|&c| c == '\'')
                    .map(|p| p + 3),
                (Some(_), Some('\'')) => Some(3),
                _ => None,
            };
            let len = len.unwrap_or(1).min(chars.len() - i);
            out.extend(chars[i..i + len].iter().map(|&c| blank(c)));
            i += len;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Every module named right after `crate::` (directly or as a member of a
/// `crate::{...}` group), with its line.
fn crate_references(text: &str) -> Vec<(String, usize)> {
    let code = code_only(text);
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(pos) = code[from..].find("crate") {
        let start = from + pos;
        from = start + 5;
        let before = start.checked_sub(1).map(|i| bytes[i]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$') {
            continue;
        }
        let rest = code[from..].trim_start();
        let Some(rest) = rest.strip_prefix("::") else {
            continue;
        };
        let rest = rest.trim_start();
        let line = code[..start].matches('\n').count() + 1;
        if let Some(group) = rest.strip_prefix('{') {
            for member in top_level_members(group) {
                found.push((member, line));
            }
        } else if let Some(name) = leading_ident(rest) {
            found.push((name, line));
        }
    }
    found
}

/// The first identifier of each top-level member of a `{...}` group (the
/// text after the opening brace).
fn top_level_members(group: &str) -> Vec<String> {
    let mut members = Vec::new();
    let mut depth = 0usize;
    let mut expect_member = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => expect_member = true,
            c if expect_member && depth == 0 && !c.is_whitespace() => {
                expect_member = false;
                if let Some(name) = leading_ident(&group[i..]) {
                    members.push(name);
                }
            }
            _ => {}
        }
    }
    members
}

fn leading_ident(text: &str) -> Option<String> {
    let ident: String = text
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!ident.is_empty() && ident != "self").then_some(ident)
}

/// A cycle as `[a, b, ..., a]`, or `None` when the graph is acyclic.
fn find_cycle(modules: &BTreeSet<String>, edges: &Sites) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        edges: &Sites,
        state: &mut BTreeMap<String, State>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), State::Open);
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flat_map(BTreeMap::keys) {
            match state.get(next) {
                Some(State::Open) => {
                    let start = path.iter().position(|n| n == next).unwrap();
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(State::Done) => {}
                None => {
                    if let Some(cycle) = visit(next, edges, state, path) {
                        return Some(cycle);
                    }
                }
            }
        }
        path.pop();
        state.insert(node.to_owned(), State::Done);
        None
    }
    let mut state = BTreeMap::new();
    for module in modules {
        if !state.contains_key(module)
            && let Some(cycle) = visit(module, edges, &mut state, &mut Vec::new())
        {
            return Some(cycle);
        }
    }
    None
}
