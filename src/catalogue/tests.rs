//! The catalogue against the code that logs and the README that documents.

use std::collections::BTreeSet;
use std::path::Path;

use super::*;

/// Every name in a log macro call of the source files under `dir`: the first string
/// literal after the logger argument of `info!`, `warn!` and the others.
fn logged_names(dir: &Path, out: &mut BTreeSet<String>) {
    let macros = [
        "info!(", "warn!(", "error!(", "debug!(", "crit!(", "trace!(",
    ];
    for entry in std::fs::read_dir(dir).expect("src readable") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            logged_names(&path, out);
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("source readable");
        for m in macros {
            for (at, _) in text.match_indices(m) {
                let rest = &text[at + m.len()..];
                let Some(comma) = rest.find(',') else {
                    continue;
                };
                let after = rest[comma + 1..].trim_start();
                let Some(lit) = after.strip_prefix('"') else {
                    continue;
                };
                let Some(end) = lit.find('"') else { continue };
                let name = &lit[..end];
                if name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
                    && !name.is_empty()
                {
                    out.insert(name.to_string());
                }
            }
        }
    }
}

#[test]
fn every_logged_name_is_in_the_catalogue_and_every_entry_is_logged() {
    let mut logged = BTreeSet::new();
    logged_names(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut logged,
    );
    // The scan reads the catalogue's own tests too; they hold no log calls.
    assert!(
        logged.len() > 50,
        "the scan found the log calls: {logged:?}"
    );
    let listed: BTreeSet<String> = LOG_EVENTS.iter().map(|e| e.name.to_string()).collect();
    assert_eq!(listed.len(), LOG_EVENTS.len(), "a name listed twice");
    let missing: Vec<_> = logged.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "logged but not in catalogue::LOG_EVENTS: {missing:?}"
    );
    let unused: Vec<_> = listed.difference(&logged).collect();
    assert!(
        unused.is_empty(),
        "in the catalogue but never logged: {unused:?}"
    );
}

#[test]
fn the_readme_lists_what_the_agent_reports() {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("## What the agent reports")
        .nth(1)
        .expect("README has a section 'What the agent reports'");
    let section = section.split("\n## ").next().unwrap_or(section);
    for name in AGENT_EVENTS {
        assert!(
            section.contains(&format!("`{name}`")),
            "README lacks agent event {name}"
        );
    }
    for e in LOG_EVENTS {
        assert!(
            section.contains(&format!("`{}`", e.name)),
            "README lacks log event {}",
            e.name
        );
    }
}
