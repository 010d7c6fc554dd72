//! The shipper actor: asks the spool for the oldest batch, POSTs it, and does what the
//! answer means (see [`policy`](super::policy)): acknowledge, retry after a backoff (or
//! the listener's Retry-After), split and quarantine, or hold everything while the token
//! is refused. A circuit breaker stops requests after repeated failures and lets one
//! probe through per reset period. One request at a time, so batches arrive in order.

use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use slog::Logger;
use tokio::sync::oneshot;

use super::attempt::{Attempt, Job};
use super::delivery::{Delivery, Go, Naming};
use super::transport::Transport;
use super::{Origin, Post};
use crate::config::{BreakerConfig, ListenerConfig};
use crate::model::{ChildDetail, ExitGuard, Flush, FlushOutcome, Health, Output, Ping, Route};
use crate::spool::SpoolActor;

/// Ships the spool to one output.
pub struct ShipperActor {
    output: Output,
    cfg: ListenerConfig,
    transport: Rc<dyn Transport>,
    spool: Route<SpoolActor>,
    /// What the outcomes mean (plain, see [`Delivery`]).
    delivery: Delivery,
    busy: bool,
    progress: Instant,
    /// A final flush in progress: its deadline, its outcome so far and who waits for it.
    flush: Option<(Instant, FlushOutcome, oneshot::Sender<FlushOutcome>)>,
    log: Logger,
    _guard: ExitGuard,
}

impl ShipperActor {
    /// Builds the listener's shipper; call on the thread it runs on (the HTTP client is
    /// not `Send`).
    pub fn new(
        cfg: ListenerConfig,
        breaker: BreakerConfig,
        origin: Origin,
        spool: Route<SpoolActor>,
        log: Logger,
        guard: ExitGuard,
    ) -> ShipperActor {
        let transport = Rc::new(Post::new(&cfg, origin));
        ShipperActor::with_transport(Output::Listener, cfg, breaker, transport, spool, log, guard)
    }

    /// Builds a shipper for `output` delivering through `transport` with the delivery
    /// settings of `cfg` (batch sizes, timeout, retry).
    pub fn with_transport(
        output: Output,
        cfg: ListenerConfig,
        breaker: BreakerConfig,
        transport: Rc<dyn Transport>,
        spool: Route<SpoolActor>,
        log: Logger,
        guard: ExitGuard,
    ) -> ShipperActor {
        let naming = match output {
            Output::Listener => Naming::LISTENER,
            Output::Otlp => Naming::OTLP,
        };
        ShipperActor {
            output,
            delivery: Delivery::new(&cfg, &breaker, log.clone()).named(naming),
            cfg,
            transport,
            spool,
            busy: false,
            progress: Instant::now(),
            flush: None,
            log,
            _guard: guard,
        }
    }

    fn attempt(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        let probe = match self.delivery.go(Instant::now()) {
            Go::Send { probe } => probe,
            Go::Wait(d) => return self.again(d, ctx),
        };
        self.busy = true;
        let job = Job {
            output: self.output,
            spool: self.spool.clone(),
            transport: self.transport.clone(),
            max_events: self.cfg.batch_max_events,
            max_bytes: self.cfg.batch_max_bytes,
            delivered_unrecorded: self.delivery.delivered_unrecorded(),
            log: self.log.clone(),
        };
        ctx.spawn(job.run().into_actor(self).map(move |a, act, ctx| {
            act.after(a, probe, ctx);
        }));
    }

    fn after(&mut self, attempt: Attempt, probe: bool, ctx: &mut Context<Self>) {
        self.progress = Instant::now();
        self.busy = false;
        let next = self
            .delivery
            .after(attempt, probe, Instant::now(), Utc::now());
        if let Some((_, outcome, _)) = self.flush.as_mut() {
            outcome.batches += u64::from(next.sent);
        }
        if next.idle {
            self.finish_flush(true);
        }
        self.again(next.wait, ctx);
    }

    /// The next attempt after `wait`; during the final flush never past its deadline.
    fn again(&mut self, wait: Duration, ctx: &mut Context<Self>) {
        let wait = match &self.flush {
            Some((deadline, _, _)) => wait.min(deadline.saturating_duration_since(Instant::now())),
            None => wait,
        };
        if self
            .flush
            .as_ref()
            .is_some_and(|(deadline, _, _)| Instant::now() >= *deadline)
        {
            self.finish_flush(false);
        }
        ctx.run_later(wait, |act, ctx| act.attempt(ctx));
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
        self.delivery.hurry();
        self.attempt(ctx);
        Box::pin(async move { rx.await.unwrap_or_default() })
    }
}

impl Handler<Ping> for ShipperActor {
    type Result = MessageResult<Ping>;

    fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> Self::Result {
        let now = Instant::now();
        let stats = self.delivery.stats(now);
        MessageResult(Health {
            progress: self.progress,
            // An attempt is bounded by the request timeout (a split by one per event at
            // most); the wait between attempts by retry_max or the breaker's reset.
            deadline: Some(
                self.cfg.timeout * (self.cfg.batch_max_events.min(64) + 1)
                    + self.cfg.retry_max
                    + self.delivery.breaker_reset(now)
                    + Duration::from_secs(10),
            ),
            last_success: self.delivery.last_success,
            last_error: self.delivery.last_error.clone(),
            detail: ChildDetail::Shipper(stats),
        })
    }
}
