//! What the repository says about itself is true: the Rust version it claims builds the
//! locked dependency graph, and the documented example config shows every key.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

fn repo(file: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `1.89` and `1.89.0` alike.
fn version(s: &str) -> [u64; 3] {
    let mut v = [0; 3];
    for (i, p) in s.split('.').take(3).enumerate() {
        v[i] = p.parse().unwrap_or(0);
    }
    v
}

/// The highest `rust-version` among the packages the locked graph builds: the package's
/// normal and build dependencies, transitively, plus its own dev-dependencies' graphs
/// (the tests are built too).
fn needed_by_lock() -> ([u64; 3], String) {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata --locked: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let rust_version: HashMap<&str, &str> = m["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p["rust_version"].as_str()?)))
        .collect();
    let nodes: HashMap<&str, &serde_json::Value> = m["resolve"]["nodes"]
        .as_array()
        .expect("resolve")
        .iter()
        .map(|n| (n["id"].as_str().expect("id"), n))
        .collect();
    let root = m["resolve"]["root"].as_str().expect("root");
    let mut seen = BTreeSet::new();
    let mut todo = vec![(root, true)];
    while let Some((id, is_root)) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().into_iter().flatten() {
            let wanted = dep["dep_kinds"].as_array().into_iter().flatten().any(|k| {
                match k["kind"].as_str() {
                    Some("dev") => is_root,
                    _ => true,
                }
            });
            if wanted {
                todo.push((dep["pkg"].as_str().expect("pkg"), false));
            }
        }
    }
    seen.iter()
        .filter(|id| **id != root)
        .filter_map(|id| rust_version.get(id).map(|v| (version(v), id.to_string())))
        .max()
        .expect("some dependency states its rust-version")
}

#[test]
fn the_claimed_rust_version_builds_the_locked_graph() {
    let claimed = env!("CARGO_PKG_RUST_VERSION");
    let (needed, by) = needed_by_lock();
    let shown = needed
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".");
    assert!(
        version(claimed) >= needed,
        "Cargo.toml says rust-version = {claimed}, the locked graph needs {shown} ({by})"
    );
    let readme = repo("README.md");
    assert!(
        readme.contains(&format!("(Rust {claimed} or newer")),
        "the README states another Rust version than Cargo.toml's {claimed}"
    );
}

#[test]
fn the_readme_and_architecture_name_nothing_outside_the_repository() {
    // The design document and the issue tracker are not shipped with the code: a
    // reader of the README or ARCHITECTURE cannot follow "design §10" or "issue 13".
    let cites = regex::Regex::new(r"(?i)\bdesign(\.md)? ?§|\bissues? #?\d+").expect("regex");
    for file in ["README.md", "ARCHITECTURE.md"] {
        let text = repo(file);
        let found: Vec<String> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| cites.is_match(l))
            .map(|(i, l)| format!("{file}:{}: {l}", i + 1))
            .collect();
        assert!(found.is_empty(), "{}", found.join("\n"));
    }
}

#[test]
fn scripts_show_the_release_build_instead_of_minutes_of_silence() {
    // A clean release build takes minutes: a quiet one looks hung.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let mut quiet = Vec::new();
    let mut files = vec![dir.join("lib/bench.sh")];
    files.extend(
        std::fs::read_dir(&dir)
            .expect("scripts")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sh")),
    );
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        for l in text.lines() {
            if l.contains("cargo build") && l.contains("--release") && l.contains("--quiet") {
                quiet.push(format!("{}: {l}", f.display()));
            }
        }
    }
    assert!(quiet.is_empty(), "{}", quiet.join("\n"));
}
