//! `pg_server_stats`: the server's background statistics per interval, as totals and
//! deltas — the background writer, the checkpointer (one shape from 12 to 18: before 17
//! its columns are taken out of `pg_stat_bgwriter` under 17's names), `pg_stat_wal`
//! (14+), the archiver and `pg_stat_io` (16+, only the rows that moved).

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use serde::Serialize;
use serde_json::Value;

use super::counters::{Change, Readings};
use super::{json_rows, str_of, Row};
use crate::board;
use crate::config::Config;
use crate::db::Db;
use crate::model::{Event, EventKind};
use crate::sources::{server_version, CollectFuture, CycleError, Source};

/// Columns that are not counters (`op_bytes`: the block size, 16 and 17).
const NOT_COUNTERS: &[&str] = &["op_bytes"];

/// What the metrics page says of the server beside its statistics.
const FACTS: &str = "jsonb_build_object('version', version(),
    'postmaster_start_time', extract(epoch FROM pg_postmaster_start_time())::float8,
    'in_recovery', pg_is_in_recovery(),
    'replay_lag_s', CASE WHEN pg_is_in_recovery()
        THEN greatest(0, extract(epoch FROM now() - pg_last_xact_replay_timestamp()))::float8
        ELSE 0 END,
    'replay_caught_up', pg_is_in_recovery()
        AND pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn(),
    'wal_lsn_bytes', pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery()
        THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, '0/0')::float8)";

/// The statistics query for `version` (`server_version_num`).
pub fn sql(version: i32) -> String {
    let (bgwriter, checkpointer) = if version >= 170_000 {
        (
            "(SELECT to_jsonb(b) FROM pg_catalog.pg_stat_bgwriter b)",
            "(SELECT to_jsonb(c) FROM pg_catalog.pg_stat_checkpointer c)",
        )
    } else {
        (
            "(SELECT jsonb_build_object('buffers_clean', buffers_clean,
                'maxwritten_clean', maxwritten_clean, 'buffers_alloc', buffers_alloc,
                'buffers_backend', buffers_backend,
                'buffers_backend_fsync', buffers_backend_fsync, 'stats_reset', stats_reset)
              FROM pg_catalog.pg_stat_bgwriter)",
            "(SELECT jsonb_build_object('num_timed', checkpoints_timed,
                'num_requested', checkpoints_req, 'write_time', checkpoint_write_time,
                'sync_time', checkpoint_sync_time, 'buffers_written', buffers_checkpoint,
                'stats_reset', stats_reset)
              FROM pg_catalog.pg_stat_bgwriter)",
        )
    };
    let wal = if version >= 140_000 {
        "(SELECT to_jsonb(w) FROM pg_catalog.pg_stat_wal w)"
    } else {
        "NULL::jsonb"
    };
    let io = if version >= 160_000 {
        "(SELECT jsonb_agg(to_jsonb(i)) FROM pg_catalog.pg_stat_io i)"
    } else {
        "NULL::jsonb"
    };
    format!(
        "SELECT jsonb_build_object('bgwriter', {bgwriter}, 'checkpointer', {checkpointer},
            'wal', {wal}, 'archiver', (SELECT to_jsonb(a) FROM pg_catalog.pg_stat_archiver a),
            'io', {io}, 'facts', {FACTS}, 'identity', {})::text",
        crate::sources::identity::IDENTITY
    )
}

/// One view's row: as the server has it, and its deltas.
#[derive(Debug, Serialize)]
pub struct View {
    /// The row (totals since `stats_reset`).
    pub stats: Row,
    /// Deltas since the last reading.
    #[serde(flatten)]
    pub change: Change,
}

/// One `pg_stat_io` row that moved.
#[derive(Debug, Serialize)]
pub struct IoRow {
    /// `backend_type`.
    pub backend_type: Value,
    /// `object` (relation, temp relation, wal on 18).
    pub object: Value,
    /// `context` (normal, vacuum, bulkread, bulkwrite, init on 18).
    pub context: Value,
    /// The row and its deltas.
    #[serde(flatten)]
    pub view: View,
}

/// `data` of a `pg_server_stats` event.
#[derive(Debug, Serialize)]
pub struct ServerStats {
    /// Which cluster, timeline, role and version (see [`crate::sources::identity`]).
    pub identity: Value,
    /// `pg_stat_bgwriter`.
    pub bgwriter: Option<View>,
    /// `pg_stat_checkpointer` (17+), or the same columns out of `pg_stat_bgwriter`.
    pub checkpointer: Option<View>,
    /// `pg_stat_wal` (14+).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<View>,
    /// `pg_stat_archiver`.
    pub archiver: Option<View>,
    /// `pg_stat_io` rows (16+): all at the first reading, then only those that moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io: Option<Vec<IoRow>>,
    /// `pg_stat_io` rows that did not move since the last reading (not listed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_rows_unchanged: Option<usize>,
}

/// Reads the server's background statistics.
pub struct ServerStatsSource {
    host: String,
    version: Rc<Cell<Option<i32>>>,
    readings: Rc<RefCell<Readings<String>>>,
    /// Whether the role may run `pg_ls_waldir()` (asked once, for the metrics page).
    may_list_wal: Rc<Cell<Option<bool>>>,
    /// The cluster and role the readings are of.
    identity: Rc<crate::sources::identity::Guard>,
    /// The server, as its identity's report names it.
    who: crate::sources::identity::Who,
}

impl ServerStatsSource {
    /// From the configuration.
    pub fn new(config: &Config) -> ServerStatsSource {
        ServerStatsSource {
            host: config.id_host(),
            version: Rc::new(Cell::new(None)),
            readings: Rc::new(RefCell::new(Readings::new(NOT_COUNTERS))),
            may_list_wal: Rc::new(Cell::new(None)),
            identity: Rc::default(),
            who: crate::sources::identity::Who::of(config),
        }
    }
}

fn view(readings: &mut Readings<String>, name: &str, v: Value, now: Instant) -> Option<View> {
    let Value::Object(stats) = v else { return None };
    let change = readings.step(name.to_string(), &stats, now).into();
    Some(View { stats, change })
}

/// Turns the query's one row into the event's data.
pub fn to_stats(mut r: Row, readings: &mut Readings<String>, now: Instant) -> ServerStats {
    let mut take = |k: &str| r.remove(k).unwrap_or(Value::Null);
    let (bg, cp, wal, arch, io) = (
        take("bgwriter"),
        take("checkpointer"),
        take("wal"),
        take("archiver"),
        take("io"),
    );
    let mut out = ServerStats {
        identity: take("identity"),
        bgwriter: view(readings, "bgwriter", bg, now),
        checkpointer: view(readings, "checkpointer", cp, now),
        wal: view(readings, "wal", wal, now),
        archiver: view(readings, "archiver", arch, now),
        io: None,
        io_rows_unchanged: None,
    };
    if let Value::Array(rows) = io {
        let mut moved = Vec::new();
        let mut quiet = 0;
        let mut seen = HashSet::new();
        for row in rows {
            let Value::Object(stats) = row else { continue };
            let key = format!(
                "io/{}/{}/{}",
                str_of(&stats, "backend_type").unwrap_or(""),
                str_of(&stats, "object").unwrap_or(""),
                str_of(&stats, "context").unwrap_or("")
            );
            seen.insert(key.clone());
            let compared = readings.step(key, &stats, now);
            if compared.is_quiet() {
                quiet += 1;
                continue;
            }
            moved.push(IoRow {
                backend_type: stats.get("backend_type").cloned().unwrap_or(Value::Null),
                object: stats.get("object").cloned().unwrap_or(Value::Null),
                context: stats.get("context").cloned().unwrap_or(Value::Null),
                view: View {
                    stats,
                    change: compared.into(),
                },
            });
        }
        readings.retain(|k| !k.starts_with("io/") || seen.contains(k));
        out.io = Some(moved);
        out.io_rows_unchanged = Some(quiet);
    }
    out
}

/// The WAL segment files and their bytes, for the metrics page (postgres_exporter's
/// `pg_wal_*`), when the role may list `pg_wal` (superuser or pg_monitor): asked once,
/// since a function the role may not run fails the whole statement that names it.
async fn wal_segments(
    conn: &tokio_postgres::Client,
    may: &Cell<Option<bool>>,
) -> Result<Option<(f64, f64)>, crate::db::DbError> {
    use crate::db::DbError;
    let allowed = match may.get() {
        Some(a) => a,
        None => {
            let a: bool = conn
                .query_one(
                    "SELECT has_function_privilege('pg_catalog.pg_ls_waldir()', 'EXECUTE')",
                    &[],
                )
                .await
                .and_then(|r| r.try_get(0))
                .map_err(DbError::query)?;
            may.set(Some(a));
            a
        }
    };
    if !allowed {
        return Ok(None);
    }
    let r = conn
        .query_one(
            "SELECT count(*)::float8, coalesce(sum(size), 0)::float8
             FROM pg_catalog.pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'",
            &[],
        )
        .await
        .map_err(DbError::query)?;
    Ok(Some((
        r.try_get(0).map_err(DbError::query)?,
        r.try_get(1).map_err(DbError::query)?,
    )))
}

/// The query's row as the metrics page reads it.
pub fn for_board(row: &Row, version_num: i32) -> board::ServerStats {
    let obj = |k: &str| match row.get(k) {
        Some(Value::Object(m)) => Some(m.clone()),
        _ => None,
    };
    let facts = obj("facts").unwrap_or_default();
    let num = |k: &str| facts.get(k).and_then(Value::as_f64);
    board::ServerStats {
        bgwriter: obj("bgwriter").unwrap_or_default(),
        checkpointer: obj("checkpointer").unwrap_or_default(),
        archiver: obj("archiver").unwrap_or_default(),
        wal: obj("wal"),
        version: str_of(&facts, "version").unwrap_or_default().to_string(),
        version_num,
        // Whole seconds, as postgres_exporter reads a time.
        postmaster_start_time: num("postmaster_start_time").map(f64::floor),
        in_recovery: facts.get("in_recovery").and_then(Value::as_bool) == Some(true),
        replay_lag_s: num("replay_lag_s"),
        replay_caught_up: facts.get("replay_caught_up").and_then(Value::as_bool) == Some(true),
        wal_segments: None,
        wal_lsn_bytes: num("wal_lsn_bytes"),
    }
}

impl Source for ServerStatsSource {
    fn report(&self) -> Option<(Vec<Event>, crate::model::Checkpoint)> {
        self.identity.take_report()
    }

    fn kind(&self) -> EventKind {
        EventKind::PgServerStats
    }

    fn collect(&self, db: Rc<Db>) -> CollectFuture {
        let host = self.host.clone();
        let version = self.version.clone();
        let readings = self.readings.clone();
        let may_list = self.may_list_wal.clone();
        let identity = self.identity.clone();
        let who = self.who.clone();
        Box::pin(async move {
            let conn = db.get().await?;
            let look = identity.look(&conn, db.server(), &who).await?;
            if look.stale {
                readings.borrow_mut().retain(|_| false);
            }
            let v = server_version(&conn, &version).await?;
            let res = json_rows(&conn, &sql(v), &[]).await;
            if res.is_err() {
                version.set(None);
            }
            let (rows, _) = res?;
            let Some(row) = rows.into_iter().next() else {
                return Ok(Vec::new());
            };
            let board = db.server().board();
            if board.wanted() {
                let mut shown = for_board(&row, v);
                // Only the page needs it: a failure leaves the families out, not the
                // event.
                shown.wal_segments = wal_segments(&conn, &may_list).await.unwrap_or(None);
                board.post(|p| &mut p.server, Arc::new(shown));
            }
            drop(conn);
            let at = Utc::now();
            let stats = to_stats(row, &mut readings.borrow_mut(), Instant::now());
            let id = format!("pg_server_stats:{host}:{}", at.timestamp_micros());
            let event = Event::new(id, EventKind::PgServerStats, at, &stats)
                .map_err(|e| CycleError::encode("server stats", e))?;
            Ok(vec![event])
        })
    }
}
