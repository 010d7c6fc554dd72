//! `pg_custom`: a user's own query (`[[custom]]`), one source per entry, run safely on
//! every database it targets.
//!
//! The text was proven at load to be one query that only reads ([`crate::sql::readonly`]);
//! here it runs in a read-only transaction (a volatile function that writes fails
//! there), under the entry's `timeout_ms` as `statement_timeout` and a short
//! `lock_timeout`, through a cursor that fetches `max_rows` + 1 rows at most: a huge
//! result stays on the server. A database whose run fails (a timeout, a missing table)
//! waits 1, 2, 4, … 64 cycles before its next try; the others go on. A server outside
//! the entry's `min_server_version`/`max_server_version` is skipped, said once in status.
//!
//! Each row ships as one `pg_custom` event (`record: "row"`) with its columns typed
//! (numbers as numbers, text capped, text that is not UTF-8 read lossily and flagged),
//! and for the entry's counter columns the delta since the same row (same database and
//! label columns) was last seen, a decrease taken as a reset. Each database's run ships
//! a `record: "run"` event: rows, whether more were left on the server, time taken, or
//! the error.

use std::cell::{Cell as StdCell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio_postgres::types::{FromSql, Type};

use super::{CollectFuture, CycleError, Source};
use crate::config::{Config, CustomDatabases, CustomQuery};
use crate::db::{Conn, Db, DbError};
use crate::model::{Event, EventKind, Problem, SourceState};

/// The most databases one entry runs in per cycle (`databases = "*"`).
pub const MAX_DATABASES: usize = 20;

/// The longest wait for a lock: a table someone holds is given up on.
const LOCK_TIMEOUT: Duration = Duration::from_millis(500);

/// Cycles (the agent's one rule, [`crate::backoff::cycles`]) a database waits after `failures` failed runs in a row.
pub use crate::backoff::cycles as backoff_cycles;

/// One `[[custom]]` entry's source.
pub struct CustomSource {
    inner: Rc<Inner>,
}

struct Inner {
    host: String,
    q: CustomQuery,
    /// The counters' last values are kept in the spool (the daemon; not `once`).
    persist: bool,
    state_dir: std::path::PathBuf,
    /// The agent's own database (`databases = "connected"`).
    dbname: String,
    max_text: usize,
    version: StdCell<Option<i32>>,
    st: RefCell<State>,
}

/// A database whose runs fail.
struct Failing {
    /// Failed runs in a row.
    runs: u32,
    /// The first cycle of the next try.
    next: u64,
    /// The last error.
    error: String,
}

#[derive(Default)]
struct State {
    cycle: u64,
    /// Per database: failed runs in a row and the first cycle of the next try.
    failing: HashMap<String, Failing>,
    /// Per database and label values: the counters' last values.
    counters: HashMap<(String, Vec<String>), Vec<Option<f64>>>,
    /// Whether the counters were read back from the spool.
    loaded: bool,
    /// Counter rows changed since the last checkpoint (`None`: gone).
    changed: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The stored counters were of other columns: the next checkpoint replaces them.
    replace: bool,
    runs_total: u64,
    failures_total: u64,
    timeouts_total: u64,
    state: Option<SourceState>,
}

impl CustomSource {
    /// The source of `q`; `persist` keeps its counters' last values in the spool, so a
    /// restart's first run has deltas.
    pub fn new(config: &Config, q: &CustomQuery, persist: bool) -> CustomSource {
        CustomSource {
            inner: Rc::new(Inner {
                host: config.id_host(),
                q: q.clone(),
                persist,
                state_dir: config.agent.state_dir.clone(),
                dbname: config.database.dbname.clone(),
                max_text: config.collection.max_query_length as usize,
                version: StdCell::new(None),
                st: RefCell::default(),
            }),
        }
    }
}

impl Source for CustomSource {
    fn kind(&self) -> EventKind {
        EventKind::PgCustom
    }

    fn collect(&self, db: Rc<Db>) -> CollectFuture {
        let inner = self.inner.clone();
        Box::pin(async move { inner.cycle(&db).await })
    }

    fn state(&self) -> Option<SourceState> {
        self.inner.st.borrow().state.clone()
    }

    fn checkpoint(&self) -> Option<crate::model::Checkpoint> {
        let inner = &self.inner;
        let mut st = inner.st.borrow_mut();
        if !inner.persist || (!st.replace && st.changed.is_empty()) {
            return None;
        }
        let replace = std::mem::take(&mut st.replace);
        Some(crate::model::Checkpoint {
            name: inner.checkpoint_name(),
            value: inner.magic(),
            rows: crate::model::RowChanges {
                replace,
                set: std::mem::take(&mut st.changed),
            },
        })
    }

    fn cycle_limit(&self, base: Duration) -> Duration {
        let n = match &self.inner.q.databases {
            CustomDatabases::Connected => 1,
            CustomDatabases::List(l) => l.len().min(MAX_DATABASES),
            CustomDatabases::All => MAX_DATABASES,
        } as u32;
        base * 2 + (self.inner.q.timeout + base) * n
    }
}

/// A run's account, shipped per database.
#[derive(Serialize)]
struct RunData<'a> {
    record: &'static str,
    name: &'a str,
    database: &'a str,
    /// Rows shipped.
    rows: usize,
    /// More rows were left on the server than `max_rows`.
    truncated: bool,
    max_rows: u32,
    took_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// The error was the entry's timeout (the statement was cancelled).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    timed_out: bool,
    /// Runs this database skips before its next try.
    #[serde(skip_serializing_if = "Option::is_none")]
    backoff_cycles: Option<u64>,
}

impl Inner {
    /// The spool checkpoint of its counters.
    fn checkpoint_name(&self) -> String {
        format!("pg_custom.{}.counters", self.q.name)
    }

    /// The checkpoint's value: its version and the counter columns its rows hold, in
    /// order (rows of other columns are not read back).
    fn magic(&self) -> Vec<u8> {
        format!(
            "postgres-agent pg_custom counters v1 {}\n",
            serde_json::to_string(&self.q.counters).unwrap_or_default()
        )
        .into_bytes()
    }

    /// Reads the counters' last values back from the spool, once.
    fn load(&self) {
        let mut st = self.st.borrow_mut();
        if st.loaded || !self.persist || self.q.counters.is_empty() {
            st.loaded = true;
            return;
        }
        st.loaded = true;
        let Some((value, rows)) =
            crate::spool::read_checkpoint_with_rows(&self.state_dir, &self.checkpoint_name(), true)
        else {
            return;
        };
        if value != self.magic() {
            st.replace = true;
            return;
        }
        for (k, v) in rows {
            if let (Ok(key), Ok(values)) = (serde_json::from_slice(&k), serde_json::from_slice(&v))
            {
                st.counters.insert(key, values);
            }
        }
    }

    async fn cycle(&self, db: &Db) -> Result<Vec<Event>, CycleError> {
        let now = Utc::now();
        self.load();
        let cycle = {
            let mut st = self.st.borrow_mut();
            st.cycle += 1;
            st.cycle
        };
        let conn = db.get().await?;
        let version = crate::sources::server_version(&conn, &self.version).await?;
        if let Some(why) = gated(&self.q, version) {
            self.st.borrow_mut().state = Some(SourceState::Working(why));
            return Ok(Vec::new());
        }
        let databases = match &self.q.databases {
            CustomDatabases::Connected => vec![self.dbname.clone()],
            CustomDatabases::List(l) => l.iter().take(MAX_DATABASES).cloned().collect(),
            CustomDatabases::All => connectable(&conn).await?,
        };
        drop(conn);
        let mut events = Vec::new();
        let (mut ran, mut failed, mut waiting, mut rows_total) = (0, 0, 0, 0);
        let mut spent_ms = 0.0;
        let board = db.server().board();
        let metrics = board.wanted() && !(self.q.gauges.is_empty() && self.q.counters.is_empty());
        let mut posted = crate::board::CustomRows {
            labels: self.q.labels.clone(),
            gauges: self.q.gauges.clone(),
            counters: self.q.counters.clone(),
            rows: Vec::new(),
        };
        for database in &databases {
            if let Some(next) = self.st.borrow().failing.get(database).map(|f| f.next) {
                if cycle < next {
                    waiting += 1;
                    continue;
                }
            }
            let started = Instant::now();
            let res = self.run_in(db, database).await;
            let took_ms = started.elapsed().as_secs_f64() * 1000.0;
            spent_ms += took_ms;
            ran += 1;
            let mut run = RunData {
                record: "run",
                name: &self.q.name,
                database,
                rows: 0,
                truncated: false,
                max_rows: self.q.max_rows,
                took_ms,
                error: None,
                timed_out: false,
                backoff_cycles: None,
            };
            match res {
                Ok(Ran {
                    rows, truncated, ..
                }) => {
                    self.st.borrow_mut().failing.remove(database);
                    run.rows = rows.len();
                    run.truncated = truncated;
                    rows_total += rows.len();
                    if metrics {
                        posted.rows.extend(rows.iter().map(|row| {
                            crate::board::CustomRow {
                                datname: database.clone(),
                                labels: self
                                    .q
                                    .labels
                                    .iter()
                                    .map(|l| label(row, l, self.max_text))
                                    .collect(),
                                values: self
                                    .q
                                    .gauges
                                    .iter()
                                    .chain(&self.q.counters)
                                    .map(|c| number(row, c))
                                    .collect(),
                            }
                        }));
                    }
                    let seen = self.deltas(database, &rows);
                    for (i, (row, deltas)) in rows.iter().zip(seen).enumerate() {
                        let data = row_data(&self.q.name, database, row, deltas, self.max_text);
                        events.push(self.event(now, &format!("{database}:{i}"), &data)?);
                    }
                }
                Err(e) => {
                    failed += 1;
                    let timed_out =
                        matches!(&e, DbError::Query { sqlstate: Some(s), .. } if s == "57014");
                    let mut st = self.st.borrow_mut();
                    st.failures_total += 1;
                    st.timeouts_total += u64::from(timed_out);
                    let f = st.failing.entry(database.clone()).or_insert(Failing {
                        runs: 0,
                        next: 0,
                        error: String::new(),
                    });
                    f.runs += 1;
                    let wait = backoff_cycles(f.runs);
                    f.next = cycle + wait;
                    f.error = e.to_string();
                    run.error = Some(f.error.clone());
                    run.timed_out = timed_out;
                    run.backoff_cycles = Some(wait);
                }
            }
            events.push(self.event(now, &format!("{database}:run"), &run)?);
        }
        if metrics {
            board.post_custom(&self.q.name, std::sync::Arc::new(posted));
        }
        let mut st = self.st.borrow_mut();
        st.runs_total += ran as u64;
        let counts = format!(
            "{spent_ms:.0} ms this cycle; {} runs, {} failed, {} timed out since start",
            st.runs_total, st.failures_total, st.timeouts_total
        );
        // The databases failing now (those gone from the list forgotten).
        st.failing.retain(|d, _| databases.contains(d));
        let failing: Vec<String> = databases
            .iter()
            .filter_map(|d| {
                let f = st.failing.get(d)?;
                Some(format!(
                    "{d}: {} (failed {} times in a row, next try in {} cycles)",
                    f.error,
                    f.runs,
                    f.next.saturating_sub(cycle)
                ))
            })
            .collect();
        st.state = Some(if failing.is_empty() {
            SourceState::Working(format!("{rows_total} rows from {ran} databases; {counts}"))
        } else {
            SourceState::Degraded(Problem::new(
                format!(
                    "{} of {} databases failing ({failed} this cycle, {waiting} waiting): {}; {counts}",
                    failing.len(),
                    databases.len(),
                    failing.join("; ")
                ),
                "fix the query or what it needs in that database, or make it cheaper than timeout_ms; `postgres-agent check` runs it and says why",
            ))
        });
        Ok(events)
    }

    /// The query's run in `database`.
    async fn run_in(&self, db: &Db, database: &str) -> Result<Ran, DbError> {
        let conn = if database == self.dbname {
            db.get().await?
        } else {
            db.connect_to(Some(database)).await?
        };
        run(&conn, &self.q, false).await
    }
}

/// Why `q` does not run on a server of `version`, if it does not.
pub fn gated(q: &CustomQuery, version: i32) -> Option<String> {
    match (q.min_server_version, q.max_server_version) {
        (Some(min), _) if version < min => Some(format!(
            "skipped: the server is {version}, the query needs min_server_version {min}"
        )),
        (_, Some(max)) if version > max => Some(format!(
            "skipped: the server is {version}, the query is for max_server_version {max}"
        )),
        _ => None,
    }
}

/// The name of the cursor the query runs in.
const CURSOR: &str = "postgres_agent_custom";

/// One run's result.
pub struct Ran {
    /// The result's column names.
    pub columns: Vec<String>,
    /// The rows (at most `max_rows`), each column by name.
    pub rows: Vec<Vec<(String, Cell)>>,
    /// More rows were left on the server.
    pub truncated: bool,
    /// The plan's total cost, when asked for (`check`).
    pub cost: Option<f64>,
}

/// Runs `q` on `conn`: read-only, under its timeout, through a cursor; with `explain`
/// (`check`) its plan's total cost is asked for first, in the same transaction.
pub async fn run(conn: &Conn, q: &CustomQuery, explain: bool) -> Result<Ran, DbError> {
    // A SQL_ASCII database's text is sent as stored (the default conversion to UTF-8
    // would fail the whole fetch on one byte that is not UTF-8); it is read lossily.
    let setup = format!(
        "BEGIN READ ONLY; SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {}; \
         SELECT CASE WHEN current_setting('server_encoding') = 'SQL_ASCII' THEN set_config('client_encoding', 'SQL_ASCII', true) END",
        q.timeout.as_millis().max(1),
        LOCK_TIMEOUT.min(q.timeout).as_millis().max(1),
    );
    conn.batch_execute(&setup).await.map_err(DbError::query)?;
    let res = async {
        let cost = if explain {
            let rows = conn
                .simple_query(&format!("EXPLAIN (FORMAT JSON)\n{}\n", q.query))
                .await
                .map_err(DbError::query)?;
            rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    let v: Value = serde_json::from_str(r.get(0)?).ok()?;
                    v[0]["Plan"]["Total Cost"].as_f64()
                }
                _ => None,
            })
        } else {
            None
        };
        // The text on lines of its own: a trailing line comment ends with it.
        conn.batch_execute(&format!(
            "DECLARE {CURSOR} NO SCROLL CURSOR FOR\n{}\n",
            q.query
        ))
        .await
        .map_err(DbError::query)?;
        let fetch = conn
            .prepare(&format!(
                "FETCH FORWARD {} FROM {CURSOR}",
                q.max_rows as u64 + 1
            ))
            .await
            .map_err(DbError::query)?;
        let names: Vec<String> = fetch
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        let rows = conn.query(&fetch, &[]).await.map_err(DbError::query)?;
        let truncated = rows.len() > q.max_rows as usize;
        let rows: Vec<Vec<(String, Cell)>> = rows
            .iter()
            .take(q.max_rows as usize)
            .map(|r| {
                names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (n.clone(), r.try_get::<_, Cell>(i).unwrap_or(Cell::Null)))
                    .collect()
            })
            .collect();
        Ok(Ran {
            columns: names,
            rows,
            truncated,
            cost,
        })
    }
    .await;
    let end = conn.batch_execute("ROLLBACK").await;
    let out = res?;
    end.map_err(DbError::query)?;
    Ok(out)
}

/// The databases the role may connect to (not templates), by name, at most
/// [`MAX_DATABASES`].
pub async fn connectable(conn: &Conn) -> Result<Vec<String>, DbError> {
    let rows = conn
        .query(
            "SELECT datname::text FROM pg_catalog.pg_database \
             WHERE datallowconn AND NOT datistemplate AND has_database_privilege(oid, 'CONNECT') \
             ORDER BY datname LIMIT $1",
            &[&(MAX_DATABASES as i64)],
        )
        .await
        .map_err(DbError::query)?;
    Ok(rows.iter().filter_map(|r| r.try_get(0).ok()).collect())
}

/// One value of a row, read whatever its type.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// SQL NULL (or a number the JSON cannot hold: NaN, infinity).
    Null,
    /// An integer.
    Int(i64),
    /// A number.
    Number(f64),
    /// A boolean.
    Bool(bool),
    /// Text.
    Text {
        /// The text (read lossily when its bytes were not UTF-8).
        text: String,
        /// Its bytes were not UTF-8.
        lossy: bool,
    },
    /// A type the agent does not read (its name): cast it in the query.
    Unread(String),
}

impl<'a> FromSql<'a> for Cell {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Cell, Box<dyn std::error::Error + Sync + Send>> {
        let num = |v: f64| {
            if v.is_finite() {
                Cell::Number(v)
            } else {
                Cell::Null
            }
        };
        let text = |b: &[u8]| match std::str::from_utf8(b) {
            Ok(s) => Cell::Text {
                text: s.to_string(),
                lossy: false,
            },
            Err(_) => Cell::Text {
                text: String::from_utf8_lossy(b).into_owned(),
                lossy: true,
            },
        };
        Ok(match *ty {
            Type::INT2 => Cell::Int(i64::from(i16::from_sql(ty, raw)?)),
            Type::INT4 => Cell::Int(i64::from(i32::from_sql(ty, raw)?)),
            Type::INT8 => Cell::Int(i64::from_sql(ty, raw)?),
            Type::OID | Type::XID => Cell::Int(i64::from(u32::from_be_bytes(raw.try_into()?))),
            Type::FLOAT4 => num(f64::from(f32::from_sql(ty, raw)?)),
            Type::FLOAT8 => num(f64::from_sql(ty, raw)?),
            Type::NUMERIC => numeric(raw).map_or(Cell::Null, num),
            Type::PG_LSN => Cell::Int(i64::try_from(u64::from_be_bytes(raw.try_into()?))?),
            Type::BOOL => Cell::Bool(bool::from_sql(ty, raw)?),
            Type::TEXT
            | Type::VARCHAR
            | Type::BPCHAR
            | Type::NAME
            | Type::UNKNOWN
            | Type::JSON
            | Type::CHAR => text(raw),
            Type::JSONB => text(raw.get(1..).unwrap_or_default()),
            Type::TIMESTAMPTZ => Cell::Text {
                text: DateTime::<Utc>::from_sql(ty, raw)?.to_rfc3339(),
                lossy: false,
            },
            Type::TIMESTAMP => Cell::Text {
                text: chrono::NaiveDateTime::from_sql(ty, raw)?.to_string(),
                lossy: false,
            },
            Type::DATE => Cell::Text {
                text: chrono::NaiveDate::from_sql(ty, raw)?.to_string(),
                lossy: false,
            },
            Type::INTERVAL => interval_seconds(raw).map_or(Cell::Null, num),
            _ => Cell::Unread(ty.name().to_string()),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Cell, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Cell::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A `numeric` in the binary format (digits in base 10,000) as a float; `None` for NaN
/// and the infinities.
fn numeric(raw: &[u8]) -> Option<f64> {
    let word =
        |i: usize| -> Option<u16> { Some(u16::from_be_bytes(raw.get(i..i + 2)?.try_into().ok()?)) };
    let (ndigits, weight, sign) = (word(0)? as usize, word(2)? as i16, word(4)?);
    if sign != 0 && sign != 0x4000 {
        return None;
    }
    let mut v = 0.0;
    for d in 0..ndigits {
        v += f64::from(word(8 + 2 * d)?) * 10_000f64.powi(i32::from(weight) - d as i32);
    }
    Some(if sign == 0x4000 { -v } else { v })
}

/// An `interval` (microseconds, days, months) in seconds, a month as 30 days.
fn interval_seconds(raw: &[u8]) -> Option<f64> {
    let micros = i64::from_be_bytes(raw.get(0..8)?.try_into().ok()?);
    let days = i32::from_be_bytes(raw.get(8..12)?.try_into().ok()?);
    let months = i32::from_be_bytes(raw.get(12..16)?.try_into().ok()?);
    Some(micros as f64 / 1e6 + f64::from(days) * 86_400.0 + f64::from(months) * 30.0 * 86_400.0)
}

/// A row's counter deltas since the same row was last seen, and the counters that went
/// down (reset: the delta is then their value, counted from zero).
#[derive(Debug, Default, PartialEq)]
struct Deltas {
    deltas: BTreeMap<String, f64>,
    reset: Vec<String>,
}

/// Column `name` of `row` as a number, when it is one.
fn number(row: &[(String, Cell)], name: &str) -> Option<f64> {
    row.iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, c)| match c {
            Cell::Number(v) => Some(*v),
            Cell::Int(v) => Some(*v as f64),
            _ => None,
        })
}

/// `text` cut to at most `max` bytes, at a character.
fn capped(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Column `name` of `row` as a label value (text as the events have it, cut at
/// `max_text` bytes; a number written out, NULL as empty).
fn label(row: &[(String, Cell)], name: &str, max_text: usize) -> String {
    match row.iter().find(|(n, _)| n == name).map(|(_, c)| c) {
        Some(Cell::Text { text, .. }) => capped(text, max_text).to_string(),
        Some(Cell::Int(v)) => v.to_string(),
        Some(Cell::Number(v)) => v.to_string(),
        Some(Cell::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

impl Inner {
    /// The counter deltas of `rows` of `database`; what this database's rows were is
    /// then their values now (a row gone is forgotten).
    fn deltas(&self, database: &str, rows: &[Vec<(String, Cell)>]) -> Vec<Deltas> {
        if self.q.counters.is_empty() {
            return rows.iter().map(|_| Deltas::default()).collect();
        }
        let mut st = self.st.borrow_mut();
        let mut now: HashMap<(String, Vec<String>), Vec<Option<f64>>> = HashMap::new();
        let out = rows
            .iter()
            .map(|row| {
                let labels: Vec<String> = self
                    .q
                    .labels
                    .iter()
                    .map(|l| label(row, l, self.max_text))
                    .collect();
                let values: Vec<Option<f64>> =
                    self.q.counters.iter().map(|c| number(row, c)).collect();
                let key = (database.to_string(), labels);
                let mut d = Deltas::default();
                for ((name, cur), old) in self
                    .q
                    .counters
                    .iter()
                    .zip(&values)
                    .zip(st.counters.get(&key).into_iter().flatten())
                {
                    let (Some(cur), Some(old)) = (cur, old) else {
                        continue;
                    };
                    if cur >= old {
                        d.deltas.insert(name.clone(), cur - old);
                    } else {
                        d.deltas.insert(name.clone(), *cur);
                        d.reset.push(name.clone());
                    }
                }
                now.insert(key, values);
                d
            })
            .collect();
        let st = &mut *st;
        let bytes = |k: &(String, Vec<String>)| serde_json::to_vec(k).unwrap_or_default();
        for k in st.counters.keys().filter(|(db, _)| db == database) {
            if !now.contains_key(k) {
                st.changed.insert(bytes(k), None);
            }
        }
        for (k, v) in &now {
            if st.counters.get(k) != Some(v) {
                st.changed
                    .insert(bytes(k), Some(serde_json::to_vec(v).unwrap_or_default()));
            }
        }
        st.counters.retain(|(db, _), _| db != database);
        st.counters.extend(now);
        out
    }

    fn event<T: Serialize>(
        &self,
        at: DateTime<Utc>,
        what: &str,
        data: &T,
    ) -> Result<Event, CycleError> {
        let id = format!(
            "pg_custom:{}:{}:{}:{what}",
            self.host,
            self.q.name,
            at.timestamp_micros()
        );
        Event::new(id, EventKind::PgCustom, at, data)
            .map_err(|e| CycleError::encode("custom row", e))
    }
}

/// A row's event data: its columns by name, typed; text over `max_text` bytes cut (at a
/// character) and named in `text_cut`, text that was not UTF-8 named in `not_utf8`,
/// columns of a type the agent does not read named with it in `unread_types`.
fn row_data(
    name: &str,
    database: &str,
    row: &[(String, Cell)],
    d: Deltas,
    max_text: usize,
) -> Value {
    let mut columns = Map::new();
    let (mut not_utf8, mut cut, mut unread) = (Vec::new(), Vec::new(), Map::new());
    for (col, cell) in row {
        let v = match cell {
            Cell::Null => Value::Null,
            Cell::Int(v) => Value::from(*v),
            Cell::Number(v) => serde_json::Number::from_f64(*v).map_or(Value::Null, Value::Number),
            Cell::Bool(b) => Value::Bool(*b),
            Cell::Text { text, lossy } => {
                if *lossy {
                    not_utf8.push(col.clone());
                }
                let kept = capped(text, max_text);
                if kept.len() < text.len() {
                    cut.push(col.clone());
                }
                Value::String(kept.to_string())
            }
            Cell::Unread(ty) => {
                unread.insert(col.clone(), Value::String(ty.clone()));
                Value::Null
            }
        };
        columns.insert(col.clone(), v);
    }
    let mut data = Map::new();
    data.insert("record".into(), "row".into());
    data.insert("name".into(), name.into());
    data.insert("database".into(), database.into());
    data.insert("columns".into(), Value::Object(columns));
    if !d.deltas.is_empty() {
        data.insert(
            "deltas".into(),
            serde_json::to_value(&d.deltas).unwrap_or_default(),
        );
    }
    if !d.reset.is_empty() {
        data.insert(
            "reset".into(),
            serde_json::to_value(&d.reset).unwrap_or_default(),
        );
    }
    if !not_utf8.is_empty() {
        data.insert(
            "not_utf8".into(),
            serde_json::to_value(&not_utf8).unwrap_or_default(),
        );
    }
    if !cut.is_empty() {
        data.insert(
            "text_cut".into(),
            serde_json::to_value(&cut).unwrap_or_default(),
        );
    }
    if !unread.is_empty() {
        data.insert("unread_types".into(), Value::Object(unread));
    }
    Value::Object(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numerics_and_intervals_are_read_from_their_binary_form() {
        // 12345.678: digits 1, 2345, 6780 with weight 1, positive, dscale 3.
        let n = [0u8, 3, 0, 1, 0, 0, 0, 3, 0, 1, 0x09, 0x29, 0x1a, 0x7c];
        assert_eq!(numeric(&n), Some(12345.678));
        let negative = [0u8, 1, 0, 0, 0x40, 0, 0, 0, 0, 42];
        assert_eq!(numeric(&negative), Some(-42.0));
        let nan = [0u8, 0, 0, 0, 0xc0, 0, 0, 0];
        assert_eq!(numeric(&nan), None);
        assert_eq!(numeric(&[0u8, 1]), None, "cut short");
        // 1 month 2 days 3.5 s.
        let mut i = 3_500_000i64.to_be_bytes().to_vec();
        i.extend(2i32.to_be_bytes());
        i.extend(1i32.to_be_bytes());
        assert_eq!(
            interval_seconds(&i),
            Some(3.5 + 2.0 * 86_400.0 + 30.0 * 86_400.0)
        );
    }

    #[test]
    fn a_row_is_typed_capped_and_flagged() {
        let row = vec![
            ("n".to_string(), Cell::Int(7)),
            ("f".to_string(), Cell::Number(1.5)),
            (
                "t".to_string(),
                Cell::Text {
                    text: "héllo".into(),
                    lossy: false,
                },
            ),
            (
                "bad".to_string(),
                Cell::Text {
                    text: "a\u{fffd}".into(),
                    lossy: true,
                },
            ),
            ("p".to_string(), Cell::Unread("point".into())),
            ("z".to_string(), Cell::Null),
        ];
        let d = Deltas {
            deltas: [("n".to_string(), 2.0)].into(),
            reset: vec![],
        };
        let v = row_data("q", "db", &row, d, 2);
        assert_eq!(
            v,
            serde_json::json!({
                "record": "row", "name": "q", "database": "db",
                "columns": {"n": 7, "f": 1.5, "t": "h", "bad": "a", "p": null, "z": null},
                "deltas": {"n": 2.0},
                "not_utf8": ["bad"],
                "text_cut": ["t", "bad"],
                "unread_types": {"p": "point"},
            })
        );
    }

    #[test]
    fn a_label_is_cut_like_the_column_it_comes_from() {
        let row = vec![(
            "k".to_string(),
            Cell::Text {
                text: "é".repeat(100),
                lossy: false,
            },
        )];
        assert_eq!(label(&row, "k", 5), "éé");
        assert_eq!(label(&row, "missing", 5), "");
    }

    #[test]
    fn a_failing_database_waits_longer_each_time_up_to_64_cycles() {
        let waits: Vec<u64> = (1..=8).map(backoff_cycles).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 64, 64]);
    }
}
