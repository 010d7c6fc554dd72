//! Delivery policy as plain types: what an answer means, how long to wait before the
//! next attempt, and the circuit breaker. No I/O; the actor asks and obeys.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// What to do with a batch after the listener answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: delete it from the spool.
    Ack,
    /// 408, 429, 5xx except 501, no answer: keep it, wait, send it again.
    Retry,
    /// 400, 413, 422: something in the batch is refused; split it to find what, ship the
    /// rest, quarantine what still fails.
    Split,
    /// 401, 403: the token is refused; keep everything, stop sending until the config is
    /// reloaded or a probe succeeds.
    Unauthorized,
    /// Anything else (404, 405, 501, 3xx…): the URL or the listener is wrong; keep
    /// everything and retry like a failure, saying so.
    Rejected,
}

/// Classifies an HTTP status.
pub fn status_verdict(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Ack,
        408 | 429 => Verdict::Retry,
        501 => Verdict::Rejected,
        500..=599 => Verdict::Retry,
        400 | 413 | 422 => Verdict::Split,
        401 | 403 => Verdict::Unauthorized,
        _ => Verdict::Rejected,
    }
}

/// `Retry-After`: delay-seconds or an HTTP-date; `None` when absent or unreadable.
pub fn retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(24 * 3600)));
    }
    let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    Some(
        (at - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(24 * 3600)),
    )
}

pub use crate::backoff::Backoff;

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow; consecutive failures are counted.
    Closed,
    /// No request until `probe_at`.
    Open {
        /// When it opened.
        since: Instant,
        /// When the one probe may go.
        probe_at: Instant,
    },
    /// One probe is on its way; its outcome closes or re-opens the breaker.
    HalfOpen {
        /// When it first opened.
        since: Instant,
    },
}

/// May a request go now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Yes.
    Go,
    /// Yes, as the one probe of a half-open breaker.
    Probe,
    /// No; ask again after this long.
    Wait(Duration),
}

/// A transition worth logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Closed → open.
    Opened,
    /// Half-open → open: the probe failed.
    Reopened,
    /// Half-open → closed.
    Closed,
}

/// Opens after `fail_max` consecutive failures; after `reset` lets exactly one probe
/// through; the probe's success closes it, its failure opens it again.
#[derive(Debug, Clone)]
pub struct Breaker {
    fail_max: u32,
    reset: Duration,
    failures: u32,
    state: BreakerState,
    opened_at_wall: Option<DateTime<Utc>>,
}

pub use crate::model::{BreakerPhase, BreakerStats};

impl Breaker {
    /// A closed breaker.
    pub fn new(fail_max: u32, reset: Duration) -> Breaker {
        Breaker {
            fail_max: fail_max.max(1),
            reset,
            failures: 0,
            state: BreakerState::Closed,
            opened_at_wall: None,
        }
    }

    /// The state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Asks to send a request at `now`.
    pub fn permit(&mut self, now: Instant) -> Permit {
        match self.state {
            BreakerState::Closed => Permit::Go,
            BreakerState::Open { probe_at, since } if now >= probe_at => {
                self.state = BreakerState::HalfOpen { since };
                Permit::Probe
            }
            BreakerState::Open { probe_at, .. } => Permit::Wait(probe_at - now),
            // The probe is out; nothing else goes until it is back.
            BreakerState::HalfOpen { .. } => Permit::Wait(self.reset),
        }
    }

    /// The probe could not be sent (nothing to send): the next request is the probe.
    pub fn cancel_probe(&mut self, now: Instant) {
        if let BreakerState::HalfOpen { since } = self.state {
            self.state = BreakerState::Open {
                since,
                probe_at: now,
            };
        }
    }

    /// Opens at once, whatever the count (the token was refused: no point in trying
    /// before a probe).
    pub fn trip(&mut self, now: Instant) {
        let since = match self.state {
            BreakerState::Open { since, .. } | BreakerState::HalfOpen { since } => since,
            BreakerState::Closed => now,
        };
        if self.opened_at_wall.is_none() {
            self.opened_at_wall = Some(Utc::now());
        }
        self.state = BreakerState::Open {
            since,
            probe_at: now + self.reset,
        };
    }

    /// The request succeeded.
    pub fn success(&mut self) -> Option<Transition> {
        self.failures = 0;
        let was = self.state;
        self.state = BreakerState::Closed;
        self.opened_at_wall = None;
        (was != BreakerState::Closed).then_some(Transition::Closed)
    }

    /// The request failed at `now`.
    pub fn failure(&mut self, now: Instant) -> Option<Transition> {
        self.failures = self.failures.saturating_add(1);
        let open = match self.state {
            BreakerState::Closed => self.failures >= self.fail_max,
            BreakerState::HalfOpen { .. } => true,
            BreakerState::Open { .. } => false,
        };
        if !open {
            return None;
        }
        let since = match self.state {
            BreakerState::Open { since, .. } | BreakerState::HalfOpen { since } => since,
            BreakerState::Closed => now,
        };
        let was_half_open = matches!(self.state, BreakerState::HalfOpen { .. });
        if self.opened_at_wall.is_none() {
            self.opened_at_wall = Some(Utc::now());
        }
        self.state = BreakerState::Open {
            since,
            probe_at: now + self.reset,
        };
        Some(if was_half_open {
            Transition::Reopened
        } else {
            Transition::Opened
        })
    }

    /// For status.
    pub fn stats(&self, now: Instant) -> BreakerStats {
        let (state, next) = match self.state {
            BreakerState::Closed => (BreakerPhase::Closed, None),
            BreakerState::Open { probe_at, .. } => (
                BreakerPhase::Open,
                Some(probe_at.saturating_duration_since(now).as_secs_f64()),
            ),
            BreakerState::HalfOpen { .. } => (BreakerPhase::HalfOpen, None),
        };
        BreakerStats {
            state,
            consecutive_failures: self.failures,
            open_since: self.opened_at_wall,
            next_probe_in_s: next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        for s in [200, 201, 204, 299] {
            assert_eq!(status_verdict(s), Verdict::Ack, "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(status_verdict(s), Verdict::Retry, "{s}");
        }
        for s in [400, 413, 422] {
            assert_eq!(status_verdict(s), Verdict::Split, "{s}");
        }
        for s in [401, 403] {
            assert_eq!(status_verdict(s), Verdict::Unauthorized, "{s}");
        }
        for s in [100, 301, 404, 405, 415, 501] {
            assert_eq!(status_verdict(s), Verdict::Rejected, "{s}");
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z")
            .expect("t")
            .with_timezone(&Utc);
        assert_eq!(retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            retry_after("Thu, 26 Nov 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after("Thu, 26 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn full_jitter_within_the_doubling_ceiling() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            let c = b.ceiling();
            let d = b.next_delay();
            assert!(d <= c, "{d:?} > {c:?}");
            ceilings.push(c.as_secs());
        }
        assert_eq!(ceilings, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        // Full jitter: over many draws some delays are near zero, some near the ceiling.
        let draws: Vec<Duration> = (0..200)
            .map(|_| {
                let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
                b.next_delay()
            })
            .collect();
        assert!(draws.iter().any(|d| *d < Duration::from_millis(200)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(800)));
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn breaker_opens_probes_once_and_closes_or_reopens() {
        let t0 = Instant::now();
        let reset = Duration::from_secs(60);
        let mut b = Breaker::new(5, reset);
        for i in 0..4 {
            assert_eq!(b.permit(t0), Permit::Go);
            assert_eq!(b.failure(t0), None, "failure {i}");
        }
        assert_eq!(b.failure(t0), Some(Transition::Opened));
        assert_eq!(b.stats(t0).state, BreakerPhase::Open);
        assert_eq!(
            b.permit(t0 + Duration::from_secs(59)),
            Permit::Wait(Duration::from_secs(1))
        );
        // Exactly one probe.
        assert_eq!(b.permit(t0 + reset), Permit::Probe);
        assert!(matches!(b.permit(t0 + reset), Permit::Wait(_)));
        // Its failure re-opens for another full period.
        let t1 = t0 + reset;
        assert_eq!(b.failure(t1), Some(Transition::Reopened));
        assert!(matches!(
            b.permit(t1 + Duration::from_secs(30)),
            Permit::Wait(_)
        ));
        assert_eq!(b.permit(t1 + reset), Permit::Probe);
        assert_eq!(b.success(), Some(Transition::Closed));
        assert_eq!(b.permit(t1 + reset), Permit::Go);
        assert_eq!(b.stats(t1).state, BreakerPhase::Closed);
        assert_eq!(b.stats(t1).consecutive_failures, 0);
        // A probe that could not go (nothing to send) is the next request.
        b.trip(t1);
        assert_eq!(b.permit(t1 + reset), Permit::Probe);
        b.cancel_probe(t1 + reset);
        assert_eq!(b.permit(t1 + reset), Permit::Probe);
        b.success();
        // A success in between resets the count.
        for _ in 0..4 {
            b.failure(t1);
        }
        b.success();
        assert_eq!(b.failure(t1), None);
    }
}
