//! `pg_databases`: one event per database of the cluster per interval — the server's
//! `pg_stat_database` counters with their deltas (commits, rollbacks, blocks, tuples,
//! temp files, deadlocks, conflicts, session times on 14+), its size, and how far its
//! oldest unfrozen transaction and multixact ids are from the freeze limits and from
//! wraparound.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use serde_json::Value;

use super::counters::{Change, Readings};
use super::{int_of, json_rows, str_of, take, Row};
use crate::board::{self, Board};
use crate::config::Config;
use crate::db::Db;
use crate::model::{Event, EventKind};
use crate::sources::{CollectFuture, CycleError, Source};

/// 2^31: transaction ids this far apart wrap around.
const WRAPAROUND: f64 = 2_147_483_648.0;

/// Columns of `pg_stat_database` that are not counters.
const NOT_COUNTERS: &[&str] = &["numbackends"];

/// How often the sizes are measured: `pg_database_size` walks every file of the
/// database (440 ms of server time for 5 databases of 3,500 tables each here).
pub const SIZE_EVERY: Duration = Duration::from_secs(600);

/// Ordered by name; the row of shared objects (`datid` 0, 12+) last, for the metrics
/// page only. `$1`: measure the sizes this time. They are asked only where the role may:
/// `pg_database_size` fails for a database without CONNECT unless the role has
/// `pg_read_all_stats`, and for a database whose DROP was interrupted
/// (`datconnlimit = -2`, 15+).
const SQL: &str = "(SELECT jsonb_build_object(
    'datid', d.oid::bigint,
    'datname', d.datname,
    'allow_connections', d.datallowconn,
    'size_bytes', CASE WHEN $1 AND d.datconnlimit <> -2
        AND (has_database_privilege(d.oid, 'CONNECT') OR pg_has_role('pg_read_all_stats', 'USAGE'))
        THEN pg_database_size(d.oid) END,
    'xid_age', age(d.datfrozenxid),
    'mxid_age', mxid_age(d.datminmxid),
    'xid_freeze_max_age', current_setting('autovacuum_freeze_max_age')::bigint,
    'mxid_freeze_max_age', current_setting('autovacuum_multixact_freeze_max_age')::bigint,
    'connection_limit', d.datconnlimit,
    'conflicts', to_jsonb(c) - 'datid' - 'datname',
    'stats', to_jsonb(s) - 'datid' - 'datname')::text
FROM pg_catalog.pg_database d
LEFT JOIN pg_catalog.pg_stat_database s ON s.datid = d.oid
LEFT JOIN pg_catalog.pg_stat_database_conflicts c ON c.datid = d.oid
ORDER BY d.datname)
UNION ALL
(SELECT jsonb_build_object('datid', 0, 'datname', '', 'shared', true,
    'stats', to_jsonb(s) - 'datid' - 'datname')::text
FROM pg_catalog.pg_stat_database s WHERE s.datid = 0)";

/// `data` of a `pg_databases` event.
#[derive(Debug, Serialize)]
pub struct DatabaseRow {
    /// Name (U+FFFD where it is not UTF-8).
    pub datname: String,
    /// OID.
    pub datid: i64,
    /// `datallowconn`.
    pub allow_connections: Value,
    /// `pg_database_size`, measured every 10 minutes (absent in between, and where the
    /// role may not ask).
    #[serde(skip_serializing_if = "Value::is_null")]
    pub size_bytes: Value,
    /// `age(datfrozenxid)`.
    pub xid_age: Value,
    /// `autovacuum_freeze_max_age`: at this age autovacuum freezes whatever it costs.
    pub xid_freeze_max_age: Value,
    /// `xid_age` as a share of the 2^31 ids before wraparound, in percent.
    pub xid_wraparound_pct: Option<f64>,
    /// `mxid_age(datminmxid)`.
    pub mxid_age: Value,
    /// `autovacuum_multixact_freeze_max_age`.
    pub mxid_freeze_max_age: Value,
    /// `mxid_age` as a share of 2^31, in percent.
    pub mxid_wraparound_pct: Option<f64>,
    /// `pg_stat_database` as the server has it (its columns differ by version).
    pub stats: Row,
    /// Deltas of the counters in `stats` since the last reading.
    #[serde(flatten)]
    pub change: Change,
}

fn pct(age: &Value) -> Option<f64> {
    age.as_f64()
        .map(|a| (a * 100.0 / WRAPAROUND * 100.0).round() / 100.0)
}

/// Reads every database's statistics.
pub struct DatabasesSource {
    host: String,
    readings: Rc<RefCell<Readings<i64>>>,
    /// When the sizes were last measured.
    sized_at: Rc<Cell<Option<Instant>>>,
    /// The cluster and role the readings are of.
    identity: Rc<crate::sources::identity::Guard>,
    /// The server, as its identity's report names it.
    who: crate::sources::identity::Who,
}

impl DatabasesSource {
    /// From the configuration.
    pub fn new(config: &Config) -> DatabasesSource {
        DatabasesSource {
            host: config.id_host(),
            readings: Rc::new(RefCell::new(Readings::new(NOT_COUNTERS))),
            sized_at: Rc::new(Cell::new(None)),
            identity: Rc::default(),
            who: crate::sources::identity::Who::of(config),
        }
    }
}

/// Turns one row of `SQL` into the event's data, comparing it with the last reading.
pub fn to_row(mut r: Row, readings: &mut Readings<i64>, now: Instant) -> Option<DatabaseRow> {
    let datid = int_of(&r, "datid")?;
    let datname = str_of(&r, "datname")?.to_string();
    let stats = match take(&mut r, "stats") {
        Value::Object(m) => m,
        _ => Row::new(),
    };
    // A database without a statistics row yet (just created) has nothing to compare.
    let change = if stats.is_empty() {
        Change::default()
    } else {
        readings.step(datid, &stats, now).into()
    };
    let xid_age = take(&mut r, "xid_age");
    let mxid_age = take(&mut r, "mxid_age");
    Some(DatabaseRow {
        datname,
        datid,
        allow_connections: take(&mut r, "allow_connections"),
        size_bytes: take(&mut r, "size_bytes"),
        xid_wraparound_pct: pct(&xid_age),
        xid_age,
        xid_freeze_max_age: take(&mut r, "xid_freeze_max_age"),
        mxid_wraparound_pct: pct(&mxid_age),
        mxid_age,
        mxid_freeze_max_age: take(&mut r, "mxid_freeze_max_age"),
        stats,
        change,
    })
}

/// Posts the statistics (and the sizes, when measured) for the metrics page.
fn post(board: &Board, rows: &[Row], sized: bool) {
    let num = |r: &Row, k: &str| r.get(k).and_then(Value::as_f64);
    let stats: Vec<board::DatabaseStats> = rows
        .iter()
        .filter_map(|r| {
            Some(board::DatabaseStats {
                datid: int_of(r, "datid")?,
                datname: str_of(r, "datname")?.to_string(),
                stats: match r.get("stats") {
                    Some(Value::Object(m)) => m.clone(),
                    _ => Row::new(),
                },
                conflicts: match r.get("conflicts") {
                    Some(Value::Object(m)) => Some(m.clone()),
                    _ => None,
                },
                xid_age: num(r, "xid_age"),
                mxid_age: num(r, "mxid_age"),
                connection_limit: num(r, "connection_limit"),
                allow_connections: r.get("allow_connections").and_then(Value::as_bool)
                    == Some(true),
            })
        })
        .collect();
    board.post(|p| &mut p.databases, Arc::new(stats));
    if sized {
        let sizes = rows
            .iter()
            .filter_map(|r| {
                Some(board::DatabaseSize {
                    datname: str_of(r, "datname")?.to_string(),
                    bytes: num(r, "size_bytes")?,
                })
            })
            .collect();
        board.post(|p| &mut p.sizes, Arc::new(sizes));
    }
}

impl Source for DatabasesSource {
    fn report(&self) -> Option<(Vec<Event>, crate::model::Checkpoint)> {
        self.identity.take_report()
    }

    fn kind(&self) -> EventKind {
        EventKind::PgDatabases
    }

    fn collect(&self, db: Rc<Db>) -> CollectFuture {
        let host = self.host.clone();
        let readings = self.readings.clone();
        let sized_at = self.sized_at.clone();
        let identity = self.identity.clone();
        let who = self.who.clone();
        Box::pin(async move {
            let size = sized_at.get().is_none_or(|t| t.elapsed() >= SIZE_EVERY);
            let conn = db.get().await?;
            let look = identity.look(&conn, db.server(), &who).await?;
            if look.stale {
                readings.borrow_mut().retain(|_| false);
            }
            let (rows, _bad) = json_rows(&conn, SQL, &[&size]).await?;
            if size {
                sized_at.set(Some(Instant::now()));
            }
            drop(conn);
            let now = Instant::now();
            let at = Utc::now();
            let board = db.server().board();
            if board.wanted() {
                post(board, &rows, size);
            }
            let mut readings = readings.borrow_mut();
            let mut seen = HashSet::new();
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                if r.contains_key("shared") {
                    continue;
                }
                let Some(row) = to_row(r, &mut readings, now) else {
                    continue;
                };
                seen.insert(row.datid);
                let id = format!(
                    "pg_databases:{host}:{}:{}",
                    at.timestamp_micros(),
                    row.datid
                );
                out.push(
                    Event::new(id, EventKind::PgDatabases, at, &row)
                        .map_err(|e| CycleError::encode("database", e))?,
                );
            }
            readings.keep_only(&seen);
            Ok(out)
        })
    }
}
