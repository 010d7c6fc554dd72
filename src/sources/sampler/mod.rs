//! `pg_activity_summary`: the non-idle sessions of `pg_stat_activity` sampled every
//! `[collection] sample_interval_ms` (and `idle in transaction` ones: they hold locks and
//! the xmin horizon), aggregated in memory per window of `activity_interval_s` by
//! request, database, user, statement, state, wait and backend type ([`window`]), and
//! shipped once per window: where a request's database time went, to the second.
//!
//! A window's summaries are one collection, so they reach the spool in one transaction;
//! their ids are the window's start and the key's hash, so a window shipped twice is the
//! same events. A kill loses at most the window in progress.

pub mod window;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{session, CollectFuture, CycleError, Source};
use crate::config::Config;
use crate::db::text::{raw_bytes, text};
use crate::db::{Db, APPLICATION_NAME};
use crate::model::{Event, EventKind, Problem, SourceState};
use window::{Sampled, Window};

/// At most this many keys per window; beyond, samples go to one overflow entry.
pub const MAX_KEYS: usize = 10_000;

/// The sample query: non-idle sessions (the agent's own excluded), the blockers of lock
/// waiters (`pg_blocking_pids` only for those: nothing when nobody waits).
fn sql(server_version: i32) -> String {
    let query = raw_bytes("a.query");
    let query_id = super::since(server_version, 14, "a.query_id", "NULL::bigint");
    // The time row is always there, so a sample with nobody active still moves the
    // window on (and closes the last one).
    format!(
        "SELECT s.now AS sampled_at, a.*
         FROM (SELECT clock_timestamp() AS now) s
         LEFT JOIN LATERAL (
           SELECT a.pid, a.datname::text AS datname, a.usename::text AS usename,
             a.application_name, host(a.client_addr) AS client_addr, a.backend_type,
             a.state, a.wait_event_type, a.wait_event,
             extract(epoch FROM s.now - a.xact_start)::float8 AS xact_age_s,
             extract(epoch FROM s.now - a.query_start)::float8 AS query_age_s,
             extract(epoch FROM s.now - a.state_change)::float8 AS state_age_s,
             a.backend_xid::text AS backend_xid, {query_id} AS query_id,
             substr({query}, 1, $1) AS query,
             coalesce(octet_length(a.query) > $1, false) AS query_truncated,
             CASE WHEN a.wait_event_type = 'Lock' THEN pg_blocking_pids(a.pid) END AS blocking
           FROM pg_stat_activity a
           WHERE a.pid <> pg_backend_pid()
             AND a.state IS NOT NULL AND a.state <> 'idle'
             AND NOT coalesce(a.application_name = '{APPLICATION_NAME}' AND a.usename = current_user, false)
           ORDER BY a.pid
           LIMIT $2
         ) a ON true"
    )
}

#[derive(Debug)]
struct State {
    window: Option<Window>,
    overflowed_total: u64,
    texts_omitted_total: u64,
    /// Seconds of sessions by state and wait event type, for the metrics page.
    seconds: std::collections::BTreeMap<(&'static str, &'static str), f64>,
}

/// Samples sessions and summarizes them per window.
pub struct SamplerSource {
    host: String,
    reading: Rc<session::Reading>,
    every: Duration,
    window_len: Duration,
    max_rows: u32,
    max_query_length: u32,
    server_version: Rc<Cell<Option<i32>>>,
    skipped: Rc<Cell<u64>>,
    state: Rc<RefCell<State>>,
    /// `once`: every collection is its own window (one sample, summarized at once).
    single: bool,
}

impl SamplerSource {
    /// From the configuration (`sample_interval_ms`, windows of `activity_interval_s`);
    /// `single` summarizes each sample on its own (`once`).
    pub fn new(config: &Config, single: bool) -> SamplerSource {
        let c = &config.collection;
        SamplerSource {
            host: config.id_host(),
            reading: session::Reading::of(config),
            every: c.sample_interval.unwrap_or(Duration::from_secs(1)),
            window_len: c.activity_interval,
            max_rows: c.max_activity_rows,
            max_query_length: c.max_query_length,
            server_version: Rc::new(Cell::new(None)),
            skipped: Rc::new(Cell::new(0)),
            state: Rc::new(RefCell::new(State {
                window: None,
                overflowed_total: 0,
                texts_omitted_total: 0,
                seconds: Default::default(),
            })),
            single,
        }
    }
}

impl Source for SamplerSource {
    fn kind(&self) -> EventKind {
        EventKind::PgActivitySummary
    }

    fn state(&self) -> Option<SourceState> {
        let st = self.state.borrow();
        // No counts in the text: a state is logged when it changes, and a count would
        // change it every window (the overflow entries carry theirs in `samples`).
        let mut what = Vec::new();
        if st.overflowed_total > 0 {
            what.push(format!(
                "samples beyond {MAX_KEYS} keys per window are summarized in overflow entries"
            ));
        }
        if st.texts_omitted_total > 0 {
            what.push(format!(
                "query texts beyond {} MiB per window are left out (query null)",
                window::MAX_TEXT_BYTES >> 20
            ));
        }
        (!what.is_empty()).then(|| {
            SourceState::Degraded(Problem::new(
                what.join("; "),
                "a shorter [collection] activity_interval_s makes smaller windows",
            ))
        })
    }

    fn rows_skipped(&self) -> u64 {
        self.skipped.get()
    }

    /// The open window, cut where its samples end (never past the window's end).
    fn finish(&self) -> Result<Vec<Event>, CycleError> {
        let Some(w) = self.state.borrow_mut().window.take() else {
            return Ok(Vec::new());
        };
        let Some(last) = w.last_sample else {
            return Ok(Vec::new());
        };
        let full = w.start + chrono::Duration::from_std(self.window_len).unwrap_or_default();
        let cut = (last + chrono::Duration::from_std(self.every).unwrap_or_default()).min(full);
        window_events(w, &self.host, self.window_len, self.every, Some(cut))
    }

    fn collect(&self, db: Rc<Db>) -> CollectFuture {
        let host = self.host.clone();
        let reading = self.reading.clone();
        let (every, len) = (self.every, self.window_len);
        let (max_rows, max_len) = (self.max_rows, self.max_query_length);
        let version = self.server_version.clone();
        let skipped = self.skipped.clone();
        let state = self.state.clone();
        let single = self.single;
        Box::pin(async move {
            let conn = db.get().await?;
            let params: [&(dyn ToSql + Sync); 2] = [&(max_len as i32), &(max_rows as i64)];
            let rows = super::versioned_query(&conn, &version, sql, &params).await?;
            let (at, sample, bad) = read_sample(&rows, &reading);
            skipped.set(skipped.get() + bad);
            let Some(at) = at else {
                return Ok(vec![]);
            };
            let mut st = state.borrow_mut();
            let mut events = Vec::new();
            let current = st
                .window
                .get_or_insert_with(|| Window::holding(at, len, MAX_KEYS));
            if !current.holds(at, len) {
                let done = std::mem::replace(current, Window::holding(at, len, MAX_KEYS));
                st.overflowed_total += done.overflowed;
                st.texts_omitted_total += done.texts_omitted;
                events = window_events(done, &host, len, every, None)?;
            }
            if let Some(w) = st.window.as_mut() {
                w.add(at, &sample);
            }
            db.server().note_long_running(long_running(&sample));
            let board = db.server().board();
            if board.wanted() {
                post_seconds(&mut st.seconds, &sample, every.as_secs_f64(), board);
            }
            if single {
                if let Some(w) = st.window.take() {
                    events.extend(window_events(w, &host, len, every, None)?);
                }
            }
            Ok(events)
        })
    }
}

/// A statement running this long (s) is one pg_plans plans even when it is not among
/// the statements with the most time.
pub const LONG_RUNNING_S: f64 = 1.0;

/// The statements of a sample running for [`LONG_RUNNING_S`] or more, with a query id.
fn long_running(sample: &[Sampled]) -> Vec<crate::model::LongRunning> {
    sample
        .iter()
        .filter_map(|Sampled { session: s, .. }| {
            let running_s = s.query_age_s.filter(|a| *a >= LONG_RUNNING_S)?;
            if s.state.as_deref() != Some("active") || s.not_utf8 {
                return None;
            }
            Some(crate::model::LongRunning {
                datname: s.datname.clone()?,
                usename: s.usename.clone(),
                queryid: s.query_id.filter(|q| *q != 0)?,
                running_s,
            })
        })
        .collect()
}

/// Adds a sample's sessions to the time by state and wait event type (each stood for
/// one interval) and posts the totals.
fn post_seconds(
    seconds: &mut std::collections::BTreeMap<(&'static str, &'static str), f64>,
    sample: &[Sampled],
    every_s: f64,
    board: &crate::board::Board,
) {
    use crate::board::{bounded, SessionTime, STATES, WAIT_EVENT_TYPES};
    for Sampled { session: s, .. } in sample {
        let key = (
            bounded(s.state.as_deref(), STATES, "other"),
            bounded(s.wait_event_type.as_deref(), WAIT_EVENT_TYPES, "none"),
        );
        *seconds.entry(key).or_default() += every_s;
    }
    let totals = seconds
        .iter()
        .map(|((state, wait), s)| SessionTime {
            state,
            wait_event_type: wait,
            seconds: *s,
        })
        .collect();
    board.post(|p| &mut p.session_seconds, std::sync::Arc::new(totals));
}

/// The sampled sessions of one query result, the server's time of the sample, and how
/// many rows could not be read.
fn read_sample(
    rows: &[Row],
    reading: &session::Reading,
) -> (Option<DateTime<Utc>>, Vec<Sampled>, u64) {
    let at = rows
        .iter()
        .find_map(|r| r.try_get::<_, DateTime<Utc>>("sampled_at").ok());
    let mut bad = 0;
    let mut read = Vec::with_capacity(rows.len());
    // The time row alone: nobody was active.
    let sessions = rows
        .iter()
        .filter(|r| !matches!(r.try_get::<_, Option<i32>>("pid"), Ok(None)));
    for r in sessions {
        let mut flag = false;
        let parts = (
            session::read(r, reading),
            text(r, "backend_type", &mut flag),
            r.try_get::<_, Option<Vec<i32>>>("blocking"),
        );
        let (Ok(mut s), Ok(backend_type), Ok(blocking)) = parts else {
            bad += 1;
            continue;
        };
        s.not_utf8 |= flag;
        read.push((s, backend_type, blocking.unwrap_or_default()));
    }
    // A blocker's request, when it was in the same sample.
    let requests: HashMap<i32, Option<String>> = read
        .iter()
        .map(|(s, _, _)| (s.pid, s.correlation_id.clone()))
        .collect();
    let sample = read
        .into_iter()
        .map(|(session, backend_type, blocking)| Sampled {
            blockers: blocking
                .into_iter()
                .map(|pid| (pid, requests.get(&pid).cloned().flatten()))
                .collect(),
            session,
            backend_type,
        })
        .collect();
    (at, sample, bad)
}

/// The events of a finished window: id = window start and key hash, so the same window
/// always makes the same events. A window cut short at shutdown (`cut`: where its samples
/// end) has ids of its own, so that the rest of the same window, sampled after a restart,
/// is not taken for a copy of it.
fn window_events(
    w: Window,
    host: &str,
    len: Duration,
    every: Duration,
    cut: Option<DateTime<Utc>>,
) -> Result<Vec<Event>, CycleError> {
    let start = w.start;
    let end = cut.unwrap_or(start + chrono::Duration::from_std(len).unwrap_or_default());
    w.close(end, every)
        .into_iter()
        .map(|mut s| {
            s.partial = cut.is_some();
            let key = if s.overflow {
                "overflow".to_string()
            } else {
                s.key.hash()
            };
            let until = cut
                .map(|c| format!(":until:{}", c.timestamp_micros()))
                .unwrap_or_default();
            let id = format!(
                "pg_activity_summary:{host}:{}:{key}{until}",
                start.timestamp_micros()
            );
            Event::new(id, EventKind::PgActivitySummary, end, &s)
                .map_err(|e| CycleError::encode("summary", e))
        })
        .collect()
}
