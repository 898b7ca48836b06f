//! The module graph has no circles: every `crate::` / `super::` path (in `use` statements,
//! brace groups expanded, and inline ones such as `crate::startup::connect(..)`) and every
//! path through a child module a `mod.rs` declares is an arrow from one source file to the
//! file that defines the module it names. Any strongly connected group of two or more files
//! fails the test, which names the files and the arrows between them. Unit-test modules
//! (from a file's `#[cfg(test)]` on) are not part of the graph.
//!
//! The layers this keeps honest (README, "Architecture"): `core` imports no other layer;
//! `store` and `ctct` build on `core`; the jobs (`sync`) on those; `scheduler`, `startup` and
//! `cmd` on top. `CCSYNC_ARCH_ROOT=<dir>` checks another source tree (e.g. an old checkout).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (segments) → file, for every `.rs` file below `root`.
fn modules(root: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().and_then(|x| x.to_str()) != Some("rs") {
                continue;
            }
            let rel = p.strip_prefix(root).unwrap_or(&p);
            let mut segs: Vec<String> = rel
                .components()
                .map(|c| {
                    c.as_os_str()
                        .to_string_lossy()
                        .trim_end_matches(".rs")
                        .to_string()
                })
                .collect();
            match segs.last().map(String::as_str) {
                Some("mod") | Some("lib") | Some("main") => {
                    segs.pop();
                }
                _ => {}
            }
            out.insert(segs, p);
        }
    }
    out
}

/// The text without comments (line comments, block comments) and string literals, so that
/// a path named in prose or a message is not an arrow.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            // A char literal such as '"' (lifetimes have no closing quote two bytes on).
            i += 3;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let t = tree.split(" as ").next().unwrap_or(tree).trim();
        return vec![t.to_string()];
    };
    let prefix = tree[..open].trim_end_matches("::").trim();
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, ch) in inner.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(expand)
        .map(|p| {
            if p == "self" {
                prefix.to_string()
            } else {
                format!("{prefix}::{p}")
            }
        })
        .collect()
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path a file names: `use` trees (expanded) and inline `crate::`/`super::`/child paths.
fn paths_in(code: &str, children: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    // `use` statements (possibly `pub use`, possibly across lines).
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        let tail = &rest[at + 4..];
        rest = tail;
        if before.is_some_and(is_ident_char) {
            continue;
        }
        let Some(end) = tail.find(';') else { break };
        let tree = &tail[..end];
        if tree.contains('(') || tree.contains('=') {
            continue; // not a use statement (e.g. a `fn use_x(`)
        }
        out.extend(expand(tree));
    }
    // Inline paths.
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if (i == 0 || !is_ident_char(chars[i - 1]) && chars[i - 1] != ':')
            && is_ident_char(chars[i])
        {
            let start = i;
            while i < chars.len()
                && (is_ident_char(chars[i]) || (chars[i] == ':' && chars.get(i + 1) == Some(&':')))
            {
                if chars[i] == ':' {
                    i += 2;
                } else {
                    i += 1;
                }
            }
            let path: String = chars[start..i].iter().collect();
            if path.ends_with("::") {
                continue; // a group's prefix (`use a::{..}`), expanded above
            }
            let first = path.split("::").next().unwrap_or("");
            if path.contains("::")
                && (first == "crate" || first == "super" || children.contains(first))
            {
                out.push(path);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The module a path names, seen from the file of module `me`: `crate::` is absolute,
/// `super::` is `me`'s parent, and a child module a `mod.rs` declares is below `me`.
fn resolve(
    path: &str,
    me: &[String],
    children: &BTreeSet<String>,
    mods: &BTreeMap<Vec<String>, PathBuf>,
) -> Option<Vec<String>> {
    let segs: Vec<&str> = path
        .split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let (mut full, mut idx): (Vec<String>, usize) = match *segs.first()? {
        "crate" => (Vec::new(), 1),
        "super" => (me.to_vec(), 0),
        s if children.contains(s) => (me.to_vec(), 0),
        _ => return None,
    };
    while segs.get(idx) == Some(&"super") {
        full.pop()?;
        idx += 1;
    }
    full.extend(segs[idx..].iter().map(|s| s.to_string()));
    // The longest prefix that is a module file.
    (0..=full.len())
        .rev()
        .map(|n| full[..n].to_vec())
        .find(|p| mods.contains_key(p))
}

/// The arrows between files of the tree at `root`.
fn arrows(root: &Path) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mods = modules(root);
    let mut graph: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for (me, file) in &mods {
        let src = std::fs::read_to_string(file).unwrap_or_default();
        // Unit tests (an inline `mod tests` at the end of a file) are left out: their
        // `super::` is the file itself, and what they import is not the module's.
        let src = match src.find("#[cfg(test)]") {
            Some(at) => &src[..at],
            None => &src[..],
        };
        let code = code_only(src);
        let is_dir_module = matches!(
            file.file_name().and_then(|n| n.to_str()),
            Some("mod.rs") | Some("lib.rs")
        );
        let children: BTreeSet<String> = if is_dir_module {
            mods.keys()
                .filter(|k| k.len() == me.len() + 1 && k.starts_with(me))
                .filter_map(|k| k.last().cloned())
                .collect()
        } else {
            BTreeSet::new()
        };
        let entry = graph.entry(file.clone()).or_default();
        for path in paths_in(&code, &children) {
            let Some(target) = resolve(&path, me, &children, &mods) else {
                continue;
            };
            if target.is_empty() {
                continue; // the crate root
            }
            if let Some(tf) = mods.get(&target) {
                if tf != file {
                    entry.insert(tf.clone());
                }
            }
        }
    }
    graph
}

/// Strongly connected groups of two or more files (Tarjan).
fn circles(graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct T<'a> {
        g: &'a BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: BTreeMap<&'a PathBuf, usize>,
        low: BTreeMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        on: BTreeSet<&'a PathBuf>,
        next: usize,
        out: Vec<Vec<PathBuf>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a PathBuf) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        let g = t.g;
        for w in g.get(v).into_iter().flatten() {
            let Some((w, _)) = g.get_key_value(w) else {
                continue;
            };
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(lw));
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(iw));
            }
        }
        if t.low[v] == t.index[v] {
            let mut group = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                group.push(w.clone());
                if w == v {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                t.out.push(group);
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn roots() -> Vec<PathBuf> {
    if let Ok(r) = std::env::var("CCSYNC_ARCH_ROOT") {
        return vec![PathBuf::from(r)];
    }
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    ["src", "sandbox/src"]
        .iter()
        .map(|d| top.join(d))
        .filter(|p| p.is_dir())
        .collect()
}

#[test]
fn the_module_graph_has_no_circles() {
    let mut report = Vec::new();
    for root in roots() {
        let graph = arrows(&root);
        assert!(graph.len() > 5, "read no source under {}", root.display());
        for group in circles(&graph) {
            let members: BTreeSet<&PathBuf> = group.iter().collect();
            let mut lines = vec![format!(
                "circle of {} files under {}:",
                group.len(),
                root.display()
            )];
            for f in &group {
                for to in graph[f].iter().filter(|t| members.contains(t)) {
                    let rel = |p: &Path| p.strip_prefix(&root).unwrap_or(p).display().to_string();
                    lines.push(format!("  {} -> {}", rel(f), rel(to)));
                }
            }
            report.push(lines.join("\n"));
        }
    }
    assert!(
        report.is_empty(),
        "{} import circle(s):\n{}",
        report.len(),
        report.join("\n")
    );
}

#[test]
fn the_core_imports_no_other_layer() {
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = top.join("src");
    let graph = arrows(&root);
    let core = root.join("core");
    let mut outside = Vec::new();
    for (from, tos) in &graph {
        if !from.starts_with(&core) {
            continue;
        }
        for to in tos.iter().filter(|t| !t.starts_with(&core)) {
            outside.push(format!("{} -> {}", from.display(), to.display()));
        }
    }
    assert!(outside.is_empty(), "core reaches out: {outside:#?}");
}

#[test]
fn the_store_never_reaches_up_into_the_jobs() {
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = top.join("src");
    let graph = arrows(&root);
    let store = root.join("store");
    let above = ["sync", "scheduler.rs", "cmd", "startup.rs", "ops"].map(|d| root.join(d));
    let mut up = Vec::new();
    for (from, tos) in graph.iter().filter(|(f, _)| f.starts_with(&store)) {
        for to in tos
            .iter()
            .filter(|t| above.iter().any(|a| t.starts_with(a)))
        {
            up.push(format!("{} -> {}", from.display(), to.display()));
        }
    }
    assert!(up.is_empty(), "store reaches up: {up:#?}");
}

#[test]
fn the_checker_sees_use_groups_inline_paths_and_circles() {
    let dir = std::env::temp_dir().join(format!("ccsync-arch-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::write(dir.join("lib.rs"), "pub mod a;\npub mod b;\npub mod c;\n").unwrap();
    std::fs::write(dir.join("a/mod.rs"), "pub mod x;\npub use x::Thing;\n").unwrap();
    // x -> b and c through a brace group; b -> c inline (the path in a string and the one
    // in a comment are not arrows); c -> a::x inline.
    std::fs::write(
        dir.join("a/x.rs"),
        "use crate::{b::{self}, c};\n// crate::nothing\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("b.rs"),
        "fn f() { crate::c::g(\"crate::a::x\") }\n",
    )
    .unwrap();
    std::fs::write(dir.join("c.rs"), "fn g() { let _ = crate::a::x::Thing; }\n").unwrap();
    let graph = arrows(&dir);
    let found = circles(&graph);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(found.len(), 1, "{graph:#?}");
    let names: Vec<String> = found[0]
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["x.rs", "b.rs", "c.rs"], "{found:?}");
}
