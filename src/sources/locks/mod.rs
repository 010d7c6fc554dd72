//! `pg_locks`: one event per session waiting on a lock, with the lock it waits for, the
//! sessions blocking it and the root blockers of its chain, each with application name,
//! query and correlation id. While blocking is seen the source samples faster.

pub mod chain;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Row;

use super::session::{self, Session};
use super::{CollectFuture, CycleError, Source};
use crate::config::Config;
use crate::db::text::raw_bytes;
use crate::db::Db;
use crate::model::{Event, EventKind};
use tokio_postgres::types::ToSql;

/// Reads blocked and blocking sessions.
pub struct LocksSource {
    host: String,
    reading: Rc<session::Reading>,
    max_rows: u32,
    max_query_length: u32,
    /// Interval while blocking is seen.
    fast: Duration,
    blocking_seen: Rc<Cell<bool>>,
    server_version: Rc<Cell<Option<i32>>>,
    /// Rows that could not be read at all (counted and skipped; the cycle goes on).
    skipped: Rc<Cell<u64>>,
}

/// The lock a session waits for.
#[derive(Debug, Clone, Serialize)]
#[allow(missing_docs)]
pub struct WaitedLock {
    pub locktype: Option<String>,
    pub mode: Option<String>,
    pub relation: Option<String>,
    pub transactionid: Option<String>,
}

/// `data` of a `pg_locks` event.
#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct BlockedSession {
    pub blocked: Session,
    pub lock: Option<WaitedLock>,
    /// Seconds waited (from `pg_locks.waitstart` on PostgreSQL 14+, else since the
    /// session's state last changed).
    pub wait_s: Option<f64>,
    pub blocking_pids: Vec<i32>,
    /// The sessions blocking it directly.
    pub blocking: Vec<Session>,
    /// The heads of its chains: sessions that wait for nobody.
    pub root_blockers: Vec<Session>,
    /// Longest chain from this session to a root (1: blocked by a root directly).
    pub chain_depth: usize,
}

/// Why `pg_blocking_pids()` and only for waiting sessions: it answers exactly "who must
/// release or finish before this one proceeds" (lock queues and group locking included),
/// which the wiki's pg_locks self-join gets wrong for queued waiters, and calling it only
/// for sessions with `wait_event_type = 'Lock'` keeps the cost at zero when nobody waits.
fn sql(server_version: i32) -> String {
    let query = raw_bytes("a.query");
    let waitstart = super::since(server_version, 14, "waitstart", "NULL::timestamptz");
    let query_id = super::since(server_version, 14, "a.query_id", "NULL::bigint");
    format!(
        "WITH w AS (
            SELECT pid, pg_blocking_pids(pid) AS blocking
            FROM pg_stat_activity
            WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()
         ), involved AS (
            SELECT pid FROM w UNION SELECT unnest(blocking) FROM w
         ), ungranted AS MATERIALIZED (
            SELECT DISTINCT ON (pid) pid, locktype, mode::text, relation,
                   transactionid::text AS transactionid, {waitstart} AS waitstart
            FROM pg_locks WHERE NOT granted AND pid IN (SELECT pid FROM w) ORDER BY pid
         )
         SELECT a.pid, w.blocking, a.datname::text, a.usename::text, a.application_name,
                host(a.client_addr) AS client_addr, a.state, a.wait_event_type, a.wait_event,
                substr({query}, 1, $1) AS query,
                coalesce(octet_length(a.query) > $1, false) AS query_truncated,
                extract(epoch FROM now() - a.xact_start)::float8 AS xact_age_s,
                extract(epoch FROM now() - a.query_start)::float8 AS query_age_s,
                extract(epoch FROM now() - a.state_change)::float8 AS state_age_s,
                a.backend_xid::text AS backend_xid, {query_id} AS query_id,
                u.locktype, u.mode,
                CASE WHEN u.relation IS NOT NULL THEN u.relation::regclass::text END AS relation,
                u.transactionid,
                extract(epoch FROM now() - coalesce(u.waitstart, a.state_change))::float8 AS wait_s,
                now() AS sampled_at
         FROM involved i JOIN pg_stat_activity a ON a.pid = i.pid
         LEFT JOIN w ON w.pid = a.pid
         LEFT JOIN ungranted u ON u.pid = a.pid
         ORDER BY a.pid
         LIMIT $2"
    )
}

impl LocksSource {
    /// From the configuration.
    pub fn new(config: &Config) -> LocksSource {
        LocksSource {
            host: config.id_host(),
            reading: session::Reading::of(config),
            max_rows: config.collection.max_activity_rows,
            max_query_length: config.collection.max_query_length,
            fast: config.collection.locks_blocking_interval,
            blocking_seen: Rc::new(Cell::new(false)),
            server_version: Rc::new(Cell::new(None)),
            skipped: Rc::new(Cell::new(0)),
        }
    }
}

impl Source for LocksSource {
    fn kind(&self) -> EventKind {
        EventKind::PgLocks
    }

    fn rows_skipped(&self) -> u64 {
        self.skipped.get()
    }

    fn interval(&self, base: Duration) -> Duration {
        if self.blocking_seen.get() {
            base.min(self.fast)
        } else {
            base
        }
    }

    fn collect(&self, db: Rc<Db>) -> CollectFuture {
        let host = self.host.clone();
        let reading = self.reading.clone();
        let (max_rows, max_len) = (self.max_rows, self.max_query_length);
        let (seen, version) = (self.blocking_seen.clone(), self.server_version.clone());
        let skipped = self.skipped.clone();
        Box::pin(async move {
            let conn = db.get().await?;
            let params: [&(dyn ToSql + Sync); 2] = [&(max_len as i32), &(max_rows as i64)];
            let rows = super::versioned_query(&conn, &version, sql, &params).await?;
            let board = db.server().board();
            if board.wanted() {
                // Only the page needs it: a failure shows as the reading's age, not as
                // a lost cycle.
                let _ = super::counts::post_locks(&conn, board).await;
                // Waiting: the sessions with an ungranted lock.
                let waits: Vec<f64> = rows
                    .iter()
                    .filter(|r| matches!(r.try_get::<_, Option<String>>("locktype"), Ok(Some(_))))
                    .map(|r| {
                        r.try_get::<_, Option<f64>>("wait_s")
                            .ok()
                            .flatten()
                            .unwrap_or(0.0)
                    })
                    .collect();
                let waits = crate::board::LockWaits {
                    waiting: waits.len() as f64,
                    longest_s: waits.iter().copied().fold(0.0, f64::max),
                };
                board.post(|p| &mut p.lock_waits, std::sync::Arc::new(waits));
            }
            let (events, bad) = to_events(&rows, &host, &reading)?;
            skipped.set(skipped.get() + bad);
            seen.set(!events.is_empty());
            Ok(events)
        })
    }
}

struct Parsed {
    session: Session,
    blocking: Option<Vec<i32>>,
    lock: Option<WaitedLock>,
    wait_s: Option<f64>,
}

fn parse(r: &Row, reading: &session::Reading) -> Result<Parsed, tokio_postgres::Error> {
    let locktype: Option<String> = r.try_get("locktype")?;
    let lock = locktype
        .is_some()
        .then(|| -> Result<WaitedLock, tokio_postgres::Error> {
            Ok(WaitedLock {
                locktype: locktype.clone(),
                mode: r.try_get("mode")?,
                relation: r.try_get("relation")?,
                transactionid: r.try_get("transactionid")?,
            })
        });
    Ok(Parsed {
        session: session::read(r, reading)?,
        blocking: r.try_get("blocking")?,
        lock: lock.transpose()?,
        wait_s: r.try_get("wait_s")?,
    })
}

/// The events of one sample, and how many rows could not be read (skipped: one odd
/// session must not hide the pile-up the source exists for).
fn to_events(
    rows: &[Row],
    host: &str,
    reading: &session::Reading,
) -> Result<(Vec<Event>, u64), CycleError> {
    let Some(sampled_at) = rows
        .iter()
        .find_map(|r| r.try_get::<_, DateTime<Utc>>("sampled_at").ok())
    else {
        return Ok((vec![], rows.len() as u64));
    };
    let parsed: Vec<Parsed> = rows.iter().filter_map(|r| parse(r, reading).ok()).collect();
    let skipped = (rows.len() - parsed.len()) as u64;
    let sessions: BTreeMap<i32, &Session> =
        parsed.iter().map(|p| (p.session.pid, &p.session)).collect();
    let graph: chain::Graph = parsed
        .iter()
        .filter_map(|p| p.blocking.clone().map(|b| (p.session.pid, b)))
        .collect();
    let lookup = |pids: &[i32]| -> Vec<Session> {
        pids.iter()
            .filter_map(|p| sessions.get(p).map(|s| (*s).clone()))
            .collect()
    };
    let mut out = Vec::new();
    for p in parsed
        .iter()
        .filter(|p| p.blocking.as_ref().is_some_and(|b| !b.is_empty()))
    {
        let blocking_pids = p.blocking.clone().unwrap_or_default();
        let (roots, chain_depth) = chain::roots(&graph, p.session.pid);
        let data = BlockedSession {
            blocked: p.session.clone(),
            lock: p.lock.clone(),
            wait_s: p.wait_s,
            blocking: lookup(&blocking_pids),
            root_blockers: lookup(&roots),
            blocking_pids,
            chain_depth,
        };
        let id = format!(
            "pg_locks:{host}:{}:{}",
            sampled_at.timestamp_micros(),
            p.session.pid
        );
        out.push(
            Event::new(id, EventKind::PgLocks, sampled_at, &data)
                .map_err(|e| CycleError::encode("row", e))?,
        );
    }
    Ok((out, skipped))
}
