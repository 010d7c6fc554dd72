//! `pg_statements`: per-statement deltas of pg_stat_statements since the previous sample,
//! per (userid, dbid, queryid, toplevel), adapted to the installed extension version,
//! with reset/eviction detection, a top-N cap, query texts read only for queryids not
//! seen before, and a baseline that survives restarts. A missing extension is reported
//! (with the fix) in a summary event and in status; the other sources never notice.

pub mod baseline;
pub mod delta;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use super::{CollectFuture, Source};
use crate::config::Config;
use crate::db::text::{raw_bytes, Lossy};
use crate::db::{describe, Db, DbError};
use crate::logs::redact::passwords;
use crate::model::{Event, EventKind, Problem, SourceState};
use baseline::Baseline;
use delta::{diff, top_n, ColKind, Column, Delta, Key};

/// At most this many query texts are remembered (all forgotten when full).
const TEXT_CACHE_MAX: usize = 20_000;

/// Every this many cycles all entries are read, so that evicted ones are forgotten.
const RESYNC_EVERY: u32 = 10;

/// The installed extension, as last seen.
#[derive(Debug, Clone, PartialEq)]
struct Extension {
    version: String,
    /// Quoted schema, ready to prefix object names.
    schema: String,
    columns: Vec<Column>,
    has_toplevel: bool,
    has_info: bool,
}

#[derive(Default)]
struct State {
    ext: Option<Extension>,
    prev: Option<Baseline>,
    /// Baseline read from disk at start; used once, if it matches the server.
    loaded: bool,
    texts: HashMap<i64, String>,
    /// Cycles since every entry was last read.
    since_resync: u32,
    /// The baseline to store with the events of the last cycle.
    checkpoint: Option<Vec<u8>>,
    databases: HashMap<u32, String>,
    roles: HashMap<u32, String>,
    note: Option<SourceState>,
}

/// Reads pg_stat_statements.
pub struct StatementsSource {
    host: String,
    identity: String,
    state_dir: PathBuf,
    /// Store the baseline in the spool (the daemon); `once` only reads it.
    persist: bool,
    max_rows: usize,
    max_query_length: u32,
    state: Rc<RefCell<State>>,
}

/// The `summary` event of every cycle: is the source working, what changed.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Always `"summary"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The extension can be read.
    pub available: bool,
    /// Why not, and how to fix it.
    pub reason: Option<String>,
    /// The fix, as commands.
    pub fix: Option<String>,
    /// `pg_extension.extversion`.
    pub extension_version: Option<String>,
    /// Entries in pg_stat_statements now.
    pub entries: usize,
    /// Entries whose queryid this role may not see (needs pg_read_all_stats).
    pub entries_hidden: usize,
    /// Rows the server sent this cycle (only changed entries, except on full reads).
    pub rows_read: usize,
    /// This sample only set the baseline (first sample, or the previous one did not fit).
    pub baseline: bool,
    /// `stats_reset` changed since the previous sample: every entry counts from zero.
    pub reset_detected: bool,
    /// Entries evicted since the previous sample because pg_stat_statements.max is full.
    pub dealloc_delta: Option<i64>,
    /// Entries with new calls.
    pub changed: usize,
    /// Entries shipped (the top `statements_max_rows` by execution time).
    pub shipped: usize,
    /// Seconds covered by the deltas.
    pub interval_s: Option<f64>,
}

/// One statement's delta (`data` of a `pg_statements` event of type `statement`).
#[derive(Debug, Serialize)]
pub struct StatementDelta<'a> {
    /// Always `"statement"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Role oid and name.
    pub userid: u32,
    /// Role name.
    pub usename: Option<String>,
    /// Database oid.
    pub dbid: u32,
    /// Database name.
    pub datname: Option<String>,
    /// The query id, as a string (it does not fit a JSON number exactly).
    pub queryid: String,
    /// Top-level statement (false: run inside a function).
    pub toplevel: bool,
    /// Normalized text, cut to `max_query_length`.
    pub query: Option<String>,
    /// Start of the interval (the previous sample).
    pub since: DateTime<Utc>,
    /// Length of the interval, seconds.
    pub interval_s: f64,
    /// Entry appeared since the previous sample.
    pub new: bool,
    /// A counter went backwards (entry reset or evicted and re-added): values count from
    /// zero.
    pub counters_reset: bool,
    /// `total_exec_time_ms / calls` over the interval.
    pub mean_exec_time_ms: Option<f64>,
    /// Deltas (counts, times in ms) and gauges (min/max/stddev since the entry began).
    #[serde(flatten)]
    pub values: ColumnValues<'a>,
}

/// The columns of a delta, serialized straight from the value slice: counts as integers,
/// times rounded to the microsecond, without building a map per statement.
#[derive(Debug)]
pub struct ColumnValues<'a> {
    columns: &'a [Column],
    values: &'a [f64],
}

impl Serialize for ColumnValues<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.columns.len()))?;
        for (c, v) in self.columns.iter().zip(self.values) {
            match c.kind {
                ColKind::Count => m.serialize_entry(&c.name, &(v.round() as i64))?,
                ColKind::Time | ColKind::Gauge => {
                    m.serialize_entry(&c.name, &((v * 1000.0).round() / 1000.0))?
                }
            }
        }
        m.end()
    }
}

impl StatementsSource {
    /// From the configuration; `persist` stores the baseline in the spool.
    pub fn new(config: &Config, persist: bool) -> StatementsSource {
        let d = &config.database;
        StatementsSource {
            host: config.agent.hostname.clone(),
            identity: format!("{}:{}/{}", d.host, d.port, d.dbname),
            state_dir: config.agent.state_dir.clone(),
            persist,
            max_rows: config.collection.statements_max_rows as usize,
            max_query_length: config.collection.max_query_length,
            state: Rc::new(RefCell::new(State::default())),
        }
    }
}

impl Source for StatementsSource {
    fn kind(&self) -> EventKind {
        EventKind::PgStatements
    }

    fn state(&self) -> Option<SourceState> {
        self.state.borrow().note.clone()
    }

    fn checkpoint(&self) -> Option<crate::model::Checkpoint> {
        self.state
            .borrow_mut()
            .checkpoint
            .take()
            .map(|value| crate::model::Checkpoint {
                name: baseline::CHECKPOINT.to_string(),
                value,
            })
    }

    fn collect(&self, db: Rc<Db>) -> CollectFuture {
        let state = self.state.clone();
        let cfg = Cycle {
            host: self.host.clone(),
            identity: self.identity.clone(),
            state_dir: self.state_dir.clone(),
            persist: self.persist,
            max_rows: self.max_rows,
            max_len: self.max_query_length,
        };
        Box::pin(async move {
            let conn = db.get().await?;
            cfg.run(&conn, &state).await
        })
    }
}

struct Cycle {
    host: String,
    identity: String,
    state_dir: PathBuf,
    persist: bool,
    max_rows: usize,
    max_len: u32,
}

/// What the counters query returned.
struct Read {
    rows: usize,
    hidden: usize,
}

const PRELOAD_FIX: &str =
    "add pg_stat_statements to shared_preload_libraries in postgresql.conf and restart the server";

impl Cycle {
    async fn run(&self, conn: &Client, state: &RefCell<State>) -> Result<Vec<Event>, DbError> {
        let (now, ext) = self.extension(conn, state).await?;
        let ext = match ext {
            Ok(e) => e,
            Err(u) => return self.unavailable(state, now, u),
        };
        let prev = self.previous(state, &ext, now);
        match self.sample(conn, state, &ext, prev.as_ref(), now).await? {
            Ok((cur, read, reset)) => {
                self.deltas(conn, state, &ext, prev, cur, read, reset, now)
                    .await
            }
            Err(u) => self.unavailable(state, now, u),
        }
    }

    /// The sample to diff against: the last one in memory, else the one saved before a
    /// restart, provided it is from this server, with these columns, and older.
    fn previous(
        &self,
        state: &RefCell<State>,
        ext: &Extension,
        now: DateTime<Utc>,
    ) -> Option<Baseline> {
        let mut st = state.borrow_mut();
        if !st.loaded {
            st.loaded = true;
            if st.prev.is_none() {
                st.prev = baseline::load(&self.state_dir);
            }
        }
        let columns: Vec<String> = ext.columns.iter().map(|c| c.name.clone()).collect();
        st.prev
            .take()
            .filter(|p| p.identity == self.identity && p.columns == columns && p.taken_at < now)
    }

    fn unavailable(
        &self,
        state: &RefCell<State>,
        now: DateTime<Utc>,
        u: Problem,
    ) -> Result<Vec<Event>, DbError> {
        let mut st = state.borrow_mut();
        st.ext = None;
        st.note = Some(SourceState::Unavailable(u.clone()));
        let s = Summary {
            kind: "summary",
            available: false,
            reason: Some(u.reason),
            fix: Some(u.fix),
            extension_version: None,
            entries: 0,
            entries_hidden: 0,
            rows_read: 0,
            baseline: false,
            reset_detected: false,
            dealloc_delta: None,
            changed: 0,
            shipped: 0,
            interval_s: None,
        };
        Ok(vec![self.event(now, "summary", &s)?])
    }

    fn event<T: Serialize>(
        &self,
        at: DateTime<Utc>,
        what: &str,
        data: &T,
    ) -> Result<Event, DbError> {
        let id = format!(
            "pg_statements:{}:{}:{what}",
            self.host,
            at.timestamp_micros()
        );
        Event::new(id, EventKind::PgStatements, at, data)
            .map_err(|e| DbError::Query(format!("cannot encode: {e}")))
    }

    /// The server's clock and the installed extension with its columns, in one round
    /// trip (the columns are asked again only when the extension version changes).
    async fn extension(
        &self,
        conn: &Client,
        state: &RefCell<State>,
    ) -> Result<(DateTime<Utc>, Result<Extension, Problem>), DbError> {
        let row = conn
            .query_one(
                "SELECT now(), current_database()::text, e.extversion, quote_ident(n.nspname)
                 FROM (SELECT 1) one
                 LEFT JOIN pg_extension e ON e.extname = 'pg_stat_statements'
                 LEFT JOIN pg_namespace n ON n.oid = e.extnamespace",
                &[],
            )
            .await
            .map_err(DbError::query)?;
        let now: DateTime<Utc> = row.get(0);
        let (version, schema): (Option<String>, Option<String>) = (row.get(2), row.get(3));
        let (Some(version), Some(schema)) = (version, schema) else {
            let db: String = row.get(1);
            return Ok((
                now,
                Err(Problem {
                    reason: format!(
                        "extension pg_stat_statements is not installed in database {db}"
                    ),
                    fix: format!(
                        "CREATE EXTENSION pg_stat_statements; in database {db} (and {PRELOAD_FIX})"
                    ),
                }),
            ));
        };
        if let Some(e) = state
            .borrow()
            .ext
            .clone()
            .filter(|e| e.version == version && e.schema == schema)
        {
            return Ok((now, Ok(e)));
        }
        let view = format!("{schema}.pg_stat_statements");
        let cols: Vec<String> = conn
            .query(
                "SELECT attname::text FROM pg_attribute
                 WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
                &[&view],
            )
            .await
            .map_err(DbError::query)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let has_info: bool = conn
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&format!("{schema}.pg_stat_statements_info")],
            )
            .await
            .map_err(DbError::query)?
            .get(0);
        let ext = Extension {
            version,
            schema,
            has_toplevel: cols.iter().any(|c| c == "toplevel"),
            columns: delta::columns(&cols),
            has_info,
        };
        state.borrow_mut().ext = Some(ext.clone());
        Ok((now, Ok(ext)))
    }

    /// Counters of the entries whose `calls` changed since `prev` (no query texts). A
    /// fingerprint of each known entry and its calls goes to the server and only rows
    /// whose fingerprint is unknown come back, so a quiet server with thousands of
    /// entries costs a few rows, not thousands. Without
    /// `prev`, after a reset, and every [`RESYNC_EVERY`] cycles (to forget evicted
    /// entries) every entry is read.
    async fn sample(
        &self,
        conn: &Client,
        state: &RefCell<State>,
        ext: &Extension,
        prev: Option<&Baseline>,
        now: DateTime<Utc>,
    ) -> Result<Result<(Baseline, Read, bool), Problem>, DbError> {
        let (stats_reset, dealloc) = if ext.has_info {
            let q = format!(
                "SELECT stats_reset, dealloc FROM {}.pg_stat_statements_info",
                ext.schema
            );
            match conn.query_one(&q, &[]).await {
                Ok(r) => (
                    r.get::<_, Option<DateTime<Utc>>>(0),
                    r.get::<_, Option<i64>>(1),
                ),
                Err(e) => return classify(e),
            }
        } else {
            (None, None)
        };
        let reset = prev.is_some_and(|p| p.stats_reset != stats_reset);
        let full = {
            let mut st = state.borrow_mut();
            st.since_resync += 1;
            let full = prev.is_none() || reset || st.since_resync >= RESYNC_EVERY;
            if full {
                st.since_resync = 0;
            }
            full
        };
        let calls = ext.columns.iter().position(|c| c.name == "calls");
        let known: Vec<i64> = match (full, prev, calls) {
            (false, Some(p), Some(ci)) => p
                .entries
                .iter()
                .map(|(k, v)| delta::fingerprint(k, v[ci] as i64))
                .collect(),
            _ => vec![],
        };
        let toplevel = if ext.has_toplevel {
            "s.toplevel"
        } else {
            "true"
        };
        let exprs: Vec<&str> = ext.columns.iter().map(|c| c.expr.as_str()).collect();
        // The anti-join on one int8 per entry is a hash anti-join: the cost is the
        // function itself plus about a millisecond for 5,000 entries.
        let q = format!(
            "SELECT s.userid::oid, s.dbid::oid, s.queryid, {toplevel}, {}
             FROM {}.pg_stat_statements(false) s
             WHERE NOT EXISTS (SELECT 1 FROM unnest($1::int8[]) AS k(f)
                 WHERE k.f = (s.userid::int8 # (s.dbid::int8 << 32) # s.queryid
                              # (s.calls << 17) # ({toplevel}::int::int8 << 62)))",
            exprs.join(", "),
            ext.schema
        );
        let rows = match conn.query(&q, &[&known]).await {
            Ok(r) => r,
            Err(e) => return classify(e),
        };
        let mut entries = match (full, prev) {
            (false, Some(p)) => p.entries.clone(),
            _ => HashMap::with_capacity(rows.len()),
        };
        let mut hidden = 0;
        for r in &rows {
            // Without pg_read_all_stats, other roles' entries have no queryid.
            let Some(queryid) = r.try_get::<_, Option<i64>>(2).map_err(DbError::query)? else {
                hidden += 1;
                continue;
            };
            let key = Key {
                userid: r.try_get(0).map_err(DbError::query)?,
                dbid: r.try_get(1).map_err(DbError::query)?,
                queryid,
                toplevel: r.try_get(3).map_err(DbError::query)?,
            };
            let mut values = Vec::with_capacity(ext.columns.len());
            for i in 0..ext.columns.len() {
                values.push(
                    r.try_get::<_, Option<f64>>(4 + i)
                        .map_err(DbError::query)?
                        .unwrap_or(0.0),
                );
            }
            entries.insert(key, values);
        }
        let read = Read {
            rows: rows.len(),
            hidden,
        };
        Ok(Ok((
            Baseline {
                identity: self.identity.clone(),
                taken_at: now,
                stats_reset,
                dealloc,
                columns: ext.columns.iter().map(|c| c.name.clone()).collect(),
                entries,
            },
            read,
            reset,
        )))
    }

    #[allow(clippy::too_many_arguments)]
    async fn deltas(
        &self,
        conn: &Client,
        state: &RefCell<State>,
        ext: &Extension,
        prev: Option<Baseline>,
        cur: Baseline,
        read: Read,
        reset: bool,
        now: DateTime<Utc>,
    ) -> Result<Vec<Event>, DbError> {
        let hidden = read.hidden;
        let mut deltas = match &prev {
            Some(p) => diff(&ext.columns, &p.entries, &cur.entries, reset),
            None => vec![],
        };
        let changed = deltas.len();
        top_n(&mut deltas, &ext.columns, self.max_rows);
        let mut events = Vec::new();
        if let Some(p) = &prev {
            self.fill_names(conn, state, ext, &deltas).await?;
            let st = state.borrow();
            let secs = (cur.taken_at - p.taken_at).num_milliseconds() as f64 / 1000.0;
            for d in &deltas {
                let data = statement(&ext.columns, d, &st, p.taken_at, secs);
                let what = format!(
                    "{}:{}:{}:{}",
                    d.key.dbid, d.key.userid, d.key.queryid, d.key.toplevel
                );
                events.push(self.event(now, &what, &data)?);
            }
        }
        let summary = Summary {
            kind: "summary",
            available: true,
            reason: None,
            fix: None,
            extension_version: Some(ext.version.clone()),
            entries: cur.entries.len() + hidden,
            entries_hidden: hidden,
            rows_read: read.rows,
            baseline: prev.is_none(),
            reset_detected: reset,
            dealloc_delta: prev
                .as_ref()
                .and_then(|p| p.dealloc.zip(cur.dealloc))
                .map(|(a, b)| if reset || b < a { b } else { b - a }),
            changed,
            shipped: deltas.len(),
            interval_s: prev
                .as_ref()
                .map(|p| (cur.taken_at - p.taken_at).num_milliseconds() as f64 / 1000.0),
        };
        events.push(self.event(now, "summary", &summary)?);
        let mut st = state.borrow_mut();
        st.note = Some(if prev.is_none() {
            SourceState::Baseline(
                "the first sample sets the baseline; deltas start with the next".into(),
            )
        } else if hidden > 0 {
            SourceState::Degraded(Problem::new(
                format!("{hidden} entries hidden: their queryid is shown only to roles with pg_read_all_stats"),
                "GRANT pg_read_all_stats TO the agent's role (pg_monitor includes it)",
            ))
        } else {
            SourceState::Working(format!("available (pg_stat_statements {})", ext.version))
        });
        // The baseline goes to the spool with these events (see baseline.rs) when deltas
        // were produced or a new baseline began; a quiet cycle changes nothing worth a
        // write (the older baseline has the same values, and no deltas depend on it).
        if self.persist && (changed > 0 || prev.is_none() || reset) {
            st.checkpoint = Some(baseline::encode(&cur));
        }
        st.prev = Some(cur);
        Ok(events)
    }

    /// Query texts for queryids not seen before, database and role names for oids not
    /// seen before: one query each, only when something is missing.
    async fn fill_names(
        &self,
        conn: &Client,
        state: &RefCell<State>,
        ext: &Extension,
        deltas: &[Delta],
    ) -> Result<(), DbError> {
        let (missing, need_db, need_role) = {
            let st = state.borrow();
            let mut m: Vec<i64> = deltas
                .iter()
                .map(|d| d.key.queryid)
                .filter(|q| !st.texts.contains_key(q))
                .collect();
            m.sort_unstable();
            m.dedup();
            (
                m,
                deltas
                    .iter()
                    .any(|d| !st.databases.contains_key(&d.key.dbid)),
                deltas.iter().any(|d| !st.roles.contains_key(&d.key.userid)),
            )
        };
        if !missing.is_empty() {
            let q = format!(
                // Bytes, not characters: a text from a SQL_ASCII database is not UTF-8,
                // and left() on it fails the whole query ("invalid byte sequence").
                "SELECT DISTINCT ON (queryid) queryid, substr({}, 1, $1) FROM {}.pg_stat_statements(true) WHERE queryid = ANY($2)",
                raw_bytes("query"),
                ext.schema
            );
            let rows = conn
                .query(&q, &[&(self.max_len as i32), &missing])
                .await
                .map_err(DbError::query)?;
            let mut st = state.borrow_mut();
            if st.texts.len() + rows.len() > TEXT_CACHE_MAX {
                st.texts.clear();
            }
            for r in rows {
                st.texts.insert(r.get(0), statement_text(&r));
            }
        }
        if need_db {
            let rows = conn
                .query("SELECT oid, datname::text FROM pg_database", &[])
                .await
                .map_err(DbError::query)?;
            state.borrow_mut().databases = names(&rows);
        }
        if need_role {
            let rows = conn
                .query("SELECT oid, rolname::text FROM pg_roles", &[])
                .await
                .map_err(DbError::query)?;
            state.borrow_mut().roles = names(&rows);
        }
        Ok(())
    }
}

/// A statement's text as shipped: read lossily (see [`crate::db::text`]), passwords
/// masked (utility statements such as `ALTER ROLE … PASSWORD '…'` keep their constants
/// in pg_stat_statements).
fn statement_text(r: &tokio_postgres::Row) -> String {
    let t = r
        .try_get::<_, Option<Lossy>>(1)
        .ok()
        .flatten()
        .map(|l| l.text)
        .unwrap_or_default();
    passwords(&t).unwrap_or(t)
}

/// oid → name, read lossily (a name created in a SQL_ASCII database need not be UTF-8).
fn names<K: for<'a> tokio_postgres::types::FromSql<'a> + std::hash::Hash + Eq>(
    rows: &[tokio_postgres::Row],
) -> std::collections::HashMap<K, String> {
    rows.iter()
        .filter_map(|r| Some((r.try_get(0).ok()?, r.try_get::<_, Lossy>(1).ok()?.text)))
        .collect()
}

/// Server errors that mean "the extension cannot be used" rather than "the cycle failed".
fn classify<T>(e: tokio_postgres::Error) -> Result<Result<T, Problem>, DbError> {
    let code = e.as_db_error().map(|d| d.code().code().to_string());
    let msg = describe(&e);
    match code.as_deref() {
        // object_not_in_prerequisite_state: "must be loaded via shared_preload_libraries"
        Some("55000") => Ok(Err(Problem {
            reason: msg,
            fix: PRELOAD_FIX.to_string(),
        })),
        // insufficient_privilege
        Some("42501") => Ok(Err(Problem {
            reason: msg,
            fix: "GRANT pg_read_all_stats TO the agent's role (pg_monitor includes it)".to_string(),
        })),
        // undefined_function / undefined_table: dropped between our two queries.
        Some("42883") | Some("42P01") => Ok(Err(Problem {
            reason: msg,
            fix: format!("CREATE EXTENSION pg_stat_statements; (and {PRELOAD_FIX})"),
        })),
        _ => Err(DbError::Query(msg)),
    }
}

fn statement<'a>(
    columns: &'a [Column],
    d: &'a Delta,
    st: &State,
    since: DateTime<Utc>,
    secs: f64,
) -> StatementDelta<'a> {
    let at = |name: &str| {
        columns
            .iter()
            .position(|c| c.name == name)
            .map(|i| d.values[i])
    };
    StatementDelta {
        kind: "statement",
        userid: d.key.userid,
        usename: st.roles.get(&d.key.userid).cloned(),
        dbid: d.key.dbid,
        datname: st.databases.get(&d.key.dbid).cloned(),
        queryid: d.key.queryid.to_string(),
        toplevel: d.key.toplevel,
        query: st.texts.get(&d.key.queryid).cloned(),
        since,
        interval_s: secs,
        new: d.new,
        counters_reset: d.counters_reset,
        mean_exec_time_ms: at("calls")
            .zip(at("total_exec_time_ms"))
            .filter(|(c, _)| *c > 0.0)
            .map(|(c, t)| (t / c * 1000.0).round() / 1000.0),
        values: ColumnValues {
            columns,
            values: &d.values,
        },
    }
}
