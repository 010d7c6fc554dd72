//! One backend as `pg_stat_activity` shows it: the fields every source that reads
//! sessions ships (activity, locks; later session sampling), read the same way
//! everywhere — names and query lossily (a `SQL_ASCII` database need not be UTF-8),
//! passwords masked, the correlation id taken from the application name or a comment.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use regex::Regex;
use serde::Serialize;
use tokio_postgres::Row;

use crate::correlation::{self, CorrelationSource};
use crate::db::text::text;
use crate::fingerprint::fingerprint;

/// What the server shows instead of another role's query to a role without
/// pg_read_all_stats.
pub const INSUFFICIENT_PRIVILEGE: &str = "<insufficient privilege>";
use crate::sql::redact::{literals, passwords, Redact};

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

/// How session texts are read: where the request id is, what is redacted; with what
/// was worked out before (a session keeps its application name and statement over many
/// samples: the regex and the fingerprint's tokenizer run once per text, not per row).
#[derive(Debug)]
pub struct Reading {
    /// `correlation.application_name_pattern`.
    pub pattern: Regex,
    /// `collection.redact`.
    pub redact: Redact,
    memo: RefCell<Memo>,
}

/// Results by text, held up to [`MEMO_MAX_BYTES`] of texts (then forgotten at once).
#[derive(Debug, Default)]
struct Memo {
    ids: HashMap<String, Option<String>>,
    fingerprints: HashMap<String, Option<String>>,
    bytes: usize,
}

/// The most text the memo holds. Small: texts with literals in them (a workload that
/// does not use parameters) are each seen once, so a large memo fills slowly with texts
/// never asked for again and holds heap for little saved work.
const MEMO_MAX_BYTES: usize = 128 << 10;

impl Memo {
    fn room(&mut self, len: usize) -> bool {
        if len > MEMO_MAX_BYTES / 16 {
            return false;
        }
        if self.bytes + len > MEMO_MAX_BYTES {
            *self = Memo::default();
        }
        self.bytes += len;
        true
    }
}

impl Reading {
    /// From the configuration.
    pub fn of(config: &crate::config::Config) -> Rc<Reading> {
        Rc::new(Reading::new(
            config.correlation.application_name_pattern.clone(),
            config.collection.redact,
        ))
    }

    /// With `pattern` and `redact`.
    pub fn new(pattern: Regex, redact: Redact) -> Reading {
        Reading {
            pattern,
            redact,
            memo: RefCell::new(Memo::default()),
        }
    }

    /// The request id in an application name.
    fn id_in(&self, application_name: &str) -> Option<String> {
        if let Some(hit) = self.memo.borrow().ids.get(application_name) {
            return hit.clone();
        }
        let id = correlation::from_application_name(&self.pattern, application_name);
        let mut m = self.memo.borrow_mut();
        if m.room(application_name.len()) {
            m.ids.insert(application_name.to_string(), id.clone());
        }
        id
    }

    /// The fingerprint of a query text.
    fn fingerprint_of(&self, query: &str) -> Option<String> {
        if let Some(hit) = self.memo.borrow().fingerprints.get(query) {
            return hit.clone();
        }
        let f = fingerprint(query);
        let mut m = self.memo.borrow_mut();
        if m.room(query.len()) {
            m.fingerprints.insert(query.to_string(), f.clone());
        }
        f
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

/// The columns [`read`] reads, from `pg_stat_activity` aliased `a`, with ages measured
/// from `{now}` (an expression) and the query cut at `$1` bytes.
pub fn columns(server_version: i32, now: &str) -> String {
    let query = crate::db::text::raw_bytes("a.query");
    let query_id = super::since(server_version, 14, "a.query_id", "NULL::bigint");
    format!(
        "a.pid, a.datname::text, a.usename::text, a.application_name,
            host(a.client_addr) AS client_addr, a.state, a.wait_event_type, a.wait_event,
            extract(epoch FROM {now} - a.xact_start)::float8 AS xact_age_s,
            extract(epoch FROM {now} - a.query_start)::float8 AS query_age_s,
            extract(epoch FROM {now} - a.state_change)::float8 AS state_age_s,
            a.backend_xid::text, {query_id} AS query_id,
            substr({query}, 1, $1) AS query,
            coalesce(octet_length(a.query) > $1, false) AS query_truncated"
    )
}

/// Leaves out the agent's own sessions (its application name under its own role).
pub const NOT_THE_AGENT: &str =
    "NOT coalesce(a.application_name = 'postgres-agent' AND a.usename = current_user, false)";

/// Reads the session columns of `r` (named as in `pg_stat_activity`, ages as
/// `xact_age_s`, `query_age_s`, `state_age_s`, the query cut with `query_truncated`,
/// `query_id` NULL before PostgreSQL 14).
pub fn read(r: &Row, reading: &Reading) -> Result<Session, tokio_postgres::Error> {
    let mut bad = false;
    let application_name = text(r, "application_name", &mut bad)?;
    // An idle session shows its last statement: an `ALTER ROLE … PASSWORD` stays
    // visible there for as long as the session lives.
    let query = text(r, "query", &mut bad)?.map(|q| passwords(&q).unwrap_or(q));
    let corr = match application_name.as_deref().and_then(|a| reading.id_in(a)) {
        Some(id) => Some((id, CorrelationSource::ApplicationName)),
        None => query.as_deref().and_then(correlation::from_comment),
    };
    let trace = correlation::trace(query.as_deref());
    let query_truncated: bool = r.try_get("query_truncated")?;
    let query_fingerprint = query
        .as_deref()
        .filter(|q| !query_truncated && *q != INSUFFICIENT_PRIVILEGE)
        .and_then(|q| reading.fingerprint_of(q));
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

#[cfg(test)]
mod memo_tests {
    use super::*;

    #[test]
    fn the_agents_own_sessions_are_named_as_it_names_them() {
        assert!(NOT_THE_AGENT.contains(&format!("'{}'", crate::db::APPLICATION_NAME)));
    }

    #[test]
    fn the_memo_gives_what_the_work_gives_and_holds_bytes_not_texts() {
        let r = Reading::new(
            Regex::new(r"^bitville-(?P<id>[0-9a-f-]{36})$").expect("re"),
            Redact::None,
        );
        let app = "bitville-0b7e6c84-5a2f-4d43-9a4e-2b1f0f6e7a10";
        for _ in 0..2 {
            assert_eq!(
                r.id_in(app).as_deref(),
                Some("0b7e6c84-5a2f-4d43-9a4e-2b1f0f6e7a10")
            );
            assert_eq!(r.id_in("psql"), None);
        }
        // 4 MiB of distinct texts through the memo.
        for i in 0..1024 {
            let q = format!("select {i} from t where x = '{}'", "y".repeat(4000));
            assert_eq!(r.fingerprint_of(&q), fingerprint(&q));
            assert_eq!(r.fingerprint_of(&q), fingerprint(&q));
            let m = r.memo.borrow();
            assert!(m.bytes <= MEMO_MAX_BYTES, "{}", m.bytes);
        }
        // A text too large to be worth holding is worked out every time, not held.
        let huge = "select 1 -- ".to_string() + &"z".repeat(MEMO_MAX_BYTES);
        assert_eq!(r.fingerprint_of(&huge), fingerprint(&huge));
        assert!(!r.memo.borrow().fingerprints.contains_key(&huge));
    }
}
