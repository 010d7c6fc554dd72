//! The board: each source's latest reading of one server, kept for the `/metrics` page
//! (`[metrics] database`). A source posts what its cycle read; a scrape takes the board
//! as it is (a clone of reference-counted readings, no copy of the rows) and renders it,
//! so a scrape never queries the server and never waits for one. Every reading carries
//! when it was taken, so the page can say how old it is.
//!
//! The board holds readings only while the page asks for them ([`Board::set_wanted`]);
//! otherwise posting is a no-op and the sources skip the reads that only the page needs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::{Map, Value};

/// A row as the server has it (`to_jsonb(view)`), by column name.
pub type Row = Map<String, Value>;

/// A reading and when it was taken.
#[derive(Debug)]
pub struct Posted<T> {
    /// When the source read it.
    pub at: SystemTime,
    /// The reading.
    pub value: Arc<T>,
}

impl<T> Clone for Posted<T> {
    fn clone(&self) -> Self {
        Posted {
            at: self.at,
            value: self.value.clone(),
        }
    }
}

/// One database's statistics (`pg_databases`).
#[derive(Debug, Clone, Default)]
pub struct DatabaseStats {
    /// OID (0: the row of shared objects in `pg_stat_database`, 15+).
    pub datid: i64,
    /// Name (empty for the shared row).
    pub datname: String,
    /// `pg_stat_database` as the server has it.
    pub stats: Row,
    /// `pg_stat_database_conflicts` as the server has it (none for the shared row).
    pub conflicts: Option<Row>,
    /// `age(datfrozenxid)`, `mxid_age(datminmxid)`.
    pub xid_age: Option<f64>,
    /// `mxid_age(datminmxid)`.
    pub mxid_age: Option<f64>,
    /// `datconnlimit` (-1: none).
    pub connection_limit: Option<f64>,
    /// `datallowconn`.
    pub allow_connections: bool,
}

/// One database's size (`pg_database_size`), read less often than its statistics.
#[derive(Debug, Clone)]
pub struct DatabaseSize {
    /// Name.
    pub datname: String,
    /// Bytes.
    pub bytes: f64,
}

/// The server's background statistics and facts (`pg_server_stats`).
#[derive(Debug, Clone, Default)]
pub struct ServerStats {
    /// `pg_stat_bgwriter` as the server has it.
    pub bgwriter: Row,
    /// `pg_stat_checkpointer` under 17's names (taken out of `pg_stat_bgwriter` before).
    pub checkpointer: Row,
    /// `pg_stat_archiver`.
    pub archiver: Row,
    /// `pg_stat_wal` (14+).
    pub wal: Option<Row>,
    /// `version()`.
    pub version: String,
    /// `server_version_num`.
    pub version_num: i32,
    /// `pg_postmaster_start_time()`, Unix seconds.
    pub postmaster_start_time: Option<f64>,
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// Seconds since the last replayed transaction on a standby (0 on a primary).
    pub replay_lag_s: Option<f64>,
    /// A standby has replayed all it received.
    pub replay_caught_up: bool,
    /// WAL position in bytes (`pg_current_wal_lsn`, or the last replayed on a standby).
    pub wal_lsn_bytes: Option<f64>,
    /// WAL segment files in `pg_wal` and their bytes (`pg_ls_waldir`, where the role may).
    pub wal_segments: Option<(f64, f64)>,
}

/// One setting (`pg_settings` rows of type bool, integer or real).
#[derive(Debug, Clone)]
pub struct Setting {
    /// `name`.
    pub name: String,
    /// `setting`, as text.
    pub setting: String,
    /// `unit` (empty: none).
    pub unit: String,
    /// `short_desc`.
    pub short_desc: String,
    /// `vartype`.
    pub vartype: String,
}

/// Sessions of one database in one state (`pg_stat_activity`, every session counted).
#[derive(Debug, Clone)]
pub struct SessionCount {
    /// Database.
    pub datname: String,
    /// `state`.
    pub state: String,
    /// Sessions.
    pub count: f64,
    /// Age of the oldest transaction among them, seconds (0: none).
    pub max_tx_duration: f64,
}

/// Locks of one database in one mode (`pg_locks`, lower-case mode).
#[derive(Debug, Clone)]
pub struct LockCount {
    /// Database.
    pub datname: String,
    /// Mode, lower case (`accesssharelock`).
    pub mode: String,
    /// Locks held or awaited.
    pub count: f64,
}

/// Every session counted, for the metrics page.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    /// By database and state (every database listed).
    pub by_state: PerDatabase<SessionCount>,
    /// Sessions in a transaction and not idle, autovacuum workers left out.
    pub in_transaction: f64,
    /// The oldest of their transactions, seconds (0: none).
    pub oldest_transaction_s: f64,
    /// How many of them are older than each threshold (seconds, count).
    pub longer_than: Vec<(u32, f64)>,
    /// Autovacuum workers: the table each works on and when its transaction started
    /// (Unix seconds).
    pub autovacuum: Vec<(String, f64)>,
    /// Idle sessions' time since their last statement (seconds, over [`IDLE_BOUNDS`]) by
    /// application name: the [`IDLE_APPLICATIONS`] with most idle sessions, the others
    /// together under [`OTHER_APPLICATIONS`].
    pub idle: Vec<(String, crate::model::Histogram)>,
}

/// Bounds of the idle sessions' histogram (postgres_exporter's `process_idle`).
pub const IDLE_BOUNDS: &[f64] = &[1.0, 2.0, 5.0, 15.0, 30.0, 60.0, 90.0, 120.0, 300.0];

/// Application names given series of their own in the idle sessions' histogram.
pub const IDLE_APPLICATIONS: usize = 20;

/// The application name the other applications' idle sessions are counted under.
pub const OTHER_APPLICATIONS: &str = "(other)";

/// Counts by database, with every database's name (a database with nothing to count
/// still has its series, at 0).
#[derive(Debug, Clone)]
pub struct PerDatabase<T> {
    /// Every database, by name.
    pub databases: Vec<String>,
    /// The counts.
    pub counts: Vec<T>,
}

impl<T> Default for PerDatabase<T> {
    fn default() -> Self {
        PerDatabase {
            databases: Vec::new(),
            counts: Vec::new(),
        }
    }
}

/// The columns of a table reading, in [`TableRow::values`] order: `pg_stat_user_tables`
/// and `pg_statio_user_tables` under the server's names.
pub const TABLE_COLUMNS: &[&str] = &[
    "seq_scan",
    "seq_tup_read",
    "idx_scan",
    "idx_tup_fetch",
    "n_tup_ins",
    "n_tup_upd",
    "n_tup_del",
    "n_tup_hot_upd",
    "n_live_tup",
    "n_dead_tup",
    "n_mod_since_analyze",
    "last_vacuum",
    "last_autovacuum",
    "last_analyze",
    "last_autoanalyze",
    "vacuum_count",
    "autovacuum_count",
    "analyze_count",
    "autoanalyze_count",
    "heap_blks_read",
    "heap_blks_hit",
    "idx_blks_read",
    "idx_blks_hit",
    "toast_blks_read",
    "toast_blks_hit",
    "tidx_blks_read",
    "tidx_blks_hit",
];

/// Columns of [`TABLE_COLUMNS`] that are times (Unix seconds; 0 when never).
pub const TABLE_TIMES: &[&str] = &[
    "last_vacuum",
    "last_autovacuum",
    "last_analyze",
    "last_autoanalyze",
];

/// One table's latest reading, with its labels as the metrics page writes them (a page
/// of many thousands of tables writes each row's labels once per family: made once, when
/// the row is read, not at every scrape).
#[derive(Debug, Clone)]
pub struct TableRow {
    /// `{datname="…",relname="…",schemaname="…"`: a table's series add `,server="…"} `
    /// (the server's value may change on reload), an index's `,indexrelname="…"} `.
    pub labels: Box<str>,
    /// Values by [`TABLE_COLUMNS`] (NaN where the server has none).
    pub values: [f64; TABLE_COLUMNS.len()],
    /// Its indexes.
    pub indexes: Box<[IndexRow]>,
}

impl TableRow {
    /// A table of `datname`.`schema` and its indexes (name, values).
    pub fn new(
        (datname, schema, relname): (&str, &str, &str),
        values: [f64; TABLE_COLUMNS.len()],
        indexes: impl IntoIterator<Item = (String, [f64; INDEX_COLUMNS.len()])>,
    ) -> TableRow {
        let labels = label_block(&[
            ("datname", datname),
            ("relname", relname),
            ("schemaname", schema),
        ]);
        let indexes = indexes
            .into_iter()
            .map(|(name, values)| {
                let mut labels = String::from(",indexrelname=\"");
                escape_label(&mut labels, &name);
                labels.push_str("\"} ");
                IndexRow {
                    labels: labels.into(),
                    values,
                }
            })
            .collect();
        TableRow {
            labels: labels.into(),
            values,
            indexes,
        }
    }

    /// The value of `column` (one of [`TABLE_COLUMNS`]).
    pub fn value(&self, column: &str) -> f64 {
        TABLE_COLUMNS
            .iter()
            .position(|c| *c == column)
            .map_or(f64::NAN, |i| self.values[i])
    }
}

/// `{k="v",…` with each value escaped for the exposition format (no closing brace).
fn label_block(labels: &[(&str, &str)]) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape_label(&mut out, v);
        out.push('"');
    }
    out
}

/// A label value escaped for the Prometheus exposition format.
pub fn escape_label(out: &mut String, v: &str) {
    if !v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The columns of an index reading, in [`IndexRow::values`] order: `pg_stat_user_indexes`
/// and `pg_statio_user_indexes` under the server's names.
pub const INDEX_COLUMNS: [&str; 5] = [
    "idx_scan",
    "idx_tup_read",
    "idx_tup_fetch",
    "idx_blks_read",
    "idx_blks_hit",
];

/// One index's latest reading.
#[derive(Debug, Clone)]
pub struct IndexRow {
    /// `,indexrelname="…"} `: what its series add to its table's labels.
    pub labels: Box<str>,
    /// Values by [`INDEX_COLUMNS`] (NaN where the server has none).
    pub values: [f64; INDEX_COLUMNS.len()],
}

/// The tables read by the last passes, by (database OID, table OID). A pass changes a
/// few rows of a copy while a scrape may still render the last one: the rows are shared,
/// so the copy is of pointers.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    /// The rows.
    pub rows: std::collections::BTreeMap<(i64, i64), Arc<TableRow>>,
}

/// One statement's totals (`pg_stat_statements`), for the top ones by time.
#[derive(Debug, Clone)]
pub struct StatementTotals {
    /// `queryid`.
    pub queryid: i64,
    /// Role name.
    pub user: String,
    /// Database name.
    pub datname: String,
    /// `calls`.
    pub calls: f64,
    /// Execution (and planning) time, seconds.
    pub seconds: f64,
    /// `rows`.
    pub rows: f64,
    /// Time reading blocks, seconds.
    pub block_read_seconds: f64,
    /// Time writing blocks, seconds.
    pub block_write_seconds: f64,
}

/// Replication as the primary and a standby see it.
#[derive(Debug, Clone, Default)]
pub struct Replication {
    /// `pg_stat_replication` rows, with `pg_wal_lsn_diff` (bytes behind this server's
    /// WAL position) and `pg_current_wal_lsn_bytes`.
    pub standbys: Vec<Row>,
    /// `pg_replication_slots` rows, with `retained_bytes` (from `restart_lsn` to this
    /// server's WAL position).
    pub slots: Vec<Row>,
    /// This server's WAL position (received, on a standby), bytes.
    pub wal_lsn_bytes: Option<f64>,
    /// On a standby: `pg_stat_wal_receiver` (without `conninfo`).
    pub receiver: Option<Row>,
}

/// A VACUUM in progress (`pg_stat_progress_vacuum`).
#[derive(Debug, Clone)]
pub struct VacuumProgress {
    /// Its database.
    pub datname: String,
    /// The table (`schema.name` where it is not on the search path; its OID where its
    /// name could not be read).
    pub relname: String,
    /// The server's phase name.
    pub phase: Option<String>,
    /// The view's row.
    pub progress: Row,
}

/// Every part of the board, as a scrape sees it.
#[derive(Debug, Clone, Default)]
pub struct Parts {
    /// Whether the last cycle of a database source reached the server.
    pub up: Option<Posted<bool>>,
    /// `pg_databases`.
    pub databases: Option<Posted<Vec<DatabaseStats>>>,
    /// The sizes (every `SIZE_EVERY`).
    pub sizes: Option<Posted<Vec<DatabaseSize>>>,
    /// `pg_server_stats`.
    pub server: Option<Posted<ServerStats>>,
    /// Every numeric and boolean setting.
    pub settings: Option<Posted<Vec<Setting>>>,
    /// Sessions by database and state.
    pub sessions: Option<Posted<Sessions>>,
    /// Locks by database and mode.
    pub locks: Option<Posted<PerDatabase<LockCount>>>,
    /// The tables pass.
    pub tables: Option<Posted<Tables>>,
    /// The top statements.
    pub statements: Option<Posted<Vec<StatementTotals>>>,
    /// Standbys and slots.
    pub replication: Option<Posted<Replication>>,
    /// Roles and their connection limits.
    pub roles: Option<Posted<Vec<(String, f64)>>>,
    /// Session time the sampler saw, by state and wait event type (seconds since the
    /// agent started).
    pub session_seconds: Option<Posted<Vec<SessionTime>>>,
    /// Sessions waiting for a lock now, and the longest wait.
    pub lock_waits: Option<Posted<LockWaits>>,
    /// VACUUMs in progress.
    pub vacuums: Option<Posted<Vec<VacuumProgress>>>,
    /// Each `[[custom]]` query's last rows, by its name.
    pub custom: std::collections::BTreeMap<String, Posted<CustomRows>>,
}

/// A `[[custom]]` query's rows of its last cycle, for its metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomRows {
    /// The label columns.
    pub labels: Vec<String>,
    /// The gauge columns.
    pub gauges: Vec<String>,
    /// The counter columns.
    pub counters: Vec<String>,
    /// The rows, of every database it ran in.
    pub rows: Vec<CustomRow>,
}

/// One row of [`CustomRows`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomRow {
    /// Its database.
    pub datname: String,
    /// The label columns' values.
    pub labels: Vec<String>,
    /// The gauges' then the counters' values (`None`: not a number).
    pub values: Vec<Option<f64>>,
}

/// Seconds of sessions in one state, waiting for one kind of event (`none`: on CPU).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionTime {
    /// `active`, `idle in transaction`, … (`other` for a state this build does not know).
    pub state: &'static str,
    /// `Lock`, `IO`, `LWLock`, … (`none`: not waiting; `other`: a type this build does
    /// not know).
    pub wait_event_type: &'static str,
    /// Seconds.
    pub seconds: f64,
}

/// Sessions waiting for a lock, as the locks source saw them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LockWaits {
    /// Sessions waiting.
    pub waiting: f64,
    /// The longest wait so far, seconds (0: none).
    pub longest_s: f64,
}

/// The states of `pg_stat_activity` a label may take (others: `other`).
pub const STATES: &[&str] = &[
    "active",
    "idle",
    "idle in transaction",
    "idle in transaction (aborted)",
    "fastpath function call",
    "disabled",
];

/// The lock modes postgres_exporter lists for every database, lower case.
pub const LOCK_MODES: &[&str] = &[
    "accesssharelock",
    "rowsharelock",
    "rowexclusivelock",
    "shareupdateexclusivelock",
    "sharelock",
    "sharerowexclusivelock",
    "exclusivelock",
    "accessexclusivelock",
    "sireadlock",
];

/// The thresholds of postgres_exporter's long-running transactions, seconds.
pub const LONG_RUNNING: &[u32] = &[60, 300, 600, 1800];

/// The wait event types a label may take (others: `other`; none: `none`).
pub const WAIT_EVENT_TYPES: &[&str] = &[
    "Activity",
    "BufferPin",
    "Client",
    "Extension",
    "IO",
    "IPC",
    "InjectionPoint",
    "Lock",
    "LWLock",
    "Timeout",
];

/// `v` if it is one of `known`, else `other` (a label from a bounded set).
pub fn bounded(v: Option<&str>, known: &[&'static str], none: &'static str) -> &'static str {
    match v {
        None | Some("") => none,
        Some(v) => known.iter().find(|k| **k == v).copied().unwrap_or("other"),
    }
}

/// One server's board.
#[derive(Debug, Default)]
pub struct Board {
    wanted: AtomicBool,
    parts: Mutex<Parts>,
    /// postgres_exporter's `server` label for this server: `host:port`.
    label: Mutex<String>,
}

impl Board {
    /// True while the page asks for readings (sources read what only it needs).
    pub fn wanted(&self) -> bool {
        self.wanted.load(Ordering::Relaxed)
    }

    /// Turns the board on or off; off forgets every reading.
    pub fn set_wanted(&self, on: bool) {
        if self.wanted.swap(on, Ordering::Relaxed) == on {
            return;
        }
        if !on {
            *self.lock() = Parts::default();
        }
    }

    /// Sets the `server` label (`host:port` of the connection, as the exporter has it).
    pub fn set_label(&self, label: String) {
        *self.label.lock().unwrap_or_else(|p| p.into_inner()) = label;
    }

    /// The `server` label.
    pub fn label(&self) -> String {
        self.label.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Parts> {
        self.parts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `value` in the part `slot` chooses (when wanted).
    pub fn post<T>(&self, slot: fn(&mut Parts) -> &mut Option<Posted<T>>, value: Arc<T>) {
        if !self.wanted() {
            return;
        }
        *slot(&mut self.lock()) = Some(Posted {
            at: SystemTime::now(),
            value,
        });
    }

    /// Posts custom query `name`'s rows.
    pub fn post_custom(&self, name: &str, rows: Arc<CustomRows>) {
        if !self.wanted() {
            return;
        }
        self.lock().custom.insert(
            name.to_string(),
            Posted {
                at: SystemTime::now(),
                value: rows,
            },
        );
    }

    /// Takes the part `slot` chooses out of the board.
    pub fn forget<T>(&self, slot: fn(&mut Parts) -> &mut Option<Posted<T>>) {
        *slot(&mut self.lock()) = None;
    }

    /// The board as it is now.
    pub fn parts(&self) -> Parts {
        self.lock().clone()
    }

    /// What the page holds, for `status`: `None` while it does not ask.
    pub fn describe(&self, now: SystemTime) -> Option<String> {
        if !self.wanted() {
            return None;
        }
        let p = self.parts();
        let ages = p.ages(now);
        let Some((oldest, age)) = ages
            .iter()
            .filter_map(|(name, a)| Some((*name, (*a)?)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
        else {
            return Some("the database's metrics: no reading yet".to_string());
        };
        let (tables, indexes) = p.tables.as_ref().map_or((0, 0), |t| {
            let rows = &t.value.rows;
            (rows.len(), rows.values().map(|r| r.indexes.len()).sum())
        });
        let statements = p.statements.as_ref().map_or(0, |s| s.value.len());
        let read = ages.iter().filter(|(_, a)| a.is_some()).count();
        Some(format!(
            "the database's metrics from {read} of {} readings (tables {tables}, indexes {indexes}, statements {statements}); the oldest ({oldest}) {age:.0} s old",
            ages.len()
        ))
    }
}

impl Parts {
    /// How old each part is (seconds; `None`: not read yet), by the name
    /// `postgres_agent_reading_age_seconds` gives it.
    pub fn ages(&self, now: SystemTime) -> [(&'static str, Option<f64>); 14] {
        fn age<T>(p: &Option<Posted<T>>, now: SystemTime) -> Option<f64> {
            p.as_ref()
                .map(|p| now.duration_since(p.at).unwrap_or_default().as_secs_f64())
        }
        [
            ("up", age(&self.up, now)),
            ("databases", age(&self.databases, now)),
            ("database_sizes", age(&self.sizes, now)),
            ("server_stats", age(&self.server, now)),
            ("settings", age(&self.settings, now)),
            ("sessions", age(&self.sessions, now)),
            ("locks", age(&self.locks, now)),
            ("tables", age(&self.tables, now)),
            ("replication", age(&self.replication, now)),
            ("statements", age(&self.statements, now)),
            ("roles", age(&self.roles, now)),
            ("session_seconds", age(&self.session_seconds, now)),
            ("lock_waits", age(&self.lock_waits, now)),
            ("vacuums", age(&self.vacuums, now)),
        ]
    }
}

/// The Unix seconds of a timestamp the server wrote in JSON (`to_jsonb(timestamptz)`).
pub fn unix_seconds(v: Option<&Value>) -> Option<f64> {
    let s = v?.as_str()?;
    let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
    Some(t.timestamp_micros() as f64 / 1e6)
}

/// An LSN (`16/B374D848`) as bytes from the start of WAL.
pub fn lsn_bytes(v: Option<&Value>) -> Option<f64> {
    let (hi, lo) = v?.as_str()?.split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    Some(((hi << 32) | lo) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_are_bytes() {
        assert_eq!(
            lsn_bytes(Some(&Value::from("0/1500718"))),
            Some(22_021_912.0)
        );
        assert_eq!(
            lsn_bytes(Some(&Value::from("16/B374D848"))),
            Some(97_500_059_720.0)
        );
        assert_eq!(lsn_bytes(Some(&Value::from("x/1"))), None);
        assert_eq!(lsn_bytes(Some(&Value::Null)), None);
    }

    #[test]
    fn a_board_not_wanted_keeps_nothing_and_turning_it_off_forgets() {
        let b = Board::default();
        b.post(|p| &mut p.up, Arc::new(true));
        assert!(b.parts().up.is_none());
        b.set_wanted(true);
        b.post(|p| &mut p.up, Arc::new(true));
        assert_eq!(b.parts().up.map(|u| *u.value), Some(true));
        b.set_wanted(true);
        assert!(b.parts().up.is_some(), "turning it on twice keeps readings");
        b.set_wanted(false);
        assert!(b.parts().up.is_none());
    }

    #[test]
    fn server_timestamps_become_unix_seconds() {
        let v = Value::from("2026-12-05T06:00:00.25+01:00");
        assert_eq!(unix_seconds(Some(&v)), Some(1_796_446_800.25));
        assert_eq!(unix_seconds(Some(&Value::Null)), None);
        assert_eq!(unix_seconds(Some(&Value::from("yesterday"))), None);
    }

    #[test]
    fn a_table_value_is_found_by_its_column() {
        let mut values = [f64::NAN; TABLE_COLUMNS.len()];
        values[1] = 7.0;
        let r = TableRow::new(("d", "s", "t"), values, []);
        assert_eq!(r.value("seq_tup_read"), 7.0);
        assert!(r.value("seq_scan").is_nan());
        assert!(r.value("no_such_column").is_nan());
    }
}
