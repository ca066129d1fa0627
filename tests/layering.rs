//! The module layering of `src/`: every `crate::<module>` path in a module
//! must name a module on a lower line of the `layers` block in
//! ARCHITECTURE.md. Modules on the same line are siblings and must not use
//! each other. A cycle between modules needs an upward (or sideways) edge,
//! so this fails as soon as one comes back, naming the file and the edge.
//!
//! Pure file reading: no test bed needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The `layers` block: one line per layer, top first; module names
/// separated by spaces.
fn parse_layers(architecture: &str) -> Result<Vec<Vec<String>>, String> {
    let mut lines = architecture.lines();
    lines
        .by_ref()
        .find(|l| l.trim() == "```layers")
        .ok_or("ARCHITECTURE.md has no ```layers block (the allowed module layering)")?;
    let mut layers = Vec::new();
    for line in lines {
        let line = line.trim();
        if line.starts_with("```") {
            return Ok(layers);
        }
        let line = line.split('#').next().unwrap_or("").trim();
        if !line.is_empty() {
            layers.push(line.split_whitespace().map(str::to_owned).collect());
        }
    }
    Err("the ```layers block in ARCHITECTURE.md is not closed".into())
}

/// The top-level modules a source text refers to as `crate::<module>`
/// (in `use` lines and inline paths, `use crate::{a, b::c}` groups included).
/// Comment lines are skipped.
fn referenced_modules(source: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in source.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            // `tusk_crate::` or `some_crate::` are not ours.
            let before = rest[..i].chars().next_back();
            rest = &rest[i + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let end = matching_brace(group).unwrap_or(group.len());
                for item in split_top_level(&group[..end]) {
                    let name = ident(item.trim());
                    if !name.is_empty() && name != "self" {
                        out.insert(name.to_owned());
                    }
                }
            } else {
                let name = ident(rest);
                if !name.is_empty() {
                    out.insert(name.to_owned());
                }
            }
        }
    }
    out
}

fn ident(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// Index of the `}` closing a group whose `{` was just consumed.
fn matching_brace(s: &str) -> Option<usize> {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// The top-level module a file under `src/` belongs to (`None`: the crate
/// root files, which only declare and dispatch).
fn module_of(rel: &Path) -> Option<String> {
    let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned());
    let first = parts.next()?;
    match first.as_str() {
        "lib.rs" | "main.rs" => None,
        f if f.ends_with(".rs") => Some(f.trim_end_matches(".rs").to_owned()),
        dir => Some(dir.to_owned()),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("src/ is readable").flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let path = e.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// One offending edge, as the failure message shows it.
fn violations(layers: &[Vec<String>], files: &[(String, String, BTreeSet<String>)]) -> Vec<String> {
    let layer_of: BTreeMap<&str, usize> =
        layers.iter().enumerate().flat_map(|(i, l)| l.iter().map(move |m| (m.as_str(), i))).collect();
    let mut out = Vec::new();
    let mut seen_modules = BTreeSet::new();
    for (file, module, uses) in files {
        seen_modules.insert(module.clone());
        let Some(&from) = layer_of.get(module.as_str()) else {
            out.push(format!("{file}: module `{module}` is not placed in the ```layers block of ARCHITECTURE.md"));
            continue;
        };
        for used in uses.iter().filter(|u| *u != module) {
            let Some(&to) = layer_of.get(used.as_str()) else {
                out.push(format!("{file}: uses crate::{used}, which is not in the ```layers block of ARCHITECTURE.md"));
                continue;
            };
            if to == from {
                out.push(format!(
                    "{file}: edge {module} → {used}: siblings on layer {} (`{}`) must not use each other",
                    from + 1,
                    layers[from].join(" ")
                ));
            } else if to < from {
                out.push(format!(
                    "{file}: upward edge {module} → {used}: `{module}` is on layer {} and `{used}` on layer {} above it; \
                     a module may only use modules on lower lines of the ```layers block in ARCHITECTURE.md",
                    from + 1,
                    to + 1
                ));
            }
        }
    }
    for (module, _) in layer_of.iter().filter(|(m, _)| !seen_modules.contains(**m)) {
        out.push(format!("ARCHITECTURE.md: the ```layers block names `{module}`, which is not a module under src/"));
    }
    out
}

#[test]
fn modules_only_use_lower_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md is readable");
    let layers = parse_layers(&architecture).unwrap_or_else(|e| panic!("{e}"));
    let mut paths = Vec::new();
    rust_files(&root.join("src"), &mut paths);
    let files: Vec<(String, String, BTreeSet<String>)> = paths
        .iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(root.join("src")).expect("under src/");
            let module = module_of(rel)?;
            let text = std::fs::read_to_string(p).expect("source is readable");
            Some((format!("src/{}", rel.display()), module, referenced_modules(&text)))
        })
        .collect();
    assert!(files.len() > 20, "found only {} source files under src/", files.len());
    let bad = violations(&layers, &files);
    assert!(bad.is_empty(), "the module layering is broken:\n  {}\n", bad.join("\n  "));
}

#[test]
fn the_checker_sees_upward_and_sideways_edges() {
    let layers = parse_layers("x\n```layers\ntop\nmid other # comment\nleaf\n```\n").unwrap();
    assert_eq!(layers, [vec!["top"], vec!["mid", "other"], vec!["leaf"]]);
    let file = |m: &str, src: &str| (format!("src/{m}.rs"), m.to_owned(), referenced_modules(src));
    let ok = [
        file("top", "use crate::mid::X;\nuse crate::{leaf::Y, other};\n"),
        file("mid", "fn f() { crate::leaf::g() }\n// crate::top::comment_only\n"),
        file("other", "use crate::leaf;"),
        file("leaf", "use some_crate::top; use crate::leaf::x;"),
    ];
    assert_eq!(violations(&layers, &ok), Vec::<String>::new());
    // A cycle needs an edge up or sideways: both are reported with the file.
    let bad = [
        file("top", "use crate::mid::X;"),
        file("mid", "use crate::{leaf, other::Z};"),
        file("other", ""),
        file("leaf", "    let x = crate::top::thing();"),
    ];
    let v = violations(&layers, &bad);
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v[0].starts_with("src/mid.rs: edge mid → other: siblings"), "{v:?}");
    assert!(v[1].starts_with("src/leaf.rs: upward edge leaf → top"), "{v:?}");
    // Unplaced modules are reported too.
    let v = violations(&layers, &[file("new", "")]);
    assert!(v.iter().any(|m| m.contains("module `new` is not placed")), "{v:?}");
}
