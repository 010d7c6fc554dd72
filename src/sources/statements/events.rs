//! What pg_statements ships: a `summary` event every cycle and a `statement` event per
//! changed entry, serialized straight from the deltas.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::delta::{ColKind, Column, Delta};
use crate::model::{Event, EventKind};
use crate::sources::CycleError;

/// The `summary` event of every cycle: is the source working, what changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Always `"summary"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The extension can be read.
    pub available: bool,
    /// Why not, and how to fix it.
    pub reason: Option<String>,
    /// The fix, as commands.
    pub fix: Option<String>,
    /// `pg_extension.extversion`.
    pub extension_version: Option<String>,
    /// Entries in pg_stat_statements now.
    pub entries: usize,
    /// Entries whose queryid this role may not see (needs pg_read_all_stats).
    pub entries_hidden: usize,
    /// Rows the server sent this cycle (only changed entries, except on full reads).
    pub rows_read: usize,
    /// This sample only set the baseline (first sample, or the previous one did not fit).
    pub baseline: bool,
    /// `stats_reset` changed since the previous sample: every entry counts from zero.
    pub reset_detected: bool,
    /// Entries evicted since the previous sample because pg_stat_statements.max is full.
    pub dealloc_delta: Option<i64>,
    /// Entries with new calls.
    pub changed: usize,
    /// Entries shipped (the top `statements_max_rows` by execution time).
    pub shipped: usize,
    /// Seconds covered by the deltas.
    pub interval_s: Option<f64>,
    /// Why this cycle's statement events lack texts or database/role names (their
    /// counts are whole); absent when they could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub names_error: Option<String>,
}

impl Summary {
    /// The summary of a cycle that could not read the extension.
    pub fn unavailable(reason: &str, fix: &str) -> Summary {
        Summary {
            kind: "summary",
            available: false,
            reason: Some(reason.to_string()),
            fix: Some(fix.to_string()),
            extension_version: None,
            entries: 0,
            entries_hidden: 0,
            rows_read: 0,
            baseline: false,
            reset_detected: false,
            dealloc_delta: None,
            changed: 0,
            shipped: 0,
            interval_s: None,
            names_error: None,
        }
    }
}

/// One statement's delta (`data` of a `pg_statements` event of type `statement`).
#[derive(Debug, Serialize)]
pub struct StatementDelta<'a> {
    /// Always `"statement"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Role oid and name.
    pub userid: u32,
    /// Role name.
    pub usename: Option<String>,
    /// Database oid.
    pub dbid: u32,
    /// Database name.
    pub datname: Option<String>,
    /// The query id, as a string (it does not fit a JSON number exactly).
    pub queryid: String,
    /// Top-level statement (false: run inside a function).
    pub toplevel: bool,
    /// Normalized text, cut to `max_query_length`.
    pub query: Option<String>,
    /// The agent's fingerprint of the text (see [`crate::fingerprint`]): the same as
    /// on activity, lock and log events of the statement. Absent when the text was cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_fingerprint: Option<String>,
    /// The text's bytes were not UTF-8 (a `SQL_ASCII` database's): read with U+FFFD.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub not_utf8: bool,
    /// Start of the interval (the previous sample).
    pub since: DateTime<Utc>,
    /// Length of the interval, seconds.
    pub interval_s: f64,
    /// Entry appeared since the previous sample.
    pub new: bool,
    /// A counter went backwards (entry reset or evicted and re-added): values count from
    /// zero.
    pub counters_reset: bool,
    /// `total_exec_time_ms / calls` over the interval.
    pub mean_exec_time_ms: Option<f64>,
    /// Deltas (counts, times in ms) and gauges (min/max/stddev since the entry began).
    #[serde(flatten)]
    pub values: ColumnValues<'a>,
}

/// The columns of a delta, serialized straight from the value slice: counts as integers,
/// times rounded to the microsecond, without building a map per statement.
#[derive(Debug)]
pub struct ColumnValues<'a> {
    columns: &'a [Column],
    values: &'a [f64],
}

impl Serialize for ColumnValues<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.columns.len()))?;
        for (c, v) in self.columns.iter().zip(self.values) {
            match c.kind {
                ColKind::Count => m.serialize_entry(&c.name, &(v.round() as i64))?,
                ColKind::Time | ColKind::Gauge => {
                    m.serialize_entry(&c.name, &((v * 1000.0).round() / 1000.0))?
                }
            }
        }
        m.end()
    }
}

/// The names a statement event carries, by oid and queryid (read once, remembered).
#[derive(Debug, Default)]
pub struct Names {
    /// queryid → normalized text.
    pub texts: HashMap<i64, String>,
    /// queryid → the agent's fingerprint of the text, when the text is whole.
    pub fingerprints: HashMap<i64, String>,
    /// queryids whose text was not UTF-8 (read with U+FFFD).
    pub not_utf8: std::collections::HashSet<i64>,
    /// Database oid → name.
    pub databases: HashMap<u32, String>,
    /// Role oid → name.
    pub roles: HashMap<u32, String>,
    /// Bytes held by `texts` and `fingerprints` (their strings plus a map entry each).
    pub text_bytes: usize,
}

/// The payload of one delta.
pub fn statement<'a>(
    columns: &'a [Column],
    d: &'a Delta,
    names: &Names,
    since: DateTime<Utc>,
    secs: f64,
) -> StatementDelta<'a> {
    let at = |name: &str| {
        columns
            .iter()
            .position(|c| c.name == name)
            .map(|i| d.values[i])
    };
    StatementDelta {
        kind: "statement",
        userid: d.key.userid,
        usename: names.roles.get(&d.key.userid).cloned(),
        dbid: d.key.dbid,
        datname: names.databases.get(&d.key.dbid).cloned(),
        queryid: d.key.queryid.to_string(),
        toplevel: d.key.toplevel,
        query: names.texts.get(&d.key.queryid).cloned(),
        query_fingerprint: names.fingerprints.get(&d.key.queryid).cloned(),
        not_utf8: names.not_utf8.contains(&d.key.queryid),
        since,
        interval_s: secs,
        new: d.new,
        counters_reset: d.counters_reset,
        mean_exec_time_ms: at("calls")
            .zip(at("total_exec_time_ms"))
            .filter(|(c, _)| *c > 0.0)
            .map(|(c, t)| (t / c * 1000.0).round() / 1000.0),
        values: ColumnValues {
            columns,
            values: &d.values,
        },
    }
}

/// A `pg_statements` event: `what` is `summary` or the entry's key.
pub fn event<T: Serialize>(
    host: &str,
    at: DateTime<Utc>,
    what: &str,
    data: &T,
) -> Result<Event, CycleError> {
    let id = format!("pg_statements:{host}:{}:{what}", at.timestamp_micros());
    Event::new(id, EventKind::PgStatements, at, data)
        .map_err(|e| CycleError::encode("statement", e))
}

/// The event id part of a delta's key.
pub fn key_id(d: &Delta) -> String {
    format!(
        "{}:{}:{}:{}",
        d.key.dbid, d.key.userid, d.key.queryid, d.key.toplevel
    )
}
