//! What produced an event, and what the configuration says of each kind.

use serde::Serialize;

/// What produced an event; the `kind` field of the listener protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A `pg_stat_activity` row.
    PgActivity,
    /// A `pg_stat_statements` delta.
    PgStatements,
    /// A blocked/blocking session pair.
    PgLocks,
    /// A window of session samples, per request, statement and wait.
    PgActivitySummary,
    /// Host metrics.
    System,
    /// A database's statistics, size and freeze age.
    PgDatabases,
    /// A table's (or index's) statistics and size, or a pass's summary.
    PgTables,
    /// A vacuum, analyze, index build or cluster in progress.
    PgVacuumProgress,
    /// Who holds the xmin horizon back.
    PgXminHorizon,
    /// Standbys, slots, or this standby's receiver.
    PgReplication,
    /// bgwriter, checkpointer, WAL, I/O and archiver statistics.
    PgServerStats,
    /// The non-default settings and what changed.
    PgSettings,
    /// A statement's generic plan, a plan change, or a planning cycle's summary.
    PgPlans,
    /// A row or a run of a user's query (`[[custom]]`).
    PgCustom,
    /// A server log event.
    PgLog,
    /// The agent's own health (restarts, losses, parse errors).
    Agent,
}

/// One kind's row: its wire name and, for a health source, its keys in `[collection]`.
#[derive(Debug)]
pub struct KindInfo {
    /// The kind (the row's place in [`KINDS`] is the variant's).
    pub kind: EventKind,
    /// The name on the wire, in the spool, in status and in metrics labels.
    pub name: &'static str,
    /// A database health source: switched and timed by `[collection] <key>` and
    /// `<key>_interval_s`, which validation reads from this table.
    pub health: Option<HealthKeys>,
}

/// A health source's keys in `[collection]`.
#[derive(Debug)]
pub struct HealthKeys {
    /// `<key> = true|false` and `<key>_interval_s`.
    pub key: &'static str,
    /// The interval when `<key>_interval_s` is not given.
    pub default: Every,
}

/// A default interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Every {
    /// `[collection] interval_s`.
    Interval,
    /// `[collection] activity_interval_s`.
    ActivityInterval,
    /// This many seconds.
    Seconds(i64),
}

const fn kind(kind: EventKind, name: &'static str) -> KindInfo {
    KindInfo {
        kind,
        name,
        health: None,
    }
}

const fn health(
    kind: EventKind,
    name: &'static str,
    key: &'static str,
    default: Every,
) -> KindInfo {
    KindInfo {
        kind,
        name,
        health: Some(HealthKeys { key, default }),
    }
}

/// Every kind, in the order of the variants (sources start and are listed in it).
pub const KINDS: [KindInfo; 16] = [
    kind(EventKind::PgActivity, "pg_activity"),
    kind(EventKind::PgStatements, "pg_statements"),
    kind(EventKind::PgLocks, "pg_locks"),
    kind(EventKind::PgActivitySummary, "pg_activity_summary"),
    kind(EventKind::System, "system"),
    health(
        EventKind::PgDatabases,
        "pg_databases",
        "databases",
        Every::Interval,
    ),
    health(
        EventKind::PgTables,
        "pg_tables",
        "tables",
        Every::Seconds(600),
    ),
    health(
        EventKind::PgVacuumProgress,
        "pg_vacuum_progress",
        "vacuum_progress",
        Every::ActivityInterval,
    ),
    health(
        EventKind::PgXminHorizon,
        "pg_xmin_horizon",
        "horizon",
        Every::Interval,
    ),
    health(
        EventKind::PgReplication,
        "pg_replication",
        "replication",
        Every::Interval,
    ),
    health(
        EventKind::PgServerStats,
        "pg_server_stats",
        "server_stats",
        Every::Interval,
    ),
    health(
        EventKind::PgSettings,
        "pg_settings",
        "settings",
        Every::Seconds(600),
    ),
    health(EventKind::PgPlans, "pg_plans", "plans", Every::Interval),
    kind(EventKind::PgCustom, "pg_custom"),
    kind(EventKind::PgLog, "pg_log"),
    kind(EventKind::Agent, "agent"),
];

impl EventKind {
    /// Every kind, in the order of the variants.
    pub fn all() -> impl Iterator<Item = EventKind> {
        KINDS.iter().map(|k| k.kind)
    }

    /// Its row of [`KINDS`].
    pub fn info(self) -> &'static KindInfo {
        &KINDS[self as usize]
    }

    /// The name used on the wire, in the spool and in status.
    pub fn as_str(self) -> &'static str {
        self.info().name
    }

    /// Parses the wire name back (used when reading the spool).
    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::all().find(|k| k.as_str() == s)
    }

    /// The database health sources, with their keys.
    pub fn health() -> impl Iterator<Item = (EventKind, &'static HealthKeys)> {
        KINDS
            .iter()
            .filter_map(|k| k.health.as_ref().map(|h| (k.kind, h)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_in_its_variants_place_and_names_are_unique() {
        let mut names = std::collections::BTreeSet::new();
        let mut keys = std::collections::BTreeSet::new();
        for (i, row) in KINDS.iter().enumerate() {
            assert_eq!(row.kind as usize, i, "{row:?}");
            assert_eq!(row.kind.info().name, row.name);
            assert_eq!(EventKind::parse(row.name), Some(row.kind));
            // The serde name (the `kind` field written by `Event`'s payload users) and
            // the table's agree.
            assert_eq!(
                serde_json::to_value(row.kind).expect("json"),
                serde_json::Value::String(row.name.to_string())
            );
            assert!(names.insert(row.name), "{} twice", row.name);
            if let Some(h) = &row.health {
                assert!(keys.insert(h.key), "{} twice", h.key);
            }
        }
        assert_eq!(EventKind::health().count(), 8);
    }
}
