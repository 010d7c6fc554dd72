//! `pg_plans`: generic plans the agent asks the server for, for the statements with the
//! most execution time in the last `pg_statements` cycle, and the moment a statement's
//! plan changes.
//!
//! The statements source hands over its cycle's top statements ([`Top`], through the
//! server's [`crate::db::Server`]); this source plans the first `plans_top` of them in
//! each one's own database, within a budget of time per cycle, and remembers each
//! plan's [`shape`]. A shape never seen for the statement ships the plan
//! (`record: "plan"`); a shape that differs from the last one also ships
//! `record: "plan_changed"` with both shapes, the nodes that came and went, the
//! statement's mean time under each, and the tables analyzed in between.
//!
//! How a plan is asked for, harmlessly: only texts [`plannable`] proves are one
//! statement, and only as a query that reads (a data-modifying statement as the query
//! that finds its rows); in a read-only transaction with a short `lock_timeout` (a table locked by
//! someone else is given up on, counted and tried again later) under the connection's
//! `statement_timeout`; never `ANALYZE` (nothing runs); as the statement's role when the
//! agent's role may `SET ROLE` to it, else as itself (the event says which). PostgreSQL
//! 16+ plans the text with its `$n` as it is (`EXPLAIN (GENERIC_PLAN)`); before, the text
//! is `PREPARE`d with the parameter types left to the server and `EXPLAIN EXECUTE`d with
//! NULLs under `plan_cache_mode = force_generic_plan`, which gives the same generic plan
//! whatever the values. A statement whose planning fails waits 1, 2, 4, … 64 cycles
//! before the next try.

pub mod history;
pub mod plannable;
pub use crate::logs::explain::shape;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::SimpleQueryMessage;

use super::{CollectFuture, CycleError, Source};
use crate::config::Config;
use crate::db::{Conn, Db, DbError};
use crate::logs::explain::Plan;
use crate::model::{Event, EventKind, Problem, SourceState};
use history::{Entry, History, Key};

pub use crate::model::{Top, TopStatement};

/// The longest statement text planned; a longer one is refused.
const MAX_TEXT: usize = 64 * 1024;

/// Why a statement whose text pg_stat_statements does not give is not planned.
const NO_TEXT: plannable::Refusal = "pg_stat_statements has no text for it";

/// Why a statement whose text is not UTF-8 (written in a `SQL_ASCII` database) is not
/// planned: what the agent would send back is not what the server stored.
const NOT_UTF8: plannable::Refusal = "its text is not UTF-8 (written in a SQL_ASCII database)";

/// The most statements seen running long planned in a cycle, besides the top.
const LONG_RUNNING_PER_CYCLE: usize = 5;

/// The longest wait for a lock while planning: a table someone holds is given up on.
const LOCK_TIMEOUT: Duration = Duration::from_millis(200);

/// Cycles (the agent's one rule, [`crate::backoff::cycles`]) a statement waits after `failures` failures in a row.
pub use crate::backoff::cycles as backoff_cycles;

/// Reads generic plans.
pub struct PlansSource {
    inner: Rc<Inner>,
}

struct Inner {
    host: String,
    state_dir: PathBuf,
    persist: bool,
    top: usize,
    budget: Duration,
    lock_timeout: Duration,
    redact: crate::sql::redact::Redact,
    version: Cell<Option<i32>>,
    st: RefCell<State>,
}

#[derive(Default)]
struct State {
    history: Option<History>,
    cycle: u64,
    /// Statements whose planning failed: failures in a row and the first cycle of the
    /// next try.
    failing: HashMap<Key, (u32, u64)>,
    /// Texts by query id, or why there is none to plan.
    texts: HashMap<i64, Result<String, plannable::Refusal>>,
    /// Statements the server can never plan as the agent asks (their text, not the
    /// moment, is the cause), with why: not tried again.
    unplannable: HashMap<Key, &'static str>,
    /// The planner settings read this cycle, per database oid.
    settings: HashMap<u32, BTreeMap<String, String>>,
    state: Option<SourceState>,
}

impl PlansSource {
    /// From the configuration; `persist` keeps the plan history in the spool.
    pub fn new(config: &Config, persist: bool) -> PlansSource {
        let c = &config.collection;
        PlansSource {
            inner: Rc::new(Inner {
                host: config.id_host(),
                state_dir: config.agent.state_dir.clone(),
                persist,
                top: c.plans_top as usize,
                budget: c.plans_budget,
                lock_timeout: LOCK_TIMEOUT.min(config.database.lock_timeout),
                redact: c.redact,
                version: Cell::new(None),
                st: RefCell::default(),
            }),
        }
    }
}

impl Source for PlansSource {
    fn kind(&self) -> EventKind {
        EventKind::PgPlans
    }

    fn collect(&self, db: Rc<Db>) -> CollectFuture {
        let inner = self.inner.clone();
        Box::pin(async move { inner.cycle(&db).await })
    }

    fn state(&self) -> Option<SourceState> {
        self.inner.st.borrow().state.clone()
    }

    fn cycle_limit(&self, base: Duration) -> Duration {
        // The budget is checked before each connection and statement: the last one
        // started may take its own limit.
        base * 2 + self.inner.budget
    }

    fn checkpoint(&self) -> Option<crate::model::Checkpoint> {
        if !self.inner.persist {
            return None;
        }
        self.inner
            .st
            .borrow_mut()
            .history
            .as_mut()
            .and_then(History::take_checkpoint)
    }
}

/// A cycle's account.
#[derive(Debug, Default, Serialize)]
struct Summary {
    record: &'static str,
    /// The statements considered: up to `plans_top` of the last pg_statements cycle's
    /// top and up to five statements the session sampler saw running long.
    candidates: usize,
    /// Of those, statements seen running long.
    long_running: usize,
    /// Statements of the top passed over, by reason: utility statements (they have no
    /// plan) and the agent's own (its role's) monitoring queries.
    passed_over: BTreeMap<&'static str, usize>,
    /// Planned this cycle.
    planned: usize,
    /// Of those, plans never seen before for the statement.
    new: usize,
    /// Of those, plans that differ from the statement's last one.
    changed: usize,
    /// Statements not planned, by reason (a text that is not one reading statement).
    refused: BTreeMap<&'static str, usize>,
    /// Planning failed (the last error in `last_error`).
    failed: usize,
    /// Given up because another session held a lock on a table.
    locked: usize,
    /// Waiting after failures.
    backing_off: usize,
    /// Left for a later cycle: the budget was spent.
    deferred: usize,
    /// auto_explain plans with a query id read from the log since the last cycle.
    #[serde(skip_serializing_if = "LogPlans::is_empty")]
    log_plans: LogPlans,
    /// Time spent planning (connecting to each database and the agent's statements,
    /// round trips included), ms.
    spent_ms: f64,
    /// The budget, ms.
    budget_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
}

/// The auto_explain plans read since the last cycle, compared with the generic plans.
#[derive(Debug, Default, Serialize)]
struct LogPlans {
    /// Read.
    read: u64,
    /// With the shape of the statement's generic plan.
    matching_generic: u64,
    /// With another shape (a custom plan for the values it ran with, or a plan the
    /// agent has not seen yet).
    other_shape: u64,
    /// Of a statement the agent has not planned (not in the top, or not plannable).
    not_planned: u64,
}

impl LogPlans {
    fn is_empty(&self) -> bool {
        self.read == 0
    }
}

/// How often the server ran a statement with a shape, as auto_explain plans tell.
#[derive(Debug, Serialize)]
struct LoggedShape<'a> {
    shape_hash: &'a str,
    /// `old`, `new` or `other`.
    is: &'static str,
    runs: u64,
    last_at: DateTime<Utc>,
}

/// A plan event.
#[derive(Serialize)]
struct PlanData<'a> {
    record: &'static str,
    source: &'static str,
    generic: bool,
    query_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    query_fingerprint: Option<String>,
    database: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    /// Planned as the statement's role (else as the agent's).
    as_user: bool,
    /// `select` when a data-modifying statement was planned as the query that finds
    /// its rows (`statement_kind` says which).
    #[serde(skip_serializing_if = "Option::is_none")]
    planned_as: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    statement_kind: Option<&'static str>,
    shape_hash: &'a str,
    shape: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    planning_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mean_ms: Option<f64>,
    /// The session sampler saw it running this long (s): planned for that.
    #[serde(skip_serializing_if = "Option::is_none")]
    seen_running_s: Option<f64>,
    plan: &'a Plan,
}

/// A plan change.
#[derive(Serialize)]
struct ChangedData<'a> {
    record: &'static str,
    source: &'static str,
    query_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    query_fingerprint: Option<String>,
    database: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    old_shape_hash: &'a str,
    new_shape_hash: &'a str,
    old_shape: &'a [String],
    new_shape: &'a [String],
    /// Nodes of the old plan the new one no longer has.
    removed: Vec<String>,
    /// Nodes of the new plan the old one had not.
    added: Vec<String>,
    /// The old plan was first and last seen.
    old_since: DateTime<Utc>,
    old_seen_at: DateTime<Utc>,
    /// Mean execution time (ms) with the old plan (its last cycle) and now.
    #[serde(skip_serializing_if = "Option::is_none")]
    mean_ms_before: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mean_ms_after: Option<f64>,
    /// Tables of either plan analyzed since the old plan was last seen, with when.
    analyzed: Vec<(String, DateTime<Utc>)>,
    /// The shapes auto_explain plans of the statement were read with (the server ran
    /// them): the old, the new, others.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    logged: Vec<LoggedShape<'a>>,
    /// Indexes and extended statistics on the plans' tables that came or went, and
    /// planner settings that changed, since the old plan was first seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    in_between: Option<history::ContextChanges>,
}

/// The effect of a plan change on the statement's mean time, once known.
#[derive(Serialize)]
struct EffectData<'a> {
    record: &'static str,
    source: &'static str,
    query_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    query_fingerprint: Option<String>,
    database: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    old_shape_hash: &'a str,
    new_shape_hash: &'a str,
    /// The mean time (ms) with the old shape, and in a pg_statements cycle entirely
    /// with the new one.
    #[serde(skip_serializing_if = "Option::is_none")]
    mean_ms_before: Option<f64>,
    mean_ms_after: f64,
    /// after / before.
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio: Option<f64>,
    /// Calls in the cycle measured.
    calls: f64,
    /// The new shape was first seen.
    changed_at: DateTime<Utc>,
}

/// What is known of one candidate before it is planned.
struct Candidate<'a> {
    s: TopStatement,
    /// Seen running this long (s) by the session sampler.
    running_s: Option<f64>,
    /// When the pg_statements cycle it is in the top of was taken.
    top_at: Option<DateTime<Utc>>,
    /// The statement's text (its fingerprint is of it).
    text: &'a str,
    /// What the server is asked to plan for it.
    plan: plannable::ToPlan<'a>,
    user: Option<&'a (String, bool)>,
}

impl Inner {
    async fn cycle(&self, db: &Db) -> Result<Vec<Event>, CycleError> {
        let now = Utc::now();
        let cycle = {
            let mut st = self.st.borrow_mut();
            st.cycle += 1;
            st.settings.clear();
            if st.history.is_none() {
                st.history = Some(if self.persist {
                    History::load(&self.state_dir)
                } else {
                    History::default()
                });
            }
            st.cycle
        };
        let mut summary = Summary {
            record: "summary",
            budget_ms: self.budget.as_secs_f64() * 1000.0,
            ..Summary::default()
        };
        let Some(top) = db.server().top_statements() else {
            self.st.borrow_mut().state = Some(SourceState::Unavailable(Problem::new(
                "no pg_statements cycle has handed over its top statements yet",
                "nothing if pg_statements is on (plans follow its first cycle); otherwise turn [collection] statements on",
            )));
            // Nothing was asked of the server: no event says anything of it.
            return Ok(Vec::new());
        };
        let long = db.server().take_long_running();
        if top.statements.is_empty() && long.is_empty() {
            self.st.borrow_mut().state = Some(SourceState::Working(
                "no statement ran in the last pg_statements cycle".into(),
            ));
            return Ok(vec![self.event(now, "summary", &summary)?]);
        }
        let conn = db.get().await?;
        let version = crate::sources::server_version(&conn, &self.version).await?;
        let own: Option<u32> = conn
            .query_opt("SELECT oid FROM pg_roles WHERE rolname = current_user", &[])
            .await
            .map_err(DbError::query)?
            .and_then(|r| r.try_get(0).ok());
        let logged = db.server().plan_shapes().take_logged();
        if !logged.is_empty() {
            self.note_logged(&conn, logged, &mut summary.log_plans)
                .await?;
        }
        // Statements seen running long first (they may have little time in the
        // cycle's top: they have not finished), then the top.
        let long = long_running(&conn, long).await?;
        let mut pool: Vec<(TopStatement, Option<f64>)> = long;
        let mut top_at = HashMap::new();
        for s in top
            .statements
            .iter()
            .take((self.top * 3).max(self.top + 20))
        {
            let key = (s.dbid, s.queryid, s.userid);
            top_at.insert(key, top.taken_at);
            match pool
                .iter_mut()
                .find(|(p, _)| (p.dbid, p.queryid, p.userid) == key)
            {
                // Seen running long and in the top: its time in the cycle is known.
                Some((p, _)) => *p = *s,
                None => pool.push((*s, None)),
            }
        }
        self.read_texts(db, &conn, pool.iter().map(|(s, _)| s.queryid))
            .await?;
        let texts = self.st.borrow().texts.clone();
        let mut chosen: Vec<(TopStatement, Option<f64>)> = Vec::new();
        let mut long_taken = 0;
        for (s, running_s) in pool {
            let slots = if running_s.is_some() {
                long_taken < LONG_RUNNING_PER_CYCLE
            } else {
                chosen.len() < self.top + long_taken
            };
            if !slots {
                continue;
            }
            if own == Some(s.userid) {
                *summary
                    .passed_over
                    .entry("run by the agent's role")
                    .or_default() += 1;
                continue;
            }
            if let Some(Ok(text)) = texts.get(&s.queryid) {
                if plannable::plannable(text).err() == Some(plannable::NOT_A_QUERY) {
                    *summary.passed_over.entry("utility statement").or_default() += 1;
                    continue;
                }
            }
            long_taken += usize::from(running_s.is_some());
            chosen.push((s, running_s));
        }
        // Under a budget too small for all of them, each gets its turn: the ones seen
        // running long first, then those never planned, then those planned longest ago.
        {
            let st = self.st.borrow();
            let last = |s: &TopStatement| {
                st.history
                    .as_ref()
                    .and_then(|h| h.get(&(s.dbid, s.queryid)))
                    .map(|e| e.seen_at)
            };
            chosen.sort_by_cached_key(|(s, running_s)| (running_s.is_none(), last(s)));
        }
        summary.candidates = chosen.len();
        summary.long_running = long_taken;
        let databases = oid_names(
            &conn,
            "SELECT oid, datname, true FROM pg_database WHERE oid = ANY($1)",
            chosen.iter().map(|(c, _)| c.dbid),
        )
        .await?;
        let roles = oid_names(
            &conn,
            "SELECT oid, rolname, pg_has_role(current_user, oid, 'MEMBER') FROM pg_roles WHERE oid = ANY($1)",
            chosen.iter().map(|(c, _)| c.userid),
        )
        .await?;
        drop(conn);

        let mut by_db: Vec<(u32, Vec<Candidate>)> = Vec::new();
        for (s, running_s) in &chosen {
            let key = (s.dbid, s.queryid);
            if let Some(why) = self.st.borrow().unplannable.get(&key) {
                *summary.refused.entry(why).or_default() += 1;
                continue;
            }
            if let Some(&(_, next)) = self.st.borrow().failing.get(&key) {
                if cycle < next {
                    summary.backing_off += 1;
                    continue;
                }
            }
            let text = match texts.get(&s.queryid) {
                Some(Ok(text)) => text,
                Some(Err(why)) => {
                    *summary.refused.entry(why).or_default() += 1;
                    continue;
                }
                None => {
                    *summary.refused.entry(NO_TEXT).or_default() += 1;
                    continue;
                }
            };
            let plan = match plannable::plannable(text) {
                Ok(p) => p,
                Err(why) => {
                    *summary.refused.entry(why).or_default() += 1;
                    continue;
                }
            };
            let c = Candidate {
                s: *s,
                running_s: *running_s,
                top_at: top_at.get(&(s.dbid, s.queryid, s.userid)).copied(),
                text,
                plan,
                user: roles.get(&s.userid),
            };
            match by_db.iter_mut().find(|(d, _)| *d == s.dbid) {
                Some((_, v)) => v.push(c),
                None => by_db.push((s.dbid, vec![c])),
            }
        }

        let mut events = Vec::new();
        let mut spent = Duration::ZERO;
        for (dbid, todo) in by_db {
            let Some((datname, _)) = databases.get(&dbid) else {
                summary.failed += todo.len();
                summary.last_error = Some(format!("database oid {dbid} no longer exists"));
                continue;
            };
            if spent >= self.budget {
                summary.deferred += todo.len();
                continue;
            }
            let started = Instant::now();
            let conn = db.connect_to(Some(datname)).await;
            spent += started.elapsed();
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    for c in &todo {
                        self.failed(&mut summary, cycle, c, &e);
                    }
                    continue;
                }
            };
            for (n, c) in todo.iter().enumerate() {
                if spent >= self.budget {
                    summary.deferred += 1;
                    continue;
                }
                let role = c
                    .user
                    .filter(|(_, may)| *may)
                    .map(|(name, _)| name.as_str());
                let started = Instant::now();
                let res = explain(&conn, version, &c.plan.text, role, self.lock_timeout, n).await;
                spent += started.elapsed();
                match res {
                    Ok(json) => {
                        self.st
                            .borrow_mut()
                            .failing
                            .remove(&(c.s.dbid, c.s.queryid));
                        summary.planned += 1;
                        self.planned(
                            &conn,
                            &mut summary,
                            &mut events,
                            now,
                            datname,
                            c,
                            role.is_some(),
                            &json,
                        )
                        .await?;
                    }
                    Err(e) => self.failed(&mut summary, cycle, c, &e),
                }
            }
        }
        summary.spent_ms = spent.as_secs_f64() * 1000.0;
        let history = self.st.borrow().history.as_ref().map_or(0, History::len);
        self.st.borrow_mut().state = Some(match &summary.last_error {
            Some(e) if summary.planned == 0 && summary.failed > 0 => {
                SourceState::Degraded(Problem::new(
                    format!("no statement could be planned ({e})"),
                    "grant the agent's role read access to the tables (pg_read_all_data on 14+) or membership in the roles that run the statements",
                ))
            }
            _ => SourceState::Working(format!(
                "{} of {} statements planned, {history} plans known",
                summary.planned, summary.candidates
            )),
        });
        events.push(self.event(now, "summary", &summary)?);
        Ok(events)
    }

    /// Texts of the candidates not seen before, as pg_stat_statements has them (read
    /// as the statements source reads them: in a `SQL_ASCII` database when another's
    /// encoding cannot hold one of them).
    async fn read_texts(
        &self,
        db: &Db,
        conn: &Conn,
        queryids: impl Iterator<Item = i64>,
    ) -> Result<(), DbError> {
        let need: Vec<i64> = {
            let st = self.st.borrow();
            let mut v: Vec<i64> = queryids
                .filter(|q| !matches!(st.texts.get(q), Some(Ok(_) | Err(NOT_UTF8))))
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        if need.is_empty() {
            return Ok(());
        }
        let Some(schema) = crate::sources::statements::query::schema_here(conn).await? else {
            return Ok(());
        };
        // A few bytes over the longest text planned: a longer one is known as such even
        // when the cut falls inside a character.
        let max = (MAX_TEXT + 4) as u32;
        let texts = crate::sources::statements::texts(db, conn, &schema, &need, max).await?;
        let mut st = self.st.borrow_mut();
        if st.texts.len() > 10_000 {
            st.texts.clear();
        }
        for q in &need {
            st.texts.insert(*q, Err(NO_TEXT));
        }
        for t in texts {
            let text = if t.text.len() > MAX_TEXT {
                Err("a text over 64 kB")
            } else if t.not_utf8 {
                Err(NOT_UTF8)
            } else {
                Ok(t.text)
            };
            st.texts.insert(t.queryid, text);
        }
        Ok(())
    }

    /// Adds the auto_explain plans read since the last cycle to the history of their
    /// statements (by database name and query id), counting them.
    async fn note_logged(
        &self,
        conn: &Conn,
        logged: Vec<(crate::model::LoggedKey, crate::model::Logged)>,
        counts: &mut LogPlans,
    ) -> Result<(), DbError> {
        let mut names: Vec<&str> = logged.iter().map(|((d, _, _), _)| d.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let oids: HashMap<String, u32> = conn
            .query(
                "SELECT oid, datname::text FROM pg_database WHERE datname = ANY($1)",
                &[&names],
            )
            .await
            .map_err(DbError::query)?
            .iter()
            .filter_map(|r| Some((r.try_get(1).ok()?, r.try_get(0).ok()?)))
            .collect();
        let mut st = self.st.borrow_mut();
        let Some(history) = st.history.as_mut() else {
            return Ok(());
        };
        for ((datname, queryid, hash), l) in logged {
            counts.read += l.runs;
            let key = oids.get(&datname).map(|o| (*o, queryid));
            let generic = key
                .and_then(|k| history.get(&k))
                .map(|e| e.shape.hash == hash);
            match (key, generic) {
                (Some(k), Some(matches)) => {
                    history.logged(k, &hash, l);
                    if matches {
                        counts.matching_generic += l.runs;
                    } else {
                        counts.other_shape += l.runs;
                    }
                }
                _ => counts.not_planned += l.runs,
            }
        }
        Ok(())
    }

    /// A planning failure: counted, and the statement waits before its next try — or,
    /// when its text is the cause, is never tried again.
    fn failed(&self, summary: &mut Summary, cycle: u64, c: &Candidate, e: &DbError) {
        let code = match e {
            DbError::Query {
                sqlstate: Some(s), ..
            } => s.as_str(),
            _ => "",
        };
        if let Some(why) = permanent(code) {
            *summary.refused.entry(why).or_default() += 1;
            let mut st = self.st.borrow_mut();
            if st.unplannable.len() > 10_000 {
                st.unplannable.clear();
            }
            st.unplannable.insert((c.s.dbid, c.s.queryid), why);
            st.failing.remove(&(c.s.dbid, c.s.queryid));
            return;
        }
        let locked = code == "55P03";
        if locked {
            summary.locked += 1;
        } else {
            summary.failed += 1;
        }
        summary.last_error = Some(e.to_string());
        let mut st = self.st.borrow_mut();
        let f = st.failing.entry((c.s.dbid, c.s.queryid)).or_insert((0, 0));
        f.0 += 1;
        f.1 = cycle + backoff_cycles(f.0);
    }

    /// A plan the server gave: compared with the statement's last one.
    #[allow(clippy::too_many_arguments)]
    async fn planned(
        &self,
        conn: &Conn,
        summary: &mut Summary,
        events: &mut Vec<Event>,
        now: DateTime<Utc>,
        datname: &str,
        c: &Candidate<'_>,
        as_user: bool,
        json: &str,
    ) -> Result<(), CycleError> {
        let (mut plan, planning_ms) = read_plan(json);
        plan.redact(self.redact);
        let Some(root) = plan.root.as_ref() else {
            summary.failed += 1;
            summary.last_error = plan.problem.clone();
            return Ok(());
        };
        let shape = shape::shape(root);
        conn.server()
            .plan_shapes()
            .generic(datname, c.s.queryid, &shape.hash);
        let key = (c.s.dbid, c.s.queryid);
        let before = self
            .st
            .borrow()
            .history
            .as_ref()
            .and_then(|h| h.get(&key).cloned());
        let mean = c.s.mean_ms();
        let same = before.as_ref().is_some_and(|b| b.shape.hash == shape.hash);
        // What the planner chose from: read for a new shape (and once for a shape
        // remembered without it), kept with the shape.
        let context = match before.as_ref() {
            Some(b) if same && b.context.is_some() => b.context.clone(),
            _ => {
                let tables = tables_of(
                    before
                        .iter()
                        .flat_map(|b| &b.shape.nodes)
                        .chain(&shape.nodes),
                );
                let known = self.st.borrow().settings.get(&c.s.dbid).cloned();
                let context = context_of(conn, &tables, known).await.ok();
                if let Some(ctx) = &context {
                    self.st
                        .borrow_mut()
                        .settings
                        .insert(c.s.dbid, ctx.settings.clone());
                }
                context
            }
        };
        let user = c.user.map(|(n, _)| n.as_str());
        let fingerprint = crate::fingerprint::fingerprint(c.text);
        let id = |what: &str| format!("{}:{}:{what}:{}", c.s.dbid, c.s.queryid, shape.hash);
        if !same {
            summary.new += usize::from(before.is_none());
            events.push(self.event(
                now,
                &id("plan"),
                &PlanData {
                    record: "plan",
                    source: "agent",
                    generic: true,
                    query_id: c.s.queryid,
                    query_fingerprint: fingerprint.clone(),
                    database: datname,
                    user,
                    as_user,
                    planned_as: c.plan.planned_as_select.map(|_| "select"),
                    statement_kind: c.plan.planned_as_select,
                    shape_hash: &shape.hash,
                    shape: &shape.nodes,
                    planning_ms,
                    mean_ms: mean,
                    seen_running_s: c.running_s,
                    plan: &plan,
                },
            )?);
        }
        if let Some(old) = before.as_ref().filter(|_| !same) {
            summary.changed += 1;
            let (removed, added) = shape::differences(&old.shape.nodes, &shape.nodes);
            let analyzed = analyzed_since(conn, &old.shape.nodes, &shape.nodes, old.seen_at)
                .await
                .unwrap_or_default();
            events.push(
                self.event(
                    now,
                    &id("plan_changed"),
                    &ChangedData {
                        record: "plan_changed",
                        source: "agent",
                        query_id: c.s.queryid,
                        query_fingerprint: fingerprint.clone(),
                        database: datname,
                        user,
                        old_shape_hash: &old.shape.hash,
                        new_shape_hash: &shape.hash,
                        old_shape: &old.shape.nodes,
                        new_shape: &shape.nodes,
                        removed,
                        added,
                        old_since: old.since,
                        old_seen_at: old.seen_at,
                        mean_ms_before: old.mean_ms,
                        mean_ms_after: mean,
                        analyzed,
                        in_between: old
                            .context
                            .as_ref()
                            .zip(context.as_ref())
                            .map(|(o, n)| o.changes(n)),
                        logged: old
                            .logged
                            .iter()
                            .map(|(h, l)| LoggedShape {
                                shape_hash: h,
                                is: if *h == old.shape.hash {
                                    "old"
                                } else if *h == shape.hash {
                                    "new"
                                } else {
                                    "other"
                                },
                                runs: l.runs,
                                last_at: l.last_at,
                            })
                            .collect(),
                    },
                )?,
            );
        }
        // A statement planned because it was seen running has no time of its own in
        // the cycle: the mean known with the same plan stands.
        let mean = mean.or_else(|| before.as_ref().filter(|_| same).and_then(|b| b.mean_ms));
        let mut change = match before.as_ref() {
            Some(b) if same => b.change.clone(),
            Some(b) => c.top_at.map(|at| history::Change {
                from_hash: b.shape.hash.clone(),
                mean_ms_before: b.mean_ms,
                seen_with: at,
                next: None,
            }),
            None => None,
        };
        if let (Some(ch), Some(at), Some(after)) = (change.as_mut(), c.top_at, c.s.mean_ms()) {
            if ch.after(at) {
                events.push(self.event(
                    now,
                    &id("plan_change_effect"),
                    &EffectData {
                        record: "plan_change_effect",
                        source: "agent",
                        query_id: c.s.queryid,
                        query_fingerprint: fingerprint.clone(),
                        database: datname,
                        user,
                        old_shape_hash: &ch.from_hash,
                        new_shape_hash: &shape.hash,
                        mean_ms_before: ch.mean_ms_before,
                        mean_ms_after: after,
                        ratio: ch.mean_ms_before.filter(|b| *b > 0.0).map(|b| after / b),
                        calls: c.s.calls,
                        changed_at: before.as_ref().map_or(now, |b| b.since),
                    },
                )?);
                change = None;
            }
        }
        let since = before.as_ref().filter(|_| same).map_or(now, |b| b.since);
        let logged = before.map(|b| b.logged).unwrap_or_default();
        if let Some(h) = self.st.borrow_mut().history.as_mut() {
            h.put(
                key,
                Entry {
                    shape,
                    since,
                    seen_at: now,
                    mean_ms: mean,
                    logged,
                    context,
                    change,
                },
            );
        }
        Ok(())
    }

    fn event<T: Serialize>(
        &self,
        at: DateTime<Utc>,
        what: &str,
        data: &T,
    ) -> Result<Event, CycleError> {
        let id = format!("pg_plans:{}:{}:{what}", self.host, at.timestamp_micros());
        Event::new(id, EventKind::PgPlans, at, data).map_err(|e| CycleError::encode("plan", e))
    }
}

/// Why a statement can never be planned the way the agent asks, from the SQLSTATE its
/// planning failed with; `None` when it may pass another time (a lock, a privilege
/// granted, a table created).
fn permanent(sqlstate: &str) -> Option<&'static str> {
    match sqlstate {
        "42P18" => Some("the server cannot infer the types of its parameters"),
        "42601" => Some("its normalized text does not parse (a constant replaced by $n where the grammar wants a literal)"),
        "42P02" => Some("it refers to a parameter the normalized text does not have"),
        _ => None,
    }
}

/// The statements seen running long as top statements of their database and role
/// (their time unknown), with how long they had been running; those of a database or
/// role gone are left out.
async fn long_running(
    conn: &Conn,
    long: Vec<crate::model::LongRunning>,
) -> Result<Vec<(TopStatement, Option<f64>)>, DbError> {
    if long.is_empty() {
        return Ok(Vec::new());
    }
    let names = |f: fn(&crate::model::LongRunning) -> Option<&String>| {
        let mut v: Vec<&str> = long
            .iter()
            .filter_map(|l| f(l).map(String::as_str))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let oids = |rows: Vec<tokio_postgres::Row>| -> HashMap<String, u32> {
        rows.iter()
            .filter_map(|r| Some((r.try_get(1).ok()?, r.try_get(0).ok()?)))
            .collect()
    };
    let dbs = oids(
        conn.query(
            "SELECT oid, datname::text FROM pg_database WHERE datname = ANY($1)",
            &[&names(|l| Some(&l.datname))],
        )
        .await
        .map_err(DbError::query)?,
    );
    let roles = oids(
        conn.query(
            "SELECT oid, rolname::text FROM pg_roles WHERE rolname = ANY($1)",
            &[&names(|l| l.usename.as_ref())],
        )
        .await
        .map_err(DbError::query)?,
    );
    Ok(long
        .iter()
        .filter_map(|l| {
            let s = TopStatement {
                userid: *roles.get(l.usename.as_ref()?)?,
                dbid: *dbs.get(&l.datname)?,
                queryid: l.queryid,
                total_ms: 0.0,
                calls: 0.0,
            };
            Some((s, Some(l.running_s)))
        })
        .collect())
}

/// `oid → (name, flag)` of the distinct `oids` (the query returns oid, name, flag).
async fn oid_names(
    conn: &Conn,
    sql: &str,
    oids: impl Iterator<Item = u32>,
) -> Result<HashMap<u32, (String, bool)>, DbError> {
    let mut oids: Vec<u32> = oids.collect();
    oids.sort_unstable();
    oids.dedup();
    let rows = conn.query(sql, &[&oids]).await.map_err(DbError::query)?;
    // A name that is not UTF-8 cannot be used to connect or SET ROLE: left out (its
    // statements fail as in a database that is gone, or are planned as the agent).
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some((
                r.try_get::<_, u32>(0).ok()?,
                (
                    r.try_get::<_, String>(1).ok()?,
                    r.try_get::<_, bool>(2).ok()?,
                ),
            ))
        })
        .collect())
}

/// The server's JSON plan of `text` (see the module's documentation for how).
async fn explain(
    conn: &Conn,
    version: i32,
    text: &str,
    role: Option<&str>,
    lock_timeout: Duration,
    n: usize,
) -> Result<String, DbError> {
    let mut setup = format!(
        "BEGIN READ ONLY; SET LOCAL lock_timeout = {}; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL standard_conforming_strings = on;",
        lock_timeout.as_millis().max(1)
    );
    if let Some(r) = role {
        setup.push_str(&format!(" SET LOCAL ROLE {};", crate::db::text::quoted(r)));
    }
    conn.batch_execute(&setup).await.map_err(DbError::query)?;
    let name = format!("postgres_agent_plan_{n}");
    let mut prepared = false;
    let res = async {
        if version >= 160_000 {
            return one_value(conn, &format!("EXPLAIN (GENERIC_PLAN, FORMAT JSON, SUMMARY) {text}")).await;
        }
        conn.batch_execute(&format!("PREPARE {name} AS {text}"))
            .await
            .map_err(DbError::query)?;
        prepared = true;
        let params: i32 = conn
            .query_one(
                "SELECT coalesce(cardinality(parameter_types), 0) FROM pg_prepared_statements WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(DbError::query)?
            .get(0);
        let exec = if params == 0 {
            name.clone()
        } else {
            format!("{name}({})", vec!["NULL"; params as usize].join(", "))
        };
        one_value(conn, &format!("EXPLAIN (FORMAT JSON, SUMMARY) EXECUTE {exec}")).await
    }
    .await;
    let end = conn.batch_execute("ROLLBACK").await;
    if prepared {
        // Prepared statements outlive the transaction.
        let _ = conn.batch_execute(&format!("DEALLOCATE {name}")).await;
    }
    let json = res?;
    end.map_err(DbError::query)?;
    Ok(json)
}

/// The one value a statement returns (EXPLAIN's JSON).
async fn one_value(conn: &Conn, sql: &str) -> Result<String, DbError> {
    let msgs = conn.simple_query(sql).await.map_err(DbError::query)?;
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .ok_or_else(|| DbError::Query {
            message: "EXPLAIN returned no row".into(),
            sqlstate: None,
        })
}

/// The plan of EXPLAIN's JSON (`[{"Plan": …, "Planning Time": …}]`) and its planning
/// time.
fn read_plan(json: &str) -> (Plan, Option<f64>) {
    let top = match serde_json::from_str::<Value>(json) {
        Ok(Value::Array(mut v)) if !v.is_empty() => v.swap_remove(0),
        Ok(other) => other,
        Err(_) => Value::Null,
    };
    let Value::Object(mut top) = top else {
        return (crate::logs::explain::explain(json, false).plan, None);
    };
    let planning = top.remove("Planning Time").and_then(|v| v.as_f64());
    let body = Value::Object(top).to_string();
    (crate::logs::explain::explain(&body, false).plan, planning)
}

/// The tables of shape lines (`… on <table>` and `… on <table> using <index>`).
fn tables_of<'a>(lines: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut tables: Vec<String> = lines
        .filter_map(|l| {
            let (_, rest) = l.split_once(" on ")?;
            Some(rest.split(" using ").next().unwrap_or(rest).to_string())
        })
        .collect();
    tables.sort();
    tables.dedup();
    tables
}

/// Settings that change plans but are not under "Query Tuning" in `pg_settings`.
const PLANNER_SETTINGS: &str = "'work_mem', 'hash_mem_multiplier', 'max_parallel_workers_per_gather', 'effective_io_concurrency'";

/// The indexes and extended statistics on `tables` and the planner settings not at
/// their default (unless already `known` this cycle), in the connection's database.
async fn context_of(
    conn: &Conn,
    tables: &[String],
    known: Option<BTreeMap<String, String>>,
) -> Result<history::Context, DbError> {
    let names = |sql: &'static str| async move {
        conn.query(sql, &[&tables])
            .await
            .map_err(DbError::query)
            .map(|rows| {
                rows.iter()
                    .filter_map(|r| r.try_get::<_, String>(0).ok())
                    .collect::<Vec<String>>()
            })
    };
    let indexes = names(
        "SELECT c.relname::text || '.' || i.relname::text FROM pg_index x \
         JOIN pg_class c ON c.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid \
         WHERE c.relname = ANY($1) AND x.indisvalid ORDER BY 1",
    )
    .await?;
    let statistics = names(
        "SELECT c.relname::text || '.' || s.stxname::text FROM pg_statistic_ext s \
         JOIN pg_class c ON c.oid = s.stxrelid WHERE c.relname = ANY($1) ORDER BY 1",
    )
    .await?;
    if let Some(settings) = known {
        return Ok(history::Context {
            indexes,
            statistics,
            settings,
        });
    }
    let settings = conn
        .query(
            &format!(
                "SELECT name, setting FROM pg_settings WHERE source NOT IN ('default', 'override') \
                 AND (category LIKE 'Query Tuning%' OR name IN ({PLANNER_SETTINGS})) ORDER BY 1"
            ),
            &[],
        )
        .await
        .map_err(DbError::query)?
        .iter()
        .filter_map(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?)))
        .collect();
    Ok(history::Context {
        indexes,
        statistics,
        settings,
    })
}

/// Tables of the shapes (`… on <table>`) analyzed since `since`, with when.
async fn analyzed_since(
    conn: &Conn,
    old: &[String],
    new: &[String],
    since: DateTime<Utc>,
) -> Result<Vec<(String, DateTime<Utc>)>, DbError> {
    let tables = tables_of(old.iter().chain(new));
    let rows = conn
        .query(
            "SELECT relname::text, greatest(last_analyze, last_autoanalyze) FROM pg_stat_user_tables WHERE relname = ANY($1) AND greatest(last_analyze, last_autoanalyze) > $2 ORDER BY 1",
            &[&tables, &since],
        )
        .await
        .map_err(DbError::query)?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_the_server_can_never_plan_is_refused_not_retried() {
        assert!(permanent("42P18").is_some());
        assert!(permanent("42601").is_some());
        for passing in ["55P03", "42501", "42P01", "57014", ""] {
            assert_eq!(permanent(passing), None, "{passing}");
        }
    }

    #[test]
    fn a_failing_statement_waits_longer_each_time_up_to_64_cycles() {
        let waits: Vec<u64> = (1..=9).map(backoff_cycles).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 64, 64, 64]);
    }

    #[test]
    fn the_server_json_plan_is_read_with_its_planning_time() {
        let json = r#"[{"Plan": {"Node Type": "Index Scan", "Relation Name": "t", "Index Name": "t_v", "Alias": "t", "Startup Cost": 0.29, "Total Cost": 8.3, "Plan Rows": 1, "Plan Width": 8}, "Planning Time": 0.123}]"#;
        let (plan, planning) = read_plan(json);
        assert_eq!(planning, Some(0.123));
        let shape = shape::shape(plan.root.as_ref().expect("root"));
        assert_eq!(shape.nodes, vec!["Index Scan on t using t_v"]);
        let (bad, none) = read_plan("not json");
        assert!(bad.root.is_none());
        assert_eq!(none, None);
    }
}
