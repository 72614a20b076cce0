//! The module graph of the daemon has no cycle and data flows one way: each top-level module
//! of `src/` may use only the modules below it in [`LAYERS`]. Read from the source itself
//! (every `crate::NAME` path, `use crate::{A, B}` groups included), so a new upward import
//! fails this test with the file that made it.

use std::collections::BTreeSet;
use std::path::Path;

/// Lowest first. A module may depend on any module before it, never on one after it; so the
/// graph is acyclic by construction.
const LAYERS: &[&str] = &[
    "crypto",
    "metrics",
    "notify",
    "store",
    "google",
    "tokens",
    "sync",
    "scheduler",
    "config",
    "risc",
    "telemetry",
    "services",
    "intake",
    "admin",
    "api",
    "lifecycle",
    "cli",
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|m| *m == module)
}

/// Every `crate::NAME` this source mentions, including `use crate::{a::b, c}` groups.
fn crate_refs(source: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = source;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_depend_only_on_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut seen_modules = BTreeSet::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        seen_modules.insert(top.clone());
        let Some(own) = rank(&top) else {
            violations.push(format!("src/{top} is not in LAYERS: place it"));
            continue;
        };
        let source = std::fs::read_to_string(file).unwrap();
        for used in crate_refs(&source) {
            if used == top {
                continue;
            }
            match rank(&used) {
                Some(r) if r < own => {}
                Some(_) => violations.push(format!(
                    "{} uses crate::{used}, a layer above (or beside) {top}",
                    relative.display()
                )),
                None => violations.push(format!(
                    "{} uses crate::{used}, which is not in LAYERS",
                    relative.display()
                )),
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    for layer in LAYERS {
        assert!(
            seen_modules.contains(*layer),
            "LAYERS names {layer}, which is not a module of src/"
        );
    }
}

#[test]
fn the_reader_finds_grouped_and_plain_paths() {
    let refs = crate_refs("use crate::{store::x, google};\nlet a = crate::tokens::f();");
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        vec!["google", "store", "tokens"]
    );
}
