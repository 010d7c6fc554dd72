//! `pg_vacuum_progress`: while a vacuum, analyze (13+), index build or cluster runs,
//! one event per operation per interval — the server's progress row as it has it
//! (`pg_stat_progress_vacuum` changed its columns in 17), a percentage where the server
//! gives a done/total pair, the table's name, and the session as every source reads
//! sessions (a manual run's request correlation id, an autovacuum worker's own query).
//! Nothing is shipped while nothing runs.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::types::ToSql;

use super::{read_rows, Row};
use crate::config::Config;
use crate::db::text::{raw_bytes, text, Lossy};
use crate::db::Db;
use crate::model::{Event, EventKind};
use crate::sources::session::{self, Session};
use crate::sources::{versioned_query, CollectFuture, CycleError, Source};

/// Names remembered for relations in other databases, at most.
const MAX_NAMES: usize = 10_000;

/// A database that could not be connected to for names is tried again after this.
const RETRY_NAMES_AFTER: Duration = Duration::from_secs(600);

fn sql(version: i32) -> String {
    let cols = session::columns(version, "now()");
    let view = |command: &str, view: &str| {
        format!(
            "SELECT '{command}'::text AS command, pid, datid, relid,
                to_jsonb(v) - 'pid' - 'datid' - 'datname' - 'relid' AS progress
             FROM pg_catalog.{view} v"
        )
    };
    let mut parts = vec![
        view("vacuum", "pg_stat_progress_vacuum"),
        view("create_index", "pg_stat_progress_create_index"),
        view("cluster", "pg_stat_progress_cluster"),
    ];
    if version >= 130_000 {
        parts.push(view("analyze", "pg_stat_progress_analyze"));
    }
    let union = parts.join(" UNION ALL ");
    // Names leave the server as bytes (a SQL_ASCII database's may not be UTF-8).
    let relation = raw_bytes(
        "CASE WHEN c.datid = (SELECT oid FROM pg_catalog.pg_database
                              WHERE datname = current_database())
              THEN c.relid::regclass::text END",
    );
    format!(
        "SELECT {cols}, a.backend_type, c.command, c.datid::bigint AS datid,
            c.relid::bigint AS relid,
            {relation} AS relation,
            c.progress::text AS progress
         FROM ({union}) c
         JOIN pg_catalog.pg_stat_activity a ON a.pid = c.pid
         ORDER BY c.pid"
    )
}

/// `data` of a `pg_vacuum_progress` event.
#[derive(Debug, Serialize)]
pub struct Progress {
    /// `vacuum`, `analyze`, `create_index` or `cluster`.
    pub command: String,
    /// The server's phase name.
    pub phase: Option<String>,
    /// Done/total in percent where the phase has such a pair.
    pub pct: Option<f64>,
    /// The table's OID and its database's.
    pub relid: Option<i64>,
    /// Its database's OID.
    pub datid: Option<i64>,
    /// The table (`schema.name` where it is not on the search path).
    pub relation: Option<String>,
    /// Run by autovacuum rather than by a session.
    pub autovacuum: bool,
    /// `backend_type`.
    pub backend_type: Option<String>,
    /// The progress view's row as the server has it.
    pub progress: Row,
    /// The session running it.
    #[serde(flatten)]
    pub session: Session,
}

/// Done/total pairs of the progress views, in the order they are looked for.
const PAIRS: &[(&str, &str)] = &[
    ("heap_blks_scanned", "heap_blks_total"),
    ("sample_blks_scanned", "sample_blks_total"),
    ("blocks_done", "blocks_total"),
    ("tuples_done", "tuples_total"),
];

/// The first done/total pair with a total, as a percentage.
pub fn pct(p: &Row) -> Option<f64> {
    PAIRS.iter().find_map(|(done, total)| {
        let t = p.get(*total)?.as_f64().filter(|t| *t > 0.0)?;
        let d = p.get(*done)?.as_f64()?;
        Some(((d / t * 100.0) * 10.0).round() / 10.0)
    })
}

/// Reads operations in progress.
pub struct ProgressSource {
    host: String,
    reading: Rc<session::Reading>,
    max_query_length: u32,
    version: Rc<Cell<Option<i32>>>,
    skipped: Rc<Cell<u64>>,
    /// (datid, relid) → name, for relations in other databases.
    names: Rc<RefCell<HashMap<(i64, i64), String>>>,
    /// Databases that refused a connection for names, and when.
    unreachable: Rc<RefCell<HashMap<i64, Instant>>>,
}

impl ProgressSource {
    /// From the configuration.
    pub fn new(config: &Config) -> ProgressSource {
        ProgressSource {
            host: config.id_host(),
            reading: session::Reading::of(config),
            max_query_length: config.collection.max_query_length,
            version: Rc::new(Cell::new(None)),
            skipped: Rc::new(Cell::new(0)),
            names: Rc::new(RefCell::new(HashMap::new())),
            unreachable: Rc::new(RefCell::new(HashMap::new())),
        }
    }
}

fn read(
    r: &tokio_postgres::Row,
    reading: &session::Reading,
) -> Result<Progress, tokio_postgres::Error> {
    let mut bad = false;
    let progress = r
        .try_get::<_, Option<Lossy>>("progress")?
        .and_then(|l| serde_json::from_str::<Value>(&l.text).ok());
    let progress = match progress {
        Some(Value::Object(m)) => m,
        _ => Row::new(),
    };
    let backend_type = text(r, "backend_type", &mut bad)?;
    let mut p = Progress {
        command: r.try_get("command")?,
        phase: progress
            .get("phase")
            .and_then(Value::as_str)
            .map(str::to_string),
        pct: pct(&progress),
        relid: r.try_get("relid")?,
        datid: r.try_get("datid")?,
        relation: text(r, "relation", &mut bad)?,
        autovacuum: backend_type.as_deref() == Some("autovacuum worker"),
        backend_type,
        progress,
        session: session::read(r, reading)?,
    };
    p.session.not_utf8 |= bad;
    Ok(p)
}

/// Names the relations of other databases: one short connection per database with
/// unnamed ones, remembered. A database that cannot be reached leaves them unnamed
/// (and is not tried again for [`RETRY_NAMES_AFTER`]).
async fn name_others(
    db: &Db,
    found: &mut [Progress],
    names: &RefCell<HashMap<(i64, i64), String>>,
    unreachable: &RefCell<HashMap<i64, Instant>>,
) {
    let mut wanted: BTreeMap<String, (i64, Vec<i64>)> = BTreeMap::new();
    for p in found.iter_mut() {
        let (Some(datid), Some(relid)) = (p.datid, p.relid) else {
            continue;
        };
        if p.relation.is_some() || relid == 0 {
            continue;
        }
        if let Some(n) = names.borrow().get(&(datid, relid)) {
            p.relation = Some(n.clone());
            continue;
        }
        if let Some(dbname) = &p.session.datname {
            let e = wanted.entry(dbname.clone()).or_insert((datid, Vec::new()));
            e.1.push(relid);
        }
    }
    for (dbname, (datid, relids)) in wanted {
        // A database that refused recently is not asked again for a while (one
        // connection attempt per cycle while a vacuum runs there would be noise).
        if unreachable
            .borrow()
            .get(&datid)
            .is_some_and(|t| t.elapsed() < RETRY_NAMES_AFTER)
        {
            continue;
        }
        let Ok(conn) = db.connect_to(Some(&dbname)).await else {
            unreachable.borrow_mut().insert(datid, Instant::now());
            continue;
        };
        let Ok(rows) = conn
            .query(
                &format!(
                    "SELECT oid::bigint, {} FROM pg_catalog.pg_class WHERE oid::bigint = ANY($1)",
                    raw_bytes("oid::regclass::text")
                ),
                &[&relids],
            )
            .await
        else {
            continue;
        };
        let mut names = names.borrow_mut();
        if names.len() > MAX_NAMES {
            names.clear();
        }
        for r in rows {
            if let (Ok(relid), Ok(Some(name))) =
                (r.try_get::<_, i64>(0), r.try_get::<_, Option<Lossy>>(1))
            {
                names.insert((datid, relid), name.text);
            }
        }
        for p in found.iter_mut() {
            if p.relation.is_none() && p.datid == Some(datid) {
                p.relation = p.relid.and_then(|r| names.get(&(datid, r)).cloned());
            }
        }
    }
}

impl Source for ProgressSource {
    fn kind(&self) -> EventKind {
        EventKind::PgVacuumProgress
    }

    fn rows_skipped(&self) -> u64 {
        self.skipped.get()
    }

    fn collect(&self, db: Rc<Db>) -> CollectFuture {
        let host = self.host.clone();
        let reading = self.reading.clone();
        let max_len = self.max_query_length as i32;
        let version = self.version.clone();
        let skipped = self.skipped.clone();
        let names = self.names.clone();
        let unreachable = self.unreachable.clone();
        Box::pin(async move {
            let conn = db.get().await?;
            let params: [&(dyn ToSql + Sync); 1] = [&max_len];
            let rows = versioned_query(&conn, &version, sql, &params).await?;
            drop(conn);
            let mut found = read_rows(&rows, &skipped, |r| read(r, &reading));
            name_others(&db, &mut found, &names, &unreachable).await;
            let board = db.server().board();
            if board.wanted() {
                let vacuums = found
                    .iter()
                    .filter(|p| p.command == "vacuum")
                    .map(|p| crate::board::VacuumProgress {
                        datname: p.session.datname.clone().unwrap_or_default(),
                        relname: p
                            .relation
                            .clone()
                            .unwrap_or_else(|| p.relid.map(|r| r.to_string()).unwrap_or_default()),
                        phase: p.phase.clone(),
                        progress: p.progress.clone(),
                    })
                    .collect();
                board.post(|p| &mut p.vacuums, std::sync::Arc::new(vacuums));
            }
            let at = Utc::now();
            found
                .iter()
                .map(|p| {
                    let id = format!(
                        "pg_vacuum_progress:{host}:{}:{}",
                        at.timestamp_micros(),
                        p.session.pid
                    );
                    Event::new(id, EventKind::PgVacuumProgress, at, p)
                        .map_err(|e| CycleError::encode("progress", e))
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_comes_from_the_first_pair_with_a_total() {
        let row = |v: Value| v.as_object().cloned().expect("object");
        assert_eq!(
            pct(&row(
                serde_json::json!({"heap_blks_scanned": 25, "heap_blks_total": 200})
            )),
            Some(12.5)
        );
        assert_eq!(
            pct(&row(
                serde_json::json!({"blocks_done": 0, "blocks_total": 0, "tuples_done": 1, "tuples_total": 3})
            )),
            Some(33.3)
        );
        assert_eq!(
            pct(&row(serde_json::json!({"phase": "initializing"}))),
            None
        );
    }
}
