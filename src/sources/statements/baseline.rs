//! The previous sample of pg_stat_statements, kept in memory and as a checkpoint in the
//! spool, written in the same transaction as the deltas computed against it: after a
//! crash the agent resumes from exactly the sample whose deltas were spooled, so an
//! interval is neither lost nor shipped twice.
//!
//! The encoding is a JSON header line followed by fixed-size binary records (keys and
//! f64 values, little-endian): thousands of entries of dozens of counters encode in a
//! millisecond, where JSON would format a quarter of a million floats every cycle.

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::delta::{Key, Values};

/// Name of the checkpoint in the spool.
pub const CHECKPOINT: &str = "pg_statements.baseline";

/// First line of the file; a different one (older format) is no baseline.
const MAGIC: &[u8] = b"postgres-agent pg_statements baseline v1\n";

/// A sample to diff against.
#[derive(Debug, Clone)]
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
    pub entries: HashMap<Key, Values>,
}

/// Everything but the entries, as the file's JSON header line.
#[derive(Serialize, Deserialize)]
struct Header {
    identity: String,
    taken_at: DateTime<Utc>,
    stats_reset: Option<DateTime<Utc>>,
    dealloc: Option<i64>,
    columns: Vec<String>,
    entries: usize,
}

/// Bytes of one record: userid, dbid, queryid, toplevel, then the values.
fn record_len(columns: usize) -> usize {
    4 + 4 + 8 + 1 + 8 * columns
}

/// The checkpoint bytes of a baseline.
pub fn encode(b: &Baseline) -> Vec<u8> {
    let header = Header {
        identity: b.identity.clone(),
        taken_at: b.taken_at,
        stats_reset: b.stats_reset,
        dealloc: b.dealloc,
        columns: b.columns.clone(),
        entries: b.entries.len(),
    };
    let mut out = MAGIC.to_vec();
    // A header of strings and numbers always serializes.
    out.extend(serde_json::to_vec(&header).unwrap_or_default());
    out.push(b'\n');
    out.reserve(b.entries.len() * record_len(b.columns.len()));
    for (k, v) in &b.entries {
        out.extend(k.userid.to_le_bytes());
        out.extend(k.dbid.to_le_bytes());
        out.extend(k.queryid.to_le_bytes());
        out.push(k.toplevel as u8);
        for x in v {
            out.extend(x.to_le_bytes());
        }
    }
    out
}

/// A baseline from checkpoint bytes; anything malformed is no baseline.
pub fn decode(bytes: &[u8]) -> Option<Baseline> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let nl = rest.iter().position(|b| *b == b'\n')?;
    let h: Header = serde_json::from_slice(&rest[..nl]).ok()?;
    let body = &rest[nl + 1..];
    let n = h.columns.len();
    let len = record_len(n);
    if body.len() != h.entries * len {
        return None; // truncated or padded: not ours to trust
    }
    let mut entries = HashMap::with_capacity(h.entries);
    for r in body.chunks_exact(len) {
        let key = Key {
            userid: u32::from_le_bytes(r[0..4].try_into().ok()?),
            dbid: u32::from_le_bytes(r[4..8].try_into().ok()?),
            queryid: i64::from_le_bytes(r[8..16].try_into().ok()?),
            toplevel: r[16] != 0,
        };
        let values = r[17..]
            .chunks_exact(8)
            .map(|c| c.try_into().map(f64::from_le_bytes))
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        entries.insert(key, values);
    }
    Some(Baseline {
        identity: h.identity,
        taken_at: h.taken_at,
        stats_reset: h.stats_reset,
        dealloc: h.dealloc,
        columns: h.columns,
        entries,
    })
}

/// The baseline spooled by the daemon with this state directory, if any. A missing or
/// unreadable one is no baseline (the next sample becomes one), never an error.
pub fn load(state_dir: &Path) -> Option<Baseline> {
    decode(&crate::spool::read_checkpoint(state_dir, CHECKPOINT)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_ignores_garbage() {
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
        let bytes = encode(&b);
        let l = decode(&bytes).expect("decode");
        assert_eq!(l.entries.get(&k), Some(&vec![7.0]));
        assert_eq!(l.dealloc, Some(3));
        // A truncated value, or garbage, is no baseline.
        assert!(decode(&bytes[..bytes.len() - 3]).is_none());
        assert!(decode(b"{not ours").is_none());
    }

    #[test]
    fn load_reads_the_spools_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(load(dir.path()).is_none());
        let b = Baseline {
            identity: "i".into(),
            taken_at: Utc::now(),
            stats_reset: None,
            dealloc: None,
            columns: vec![],
            entries: HashMap::new(),
        };
        let mut spool = crate::spool::Spool::open(dir.path()).expect("spool");
        let c = crate::model::Checkpoint {
            name: CHECKPOINT.into(),
            value: encode(&b),
        };
        spool.append_with(&[], Some(&c)).expect("append");
        assert_eq!(load(dir.path()).expect("load").identity, "i");
    }
}
