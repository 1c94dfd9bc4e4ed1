//! The floors of ARCHITECTURE.md are what the imports show.
//!
//! ARCHITECTURE.md's "Floors" table lists, for each top-level module of `crates/berth/src`, the
//! modules it may import. This test reads that table, checks that it has no cycle and names every
//! module, and then reads every `crate::...` path in the sources (grouped `use crate::{a, b}`
//! included): a module that uses one it may not is a failure that names the file and line.
//! `scripts/check-layers` runs just this test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module name -> modules it may import.
type Floors = BTreeMap<String, BTreeSet<String>>;

const BEGIN: &str = "<!-- floors: begin -->";
const END: &str = "<!-- floors: end -->";

/// Parses the rows `| module | a, b |` between the markers (`—` for none).
fn floors(architecture: &str) -> Floors {
    let start = architecture
        .find(BEGIN)
        .expect("ARCHITECTURE.md has a floors table");
    let end = architecture.find(END).expect("the floors table is closed");
    let mut out = Floors::new();
    for line in architecture[start + BEGIN.len()..end].lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        if cells.len() != 2 {
            continue;
        }
        let module = cells[0].trim().trim_matches('`').to_string();
        if module.is_empty() || module == "module" || module.starts_with('-') {
            continue;
        }
        let deps = cells[1]
            .split(',')
            .map(|d| d.trim().trim_matches('`').to_string())
            .filter(|d| !d.is_empty() && d != "—")
            .collect();
        out.insert(module, deps);
    }
    out
}

/// A cycle among the allowed dependencies, if any.
fn cycle(floors: &Floors) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        floors: &Floors,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut c = path[i..].to_vec();
            c.push(m.to_string());
            return Some(c);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for d in floors.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, floors, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    floors
        .keys()
        .find_map(|m| visit(m, floors, &mut Vec::new(), &mut done))
}

/// The top-level module a source file belongs to (`http/blobs.rs` -> `http`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let first = rel
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().to_string());
    first
        .unwrap_or_default()
        .trim_end_matches(".rs")
        .to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
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

/// The top-level modules named by `crate::` paths in `text`, with the line of each.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        let line = text[..at].matches('\n').count() + 1;
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::x, b, c::{y, z}}`: the first segment of each top-level item.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        item_start = false;
                        let name = ident(&group[i..]);
                        if !name.is_empty() {
                            out.push((line, name));
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.push((line, name));
            }
        }
    }
    out
}

/// Every import in the tree under `src` that its module's floor does not allow.
fn violations(src: &Path, floors: &Floors) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut out = Vec::new();
    for file in files {
        let module = module_of(src, &file);
        if matches!(module.as_str(), "lib" | "main") {
            continue;
        }
        let Some(allowed) = floors.get(&module) else {
            out.push(format!(
                "{}: module `{module}` is not in ARCHITECTURE.md's floors table",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, used) in crate_paths(&text) {
            if used != module && floors.contains_key(&used) && !allowed.contains(&used) {
                out.push(format!(
                    "{}:{line}: `{module}` imports `{used}`, which its floor does not allow",
                    file.display()
                ));
            }
        }
    }
    out
}

fn architecture() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ARCHITECTURE.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_floors_run_one_way_and_the_imports_follow_them() {
    let floors = floors(&architecture());
    assert!(
        floors.len() > 5,
        "the floors table was not read: {floors:?}"
    );
    assert_eq!(cycle(&floors), None, "the floors table has a cycle");
    assert!(floors["oci"].is_empty(), "the value types import nothing");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src, &floors);
    assert!(
        found.is_empty(),
        "imports against the floors:\n{}",
        found.join("\n")
    );
}

#[test]
fn a_lower_floor_importing_a_higher_one_is_found() {
    let floors = floors(&architecture());
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("meta")).unwrap();
    std::fs::write(src.join("oci.rs"), "//! values\n").unwrap();
    std::fs::write(
        src.join("storage.rs"),
        "use crate::oci::digest::Digest;\nuse crate::registry::Registry;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("meta/mod.rs"),
        "use crate::{\n    oci::Page,\n    http::ApiError,\n};\nfn f() { crate::storage::x(); }\n",
    )
    .unwrap();
    let found = violations(src, &floors);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(
        found[0].contains("meta/mod.rs:1: `meta` imports `http`"),
        "{}",
        found[0]
    );
    assert!(
        found[1].contains("`meta` imports `storage`"),
        "{}",
        found[1]
    );
    assert!(
        found[2].contains("storage.rs:2: `storage` imports `registry`"),
        "{}",
        found[2]
    );

    // A module the table does not name is a failure too.
    std::fs::write(src.join("stray.rs"), "").unwrap();
    assert!(violations(src, &floors)
        .iter()
        .any(|v| v.contains("module `stray` is not in")));

    // And a cycle in the table is found.
    let mut cyclic = floors.clone();
    cyclic.get_mut("oci").unwrap().insert("registry".into());
    assert!(cycle(&cyclic).is_some());
}

#[test]
fn grouped_and_nested_paths_are_read() {
    let text = "use crate::{a::b, c, d::{e, f}};\nlet x = crate::g::h();\n";
    let names: Vec<_> = crate_paths(text).into_iter().map(|(_, n)| n).collect();
    assert_eq!(names, ["a", "c", "d", "g"]);
}
