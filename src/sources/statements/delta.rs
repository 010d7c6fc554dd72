//! Statement deltas as plain code: the columns a given pg_stat_statements exposes, and
//! the difference between two samples per (userid, dbid, queryid, toplevel), with resets
//! and evictions turned into a fresh baseline instead of negative or enormous deltas.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// How a column is shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColKind {
    /// A cumulative count: shipped as the delta, an integer.
    Count,
    /// A cumulative time in ms: shipped as the delta.
    Time,
    /// A value as of now (min/max/stddev since the entry was created): shipped as is.
    Gauge,
}

/// One column: its name in the event, the expression that reads it, and its kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Name in the event (`total_exec_time_ms`, `shared_blks_hit`, …).
    pub name: String,
    /// SQL over the alias `s`, cast to float8.
    pub expr: String,
    /// Delta or gauge.
    pub kind: ColKind,
}

/// Candidate columns: (event name, column names in order of preference, kind). The
/// first name the installed extension has is used, so renamed columns (1.8: total_time →
/// total_exec_time; 1.11: blk_read_time → shared_blk_read_time) map to one event name.
const CANDIDATES: &[(&str, &[&str], ColKind)] = &[
    ("calls", &["calls"], ColKind::Count),
    ("rows", &["rows"], ColKind::Count),
    (
        "total_exec_time_ms",
        &["total_exec_time", "total_time"],
        ColKind::Time,
    ),
    (
        "min_exec_time_ms",
        &["min_exec_time", "min_time"],
        ColKind::Gauge,
    ),
    (
        "max_exec_time_ms",
        &["max_exec_time", "max_time"],
        ColKind::Gauge,
    ),
    (
        "stddev_exec_time_ms",
        &["stddev_exec_time", "stddev_time"],
        ColKind::Gauge,
    ),
    ("plans", &["plans"], ColKind::Count),
    ("total_plan_time_ms", &["total_plan_time"], ColKind::Time),
    ("shared_blks_hit", &["shared_blks_hit"], ColKind::Count),
    ("shared_blks_read", &["shared_blks_read"], ColKind::Count),
    (
        "shared_blks_dirtied",
        &["shared_blks_dirtied"],
        ColKind::Count,
    ),
    (
        "shared_blks_written",
        &["shared_blks_written"],
        ColKind::Count,
    ),
    ("local_blks_hit", &["local_blks_hit"], ColKind::Count),
    ("local_blks_read", &["local_blks_read"], ColKind::Count),
    (
        "local_blks_dirtied",
        &["local_blks_dirtied"],
        ColKind::Count,
    ),
    (
        "local_blks_written",
        &["local_blks_written"],
        ColKind::Count,
    ),
    ("temp_blks_read", &["temp_blks_read"], ColKind::Count),
    ("temp_blks_written", &["temp_blks_written"], ColKind::Count),
    (
        "shared_blk_read_time_ms",
        &["shared_blk_read_time", "blk_read_time"],
        ColKind::Time,
    ),
    (
        "shared_blk_write_time_ms",
        &["shared_blk_write_time", "blk_write_time"],
        ColKind::Time,
    ),
    (
        "local_blk_read_time_ms",
        &["local_blk_read_time"],
        ColKind::Time,
    ),
    (
        "local_blk_write_time_ms",
        &["local_blk_write_time"],
        ColKind::Time,
    ),
    (
        "temp_blk_read_time_ms",
        &["temp_blk_read_time"],
        ColKind::Time,
    ),
    (
        "temp_blk_write_time_ms",
        &["temp_blk_write_time"],
        ColKind::Time,
    ),
    ("wal_records", &["wal_records"], ColKind::Count),
    ("wal_fpi", &["wal_fpi"], ColKind::Count),
    ("wal_bytes", &["wal_bytes"], ColKind::Count),
    ("wal_buffers_full", &["wal_buffers_full"], ColKind::Count),
    ("jit_functions", &["jit_functions"], ColKind::Count),
    (
        "jit_generation_time_ms",
        &["jit_generation_time"],
        ColKind::Time,
    ),
    (
        "jit_inlining_count",
        &["jit_inlining_count"],
        ColKind::Count,
    ),
    (
        "jit_inlining_time_ms",
        &["jit_inlining_time"],
        ColKind::Time,
    ),
    (
        "jit_optimization_count",
        &["jit_optimization_count"],
        ColKind::Count,
    ),
    (
        "jit_optimization_time_ms",
        &["jit_optimization_time"],
        ColKind::Time,
    ),
    (
        "jit_emission_count",
        &["jit_emission_count"],
        ColKind::Count,
    ),
    (
        "jit_emission_time_ms",
        &["jit_emission_time"],
        ColKind::Time,
    ),
    ("jit_deform_count", &["jit_deform_count"], ColKind::Count),
    ("jit_deform_time_ms", &["jit_deform_time"], ColKind::Time),
    (
        "parallel_workers_to_launch",
        &["parallel_workers_to_launch"],
        ColKind::Count,
    ),
    (
        "parallel_workers_launched",
        &["parallel_workers_launched"],
        ColKind::Count,
    ),
];

/// The columns to read, given the columns the installed view has.
pub fn columns(available: &[String]) -> Vec<Column> {
    CANDIDATES
        .iter()
        .filter_map(|(name, sources, kind)| {
            sources
                .iter()
                .find(|s| available.iter().any(|a| a == *s))
                .map(|s| Column {
                    name: name.to_string(),
                    expr: format!("s.{s}::float8"),
                    kind: *kind,
                })
        })
        .collect()
}

/// An entry's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    /// Role oid.
    pub userid: u32,
    /// Database oid.
    pub dbid: u32,
    /// Query id.
    pub queryid: i64,
    /// Top-level statement (always true before 1.9, which has no `toplevel`).
    pub toplevel: bool,
}

/// A 64-bit fingerprint of an entry and its call count, computed the same way in SQL
/// (`#` is xor, shifts wrap) so the server can skip entries whose calls did not change.
/// Two entries sharing a fingerprint by chance (about 1 in 2^64 per pair) would hide a
/// change until the next one, or the next full read.
pub fn fingerprint(k: &Key, calls: i64) -> i64 {
    (k.userid as i64)
        ^ ((k.dbid as i64) << 32)
        ^ k.queryid
        ^ (calls << 17)
        ^ ((k.toplevel as i64) << 62)
}

/// Values of one entry, aligned with the column list.
pub type Values = Vec<f64>;

/// One entry's change since the previous sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    /// The entry.
    pub key: Key,
    /// Deltas for counts and times, current values for gauges.
    pub values: Values,
    /// The entry was not in the previous sample (new, or evicted and re-added).
    pub new: bool,
    /// A counter of the entry went backwards: it was reset or evicted and re-added; the
    /// values are what it accumulated since.
    pub counters_reset: bool,
}

/// Differences between `prev` and the entries of `cur` with new calls (entries not in
/// `cur` are unchanged). With `reset` (the server's stats_reset changed) every entry
/// counts from zero.
pub fn diff<'a>(
    columns: &[Column],
    prev: &HashMap<Key, Values>,
    cur: impl IntoIterator<Item = (&'a Key, &'a Values)>,
    reset: bool,
) -> Vec<Delta> {
    let calls = columns.iter().position(|c| c.name == "calls");
    let mut out = Vec::new();
    for (key, now) in cur {
        let before = if reset { None } else { prev.get(key) };
        let went_back = before.is_some_and(|b| {
            columns
                .iter()
                .zip(b.iter().zip(now.iter()))
                .any(|(c, (b, n))| c.kind != ColKind::Gauge && n < b)
        });
        let base = before.filter(|_| !went_back);
        // Most entries of a full read did not run since: skipped before any allocation.
        if let (Some(i), Some(b)) = (calls, base) {
            if now[i] <= b[i] {
                continue;
            }
        }
        let values: Values = columns
            .iter()
            .enumerate()
            .map(|(i, c)| match (c.kind, base) {
                (ColKind::Gauge, _) | (_, None) => now[i],
                (_, Some(b)) => now[i] - b[i],
            })
            .collect();
        if calls.is_some_and(|i| values[i] <= 0.0) {
            continue;
        }
        out.push(Delta {
            key: *key,
            values,
            new: before.is_none() && !reset,
            counters_reset: went_back,
        });
    }
    out
}

/// Keeps the `n` deltas with the most execution time; returns how many were dropped.
pub fn top_n(deltas: &mut Vec<Delta>, columns: &[Column], n: usize) -> usize {
    let t = columns.iter().position(|c| c.name == "total_exec_time_ms");
    deltas.sort_by(|a, b| {
        let (x, y) = t.map(|i| (a.values[i], b.values[i])).unwrap_or((0.0, 0.0));
        y.total_cmp(&x).then(a.key.cmp(&b.key))
    });
    let dropped = deltas.len().saturating_sub(n);
    deltas.truncate(n);
    dropped
}

/// How many statements pg_statements hands to pg_plans.
pub const HANDED_OVER: usize = 200;

/// What pg_statements hands to pg_plans: the statements with the most execution time in
/// a cycle (`columns` names the deltas' values; every `toplevel` of one summed).
pub fn top(
    taken_at: chrono::DateTime<chrono::Utc>,
    columns: &[Column],
    deltas: &[Delta],
) -> crate::model::Top {
    let at = |name: &str| columns.iter().position(|c| c.name == name);
    let (Some(t), Some(c)) = (at("total_exec_time_ms"), at("calls")) else {
        return crate::model::Top {
            taken_at,
            statements: Vec::new(),
        };
    };
    let mut sums: HashMap<(u32, u32, i64), (f64, f64)> = HashMap::new();
    for d in deltas {
        let s = sums
            .entry((d.key.userid, d.key.dbid, d.key.queryid))
            .or_default();
        s.0 += d.values.get(t).copied().unwrap_or(0.0);
        s.1 += d.values.get(c).copied().unwrap_or(0.0);
    }
    let mut statements: Vec<crate::model::TopStatement> = sums
        .into_iter()
        .map(
            |((userid, dbid, queryid), (total_ms, calls))| crate::model::TopStatement {
                userid,
                dbid,
                queryid,
                total_ms,
                calls,
            },
        )
        .collect();
    statements.sort_by(|a, b| {
        b.total_ms
            .total_cmp(&a.total_ms)
            .then((a.dbid, a.queryid, a.userid).cmp(&(b.dbid, b.queryid, b.userid)))
    });
    statements.truncate(HANDED_OVER);
    crate::model::Top {
        taken_at,
        statements,
    }
}

#[cfg(test)]
pub(crate) mod tests;
