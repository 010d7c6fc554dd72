//! `pg_tables`: a pass over every database the role may connect to, one after another
//! (each on a short connection of its own, counted against the pool), reading its
//! tables most active and largest first, at most `tables_max_relations` per database
//! and `tables_max_pass_s` per pass. A table is shipped when it changed since the last
//! pass — the first pass ships every one read — with its indexes: a first, cheap query
//! reads a signature of each table (its counters, sizes, live and dead tuples, its
//! indexes' scans and sizes, hashed by the server) and only the tables whose signature
//! moved are read in full, so a quiet cluster of 10,000 tables costs one light query
//! per database, not 10,000 rows; each
//! database gets a summary (read, shipped, unchanged, left out by the cap, the tables
//! furthest from freezing) and the pass one too (databases left out by the time cap).
//!
//! Sizes come from `pg_class.relpages` (exact as of the table's last VACUUM, ANALYZE
//! or index build): the exact size (`pg_relation_size`) would take a lock on every
//! table, and a DDL waiting behind that lock would stall every query behind it.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::counters::{Change, Readings};
use super::{int_of, json_rows, object, objects, take, Row};
use crate::board;
use crate::config::Config;
use crate::db::text::{raw_bytes, text};
use crate::db::Db;
use crate::model::{Event, EventKind, Problem, SourceState};
use crate::sources::outbox::Outbox;
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

/// The databases to visit, busiest first, and whether the role may connect.
const DATABASES_SQL: &str = "SELECT d.datname, d.oid::bigint,
    has_database_privilege(d.oid, 'CONNECT')
FROM pg_catalog.pg_database d
LEFT JOIN pg_catalog.pg_stat_database s ON s.datid = d.oid
WHERE d.datallowconn AND NOT d.datistemplate AND d.datconnlimit <> -2
ORDER BY coalesce(s.xact_commit + s.xact_rollback, 0) DESC, d.datname";

/// One database's tables (`$1`: at most this many), most active and largest first:
/// a signature of each (hashed by the server) to tell which changed since the last
/// pass, and what a database's summary needs.
fn signatures_sql() -> String {
    let (schema, relation) = (raw_bytes("p.schema"), raw_bytes("p.relation"));
    format!(
        "SELECT p.relid::bigint AS relid,
    hashtext(concat_ws(',', pg_stat_get_numscans(p.relid), pg_stat_get_tuples_returned(p.relid),
        pg_stat_get_tuples_fetched(p.relid), pg_stat_get_tuples_inserted(p.relid),
        pg_stat_get_tuples_updated(p.relid), pg_stat_get_tuples_deleted(p.relid),
        pg_stat_get_tuples_hot_updated(p.relid), pg_stat_get_live_tuples(p.relid),
        pg_stat_get_dead_tuples(p.relid), pg_stat_get_vacuum_count(p.relid),
        pg_stat_get_autovacuum_count(p.relid), pg_stat_get_analyze_count(p.relid),
        pg_stat_get_autoanalyze_count(p.relid), pg_stat_get_blocks_fetched(p.relid),
        p.relpages, p.reltuples, p.relfrozenxid,
        (SELECT relpages FROM pg_catalog.pg_class WHERE oid = p.reltoastrelid),
        (SELECT string_agg(pg_stat_get_numscans(x.indexrelid) || '/' || ic.relpages, ','
                           ORDER BY x.indexrelid)
         FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class ic ON ic.oid = x.indexrelid
         WHERE x.indrelid = p.relid))) AS signature,
    p.total, {schema} AS schema, {relation} AS relation,
    age(p.relfrozenxid)::bigint AS frozen_xid_age
FROM (SELECT c.oid AS relid, c.relpages, c.reltuples, c.relfrozenxid, c.reltoastrelid,
             n.nspname::text AS schema, c.relname::text AS relation,
             count(*) OVER () AS total
      FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'm')
        AND n.nspname NOT IN ('pg_catalog', 'information_schema')
        AND n.nspname !~ '^pg_toast'
      ORDER BY pg_stat_get_numscans(c.oid) + pg_stat_get_tuples_inserted(c.oid)
               + pg_stat_get_tuples_updated(c.oid) + pg_stat_get_tuples_deleted(c.oid) DESC,
               c.relpages DESC, c.oid
      LIMIT $1) p"
    )
}

/// The tables `$1` in full: statistics as the server has them, sizes, freeze ages and
/// indexes. (The views' filter on their grouping column is pushed down, so only these
/// tables are computed.)
const DETAILS_SQL: &str = "WITH st AS (
    SELECT s.relid, to_jsonb(s) AS stats FROM pg_catalog.pg_stat_user_tables s
    WHERE s.relid = ANY($1::bigint[]::oid[])),
sio AS (
    SELECT io.relid, to_jsonb(io) AS io FROM pg_catalog.pg_statio_user_tables io
    WHERE io.relid = ANY($1::bigint[]::oid[]))
SELECT jsonb_build_object(
    'relid', st.relid::bigint,
    'schema', st.stats->>'schemaname',
    'relation', st.stats->>'relname',
    'relkind', c.relkind,
    'heap_bytes', c.relpages::bigint * b.size,
    'toast_bytes', coalesce((SELECT relpages::bigint FROM pg_catalog.pg_class
                             WHERE oid = c.reltoastrelid), 0) * b.size,
    'reltuples', c.reltuples,
    'frozen_xid_age', age(c.relfrozenxid),
    'mxid_age', mxid_age(c.relminmxid),
    'stats', (st.stats - 'relid' - 'schemaname' - 'relname')
             || coalesce(sio.io - 'relid' - 'schemaname' - 'relname', '{}'),
    'indexes', (SELECT coalesce(jsonb_agg(jsonb_build_object(
            'indexrelid', i.indexrelid::bigint,
            'index', i.indexrelname,
            'bytes', ic.relpages::bigint * b.size,
            'unique', x.indisunique,
            'primary', x.indisprimary,
            'valid', x.indisvalid,
            'stats', to_jsonb(i) - 'relid' - 'indexrelid' - 'schemaname' - 'relname'
                     - 'indexrelname'
                     || jsonb_build_object('idx_blks_read', io.idx_blks_read,
                                           'idx_blks_hit', io.idx_blks_hit))
            ORDER BY i.indexrelname), '[]')
        FROM pg_catalog.pg_stat_user_indexes i
        LEFT JOIN pg_catalog.pg_statio_user_indexes io ON io.indexrelid = i.indexrelid
        JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_catalog.pg_index x ON x.indexrelid = i.indexrelid
        WHERE i.relid = st.relid))::text
FROM st
JOIN pg_catalog.pg_class c ON c.oid = st.relid
LEFT JOIN sio ON sio.relid = st.relid
CROSS JOIN (SELECT current_setting('block_size')::bigint AS size) b";

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
    /// Databases the role lacks CONNECT on: not read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub databases_without_connect: Vec<String>,
    /// Databases whose names are not UTF-8 (shown with U+FFFD): a connection cannot
    /// name them, so they are not read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub databases_not_utf8: Vec<String>,
    /// Milliseconds the pass took.
    pub duration_ms: u64,
}

/// What is remembered between passes.
pub struct Memory {
    tables: Readings<(i64, i64)>,
    /// By database, table and index.
    indexes: Readings<(i64, i64, i64)>,
    /// Each table's signature at the last pass: a new one ships the table.
    signatures: HashMap<(i64, i64), i32>,
    /// Every table read, as the metrics page shows it (kept while it asks).
    board: Arc<board::Tables>,
}

impl Memory {
    /// Forgets every table: the server is another cluster or changed role.
    fn forget_all(&mut self) {
        self.tables.retain(|_| false);
        self.indexes.retain(|_| false);
        self.signatures.clear();
        self.board = Arc::default();
    }

    /// Forgets what a pass remembered of tables whose events never reached the spool:
    /// their signatures (so they ship again, whether or not they change) and their and
    /// their indexes' readings (so no delta is taken against a reading never shipped).
    /// `ids` are event ids; a table's ends in `:<datid>:<relid>`.
    pub fn forget_shipped(&mut self, ids: &[String]) {
        let keys: HashSet<(i64, i64)> = ids
            .iter()
            .filter_map(|id| {
                let mut parts = id.rsplitn(3, ':');
                let relid = parts.next()?.parse().ok()?;
                let datid = parts.next()?.parse().ok()?;
                Some((datid, relid))
            })
            .collect();
        for k in &keys {
            self.signatures.remove(k);
        }
        self.tables.retain(|k| !keys.contains(k));
        self.indexes.retain(|(d, r, _)| !keys.contains(&(*d, *r)));
    }
}

/// Reads the tables of every database.
pub struct TablesSource {
    host: String,
    user: String,
    max_relations: u32,
    max_pass: Duration,
    memory: Rc<RefCell<Memory>>,
    /// What the last pass could not do.
    state: Rc<RefCell<Option<SourceState>>>,
    /// Each database's events go to the collector as soon as it is read (when run by
    /// one): a pass of many databases never waits in memory whole.
    outbox: RefCell<Option<Outbox>>,
    /// The cluster and role the remembered tables are of.
    identity: Rc<crate::sources::identity::Guard>,
    /// The server, as its identity's report names it.
    who: crate::sources::identity::Who,
}

impl TablesSource {
    /// From the configuration.
    pub fn new(config: &Config) -> TablesSource {
        TablesSource {
            host: config.id_host(),
            user: config.database.user.clone(),
            max_relations: config.collection.tables_max_relations,
            max_pass: config.collection.tables_max_pass,
            memory: Rc::new(RefCell::new(Memory {
                tables: Readings::new(TABLE_GAUGES),
                indexes: Readings::new(&[]),
                signatures: HashMap::new(),
                board: Arc::default(),
            })),
            state: Rc::new(RefCell::new(None)),
            outbox: RefCell::new(None),
            identity: Rc::default(),
            who: crate::sources::identity::Who::of(config),
        }
    }
}

/// One table's signature row (the first query).
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    /// OID.
    pub relid: i64,
    /// The server's hash of its counters and sizes.
    pub signature: i32,
    /// Tables in the database.
    pub total: i64,
    /// Schema.
    pub schema: String,
    /// Name.
    pub relation: String,
    /// `age(relfrozenxid)`.
    pub frozen_xid_age: Option<i64>,
}

fn signature(r: &tokio_postgres::Row) -> Result<Signature, tokio_postgres::Error> {
    let mut bad = false;
    Ok(Signature {
        relid: r.try_get("relid")?,
        signature: r.try_get::<_, Option<i32>>("signature")?.unwrap_or(0),
        total: r.try_get("total")?,
        schema: text(r, "schema", &mut bad)?.unwrap_or_default(),
        relation: text(r, "relation", &mut bad)?.unwrap_or_default(),
        frozen_xid_age: r.try_get("frozen_xid_age")?,
    })
}

/// Which of the tables read changed since the last pass (all of them the first time);
/// remembers the new signatures and forgets the database's tables not read.
pub fn changed(sigs: &[Signature], datid: i64, memory: &mut Memory) -> Vec<i64> {
    let mut out = Vec::new();
    for s in sigs {
        if memory.signatures.insert((datid, s.relid), s.signature) != Some(s.signature) {
            out.push(s.relid);
        }
    }
    let seen: HashSet<i64> = sigs.iter().map(|s| s.relid).collect();
    memory
        .signatures
        .retain(|(d, r), _| *d != datid || seen.contains(r));
    memory
        .tables
        .retain(|(d, r)| *d != datid || seen.contains(r));
    memory
        .indexes
        .retain(|(d, r, _)| *d != datid || seen.contains(r));
    out
}

/// A table read in full, with its deltas since the last pass that shipped it.
fn to_table(
    mut r: Row,
    datname: &str,
    datid: i64,
    memory: &mut Memory,
    now: Instant,
) -> Option<Table> {
    let relid = int_of(&r, "relid")?;
    let stats = object(r.remove("stats")).unwrap_or_default();
    let compared = memory.tables.step((datid, relid), &stats, now);
    let index_rows = objects(r.remove("indexes"));
    let mut indexes = Vec::with_capacity(index_rows.len());
    let mut indexes_bytes = 0;
    for mut i in index_rows {
        let indexrelid = int_of(&i, "indexrelid").unwrap_or(0);
        let istats = object(i.remove("stats")).unwrap_or_default();
        let change = memory
            .indexes
            .step((datid, relid, indexrelid), &istats, now);
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

/// What the metrics page lacks besides `changed`: every table read but not on the
/// board (the page was turned on after the table last changed). Forgets the
/// database's tables no longer read.
fn board_wants(
    sigs: &[Signature],
    datid: i64,
    mut changed: Vec<i64>,
    memory: &mut Memory,
) -> Vec<i64> {
    let read: HashSet<i64> = sigs.iter().map(|s| s.relid).collect();
    let board = Arc::make_mut(&mut memory.board);
    board
        .rows
        .retain(|(d, r), _| *d != datid || read.contains(r));
    let already: HashSet<i64> = changed.iter().copied().collect();
    for s in sigs {
        if !already.contains(&s.relid) && !board.rows.contains_key(&(datid, s.relid)) {
            changed.push(s.relid);
        }
    }
    changed
}

/// Forgets the readings of a database's indexes that are gone from the tables read in
/// full (`read`: `(relid, None)` for each such table and `(relid, Some(indexrelid))` for
/// each of its indexes).
fn forget_dropped_indexes(memory: &mut Memory, datid: i64, read: &HashSet<(i64, Option<i64>)>) {
    memory.indexes.retain(|(d, r, i)| {
        *d != datid || !read.contains(&(*r, None)) || read.contains(&(*r, Some(*i)))
    });
}

/// A table as the metrics page shows it.
fn board_row(t: &Table, datname: &str) -> board::TableRow {
    let mut values = [f64::NAN; board::TABLE_COLUMNS.len()];
    for (i, col) in board::TABLE_COLUMNS.iter().enumerate() {
        values[i] = match *col {
            c if board::TABLE_TIMES.contains(&c) => {
                Some(board::unix_seconds(t.stats.get(c)).map_or(0.0, f64::floor))
            }
            c => t.stats.get(c).and_then(Value::as_f64),
        }
        .unwrap_or(f64::NAN);
    }
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let indexes = t.indexes.iter().map(|i| {
        let value = |c: &str| i.stats.get(c).and_then(Value::as_f64).unwrap_or(f64::NAN);
        (s(&i.index), board::INDEX_COLUMNS.map(value))
    });
    board::TableRow::new((datname, &s(&t.schema), &s(&t.relation)), values, indexes)
}

/// Posts the tables read for the metrics page (forgetting databases gone), or drops
/// them when it no longer asks.
fn post(db: &Db, memory: &mut Memory, databases: &HashSet<i64>) {
    let board = db.server().board();
    if !board.wanted() {
        memory.board = Arc::default();
        return;
    }
    Arc::make_mut(&mut memory.board)
        .rows
        .retain(|(d, _), _| databases.contains(d));
    board.post(|p| &mut p.tables, memory.board.clone());
}

/// A database's summary from its signature rows and how many tables were shipped.
pub fn summary(datname: &str, sigs: &[Signature], shipped: usize) -> DatabasePass {
    let total = sigs.first().map_or(0, |s| s.total);
    let mut oldest: Vec<&Signature> = sigs.iter().filter(|s| s.frozen_xid_age.is_some()).collect();
    oldest.sort_by_key(|s| std::cmp::Reverse(s.frozen_xid_age));
    DatabasePass {
        record: "database",
        datname: datname.to_string(),
        tables_total: total,
        tables_read: sigs.len(),
        tables_shipped: shipped,
        tables_unchanged: sigs.len().saturating_sub(shipped),
        tables_left_out: (total - sigs.len() as i64).max(0),
        oldest_frozen: oldest
            .into_iter()
            .take(OLDEST_LISTED)
            .map(|s| {
                let mut o = Row::new();
                o.insert("schema".into(), Value::from(s.schema.clone()));
                o.insert("relation".into(), Value::from(s.relation.clone()));
                o.insert("frozen_xid_age".into(), Value::from(s.frozen_xid_age));
                o
            })
            .collect(),
        duration_ms: 0,
        error: None,
    }
}

/// Changed tables are read in full this many at a time, each made into its event
/// before the next are read (a first pass of thousands holds a chunk, not all).
const DETAILS_CHUNK: usize = 100;

/// Where a pass's events go: into the cycle's result, and (when a collector runs the
/// source) to the collector each time a chunk of tables is read.
struct Sink<'a> {
    events: &'a mut Vec<Event>,
    outbox: Option<&'a mut Outbox>,
    /// When the pass's time is up: waits for room end then.
    until: Instant,
}

impl Sink<'_> {
    /// Hands what was read so far to the collector and waits until it has room.
    async fn flush(&mut self) -> Result<(), CycleError> {
        if let Some(out) = self.outbox.as_mut() {
            let wait = self.until.saturating_duration_since(Instant::now());
            out.send(std::mem::take(self.events), wait)
                .await
                .map_err(|_| CycleError::Host {
                    what: "the collector".into(),
                    error: "it is gone".into(),
                })?;
        }
        Ok(())
    }
}

/// One database's part of a pass on its own connection: signatures, then the changed
/// tables in full, as events into `out` (each with an id under `id_prefix`), handed
/// over a chunk at a time.
async fn pass_database(
    db: &Db,
    (name, datid): (&str, i64),
    max_relations: i64,
    memory: &RefCell<Memory>,
    id_prefix: &str,
    at: DateTime<Utc>,
    out: &mut Sink<'_>,
) -> Result<DatabasePass, CycleError> {
    let conn = db.connect_to(Some(name)).await?;
    let on_board = db.server().board().wanted();
    let rows = conn
        .query(&signatures_sql(), &[&max_relations])
        .await
        .map_err(crate::db::DbError::query)?;
    let sigs: Vec<Signature> = rows.iter().filter_map(|r| signature(r).ok()).collect();
    drop(rows);
    let mut wanted = changed(&sigs, datid, &mut memory.borrow_mut());
    if on_board {
        wanted = board_wants(&sigs, datid, wanted, &mut memory.borrow_mut());
    }
    let mut shipped = 0;
    // The indexes of the tables read in full, to forget the readings of those dropped.
    let mut indexes = HashSet::new();
    for chunk in wanted.chunks(DETAILS_CHUNK) {
        let (rows, _) = json_rows(&conn, DETAILS_SQL, &[&chunk]).await?;
        let now = Instant::now();
        {
            let mut m = memory.borrow_mut();
            for r in rows {
                if let Some(t) = to_table(r, name, datid, &mut m, now) {
                    indexes.insert((t.relid, None));
                    indexes.extend(t.indexes.iter().map(|i| (t.relid, Some(i.indexrelid))));
                    if on_board {
                        let row = board_row(&t, name);
                        Arc::make_mut(&mut m.board)
                            .rows
                            .insert((datid, t.relid), Arc::new(row));
                    }
                    out.events
                        .push(event(format!("{id_prefix}:{}", t.relid), at, &t)?);
                    shipped += 1;
                }
            }
        }
        out.flush().await?;
    }
    forget_dropped_indexes(&mut memory.borrow_mut(), datid, &indexes);
    Ok(summary(name, &sigs, shipped))
}

impl Source for TablesSource {
    fn report(&self) -> Option<(Vec<Event>, crate::model::Checkpoint)> {
        self.identity.take_report()
    }

    fn kind(&self) -> EventKind {
        EventKind::PgTables
    }

    fn state(&self) -> Option<SourceState> {
        self.state.borrow().clone()
    }

    fn cycle_limit(&self, base: Duration) -> Duration {
        // The pass stops starting databases after `max_pass`; the one in progress
        // still has its own limit.
        self.max_pass + base
    }

    fn wants_outbox(&self) -> bool {
        true
    }

    fn set_outbox(&self, outbox: Outbox) {
        *self.outbox.borrow_mut() = Some(outbox);
    }

    fn tracks_shipped(&self) -> bool {
        true
    }

    fn lost(&self, ids: &[String]) {
        self.memory.borrow_mut().forget_shipped(ids);
    }

    fn collect(&self, db: Rc<Db>) -> CollectFuture {
        let mut outbox = self.outbox.borrow().clone();
        let host = self.host.clone();
        let max_relations = self.max_relations as i64;
        let max_pass = self.max_pass;
        let memory = self.memory.clone();
        let state = self.state.clone();
        let user = self.user.clone();
        let identity = self.identity.clone();
        let who = self.who.clone();
        Box::pin(async move {
            let started = Instant::now();
            let at = Utc::now();
            let mut databases: Vec<(String, i64)> = Vec::new();
            // A name that is not UTF-8 cannot be connected to by name: named (with
            // U+FFFD) in the pass summary instead.
            let mut not_utf8 = Vec::new();
            let mut no_connect = Vec::new();
            let mut events = Vec::new();
            {
                let conn = db.get().await?;
                let look = identity.look(&conn, db.server(), &who).await?;
                if look.stale {
                    memory.borrow_mut().forget_all();
                }
                let rows = conn
                    .query(DATABASES_SQL, &[])
                    .await
                    .map_err(crate::db::DbError::query)?;
                for r in &rows {
                    let (Ok(name), Ok(datid), Ok(allowed)) = (
                        r.try_get::<_, crate::db::text::Lossy>(0),
                        r.try_get::<_, i64>(1),
                        r.try_get::<_, bool>(2),
                    ) else {
                        continue;
                    };
                    if !allowed {
                        no_connect.push(name.text);
                    } else if name.replaced {
                        not_utf8.push(name.text);
                    } else {
                        databases.push((name.text, datid));
                    }
                }
            }
            let mut left_out = Vec::new();
            let mut failed: Vec<(String, String)> = Vec::new();
            let mut read = 0;
            for (name, datid) in &databases {
                if started.elapsed() >= max_pass {
                    left_out.push(name.clone());
                    continue;
                }
                let db_started = Instant::now();
                let prefix = format!("pg_tables:{host}:{}:{datid}", at.timestamp_micros());
                let mut sink = Sink {
                    events: &mut events,
                    outbox: outbox.as_mut(),
                    until: started + max_pass,
                };
                let res = pass_database(
                    &db,
                    (name, *datid),
                    max_relations,
                    &memory,
                    &prefix,
                    at,
                    &mut sink,
                )
                .await;
                let mut summary = match res {
                    Ok(done) => {
                        read += 1;
                        done
                    }
                    Err(CycleError::Db(e)) => {
                        // Its tables are read in full next time.
                        memory
                            .borrow_mut()
                            .signatures
                            .retain(|(d, _), _| d != datid);
                        let mut s = summary(name, &[], 0);
                        s.error = Some(e.to_string());
                        failed.push((name.clone(), e.to_string()));
                        s
                    }
                    Err(e) => return Err(e),
                };
                summary.duration_ms = db_started.elapsed().as_millis() as u64;
                let id = format!("pg_tables:{host}:{}:{datid}", at.timestamp_micros());
                events.push(event(id, at, &summary)?);
                // This database's summary goes now; the next database is read once the
                // collector took it in and has room (or the pass's time is up: the
                // collector keeps what it gets within its cap, and says so if it must
                // drop any).
                Sink {
                    events: &mut events,
                    outbox: outbox.as_mut(),
                    until: started + max_pass,
                }
                .flush()
                .await?;
            }
            // Databases gone are forgotten.
            let ids: HashSet<i64> = databases.iter().map(|(_, d)| *d).collect();
            {
                let mut m = memory.borrow_mut();
                m.tables.retain(|(d, _)| ids.contains(d));
                m.indexes.retain(|(d, _, _)| ids.contains(d));
                m.signatures.retain(|(d, _), _| ids.contains(d));
            }
            post(&db, &mut memory.borrow_mut(), &ids);
            *state.borrow_mut() =
                pass_state(&failed, &no_connect, !left_out.is_empty(), &not_utf8, &user);
            let pass = Pass {
                record: "pass",
                databases_total: databases.len(),
                databases_read: read,
                databases_left_out: left_out,
                databases_not_utf8: not_utf8,
                databases_without_connect: no_connect,
                duration_ms: started.elapsed().as_millis() as u64,
            };
            let id = format!("pg_tables:{host}:{}", at.timestamp_micros());
            events.push(event(id, at, &pass)?);
            Ok(events)
        })
    }
}
/// What a pass could not do, for status (no counts in the text: a state is logged
/// when it changes).
pub fn pass_state(
    failed: &[(String, String)],
    no_connect: &[String],
    ran_out: bool,
    not_utf8: &[String],
    user: &str,
) -> Option<SourceState> {
    let grant = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("GRANT CONNECT ON DATABASE \"{n}\" TO {user};"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if !no_connect.is_empty() {
        let names: Vec<&str> = no_connect.iter().map(String::as_str).collect();
        return Some(SourceState::Degraded(Problem::new(
            format!(
                "the tables pass may not connect to database(s) {} (no CONNECT privilege); the others are read",
                names.join(", ")
            ),
            grant(&names),
        )));
    }
    if let Some((first, why)) = failed.first() {
        let names: Vec<&str> = failed.iter().map(|(n, _)| n.as_str()).collect();
        return Some(SourceState::Degraded(Problem::new(
            format!(
                "the tables pass cannot read database(s) {} ({first}: {why}); the others are read",
                names.join(", ")
            ),
            format!(
                "allow {user} to connect to each (pg_hba.conf; {})",
                grant(&names)
            ),
        )));
    }
    if ran_out {
        return Some(SourceState::Degraded(Problem::new(
            "the tables pass reached collection.tables_max_pass_s before every database was read (the quietest are left out; each pass names them)",
            "raise collection.tables_max_pass_s, or lower collection.tables_max_relations",
        )));
    }
    if !not_utf8.is_empty() {
        return Some(SourceState::Degraded(Problem::new(
            format!(
                "database(s) {} cannot be read: their names are not UTF-8, and a connection names its database",
                not_utf8.join(", ")
            ),
            "rename them (ALTER DATABASE … RENAME TO …) to read their tables",
        )));
    }
    None
}

/// One of the three shapes of `pg_tables` data as an event.
fn event<T: Serialize>(id: String, at: DateTime<Utc>, data: &T) -> Result<Event, CycleError> {
    Event::new(id, EventKind::PgTables, at, data).map_err(|e| CycleError::encode("table", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::health::counters::Compared;

    fn sig(relid: i64, signature: i32, age: i64) -> Signature {
        Signature {
            relid,
            signature,
            total: 5,
            schema: "public".into(),
            relation: format!("t{relid}"),
            frozen_xid_age: Some(age),
        }
    }

    fn memory() -> Memory {
        Memory {
            tables: Readings::new(TABLE_GAUGES),
            indexes: Readings::new(&[]),
            signatures: HashMap::new(),
            board: Arc::default(),
        }
    }

    #[test]
    fn a_table_whose_event_never_reached_the_spool_is_read_again_as_new() {
        let mut m = memory();
        assert_eq!(
            changed(&[sig(1, 10, 5), sig(2, 20, 9)], 7, &mut m),
            vec![1, 2]
        );
        let now = Instant::now();
        let mut row = Row::new();
        row.insert("seq_scan".into(), Value::from(3));
        for (d, r) in [(7, 1), (7, 2)] {
            m.tables.step((d, r), &row, now);
            m.indexes.step((d, r, r * 100), &row, now);
        }
        // Table 2's event was dropped (a summary's id is no table's and changes nothing).
        m.forget_shipped(&[
            "pg_tables:h:1700000000:7:2".to_string(),
            "pg_tables:h:1700000000:7".to_string(),
            "nonsense".to_string(),
        ]);
        assert_eq!(changed(&[sig(1, 10, 5), sig(2, 20, 9)], 7, &mut m), vec![2]);
        // No delta against the reading that was never shipped; table 1 keeps its own.
        assert_eq!(m.tables.step((7, 2), &row, now), Compared::First);
        assert_eq!(m.indexes.step((7, 2, 200), &row, now), Compared::First);
        assert!(m.tables.step((7, 1), &row, now).deltas().is_some());
        assert!(m.indexes.step((7, 1, 100), &row, now).deltas().is_some());
    }

    #[test]
    fn a_dropped_index_is_forgotten_once_its_table_is_read_again() {
        let mut m = memory();
        let now = Instant::now();
        let mut row = Row::new();
        row.insert("idx_scan".into(), Value::from(3));
        for k in [(7, 1, 10), (7, 1, 11), (7, 2, 20), (8, 1, 10)] {
            m.indexes.step(k, &row, now);
        }
        // Table 1 of database 7 was read with index 10 only; table 2 was not read.
        let read = [(1, None), (1, Some(10))].into_iter().collect();
        forget_dropped_indexes(&mut m, 7, &read);
        assert_eq!(m.indexes.len(), 3);
        assert_eq!(m.indexes.step((7, 1, 11), &row, now), Compared::First);
        for kept in [(7, 1, 10), (7, 2, 20), (8, 1, 10)] {
            assert!(
                m.indexes.step(kept, &row, now).deltas().is_some(),
                "{kept:?}"
            );
        }
    }

    #[test]
    fn only_tables_whose_signature_moved_are_read_again_and_dropped_ones_are_forgotten() {
        let mut m = memory();
        assert_eq!(
            changed(&[sig(1, 10, 5), sig(2, 20, 9)], 7, &mut m),
            vec![1, 2]
        );
        assert_eq!(changed(&[sig(1, 10, 5), sig(2, 21, 9)], 7, &mut m), vec![2]);
        // Another database's tables are its own.
        assert_eq!(changed(&[sig(1, 10, 5)], 8, &mut m), vec![1]);
        // Table 2 dropped from database 7; it comes back as new.
        assert!(changed(&[sig(1, 10, 5)], 7, &mut m).is_empty());
        assert_eq!(changed(&[sig(1, 10, 5), sig(2, 21, 9)], 7, &mut m), vec![2]);
    }

    #[test]
    fn the_summary_counts_what_the_cap_left_out_and_lists_the_oldest_first() {
        let s = summary("shop", &[sig(1, 0, 5), sig(2, 0, 900), sig(3, 0, 40)], 1);
        assert_eq!(
            (
                s.tables_total,
                s.tables_read,
                s.tables_shipped,
                s.tables_unchanged,
                s.tables_left_out
            ),
            (5, 3, 1, 2, 2)
        );
        let ages: Vec<i64> = s
            .oldest_frozen
            .iter()
            .filter_map(|o| int_of(o, "frozen_xid_age"))
            .collect();
        assert_eq!(ages, vec![900, 40, 5]);
    }
}
