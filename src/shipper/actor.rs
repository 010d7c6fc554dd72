//! The shipper actor: asks the spool for the oldest batch, POSTs it, and does what the
//! answer means (see [`policy`](super::policy)): acknowledge, retry after a backoff (or
//! the listener's Retry-After), split and quarantine, or hold everything while the token
//! is refused. A circuit breaker stops requests after repeated failures and lets one
//! probe through per reset period. One request at a time, so batches arrive in order.

use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use slog::{error, info, warn, Logger};
use tokio::sync::oneshot;

use super::attempt::{Attempt, Job};
use super::policy::{Backoff, Breaker, Permit, Transition};
use super::split::Stop;
use super::transport::{SendError, Transport};
use super::{Origin, Post};
use crate::config::{BreakerConfig, ListenerConfig};
use crate::model::{
    ChildDetail, ExitGuard, Flush, FlushOutcome, Health, Ping, Route, ShipperStats,
};
use crate::spool::SpoolActor;

/// How often an idle shipper looks for new events in the spool.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// Waits after the spool failed to hand out or record a batch: from this, doubling
/// (with jitter) to [`SPOOL_RETRY_MAX`] while it keeps failing (a full disk is not
/// fixed in a second).
const SPOOL_RETRY_MIN: Duration = Duration::from_millis(500);
const SPOOL_RETRY_MAX: Duration = Duration::from_secs(30);

/// Ships the spool to the listener.
pub struct ShipperActor {
    cfg: ListenerConfig,
    transport: Rc<dyn Transport>,
    spool: Route<SpoolActor>,
    backoff: Backoff,
    /// Backoff while the spool fails (separate from the listener's).
    spool_backoff: Backoff,
    /// A batch the listener acknowledged whose deletion the spool could not record:
    /// acknowledged again locally, never re-sent.
    delivered_unrecorded: Option<String>,
    breaker: Breaker,
    busy: bool,
    stats: ShipperStats,
    progress: Instant,
    last_success: Option<chrono::DateTime<Utc>>,
    last_error: Option<String>,
    /// A final flush in progress: its deadline, its outcome so far and who waits for it.
    flush: Option<(Instant, FlushOutcome, oneshot::Sender<FlushOutcome>)>,
    log: Logger,
    _guard: ExitGuard,
}

impl ShipperActor {
    /// Builds the shipper; call on the thread it runs on (the HTTP client is not `Send`).
    pub fn new(
        cfg: ListenerConfig,
        breaker: BreakerConfig,
        origin: Origin,
        spool: Route<SpoolActor>,
        log: Logger,
        guard: ExitGuard,
    ) -> ShipperActor {
        let transport = Rc::new(Post::new(&cfg, origin));
        ShipperActor {
            backoff: Backoff::new(cfg.retry_base, cfg.retry_max),
            spool_backoff: Backoff::new(Duration::from_secs(1), SPOOL_RETRY_MAX),
            delivered_unrecorded: None,
            breaker: Breaker::new(breaker.fail_max, breaker.reset_timeout),
            cfg,
            transport,
            spool,
            busy: false,
            stats: ShipperStats::default(),
            progress: Instant::now(),
            last_success: None,
            last_error: None,
            flush: None,
            log,
            _guard: guard,
        }
    }

    fn attempt(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        let probe = match self.breaker.permit(Instant::now()) {
            Permit::Go => false,
            Permit::Probe => true,
            Permit::Wait(d) => {
                self.stats.retry_in_s = Some(d.as_secs_f64());
                let d = self.within_flush(d);
                if self.flush_expired() {
                    self.finish_flush(false);
                }
                ctx.run_later(d, |act, ctx| act.attempt(ctx));
                return;
            }
        };
        if probe {
            info!(self.log, "circuit_probe"; "reason" => self.stats.token_refused.as_deref().unwrap_or("breaker half-open"));
        }
        self.busy = true;
        self.stats.retry_in_s = None;
        let job = Job {
            spool: self.spool.clone(),
            transport: self.transport.clone(),
            max_events: self.cfg.batch_max_events,
            delivered_unrecorded: self.delivered_unrecorded.clone(),
            log: self.log.clone(),
        };
        ctx.spawn(
            job.run()
                .into_actor(self)
                .map(move |a, act, ctx| act.after(a, probe, ctx)),
        );
    }

    /// What an attempt's outcome means for the breaker, the backoff and status; then
    /// the next attempt is scheduled.
    fn after(&mut self, attempt: Attempt, probe: bool, ctx: &mut Context<Self>) {
        self.progress = Instant::now();
        self.busy = false;
        let next = match attempt {
            Attempt::Idle => {
                if probe {
                    self.breaker.cancel_probe(Instant::now());
                }
                self.spool_backoff.reset();
                self.finish_flush(true);
                IDLE_POLL
            }
            Attempt::SpoolFailed(e) => {
                if probe {
                    self.breaker.cancel_probe(Instant::now());
                }
                self.spool_failed(e)
            }
            Attempt::AckFailed { batch_id, error } => {
                // Delivered: the listener is fine (no breaker failure, no re-send).
                if probe {
                    self.breaker.cancel_probe(Instant::now());
                }
                warn!(self.log, "ship_ack_not_recorded"; "batch_id" => &batch_id, "error" => &error,
                      "effect" => "the listener has the batch; only its deletion from the spool is retried");
                self.delivered_unrecorded = Some(batch_id);
                self.last_error = Some(error);
                self.spool_backoff.next_delay().max(SPOOL_RETRY_MIN)
            }
            Attempt::Sent { events, status } => {
                self.delivered_unrecorded = None;
                self.spool_backoff.reset();
                self.stats.last_http_status = Some(status);
                self.stats.batches_sent_total += 1;
                self.stats.events_sent_total += events as u64;
                if let Some((_, outcome, _)) = self.flush.as_mut() {
                    outcome.batches += 1;
                }
                self.succeeded();
                Duration::ZERO
            }
            Attempt::Split(o) => {
                self.stats.last_http_status = Some(o.refused);
                self.stats.batches_split_total += 1;
                self.stats.events_quarantined_total += o.quarantined;
                self.stats.events_sent_total += o.acked;
                let why = o.stopped.as_ref().map(|s| match s {
                    Stop::Output(e) => e.to_string(),
                    Stop::Spool(e) => e.clone(),
                });
                info!(self.log, "batch_split_done"; "acked" => o.acked, "quarantined" => o.quarantined,
                      "stopped" => why.as_deref().unwrap_or(""));
                match o.stopped {
                    None => {
                        self.succeeded();
                        Duration::ZERO
                    }
                    Some(Stop::Output(e)) => self.send_failed(e),
                    Some(Stop::Spool(e)) => self.spool_failed(e),
                }
            }
            Attempt::Failed(e) => self.send_failed(e),
        };
        if self.flush_expired() {
            self.finish_flush(false);
        }
        ctx.run_later(next, |act, ctx| act.attempt(ctx));
    }

    /// The spool failed (not the output): its own backoff, no breaker failure.
    fn spool_failed(&mut self, e: String) -> Duration {
        warn!(self.log, "ship_spool_failed"; "error" => &e);
        self.last_error = Some(e);
        self.spool_backoff.next_delay().max(SPOOL_RETRY_MIN)
    }

    /// The output did not take a batch.
    fn send_failed(&mut self, e: SendError) -> Duration {
        if let Some(status) = e.status() {
            self.stats.last_http_status = Some(status);
        }
        match e {
            SendError::TokenRefused { status } => self.token_refused(status),
            e => {
                let retry_after = e.retry_after();
                self.fail(e.to_string(), retry_after)
            }
        }
    }

    fn succeeded(&mut self) {
        if self.backoff.failures() > 0 {
            info!(self.log, "listener_recovered"; "failures" => self.backoff.failures());
        }
        if let Some(t) = self.stats.token_refused.take() {
            info!(self.log, "listener_token_accepted"; "was" => t);
        }
        if self.breaker.success() == Some(Transition::Closed) {
            info!(self.log, "circuit_closed");
        }
        self.backoff.reset();
        self.stats.consecutive_failures = 0;
        self.last_success = Some(Utc::now());
        self.last_error = None;
    }

    fn token_refused(&mut self, status: u16) -> Duration {
        let msg = format!(
            "the listener refuses the token (HTTP {status}); nothing is sent until listener.token is fixed and the config reloaded (SIGHUP), or a probe every {} s succeeds; all events are kept",
            self.breaker_reset().as_secs()
        );
        error!(self.log, "listener_token_refused"; "status" => status, "effect" => &msg);
        self.stats.failures_total += 1;
        self.stats.token_refused = Some(format!("HTTP {status}"));
        self.last_error = Some(msg);
        self.breaker.trip(Instant::now());
        self.within_flush(self.breaker_reset())
    }

    fn breaker_reset(&self) -> Duration {
        match self.breaker.state() {
            super::policy::BreakerState::Open { probe_at, .. } => {
                probe_at.saturating_duration_since(Instant::now())
            }
            _ => Duration::ZERO,
        }
        .max(Duration::from_secs(1))
    }

    fn fail(&mut self, error: String, retry_after: Option<Duration>) -> Duration {
        let mut delay = self.backoff.next_delay();
        if let Some(ra) = retry_after {
            delay = delay.max(ra);
        }
        self.stats.failures_total += 1;
        self.stats.consecutive_failures = self.backoff.failures();
        match self.breaker.failure(Instant::now()) {
            Some(Transition::Opened) => {
                warn!(self.log, "circuit_open_buffering"; "error" => &error,
                      "consecutive_failures" => self.backoff.failures(),
                      "probe_in_s" => self.breaker_reset().as_secs());
                delay = delay.max(self.breaker_reset());
            }
            Some(Transition::Reopened) => {
                warn!(self.log, "circuit_probe_failed"; "error" => &error,
                      "probe_in_s" => self.breaker_reset().as_secs());
                delay = delay.max(self.breaker_reset());
            }
            _ => {}
        }
        self.stats.retry_in_s = Some(delay.as_secs_f64());
        warn!(self.log, "ship_failed"; "error" => &error, "retry_in_ms" => delay.as_millis() as u64,
              "consecutive_failures" => self.backoff.failures());
        self.last_error = Some(error);
        self.within_flush(delay)
    }

    /// During the final flush, never sleep past its deadline.
    fn within_flush(&self, d: Duration) -> Duration {
        match &self.flush {
            Some((deadline, _, _)) => d.min(deadline.saturating_duration_since(Instant::now())),
            None => d,
        }
    }

    fn flush_expired(&self) -> bool {
        self.flush
            .as_ref()
            .is_some_and(|(deadline, _, _)| Instant::now() >= *deadline)
    }

    fn finish_flush(&mut self, drained: bool) {
        if let Some((_, mut outcome, tx)) = self.flush.take() {
            outcome.drained = drained;
            let _ = tx.send(outcome);
        }
    }
}

impl Actor for ShipperActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.attempt(ctx);
    }
}

impl Handler<Flush> for ShipperActor {
    type Result = ResponseFuture<FlushOutcome>;

    fn handle(&mut self, msg: Flush, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.flush = Some((msg.deadline, FlushOutcome::default(), tx));
        // Retry at once rather than waiting out a long backoff (the breaker still
        // decides whether a request may go).
        self.backoff.reset();
        self.attempt(ctx);
        Box::pin(async move { rx.await.unwrap_or_default() })
    }
}

impl Handler<Ping> for ShipperActor {
    type Result = MessageResult<Ping>;

    fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> Self::Result {
        let mut stats = self.stats.clone();
        stats.breaker = self.breaker.stats(Instant::now());
        MessageResult(Health {
            progress: self.progress,
            // An attempt is bounded by the request timeout (a split by one per event at
            // most); the wait between attempts by retry_max or the breaker's reset.
            deadline: Some(
                self.cfg.timeout * (self.cfg.batch_max_events.min(64) + 1)
                    + self.cfg.retry_max
                    + self.breaker_reset()
                    + Duration::from_secs(10),
            ),
            last_success: self.last_success,
            last_error: self.last_error.clone(),
            detail: ChildDetail::Shipper(stats),
        })
    }
}
