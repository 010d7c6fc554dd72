//! The sources: what each one reads and how its rows become events. A source is plain
//! code (SQL, row mapping) with no actor in it; [`crate::collector`] runs it on a schedule
//! and `once` runs it a single time.

/// A health source's interval: on and timed by its keys in the table of kinds.
macro_rules! health_interval {
    ($kind:expr) => {
        |c: &$crate::config::CollectionConfig| c.health.get(&$kind).copied()
    };
}

pub mod activity;
pub mod counts;
pub mod custom;
pub mod health;
pub mod identity;
pub mod locks;
pub mod outbox;
pub mod plans;
pub mod sampler;
pub mod session;
pub mod statements;
pub mod system;

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use std::time::Duration;

use crate::config::{CollectionConfig, Config};
use crate::db::{Db, DbError};
use crate::model::{Event, EventKind, SourceState};

/// Why a collection failed.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    /// The database.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The host (/proc, statvfs).
    #[error("cannot read {what}: {error}")]
    Host {
        /// What could not be read.
        what: String,
        /// Why.
        error: String,
    },
    /// A row or sample could not be encoded as an event.
    #[error("cannot encode {what}: {error}")]
    Encode {
        /// What.
        what: &'static str,
        /// Why.
        error: String,
    },
    /// The whole cycle took longer than its deadline.
    #[error("cycle timed out after {0:?}")]
    Timeout(std::time::Duration),
}

impl CycleError {
    /// True when the next cycle may succeed without anyone changing anything.
    pub fn retriable(&self) -> bool {
        match self {
            CycleError::Db(e) => e.retriable(),
            CycleError::Host { .. } | CycleError::Timeout(_) => true,
            CycleError::Encode { .. } => false,
        }
    }

    /// An encoding error of `what`.
    pub fn encode(what: &'static str, e: impl std::fmt::Display) -> CycleError {
        CycleError::Encode {
            what,
            error: e.to_string(),
        }
    }
}

/// The future of one collection.
pub type CollectFuture = Pin<Box<dyn Future<Output = Result<Vec<Event>, CycleError>>>>;

/// One source of events.
pub trait Source {
    /// The kind of the events it makes (and the name of its child in status).
    fn kind(&self) -> EventKind;
    /// One collection through `db`.
    fn collect(&self, db: Rc<Db>) -> CollectFuture;
    /// The wait before the next collection; `base` is the configured interval. A source
    /// may sample faster while something is going on (locks while blocking is seen).
    fn interval(&self, base: std::time::Duration) -> std::time::Duration {
        base
    }
    /// The longest one collection may take; `base` is the agent's limit for one
    /// connection and two statements. A source visiting several databases asks for more.
    fn cycle_limit(&self, base: std::time::Duration) -> std::time::Duration {
        base
    }
    /// The source's own account of its state for status (e.g. unavailable: extension
    /// not installed, with the fix); the collector logs it when it changes.
    fn state(&self) -> Option<SourceState> {
        None
    }
    /// Rows skipped since start because they could not be read (counted in status).
    fn rows_skipped(&self) -> u64 {
        0
    }
    /// At shutdown: the events of work in progress that would otherwise be lost (the
    /// sampler's open window).
    fn finish(&self) -> Result<Vec<crate::model::Event>, CycleError> {
        Ok(Vec::new())
    }
    /// State to store together with the events of the last collection, in the same spool
    /// transaction (taken: the next call returns only what changed since).
    fn checkpoint(&self) -> Option<crate::model::Checkpoint> {
        None
    }
    /// What the source's look at the server's identity found to report (taken): a
    /// `role_changed` event, or none for the first identity ever seen, with the identity
    /// to store in the same spool transaction. Handed over before the cycle's events,
    /// whether the cycle went on to succeed or not.
    fn report(&self) -> Option<(Vec<Event>, crate::model::Checkpoint)> {
        None
    }
    /// Whether the source hands events over in the course of a cycle; it then gets its
    /// [`outbox::Outbox`] once, before the first cycle.
    fn wants_outbox(&self) -> bool {
        false
    }
    /// The way to hand events over before the cycle ends (when [`Source::wants_outbox`]).
    fn set_outbox(&self, _outbox: outbox::Outbox) {}
    /// Whether the source remembers what it shipped (so that it ships only what changed)
    /// and must be told of events that never reached the spool.
    fn tracks_shipped(&self) -> bool {
        false
    }
    /// Events of this source that were dropped before the spool had them (their ids):
    /// whatever the source marked as shipped with them is forgotten, so they ship again.
    fn lost(&self, _ids: &[String]) {}
}

/// `server_version_num`, asked once per connection life and cached in `cache`; column
/// lists differ between major versions. The server's facts learn it too.
pub async fn server_version(
    conn: &crate::db::Conn,
    cache: &std::cell::Cell<Option<i32>>,
) -> Result<i32, DbError> {
    if let Some(v) = cache.get() {
        return Ok(v);
    }
    let row = conn
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(DbError::query)?;
    let v: i32 = row.try_get(0).map_err(DbError::query)?;
    cache.set(Some(v));
    conn.server().facts().set_version(v);
    Ok(v)
}

/// A catalog column that exists from PostgreSQL `major` on, or its stand-in before
/// (`server_version` as `server_version_num`).
pub fn since(
    server_version: i32,
    major: i32,
    column: &'static str,
    before: &'static str,
) -> &'static str {
    if server_version >= major * 10_000 {
        column
    } else {
        before
    }
}

/// Runs the query `sql` writes for the server's version (asked once per connection
/// life, see [`server_version`]) with `params`. A failed statement may mean a different
/// server now (a failover, an upgrade): the version is asked again next time.
pub async fn versioned_query(
    conn: &crate::db::Conn,
    version: &std::cell::Cell<Option<i32>>,
    sql: fn(i32) -> String,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, DbError> {
    let v = server_version(conn, version).await?;
    conn.query(&sql(v), params).await.map_err(|e| {
        version.set(None);
        DbError::query(e)
    })
}

/// One sampled source, as the agent knows it: everything that must agree about it is in
/// its row of [`specs`] (its name and health keys are its kind's row of
/// [`crate::base::KINDS`]).
pub struct Spec {
    /// The kind of its events and the name of its child.
    pub kind: EventKind,
    /// Its interval when `[collection]` turns it on, `None` when off.
    pub interval: fn(&CollectionConfig) -> Option<Duration>,
    /// Builds it; called on the thread it runs on (sources hold `Rc`s).
    pub make: fn(&Config, Mode) -> Box<dyn Source>,
    /// `check` makes sure the server collects the statistics it reads (`track_counts`,
    /// CONNECT on every database).
    pub reads_statistics: bool,
}

/// The sources that are not health sources (those are [`health::SOURCES`]).
const CORE: &[Spec] = &[
    Spec {
        kind: EventKind::PgActivity,
        interval: |c| c.activity.then_some(c.activity_interval),
        make: |c, _| Box::new(activity::ActivitySource::new(c)),
        reads_statistics: false,
    },
    Spec {
        kind: EventKind::PgStatements,
        interval: |c| c.statements.then_some(c.interval),
        make: |c, mode| Box::new(statements::StatementsSource::new(c, mode == Mode::Daemon)),
        reads_statistics: false,
    },
    Spec {
        kind: EventKind::PgLocks,
        interval: |c| c.locks.then_some(c.interval),
        make: |c, _| Box::new(locks::LocksSource::new(c)),
        reads_statistics: false,
    },
    Spec {
        kind: EventKind::PgActivitySummary,
        interval: |c| c.sample_interval,
        make: |c, mode| Box::new(sampler::SamplerSource::new(c, mode == Mode::Once)),
        reads_statistics: false,
    },
    Spec {
        kind: EventKind::System,
        interval: |c| c.system.then_some(c.interval),
        make: |c, _| Box::new(system::SystemSource::new(c)),
        reads_statistics: false,
    },
];

/// Every sampled source, in start order: the core ones, then the health sources.
pub fn specs() -> impl Iterator<Item = &'static Spec> {
    CORE.iter().chain(health::SOURCES)
}

/// The row of `kind`, if it is a sampled source.
pub fn spec(kind: EventKind) -> Option<&'static Spec> {
    specs().find(|s| s.kind == kind)
}

/// The sources `[collection]` turns on, each with its interval, in start order.
pub fn enabled(config: &Config) -> Vec<(EventKind, Duration)> {
    specs()
        .filter_map(|s| (s.interval)(&config.collection).map(|every| (s.kind, every)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_enabled_sampling_source_is_built() {
        let c = crate::config::parse_str("[agent]\nproject_id='p'\n").expect("valid");
        let kinds: Vec<EventKind> = enabled(&c).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            kinds,
            vec![
                EventKind::PgActivity,
                EventKind::PgStatements,
                EventKind::PgLocks,
                EventKind::PgActivitySummary,
                EventKind::System,
                EventKind::PgDatabases,
                EventKind::PgTables,
                EventKind::PgVacuumProgress,
                EventKind::PgXminHorizon,
                EventKind::PgReplication,
                EventKind::PgServerStats,
                EventKind::PgSettings,
                EventKind::PgPlans,
            ]
        );
        for k in &kinds {
            assert!(make(*k, &c, Mode::Once).is_some(), "{k:?}");
        }
        // Every kind but the log's and the agent's own is a sampled source, once.
        let rows: Vec<EventKind> = specs().map(|s| s.kind).collect();
        let sampled: Vec<EventKind> = EventKind::all()
            .filter(|k| !matches!(k, EventKind::PgLog | EventKind::Agent | EventKind::PgCustom))
            .collect();
        assert_eq!(rows, sampled);
    }
}

/// Who runs a source: the daemon keeps state on disk (the statements baseline); `once`
/// may read it but never writes it, so running `once` beside the daemon changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The daemon's collectors.
    Daemon,
    /// A single collection (`once`).
    Once,
}

/// Makes the source of `kind` from the configuration (`None`: not a sampled source).
pub fn make(kind: EventKind, config: &Config, mode: Mode) -> Option<Box<dyn Source>> {
    spec(kind).map(|s| (s.make)(config, mode))
}
