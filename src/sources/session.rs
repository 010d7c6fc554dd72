//! One backend as `pg_stat_activity` shows it: the fields every source that reads
//! sessions ships (activity, locks; later session sampling), read the same way
//! everywhere — names and query lossily (a `SQL_ASCII` database need not be UTF-8),
//! passwords masked, the correlation id taken from the application name or a comment.

use regex::Regex;
use serde::Serialize;
use tokio_postgres::Row;

use crate::correlation::{self, CorrelationSource};
use crate::db::text::text;
use crate::fingerprint::fingerprint;

/// What the server shows instead of another role's query to a role without
/// pg_read_all_stats.
pub const INSUFFICIENT_PRIVILEGE: &str = "<insufficient privilege>";
use crate::logs::redact::{literals, passwords, Redact};

/// One session.
#[derive(Debug, Clone, Serialize)]
#[allow(missing_docs)]
pub struct Session {
    pub pid: i32,
    pub datname: Option<String>,
    pub usename: Option<String>,
    pub application_name: Option<String>,
    pub client_addr: Option<String>,
    pub state: Option<String>,
    pub wait_event_type: Option<String>,
    pub wait_event: Option<String>,
    pub query: Option<String>,
    pub query_truncated: bool,
    /// The server's query id (PostgreSQL 14+ with `compute_query_id`): equals
    /// `pg_stat_statements.queryid`.
    pub query_id: Option<i64>,
    /// The agent's fingerprint of the normalized query (see [`crate::fingerprint`]);
    /// not the server's `query_id`. Absent when the text was cut or hidden.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_fingerprint: Option<String>,
    pub xact_age_s: Option<f64>,
    pub query_age_s: Option<f64>,
    pub state_age_s: Option<f64>,
    pub backend_xid: Option<String>,
    pub correlation_id: Option<String>,
    pub correlation_source: Option<CorrelationSource>,
    /// W3C trace id of a sqlcommenter `traceparent` in the query (links to the
    /// application's trace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The `traceparent`'s parent id: the application span that ran the statement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    /// Some text of the row was not UTF-8 (a `SQL_ASCII` database): shown with U+FFFD.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub not_utf8: bool,
}

/// How session texts are read: where the request id is, what is redacted.
#[derive(Debug, Clone)]
pub struct Reading {
    /// `correlation.application_name_pattern`.
    pub pattern: Regex,
    /// `collection.redact`.
    pub redact: Redact,
}

impl Reading {
    /// From the configuration.
    pub fn of(config: &crate::config::Config) -> Reading {
        Reading {
            pattern: config.correlation.application_name_pattern.clone(),
            redact: config.collection.redact,
        }
    }
}

/// A query text as shipped: literals out when `redact` says so. Passwords are masked
/// before, whatever it says.
pub fn redacted(query: String, redact: Redact) -> String {
    if redact == Redact::Literals && query != INSUFFICIENT_PRIVILEGE {
        literals(&query)
    } else {
        query
    }
}

/// Reads the session columns of `r` (named as in `pg_stat_activity`, ages as
/// `xact_age_s`, `query_age_s`, `state_age_s`, the query cut with `query_truncated`,
/// `query_id` NULL before PostgreSQL 14).
pub fn read(r: &Row, reading: &Reading) -> Result<Session, tokio_postgres::Error> {
    let pattern = &reading.pattern;
    let mut bad = false;
    let application_name = text(r, "application_name", &mut bad)?;
    // An idle session shows its last statement: an `ALTER ROLE … PASSWORD` stays
    // visible there for as long as the session lives.
    let query = text(r, "query", &mut bad)?.map(|q| passwords(&q).unwrap_or(q));
    let corr = correlation::extract(pattern, application_name.as_deref(), query.as_deref());
    let trace = correlation::trace(query.as_deref());
    let query_truncated: bool = r.try_get("query_truncated")?;
    let query_fingerprint = query
        .as_deref()
        .filter(|q| !query_truncated && *q != INSUFFICIENT_PRIVILEGE)
        .and_then(fingerprint);
    // After the correlation id, the trace and the fingerprint were taken from it.
    let query = query.map(|q| redacted(q, reading.redact));
    Ok(Session {
        pid: r.try_get("pid")?,
        datname: text(r, "datname", &mut bad)?,
        usename: text(r, "usename", &mut bad)?,
        application_name,
        client_addr: text(r, "client_addr", &mut bad)?,
        state: text(r, "state", &mut bad)?,
        wait_event_type: text(r, "wait_event_type", &mut bad)?,
        wait_event: text(r, "wait_event", &mut bad)?,
        query,
        query_truncated,
        query_id: r.try_get("query_id")?,
        query_fingerprint,
        xact_age_s: r.try_get("xact_age_s")?,
        query_age_s: r.try_get("query_age_s")?,
        state_age_s: r.try_get("state_age_s")?,
        backend_xid: text(r, "backend_xid", &mut bad)?,
        correlation_id: corr.as_ref().map(|c| c.0.clone()),
        correlation_source: corr.map(|c| c.1),
        trace_id: trace.as_ref().map(|t| t.trace_id.clone()),
        span_id: trace.map(|t| t.span_id),
        not_utf8: bad,
    })
}
