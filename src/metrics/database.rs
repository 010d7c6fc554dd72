//! The database's metrics on `/metrics` (`[metrics] database`), under postgres_exporter's
//! metric names, label names, types and units, rendered from the board (each source's
//! latest reading) without a query: a scrape costs the server nothing and a slow server
//! never times a scrape out. How old each reading is: `postgres_agent_reading_age_seconds`.
//!
//! Where the exporter's families come from (its default set, and the optional queries of
//! its example `queries.yaml` that dashboards use):
//! - `pg_stat_database_*`, `pg_stat_database_conflicts_*`, `pg_database_size_bytes`:
//!   `pg_databases` (sizes every `SIZE_EVERY`);
//! - `pg_stat_bgwriter_*_total`, `pg_stat_archiver_*`, `pg_static`,
//!   `pg_postmaster_start_time_seconds`, `pg_replication_lag`: `pg_server_stats`;
//! - `pg_settings_*`: `pg_settings`; `pg_stat_activity_*`: `pg_activity`;
//!   `pg_locks_count`: `pg_locks`; `pg_replication_slots_*`: `pg_replication`;
//! - `pg_stat_user_tables_*`, `pg_statio_user_tables_*`: `pg_tables`, for every database
//!   the pass reads (the exporter: the one it is connected to), so `datname` tells them
//!   apart.
//!
//! Values are the server's as read; a column the server has that the exporter types
//! is typed the same, one it does not know is untyped as the exporter leaves it; a time
//! is whole Unix seconds; a NULL is NaN (where the exporter writes 0, so does this).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::Value;

use crate::board::{self, Parts, Row, Tables};
use crate::board::{escape_label, LOCK_MODES, STATES};

/// A family's type as the exposition names it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Type {
    /// `counter`.
    Counter,
    /// `gauge`.
    Gauge,
    /// `untyped`.
    Untyped,
    /// `histogram`.
    Histogram,
}

impl Type {
    fn name(self) -> &'static str {
        match self {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
            Type::Untyped => "untyped",
            Type::Histogram => "histogram",
        }
    }
}

/// Writes families into a string.
pub struct Writer<'a> {
    out: &'a mut String,
}

impl<'a> Writer<'a> {
    /// Writes into `out`.
    pub fn new(out: &'a mut String) -> Writer<'a> {
        Writer { out }
    }

    /// A family's HELP and TYPE lines.
    pub fn family(&mut self, name: &str, help: &str, ty: Type) {
        let _ = write!(self.out, "# HELP {name} ");
        for c in help.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                c => self.out.push(c),
            }
        }
        let _ = writeln!(self.out, "\n# TYPE {name} {}", ty.name());
    }

    /// One sample.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label(self.out, val);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        push_value(self.out, v);
        self.out.push('\n');
    }
}

impl Writer<'_> {
    /// A histogram's samples (`_bucket` with `le`, `_sum`, `_count`) under `labels`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &crate::model::Histogram) {
        let bucket = format!("{name}_bucket");
        let mut all: Vec<(&str, &str)> = labels.to_vec();
        let mut running = 0;
        let les: Vec<String> = h
            .bounds
            .iter()
            .map(|b| b.to_string())
            .chain(std::iter::once("+Inf".to_string()))
            .collect();
        for (count, le) in h.counts.iter().zip(&les) {
            running += count;
            all.push(("le", le));
            self.sample(&bucket, &all, running as f64);
            all.pop();
        }
        self.sample(&format!("{name}_sum"), labels, h.sum);
        self.sample(&format!("{name}_count"), labels, running as f64);
    }
}

fn push_value(out: &mut String, v: f64) {
    let mut digits = [0u8; 21];
    match integer(v, &mut digits) {
        Some(d) => out.push_str(std::str::from_utf8(d).unwrap_or("0")),
        None => out.push_str(&not_integer(v)),
    }
}

/// [`push_value`] into bytes: the table families' chunks, where most values are counts.
fn push_value_bytes(out: &mut Vec<u8>, v: f64) {
    let mut digits = [0u8; 21];
    match integer(v, &mut digits) {
        Some(d) => out.extend_from_slice(d),
        None => out.extend_from_slice(not_integer(v).as_bytes()),
    }
}

/// `v`'s digits when it is a whole number Prometheus reads exactly, written into `buf`
/// without float formatting (most values are counts). A cast, not `fract()`, tells:
/// `fract` is a library call on the baseline x86-64 target.
fn integer(v: f64, buf: &mut [u8; 21]) -> Option<&[u8]> {
    let i = v as i64;
    if i as f64 != v || i.unsigned_abs() >= 9_000_000_000_000_000 {
        return None;
    }
    let mut n = i.unsigned_abs();
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if i < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    Some(&buf[at..])
}

/// A value that is not a whole number, as Prometheus reads it.
fn not_integer(v: f64) -> std::borrow::Cow<'static, str> {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        v.to_string().into()
    }
}

/// A column's value as a sample: numbers as they are, a time as Unix seconds, a
/// switch as 1 or 0, NULL as NaN; text that is none of these is not a sample.
pub fn value_of(v: Option<&Value>) -> Option<f64> {
    match v {
        None | Some(Value::Null) => Some(f64::NAN),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::Bool(b)) => Some(if *b { 1.0 } else { 0.0 }),
        // Whole seconds, as the exporter reads a time (Go's `Time.Unix`).
        Some(s @ Value::String(_)) => board::unix_seconds(Some(s)).map(f64::floor),
        _ => None,
    }
}

/// `pg_stat_database` columns postgres_exporter types, with their help; the others the
/// server has are untyped (as the exporter leaves them).
const STAT_DATABASE: &[(&str, Type, &str)] = &[
    ("numbackends", Type::Gauge, "Number of backends currently connected to this database. This is the only column in this view that returns a value reflecting current state; all other columns return the accumulated values since the last reset."),
    ("xact_commit", Type::Counter, "Number of transactions in this database that have been committed"),
    ("xact_rollback", Type::Counter, "Number of transactions in this database that have been rolled back"),
    ("blks_read", Type::Counter, "Number of disk blocks read in this database"),
    ("blks_hit", Type::Counter, "Number of times disk blocks were found already in the buffer cache, so that a read was not necessary (this only includes hits in the PostgreSQL buffer cache, not the operating system's file system cache)"),
    ("tup_returned", Type::Counter, "Number of rows returned by queries in this database"),
    ("tup_fetched", Type::Counter, "Number of rows fetched by queries in this database"),
    ("tup_inserted", Type::Counter, "Number of rows inserted by queries in this database"),
    ("tup_updated", Type::Counter, "Number of rows updated by queries in this database"),
    ("tup_deleted", Type::Counter, "Number of rows deleted by queries in this database"),
    ("conflicts", Type::Counter, "Number of queries canceled due to conflicts with recovery in this database"),
    ("temp_files", Type::Counter, "Number of temporary files created by queries in this database"),
    ("temp_bytes", Type::Counter, "Total amount of data written to temporary files by queries in this database"),
    ("deadlocks", Type::Counter, "Number of deadlocks detected in this database"),
    ("blk_read_time", Type::Counter, "Time spent reading data file blocks by backends in this database, in milliseconds"),
    ("blk_write_time", Type::Counter, "Time spent writing data file blocks by backends in this database, in milliseconds"),
    ("stats_reset", Type::Counter, "Time at which these statistics were last reset"),
];

/// `pg_stat_database_conflicts` columns postgres_exporter types (as counters).
const CONFLICTS: &[&str] = &[
    "confl_tablespace",
    "confl_lock",
    "confl_snapshot",
    "confl_bufferpin",
    "confl_deadlock",
];

/// `pg_stat_bgwriter` families (postgres_exporter's bgwriter collector): the family's
/// suffix, where the value is (`bgwriter` or `checkpointer` row, under 17's names), help.
const BGWRITER: &[(&str, &str, &str, &str)] = &[
    ("checkpoints_timed_total", "checkpointer", "num_timed", "Number of scheduled checkpoints that have been performed"),
    ("checkpoints_req_total", "checkpointer", "num_requested", "Number of requested checkpoints that have been performed"),
    ("checkpoint_write_time_total", "checkpointer", "write_time", "Total amount of time that has been spent in the portion of checkpoint processing where files are written to disk, in milliseconds"),
    ("checkpoint_sync_time_total", "checkpointer", "sync_time", "Total amount of time that has been spent in the portion of checkpoint processing where files are synchronized to disk, in milliseconds"),
    ("buffers_checkpoint_total", "checkpointer", "buffers_written", "Number of buffers written during checkpoints"),
    ("buffers_clean_total", "bgwriter", "buffers_clean", "Number of buffers written by the background writer"),
    ("maxwritten_clean_total", "bgwriter", "maxwritten_clean", "Number of times the background writer stopped a cleaning scan because it had written too many buffers"),
    ("buffers_backend_total", "bgwriter", "buffers_backend", "Number of buffers written directly by a backend"),
    ("buffers_backend_fsync_total", "bgwriter", "buffers_backend_fsync", "Number of times a backend had to execute its own fsync call (normally the background writer handles those even when the backend does its own write)"),
    ("buffers_alloc_total", "bgwriter", "buffers_alloc", "Number of buffers allocated"),
    ("stats_reset_total", "bgwriter", "stats_reset", "Time at which these statistics were last reset"),
];

/// `pg_stat_checkpointer` families (postgres_exporter's stat_checkpointer collector,
/// 17+; before 17 the same figures out of `pg_stat_bgwriter`, without restartpoints).
const CHECKPOINTER: &[(&str, &str)] = &[
    ("num_timed", "Number of scheduled checkpoints due to timeout"),
    ("num_requested", "Number of requested checkpoints that have been performed"),
    ("restartpoints_timed", "Number of scheduled restartpoints due to timeout or after a failed attempt to perform it"),
    ("restartpoints_req", "Number of requested restartpoints"),
    ("restartpoints_done", "Number of restartpoints that have been performed"),
    ("write_time", "Total amount of time that has been spent in the portion of processing checkpoints and restartpoints where files are written to disk, in milliseconds"),
    ("sync_time", "Total amount of time that has been spent in the portion of processing checkpoints and restartpoints where files are synchronized to disk, in milliseconds"),
    ("buffers_written", "Number of buffers written during checkpoints and restartpoints"),
    ("stats_reset", "Time at which these statistics were last reset"),
];

/// `pg_stat_user_tables` and `pg_statio_user_tables` families: the column of
/// [`board::TABLE_COLUMNS`], the family, its type and help.
const TABLE_FAMILIES: &[(&str, &str, Type, &str)] = &[
    (
        "seq_scan",
        "pg_stat_user_tables_seq_scan",
        Type::Counter,
        "Number of sequential scans initiated on this table",
    ),
    (
        "seq_tup_read",
        "pg_stat_user_tables_seq_tup_read",
        Type::Counter,
        "Number of live rows fetched by sequential scans",
    ),
    (
        "idx_scan",
        "pg_stat_user_tables_idx_scan",
        Type::Counter,
        "Number of index scans initiated on this table",
    ),
    (
        "idx_tup_fetch",
        "pg_stat_user_tables_idx_tup_fetch",
        Type::Counter,
        "Number of live rows fetched by index scans",
    ),
    (
        "n_tup_ins",
        "pg_stat_user_tables_n_tup_ins",
        Type::Counter,
        "Number of rows inserted",
    ),
    (
        "n_tup_upd",
        "pg_stat_user_tables_n_tup_upd",
        Type::Counter,
        "Number of rows updated",
    ),
    (
        "n_tup_del",
        "pg_stat_user_tables_n_tup_del",
        Type::Counter,
        "Number of rows deleted",
    ),
    (
        "n_tup_hot_upd",
        "pg_stat_user_tables_n_tup_hot_upd",
        Type::Counter,
        "Number of rows HOT updated (i.e., with no separate index update required)",
    ),
    (
        "n_live_tup",
        "pg_stat_user_tables_n_live_tup",
        Type::Gauge,
        "Estimated number of live rows",
    ),
    (
        "n_dead_tup",
        "pg_stat_user_tables_n_dead_tup",
        Type::Gauge,
        "Estimated number of dead rows",
    ),
    (
        "n_mod_since_analyze",
        "pg_stat_user_tables_n_mod_since_analyze",
        Type::Gauge,
        "Estimated number of rows changed since last analyze",
    ),
    (
        "last_vacuum",
        "pg_stat_user_tables_last_vacuum",
        Type::Gauge,
        "Last time at which this table was manually vacuumed (not counting VACUUM FULL)",
    ),
    (
        "last_autovacuum",
        "pg_stat_user_tables_last_autovacuum",
        Type::Gauge,
        "Last time at which this table was vacuumed by the autovacuum daemon",
    ),
    (
        "last_analyze",
        "pg_stat_user_tables_last_analyze",
        Type::Gauge,
        "Last time at which this table was manually analyzed",
    ),
    (
        "last_autoanalyze",
        "pg_stat_user_tables_last_autoanalyze",
        Type::Gauge,
        "Last time at which this table was analyzed by the autovacuum daemon",
    ),
    (
        "vacuum_count",
        "pg_stat_user_tables_vacuum_count",
        Type::Counter,
        "Number of times this table has been manually vacuumed (not counting VACUUM FULL)",
    ),
    (
        "autovacuum_count",
        "pg_stat_user_tables_autovacuum_count",
        Type::Counter,
        "Number of times this table has been vacuumed by the autovacuum daemon",
    ),
    (
        "analyze_count",
        "pg_stat_user_tables_analyze_count",
        Type::Counter,
        "Number of times this table has been manually analyzed",
    ),
    (
        "autoanalyze_count",
        "pg_stat_user_tables_autoanalyze_count",
        Type::Counter,
        "Number of times this table has been analyzed by the autovacuum daemon",
    ),
    (
        "heap_blks_read",
        "pg_statio_user_tables_heap_blks_read",
        Type::Counter,
        "Number of disk blocks read from this table",
    ),
    (
        "heap_blks_hit",
        "pg_statio_user_tables_heap_blks_hit",
        Type::Counter,
        "Number of buffer hits in this table",
    ),
    (
        "idx_blks_read",
        "pg_statio_user_tables_idx_blks_read",
        Type::Counter,
        "Number of disk blocks read from all indexes on this table",
    ),
    (
        "idx_blks_hit",
        "pg_statio_user_tables_idx_blks_hit",
        Type::Counter,
        "Number of buffer hits in all indexes on this table",
    ),
    (
        "toast_blks_read",
        "pg_statio_user_tables_toast_blks_read",
        Type::Counter,
        "Number of disk blocks read from this table's TOAST table (if any)",
    ),
    (
        "toast_blks_hit",
        "pg_statio_user_tables_toast_blks_hit",
        Type::Counter,
        "Number of buffer hits in this table's TOAST table (if any)",
    ),
    (
        "tidx_blks_read",
        "pg_statio_user_tables_tidx_blks_read",
        Type::Counter,
        "Number of disk blocks read from this table's TOAST table indexes (if any)",
    ),
    (
        "tidx_blks_hit",
        "pg_statio_user_tables_tidx_blks_hit",
        Type::Counter,
        "Number of buffer hits in this table's TOAST table indexes (if any)",
    ),
];

/// The page's parts that are not the tables, as text; `server` is postgres_exporter's
/// `server` label (`host:port` of the connection).
pub fn render_small(parts: &Parts, server: &str, now: SystemTime, out: &mut String) {
    let mut w = Writer::new(out);
    ages(&mut w, parts, now);
    if let Some(up) = &parts.up {
        w.family(
            "pg_up",
            "Whether the last connection to the database succeeded (1: yes)",
            Type::Gauge,
        );
        w.sample("pg_up", &[], if *up.value { 1.0 } else { 0.0 });
    }
    if let Some(d) = &parts.databases {
        stat_database(&mut w, &d.value, server);
    }
    if let Some(s) = &parts.sizes {
        w.family(
            "pg_database_size_bytes",
            "Disk space used by the database",
            Type::Gauge,
        );
        for d in s.value.iter() {
            w.sample(
                "pg_database_size_bytes",
                &[("datname", &d.datname), ("server", server)],
                d.bytes,
            );
        }
    }
    if let Some(s) = &parts.server {
        server_stats(&mut w, &s.value, server, now);
    }
    if let Some(s) = &parts.settings {
        settings(&mut w, &s.value, server);
    }
    if let Some(s) = &parts.sessions {
        sessions(&mut w, &s.value, server);
    }
    if let Some(l) = &parts.locks {
        locks(&mut w, &l.value, server);
    }
    if let Some(r) = &parts.replication {
        slots(&mut w, &r.value, server);
    }
    if let Some(s) = &parts.statements {
        statements(&mut w, &s.value);
    }
    if let Some(v) = &parts.vacuums {
        vacuums(&mut w, &v.value);
    }
    if let Some(t) = &parts.session_seconds {
        let name = "postgres_agent_session_seconds_total";
        w.family(
            name,
            "Time of sessions the sampler saw, by state and wait event type (none: on CPU)",
            Type::Counter,
        );
        for s in t.value.iter() {
            w.sample(
                name,
                &[("state", s.state), ("wait_event_type", s.wait_event_type)],
                s.seconds,
            );
        }
    }
    if let Some(l) = &parts.lock_waits {
        w.family(
            "postgres_agent_lock_waiting_sessions",
            "Sessions waiting for a lock (the locks source's last look)",
            Type::Gauge,
        );
        w.sample("postgres_agent_lock_waiting_sessions", &[], l.value.waiting);
        w.family(
            "postgres_agent_lock_wait_longest_seconds",
            "How long the longest current lock wait has lasted",
            Type::Gauge,
        );
        w.sample(
            "postgres_agent_lock_wait_longest_seconds",
            &[],
            l.value.longest_s,
        );
    }
    for (name, c) in &parts.custom {
        custom(&mut w, name, &c.value);
    }
    if let Some(r) = &parts.roles {
        w.family(
            "pg_roles_connection_limit",
            "Connection limit set for the role",
            Type::Gauge,
        );
        for (role, limit) in r.value.iter() {
            w.sample("pg_roles_connection_limit", &[("rolname", role)], *limit);
        }
    }
}

/// A name made of what a metric or label name may hold (`[a-zA-Z0-9_]`).
fn metric_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A `[[custom]]` query's families: `pg_custom_<name>_<column>` for each gauge and
/// counter column, labelled by the label columns and `datname`; as many samples as it
/// has rows (at most `max_rows` per database).
fn custom(w: &mut Writer, name: &str, c: &board::CustomRows) {
    let labels: Vec<String> = c
        .labels
        .iter()
        .map(|l| match metric_name(l).as_str() {
            // Added to every sample of the page, and ours.
            "server" | "datname" => format!("{}_label", metric_name(l)),
            m => m.to_string(),
        })
        .collect();
    let columns = c
        .gauges
        .iter()
        .map(|g| (g, Type::Gauge, "gauge"))
        .chain(c.counters.iter().map(|g| (g, Type::Counter, "counter")));
    for (i, (col, ty, what)) in columns.enumerate() {
        let family = format!("pg_custom_{name}_{}", metric_name(col));
        w.family(
            &family,
            &format!("Column {col} of the custom query {name} ({what})"),
            ty,
        );
        for row in &c.rows {
            let Some(Some(v)) = row.values.get(i) else {
                continue;
            };
            let mut l: Vec<(&str, &str)> = labels
                .iter()
                .map(String::as_str)
                .zip(row.labels.iter().map(String::as_str))
                .collect();
            l.push(("datname", &row.datname));
            w.sample(&family, &l, *v);
        }
    }
}

/// postgres_exporter's `stat_statements` families: the statements with the most time.
fn statements(w: &mut Writer, all: &[board::StatementTotals]) {
    type Of = fn(&board::StatementTotals) -> f64;
    let families: [(&str, &str, Of); 5] = [
        (
            "pg_stat_statements_calls_total",
            "Number of times executed",
            |s| s.calls,
        ),
        (
            "pg_stat_statements_seconds_total",
            "Total time spent in the statement, in seconds",
            |s| s.seconds,
        ),
        (
            "pg_stat_statements_rows_total",
            "Total number of rows retrieved or affected by the statement",
            |s| s.rows,
        ),
        (
            "pg_stat_statements_block_read_seconds_total",
            "Total time the statement spent reading blocks, in seconds",
            |s| s.block_read_seconds,
        ),
        (
            "pg_stat_statements_block_write_seconds_total",
            "Total time the statement spent writing blocks, in seconds",
            |s| s.block_write_seconds,
        ),
    ];
    if all.is_empty() {
        return;
    }
    let ids: Vec<String> = all.iter().map(|s| s.queryid.to_string()).collect();
    for (name, help, of) in families {
        w.family(name, help, Type::Counter);
        for (s, id) in all.iter().zip(&ids) {
            w.sample(
                name,
                &[("datname", &s.datname), ("queryid", id), ("user", &s.user)],
                of(s),
            );
        }
    }
}

/// How old each reading is.
fn ages(w: &mut Writer, parts: &Parts, now: SystemTime) {
    let all = parts.ages(now);
    w.family(
        "postgres_agent_reading_age_seconds",
        "How old the reading behind the database's metrics of this part is, seconds",
        Type::Gauge,
    );
    for (name, a) in all {
        if let Some(a) = a {
            w.sample(
                "postgres_agent_reading_age_seconds",
                &[("reading", name)],
                a,
            );
        }
    }
}

/// Every numeric column of `rows` (a row: labels, then its columns), in name order.
fn columns<'a>(rows: impl Iterator<Item = &'a Row>) -> Vec<&'a str> {
    let mut cols: Vec<&str> = Vec::new();
    for r in rows {
        for (k, v) in r {
            if value_of(Some(v)).is_some() && !cols.contains(&k.as_str()) {
                cols.push(k);
            }
        }
    }
    cols.sort_unstable();
    cols
}

fn stat_database(w: &mut Writer, dbs: &[board::DatabaseStats], server: &str) {
    let ids: Vec<String> = dbs.iter().map(|d| d.datid.to_string()).collect();
    for col in columns(dbs.iter().map(|d| &d.stats)) {
        let (ty, help) = STAT_DATABASE
            .iter()
            .find(|(c, _, _)| *c == col)
            .map_or((Type::Untyped, col), |(_, t, h)| (*t, *h));
        let name = format!("pg_stat_database_{col}");
        w.family(&name, help, ty);
        for (d, id) in dbs.iter().zip(&ids) {
            if let Some(v) = value_of(d.stats.get(col)) {
                let labels = [
                    ("datid", id.as_str()),
                    ("datname", d.datname.as_str()),
                    ("server", server),
                ];
                w.sample(&name, &labels, v);
            }
        }
    }
    // postgres_exporter's stat_database collector (0.13+) has active time in seconds.
    if dbs.iter().any(|d| d.stats.contains_key("active_time")) {
        let name = "pg_stat_database_active_time_seconds_total";
        w.family(
            name,
            "Time spent executing SQL statements in this database, in seconds",
            Type::Counter,
        );
        for (d, id) in dbs.iter().zip(&ids) {
            if let Some(ms) = d.stats.get("active_time").and_then(Value::as_f64) {
                let labels = [
                    ("datid", id.as_str()),
                    ("datname", d.datname.as_str()),
                    ("server", server),
                ];
                w.sample(name, &labels, ms / 1000.0);
            }
        }
    }
    let named: Vec<&board::DatabaseStats> = dbs.iter().filter(|d| d.datid != 0).collect();
    w.family(
        "pg_database_connection_limit",
        "Connection limit set for the database",
        Type::Gauge,
    );
    for d in &named {
        if let Some(v) = d.connection_limit {
            w.sample(
                "pg_database_connection_limit",
                &[("datname", &d.datname)],
                v,
            );
        }
    }
    for (name, help, of) in [
        (
            "pg_database_wraparound_age_datfrozenxid_seconds",
            "Age of the oldest transaction ID that has not been frozen.",
            (|d: &board::DatabaseStats| d.xid_age) as fn(&board::DatabaseStats) -> Option<f64>,
        ),
        (
            "pg_database_wraparound_age_datminmxid_seconds",
            "Age of the oldest multi-transaction ID that has been replaced with a transaction ID.",
            |d: &board::DatabaseStats| d.mxid_age,
        ),
    ] {
        w.family(name, help, Type::Gauge);
        for d in named.iter().filter(|d| d.allow_connections) {
            if let Some(v) = of(d) {
                w.sample(name, &[("datname", &d.datname)], v);
            }
        }
    }
    let with: Vec<(&board::DatabaseStats, &String, &Row)> = dbs
        .iter()
        .zip(&ids)
        .filter_map(|(d, id)| d.conflicts.as_ref().map(|c| (d, id, c)))
        .collect();
    for col in columns(with.iter().map(|(_, _, c)| *c)) {
        let name = format!("pg_stat_database_conflicts_{col}");
        // The columns postgres_exporter types; a newer one (17's
        // confl_active_logicalslot) it leaves untyped.
        let ty = if CONFLICTS.contains(&col) {
            Type::Counter
        } else {
            Type::Untyped
        };
        w.family(
            &name,
            &format!("Number of queries in this database canceled by recovery conflicts ({col})"),
            ty,
        );
        for (d, id, c) in &with {
            if let Some(v) = value_of(c.get(col)) {
                let labels = [
                    ("datid", id.as_str()),
                    ("datname", d.datname.as_str()),
                    ("server", server),
                ];
                w.sample(&name, &labels, v);
            }
        }
    }
}

fn server_stats(w: &mut Writer, s: &board::ServerStats, server: &str, now: SystemTime) {
    for (suffix, row, col, help) in BGWRITER {
        let r = if *row == "bgwriter" {
            &s.bgwriter
        } else {
            &s.checkpointer
        };
        // A column the server no longer has (17 moved and dropped some): no family.
        let Some(v) = r.get(*col).and_then(|v| value_of(Some(v))) else {
            continue;
        };
        let name = format!("pg_stat_bgwriter_{suffix}");
        w.family(&name, help, Type::Counter);
        w.sample(&name, &[("server", server)], v);
    }
    let label = [("server", server)];
    for (col, help) in [
        (
            "archived_count",
            "Number of WAL files that have been successfully archived",
        ),
        (
            "failed_count",
            "Number of failed attempts for archiving WAL files",
        ),
    ] {
        if let Some(v) = s.archiver.get(col).and_then(|v| value_of(Some(v))) {
            let name = format!("pg_stat_archiver_{col}");
            w.family(&name, help, Type::Counter);
            w.sample(&name, &label, v);
        }
    }
    let now_s = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let last = board::unix_seconds(s.archiver.get("last_archived_time"));
    w.family(
        "pg_stat_archiver_last_archive_age",
        "Time in seconds since last WAL segment was successfully archived",
        Type::Gauge,
    );
    w.sample(
        "pg_stat_archiver_last_archive_age",
        &label,
        last.map_or(f64::NAN, |t| (now_s - t).max(0.0)),
    );
    if !s.version.is_empty() {
        w.family(
            "pg_static",
            "Version string as reported by postgres",
            Type::Untyped,
        );
        let v = s.version_num;
        let short = format!("{}.{}.0", v / 10_000, v % 10_000);
        w.sample(
            "pg_static",
            &[
                ("server", server),
                ("short_version", &short),
                ("version", &s.version),
            ],
            1.0,
        );
    }
    if let Some(t) = s.postmaster_start_time {
        w.family(
            "pg_postmaster_start_time_seconds",
            "Time at which postmaster started",
            Type::Gauge,
        );
        w.sample("pg_postmaster_start_time_seconds", &label, t);
    }
    for (col, help) in CHECKPOINTER {
        let Some(v) = s.checkpointer.get(*col).and_then(|v| value_of(Some(v))) else {
            continue;
        };
        let name = format!("pg_stat_checkpointer_{col}_total");
        w.family(&name, help, Type::Counter);
        w.sample(&name, &[], v);
    }
    if let Some((segments, bytes)) = s.wal_segments {
        w.family("pg_wal_segments", "Number of WAL segments", Type::Gauge);
        w.sample("pg_wal_segments", &[], segments);
        w.family(
            "pg_wal_size_bytes",
            "Total size of WAL segments",
            Type::Gauge,
        );
        w.sample("pg_wal_size_bytes", &[], bytes);
        if let Some(lsn) = s.wal_lsn_bytes {
            w.family(
                "pg_wal_lsn_location_bytes",
                "WAL Log Sequence Number in bytes",
                Type::Gauge,
            );
            w.sample("pg_wal_lsn_location_bytes", &[], lsn);
        }
    }
    if let (Some(lsn), false) = (s.wal_lsn_bytes, s.in_recovery) {
        w.family("pg_xlog_location_bytes", "Postgres LSN (log sequence number) being generated on primary or replayed on replica (truncated to low 52 bits)", Type::Gauge);
        w.sample("pg_xlog_location_bytes", &[], lsn % 2f64.powi(52));
    }
    if let Some(last) = s.replay_lag_s {
        w.family(
            "pg_replication_lag_seconds",
            "Replication lag behind master in seconds",
            Type::Gauge,
        );
        w.sample(
            "pg_replication_lag_seconds",
            &[],
            if s.replay_caught_up { 0.0 } else { last },
        );
        w.family(
            "pg_replication_last_replay_seconds",
            "Age of last replay in seconds",
            Type::Gauge,
        );
        w.sample("pg_replication_last_replay_seconds", &[], last);
    }
    if let Some(lag) = s.replay_lag_s {
        w.family(
            "pg_replication_lag",
            "Replication lag behind master in seconds",
            Type::Gauge,
        );
        w.sample("pg_replication_lag", &label, lag);
        w.family(
            "pg_replication_is_replica",
            "Indicates if the server is a replica",
            Type::Gauge,
        );
        w.sample(
            "pg_replication_is_replica",
            &label,
            if s.in_recovery { 1.0 } else { 0.0 },
        );
    }
}

/// A setting's value and unit suffix as postgres_exporter shows it: times in seconds,
/// sizes in bytes, switches as 1 or 0; `None` for a unit it does not know.
pub fn setting_value(s: &board::Setting) -> Option<(f64, &'static str)> {
    if s.vartype == "bool" {
        return Some((if s.setting == "on" { 1.0 } else { 0.0 }, ""));
    }
    let v: f64 = s.setting.parse().ok()?;
    let (factor, suffix) = match s.unit.as_str() {
        "" => return Some((v, "")),
        "us" => (1e-6, "seconds"),
        "ms" => (1e-3, "seconds"),
        "s" => (1.0, "seconds"),
        "min" => (60.0, "seconds"),
        "h" => (3600.0, "seconds"),
        "d" => (86_400.0, "seconds"),
        "B" => (1.0, "bytes"),
        unit => {
            // kB, MB, GB, TB and block units such as 8kB, 16MB.
            let digits = unit.len() - unit.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            let (n, base) = unit.split_at(digits);
            let n: f64 = if n.is_empty() { 1.0 } else { n.parse().ok()? };
            let power = match base {
                "kB" => 1,
                "MB" => 2,
                "GB" => 3,
                "TB" => 4,
                _ => return None,
            };
            (n * 1024f64.powi(power), "bytes")
        }
    };
    // -1 means "off" for many settings: kept as it is.
    Some((if v == -1.0 { v } else { v * factor }, suffix))
}

fn settings(w: &mut Writer, all: &[board::Setting], server: &str) {
    for s in all {
        let Some((v, suffix)) = setting_value(s) else {
            continue;
        };
        let base = s.name.replace('.', "_");
        let (name, help) = if suffix.is_empty() {
            (format!("pg_settings_{base}"), s.short_desc.clone())
        } else {
            (
                format!("pg_settings_{base}_{suffix}"),
                format!("{} [Units converted to {suffix}.]", s.short_desc),
            )
        };
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        w.family(&name, &help, Type::Gauge);
        w.sample(&name, &[("server", server)], v);
    }
}

fn sessions(w: &mut Writer, all: &board::Sessions, server: &str) {
    let s = &all.by_state;
    let mut by: BTreeMap<(&str, &str), (f64, f64)> = BTreeMap::new();
    for d in &s.databases {
        for st in STATES {
            by.insert((d, st), (0.0, 0.0));
        }
    }
    for c in &s.counts {
        by.insert((&c.datname, &c.state), (c.count, c.max_tx_duration));
    }
    for (name, help, max_tx) in [
        (
            "pg_stat_activity_count",
            "number of connections in this state",
            false,
        ),
        (
            "pg_stat_activity_max_tx_duration",
            "max duration in seconds any active transaction has been running",
            true,
        ),
    ] {
        w.family(name, help, Type::Gauge);
        for ((d, st), (n, m)) in &by {
            let v = if max_tx { *m } else { *n };
            w.sample(
                name,
                &[("datname", d), ("server", server), ("state", st)],
                v,
            );
        }
    }
    w.family(
        "pg_long_running_transactions",
        "Current number of long running transactions",
        Type::Gauge,
    );
    w.sample("pg_long_running_transactions", &[], all.in_transaction);
    w.family(
        "pg_long_running_transactions_oldest_timestamp_seconds",
        "The current maximum transaction age in seconds",
        Type::Gauge,
    );
    w.sample(
        "pg_long_running_transactions_oldest_timestamp_seconds",
        &[],
        all.oldest_transaction_s,
    );
    w.family(
        "pg_long_running_transactions_count",
        "Number of transactions running longer than threshold",
        Type::Gauge,
    );
    for (t, n) in &all.longer_than {
        w.sample(
            "pg_long_running_transactions_count",
            &[("threshold", &t.to_string())],
            *n,
        );
    }
    w.family(
        "pg_stat_activity_autovacuum_timestamp_seconds",
        "Start timestamp of the vacuum process in seconds",
        Type::Gauge,
    );
    for (rel, t) in &all.autovacuum {
        w.sample(
            "pg_stat_activity_autovacuum_timestamp_seconds",
            &[("relname", rel)],
            *t,
        );
    }
    w.family(
        "pg_process_idle_seconds",
        "Idle time of server processes",
        Type::Histogram,
    );
    for (app, h) in &all.idle {
        w.histogram("pg_process_idle_seconds", &[("application_name", app)], h);
    }
}

fn locks(w: &mut Writer, l: &board::PerDatabase<board::LockCount>, server: &str) {
    let mut by: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    for d in &l.databases {
        for m in LOCK_MODES {
            by.insert((d, m), 0.0);
        }
    }
    for c in &l.counts {
        by.insert((&c.datname, &c.mode), c.count);
    }
    w.family("pg_locks_count", "Number of locks", Type::Gauge);
    for ((d, m), n) in &by {
        w.sample(
            "pg_locks_count",
            &[("datname", d), ("mode", m), ("server", server)],
            *n,
        );
    }
}

/// Standbys streaming from this server: postgres_exporter's `pg_stat_replication`
/// families, and their lag in seconds.
fn standbys(w: &mut Writer, r: &board::Replication, server: &str) {
    if r.standbys.is_empty() {
        return;
    }
    let text = |row: &Row, k: &str| {
        row.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    // postgres_exporter (0.11) fills its `slot_name` label of these with the walsender's
    // pid: kept, so that its dashboards find the same series.
    let rows: Vec<(String, String, String, String, &Row)> = r
        .standbys
        .iter()
        .map(|s| {
            let pid = s.get("pid").and_then(Value::as_i64).map(|p| p.to_string());
            (
                text(s, "application_name"),
                text(s, "client_addr"),
                text(s, "state"),
                pid.unwrap_or_default(),
                s,
            )
        })
        .collect();
    for (family, help, of) in [
        (
            "pg_stat_replication_pg_current_wal_lsn_bytes",
            "WAL position in bytes",
            (|_: &Row, here: Option<f64>| here) as fn(&Row, Option<f64>) -> Option<f64>,
        ),
        (
            "pg_stat_replication_pg_wal_lsn_diff",
            "Lag in bytes between master and slave",
            |s: &Row, _| s.get("replay_lag_bytes").and_then(Value::as_f64),
        ),
        (
            "pg_stat_replication_reply_time",
            "Send time of last reply message received from standby server",
            |s: &Row, _| value_of(s.get("reply_time")),
        ),
    ] {
        let ty = if family.ends_with("reply_time") {
            Type::Untyped
        } else {
            Type::Gauge
        };
        w.family(family, help, ty);
        for (app, addr, state, pid, s) in &rows {
            if let Some(v) = of(s, r.wal_lsn_bytes) {
                w.sample(
                    family,
                    &[
                        ("application_name", app),
                        ("client_addr", addr),
                        ("server", server),
                        ("slot_name", pid),
                        ("state", state),
                    ],
                    v,
                );
            }
        }
    }
    for (family, col, help) in [
        (
            "postgres_agent_standby_write_lag_seconds",
            "write_lag_s",
            "write_lag of pg_stat_replication: WAL flushed here until the standby wrote it",
        ),
        (
            "postgres_agent_standby_flush_lag_seconds",
            "flush_lag_s",
            "flush_lag of pg_stat_replication: WAL flushed here until the standby flushed it",
        ),
        (
            "postgres_agent_standby_replay_lag_seconds",
            "replay_lag_s",
            "replay_lag of pg_stat_replication: WAL flushed here until the standby replayed it",
        ),
    ] {
        w.family(family, help, Type::Gauge);
        for (app, addr, _, _, s) in &rows {
            // NULL once the standby has caught up and nothing new was written: no lag.
            let v = s.get(col).and_then(Value::as_f64).unwrap_or(0.0);
            w.sample(
                family,
                &[("application_name", app), ("client_addr", addr)],
                v,
            );
        }
    }
}

/// A standby's WAL receiver: postgres_exporter's `stat_wal_receiver` families (only
/// with a slot, as it has them). LSNs in bytes, low 52 bits; times in Unix seconds.
fn receiver(w: &mut Writer, r: &board::Replication) {
    let Some(rx) = &r.receiver else { return };
    let text = |k: &str| rx.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(host), Some(slot)) = (text("sender_host"), text("slot_name")) else {
        return;
    };
    let labels = [
        ("slot_name", slot.as_str()),
        ("upstream_host", host.as_str()),
    ];
    let status = match text("status").as_deref() {
        Some("stopped") => 0.0,
        Some("starting") => 1.0,
        Some("streaming") => 2.0,
        Some("waiting") => 3.0,
        Some("restarting") => 4.0,
        Some("stopping") => -1.0,
        Some(_) => -2.0,
        None => -3.0,
    };
    w.family(
        "pg_stat_wal_receiver_status",
        "Activity status of the WAL receiver process",
        Type::Gauge,
    );
    w.sample("pg_stat_wal_receiver_status", &labels, status);
    let lsn = |k: &str| board::lsn_bytes(rx.get(k)).map(|b| b % 2f64.powi(52));
    let time = |k: &str| board::unix_seconds(rx.get(k));
    let num = |k: &str| rx.get(k).and_then(Value::as_f64);
    let upstream = slot
        .strip_prefix("repmgr_slot_")
        .and_then(|n| n.parse::<f64>().ok());
    // 13 renamed received_lsn to flushed_lsn.
    let flushed = lsn("flushed_lsn").or_else(|| lsn("received_lsn"));
    for (name, help, ty, v) in [
        ("receive_start_lsn", "First write-ahead log location used when WAL receiver is started represented as a decimal", Type::Counter, lsn("receive_start_lsn")),
        ("receive_start_tli", "First timeline number used when WAL receiver is started", Type::Gauge, num("receive_start_tli")),
        ("flushed_lsn", "Last write-ahead log location already received and flushed to disk", Type::Counter, flushed),
        ("received_tli", "Timeline number of last write-ahead log location received and flushed to disk", Type::Gauge, num("received_tli")),
        ("last_msg_send_time", "Send time of last message received from origin WAL sender", Type::Counter, time("last_msg_send_time")),
        ("last_msg_receipt_time", "Receipt time of last message received from origin WAL sender", Type::Counter, time("last_msg_receipt_time")),
        ("latest_end_lsn", "Last write-ahead log location reported to origin WAL sender as integer", Type::Counter, lsn("latest_end_lsn")),
        ("latest_end_time", "Time of last write-ahead log location reported to origin WAL sender", Type::Counter, time("latest_end_time")),
        ("upstream_node", "Node ID of the upstream node", Type::Gauge, Some(upstream.unwrap_or(0.0))),
    ] {
        let name = format!("pg_stat_wal_receiver_{name}");
        w.family(&name, help, ty);
        w.sample(&name, &labels, v.unwrap_or(0.0));
    }
}

/// VACUUMs in progress: postgres_exporter's `stat_progress_vacuum` families.
fn vacuums(w: &mut Writer, all: &[board::VacuumProgress]) {
    const PHASES: &[&str] = &[
        "initializing",
        "scanning heap",
        "vacuuming indexes",
        "vacuuming heap",
        "cleaning up indexes",
        "truncating heap",
        "performing final cleanup",
    ];
    w.family(
        "pg_stat_progress_vacuum_phase",
        "Current vacuum phase (1 = active, 0 = inactive). Label 'phase' is human-readable.",
        Type::Gauge,
    );
    for v in all {
        for phase in PHASES {
            let on = v.phase.as_deref() == Some(*phase);
            w.sample(
                "pg_stat_progress_vacuum_phase",
                &[
                    ("datname", &v.datname),
                    ("phase", phase),
                    ("relname", &v.relname),
                ],
                if on { 1.0 } else { 0.0 },
            );
        }
    }
    for (name, help, columns) in [
        (
            "heap_blks",
            "Total number of heap blocks in the table being vacuumed.",
            &["heap_blks_total"][..],
        ),
        (
            "heap_blks_scanned",
            "Number of heap blocks scanned so far.",
            &["heap_blks_scanned"],
        ),
        (
            "heap_blks_vacuumed",
            "Number of heap blocks vacuumed so far.",
            &["heap_blks_vacuumed"],
        ),
        (
            "index_vacuums",
            "Number of completed index vacuum cycles.",
            &["index_vacuum_count"],
        ),
        (
            "max_dead_tuples",
            "Maximum number of dead tuples that can be stored before cleanup is performed.",
            &["max_dead_tuples", "max_dead_tuple_bytes"],
        ),
        (
            "num_dead_tuples",
            "Current number of dead tuples found so far.",
            &["num_dead_tuples", "num_dead_item_ids"],
        ),
    ] {
        let name = format!("pg_stat_progress_vacuum_{name}");
        w.family(&name, help, Type::Gauge);
        for v in all {
            let value = columns
                .iter()
                .find_map(|c| v.progress.get(*c).and_then(Value::as_f64))
                .unwrap_or(0.0);
            w.sample(
                &name,
                &[("datname", &v.datname), ("relname", &v.relname)],
                value,
            );
        }
    }
}

fn slots(w: &mut Writer, r: &board::Replication, server: &str) {
    standbys(w, r, server);
    receiver(w, r);
    if r.slots.is_empty() {
        return;
    }
    let text = |row: &Row, k: &str| {
        row.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let rows: Vec<(String, String, &Row)> = r
        .slots
        .iter()
        .map(|s| (text(s, "slot_name"), text(s, "database"), s))
        .collect();
    for (family, col, help) in [
        (
            "pg_replication_slots_active",
            "active",
            "Flag indicating if the slot is active",
        ),
        (
            "pg_replication_slots_pg_wal_lsn_diff",
            "retained_bytes",
            "Replication lag in bytes",
        ),
    ] {
        w.family(family, help, Type::Gauge);
        for (name, db, s) in &rows {
            if let Some(v) = value_of(s.get(col)) {
                w.sample(
                    family,
                    &[("database", db), ("server", server), ("slot_name", name)],
                    v,
                );
            }
        }
    }
    let typed: Vec<(String, String, &Row)> = r
        .slots
        .iter()
        .map(|s| (text(s, "slot_name"), text(s, "slot_type"), s))
        .collect();
    w.family(
        "pg_replication_slot_slot_current_wal_lsn",
        "current wal lsn value",
        Type::Gauge,
    );
    for (name, ty, _) in &typed {
        w.sample(
            "pg_replication_slot_slot_current_wal_lsn",
            &[("slot_name", name), ("slot_type", ty)],
            r.wal_lsn_bytes.unwrap_or(0.0),
        );
    }
    w.family(
        "pg_replication_slot_slot_confirmed_flush_lsn",
        "last lsn confirmed flushed to the replication slot",
        Type::Gauge,
    );
    for (name, ty, s) in &typed {
        if s.get("active").and_then(Value::as_bool) == Some(true) {
            let v = board::lsn_bytes(s.get("confirmed_flush_lsn")).unwrap_or(0.0);
            w.sample(
                "pg_replication_slot_slot_confirmed_flush_lsn",
                &[("slot_name", name), ("slot_type", ty)],
                v,
            );
        }
    }
    w.family(
        "pg_replication_slot_slot_is_active",
        "whether the replication slot is active or not",
        Type::Gauge,
    );
    for (name, ty, s) in &typed {
        let active = s.get("active").and_then(Value::as_bool) == Some(true);
        w.sample(
            "pg_replication_slot_slot_is_active",
            &[("slot_name", name), ("slot_type", ty)],
            if active { 1.0 } else { 0.0 },
        );
    }
    w.family(
        "pg_replication_slot_safe_wal_size_bytes",
        "number of bytes that can be written to WAL such that this slot is not in danger of getting in state lost",
        Type::Gauge,
    );
    for (name, ty, s) in &typed {
        if let Some(v) = s.get("safe_wal_size").and_then(Value::as_f64) {
            w.sample(
                "pg_replication_slot_safe_wal_size_bytes",
                &[("slot_name", name), ("slot_type", ty)],
                v,
            );
        }
    }
    w.family(
        "pg_replication_slot_wal_status",
        "availability of WAL files claimed by this slot",
        Type::Gauge,
    );
    for (name, ty, s) in &typed {
        if let Some(status) = s.get("wal_status").and_then(Value::as_str) {
            w.sample(
                "pg_replication_slot_wal_status",
                &[
                    ("slot_name", name),
                    ("slot_type", ty),
                    ("wal_status", status),
                ],
                1.0,
            );
        }
    }
}

/// Lines of table families a chunk holds before it is handed to the connection.
const CHUNK_BYTES: usize = 256 * 1024;

/// `pg_stat_user_indexes` and `pg_statio_user_indexes` families: the column of
/// [`board::INDEX_COLUMNS`], the family, its type and help.
const INDEX_FAMILIES: &[(&str, &str, Type, &str)] = &[
    (
        "idx_scan",
        "pg_stat_user_indexes_idx_scans_total",
        Type::Counter,
        "Number of index scans initiated on this index",
    ),
    (
        "idx_tup_read",
        "pg_stat_user_indexes_idx_tup_reads_total",
        Type::Counter,
        "Number of index entries returned by scans on this index",
    ),
    (
        "idx_tup_fetch",
        "pg_stat_user_indexes_idx_tup_fetches_total",
        Type::Counter,
        "Number of live table rows fetched by simple index scans using this index",
    ),
    (
        "idx_blks_read",
        "pg_statio_user_indexes_idx_blks_read_total",
        Type::Counter,
        "Number of disk blocks read from this index",
    ),
    (
        "idx_blks_hit",
        "pg_statio_user_indexes_idx_blks_hit_total",
        Type::Counter,
        "Number of buffer hits in this index",
    ),
];

/// Several servers' pages of the small families as one: each family named once, its
/// series of every server together, and every series labelled with its server (a
/// family the exporter writes without `server`, `pg_up` say, gets it here, so two
/// servers' series never collide).
pub fn merge_servers(pages: &[(String, &str)], out: &mut String) {
    // Each family's header and samples, in the order first seen.
    let mut families: Vec<(String, String, String)> = Vec::new();
    let mut at: BTreeMap<String, usize> = BTreeMap::new();
    for (text, server) in pages {
        let mut current = usize::MAX;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default().to_string();
                current = match at.get(&name) {
                    Some(i) => *i,
                    None => {
                        families.push((name.clone(), format!("{line}\n"), String::new()));
                        at.insert(name, families.len() - 1);
                        families.len() - 1
                    }
                };
                continue;
            }
            let Some((_, head, samples)) = families.get_mut(current) else {
                continue;
            };
            if line.starts_with("# TYPE ") {
                if !head.contains("# TYPE ") {
                    head.push_str(line);
                    head.push('\n');
                }
                continue;
            }
            with_server(line, server, samples);
        }
    }
    for (_, head, samples) in families {
        out.push_str(&head);
        out.push_str(&samples);
    }
}

/// A sample line with a `server` label, added unless it has one. A label is `server`
/// when its name follows `{` or `,`: in a value, a `"` is always escaped, so
/// `,server="` cannot be part of one.
fn with_server(line: &str, server: &str, out: &mut String) {
    let labelled = line
        .find('{')
        .filter(|b| line.find(' ').is_none_or(|sp| *b < sp));
    match labelled {
        Some(_) if line.contains("{server=\"") || line.contains(",server=\"") => {
            out.push_str(line);
        }
        Some(b) => {
            out.push_str(&line[..=b]);
            out.push_str("server=\"");
            escape_label(out, server);
            out.push_str("\",");
            out.push_str(&line[b + 1..]);
        }
        None => {
            let (name, rest) = line.split_once(' ').unwrap_or((line, ""));
            out.push_str(name);
            out.push_str("{server=\"");
            escape_label(out, server);
            out.push_str("\"} ");
            out.push_str(rest);
        }
    }
    out.push('\n');
}

/// The table and index families, rendered a chunk at a time (many thousands of tables
/// make a page of text; a chunk is written to the socket before the next is made).
pub struct TablePages {
    /// Every server's rows, each with its server's place in `servers`.
    rows: Vec<(Arc<board::TableRow>, u16)>,
    /// The end of a table's labels per server: `,server="…"} `.
    servers: Vec<String>,
    /// What an index's labels get between its table's and its own, per server:
    /// `,server="…"` when several servers share the page (one server's index series
    /// are the exporter's, without it), else nothing.
    index_servers: Vec<String>,
    /// Each index series' table (in `rows`) and place among its indexes.
    index_of: Vec<(u32, u32)>,
    /// The family being written: the table families, then the index families.
    family: usize,
    /// The next series of the family to write.
    next: usize,
}

impl TablePages {
    /// The families of `rows`, one server's.
    pub fn new(rows: Arc<Tables>, server: &str) -> TablePages {
        TablePages::of_servers(vec![(rows, server.to_string())])
    }

    /// The families of several servers' rows, each family's series of every server
    /// together (an exposition names a family once), told apart by `server`.
    pub fn of_servers(boards: Vec<(Arc<Tables>, String)>) -> TablePages {
        let fleet = boards.len() > 1;
        let mut servers = Vec::with_capacity(boards.len());
        let mut index_servers = Vec::with_capacity(boards.len());
        let mut rows = Vec::new();
        for (no, (tables, server)) in boards.iter().enumerate() {
            let mut label = String::from(",server=\"");
            escape_label(&mut label, server);
            label.push('"');
            index_servers.push(if fleet { label.clone() } else { String::new() });
            label.push_str("} ");
            servers.push(label);
            rows.extend(tables.rows.values().map(|r| (r.clone(), no as u16)));
        }
        let index_of = rows
            .iter()
            .enumerate()
            .flat_map(|(t, (r, _))| (0..r.indexes.len()).map(move |k| (t as u32, k as u32)))
            .collect();
        TablePages {
            rows,
            servers,
            index_servers,
            index_of,
            family: 0,
            next: 0,
        }
    }

    /// The family `f` (tables', then indexes'): its name, help and type, whether it is an
    /// index family, and its column's place in the rows' values.
    fn family(f: usize) -> Option<(&'static str, &'static str, Type, bool, usize)> {
        let position = |columns: &[&str], col: &str| {
            columns.iter().position(|c| *c == col).unwrap_or(usize::MAX)
        };
        if let Some((col, name, ty, help)) = TABLE_FAMILIES.get(f) {
            return Some((name, help, *ty, false, position(board::TABLE_COLUMNS, col)));
        }
        let (col, name, ty, help) = INDEX_FAMILIES.get(f - TABLE_FAMILIES.len())?;
        Some((name, help, *ty, true, position(&board::INDEX_COLUMNS, col)))
    }
}

impl Iterator for TablePages {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(CHUNK_BYTES + 512);
        while let Some((name, help, ty, index, col)) = TablePages::family(self.family) {
            if out.len() >= CHUNK_BYTES {
                break;
            }
            let len = if index {
                self.index_of.len()
            } else {
                self.rows.len()
            };
            if self.next == 0 && len > 0 {
                let mut head = String::new();
                Writer::new(&mut head).family(name, help, ty);
                out.extend_from_slice(head.as_bytes());
            }
            while self.next < len {
                out.extend_from_slice(name.as_bytes());
                let v = if index {
                    let (t, k) = self.index_of[self.next];
                    let (r, server) = &self.rows[t as usize];
                    let i = &r.indexes[k as usize];
                    out.extend_from_slice(r.labels.as_bytes());
                    out.extend_from_slice(self.index_servers[*server as usize].as_bytes());
                    out.extend_from_slice(i.labels.as_bytes());
                    i.values.get(col)
                } else {
                    let (r, server) = &self.rows[self.next];
                    out.extend_from_slice(r.labels.as_bytes());
                    out.extend_from_slice(self.servers[*server as usize].as_bytes());
                    r.values.get(col)
                };
                push_value_bytes(&mut out, v.copied().unwrap_or(f64::NAN));
                out.push(b'\n');
                self.next += 1;
                if out.len() >= CHUNK_BYTES {
                    break;
                }
            }
            if self.next >= len {
                self.family += 1;
                self.next = 0;
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

#[cfg(test)]
mod tests;
