//! The shipper actor: asks the spool for the oldest batch, POSTs it, acknowledges it on
//! 2xx, backs off otherwise. One request at a time, so batches arrive in spool order.

use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use slog::{debug, info, warn, Logger};
use tokio::sync::oneshot;

use super::{classify, encode_body, envelope_json, Backoff, Sender, Verdict};
use crate::buffer::BufferActor;
use crate::config::{Compression, ListenerConfig};
use crate::model::{
    Ack, ChildDetail, ExitGuard, Flush, FlushOutcome, Health, NextBatch, Ping, Route, ShipperStats,
    SpoolError,
};

/// How often an idle shipper looks for new events in the spool.
const IDLE_POLL: Duration = Duration::from_millis(250);

/// The outcome of one attempt.
enum Attempt {
    /// The spool is empty.
    Idle,
    /// The listener accepted a batch of this many events.
    Sent { events: usize, status: u16 },
    /// The listener answered something other than 2xx.
    Refused { status: u16 },
    /// No answer (connect error, timeout) or the spool failed.
    Failed(String),
}

/// Ships the spool to the listener.
pub struct ShipperActor {
    cfg: ListenerConfig,
    sender: Sender,
    client: awc::Client,
    buffer: Route<BufferActor>,
    backoff: Backoff,
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
        sender: Sender,
        buffer: Route<BufferActor>,
        log: Logger,
        guard: ExitGuard,
    ) -> ShipperActor {
        let client = awc::Client::builder()
            .timeout(cfg.timeout)
            .add_default_header(("User-Agent", format!("postgres-agent/{}", crate::VERSION)))
            .finish();
        let backoff = Backoff::new(Duration::from_millis(500), cfg.retry_max);
        ShipperActor {
            cfg,
            sender,
            client,
            buffer,
            backoff,
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
        self.busy = true;
        self.stats.retry_in_s = None;
        let route = self.buffer.clone();
        let client = self.client.clone();
        let (url, token) = (self.cfg.url.clone(), self.cfg.token.clone());
        let (max, compression) = (self.cfg.batch_max_events, self.cfg.compression);
        let sender = self.sender.clone();
        let log = self.log.clone();
        let fut = async move {
            let buffer = match route.get() {
                Some(b) => b,
                None => return Attempt::Failed(SpoolError::Unavailable.to_string()),
            };
            let batch = match buffer.send(NextBatch { max_events: max }).await {
                Ok(Ok(Some(b))) => b,
                Ok(Ok(None)) => return Attempt::Idle,
                Ok(Err(e)) => return Attempt::Failed(e.to_string()),
                Err(_) => return Attempt::Failed(SpoolError::Unavailable.to_string()),
            };
            let body = match encode_body(envelope_json(&sender, &batch, Utc::now()), compression) {
                Ok(b) => b,
                Err(e) => return Attempt::Failed(format!("cannot compress batch: {e}")),
            };
            let mut req = client
                .post(&url)
                .insert_header(("Authorization", format!("Bearer {}", token.expose())))
                .insert_header(("Content-Type", "application/json"))
                .insert_header(("Idempotency-Key", batch.batch_id.as_str()));
            if compression == Compression::Gzip {
                req = req.insert_header(("Content-Encoding", "gzip"));
            }
            let status = match req.send_body(body).await {
                Ok(resp) => resp.status().as_u16(),
                Err(e) => return Attempt::Failed(format!("request failed: {e}")),
            };
            debug!(log, "batch_posted"; "batch_id" => &batch.batch_id, "status" => status, "events" => batch.events.len());
            if classify(status) != Verdict::Ack {
                return Attempt::Refused { status };
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
                Ok(Err(e)) => Attempt::Failed(format!("ack not recorded: {e}")),
                Err(_) => Attempt::Failed("ack not recorded: buffer restarting".into()),
            }
        };
        ctx.spawn(fut.into_actor(self).map(|a, act, ctx| act.after(a, ctx)));
    }

    fn after(&mut self, attempt: Attempt, ctx: &mut Context<Self>) {
        self.busy = false;
        self.progress = Instant::now();
        let next = match attempt {
            Attempt::Idle => {
                self.finish_flush(true);
                IDLE_POLL
            }
            Attempt::Sent { events, status } => {
                if self.backoff.failures() > 0 {
                    info!(self.log, "listener_recovered"; "failures" => self.backoff.failures());
                }
                self.backoff.reset();
                self.stats.last_http_status = Some(status);
                self.stats.batches_sent_total += 1;
                self.stats.events_sent_total += events as u64;
                self.stats.consecutive_failures = 0;
                self.last_success = Some(Utc::now());
                self.last_error = None;
                if let Some((_, outcome, _)) = self.flush.as_mut() {
                    outcome.batches += 1;
                }
                Duration::ZERO
            }
            Attempt::Refused { status } => {
                self.stats.last_http_status = Some(status);
                self.fail(format!("listener answered HTTP {status}"))
            }
            Attempt::Failed(e) => self.fail(e),
        };
        if let Some((deadline, _, _)) = &self.flush {
            if Instant::now() >= *deadline {
                self.finish_flush(false);
            }
        }
        ctx.run_later(next, |act, ctx| act.attempt(ctx));
    }

    fn fail(&mut self, error: String) -> Duration {
        let delay = self.backoff.next_delay();
        self.stats.failures_total += 1;
        self.stats.consecutive_failures = self.backoff.failures();
        self.stats.retry_in_s = Some(delay.as_secs_f64());
        warn!(self.log, "ship_failed"; "error" => &error, "retry_in_ms" => delay.as_millis() as u64,
              "consecutive_failures" => self.backoff.failures());
        self.last_error = Some(error);
        // During the final flush, do not sleep past the deadline.
        match &self.flush {
            Some((deadline, _, _)) => delay.min(deadline.saturating_duration_since(Instant::now())),
            None => delay,
        }
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
        // Retry at once rather than waiting out a long backoff.
        self.backoff.reset();
        self.attempt(ctx);
        Box::pin(async move { rx.await.unwrap_or_default() })
    }
}

impl Handler<Ping> for ShipperActor {
    type Result = MessageResult<Ping>;

    fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> Self::Result {
        MessageResult(Health {
            progress: self.progress,
            // An attempt is bounded by the request timeout; the wait between attempts by
            // retry_max. Past both (plus slack) the shipper is stuck.
            deadline: Some(self.cfg.timeout + self.cfg.retry_max + Duration::from_secs(10)),
            last_success: self.last_success,
            last_error: self.last_error.clone(),
            detail: ChildDetail::Shipper(self.stats.clone()),
        })
    }
}
