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
use super::delivery::{Delivery, Go, IDLE_POLL};
use super::transport::Transport;
use super::{Origin, Post};
use crate::config::{BreakerConfig, ListenerConfig};
use crate::model::{
    ChildDetail, ExitGuard, Flush, FlushOutcome, Health, Output, Ping, Route, SpoolNews,
};
use crate::spool::SpoolActor;

/// How long a shipper woken by the spool waits before it takes a batch: the
/// collectors tick together, and their hand-overs a few milliseconds apart then go as
/// one batch, not one each (a batch is two spool commits and a request: disk writes
/// 1,640 → 1,460 KB per cycle in `scripts/overhead.sh`).
const LINGER: Duration = Duration::from_millis(100);

/// Where a shipper is between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// An attempt is on its way; `news`: events arrived meanwhile (it may have found
    /// the spool empty just before they did).
    Sending {
        /// Events arrived during the attempt.
        news: bool,
    },
    /// The spool had nothing for it last time: news of events starts an attempt (after
    /// [`LINGER`]).
    Idle,
    /// The next attempt is scheduled (a retry, the breaker, or right away).
    Scheduled,
}

/// Ships the spool to one output.
pub struct ShipperActor {
    output: Output,
    cfg: ListenerConfig,
    transport: Rc<dyn Transport>,
    spool: Route<SpoolActor>,
    /// What the outcomes mean (plain, see [`Delivery`]).
    delivery: Delivery,
    /// Sending, sleeping with nothing to send, or waiting for its next attempt.
    phase: Phase,
    /// The next attempt scheduled (one at a time).
    next: Option<SpawnHandle>,
    /// How long it sleeps with nothing to send when no news comes ([`IDLE_POLL`]).
    idle_poll: Duration,
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
        let naming = output.naming();
        ShipperActor {
            output,
            delivery: Delivery::new(&cfg, &breaker, log.clone()).named(naming),
            cfg,
            transport,
            spool,
            phase: Phase::Scheduled,
            next: None,
            idle_poll: IDLE_POLL,
            progress: Instant::now(),
            flush: None,
            log,
            _guard: guard,
        }
    }

    fn attempt(&mut self, ctx: &mut Context<Self>) {
        if matches!(self.phase, Phase::Sending { .. }) {
            return;
        }
        self.phase = Phase::Scheduled;
        let probe = match self.delivery.go(Instant::now()) {
            Go::Send { probe } => probe,
            Go::Wait(d) => return self.again(d, ctx),
        };
        self.phase = Phase::Sending { news: false };
        let job = Job {
            output: self.output,
            spool: self.spool.clone(),
            transport: self.transport.clone(),
            max_events: self.cfg.batch_max_events,
            max_bytes: self.cfg.batch_max_bytes,
            delivered_unrecorded: self.delivery.delivered_unrecorded(),
            log: self.log.clone(),
            notify: Some(ctx.address().recipient()),
        };
        ctx.spawn(job.run().into_actor(self).map(move |a, act, ctx| {
            act.after(a, probe, ctx);
        }));
    }

    fn after(&mut self, attempt: Attempt, probe: bool, ctx: &mut Context<Self>) {
        self.progress = Instant::now();
        let news = matches!(self.phase, Phase::Sending { news: true });
        let next = self
            .delivery
            .after(attempt, probe, Instant::now(), Utc::now());
        if let Some((_, outcome, _)) = self.flush.as_mut() {
            outcome.batches += u64::from(next.sent);
        }
        if next.idle {
            self.finish_flush(true);
        }
        self.phase = if next.idle {
            Phase::Idle
        } else {
            Phase::Scheduled
        };
        let wait = match (next.idle, news) {
            (true, true) => LINGER,
            (true, false) => self.idle_poll,
            _ => next.wait,
        };
        self.again(wait, ctx);
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
        if let Some(h) = self.next.take() {
            ctx.cancel_future(h);
        }
        self.next = Some(ctx.run_later(wait, |act, ctx| {
            act.next = None;
            act.attempt(ctx);
        }));
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

impl Handler<SpoolNews> for ShipperActor {
    type Result = ();

    /// Events arrived while it slept with nothing to send: send them after `LINGER`.
    /// (While it waits for a retry or the breaker, the news changes nothing.)
    fn handle(&mut self, _: SpoolNews, ctx: &mut Context<Self>) {
        match self.phase {
            Phase::Sending { .. } => self.phase = Phase::Sending { news: true },
            Phase::Idle => {
                self.phase = Phase::Scheduled;
                self.again(LINGER, ctx);
            }
            Phase::Scheduled => {}
        }
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

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::model::{Batch, ChildId, Enqueue, Event, EventKind};
    use crate::shipper::transport::{SendFuture, Transport};

    /// Takes every batch; remembers the ids.
    struct Taking(Rc<RefCell<Vec<String>>>);

    impl Transport for Taking {
        fn send<'a>(&'a self, batch: &'a Batch) -> SendFuture<'a> {
            self.0
                .borrow_mut()
                .extend(batch.events.iter().map(|e| e.id.clone()));
            Box::pin(async { Ok(200) })
        }
    }

    /// Test-only: the shipper sleeps with nothing to send.
    #[derive(Message)]
    #[rtype(result = "bool")]
    struct Sleeping;
    impl Handler<Sleeping> for ShipperActor {
        type Result = bool;
        fn handle(&mut self, _: Sleeping, _: &mut Context<Self>) -> bool {
            self.phase == Phase::Idle
        }
    }

    fn events(prefix: &str, n: usize) -> Vec<Event> {
        (0..n)
            .map(|i| {
                Event::new(
                    format!("{prefix}{i}"),
                    EventKind::System,
                    Utc::now(),
                    &serde_json::json!({ "i": i }),
                )
                .expect("event")
            })
            .collect()
    }

    async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Idle shippers poll only every hour here: events appended while they sleep still
    /// go out (after the linger), because the spool tells each output's shipper. With
    /// two outputs, one shipper's request must not unregister the other.
    #[test]
    fn the_spool_wakes_every_idle_shipper_when_events_arrive() {
        let dir = tempfile::tempdir().expect("tempdir");
        actix::System::new().block_on(async move {
            let log = slog::Logger::root(slog::Discard, slog::o!());
            let guard = ExitGuard::unwatched;
            let spool = SpoolActor::new(
                dir.path().to_path_buf(),
                0,
                "h".into(),
                Output::ALL.to_vec(),
                log.clone(),
                guard(ChildId::Spool),
            )
            .start();
            let route = Route::default();
            route.set(Some(spool.clone()));
            let breaker = BreakerConfig {
                fail_max: 5,
                reset_timeout: Duration::from_secs(30),
            };
            let mut shippers = Vec::new();
            for output in Output::ALL {
                let taken = Rc::new(RefCell::new(Vec::new()));
                let mut shipper = ShipperActor::with_transport(
                    output,
                    crate::config::OtlpConfig::default().delivery,
                    breaker.clone(),
                    Rc::new(Taking(taken.clone())),
                    route.clone(),
                    log.clone(),
                    guard(ChildId::Shipper(output)),
                );
                shipper.idle_poll = Duration::from_secs(3600);
                shippers.push((shipper.start(), taken));
            }
            for round in 0..3 {
                for (shipper, _) in &shippers {
                    until("the shippers to sleep", async || {
                        shipper.send(Sleeping).await.expect("shipper")
                    })
                    .await;
                }
                let batch = events(&format!("r{round}-"), 7);
                spool
                    .send(Enqueue {
                        events: std::sync::Arc::new(batch),
                        checkpoint: None,
                    })
                    .await
                    .expect("spool")
                    .expect("append");
                for (_, taken) in &shippers {
                    until("the events to be sent", async || {
                        taken.borrow().len() == 7 * (round + 1)
                    })
                    .await;
                }
            }
            let want: Vec<String> = (0..3)
                .flat_map(|r| (0..7).map(move |i| format!("r{r}-{i}")))
                .collect();
            for (_, taken) in &shippers {
                assert_eq!(*taken.borrow(), want);
            }
            System::current().stop();
        });
    }
}
