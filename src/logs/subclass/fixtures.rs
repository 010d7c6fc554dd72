//! The subclasses against real servers' logs (`fixtures/`, written by
//! `scripts/log-fixtures.py`): every subclass has a fixture, every format of a run
//! gives the same subclasses and figures, and what each fixture gives is pinned in
//! `fixtures/expected.txt` (`UPDATE_FIXTURES=1` rewrites it after a deliberate change).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::base::Format;
use crate::logs::{tail, LogParser, Redact, Shaper};

const PREFIX: &str = "%m [%p] %q%u@%d ";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/logs/subclass/fixtures")
}

/// (subclass, message id, figures as JSON) of every message of a fixture with one.
fn read(path: &Path, format: Format) -> Vec<(String, String, String)> {
    let mut parser = LogParser::new(format, PREFIX);
    let shaper = Shaper::new(crate::config::default_pattern(), Redact::None);
    let mut out = Vec::new();
    tail::read_file(path, &mut parser, |mut batch| {
        for r in batch.drain(..) {
            let d = shaper.data(&r, "f", format);
            if let Some(s) = d.subclass {
                let figures = d
                    .figures
                    .as_ref()
                    .map(|f| serde_json::Value::Object(f.clone()).to_string())
                    .unwrap_or_default();
                out.push((
                    s.to_string(),
                    d.message_id.map(|i| i.to_string()).unwrap_or_default(),
                    figures,
                ));
            }
        }
        Some(batch)
    })
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    out
}

/// Fixture runs by name (`pg15`, `pg15-standby`), each with its files by format.
fn runs() -> BTreeMap<String, Vec<(Format, PathBuf)>> {
    let mut runs: BTreeMap<String, Vec<(Format, PathBuf)>> = BTreeMap::new();
    for e in std::fs::read_dir(dir()).expect("fixtures") {
        let p = e.expect("entry").path();
        let format = match p.extension().and_then(|e| e.to_str()) {
            Some("log") => Format::Stderr,
            Some("csv") => Format::Csv,
            Some("json") => Format::Json,
            _ => continue,
        };
        let stem = p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_string();
        runs.entry(stem).or_default().push((format, p));
    }
    for files in runs.values_mut() {
        files.sort_by_key(|(f, _)| f.as_str());
    }
    runs
}

#[test]
fn every_format_of_a_run_gives_the_same_subclasses_and_figures() {
    for (run, files) in runs() {
        let mut readings = files.iter().map(|(format, path)| {
            let mut r = read(path, *format);
            r.sort();
            (format.as_str(), r)
        });
        let Some((first_format, first)) = readings.next() else {
            continue;
        };
        for (format, r) in readings {
            let only_first: Vec<_> = first.iter().filter(|x| !r.contains(x)).collect();
            let only_this: Vec<_> = r.iter().filter(|x| !first.contains(x)).collect();
            assert!(
                only_first.is_empty() && only_this.is_empty(),
                "{run}: {first_format} and {format} disagree:\n only in {first_format}: {only_first:#?}\n only in {format}: {only_this:#?}"
            );
        }
    }
}

#[test]
fn every_subclass_has_a_fixture_and_no_fixtures_subclass_changes() {
    let mut lines = Vec::new();
    let mut covered = BTreeSet::new();
    for (run, files) in runs() {
        // Every format agrees (the test above): the first one tells.
        let (format, path) = &files[0];
        let mut by_subclass: BTreeMap<String, (usize, BTreeSet<String>)> = BTreeMap::new();
        for (s, _, figures) in read(path, *format) {
            let e = by_subclass.entry(s.clone()).or_default();
            e.0 += 1;
            if let Ok(serde_json::Value::Object(f)) = serde_json::from_str(&figures) {
                e.1.extend(f.keys().cloned());
            }
            covered.insert(s);
        }
        for (s, (n, keys)) in by_subclass {
            let keys: Vec<_> = keys.into_iter().collect();
            lines.push(format!("{run}\t{s}\t{n}\t{}", keys.join(",")));
        }
    }
    let text = lines.join("\n") + "\n";
    let expected_path = dir().join("expected.txt");
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        std::fs::write(&expected_path, &text).expect("write expected.txt");
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    if expected != text {
        let want: BTreeSet<&str> = expected.lines().collect();
        let got: BTreeSet<&str> = text.lines().collect();
        panic!(
            "what the fixtures give changed (UPDATE_FIXTURES=1 to accept a deliberate change):\n was: {:#?}\n now: {:#?}",
            want.difference(&got).collect::<Vec<_>>(),
            got.difference(&want).collect::<Vec<_>>()
        );
    }
    let all: BTreeSet<String> = super::subclass_names()
        .into_iter()
        .map(String::from)
        .collect();
    let missing: Vec<_> = all.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "subclasses without a fixture: {missing:?}"
    );
}
