//! What the supervisor knows about its children, as plain code: each child's state
//! (starting, running, restarting, failed, stopped), its incarnation, restarts and last
//! health report; what a health check's answer means; what a reload must restart; the
//! status rows. The actor holds the threads and timers and asks this what to do; the
//! clock is passed in, so every rule here is tested without waiting.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::child;
use super::{Decision, RestartPolicy, RestartTracker, PING_TIMEOUT};
use crate::config::Config;
use crate::model::{ChildId, ChildState, Health};
use crate::status::ChildStatus;

/// The incarnation of a child that runs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Incarnation {
    generation: u64,
    started: Instant,
    ping_pending: bool,
    /// A ping found its mailbox closed: its own exit report (which says whether it
    /// panicked) is on its way; a second closed mailbox takes it down without it.
    closed_seen: bool,
}

/// Everything known about one child.
#[derive(Debug)]
struct Slot {
    state: ChildState,
    running: Option<Incarnation>,
    next_generation: u64,
    tracker: RestartTracker,
    restarts: u64,
    up_since: Option<DateTime<Utc>>,
    health: Option<Health>,
    last_restart_reason: Option<String>,
}

/// A health check's answer, as far as the supervisor cares.
#[derive(Debug)]
pub enum Pong {
    /// The child answered.
    Answer(Box<Health>),
    /// Its mailbox is closed: the actor is gone.
    Closed,
    /// No answer within [`PING_TIMEOUT`]: its thread is blocked.
    Timeout,
}

/// A child that went down, and when it comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Down {
    /// Why.
    pub reason: String,
    /// Restarts so far (this one included).
    pub restarts: u64,
    /// Wait before the restart.
    pub delay: Duration,
    /// Went down too often: shown as failed, retried slowly.
    pub failed: bool,
}

/// What a reload changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Children to stop (all whose settings changed, and those no longer wanted).
    pub stop: Vec<ChildId>,
    /// Of those, the ones to start again with the new config (and new ones).
    pub start: Vec<ChildId>,
}

/// The children the new config wants that are new or whose settings changed.
pub fn plan_reload(old: &Config, new: &Config) -> ReloadPlan {
    let (was, now) = (child::desired(old), child::desired(new));
    let mut plan = ReloadPlan::default();
    for &id in was.iter().chain(now.iter().filter(|id| !was.contains(id))) {
        let keep = now.contains(&id);
        if keep && was.contains(&id) && !child::settings_changed(id, old, new) {
            continue;
        }
        plan.stop.push(id);
        if keep {
            plan.start.push(id);
        }
    }
    plan
}

/// Every child the supervisor has known.
#[derive(Debug)]
pub struct Slots {
    policy: RestartPolicy,
    slots: BTreeMap<ChildId, Slot>,
}

impl Slots {
    /// No children yet.
    pub fn new(policy: RestartPolicy) -> Slots {
        Slots {
            policy,
            slots: BTreeMap::new(),
        }
    }

    fn slot(&mut self, id: ChildId) -> &mut Slot {
        let policy = self.policy.clone();
        self.slots.entry(id).or_insert_with(|| Slot {
            state: ChildState::Stopped,
            running: None,
            next_generation: 1,
            tracker: RestartTracker::new(policy),
            restarts: 0,
            up_since: None,
            health: None,
            last_restart_reason: None,
        })
    }

    /// True when an incarnation of `id` runs.
    pub fn is_running(&self, id: ChildId) -> bool {
        self.slots.get(&id).is_some_and(|s| s.running.is_some())
    }

    /// The state of `id`.
    pub fn state(&self, id: ChildId) -> Option<ChildState> {
        self.slots.get(&id).map(|s| s.state)
    }

    /// True when `generation` is the incarnation of `id` that runs now (a report of an
    /// older one, replaced or stopped on purpose, is ignored).
    pub fn is_current(&self, id: ChildId, generation: u64) -> bool {
        self.slots
            .get(&id)
            .and_then(|s| s.running)
            .is_some_and(|r| r.generation == generation)
    }

    /// A new incarnation of `id` starts now; returns its generation. A failed child
    /// stays shown as failed until it has run well for a while.
    pub fn started(&mut self, id: ChildId, now: Instant, wall: DateTime<Utc>) -> u64 {
        let s = self.slot(id);
        let generation = s.next_generation;
        s.next_generation += 1;
        s.running = Some(Incarnation {
            generation,
            started: now,
            ping_pending: false,
            closed_seen: false,
        });
        if s.state != ChildState::Failed {
            s.state = ChildState::Starting;
        }
        s.up_since = Some(wall);
        generation
    }

    /// `id` was taken out of service (by us or because it went down); true when it ran.
    pub fn stopped(&mut self, id: ChildId) -> bool {
        let Some(s) = self.slots.get_mut(&id) else {
            return false;
        };
        s.up_since = None;
        s.running.take().is_some()
    }

    /// `id` was stopped on purpose (shutdown, reload): shown stopped, restart history
    /// forgotten when `forget`.
    pub fn stopped_on_purpose(&mut self, id: ChildId, forget: bool) {
        self.stopped(id);
        let s = self.slot(id);
        s.state = ChildState::Stopped;
        if forget {
            s.tracker.reset();
        }
    }

    /// `id` is no child of the configuration any more (its server was removed): out of
    /// status, its history gone (a server added again under the name starts afresh).
    pub fn remove(&mut self, id: ChildId) {
        self.slots.remove(&id);
    }

    /// `id` went down at `now` for `reason`: how long until its restart. `None` when it
    /// was not running (already handled).
    pub fn went_down(&mut self, id: ChildId, reason: String, now: Instant) -> Option<Down> {
        let started = self.slots.get(&id)?.running?.started;
        self.stopped(id);
        let s = self.slot(id);
        let Decision { delay, failed } = s
            .tracker
            .on_exit(now, now.saturating_duration_since(started));
        s.restarts += 1;
        s.state = if failed {
            ChildState::Failed
        } else {
            ChildState::Restarting
        };
        s.last_restart_reason = Some(reason.clone());
        Some(Down {
            reason,
            restarts: s.restarts,
            delay,
            failed,
        })
    }

    /// The running children to ping now (each marked as pinged: never two pings at once
    /// for one child), with their generation.
    pub fn pings_due(&mut self) -> Vec<(ChildId, u64)> {
        let mut due = Vec::new();
        for (&id, s) in self.slots.iter_mut() {
            if let Some(r) = s.running.as_mut().filter(|r| !r.ping_pending) {
                r.ping_pending = true;
                due.push((id, r.generation));
            }
        }
        due
    }

    /// The answer to a ping of incarnation `generation`: `Some(reason)` when the child
    /// must be taken down (hung, gone); `None` when it is well or the answer is stale.
    pub fn on_pong(
        &mut self,
        id: ChildId,
        generation: u64,
        pong: Pong,
        now: Instant,
    ) -> Option<String> {
        let healthy_after = self.policy.healthy_after;
        let s = self.slots.get_mut(&id)?;
        let r = s.running.as_mut().filter(|r| r.generation == generation)?;
        r.ping_pending = false;
        let ran_for = now.saturating_duration_since(r.started);
        match pong {
            Pong::Answer(h) => {
                let idle = now.saturating_duration_since(h.progress);
                if let Some(d) = h.deadline.filter(|d| idle > *d) {
                    return Some(format!(
                        "hung: no progress for {}s (deadline {}s)",
                        idle.as_secs(),
                        d.as_secs()
                    ));
                }
                if matches!(s.state, ChildState::Starting | ChildState::Restarting)
                    || (s.state == ChildState::Failed && ran_for >= healthy_after)
                {
                    s.state = ChildState::Running;
                }
                s.health = Some(*h);
                None
            }
            // The actor is gone, and its exit guard's report (panicked or stopped) is
            // sent from its drop: that one names the cause. Only when it never comes
            // (the next ping finds the mailbox closed again) is the child down as
            // "stopped".
            Pong::Closed if !r.closed_seen => {
                r.closed_seen = true;
                None
            }
            Pong::Closed => Some("stopped: mailbox closed".to_string()),
            Pong::Timeout => Some(format!(
                "hung: no answer to a health check within {}s",
                PING_TIMEOUT.as_secs()
            )),
        }
    }

    /// The status rows, by child name.
    pub fn status(&self) -> BTreeMap<ChildId, ChildStatus> {
        self.slots
            .iter()
            .map(|(id, s)| {
                let h = s.health.as_ref();
                (
                    *id,
                    ChildStatus {
                        state: s.state,
                        restarts: s.restarts,
                        up_since: s.up_since,
                        last_success: h.and_then(|h| h.last_success),
                        last_error: h.and_then(|h| h.last_error.clone()),
                        last_restart_reason: s.last_restart_reason.clone(),
                        detail: h.map(|h| h.detail.clone()),
                    },
                )
            })
            .collect()
    }

    /// `running/total children running, N restarts`, for systemd's status line.
    pub fn summary(&self) -> String {
        let running = self
            .slots
            .values()
            .filter(|s| s.state == ChildState::Running)
            .count();
        let restarts: u64 = self.slots.values().map(|s| s.restarts).sum();
        format!(
            "{running}/{} children running, {restarts} restarts",
            self.slots.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ChildDetail, CollectorStats, EventKind, Output};

    const LOCKS: ChildId = ChildId::Collector(crate::model::ServerNo::ONLY, EventKind::PgLocks);

    fn health(progress: Instant, deadline: Option<Duration>) -> Health {
        Health {
            progress,
            deadline,
            last_success: None,
            last_error: None,
            detail: ChildDetail::Collector(CollectorStats::default()),
        }
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_child_runs_once_it_answers_and_goes_down_when_it_stalls() {
        let t0 = Instant::now();
        let mut slots = Slots::new(RestartPolicy::default());
        let g = slots.started(LOCKS, t0, Utc::now());
        assert_eq!(slots.state(LOCKS), Some(ChildState::Starting));
        assert_eq!(slots.pings_due(), [(LOCKS, g)]);
        assert!(slots.pings_due().is_empty(), "one ping at a time");
        let pong = Pong::Answer(Box::new(health(t0, Some(s(10)))));
        assert_eq!(slots.on_pong(LOCKS, g, pong, t0 + s(1)), None);
        assert_eq!(slots.state(LOCKS), Some(ChildState::Running));
        assert_eq!(slots.summary(), "1/1 children running, 0 restarts");
        // Answers, but its last progress is older than its deadline: hung.
        assert_eq!(slots.pings_due(), [(LOCKS, g)]);
        let pong = Pong::Answer(Box::new(health(t0, Some(s(10)))));
        assert_eq!(
            slots.on_pong(LOCKS, g, pong, t0 + s(12)).as_deref(),
            Some("hung: no progress for 12s (deadline 10s)")
        );
    }

    #[test]
    fn a_stale_answer_is_ignored_and_a_silent_child_is_hung() {
        let t0 = Instant::now();
        let mut slots = Slots::new(RestartPolicy::default());
        let old = slots.started(LOCKS, t0, Utc::now());
        slots.pings_due();
        let down = slots
            .went_down(LOCKS, "panicked".into(), t0 + s(1))
            .expect("down");
        assert_eq!(
            (down.restarts, down.failed, down.delay),
            (1, false, Duration::from_millis(100))
        );
        assert_eq!(slots.state(LOCKS), Some(ChildState::Restarting));
        assert!(
            slots.went_down(LOCKS, "again".into(), t0 + s(1)).is_none(),
            "handled once"
        );
        let new = slots.started(LOCKS, t0 + s(2), Utc::now());
        assert_ne!(old, new);
        assert!(!slots.is_current(LOCKS, old));
        assert_eq!(slots.on_pong(LOCKS, old, Pong::Closed, t0 + s(2)), None);
        // A closed mailbox waits one ping for the child's own exit report.
        slots.pings_due();
        assert_eq!(slots.on_pong(LOCKS, new, Pong::Closed, t0 + s(3)), None);
        slots.pings_due();
        assert_eq!(
            slots
                .on_pong(LOCKS, new, Pong::Closed, t0 + s(4))
                .as_deref(),
            Some("stopped: mailbox closed")
        );
        slots.pings_due();
        assert_eq!(
            slots
                .on_pong(LOCKS, new, Pong::Timeout, t0 + s(8))
                .as_deref(),
            Some("hung: no answer to a health check within 5s")
        );
        assert!(slots.went_down(LOCKS, "hung".into(), t0 + s(8)).is_some());
        assert_eq!(
            slots.on_pong(LOCKS, new, Pong::Closed, t0 + s(9)),
            None,
            "a late answer of a child already taken down"
        );
    }

    #[test]
    fn a_failed_child_shows_failed_until_it_has_run_well() {
        let t0 = Instant::now();
        let policy = RestartPolicy {
            intensity: 1,
            ..Default::default()
        };
        let healthy_after = policy.healthy_after;
        let mut slots = Slots::new(policy);
        for i in 0..2 {
            slots.started(LOCKS, t0 + s(i), Utc::now());
            slots.went_down(LOCKS, "stopped".into(), t0 + s(i));
        }
        assert_eq!(slots.state(LOCKS), Some(ChildState::Failed));
        let g = slots.started(LOCKS, t0 + s(70), Utc::now());
        assert_eq!(slots.state(LOCKS), Some(ChildState::Failed));
        slots.pings_due();
        let pong = Pong::Answer(Box::new(health(t0 + s(71), None)));
        assert_eq!(slots.on_pong(LOCKS, g, pong, t0 + s(71)), None);
        assert_eq!(slots.state(LOCKS), Some(ChildState::Failed));
        slots.pings_due();
        let later = t0 + s(70) + healthy_after;
        assert_eq!(
            slots.on_pong(LOCKS, g, Pong::Answer(Box::new(health(later, None))), later),
            None
        );
        assert_eq!(slots.state(LOCKS), Some(ChildState::Running));
        let rows = slots.status();
        assert_eq!(rows[&LOCKS].restarts, 2);
        assert_eq!(rows[&LOCKS].last_restart_reason.as_deref(), Some("stopped"));
    }

    #[test]
    fn a_reload_restarts_exactly_the_children_whose_settings_changed() {
        let base = "[agent]\nproject_id='p'\n";
        let old = crate::config::parse_str(base).expect("valid");
        let same = crate::config::parse_str(base).expect("valid");
        assert_eq!(plan_reload(&old, &same), ReloadPlan::default());

        let listener =
            crate::config::parse_str(&format!("{base}[listener]\nurl='http://127.0.0.1:9/x'\n"))
                .expect("valid");
        let p = plan_reload(&old, &listener);
        assert_eq!(p.stop, [ChildId::Shipper(Output::Listener)]);
        assert_eq!(p.start, [ChildId::Shipper(Output::Listener)]);

        let no_locks =
            crate::config::parse_str(&format!("{base}[collection]\nlocks=false\n")).expect("valid");
        let p = plan_reload(&old, &no_locks);
        // A switch concerns its own source alone.
        assert_eq!(
            (p.stop.as_slice(), p.start.as_slice()),
            ([LOCKS].as_slice(), [].as_slice())
        );

        // interval_s is the interval of statements, locks and system, and the default
        // of the others not set: those whose interval follows it restart; the sources
        // on their own interval (tables, settings, the sampler) and the log reader do not.
        use crate::model::EventKind as K;
        let pinned = "activity_interval_s=10\ndatabases_interval_s=60\nvacuum_progress_interval_s=10\n\
                      horizon_interval_s=60\nreplication_interval_s=60\nserver_stats_interval_s=60\n";
        let old =
            crate::config::parse_str(&format!("{base}[collection]\n{pinned}")).expect("valid");
        let interval =
            crate::config::parse_str(&format!("{base}[collection]\n{pinned}interval_s=7\n"))
                .expect("valid");
        let p = plan_reload(&old, &interval);
        let on_interval = [
            ChildId::Collector(crate::model::ServerNo::ONLY, K::PgStatements),
            LOCKS,
            ChildId::Collector(crate::model::ServerNo::ONLY, K::System),
            ChildId::Collector(crate::model::ServerNo::ONLY, K::PgPlans),
        ];
        assert_eq!(p.start, on_interval, "{p:?}");
        assert_eq!(p.stop, on_interval, "{p:?}");
        let old = crate::config::parse_str(base).expect("valid");
        let p = plan_reload(
            &old,
            &crate::config::parse_str(&format!("{base}[collection]\ninterval_s=7\n"))
                .expect("valid"),
        );
        for id in [K::PgTables, K::PgSettings, K::PgActivitySummary]
            .map(|k| ChildId::Collector(crate::model::ServerNo::ONLY, k))
            .into_iter()
            .chain([ChildId::LogReader(crate::model::ServerNo::ONLY)])
        {
            assert!(!p.stop.contains(&id), "{id:?} restarted: {p:?}");
        }
        assert!(
            p.start.contains(&ChildId::Collector(
                crate::model::ServerNo::ONLY,
                K::PgActivity
            )),
            "its default follows interval_s: {p:?}"
        );
        // One health interval: its source alone.
        let tables =
            crate::config::parse_str(&format!("{base}[collection]\ntables_interval_s=900\n"))
                .expect("valid");
        let p = plan_reload(&old, &tables);
        assert_eq!(
            p.start,
            [ChildId::Collector(
                crate::model::ServerNo::ONLY,
                crate::model::EventKind::PgTables
            )],
            "{p:?}"
        );
        // A limit every source reads restarts them all.
        let limit =
            crate::config::parse_str(&format!("{base}[collection]\nmax_query_length=100\n"))
                .expect("valid");
        let p = plan_reload(&old, &limit);
        assert!(p.start.len() >= 12, "{p:?}");
        assert!(
            !p.stop.contains(&ChildId::Spool)
                && !p.stop.contains(&ChildId::Shipper(Output::Listener))
        );
        let p = plan_reload(&no_locks, &old);
        assert!(p.start.contains(&LOCKS), "{p:?}");
    }
}
