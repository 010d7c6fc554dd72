//! What the outcome of each delivery attempt means, as plain code: the breaker (may a
//! request go, is this one a probe), the backoffs (the output's, the spool's), the
//! batch the output took whose deletion failed, the counters and errors status shows.
//! The clock is passed in; the shipper actor only schedules what this returns. One
//! `Delivery` per output.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use slog::{error, info, warn, Logger};

use super::attempt::Attempt;
use super::policy::{Backoff, Breaker, BreakerState, Permit, Transition};
use super::split::Stop;
use super::transport::SendError;
use crate::config::{BreakerConfig, ListenerConfig};
use crate::model::{Naming, Output, ShipperStats};

/// How often an idle shipper looks for new events in the spool. The spool wakes it as
/// soon as events arrive ([`crate::model::SpoolNews`]); this is the fallback when no
/// news comes (a restarted spool, rows added by a path that does not tell).
pub const IDLE_POLL: Duration = Duration::from_secs(2);
/// Waits after the spool failed to hand out or record a batch: from this, doubling
/// (with jitter) to [`SPOOL_RETRY_MAX`] while it keeps failing (a full disk is not
/// fixed in a second).
const SPOOL_RETRY_MIN: Duration = Duration::from_millis(500);
const SPOOL_RETRY_MAX: Duration = Duration::from_secs(30);

/// May an attempt start now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Go {
    /// Yes; `probe` when it is the breaker's one probe.
    Send {
        /// The breaker's probe.
        probe: bool,
    },
    /// Not before this.
    Wait(Duration),
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    /// Wait before the next attempt.
    pub wait: Duration,
    /// The spool was empty.
    pub idle: bool,
    /// A whole batch was delivered.
    pub sent: bool,
}

/// One output's delivery state.
pub struct Delivery {
    naming: &'static Naming,
    backoff: Backoff,
    /// Backoff while the spool fails (separate from the output's).
    spool_backoff: Backoff,
    /// A batch the output took whose deletion the spool could not record:
    /// acknowledged again locally, never re-sent.
    delivered_unrecorded: Option<String>,
    breaker: Breaker,
    stats: ShipperStats,
    /// When the output last took something.
    pub last_success: Option<DateTime<Utc>>,
    /// The last error, while the last attempt failed.
    pub last_error: Option<String>,
    log: Logger,
}

impl Delivery {
    /// A fresh state for the listener `cfg` with its breaker.
    pub fn new(cfg: &ListenerConfig, breaker: &BreakerConfig, log: Logger) -> Delivery {
        Delivery {
            naming: &Naming::LISTENER,
            backoff: Backoff::new(cfg.retry_base, cfg.retry_max),
            spool_backoff: Backoff::new(Duration::from_secs(1), SPOOL_RETRY_MAX),
            delivered_unrecorded: None,
            breaker: Breaker::new(breaker.fail_max, breaker.reset_timeout),
            stats: ShipperStats::default(),
            last_success: None,
            last_error: None,
            log,
        }
    }

    /// Messages name the output as `naming` says.
    pub fn named(mut self, naming: &'static Naming) -> Delivery {
        self.naming = naming;
        self
    }

    /// May an attempt start at `now`?
    pub fn go(&mut self, now: Instant) -> Go {
        match self.breaker.permit(now) {
            Permit::Wait(d) => {
                self.stats.retry_in_s = Some(d.as_secs_f64());
                Go::Wait(d)
            }
            permit => {
                let probe = permit == Permit::Probe;
                if probe {
                    info!(self.log, "circuit_probe"; "reason" => self.stats.token_refused.as_deref().unwrap_or("breaker half-open"));
                }
                self.stats.retry_in_s = None;
                Go::Send { probe }
            }
        }
    }

    /// The batch the output already has (only its deletion is to be retried).
    pub fn delivered_unrecorded(&self) -> Option<String> {
        self.delivered_unrecorded.clone()
    }

    /// Retry at once rather than waiting out a long backoff (the final flush); the
    /// breaker still decides whether a request may go.
    pub fn hurry(&mut self) {
        self.backoff.reset();
    }

    /// Counters and the breaker for status.
    pub fn stats(&self, now: Instant) -> ShipperStats {
        let mut s = self.stats.clone();
        s.breaker = self.breaker.stats(now);
        s
    }

    /// What the outcome of an attempt started by [`Delivery::go`] means.
    pub fn after(
        &mut self,
        attempt: Attempt,
        probe: bool,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Next {
        let mut next = Next {
            wait: Duration::ZERO,
            idle: false,
            sent: false,
        };
        next.wait = match attempt {
            Attempt::Idle => {
                if probe {
                    self.breaker.cancel_probe(now);
                }
                self.spool_backoff.reset();
                next.idle = true;
                IDLE_POLL
            }
            Attempt::SpoolFailed(e) => {
                if probe {
                    self.breaker.cancel_probe(now);
                }
                self.spool_failed(e)
            }
            Attempt::AckFailed { batch_id, error } => {
                // Delivered: the output is fine (no breaker failure, no re-send).
                if probe {
                    self.breaker.cancel_probe(now);
                }
                warn!(self.log, "ship_ack_not_recorded"; "batch_id" => &batch_id, "error" => %error,
                      "effect" => "the listener has the batch; only its deletion from the spool is retried");
                self.delivered_unrecorded = Some(batch_id);
                self.last_error = Some(error.to_string());
                self.spool_backoff.next_delay().max(SPOOL_RETRY_MIN)
            }
            Attempt::Sent { events, status } => {
                self.delivered_unrecorded = None;
                self.spool_backoff.reset();
                self.stats.last_http_status = Some(status);
                self.stats.batches_sent_total += 1;
                self.stats.events_sent_total += events as u64;
                next.sent = true;
                self.succeeded(wall);
                Duration::ZERO
            }
            Attempt::Split(o) => {
                self.stats.last_http_status = Some(o.refused);
                self.stats.batches_split_total += 1;
                self.stats.events_quarantined_total += o.quarantined;
                self.stats.events_sent_total += o.acked;
                let why = o.stopped.as_ref().map(|s| match s {
                    Stop::Output(e) => self.describe(e),
                    Stop::Spool(e) => e.to_string(),
                });
                info!(self.log, "batch_split_done"; "acked" => o.acked, "quarantined" => o.quarantined,
                      "stopped" => why.as_deref().unwrap_or(""));
                match o.stopped {
                    None => {
                        self.succeeded(wall);
                        Duration::ZERO
                    }
                    Some(Stop::Output(e)) => self.send_failed(e, now),
                    Some(Stop::Spool(e)) => self.spool_failed(e),
                }
            }
            Attempt::Failed(e) => self.send_failed(e, now),
        };
        next
    }

    /// The spool failed (not the output): its own backoff, no breaker failure.
    fn spool_failed(&mut self, e: impl std::fmt::Display) -> Duration {
        warn!(self.log, "ship_spool_failed"; "error" => %e);
        self.last_error = Some(e.to_string());
        self.spool_backoff.next_delay().max(SPOOL_RETRY_MIN)
    }

    /// The output did not take a batch.
    fn send_failed(&mut self, e: SendError, now: Instant) -> Duration {
        if let Some(status) = e.status() {
            self.stats.last_http_status = Some(status);
        }
        match e {
            SendError::TokenRefused { status } => self.token_refused(status, now),
            e => {
                let retry_after = e.retry_after();
                self.fail(self.describe(&e), retry_after, now)
            }
        }
    }

    fn succeeded(&mut self, wall: DateTime<Utc>) {
        if self.backoff.failures() > 0 {
            if self.naming.output == Output::Listener {
                info!(self.log, "listener_recovered"; "failures" => self.backoff.failures());
            } else {
                info!(self.log, "output_recovered"; "output" => self.naming.who, "failures" => self.backoff.failures());
            }
        }
        if let Some(t) = self.stats.token_refused.take() {
            if self.naming.output == Output::Listener {
                info!(self.log, "listener_token_accepted"; "was" => t);
            } else {
                info!(self.log, "output_credentials_accepted"; "output" => self.naming.who, "was" => t);
            }
        }
        if self.breaker.success() == Some(Transition::Closed) {
            info!(self.log, "circuit_closed");
        }
        self.backoff.reset();
        self.stats.consecutive_failures = 0;
        self.last_success = Some(wall);
        self.last_error = None;
    }

    fn describe(&self, e: &SendError) -> String {
        if self.naming.output == Output::Listener {
            return e.to_string();
        }
        e.describe(self.naming.who, self.naming.url_key)
    }

    fn token_refused(&mut self, status: u16, now: Instant) -> Duration {
        self.breaker.trip(now);
        let what = self.naming.credential;
        let msg = format!(
            "the {} refuses the {what} (HTTP {status}); nothing is sent until {} is fixed and the config reloaded (SIGHUP), or a probe every {} s succeeds; all events are kept",
            self.naming.who,
            self.naming.credential_key,
            self.breaker_reset(now).as_secs()
        );
        if self.naming.output == Output::Listener {
            error!(self.log, "listener_token_refused"; "status" => status, "effect" => &msg);
        } else {
            error!(self.log, "output_credentials_refused"; "output" => self.naming.who, "status" => status, "effect" => &msg);
        }
        self.stats.failures_total += 1;
        self.stats.token_refused = Some(format!("HTTP {status}"));
        self.last_error = Some(msg);
        self.breaker_reset(now)
    }

    /// Time until the breaker's probe, at least a second.
    pub fn breaker_reset(&self, now: Instant) -> Duration {
        match self.breaker.state() {
            BreakerState::Open { probe_at, .. } => probe_at.saturating_duration_since(now),
            _ => Duration::ZERO,
        }
        .max(Duration::from_secs(1))
    }

    fn fail(&mut self, error: String, retry_after: Option<Duration>, now: Instant) -> Duration {
        let mut delay = self.backoff.next_delay();
        if let Some(ra) = retry_after {
            delay = delay.max(ra);
        }
        self.stats.failures_total += 1;
        self.stats.consecutive_failures = self.backoff.failures();
        // While the breaker is open its probe is the next attempt: at the breaker's
        // reset (or later if the output asked for it with Retry-After), not at the
        // retry backoff, which may have grown past it. What is logged is what happens.
        let probe = |d: &Delivery| d.breaker_reset(now).max(retry_after.unwrap_or_default());
        match self.breaker.failure(now) {
            Some(Transition::Opened) => {
                delay = probe(self);
                warn!(self.log, "circuit_open_buffering"; "error" => &error,
                      "consecutive_failures" => self.backoff.failures(),
                      "probe_in_s" => delay.as_secs());
            }
            Some(Transition::Reopened) => {
                delay = probe(self);
                warn!(self.log, "circuit_probe_failed"; "error" => &error,
                      "probe_in_s" => delay.as_secs());
            }
            _ => {}
        }
        self.stats.retry_in_s = Some(delay.as_secs_f64());
        warn!(self.log, "ship_failed"; "error" => &error, "retry_in_ms" => delay.as_millis() as u64,
              "consecutive_failures" => self.backoff.failures());
        self.last_error = Some(error);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::BreakerPhase;
    use crate::model::ShipperStats;
    use crate::model::SpoolError;
    use crate::shipper::split::{NotRecorded, SplitOutcome};

    fn delivery() -> Delivery {
        let c = crate::config::parse_str(
            "[agent]\nproject_id='p'\n[breaker]\nfail_max=5\nreset_timeout_s=60\n",
        )
        .expect("valid");
        let log = Logger::root(slog::Discard, slog::o!());
        Delivery::new(&c.listener, &c.breaker, log)
    }

    fn down() -> Attempt {
        Attempt::Failed(SendError::Retriable {
            reason: "request failed: connection refused".into(),
            status: None,
            retry_after: None,
        })
    }

    fn sent() -> Attempt {
        Attempt::Sent {
            events: 10,
            status: 200,
        }
    }

    fn stats(d: &Delivery, now: Instant) -> ShipperStats {
        d.stats(now)
    }

    #[test]
    fn the_probe_comes_when_the_breaker_says_even_after_a_long_backoff() {
        // A backoff that has grown to 17 s, a breaker that resets after 2 s.
        let c = crate::config::parse_str(
            "[agent]\nproject_id='p'\n[listener]\nretry_base_ms=17000\nretry_max_ms=17000\n[breaker]\nfail_max=2\nreset_timeout_s=2\n",
        )
        .expect("valid");
        let log = Logger::root(slog::Discard, slog::o!());
        let mut d = Delivery::new(&c.listener, &c.breaker, log);
        let t0 = Instant::now();
        // The first failure waits the backoff (full jitter: anything up to 17 s).
        d.after(down(), false, t0, Utc::now());
        let opened = d.after(down(), false, t0, Utc::now());
        assert_eq!(
            opened.wait,
            Duration::from_secs(2),
            "the probe, not the backoff"
        );
        let probe_at = t0 + Duration::from_secs(2);
        assert_eq!(d.go(probe_at), Go::Send { probe: true });
        let reopened = d.after(down(), true, probe_at, Utc::now());
        assert_eq!(reopened.wait, Duration::from_secs(2));
        // A Retry-After longer than the reset is honoured.
        let later = probe_at + Duration::from_secs(2);
        assert_eq!(d.go(later), Go::Send { probe: true });
        let asked = Attempt::Failed(SendError::Retriable {
            reason: "busy".into(),
            status: Some(503),
            retry_after: Some(Duration::from_secs(30)),
        });
        assert_eq!(
            d.after(asked, true, later, Utc::now()).wait,
            Duration::from_secs(30)
        );
    }

    #[test]
    fn five_failures_open_the_breaker_and_one_probe_closes_it() {
        let mut d = delivery();
        let t0 = Instant::now();
        for i in 0..5 {
            assert_eq!(d.go(t0), Go::Send { probe: false }, "attempt {i}");
            let next = d.after(down(), false, t0, Utc::now());
            assert!(!next.sent && !next.idle);
            if i == 4 {
                assert!(next.wait >= Duration::from_secs(59), "{next:?}");
            }
        }
        let s = stats(&d, t0);
        assert_eq!((s.failures_total, s.consecutive_failures), (5, 5));
        assert_eq!(s.breaker.state, BreakerPhase::Open);
        assert!(
            matches!(d.go(t0 + Duration::from_secs(30)), Go::Wait(w) if w >= Duration::from_secs(29))
        );
        let later = t0 + Duration::from_secs(61);
        assert_eq!(d.go(later), Go::Send { probe: true });
        let next = d.after(sent(), true, later, Utc::now());
        assert!(next.sent);
        assert_eq!(next.wait, Duration::ZERO);
        let s = stats(&d, later);
        assert_eq!(s.breaker.state, BreakerPhase::Closed);
        assert_eq!(
            (
                s.consecutive_failures,
                s.batches_sent_total,
                s.events_sent_total
            ),
            (0, 1, 10)
        );
        assert!(d.last_success.is_some() && d.last_error.is_none());
    }

    #[test]
    fn a_refused_token_holds_everything_until_a_probe_succeeds() {
        let mut d = delivery();
        let t0 = Instant::now();
        let next = d.after(
            Attempt::Failed(SendError::TokenRefused { status: 401 }),
            false,
            t0,
            Utc::now(),
        );
        assert!(next.wait >= Duration::from_secs(59), "{next:?}");
        let s = stats(&d, t0);
        assert_eq!(s.token_refused.as_deref(), Some("HTTP 401"));
        assert_eq!(s.last_http_status, Some(401));
        assert_eq!(s.breaker.state, BreakerPhase::Open);
        let e = d.last_error.clone().expect("error");
        assert!(
            e.contains("refuses the token") && e.contains("every 60 s"),
            "{e}"
        );
        assert!(matches!(d.go(t0 + Duration::from_secs(1)), Go::Wait(_)));
        let later = t0 + Duration::from_secs(61);
        assert_eq!(d.go(later), Go::Send { probe: true });
        d.after(sent(), true, later, Utc::now());
        assert_eq!(stats(&d, later).token_refused, None);
    }

    #[test]
    fn the_spool_failing_is_not_the_outputs_fault() {
        let mut d = delivery();
        let t0 = Instant::now();
        for _ in 0..10 {
            let next = d.after(
                Attempt::SpoolFailed(SpoolError::Full("disk full".into())),
                false,
                t0,
                Utc::now(),
            );
            assert!(next.wait >= Duration::from_millis(500));
            assert!(next.wait <= Duration::from_secs(30));
        }
        let s = stats(&d, t0);
        assert_eq!(
            (s.failures_total, s.breaker.state),
            (0, BreakerPhase::Closed)
        );
        assert_eq!(d.go(t0), Go::Send { probe: false });
        // The output took a batch whose deletion failed: it is not sent again.
        let ack_failed = Attempt::AckFailed {
            batch_id: "b1".into(),
            error: NotRecorded {
                what: "ack",
                error: SpoolError::Full("disk full".into()),
            },
        };
        d.after(ack_failed, false, t0, Utc::now());
        assert_eq!(d.delivered_unrecorded().as_deref(), Some("b1"));
        assert_eq!(stats(&d, t0).failures_total, 0);
        d.after(sent(), false, t0, Utc::now());
        assert_eq!(d.delivered_unrecorded(), None);
    }

    #[test]
    fn retry_after_is_waited_out_and_an_empty_spool_polls() {
        let mut d = delivery();
        let t0 = Instant::now();
        let busy = Attempt::Failed(SendError::Retriable {
            reason: "listener answered HTTP 503".into(),
            status: Some(503),
            retry_after: Some(Duration::from_secs(120)),
        });
        let next = d.after(busy, false, t0, Utc::now());
        assert!(next.wait >= Duration::from_secs(120), "{next:?}");
        assert_eq!(stats(&d, t0).last_http_status, Some(503));
        let next = d.after(Attempt::Idle, false, t0, Utc::now());
        assert_eq!((next.wait, next.idle), (IDLE_POLL, true));
    }

    #[test]
    fn a_split_counts_what_went_through_and_stops_like_its_cause() {
        let mut d = delivery();
        let t0 = Instant::now();
        let done = SplitOutcome {
            refused: 413,
            acked: 7,
            quarantined: 1,
            stopped: None,
        };
        let next = d.after(Attempt::Split(done), false, t0, Utc::now());
        assert_eq!(next.wait, Duration::ZERO);
        let s = stats(&d, t0);
        assert_eq!(
            (
                s.batches_split_total,
                s.events_sent_total,
                s.events_quarantined_total,
                s.last_http_status
            ),
            (1, 7, 1, Some(413))
        );
        let refused = SplitOutcome {
            refused: 400,
            acked: 1,
            quarantined: 0,
            stopped: Some(Stop::Output(SendError::TokenRefused { status: 403 })),
        };
        d.after(Attempt::Split(refused), false, t0, Utc::now());
        assert_eq!(stats(&d, t0).token_refused.as_deref(), Some("HTTP 403"));
        let spool = SplitOutcome {
            refused: 400,
            acked: 0,
            quarantined: 0,
            stopped: Some(Stop::Spool(NotRecorded {
                what: "quarantine",
                error: SpoolError::Unavailable,
            })),
        };
        let failures = stats(&d, t0).failures_total;
        d.after(Attempt::Split(spool), false, t0, Utc::now());
        assert_eq!(
            stats(&d, t0).failures_total,
            failures,
            "not the output's fault"
        );
    }
}
