//! `pg_statements`: per-statement deltas of pg_stat_statements since the previous sample,
//! per (userid, dbid, queryid, toplevel), adapted to the installed extension version,
//! with reset/eviction detection, a top-N cap, query texts read only for queryids not
//! seen before, and a baseline that survives restarts. A missing extension is reported
//! (with the fix) in a summary event and in status; the other sources never notice.
//!
//! The parts: [`query`] (the SQL, returning plain data), [`tracker`] (the state between
//! cycles and every decision, plain and unit-tested), [`delta`] (the arithmetic),
//! [`baseline`] (the stored sample), [`events`] (the payloads); this module runs a cycle
//! through them.

pub mod baseline;
pub mod delta;
pub mod events;
pub mod query;
pub mod tracker;

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::{CollectFuture, CycleError, Source};
use crate::config::Config;
use crate::db::{Db, DbError};
use crate::model::{Event, EventKind, Problem, SourceState};
use events::{event, key_id, statement, Summary};
use tracker::Tracker;

/// Reads pg_stat_statements.
pub struct StatementsSource {
    host: String,
    state_dir: PathBuf,
    max_query_length: u32,
    redact: crate::sql::redact::Redact,
    tracker: Rc<RefCell<Tracker>>,
    /// Statements on the metrics page.
    board_limit: usize,
    /// The cluster and role the baseline is of.
    identity: Rc<crate::sources::identity::Guard>,
    /// The server, as its identity's report names it.
    who: crate::sources::identity::Who,
}

impl StatementsSource {
    /// From the configuration; `persist` stores the baseline in the spool.
    pub fn new(config: &Config, persist: bool) -> StatementsSource {
        let d = &config.database;
        StatementsSource {
            host: config.id_host(),
            state_dir: config.agent.state_dir.clone(),
            max_query_length: config.collection.max_query_length,
            redact: config.collection.redact,
            tracker: Rc::new(RefCell::new(Tracker::new(
                format!("{}:{}/{}", d.host, d.port, d.dbname),
                persist,
                config.collection.statements_max_rows as usize,
            ))),
            board_limit: config.metrics.statements_limit as usize,
            identity: Rc::default(),
            who: crate::sources::identity::Who::of(config),
        }
    }
}

impl Source for StatementsSource {
    fn report(&self) -> Option<(Vec<Event>, crate::model::Checkpoint)> {
        self.identity.take_report()
    }

    fn kind(&self) -> EventKind {
        EventKind::PgStatements
    }

    fn state(&self) -> Option<SourceState> {
        self.tracker.borrow().state()
    }

    fn checkpoint(&self) -> Option<crate::model::Checkpoint> {
        self.tracker.borrow_mut().take_checkpoint()
    }

    fn collect(&self, db: Rc<Db>) -> CollectFuture {
        let cycle = Cycle {
            host: self.host.clone(),
            state_dir: self.state_dir.clone(),
            max_len: self.max_query_length,
            redact: self.redact,
            tracker: self.tracker.clone(),
            board_limit: self.board_limit,
        };
        let identity = self.identity.clone();
        let who = self.who.clone();
        Box::pin(async move {
            let conn = db.get().await?;
            let look = identity.look(&conn, db.server(), &who).await?;
            if let Some(id) = &look.now {
                cycle
                    .tracker
                    .borrow_mut()
                    .on_cluster(&id.system_identifier, &id.role);
            }
            cycle.run(&db, &conn).await
        })
    }
}

/// One cycle: queries in, [`Tracker`] decides, events out. The tracker is never
/// borrowed across a query.
struct Cycle {
    host: String,
    state_dir: PathBuf,
    max_len: u32,
    redact: crate::sql::redact::Redact,
    tracker: Rc<RefCell<Tracker>>,
    board_limit: usize,
}

/// The columns the metrics page shows of a statement, execution time first (the order).
const BOARD_COLUMNS: &[&str] = &[
    "total_exec_time_ms",
    "calls",
    "rows",
    "shared_blk_read_time_ms",
    "shared_blk_write_time_ms",
];

impl Cycle {
    async fn run(&self, db: &Db, conn: &Client) -> Result<Vec<Event>, CycleError> {
        let known = self.tracker.borrow().ext.clone();
        let (now, ext) = query::extension(conn, known.as_ref()).await?;
        let ext = match ext {
            Ok(e) => e,
            Err(p) => return self.unavailable(now, p),
        };
        self.tracker.borrow_mut().ext = Some(ext.clone());
        let prev = self
            .tracker
            .borrow_mut()
            .previous(&ext, now, || baseline::load(&self.state_dir));
        let info = match query::info(conn, &ext).await? {
            Ok(i) => i,
            Err(p) => return self.unavailable(now, p),
        };
        let plan = self
            .tracker
            .borrow_mut()
            .read_plan(&ext, prev.as_ref(), &info);
        let rows = match query::counters(conn, &ext, &plan.known).await? {
            Ok(r) => r,
            Err(p) => return self.unavailable(now, p),
        };
        let concluded = self
            .tracker
            .borrow_mut()
            .conclude(&ext, prev, &plan, rows, &info, now);
        let mut events = Vec::with_capacity(concluded.deltas.len() + 1);
        let mut summary = concluded.summary;
        if let Some((since, secs)) = concluded.since {
            // The baseline has moved on with these deltas: failing to read texts or
            // names must not lose them. They ship with the names already known (the
            // others null); the summary and the source's state say why.
            if let Err(e) = self.fill_names(db, conn, &ext, &concluded.deltas).await {
                summary.names_error = Some(e.to_string());
                self.tracker.borrow_mut().names_unread(&e);
            }
            db.server()
                .post_top_statements(std::sync::Arc::new(delta::top(
                    now,
                    &ext.columns,
                    &concluded.deltas,
                )));
            let t = self.tracker.borrow();
            for d in &concluded.deltas {
                let data = statement(&ext.columns, d, &t.names, since, secs);
                events.push(event(&self.host, now, &key_id(d), &data)?);
            }
        }
        events.push(event(&self.host, now, "summary", &summary)?);
        if db.server().board().wanted() {
            self.post(db, conn).await;
        }
        Ok(events)
    }

    /// Posts the statements with the most time for the metrics page, naming their
    /// roles and databases (a name that cannot be read is the oid).
    async fn post(&self, db: &Db, conn: &Client) {
        let top = self.tracker.borrow().top(self.board_limit, BOARD_COLUMNS);
        let missing = {
            let names = &self.tracker.borrow().names;
            tracker::Missing {
                texts: Vec::new(),
                databases: top
                    .iter()
                    .any(|((_, d, _), _)| !names.databases.contains_key(d)),
                roles: top
                    .iter()
                    .any(|((u, _, _), _)| !names.roles.contains_key(u)),
            }
        };
        if missing.databases || missing.roles {
            let _ = self.fill_oid_names(conn, &missing).await;
        }
        let t = self.tracker.borrow();
        let name = |m: &std::collections::HashMap<u32, String>, oid: &u32| {
            m.get(oid).cloned().unwrap_or_else(|| oid.to_string())
        };
        let totals = top
            .into_iter()
            .map(|((u, d, q), v)| crate::board::StatementTotals {
                queryid: q,
                user: name(&t.names.roles, &u),
                datname: name(&t.names.databases, &d),
                seconds: v[0] / 1000.0,
                calls: v[1],
                rows: v[2],
                block_read_seconds: v[3] / 1000.0,
                block_write_seconds: v[4] / 1000.0,
            })
            .collect();
        db.server()
            .board()
            .post(|p| &mut p.statements, std::sync::Arc::new(totals));
    }

    fn unavailable(&self, now: DateTime<Utc>, p: Problem) -> Result<Vec<Event>, CycleError> {
        let s: Summary = self.tracker.borrow_mut().unavailable(p);
        Ok(vec![event(&self.host, now, "summary", &s)?])
    }

    /// Query texts for queryids not seen before, database and role names for oids not
    /// seen before: one query each, only when something is missing. Names are read
    /// whether or not the texts could be; the first error is the answer.
    async fn fill_names(
        &self,
        db: &Db,
        conn: &Client,
        ext: &query::Extension,
        deltas: &[delta::Delta],
    ) -> Result<(), DbError> {
        if crate::fault::failing("pg_statements_names") {
            return Err(DbError::Query {
                message: "fault injection: texts and names unreadable".into(),
                sqlstate: None,
            });
        }
        let missing = self.tracker.borrow().missing(deltas);
        let texts = if missing.texts.is_empty() {
            Ok(())
        } else {
            match texts(db, conn, &ext.schema, &missing.texts, self.max_len).await {
                Ok(texts) => {
                    self.tracker
                        .borrow_mut()
                        .add_texts(texts, self.max_len as usize, self.redact);
                    Ok(())
                }
                Err(e) => Err(e),
            }
        };
        self.fill_oid_names(conn, &missing).await?;
        texts
    }

    /// Database and role names for oids not seen before.
    async fn fill_oid_names(
        &self,
        conn: &Client,
        missing: &tracker::Missing,
    ) -> Result<(), DbError> {
        if missing.databases {
            let names = query::databases(conn).await?;
            self.tracker.borrow_mut().names.databases = names;
        }
        if missing.roles {
            let names = query::roles(conn).await?;
            self.tracker.borrow_mut().names.roles = names;
        }
        Ok(())
    }
}

/// Texts of `queryids` (cut to `max_len` bytes, passwords masked). In a database whose
/// encoding cannot hold some entry's text (one written in a `SQL_ASCII` database),
/// `pg_stat_statements(true)` fails as a whole; the texts are then read in a `SQL_ASCII` database where the extension is
/// installed, which converts nothing, and else the error says what would fix it.
pub async fn texts(
    db: &Db,
    conn: &Client,
    schema: &str,
    queryids: &[i64],
    max_len: u32,
) -> Result<Vec<query::Text>, DbError> {
    let e = match query::texts(conn, schema, queryids, max_len).await {
        Ok(t) => return Ok(t),
        Err(e) if query::is_encoding_error(&e) => e,
        Err(e) => return Err(e),
    };
    let candidates = query::sql_ascii_databases(conn).await?;
    for name in &candidates {
        let Ok(other) = db.connect_to(Some(name)).await else {
            continue;
        };
        if let Some(schema) = query::schema_here(&other).await? {
            return query::texts(&other, &schema, queryids, max_len).await;
        }
    }
    let (message, sqlstate) = match e {
        DbError::Query { message, sqlstate } => (message, sqlstate),
        other => (other.to_string(), None),
    };
    let fix = match candidates.as_slice() {
        [] => String::new(),
        [d] => format!(
            "; to read every text, CREATE EXTENSION pg_stat_statements; in the SQL_ASCII database {d} (the agent reads the texts there, where nothing is converted)"
        ),
        many => format!(
            "; to read every text, CREATE EXTENSION pg_stat_statements; in one of the SQL_ASCII databases {} (the agent reads the texts there, where nothing is converted)",
            many.join(", ")
        ),
    };
    Err(DbError::Query {
        message: format!(
            "{message}: a statement's text is not valid in this database's encoding (written in a SQL_ASCII database), and pg_stat_statements converts every text at once{fix}"
        ),
        sqlstate,
    })
}
