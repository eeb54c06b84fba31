//! The layering rules of docs/ARCHITECTURE.md, read from the source: no module
//! imports from a layer above its own, and the files (and subfolders) of one folder
//! do not import each other in a cycle. A broken rule fails with the offending
//! import, file and line.
//!
//! Imports are the `crate::`, `super::` and `self::` paths of each file (in `use`
//! trees and in code), comments and string literals removed. A file's inline
//! `#[cfg(test)] mod tests` is not read: there `super` names the file itself.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules, lowest layer first; modules in one entry share a layer.
const LAYERS: &[&[&str]] = &[
    &["error", "proto"],
    &["ir"],
    &["io", "adapter"],
    &["rewrite"],
    &["quant"],
    &["runtime", "tensorfile"],
    &["calib"],
    &["llm"],
    &["verify"],
    &["eval"],
    &["transforms"],
    &["pass"],
    &["cli"],
];

/// Generated protobuf types never leave the io layer.
const PROTO_USERS: &[&str] = &["io"];

/// One reference from a file to a module of the crate.
#[derive(Clone, Debug)]
struct Import {
    file: PathBuf,
    line: usize,
    text: String,
    from: Vec<String>,
    to: Vec<String>,
}

impl std::fmt::Display for Import {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: `{}` ({} -> {})",
            self.file.display(),
            self.line,
            self.text,
            path_str(&self.from),
            path_str(&self.to)
        )
    }
}

fn path_str(p: &[String]) -> String {
    if p.is_empty() {
        "crate".into()
    } else {
        p.join("::")
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file under src/: `a/b.rs` and `a/b/mod.rs` are `a::b`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The text with comments and the contents of string and char literals blanked
/// (newlines kept, so line numbers stay right).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, c: u8| out.push(if c == b'\n' { '\n' } else { ' ' });
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if b[i] == b'"'
            || (b[i] == b'r' && i + 1 < b.len() && matches!(b[i + 1], b'"' | b'#'))
        {
            // A (raw) string literal: skip to its closing quote.
            let raw = b[i] == b'r';
            let mut hashes = 0;
            if raw {
                i += 1;
                while i < b.len() && b[i] == b'#' {
                    hashes += 1;
                    i += 1;
                }
                if i >= b.len() || b[i] != b'"' {
                    out.push('r');
                    continue; // an identifier starting with r, not a raw string
                }
            }
            out.push('"');
            i += 1;
            while i < b.len() {
                if !raw && b[i] == b'\\' {
                    blank(&mut out, b[i]);
                    i += 1;
                    if i < b.len() {
                        blank(&mut out, b[i]);
                        i += 1;
                    }
                    continue;
                }
                if b[i] == b'"'
                    && b[i + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&c| c == b'#')
                        .count()
                        == hashes
                {
                    out.push('"');
                    i += 1 + hashes;
                    break;
                }
                blank(&mut out, b[i]);
                i += 1;
            }
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('x', '\n', '\''); lifetimes ('a) are left alone.
            let end = (i + 1..b.len())
                .find(|&j| b[j] == b'\'' && (j > i + 2 || b[i + 1] != b'\\'))
                .unwrap_or(i);
            for _ in i..=end {
                out.push(' ');
            }
            i = end + 1;
        } else {
            let ch = text[i..].chars().next().expect("char");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into its full paths.
fn expand_tree(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items
        .into_iter()
        .filter(|s| !s.is_empty())
        .flat_map(|item| {
            expand_tree(item)
                .into_iter()
                .map(move |p| format!("{prefix}{p}"))
        })
        .collect()
}

/// The paths a file names that start at `crate`, `super` or `self`, with the line
/// each is on.
fn referenced_paths(code: &str) -> Vec<(usize, String)> {
    let line_of = |pos: usize| code[..pos].matches('\n').count() + 1;
    let mut out = Vec::new();
    // `use` trees, which may span lines.
    let mut search = 0;
    while let Some(rel) = code[search..].find("use ") {
        let at = search + rel;
        search = at + 4;
        if at > 0 && is_ident(code[..at].chars().next_back().expect("char")) {
            continue;
        }
        let Some(end) = code[at..].find(';') else {
            break;
        };
        let tree = &code[at + 4..at + end];
        let first: String = tree
            .trim_start()
            .chars()
            .take_while(|&c| is_ident(c))
            .collect();
        if matches!(first.as_str(), "crate" | "super" | "self") {
            for p in expand_tree(tree.trim()) {
                out.push((line_of(at), p));
            }
        }
        search = at + end;
    }
    // Paths in code: `crate::a::b(...)`, `super::x::y`.
    for root in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(rel) = code[from..].find(root) {
            let at = from + rel;
            from = at + root.len();
            if at > 0 && is_ident(code[..at].chars().next_back().expect("char")) {
                continue;
            }
            let path: String = code[at..]
                .chars()
                .take_while(|&c| is_ident(c) || c == ':')
                .collect();
            out.push((line_of(at), path.trim_end_matches(':').to_string()));
        }
    }
    out
}

/// The module a path points into: the longest prefix that is a module of the crate.
fn resolve(from: &[String], path: &str, modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let mut segs = path
        .split("::")
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let head = segs.next()?;
    // `super` in a/b.rs and in a/b/mod.rs (both module a::b) is `a`.
    let mut base: Vec<String> = match head.as_str() {
        "crate" => vec![],
        "self" => from.to_vec(),
        "super" => from[..from.len().checked_sub(1)?].to_vec(),
        _ => return None,
    };
    let rest: Vec<String> = segs.collect();
    let mut i = 0;
    while i < rest.len() && rest[i] == "super" {
        base.pop();
        i += 1;
    }
    let full: Vec<String> = base.into_iter().chain(rest[i..].iter().cloned()).collect();
    (0..=full.len())
        .rev()
        .map(|n| full[..n].to_vec())
        .find(|p| modules.contains(p))
}

fn imports() -> Vec<Import> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut out = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read source");
        let code = code_only(&text);
        let code = match code.find("#[cfg(test)]\nmod tests") {
            Some(at) => &code[..at],
            None => &code[..],
        };
        let from = module_of(&src, file);
        for (line, path) in referenced_paths(code) {
            if let Some(to) = resolve(&from, &path, &modules) {
                if to != from {
                    out.push(Import {
                        file: file
                            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
                            .unwrap_or(file)
                            .to_path_buf(),
                        line,
                        text: path,
                        from: from.clone(),
                        to,
                    });
                }
            }
        }
    }
    out
}

fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&top))
}

#[test]
fn every_top_level_module_has_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let tops: BTreeSet<String> = files
        .iter()
        .filter_map(|f| module_of(&src, f).first().cloned())
        .collect();
    let missing: Vec<&String> = tops.iter().filter(|t| layer_of(t).is_none()).collect();
    assert!(
        missing.is_empty(),
        "modules with no layer in LAYERS (and docs/ARCHITECTURE.md): {missing:?}"
    );
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let all = imports();
    assert!(
        all.len() > 100,
        "the import scan found only {} imports",
        all.len()
    );
    let mut broken = Vec::new();
    for i in &all {
        let (Some(from), Some(to)) = (i.from.first(), i.to.first()) else {
            continue; // lib.rs and main.rs tie the layers together
        };
        let (Some(lf), Some(lt)) = (layer_of(from), layer_of(to)) else {
            continue;
        };
        if lt > lf {
            broken.push(format!(
                "{i}: layer '{from}' imports from higher layer '{to}'"
            ));
        }
        if to == "proto" && !PROTO_USERS.contains(&from.as_str()) {
            broken.push(format!("{i}: protobuf types are used outside io"));
        }
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

#[test]
fn no_folder_has_an_import_cycle() {
    let all = imports();
    // For each folder, edges between its direct children (files or subfolders),
    // each with one import that makes it.
    let mut edges: BTreeMap<Vec<String>, BTreeMap<(String, String), Import>> = BTreeMap::new();
    for i in &all {
        let common = i.from.iter().zip(&i.to).take_while(|(a, b)| a == b).count();
        if common < i.from.len() && common < i.to.len() {
            let folder = i.from[..common].to_vec();
            edges
                .entry(folder)
                .or_default()
                .entry((i.from[common].clone(), i.to[common].clone()))
                .or_insert_with(|| i.clone());
        }
    }
    let mut cycles = Vec::new();
    for (folder, e) in &edges {
        let nodes: BTreeSet<&String> = e.keys().flat_map(|(a, b)| [a, b]).collect();
        for start in nodes {
            if let Some(path) = cycle_through(start, e) {
                let lines: Vec<String> = path
                    .windows(2)
                    .map(|w| format!("  {}", e[&(w[0].clone(), w[1].clone())]))
                    .collect();
                cycles.push(format!(
                    "folder {}: {}\n{}",
                    path_str(folder),
                    path.join(" -> "),
                    lines.join("\n")
                ));
                break; // one cycle per folder is enough to name
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

/// A cycle from `start` back to itself, as the list of nodes visited.
fn cycle_through(
    start: &String,
    edges: &BTreeMap<(String, String), Import>,
) -> Option<Vec<String>> {
    fn walk(
        at: &String,
        start: &String,
        edges: &BTreeMap<(String, String), Import>,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for (_, b) in edges.keys().filter(|(a, _)| a == at) {
            if b == start {
                path.push(b.clone());
                return true;
            }
            if seen.insert(b.clone()) {
                path.push(b.clone());
                if walk(b, start, edges, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.clone()];
    let mut seen = BTreeSet::new();
    walk(start, start, edges, &mut path, &mut seen).then_some(path)
}

#[test]
fn the_scanner_sees_imports_and_ignores_comments_and_strings() {
    let code = code_only(
        "use crate::ir::{Graph, print::{self, diff}};\n// use crate::cli::x;\nlet s = \"crate::pass::y\";\nsuper::opset::raise(m);\n",
    );
    let paths: Vec<String> = referenced_paths(&code)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert!(paths.contains(&"crate::ir::Graph".to_string()), "{paths:?}");
    assert!(
        paths.contains(&"crate::ir::print::diff".to_string()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"super::opset::raise".to_string()),
        "{paths:?}"
    );
    assert!(
        !paths
            .iter()
            .any(|p| p.contains("cli") || p.contains("pass")),
        "{paths:?}"
    );
    let modules: BTreeSet<Vec<String>> = [
        vec!["transforms".to_string()],
        vec!["transforms".into(), "common".into()],
        vec!["transforms".into(), "common".into(), "opset".into()],
    ]
    .into_iter()
    .collect();
    let from = vec!["transforms".to_string(), "common".into(), "select".into()];
    assert_eq!(
        resolve(&from, "super::opset::raise", &modules),
        Some(vec![
            "transforms".to_string(),
            "common".into(),
            "opset".into()
        ])
    );
}
