//! The supervisor: starts every child on its own arbiter (thread), watches them, and
//! restarts the ones that panicked, stopped or hung.
//!
//! actix's own `Supervisor` only restarts actors that stop themselves; an actor whose
//! handler panicked is simply gone. So each child holds an
//! [`ExitGuard`](crate::model::ExitGuard) whose `Drop` reports to us, and we ping every
//! child each second: no answer within [`PING_TIMEOUT`] (its thread is blocked) or no
//! progress past its own deadline (its future is stuck) means hung. A dead or hung child
//! is recreated from the current config after a delay chosen by [`RestartTracker`].
//! The restart policy below is plain code with unit tests.

mod actor;
mod child;
pub mod slots;

pub use actor::{CutShort, DumpStatus, Reload, Shutdown, Supervisor};

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How often children are pinged.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// A child that does not answer a ping within this time is hung.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Backoff and intensity limit of restarts (OTP style: more than `intensity` restarts
/// within `period` marks the child failed; it is then retried at the slow rate).
#[derive(Debug, Clone, PartialEq)]
pub struct RestartPolicy {
    /// Delay before the first restart.
    pub initial: Duration,
    /// Ceiling of the doubling delay.
    pub max: Duration,
    /// Restarts allowed within `period` before the child counts as failed.
    pub intensity: usize,
    /// The window of the intensity limit.
    pub period: Duration,
    /// Delay between retries of a failed child.
    pub failed_retry: Duration,
    /// A child that ran this long before going down starts over at `initial`.
    pub healthy_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            intensity: 5,
            period: Duration::from_secs(60),
            failed_retry: Duration::from_secs(60),
            healthy_after: Duration::from_secs(60),
        }
    }
}

/// What to do about a child that went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Wait this long, then recreate it.
    pub delay: Duration,
    /// The intensity limit was exceeded: show the child as `failed`.
    pub failed: bool,
}

/// The restart history of one child.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
    attempt: u32,
}

impl RestartTracker {
    /// A tracker with no history.
    pub fn new(policy: RestartPolicy) -> RestartTracker {
        RestartTracker {
            policy,
            recent: VecDeque::new(),
            attempt: 0,
        }
    }

    /// The child went down at `now` after running for `ran_for`.
    pub fn on_exit(&mut self, now: Instant, ran_for: Duration) -> Decision {
        if ran_for >= self.policy.healthy_after {
            self.attempt = 0;
        }
        self.recent.push_back(now);
        while let Some(&t) = self.recent.front() {
            if now.duration_since(t) > self.policy.period {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() > self.policy.intensity {
            return Decision {
                delay: self.policy.failed_retry,
                failed: true,
            };
        }
        let delay = crate::backoff::doubling(self.policy.initial, self.attempt, self.policy.max);
        self.attempt = self.attempt.saturating_add(1);
        Decision {
            delay,
            failed: false,
        }
    }

    /// Forgets the history (a reload recreated the child on purpose).
    pub fn reset(&mut self) {
        self.recent.clear();
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_takes_the_name_it_is_given_cut_to_fifteen_bytes() {
        let named = |name: &'static str| {
            std::thread::spawn(move || {
                crate::thread::name_thread(name);
                std::fs::read_to_string("/proc/thread-self/comm").unwrap()
            })
            .join()
            .unwrap()
        };
        assert_eq!(named("pg_activity_summary"), "pg_activity_sum\n");
        assert_eq!(named("buffer"), "buffer\n");
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delay_doubles_to_the_ceiling() {
        let mut t = RestartTracker::new(RestartPolicy {
            intensity: 100,
            ..Default::default()
        });
        let start = Instant::now();
        let delays: Vec<u64> = (0..12)
            .map(|i| t.on_exit(start + ms(i), ms(1)).delay.as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            vec![100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]
        );
    }

    #[test]
    fn intensity_limit_marks_failed_and_slows_down() {
        let mut t = RestartTracker::new(RestartPolicy::default());
        let start = Instant::now();
        for i in 0..5 {
            assert!(!t.on_exit(start + Duration::from_secs(i), ms(10)).failed);
        }
        let d = t.on_exit(start + Duration::from_secs(5), ms(10));
        assert_eq!(
            d,
            Decision {
                delay: Duration::from_secs(60),
                failed: true
            }
        );
    }

    #[test]
    fn old_restarts_leave_the_window() {
        let mut t = RestartTracker::new(RestartPolicy::default());
        let start = Instant::now();
        for i in 0..5 {
            t.on_exit(start + Duration::from_secs(i), ms(10));
        }
        // 61 s after the first restart only four remain inside the 60 s window.
        let d = t.on_exit(start + Duration::from_secs(61), ms(10));
        assert!(!d.failed);
    }

    #[test]
    fn a_healthy_run_resets_the_backoff() {
        let mut t = RestartTracker::new(RestartPolicy::default());
        let start = Instant::now();
        t.on_exit(start, ms(1));
        t.on_exit(start + ms(1), ms(1));
        assert_eq!(t.on_exit(start + ms(2), ms(1)).delay, ms(400));
        assert_eq!(
            t.on_exit(start + ms(3), Duration::from_secs(60)).delay,
            ms(100)
        );
        t.reset();
        assert_eq!(t.on_exit(start + ms(4), ms(1)).delay, ms(100));
    }
}
