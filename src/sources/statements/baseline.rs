//! The previous sample of pg_stat_statements, kept in memory and in
//! `<state_dir>/pg_statements.baseline.json`, so that a restarted agent computes its
//! first deltas against the sample before the restart instead of losing an interval.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::delta::{Key, Values};

/// File name inside `state_dir`.
pub const FILE: &str = "pg_statements.baseline.json";

/// A sample to diff against.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Baseline {
    /// Which server and database it came from (`host:port/dbname`).
    pub identity: String,
    /// When it was taken (server time).
    pub taken_at: DateTime<Utc>,
    /// `pg_stat_statements_info.stats_reset` then (1.9+).
    pub stats_reset: Option<DateTime<Utc>>,
    /// `pg_stat_statements_info.dealloc` then (1.9+).
    pub dealloc: Option<i64>,
    /// Column names the values are aligned with.
    pub columns: Vec<String>,
    /// Entries.
    #[serde(with = "entries")]
    pub entries: HashMap<Key, Values>,
}

mod entries {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &HashMap<Key, Values>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HashMap<Key, Values>, D::Error> {
        Ok(Vec::<(Key, Values)>::deserialize(d)?.into_iter().collect())
    }
}

/// Where the baseline of an agent with this state directory lives.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Loads a saved baseline; a missing or unreadable file is no baseline (the next sample
/// becomes one), never an error.
pub fn load(state_dir: &Path) -> Option<Baseline> {
    let bytes = std::fs::read(path(state_dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Saves atomically (temporary file, then rename).
pub fn save(state_dir: &Path, b: &Baseline) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let tmp = state_dir.join(format!(".{FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(b).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, path(state_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_ignores_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(load(dir.path()).is_none());
        let k = Key {
            userid: 10,
            dbid: 5,
            queryid: -42,
            toplevel: false,
        };
        let b = Baseline {
            identity: "h:5432/postgres".into(),
            taken_at: Utc::now(),
            stats_reset: None,
            dealloc: Some(3),
            columns: vec!["calls".into()],
            entries: HashMap::from([(k, vec![7.0])]),
        };
        save(dir.path(), &b).expect("save");
        let l = load(dir.path()).expect("load");
        assert_eq!(l.entries.get(&k), Some(&vec![7.0]));
        assert_eq!(l.dealloc, Some(3));
        std::fs::write(path(dir.path()), b"{not json").expect("write");
        assert!(load(dir.path()).is_none());
    }
}
