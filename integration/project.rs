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

/// The modules a source file names: `crate::a::b` as `a` and `a::b`, `super::b` as the
/// parent's `b` (each with the file it appears in). Test code is left out: a test may
/// use anything.
fn module_edges(
    src: &Path,
    dir: &Path,
    test_only: &BTreeSet<std::path::PathBuf>,
    edges: &mut BTreeSet<(String, String, String)>,
) {
    for entry in std::fs::read_dir(dir).expect("src readable") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            module_edges(src, &path, test_only, edges);
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("rs") || test_only.contains(&path) {
            continue;
        }
        let rel = path.strip_prefix(src).expect("under src");
        let parts: Vec<String> = rel
            .with_extension("")
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| p != "mod")
            .collect();
        if matches!(
            parts.first().map(String::as_str),
            Some("lib" | "main") | None
        ) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("source readable");
        let text = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or_default();
        let code: String = text
            .lines()
            .map(|l| l.split("//").next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n");
        let file = rel.display().to_string();
        let mut add = |to: Vec<String>| {
            let (from, to) = if to[0] != parts[0] {
                (parts[0].clone(), to[0].clone())
            } else if parts.len() > 1 && to.len() > 1 && to[1] != parts[1] {
                (
                    format!("{}::{}", parts[0], parts[1]),
                    format!("{}::{}", to[0], to[1]),
                )
            } else {
                return;
            };
            if src.join(to.replace("::", "/")).is_dir()
                || src.join(format!("{}.rs", to.replace("::", "/"))).is_file()
            {
                edges.insert((from, to, file.clone()));
            }
        };
        let path_after = |rest: &str| -> Vec<String> {
            rest.split("::")
                .map(|s| {
                    s.chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect::<String>()
                })
                .take_while(|s| !s.is_empty())
                .collect()
        };
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = group.split('}').next().unwrap_or_default();
                for item in group.split(',') {
                    let p = path_after(item.trim());
                    if !p.is_empty() {
                        add(p);
                    }
                }
            } else {
                let p = path_after(rest);
                if !p.is_empty() {
                    add(p);
                }
            }
        }
        // `super::b` from a file of module `a` (a/x.rs or a/x/mod.rs) names `a::b`.
        if parts.len() >= 2 {
            let parent = &parts[..parts.len() - 1];
            for (at, _) in code.match_indices("super::") {
                if code[..at].ends_with("super::") {
                    continue;
                }
                let rest = &code[at + "super::".len()..];
                let mut p: Vec<String> = parent.to_vec();
                let mut named = path_after(rest);
                if named.is_empty() {
                    if let Some(group) = rest.strip_prefix('{') {
                        for item in group.split('}').next().unwrap_or_default().split(',') {
                            let mut q = parent.to_vec();
                            q.extend(path_after(item.trim()));
                            if q.len() > parent.len() {
                                add(q);
                            }
                        }
                    }
                    continue;
                }
                p.append(&mut named);
                add(p);
            }
        }
    }
}

#[test]
fn the_modules_import_each_other_without_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    // Files compiled for tests only (`#[cfg(test)] mod x;`).
    let mut test_only = BTreeSet::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for (at, _) in text.match_indices("#[cfg(test)]\nmod ") {
                let rest = &text[at + "#[cfg(test)]\nmod ".len()..];
                let Some(name) = rest.split(';').next().filter(|n| !n.contains(' ')) else {
                    continue;
                };
                let base = if path
                    .file_name()
                    .is_some_and(|n| n == "mod.rs" || n == "lib.rs")
                {
                    path.parent().expect("dir").to_path_buf()
                } else {
                    path.with_extension("")
                };
                test_only.insert(base.join(format!("{name}.rs")));
                if base.join(name).is_dir() {
                    for f in std::fs::read_dir(base.join(name)).expect("dir") {
                        test_only.insert(f.expect("entry").path());
                    }
                }
            }
        }
    }
    let mut edges = BTreeSet::new();
    module_edges(&src, &src, &test_only, &mut edges);
    let mut graph: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for (from, to, _) in &edges {
        graph.entry(from).or_default().insert(to);
    }
    assert!(
        graph.get("supervisor").is_some_and(|s| s.contains("spool")),
        "the scan sees the imports: {graph:?}"
    );
    assert!(
        graph
            .get("logs::follow")
            .is_some_and(|s| s.contains("logs::plan")),
        "the scan sees the imports within a module: {graph:?}"
    );
    // A depth-first walk; a module met again while on the path closes a circle.
    fn walk<'a>(
        at: &'a str,
        graph: &HashMap<&'a str, BTreeSet<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<&'a str>> {
        if let Some(i) = path.iter().position(|m| *m == at) {
            let mut circle = path[i..].to_vec();
            circle.push(at);
            return Some(circle);
        }
        if !done.insert(at) {
            return None;
        }
        path.push(at);
        for next in graph.get(at).into_iter().flatten() {
            if let Some(c) = walk(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    let mut starts: Vec<&str> = graph.keys().copied().collect();
    starts.sort();
    for start in starts {
        if let Some(circle) = walk(start, &graph, &mut Vec::new(), &mut done) {
            let why: Vec<String> = circle
                .windows(2)
                .map(|w| {
                    let files: Vec<&str> = edges
                        .iter()
                        .filter(|(f, t, _)| f == w[0] && t == w[1])
                        .map(|(_, _, file)| file.as_str())
                        .collect();
                    format!("{} -> {} ({})", w[0], w[1], files.join(", "))
                })
                .collect();
            panic!("the imports make a circle:\n{}", why.join("\n"));
        }
    }
}
