//! Runs one [`Source`](crate::sources::Source) on a schedule as an actor: a tick per
//! interval, never two cycles at once (a slow database costs a skipped tick, not a pile
//! of queries), every cycle bounded by a deadline, and events handed to the spool through
//! a [`Handoff`](crate::spool::handoff::Handoff) with an in-memory backlog while the
//! spool is restarting.

mod actor;

pub use actor::CollectorActor;

use std::time::Duration;

/// How long a collector may go without finishing a cycle before the supervisor treats it
/// as hung: two intervals plus one cycle's `limit` (the source's own, see
/// [`Source::cycle_limit`](crate::sources::Source::cycle_limit)).
pub fn progress_deadline(interval: Duration, limit: Duration) -> Duration {
    interval * 2 + limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_grow_with_timeouts() {
        let c = crate::config::parse_str("[agent]\nproject_id='p'\n").expect("valid");
        assert_eq!(crate::db::cycle_limit(&c.database), Duration::from_secs(21));
        assert_eq!(
            progress_deadline(Duration::from_secs(60), crate::db::cycle_limit(&c.database)),
            Duration::from_secs(141)
        );
    }
}
