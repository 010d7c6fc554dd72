//! `pg_activity`: one event per backend of `pg_stat_activity` (the agent's own excluded),
//! with ages, wait state, the (length-capped) query text and the request correlation id.

use std::cell::Cell;
use std::rc::Rc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Row;

use super::session::{self, Session};
use super::{CollectFuture, CycleError, Source};
use crate::config::Config;
use crate::db::text::{text, Lossy};
use crate::db::Db;
use crate::model::{Event, EventKind, Problem, SourceState};
use tokio_postgres::types::ToSql;

use super::session::INSUFFICIENT_PRIVILEGE as INSUFFICIENT;

/// Reads `pg_stat_activity`.
pub struct ActivitySource {
    host: String,
    reading: Rc<session::Reading>,
    max_rows: u32,
    max_query_length: u32,
    /// `server_version_num`, learnt on first use: `query_id` exists from PostgreSQL 14.
    server_version: Rc<Cell<Option<i32>>>,
    /// Rows that could not be read at all (counted and skipped; the cycle goes on).
    skipped: Rc<Cell<u64>>,
    /// Other sessions' queries read `<insufficient privilege>` in the last sample.
    hidden: Rc<Cell<usize>>,
    /// The role, for the fix.
    user: String,
}

/// One backend as shipped (`data` of a `pg_activity` event): the session, and what only
/// this source ships about it.
#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct ActivityRow {
    #[serde(flatten)]
    pub session: Session,
    pub client_port: Option<i32>,
    pub backend_type: Option<String>,
    pub backend_start: Option<DateTime<Utc>>,
    pub xact_start: Option<DateTime<Utc>>,
    pub query_start: Option<DateTime<Utc>>,
    pub state_change: Option<DateTime<Utc>>,
    pub backend_xmin: Option<String>,
    /// Backends in the sample (after the `max_activity_rows` cap) and before the cap.
    pub sample_rows: usize,
    pub sample_total_rows: i64,
}

/// The query. The agent's own sessions are excluded by name *and* role, so that a user
/// who happens to call an application `postgres-agent` is still seen. Non-idle sessions
/// come first and the oldest transactions before younger ones, so that the cap keeps
/// the backends that matter in an incident.
fn sql(server_version: i32) -> String {
    let session = session::columns(server_version, "s.now");
    let not_agent = session::NOT_THE_AGENT;
    format!(
        "SELECT {session},
            a.client_port, a.backend_type,
            a.backend_start, a.xact_start, a.query_start, a.state_change,
            a.backend_xmin::text,
            count(*) OVER () AS total_rows, s.now AS sampled_at
         FROM pg_stat_activity a, (SELECT now() AS now) s
         WHERE a.pid <> pg_backend_pid()
           AND {not_agent}
         ORDER BY coalesce(a.state, '') IN ('idle', '') , a.xact_start NULLS LAST, a.pid
         LIMIT $2"
    )
}

impl ActivitySource {
    /// From the configuration.
    pub fn new(config: &Config) -> ActivitySource {
        ActivitySource {
            host: config.id_host(),
            reading: session::Reading::of(config),
            max_rows: config.collection.max_activity_rows,
            max_query_length: config.collection.max_query_length,
            server_version: Rc::new(Cell::new(None)),
            skipped: Rc::new(Cell::new(0)),
            hidden: Rc::new(Cell::new(0)),
            user: config.database.user.clone(),
        }
    }
}

impl Source for ActivitySource {
    fn kind(&self) -> EventKind {
        EventKind::PgActivity
    }

    fn state(&self) -> Option<SourceState> {
        let hidden = self.hidden.get();
        (hidden > 0).then(|| {
            SourceState::Degraded(Problem::new(
                // No count in the text: a state is logged when it changes, and the
                // number of other sessions changes all the time.
                "other sessions show <insufficient privilege> instead of their query: the role lacks pg_read_all_stats",
                format!("GRANT pg_monitor TO {};", self.user),
            ))
        })
    }

    fn rows_skipped(&self) -> u64 {
        self.skipped.get()
    }

    fn collect(&self, db: Rc<Db>) -> CollectFuture {
        let host = self.host.clone();
        let reading = self.reading.clone();
        let (max_rows, max_len) = (self.max_rows, self.max_query_length);
        let version = self.server_version.clone();
        let skipped = self.skipped.clone();
        let hidden = self.hidden.clone();
        Box::pin(async move {
            let conn = db.get().await?;
            let params: [&(dyn ToSql + Sync); 2] = [&(max_len as i32), &(max_rows as i64)];
            let rows = super::versioned_query(&conn, &version, sql, &params).await?;
            let board = db.server().board();
            if board.wanted() {
                // Only the page needs it: a failure shows as the reading's age, not as
                // a lost cycle.
                let _ = super::counts::post_sessions(&conn, board).await;
            }
            let (events, bad) = to_events(&rows, &host, &reading)?;
            skipped.set(skipped.get() + bad);
            hidden.set(
                rows.iter()
                    .filter(|r| {
                        r.try_get::<_, Option<Lossy>>("query")
                            .ok()
                            .flatten()
                            .is_some_and(|q| q.text == INSUFFICIENT)
                    })
                    .count(),
            );
            Ok(events)
        })
    }
}

/// Maps rows to events; a row that cannot be read is skipped and counted (the second
/// value), never the reason a whole sample is lost.
fn to_events(
    rows: &[Row],
    host: &str,
    reading: &session::Reading,
) -> Result<(Vec<Event>, u64), CycleError> {
    let n = rows.len();
    let mut out = Vec::with_capacity(n);
    let mut skipped = 0;
    for r in rows {
        let (Ok(mut row), Ok(sampled_at)) = (
            map_row(r, reading),
            r.try_get::<_, DateTime<Utc>>("sampled_at"),
        ) else {
            skipped += 1;
            continue;
        };
        row.sample_rows = n;
        let id = format!(
            "pg_activity:{host}:{}:{}",
            sampled_at.timestamp_micros(),
            row.session.pid
        );
        let ev = Event::new(id, EventKind::PgActivity, sampled_at, &row)
            .map_err(|e| CycleError::encode("row", e))?;
        out.push(ev);
    }
    Ok((out, skipped))
}

fn map_row(r: &Row, reading: &session::Reading) -> Result<ActivityRow, tokio_postgres::Error> {
    let mut bad = false;
    let mut row = ActivityRow {
        session: session::read(r, reading)?,
        client_port: r.try_get("client_port")?,
        backend_type: text(r, "backend_type", &mut bad)?,
        backend_start: r.try_get("backend_start")?,
        xact_start: r.try_get("xact_start")?,
        query_start: r.try_get("query_start")?,
        state_change: r.try_get("state_change")?,
        backend_xmin: text(r, "backend_xmin", &mut bad)?,
        sample_rows: 0,
        sample_total_rows: r.try_get("total_rows")?,
    };
    row.session.not_utf8 |= bad;
    Ok(row)
}
