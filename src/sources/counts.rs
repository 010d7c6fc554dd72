//! Counts of every session and every lock by database, for the metrics page only
//! (`[metrics] database`): the activity and locks sources leave out the agent's own
//! sessions and cap their rows, and a dashboard's connection count must not. One
//! aggregate each, run by those sources in their own cycles while the page asks.

use std::sync::Arc;

use crate::board::{Board, LockCount, PerDatabase, SessionCount};
use crate::db::text::{raw_bytes, text};
use crate::db::{Conn, DbError};

/// The states postgres_exporter lists for every database (a series each, 0 when none).
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

fn sessions_sql() -> String {
    format!(
        "SELECT {} AS datname, a.state, a.n, a.max_tx
FROM pg_catalog.pg_database d
LEFT JOIN (SELECT datid, state, count(*)::float8 AS n,
                  coalesce(max(extract(epoch FROM now() - xact_start)), 0)::float8 AS max_tx
           FROM pg_catalog.pg_stat_activity WHERE state IS NOT NULL
           GROUP BY datid, state) a ON a.datid = d.oid
ORDER BY d.datname",
        raw_bytes("d.datname")
    )
}

fn locks_sql() -> String {
    format!(
        "SELECT {} AS datname, l.mode, l.n
FROM pg_catalog.pg_database d
LEFT JOIN (SELECT database, lower(mode) AS mode, count(*)::float8 AS n
      FROM pg_catalog.pg_locks WHERE database IS NOT NULL
      GROUP BY database, lower(mode)) l ON l.database = d.oid
ORDER BY d.datname",
        raw_bytes("d.datname")
    )
}

/// Counts the sessions and posts them.
pub async fn post_sessions(conn: &Conn, board: &Board) -> Result<(), DbError> {
    let rows = conn
        .query(&sessions_sql(), &[])
        .await
        .map_err(DbError::query)?;
    let mut out = PerDatabase::default();
    let mut bad = false;
    for r in &rows {
        let Ok(Some(datname)) = text(r, "datname", &mut bad) else {
            continue;
        };
        if out.databases.last() != Some(&datname) {
            out.databases.push(datname.clone());
        }
        let (Ok(Some(state)), Ok(Some(n)), Ok(Some(max_tx))) = (
            r.try_get::<_, Option<String>>("state"),
            r.try_get::<_, Option<f64>>("n"),
            r.try_get::<_, Option<f64>>("max_tx"),
        ) else {
            continue;
        };
        out.counts.push(SessionCount {
            datname,
            state,
            count: n,
            max_tx_duration: max_tx,
        });
    }
    board.post(|p| &mut p.sessions, Arc::new(out));
    Ok(())
}

/// Counts the locks and posts them.
pub async fn post_locks(conn: &Conn, board: &Board) -> Result<(), DbError> {
    let rows = conn
        .query(&locks_sql(), &[])
        .await
        .map_err(DbError::query)?;
    let mut out = PerDatabase::default();
    let mut bad = false;
    for r in &rows {
        let Ok(Some(datname)) = text(r, "datname", &mut bad) else {
            continue;
        };
        if out.databases.last() != Some(&datname) {
            out.databases.push(datname.clone());
        }
        let (Ok(Some(mode)), Ok(Some(n))) = (
            r.try_get::<_, Option<String>>("mode"),
            r.try_get::<_, Option<f64>>("n"),
        ) else {
            continue;
        };
        out.counts.push(LockCount {
            datname,
            mode,
            count: n,
        });
    }
    board.post(|p| &mut p.locks, Arc::new(out));
    Ok(())
}
