//! The database health sources: databases, tables and indexes, vacuum progress, the
//! xmin horizon, replication, the server's background statistics and settings. Each is
//! its own collector (its own interval, switch, state and restarts); they borrow the
//! agent's shared connections like every other source.
//!
//! Statistics views change their columns between major versions, so most of these
//! sources read rows as JSON (`to_jsonb(view)`): every column the server has is shipped
//! under the server's own name, and a column added in a new release arrives without a
//! change here. What needs a name of ours (one checkpointer shape from 12 to 18) is
//! mapped in SQL per version. Counters become deltas through [`counters`].

pub mod counters;
pub mod databases;
pub mod horizon;
pub mod progress;
pub mod replication;
pub mod server;
pub mod settings;
pub mod tables;

use serde_json::{Map, Value};
use tokio_postgres::types::ToSql;

use super::Spec;
use crate::db::text::Lossy;
use crate::db::DbError;
use crate::model::EventKind;

/// The database health sources, in start order: one row each (their keys in
/// `[collection]` are their kinds' rows of [`crate::base::KINDS`]).
pub const SOURCES: &[Spec] = &[
    Spec {
        kind: EventKind::PgDatabases,
        interval: health_interval!(EventKind::PgDatabases),
        make: |c, _| Box::new(databases::DatabasesSource::new(c)),
        reads_statistics: true,
    },
    Spec {
        kind: EventKind::PgTables,
        interval: health_interval!(EventKind::PgTables),
        make: |c, _| Box::new(tables::TablesSource::new(c)),
        reads_statistics: true,
    },
    Spec {
        kind: EventKind::PgVacuumProgress,
        interval: health_interval!(EventKind::PgVacuumProgress),
        make: |c, _| Box::new(progress::ProgressSource::new(c)),
        reads_statistics: false,
    },
    Spec {
        kind: EventKind::PgXminHorizon,
        interval: health_interval!(EventKind::PgXminHorizon),
        make: |c, _| Box::new(horizon::HorizonSource::new(c)),
        reads_statistics: true,
    },
    Spec {
        kind: EventKind::PgReplication,
        interval: health_interval!(EventKind::PgReplication),
        make: |c, _| Box::new(replication::ReplicationSource::new(c)),
        reads_statistics: false,
    },
    Spec {
        kind: EventKind::PgServerStats,
        interval: health_interval!(EventKind::PgServerStats),
        make: |c, _| Box::new(server::ServerStatsSource::new(c)),
        reads_statistics: true,
    },
    Spec {
        kind: EventKind::PgSettings,
        interval: health_interval!(EventKind::PgSettings),
        make: |c, _| Box::new(settings::SettingsSource::new(c)),
        reads_statistics: false,
    },
    Spec {
        kind: EventKind::PgPlans,
        interval: health_interval!(EventKind::PgPlans),
        make: |c, mode| {
            Box::new(crate::sources::plans::PlansSource::new(
                c,
                mode == crate::sources::Mode::Daemon,
            ))
        },
        reads_statistics: false,
    },
];

/// One row as the server's JSON object, by column name.
pub type Row = Map<String, Value>;

/// Runs `sql`, whose only column is a JSON object per row (as text), and parses each.
/// Text that is not UTF-8 (names in a `SQL_ASCII` database) arrives with U+FFFD; a row
/// that is not a JSON object is counted in the second value and skipped.
pub async fn json_rows(
    conn: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<(Vec<Row>, u64), DbError> {
    // The text leaves the server as bytes: in a SQL_ASCII database a client-written
    // name (a table named in Latin-1) would fail the conversion to the client's UTF-8
    // and with it the whole query.
    let wrapped = format!(
        "SELECT {} FROM ({sql}) AS q(j)",
        crate::db::text::raw_bytes("q.j")
    );
    let rows = conn.query(&wrapped, params).await.map_err(DbError::query)?;
    let mut out = Vec::with_capacity(rows.len());
    let mut bad = 0;
    for r in &rows {
        match r
            .try_get::<_, Option<Lossy>>(0)
            .ok()
            .flatten()
            .and_then(|l| serde_json::from_str::<Value>(&l.text).ok())
        {
            Some(Value::Object(m)) => out.push(m),
            _ => bad += 1,
        }
    }
    Ok((out, bad))
}

/// Reads every row with `read`; a row that cannot be read is counted in `skipped` and
/// left out, never the reason a whole cycle is lost.
pub fn read_rows<T>(
    rows: &[tokio_postgres::Row],
    skipped: &std::cell::Cell<u64>,
    read: impl Fn(&tokio_postgres::Row) -> Result<T, tokio_postgres::Error>,
) -> Vec<T> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        match read(r) {
            Ok(x) => out.push(x),
            Err(_) => skipped.set(skipped.get() + 1),
        }
    }
    out
}

/// The text value of `key` in `row`, if it is a string.
pub fn str_of<'a>(row: &'a Row, key: &str) -> Option<&'a str> {
    row.get(key).and_then(Value::as_str)
}

/// The integer value of `key` in `row`.
pub fn int_of(row: &Row, key: &str) -> Option<i64> {
    row.get(key).and_then(Value::as_i64)
}

/// The objects of a JSON array (anything else: none).
pub fn objects(v: Option<Value>) -> Vec<Row> {
    match v {
        Some(Value::Array(a)) => a.into_iter().filter_map(|r| object(Some(r))).collect(),
        _ => Vec::new(),
    }
}

/// A JSON object, if it is one.
pub fn object(v: Option<Value>) -> Option<Row> {
    match v {
        Some(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// Takes `key` out of `row`.
pub fn take(row: &mut Row, key: &str) -> Value {
    row.remove(key).unwrap_or(Value::Null)
}

/// Passwords in a setting or connection string (`password=…`) masked.
pub fn mask_passwords(text: &str) -> String {
    crate::sql::redact::passwords(text).unwrap_or_else(|| text.to_string())
}
