//! `pg_activity`: one event per backend of `pg_stat_activity` (the agent's own excluded),
//! with ages, wait state, the (length-capped) query text and the request correlation id.

use std::cell::Cell;
use std::rc::Rc;

use chrono::{DateTime, Utc};
use regex::Regex;
use serde::Serialize;
use tokio_postgres::Row;

use super::{CollectFuture, Source};
use crate::config::Config;
use crate::correlation::{self, CorrelationSource};
use crate::db::{Db, DbError, APPLICATION_NAME};
use crate::model::{Event, EventKind};

/// Reads `pg_stat_activity`.
pub struct ActivitySource {
    host: String,
    pattern: Regex,
    max_rows: u32,
    max_query_length: u32,
    /// `server_version_num`, learnt on first use: `query_id` exists from PostgreSQL 14.
    server_version: Rc<Cell<Option<i32>>>,
}

/// One backend as shipped (`data` of a `pg_activity` event).
#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct ActivityRow {
    pub pid: i32,
    pub datname: Option<String>,
    pub usename: Option<String>,
    pub application_name: Option<String>,
    pub client_addr: Option<String>,
    pub client_port: Option<i32>,
    pub backend_type: Option<String>,
    pub state: Option<String>,
    pub wait_event_type: Option<String>,
    pub wait_event: Option<String>,
    pub backend_start: Option<DateTime<Utc>>,
    pub xact_start: Option<DateTime<Utc>>,
    pub query_start: Option<DateTime<Utc>>,
    pub state_change: Option<DateTime<Utc>>,
    pub xact_age_s: Option<f64>,
    pub query_age_s: Option<f64>,
    pub state_age_s: Option<f64>,
    pub backend_xid: Option<String>,
    pub backend_xmin: Option<String>,
    pub query_id: Option<i64>,
    pub query: Option<String>,
    pub query_truncated: bool,
    pub correlation_id: Option<String>,
    pub correlation_source: Option<CorrelationSource>,
    /// Backends in the sample (after the `max_activity_rows` cap) and before the cap.
    pub sample_rows: usize,
    pub sample_total_rows: i64,
}

/// The query. The agent's own sessions are excluded by name *and* role, so that a user
/// who happens to call an application `postgres-agent` is still seen. Non-idle sessions
/// come first and the oldest transactions before younger ones, so that the cap keeps
/// the backends that matter in an incident.
fn sql(server_version: i32) -> String {
    let query_id = if server_version >= 140000 {
        "a.query_id"
    } else {
        "NULL::bigint"
    };
    format!(
        "SELECT a.pid, a.datname::text, a.usename::text, a.application_name, host(a.client_addr) AS client_addr,
            a.client_port, a.backend_type, a.state, a.wait_event_type, a.wait_event,
            a.backend_start, a.xact_start, a.query_start, a.state_change,
            extract(epoch FROM s.now - a.xact_start)::float8 AS xact_age_s,
            extract(epoch FROM s.now - a.query_start)::float8 AS query_age_s,
            extract(epoch FROM s.now - a.state_change)::float8 AS state_age_s,
            a.backend_xid::text, a.backend_xmin::text, {query_id} AS query_id,
            left(a.query, $1) AS query, coalesce(length(a.query) > $1, false) AS query_truncated,
            count(*) OVER () AS total_rows, s.now AS sampled_at
         FROM pg_stat_activity a, (SELECT now() AS now) s
         WHERE a.pid <> pg_backend_pid()
           AND NOT coalesce(a.application_name = '{APPLICATION_NAME}' AND a.usename = current_user, false)
         ORDER BY coalesce(a.state, '') IN ('idle', '') , a.xact_start NULLS LAST, a.pid
         LIMIT $2"
    )
}

impl ActivitySource {
    /// From the configuration.
    pub fn new(config: &Config) -> ActivitySource {
        ActivitySource {
            host: config.agent.hostname.clone(),
            pattern: config.correlation.application_name_pattern.clone(),
            max_rows: config.collection.max_activity_rows,
            max_query_length: config.collection.max_query_length,
            server_version: Rc::new(Cell::new(None)),
        }
    }
}

impl Source for ActivitySource {
    fn kind(&self) -> EventKind {
        EventKind::PgActivity
    }

    fn collect(&self, db: Rc<Db>) -> CollectFuture {
        let host = self.host.clone();
        let pattern = self.pattern.clone();
        let (max_rows, max_len) = (self.max_rows, self.max_query_length);
        let version = self.server_version.clone();
        Box::pin(async move {
            let conn = db.get().await?;
            let v = super::server_version(&conn, &version).await?;
            let rows = conn
                .query(&sql(v), &[&(max_len as i32), &(max_rows as i64)])
                .await
                .map_err(|e| {
                    // A failed statement may mean a different server now; ask again.
                    version.set(None);
                    DbError::query(e)
                })?;
            to_events(&rows, &host, &pattern)
        })
    }
}

/// Maps rows to events; a row that cannot be read fails the cycle with the column named.
fn to_events(rows: &[Row], host: &str, pattern: &Regex) -> Result<Vec<Event>, DbError> {
    let n = rows.len();
    let mut out = Vec::with_capacity(n);
    for r in rows {
        let mut row = map_row(r).map_err(|e| DbError::Query(format!("unexpected row: {e}")))?;
        row.sample_rows = n;
        if let Some((id, src)) = correlation::extract(
            pattern,
            row.application_name.as_deref(),
            row.query.as_deref(),
        ) {
            row.correlation_id = Some(id);
            row.correlation_source = Some(src);
        }
        let sampled_at: DateTime<Utc> = r
            .try_get("sampled_at")
            .map_err(|e| DbError::Query(e.to_string()))?;
        let id = format!(
            "pg_activity:{host}:{}:{}",
            sampled_at.timestamp_micros(),
            row.pid
        );
        let ev = Event::new(id, EventKind::PgActivity, sampled_at, &row)
            .map_err(|e| DbError::Query(format!("cannot encode row: {e}")))?;
        out.push(ev);
    }
    Ok(out)
}

fn map_row(r: &Row) -> Result<ActivityRow, tokio_postgres::Error> {
    Ok(ActivityRow {
        pid: r.try_get("pid")?,
        datname: r.try_get("datname")?,
        usename: r.try_get("usename")?,
        application_name: r.try_get("application_name")?,
        client_addr: r.try_get("client_addr")?,
        client_port: r.try_get("client_port")?,
        backend_type: r.try_get("backend_type")?,
        state: r.try_get("state")?,
        wait_event_type: r.try_get("wait_event_type")?,
        wait_event: r.try_get("wait_event")?,
        backend_start: r.try_get("backend_start")?,
        xact_start: r.try_get("xact_start")?,
        query_start: r.try_get("query_start")?,
        state_change: r.try_get("state_change")?,
        xact_age_s: r.try_get("xact_age_s")?,
        query_age_s: r.try_get("query_age_s")?,
        state_age_s: r.try_get("state_age_s")?,
        backend_xid: r.try_get("backend_xid")?,
        backend_xmin: r.try_get("backend_xmin")?,
        query_id: r.try_get("query_id")?,
        query: r.try_get("query")?,
        query_truncated: r.try_get("query_truncated")?,
        correlation_id: None,
        correlation_source: None,
        sample_rows: 0,
        sample_total_rows: r.try_get("total_rows")?,
    })
}
