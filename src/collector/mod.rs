//! Runs one [`Source`](crate::sources::Source) on a schedule as an actor: a tick per
//! interval, never two cycles at once (a slow database costs a skipped tick, not a pile
//! of queries), every cycle bounded by a deadline, and events handed to the spool through
//! a [`Route`](crate::model::Route) with an in-memory backlog while the spool is
//! restarting.

mod actor;

pub use actor::CollectorActor;

use std::time::Duration;

use crate::config::DatabaseConfig;

/// Events kept in memory while the spool does not take them; beyond this the oldest are
/// dropped and counted (the spool is down for long, which status reports loudly).
pub const MAX_PENDING_EVENTS: usize = 50_000;

/// The longest one cycle may take: getting a connection, plus two statements (the
/// version check and the query), plus a second of slack. The server enforces
/// `statement_timeout` too; this limit also covers a network that swallows packets.
pub fn cycle_limit(db: &DatabaseConfig) -> Duration {
    db.connect_timeout + db.statement_timeout * 2 + Duration::from_secs(1)
}

/// How long a collector may go without finishing a cycle before the supervisor treats it
/// as hung: two intervals plus one cycle limit.
pub fn progress_deadline(interval: Duration, db: &DatabaseConfig) -> Duration {
    interval * 2 + cycle_limit(db)
}

/// Events dropped from a backlog and not yet reported: the report travels with the next
/// hand-over to the spool, so the loss is shipped, not just logged.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DropReport {
    /// Events dropped since the last report that reached the spool.
    pub dropped: u64,
    /// Oldest and newest collection time among them.
    pub oldest: Option<chrono::DateTime<chrono::Utc>>,
    /// Newest collection time among them.
    pub newest: Option<chrono::DateTime<chrono::Utc>>,
}

impl DropReport {
    /// Counts events about to be dropped.
    pub fn add(&mut self, dropped: &[crate::model::Event]) {
        for e in dropped {
            self.dropped += 1;
            self.oldest = Some(
                self.oldest
                    .map_or(e.collected_at, |o| o.min(e.collected_at)),
            );
            self.newest = Some(
                self.newest
                    .map_or(e.collected_at, |n| n.max(e.collected_at)),
            );
        }
    }

    /// The `agent` event reporting the loss of `source`'s events, if any were dropped.
    pub fn event(&self, source: &str, host: &str) -> Option<crate::model::Event> {
        if self.dropped == 0 {
            return None;
        }
        crate::catalogue::AgentEvent::EventsDropped {
            source: source.to_string(),
            dropped: self.dropped,
            oldest_collected_at: self.oldest,
            newest_collected_at: self.newest,
            reason: "the spool did not take events for long and the in-memory backlog was full"
                .to_string(),
        }
        .event(host, chrono::Utc::now())
        .ok()
    }
}

/// Appends `new` to `pending`, dropping (and counting in `report`) the oldest beyond
/// `cap`; returns how many were dropped.
pub fn push_capped_reported(
    pending: &mut Vec<crate::model::Event>,
    new: Vec<crate::model::Event>,
    cap: usize,
    report: &mut DropReport,
) -> usize {
    pending.extend(new);
    let over = pending.len().saturating_sub(cap);
    if over > 0 {
        report.add(&pending[..over]);
        pending.drain(..over);
    }
    over
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_events_are_reported_with_their_time_range() {
        use crate::model::{Event, EventKind};
        let at = |s: i64| chrono::DateTime::from_timestamp(1_700_000_000 + s, 0).expect("t");
        let ev = |i: i64| Event::new(format!("e{i}"), EventKind::PgActivity, at(i), &i).expect("e");
        let mut pending = vec![ev(0), ev(1)];
        let mut report = DropReport::default();
        assert!(report.event("pg_activity", "h").is_none());
        let n = push_capped_reported(&mut pending, vec![ev(2), ev(3), ev(4)], 3, &mut report);
        assert_eq!(n, 2);
        assert_eq!(
            pending.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["e2", "e3", "e4"]
        );
        assert_eq!(report.dropped, 2);
        assert_eq!((report.oldest, report.newest), (Some(at(0)), Some(at(1))));
        let e = report.event("pg_activity", "h").expect("a report");
        assert_eq!(e.kind, EventKind::Agent);
        let v: serde_json::Value = serde_json::from_str(e.data.get()).expect("json");
        assert_eq!(v["event"], "events_dropped");
        assert_eq!(v["dropped"], 2);
        assert_eq!(v["source"], "pg_activity");
    }

    #[test]
    fn deadlines_grow_with_timeouts() {
        let c = crate::config::parse_str("[agent]\nproject_id='p'\n").expect("valid");
        assert_eq!(cycle_limit(&c.database), Duration::from_secs(16));
        assert_eq!(
            progress_deadline(Duration::from_secs(60), &c.database),
            Duration::from_secs(136)
        );
    }
}
