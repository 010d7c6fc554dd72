//! Counts of every session and every lock by database, for the metrics page only
//! (`[metrics] database`): the activity and locks sources leave out the agent's own
//! sessions and cap their rows, and a dashboard's connection count must not. One
//! aggregate each, run by those sources in their own cycles while the page asks.

use std::sync::Arc;

use crate::board::{Board, LockCount, PerDatabase, SessionCount, Sessions};
use crate::db::text::{raw_bytes, text};
use crate::db::{Conn, DbError};

use crate::board::{IDLE_APPLICATIONS, IDLE_BOUNDS, OTHER_APPLICATIONS};
pub use crate::board::{LOCK_MODES, LONG_RUNNING, STATES};
use crate::model::Histogram;

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

/// Open transactions of sessions that are not idle (autovacuum left out): how many,
/// the oldest, how many older than each of [`LONG_RUNNING`].
const TRANSACTIONS_SQL: &str = "SELECT count(*)::float8, coalesce(max(age), 0)::float8,
    count(*) FILTER (WHERE age >= 60)::float8, count(*) FILTER (WHERE age >= 300)::float8,
    count(*) FILTER (WHERE age >= 600)::float8, count(*) FILTER (WHERE age >= 1800)::float8
FROM (SELECT extract(epoch FROM clock_timestamp() - xact_start) AS age
      FROM pg_catalog.pg_stat_activity
      WHERE state IS DISTINCT FROM 'idle' AND xact_start IS NOT NULL
        AND backend_type IS DISTINCT FROM 'autovacuum worker') t";

/// Autovacuum workers: the table (out of the worker's query text, `autovacuum: VACUUM
/// s.t`) and when the work started. Chosen by backend type: a client's statement that
/// begins with `autovacuum:` is the client's text, not a worker.
fn autovacuum_sql() -> String {
    format!(
        "SELECT {} AS relname, extract(epoch FROM xact_start)::float8 AS started
FROM pg_catalog.pg_stat_activity
WHERE backend_type = 'autovacuum worker' AND query LIKE 'autovacuum:%'
  AND xact_start IS NOT NULL",
        raw_bytes("split_part(split_part(query, '.', 2), ' ', 1)")
    )
}

/// Idle sessions by application name (the [`IDLE_APPLICATIONS`] with most, the rest
/// under NULL): how many, their idle seconds summed, and how many are within each of
/// [`IDLE_BOUNDS`].
fn idle_sql() -> String {
    let within: String = IDLE_BOUNDS
        .iter()
        .map(|b| format!(", count(*) FILTER (WHERE s <= {b})::float8"))
        .collect();
    format!(
        "WITH idle AS (
    SELECT application_name AS app,
           extract(epoch FROM clock_timestamp() - state_change)::float8 AS s
    FROM pg_catalog.pg_stat_activity WHERE state = 'idle'),
top AS (SELECT app FROM idle GROUP BY app ORDER BY count(*) DESC, app LIMIT {IDLE_APPLICATIONS})
SELECT {} AS app, count(*)::float8 AS n, coalesce(sum(s), 0)::float8 AS total{within}
FROM idle LEFT JOIN top USING (app)
GROUP BY top.app ORDER BY 1",
        raw_bytes("top.app")
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
    let mut out = Sessions::default();
    let by = &mut out.by_state;
    let mut bad = false;
    for r in &rows {
        let Ok(Some(datname)) = text(r, "datname", &mut bad) else {
            continue;
        };
        if by.databases.last() != Some(&datname) {
            by.databases.push(datname.clone());
        }
        let (Ok(Some(state)), Ok(Some(n)), Ok(Some(max_tx))) = (
            r.try_get::<_, Option<String>>("state"),
            r.try_get::<_, Option<f64>>("n"),
            r.try_get::<_, Option<f64>>("max_tx"),
        ) else {
            continue;
        };
        by.counts.push(SessionCount {
            datname,
            state,
            count: n,
            max_tx_duration: max_tx,
        });
    }
    let t = conn
        .query_one(TRANSACTIONS_SQL, &[])
        .await
        .map_err(DbError::query)?;
    let n = |i: usize| t.try_get::<_, f64>(i).unwrap_or(0.0);
    out.in_transaction = n(0);
    out.oldest_transaction_s = n(1);
    out.longer_than = LONG_RUNNING
        .iter()
        .enumerate()
        .map(|(i, s)| (*s, n(i + 2)))
        .collect();
    let workers = conn
        .query(&autovacuum_sql(), &[])
        .await
        .map_err(DbError::query)?;
    out.autovacuum = workers
        .iter()
        .filter_map(|r| {
            let relname = text(r, "relname", &mut bad).ok()??;
            Some((relname, r.try_get("started").ok()?))
        })
        .collect();
    let idle = conn.query(&idle_sql(), &[]).await.map_err(DbError::query)?;
    for r in &idle {
        let app = text(r, "app", &mut bad).ok().flatten();
        let n = |i: usize| r.try_get::<_, f64>(i).unwrap_or(0.0) as u64;
        let mut h = Histogram::new(IDLE_BOUNDS);
        let mut below = 0;
        for (i, c) in h.counts.iter_mut().enumerate() {
            let within = if i < IDLE_BOUNDS.len() {
                n(3 + i)
            } else {
                n(1)
            };
            *c = within.saturating_sub(below);
            below = below.max(within);
        }
        h.sum = r.try_get("total").unwrap_or(0.0);
        out.idle
            .push((app.unwrap_or_else(|| OTHER_APPLICATIONS.to_string()), h));
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
