//! The previous sample of pg_stat_statements, kept in memory and as a checkpoint in the
//! spool, written in the same transaction as the deltas computed against it: after a
//! crash the agent resumes from exactly the sample whose deltas were spooled, so an
//! interval is neither lost nor shipped twice.
//!
//! The checkpoint's value is a JSON header line; each entry is one of its keyed rows
//! (17 bytes of key, 8 bytes per counter, little-endian), so a cycle writes only the
//! entries that changed: rewriting all 5,000 entries (1.3 MB) every cycle was the largest
//! part of the agent's writes. Version 1 held every entry in the value; it is still
//! read (an upgrade keeps its baseline) and replaced by version 2 at the next write.

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::delta::{Key, Values};

/// Name of the checkpoint in the spool.
pub const CHECKPOINT: &str = "pg_statements.baseline";

/// First line of a version 1 value (header and every entry in it).
const MAGIC_V1: &[u8] = b"postgres-agent pg_statements baseline v1\n";
/// First line of a version 2 value (header only; entries are rows).
const MAGIC: &[u8] = b"postgres-agent pg_statements baseline v2\n";

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

/// Everything but the entries, as the value's JSON header line.
#[derive(Serialize, Deserialize)]
struct Header {
    identity: String,
    taken_at: DateTime<Utc>,
    stats_reset: Option<DateTime<Utc>>,
    dealloc: Option<i64>,
    columns: Vec<String>,
    entries: usize,
}

/// Bytes of an entry's key: userid, dbid, queryid, toplevel.
const KEY_LEN: usize = 4 + 4 + 8 + 1;

/// An entry's key as a row key.
pub fn key_bytes(k: &Key) -> Vec<u8> {
    let mut out = Vec::with_capacity(KEY_LEN);
    out.extend(k.userid.to_le_bytes());
    out.extend(k.dbid.to_le_bytes());
    out.extend(k.queryid.to_le_bytes());
    out.push(k.toplevel as u8);
    out
}

/// An entry's values as a row value.
pub fn value_bytes(v: &Values) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn key_of(r: &[u8]) -> Option<Key> {
    if r.len() != KEY_LEN {
        return None;
    }
    Some(Key {
        userid: u32::from_le_bytes(r[0..4].try_into().ok()?),
        dbid: u32::from_le_bytes(r[4..8].try_into().ok()?),
        queryid: i64::from_le_bytes(r[8..16].try_into().ok()?),
        toplevel: r[16] != 0,
    })
}

fn values_of(r: &[u8], columns: usize) -> Option<Values> {
    if r.len() != 8 * columns {
        return None;
    }
    r.chunks_exact(8)
        .map(|c| c.try_into().ok().map(f64::from_le_bytes))
        .collect()
}

/// The checkpoint value of a baseline: its header (the entries are rows).
pub fn encode_header(b: &Baseline) -> Vec<u8> {
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
    out
}

/// A baseline from a checkpoint value and rows, and whether the rows hold it (a
/// version 1 value carries its entries itself: the next write must replace the rows).
/// Anything malformed, or rows that do not add up to the header's count, is no
/// baseline.
pub fn decode(value: &[u8], rows: &[crate::spool::KeyedRow]) -> Option<(Baseline, bool)> {
    let (v2, rest) = match value.strip_prefix(MAGIC) {
        Some(rest) => (true, rest),
        None => (false, value.strip_prefix(MAGIC_V1)?),
    };
    let nl = rest.iter().position(|b| *b == b'\n')?;
    let h: Header = serde_json::from_slice(&rest[..nl]).ok()?;
    let n = h.columns.len();
    let mut entries = HashMap::with_capacity(h.entries);
    if v2 {
        if rows.len() != h.entries {
            return None;
        }
        for (k, v) in rows {
            entries.insert(key_of(k)?, values_of(v, n)?);
        }
    } else {
        let body = &rest[nl + 1..];
        let len = KEY_LEN + 8 * n;
        if body.len() != h.entries * len {
            return None; // truncated or padded: not ours to trust
        }
        for r in body.chunks_exact(len) {
            entries.insert(key_of(&r[..KEY_LEN])?, values_of(&r[KEY_LEN..], n)?);
        }
    }
    let b = Baseline {
        identity: h.identity,
        taken_at: h.taken_at,
        stats_reset: h.stats_reset,
        dealloc: h.dealloc,
        columns: h.columns,
        entries,
    };
    Some((b, v2))
}

/// The baseline spooled by the daemon with this state directory, if any, and whether
/// the spool's rows hold it. A missing or unreadable one is no baseline (the next
/// sample becomes one), never an error.
pub fn load(state_dir: &Path) -> Option<(Baseline, bool)> {
    let (value, rows) = crate::spool::read_checkpoint_with_rows(state_dir, CHECKPOINT, true)?;
    decode(&value, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Checkpoint, RowChanges};

    fn baseline(entries: HashMap<Key, Values>) -> Baseline {
        Baseline {
            identity: "h:5432/postgres".into(),
            taken_at: Utc::now(),
            stats_reset: None,
            dealloc: Some(3),
            columns: vec!["calls".into(), "rows".into()],
            entries,
        }
    }

    const K: Key = Key {
        userid: 10,
        dbid: 5,
        queryid: -42,
        toplevel: false,
    };

    #[test]
    fn round_trips_through_the_spool_and_ignores_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(load(dir.path()).is_none());
        let b = baseline(HashMap::from([(K, vec![7.0, 1.5])]));
        let mut spool = crate::spool::Spool::open(dir.path()).expect("spool");
        let c = Checkpoint {
            name: CHECKPOINT.into(),
            value: encode_header(&b),
            rows: RowChanges {
                replace: true,
                set: [(key_bytes(&K), Some(value_bytes(&b.entries[&K])))].into(),
            },
        };
        spool.append_with(&[], Some(&c)).expect("append");
        let (l, rows_hold_it) = load(dir.path()).expect("load");
        assert!(rows_hold_it);
        assert_eq!(l.entries.get(&K), Some(&vec![7.0, 1.5]));
        assert_eq!(l.dealloc, Some(3));
        // Rows that do not add up to the header, or bytes of the wrong length, are no
        // baseline.
        let value = encode_header(&b);
        assert!(decode(&value, &[]).is_none());
        let short = vec![(key_bytes(&K), vec![0u8; 15])];
        assert!(decode(&value, &short).is_none());
        assert!(decode(b"{not ours", &[]).is_none());
    }

    #[test]
    fn a_version_1_baseline_is_read_and_marked_for_replacement() {
        let b = baseline(HashMap::from([(K, vec![7.0, 1.5])]));
        let header = encode_header(&b);
        let mut v1 = MAGIC_V1.to_vec();
        v1.extend(&header[MAGIC.len()..]);
        v1.extend(key_bytes(&K));
        v1.extend(value_bytes(&b.entries[&K]));
        let (l, rows_hold_it) = decode(&v1, &[]).expect("v1");
        assert!(!rows_hold_it, "the next write replaces the rows");
        assert_eq!(l.entries.get(&K), Some(&vec![7.0, 1.5]));
        assert!(decode(&v1[..v1.len() - 3], &[]).is_none(), "truncated");
    }
}
