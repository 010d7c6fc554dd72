//! `pg_tables`: a pass over every database the role may connect to, one after another
//! (each on a short connection of its own, counted against the pool), reading its
//! tables most active and largest first, at most `tables_max_relations` per database
//! and `tables_max_pass_s` per pass. A table is shipped when it changed since the last
//! pass (its counters moved, or its size, live/dead tuples or modifications since
//! analyze did) — the first pass ships every one read — with its indexes; each
//! database gets a summary (read, shipped, unchanged, left out by the cap, the tables
//! furthest from freezing) and the pass one too (databases left out by the time cap).
//!
//! Sizes come from `pg_class.relpages` (exact as of the table's last VACUUM, ANALYZE
//! or index build): the exact size (`pg_relation_size`) would take a lock on every
//! table, and a DDL waiting behind that lock would stall every query behind it.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::counters::{Change, Readings};
use super::{int_of, json_rows, object, objects, take, Row};
use crate::config::Config;
use crate::db::Db;
use crate::model::{Event, EventKind};
use crate::sources::{CollectFuture, CycleError, Source};

/// Columns of `pg_stat_user_tables` that are gauges, not counters.
const TABLE_GAUGES: &[&str] = &[
    "n_live_tup",
    "n_dead_tup",
    "n_mod_since_analyze",
    "n_ins_since_vacuum",
];

/// Tables furthest from freezing listed in a database's summary.
const OLDEST_LISTED: usize = 5;

/// The databases to visit, busiest first.
const DATABASES_SQL: &str = "SELECT d.datname, d.oid::bigint
FROM pg_catalog.pg_database d
LEFT JOIN pg_catalog.pg_stat_database s ON s.datid = d.oid
WHERE d.datallowconn AND NOT d.datistemplate AND d.datconnlimit <> -2
  AND has_database_privilege(d.oid, 'CONNECT')
ORDER BY coalesce(s.xact_commit + s.xact_rollback, 0) DESC, d.datname";

/// One database's tables (`$1`: at most this many), most active and largest first.
const TABLES_SQL: &str = "WITH t AS (
    SELECT s.relid, to_jsonb(s) AS stats, to_jsonb(io) AS io, c.relkind, c.relpages,
        c.reltoastrelid, c.reltuples, c.relfrozenxid, c.relminmxid,
        count(*) OVER () AS total
    FROM pg_catalog.pg_stat_user_tables s
    JOIN pg_catalog.pg_class c ON c.oid = s.relid
    LEFT JOIN pg_catalog.pg_statio_user_tables io ON io.relid = s.relid
    ORDER BY coalesce(s.seq_scan, 0) + coalesce(s.idx_scan, 0)
             + s.n_tup_ins + s.n_tup_upd + s.n_tup_del DESC,
             c.relpages DESC, s.relid
    LIMIT $1)
SELECT jsonb_build_object(
    'relid', t.relid::bigint,
    'schema', t.stats->>'schemaname',
    'relation', t.stats->>'relname',
    'relkind', t.relkind,
    'total', t.total,
    'heap_bytes', t.relpages::bigint * b.size,
    'toast_bytes', coalesce((SELECT relpages::bigint FROM pg_catalog.pg_class
                             WHERE oid = t.reltoastrelid), 0) * b.size,
    'reltuples', t.reltuples,
    'frozen_xid_age', age(t.relfrozenxid),
    'mxid_age', mxid_age(t.relminmxid),
    'stats', (t.stats - 'relid' - 'schemaname' - 'relname')
             || coalesce(t.io - 'relid' - 'schemaname' - 'relname', '{}'),
    'indexes', (SELECT coalesce(jsonb_agg(jsonb_build_object(
            'indexrelid', i.indexrelid::bigint,
            'index', i.indexrelname,
            'bytes', ic.relpages::bigint * b.size,
            'unique', x.indisunique,
            'primary', x.indisprimary,
            'valid', x.indisvalid,
            'stats', to_jsonb(i) - 'relid' - 'indexrelid' - 'schemaname' - 'relname'
                     - 'indexrelname') ORDER BY i.indexrelname), '[]')
        FROM pg_catalog.pg_stat_user_indexes i
        JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_catalog.pg_index x ON x.indexrelid = i.indexrelid
        WHERE i.relid = t.relid))::text
FROM t, (SELECT current_setting('block_size')::bigint AS size) b";

/// One index of a shipped table.
#[derive(Debug, Serialize)]
pub struct Index {
    /// OID.
    pub indexrelid: i64,
    /// Name.
    pub index: Value,
    /// Size (relpages × block size).
    pub bytes: Value,
    /// `indisunique`.
    pub unique: Value,
    /// `indisprimary`.
    pub primary: Value,
    /// `indisvalid`.
    pub valid: Value,
    /// Never scanned since the statistics were reset (`idx_scan = 0`).
    pub unused: bool,
    /// `pg_stat_user_indexes` as the server has it.
    pub stats: Row,
    /// Deltas of `stats` since the last pass.
    #[serde(flatten)]
    pub change: Change,
}

/// A table that changed (`record: "table"`).
#[derive(Debug, Serialize)]
pub struct Table {
    /// `table`.
    pub record: &'static str,
    /// Its database.
    pub datname: String,
    /// OID.
    pub relid: i64,
    /// Schema.
    pub schema: Value,
    /// Name.
    pub relation: Value,
    /// `relkind` (`r` table, `m` materialized view, `p` partitioned).
    pub relkind: Value,
    /// Heap size (relpages × block size).
    pub heap_bytes: Value,
    /// TOAST size.
    pub toast_bytes: Value,
    /// Sum of its indexes' sizes.
    pub indexes_bytes: i64,
    /// `reltuples` (the planner's row estimate).
    pub reltuples: Value,
    /// `age(relfrozenxid)`.
    pub frozen_xid_age: Value,
    /// `mxid_age(relminmxid)`.
    pub mxid_age: Value,
    /// `pg_stat_user_tables` and `pg_statio_user_tables` as the server has them.
    pub stats: Row,
    /// Deltas of the counters in `stats` since the last pass.
    #[serde(flatten)]
    pub change: Change,
    /// Its indexes.
    pub indexes: Vec<Index>,
}

/// A database's part of a pass (`record: "database"`).
#[derive(Debug, Serialize)]
pub struct DatabasePass {
    /// `database`.
    pub record: &'static str,
    /// The database.
    pub datname: String,
    /// Tables in it.
    pub tables_total: i64,
    /// Tables read (at most `tables_max_relations`).
    pub tables_read: usize,
    /// Tables shipped (changed since the last pass, or first seen).
    pub tables_shipped: usize,
    /// Tables read that had not changed.
    pub tables_unchanged: usize,
    /// Tables not read because of `tables_max_relations` (least active, smallest).
    pub tables_left_out: i64,
    /// The tables read furthest from freezing: relation and `frozen_xid_age`.
    pub oldest_frozen: Vec<Row>,
    /// Milliseconds spent on the database.
    pub duration_ms: u64,
    /// Why it could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A whole pass (`record: "pass"`).
#[derive(Debug, Serialize)]
pub struct Pass {
    /// `pass`.
    pub record: &'static str,
    /// Databases the role may connect to.
    pub databases_total: usize,
    /// Databases read.
    pub databases_read: usize,
    /// Databases not reached within `tables_max_pass_s` (the quietest ones).
    pub databases_left_out: Vec<String>,
    /// Milliseconds the pass took.
    pub duration_ms: u64,
}

/// What is remembered between passes.
pub struct Memory {
    tables: Readings<(i64, i64)>,
    indexes: Readings<(i64, i64)>,
    /// A hash of each table's gauges and sizes: a change ships the table.
    gauges: HashMap<(i64, i64), u64>,
}

/// Reads the tables of every database.
pub struct TablesSource {
    host: String,
    max_relations: u32,
    max_pass: Duration,
    memory: Rc<RefCell<Memory>>,
}

impl TablesSource {
    /// From the configuration.
    pub fn new(config: &Config) -> TablesSource {
        TablesSource {
            host: config.agent.hostname.clone(),
            max_relations: config.collection.tables_max_relations,
            max_pass: config.collection.tables_max_pass,
            memory: Rc::new(RefCell::new(Memory {
                tables: Readings::new(TABLE_GAUGES),
                indexes: Readings::new(&[]),
                gauges: HashMap::new(),
            })),
        }
    }
}

fn gauges_hash(r: &Row, stats: &Row, indexes: &[Row]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for k in ["heap_bytes", "toast_bytes", "reltuples"] {
        r.get(k).map(Value::to_string).hash(&mut h);
    }
    for k in TABLE_GAUGES {
        stats.get(*k).map(Value::to_string).hash(&mut h);
    }
    for i in indexes {
        i.get("bytes").map(Value::to_string).hash(&mut h);
        i.get("indexrelid").map(Value::to_string).hash(&mut h);
    }
    h.finish()
}

/// One table row compared with the last pass: `Some` when it is to be shipped.
fn to_table(
    mut r: Row,
    datid: i64,
    datname: &str,
    memory: &mut Memory,
    now: Instant,
) -> Option<Table> {
    let relid = int_of(&r, "relid")?;
    let stats = object(r.remove("stats")).unwrap_or_default();
    let index_rows = objects(r.remove("indexes"));
    let hash = gauges_hash(&r, &stats, &index_rows);
    let moved = memory.gauges.insert((datid, relid), hash) != Some(hash);
    let compared = memory.tables.step((datid, relid), &stats, now);
    let mut indexes = Vec::with_capacity(index_rows.len());
    let mut indexes_bytes = 0;
    for mut i in index_rows {
        let indexrelid = int_of(&i, "indexrelid").unwrap_or(0);
        let istats = object(i.remove("stats")).unwrap_or_default();
        let change = memory.indexes.step((datid, indexrelid), &istats, now);
        indexes_bytes += int_of(&i, "bytes").unwrap_or(0);
        indexes.push(Index {
            indexrelid,
            index: take(&mut i, "index"),
            bytes: take(&mut i, "bytes"),
            unique: take(&mut i, "unique"),
            primary: take(&mut i, "primary"),
            valid: take(&mut i, "valid"),
            unused: int_of(&istats, "idx_scan") == Some(0),
            stats: istats,
            change: change.into(),
        });
    }
    if !moved && compared.is_quiet() {
        return None;
    }
    Some(Table {
        record: "table",
        datname: datname.to_string(),
        relid,
        schema: take(&mut r, "schema"),
        relation: take(&mut r, "relation"),
        relkind: take(&mut r, "relkind"),
        heap_bytes: take(&mut r, "heap_bytes"),
        toast_bytes: take(&mut r, "toast_bytes"),
        indexes_bytes,
        reltuples: take(&mut r, "reltuples"),
        frozen_xid_age: take(&mut r, "frozen_xid_age"),
        mxid_age: take(&mut r, "mxid_age"),
        stats,
        change: compared.into(),
        indexes,
    })
}

/// The tables of one database, compared with the last pass: what to ship and the
/// database's summary.
pub fn read_database(
    rows: Vec<Row>,
    datid: i64,
    datname: &str,
    memory: &mut Memory,
    now: Instant,
) -> (Vec<Table>, DatabasePass) {
    let total = rows.first().and_then(|r| int_of(r, "total")).unwrap_or(0);
    let read = rows.len();
    let mut oldest: Vec<(i64, Row)> = rows
        .iter()
        .filter_map(|r| {
            let age = int_of(r, "frozen_xid_age")?;
            let mut o = Row::new();
            o.insert(
                "schema".into(),
                r.get("schema").cloned().unwrap_or(Value::Null),
            );
            o.insert(
                "relation".into(),
                r.get("relation").cloned().unwrap_or(Value::Null),
            );
            o.insert("frozen_xid_age".into(), Value::from(age));
            Some((age, o))
        })
        .collect();
    oldest.sort_by_key(|o| std::cmp::Reverse(o.0));
    oldest.truncate(OLDEST_LISTED);
    let mut seen = HashSet::new();
    let mut shipped = Vec::new();
    for r in rows {
        if let Some(relid) = int_of(&r, "relid") {
            seen.insert(relid);
        }
        if let Some(t) = to_table(r, datid, datname, memory, now) {
            shipped.push(t);
        }
    }
    // Tables dropped (or no longer read) are forgotten; other databases' are kept.
    memory
        .tables
        .retain(|(d, r)| *d != datid || seen.contains(r));
    memory
        .gauges
        .retain(|(d, r), _| *d != datid || seen.contains(r));
    let summary = DatabasePass {
        record: "database",
        datname: datname.to_string(),
        tables_total: total,
        tables_read: read,
        tables_shipped: shipped.len(),
        tables_unchanged: read - shipped.len(),
        tables_left_out: (total - read as i64).max(0),
        oldest_frozen: oldest.into_iter().map(|(_, o)| o).collect(),
        duration_ms: 0,
        error: None,
    };
    (shipped, summary)
}

impl Source for TablesSource {
    fn kind(&self) -> EventKind {
        EventKind::PgTables
    }

    fn cycle_limit(&self, base: Duration) -> Duration {
        // The pass stops starting databases after `max_pass`; the one in progress
        // still has its own limit.
        self.max_pass + base
    }

    fn collect(&self, db: Rc<Db>) -> CollectFuture {
        let host = self.host.clone();
        let max_relations = self.max_relations as i64;
        let max_pass = self.max_pass;
        let memory = self.memory.clone();
        Box::pin(async move {
            let started = Instant::now();
            let at = Utc::now();
            let databases: Vec<(String, i64)> = {
                let conn = db.get().await?;
                let rows = conn
                    .query(DATABASES_SQL, &[])
                    .await
                    .map_err(crate::db::DbError::query)?;
                rows.iter()
                    .filter_map(|r| {
                        let name = r.try_get::<_, crate::db::text::Lossy>(0).ok()?;
                        // A name that is not UTF-8 cannot be connected to by name.
                        (!name.replaced).then_some((name.text, r.try_get(1).ok()?))
                    })
                    .collect()
            };
            let mut events = Vec::new();
            let mut left_out = Vec::new();
            let mut read = 0;
            for (name, datid) in &databases {
                if started.elapsed() >= max_pass {
                    left_out.push(name.clone());
                    continue;
                }
                let db_started = Instant::now();
                let res = async {
                    let conn = db.connect_to(Some(name)).await?;
                    json_rows(&conn, TABLES_SQL, &[&max_relations]).await
                }
                .await;
                let (tables, mut summary) = match res {
                    Ok((rows, _)) => {
                        read += 1;
                        read_database(rows, *datid, name, &mut memory.borrow_mut(), Instant::now())
                    }
                    Err(e) => (
                        Vec::new(),
                        DatabasePass {
                            record: "database",
                            datname: name.clone(),
                            tables_total: 0,
                            tables_read: 0,
                            tables_shipped: 0,
                            tables_unchanged: 0,
                            tables_left_out: 0,
                            oldest_frozen: Vec::new(),
                            duration_ms: 0,
                            error: Some(e.to_string()),
                        },
                    ),
                };
                summary.duration_ms = db_started.elapsed().as_millis() as u64;
                for t in &tables {
                    let id = format!(
                        "pg_tables:{host}:{}:{datid}:{}",
                        at.timestamp_micros(),
                        t.relid
                    );
                    events.push(event(id, at, t)?);
                }
                let id = format!("pg_tables:{host}:{}:{datid}", at.timestamp_micros());
                events.push(event(id, at, &summary)?);
            }
            // Databases gone are forgotten.
            let ids: HashSet<i64> = databases.iter().map(|(_, d)| *d).collect();
            {
                let mut m = memory.borrow_mut();
                m.tables.retain(|(d, _)| ids.contains(d));
                m.indexes.retain(|(d, _)| ids.contains(d));
                m.gauges.retain(|(d, _), _| ids.contains(d));
            }
            let pass = Pass {
                record: "pass",
                databases_total: databases.len(),
                databases_read: read,
                databases_left_out: left_out,
                duration_ms: started.elapsed().as_millis() as u64,
            };
            let id = format!("pg_tables:{host}:{}", at.timestamp_micros());
            events.push(event(id, at, &pass)?);
            Ok(events)
        })
    }
}
/// One of the three shapes of `pg_tables` data as an event.
fn event<T: Serialize>(id: String, at: DateTime<Utc>, data: &T) -> Result<Event, CycleError> {
    Event::new(id, EventKind::PgTables, at, data).map_err(|e| CycleError::encode("table", e))
}
