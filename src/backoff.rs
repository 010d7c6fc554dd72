//! Waiting longer after each failure: the doubling every retry in the agent uses (the
//! supervisor's restarts, the shipper's requests, the spool's retries), and the
//! full-jitter [`Backoff`] built on it.

use std::time::Duration;

/// `base · 2^attempt`, never above `cap` (and never overflowing however many attempts).
pub fn doubling(base: Duration, attempt: u32, cap: Duration) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(cap)
}

/// Cycles a source's item (a statement to plan, a database to query) waits after
/// `failures` failures in a row: 1, 2, 4, … up to 64.
pub fn cycles(failures: u32) -> u64 {
    1 << failures.saturating_sub(1).min(6)
}

/// Exponential backoff with full jitter: the n-th consecutive failure waits a uniformly
/// random time in `[0, min(cap, base·2^n)]`, so that many agents coming back from the
/// same outage do not retry in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starting at `base`, never above `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The ceiling of the next delay.
    pub fn ceiling(&self) -> Duration {
        doubling(self.base, self.attempt, self.cap)
    }

    /// The delay after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_nanos(fastrand::u64(0..=ceiling.as_nanos() as u64))
    }

    /// Back to `base` after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubling_stops_at_the_cap_and_never_overflows() {
        let s = Duration::from_secs;
        let d: Vec<u64> = (0..8).map(|a| doubling(s(1), a, s(60)).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(doubling(s(1), u32::MAX, s(3600)), s(3600));
        assert_eq!(doubling(Duration::MAX, 3, Duration::MAX), Duration::MAX);
    }
}
