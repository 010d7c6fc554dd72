//! The shipper actor: asks the spool for the oldest batch, POSTs it, and does what the
//! answer means (see [`policy`](super::policy)): acknowledge, retry after a backoff (or
//! the listener's Retry-After), split and quarantine, or hold everything while the token
//! is refused. A circuit breaker stops requests after repeated failures and lets one
//! probe through per reset period. One request at a time, so batches arrive in order.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use slog::{debug, error, info, warn, Logger};
use tokio::sync::oneshot;

use super::policy::{classify, Backoff, Breaker, Permit, Transition, Verdict};
use super::{Answer, Post, Sender};
use crate::buffer::BufferActor;
use crate::config::{BreakerConfig, ListenerConfig};
use crate::model::{
    Ack, AckRows, Batch, ChildDetail, ExitGuard, Flush, FlushOutcome, Health, NextBatch, Ping,
    QuarantineRows, Route, ShipperStats, SpoolError,
};

/// How often an idle shipper looks for new events in the spool.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// Waits after the spool failed to hand out or record a batch: from this, doubling
/// (with jitter) to [`SPOOL_RETRY_MAX`] while it keeps failing (a full disk is not
/// fixed in a second).
const SPOOL_RETRY_MIN: Duration = Duration::from_millis(500);
const SPOOL_RETRY_MAX: Duration = Duration::from_secs(30);

/// The outcome of one attempt.
enum Attempt {
    /// The spool is empty.
    Idle,
    /// The spool could not hand out or record a batch (not the listener's fault).
    SpoolFailed(String),
    /// The listener took this batch (2xx) but the spool could not record it (a full
    /// disk): only the local acknowledgement is retried, the batch is not sent again.
    AckFailed { batch_id: String, error: String },
    /// The listener accepted a batch of this many events.
    Sent { events: usize, status: u16 },
    /// The listener answered something else; the batch comes back for a split.
    Refused { answer: Answer, batch: Batch },
    /// No answer (connect error, timeout).
    Failed(String),
    /// A split batch was worked through (or stopped at a failure).
    Split(SplitOutcome),
}

/// What splitting a refused batch achieved.
#[derive(Debug, Default)]
struct SplitOutcome {
    acked: u64,
    quarantined: u64,
    /// Why it stopped before the end (the listener failed otherwise meanwhile).
    stopped: Option<String>,
    status: Option<u16>,
}

/// Ships the spool to the listener.
pub struct ShipperActor {
    cfg: ListenerConfig,
    post: Post,
    buffer: Route<BufferActor>,
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
        sender: Sender,
        buffer: Route<BufferActor>,
        log: Logger,
        guard: ExitGuard,
    ) -> ShipperActor {
        let post = Post::new(&cfg, sender);
        ShipperActor {
            backoff: Backoff::new(cfg.retry_base, cfg.retry_max),
            spool_backoff: Backoff::new(Duration::from_secs(1), SPOOL_RETRY_MAX),
            delivered_unrecorded: None,
            breaker: Breaker::new(breaker.fail_max, breaker.reset_timeout),
            cfg,
            post,
            buffer,
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
        let route = self.buffer.clone();
        let post = self.post.clone();
        let max = self.cfg.batch_max_events;
        let log = self.log.clone();
        let delivered = self.delivered_unrecorded.clone();
        let fut = async move {
            let Some(buffer) = route.get() else {
                return Attempt::SpoolFailed(SpoolError::Unavailable.to_string());
            };
            let batch = match buffer.send(NextBatch { max_events: max }).await {
                Ok(Ok(Some(b))) => b,
                Ok(Ok(None)) => return Attempt::Idle,
                Ok(Err(e)) => return Attempt::SpoolFailed(e.to_string()),
                Err(_) => return Attempt::SpoolFailed(SpoolError::Unavailable.to_string()),
            };
            // The listener already has this one (its 2xx came, the delete failed):
            // record it, do not send it again.
            let status = if delivered.as_deref() == Some(batch.batch_id.as_str()) {
                debug!(log, "batch_ack_retried"; "batch_id" => &batch.batch_id);
                200
            } else {
                let answer = match post.send(&batch).await {
                    Ok(r) => r,
                    Err(e) => return Attempt::Failed(e),
                };
                let status = answer.status;
                debug!(log, "batch_posted"; "batch_id" => &batch.batch_id, "status" => status, "events" => batch.events.len());
                if classify(status) != Verdict::Ack {
                    return Attempt::Refused { answer, batch };
                }
                status
            };
            // Test-only: a crash between the listener's 2xx and the delete.
            if let Some(f) = crate::fault::take("shipper_after_2xx") {
                crate::fault::inject("shipper", f);
            }
            // Acknowledged by the listener: only now may the spool delete the events. If
            // this ack is lost (crash), the batch is sent again with the same ids.
            match buffer
                .send(Ack {
                    batch_id: batch.batch_id.clone(),
                })
                .await
            {
                Ok(Ok(_)) => Attempt::Sent {
                    events: batch.events.len(),
                    status,
                },
                Ok(Err(e)) => Attempt::AckFailed {
                    batch_id: batch.batch_id,
                    error: format!("ack not recorded: {e}"),
                },
                Err(_) => Attempt::AckFailed {
                    batch_id: batch.batch_id,
                    error: "ack not recorded: buffer restarting".into(),
                },
            }
        };
        ctx.spawn(
            fut.into_actor(self)
                .map(move |a, act, ctx| act.after(a, probe, ctx)),
        );
    }

    fn after(&mut self, attempt: Attempt, probe: bool, ctx: &mut Context<Self>) {
        self.progress = Instant::now();
        let next = match attempt {
            Attempt::Idle => {
                if probe {
                    self.breaker.cancel_probe(Instant::now());
                }
                self.busy = false;
                self.spool_backoff.reset();
                self.finish_flush(true);
                IDLE_POLL
            }
            Attempt::SpoolFailed(e) => {
                if probe {
                    self.breaker.cancel_probe(Instant::now());
                }
                self.busy = false;
                warn!(self.log, "ship_spool_failed"; "error" => &e);
                self.last_error = Some(e);
                self.spool_backoff.next_delay().max(SPOOL_RETRY_MIN)
            }
            Attempt::AckFailed { batch_id, error } => {
                // Delivered: the listener is fine (no breaker failure, no re-send).
                if probe {
                    self.breaker.cancel_probe(Instant::now());
                }
                self.busy = false;
                warn!(self.log, "ship_ack_not_recorded"; "batch_id" => &batch_id, "error" => &error,
                      "effect" => "the listener has the batch; only its deletion from the spool is retried");
                self.delivered_unrecorded = Some(batch_id);
                self.last_error = Some(error);
                self.spool_backoff.next_delay().max(SPOOL_RETRY_MIN)
            }
            Attempt::Sent { events, status } => {
                self.busy = false;
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
            Attempt::Refused { answer, batch } => {
                let (status, retry_after) = (answer.status, answer.retry_after);
                self.stats.last_http_status = Some(status);
                match classify(status) {
                    Verdict::Split => {
                        // Still busy: the split runs as its own future.
                        self.stats.batches_split_total += 1;
                        warn!(self.log, "batch_refused_splitting"; "status" => status,
                              "batch_id" => &batch.batch_id, "events" => batch.events.len());
                        self.split(batch, status, ctx);
                        return;
                    }
                    Verdict::Unauthorized => {
                        self.busy = false;
                        self.token_refused(status)
                    }
                    Verdict::Rejected => {
                        self.busy = false;
                        self.fail(
                            format!(
                                "listener answered {}: check listener.url (the events are kept)",
                                answer.describe()
                            ),
                            retry_after,
                        )
                    }
                    Verdict::Retry | Verdict::Ack => {
                        self.busy = false;
                        self.fail(format!("listener answered HTTP {status}"), retry_after)
                    }
                }
            }
            Attempt::Failed(e) => {
                self.busy = false;
                self.fail(e, None)
            }
            Attempt::Split(o) => {
                self.busy = false;
                self.stats.events_quarantined_total += o.quarantined;
                self.stats.events_sent_total += o.acked;
                info!(self.log, "batch_split_done"; "acked" => o.acked, "quarantined" => o.quarantined,
                      "stopped" => o.stopped.as_deref().unwrap_or(""));
                match o.stopped {
                    None => {
                        self.succeeded();
                        Duration::ZERO
                    }
                    Some(e) => match o.status.map(classify) {
                        Some(Verdict::Unauthorized) => self.token_refused(o.status.unwrap_or(401)),
                        _ => self.fail(e, None),
                    },
                }
            }
        };
        if self.flush_expired() {
            self.finish_flush(false);
        }
        ctx.run_later(next, |act, ctx| act.attempt(ctx));
    }

    /// Works through a refused batch by halves: what the listener takes is
    /// acknowledged, a single event it still refuses goes to quarantine, and any other
    /// answer stops the split (the rest stays in the spool for the next attempt).
    fn split(&mut self, batch: Batch, refused: u16, ctx: &mut Context<Self>) {
        let route = self.buffer.clone();
        let post = self.post.clone();
        let log = self.log.clone();
        let fut = async move {
            let mut out = SplitOutcome::default();
            let Some(buffer) = route.get() else {
                out.stopped = Some(SpoolError::Unavailable.to_string());
                return Attempt::Split(out);
            };
            // A batch of one refused event needs no second try.
            if batch.events.len() == 1 {
                warn!(log, "event_refused"; "id" => &batch.events[0].id, "status" => refused);
                match buffer
                    .send(QuarantineRows {
                        seqs: batch.seqs,
                        reason: format!("HTTP {refused} from the listener"),
                    })
                    .await
                {
                    Ok(Ok(n)) => out.quarantined += n,
                    _ => out.stopped = Some("quarantine not recorded".into()),
                }
                return Attempt::Split(out);
            }
            let mut parts: VecDeque<(Vec<_>, Vec<i64>)> = VecDeque::new();
            halve(batch.events, batch.seqs, &mut parts);
            while let Some((events, seqs)) = parts.pop_front() {
                let Some(first) = seqs.first().copied() else {
                    continue;
                };
                // Deterministic: the same part of the same batch has the same key.
                let part = Batch {
                    batch_id: format!("{}.{first}.{}", batch.batch_id, seqs.len()),
                    events,
                    seqs,
                };
                let answer = match post.send(&part).await {
                    Ok(a) => a,
                    Err(e) => {
                        out.stopped = Some(e);
                        break;
                    }
                };
                let status = answer.status;
                match classify(status) {
                    Verdict::Ack => match buffer.send(AckRows { seqs: part.seqs }).await {
                        Ok(Ok(n)) => out.acked += n,
                        Ok(Err(e)) => {
                            out.stopped = Some(format!("ack not recorded: {e}"));
                            break;
                        }
                        Err(_) => {
                            out.stopped = Some("ack not recorded: buffer restarting".into());
                            break;
                        }
                    },
                    Verdict::Split if part.events.len() == 1 => {
                        let reason = format!("HTTP {status} from the listener");
                        warn!(log, "event_refused"; "id" => &part.events[0].id, "status" => status);
                        match buffer
                            .send(QuarantineRows {
                                seqs: part.seqs,
                                reason,
                            })
                            .await
                        {
                            Ok(Ok(n)) => out.quarantined += n,
                            _ => {
                                out.stopped = Some("quarantine not recorded".into());
                                break;
                            }
                        }
                    }
                    Verdict::Split => {
                        // Halves go first, in order, before the parts queued earlier.
                        let mut halves = VecDeque::new();
                        halve(part.events, part.seqs, &mut halves);
                        while let Some(h) = halves.pop_back() {
                            parts.push_front(h);
                        }
                    }
                    _ => {
                        out.status = Some(status);
                        out.stopped = Some(format!(
                            "listener answered {} while splitting",
                            answer.describe()
                        ));
                        break;
                    }
                }
            }
            Attempt::Split(out)
        };
        ctx.spawn(
            fut.into_actor(self)
                .map(|a, act, ctx| act.after(a, false, ctx)),
        );
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

/// Splits events (and their rows) in two halves, appended to `out` in order.
fn halve(
    mut events: Vec<crate::model::Event>,
    mut seqs: Vec<i64>,
    out: &mut VecDeque<(Vec<crate::model::Event>, Vec<i64>)>,
) {
    let mid = events.len().div_ceil(2);
    let tail_e = events.split_off(mid);
    let tail_s = seqs.split_off(mid.min(seqs.len()));
    out.push_back((events, seqs));
    if !tail_e.is_empty() {
        out.push_back((tail_e, tail_s));
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
