//! The collector actor: a thin shell that schedules its source and delivers events.

use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use slog::{debug, error, warn, Logger};

use super::{cycle_limit, progress_deadline, push_capped_reported, DropReport, MAX_PENDING_EVENTS};
use crate::buffer::BufferActor;
use crate::config::Config;
use crate::db::{Db, DbError};
use crate::fault;
use crate::model::{
    Checkpoint, ChildDetail, CollectorStats, Enqueue, Event, ExitGuard, Health, Ping, Route,
};
use crate::sources::Source;

/// Collects one source every interval and hands the events to the spool.
pub struct CollectorActor {
    source: Box<dyn Source>,
    db: Rc<Db>,
    interval: Duration,
    limit: Duration,
    deadline: Duration,
    buffer: Route<BufferActor>,
    /// Events the spool has not taken yet (it is restarting or failing).
    pending: Vec<Event>,
    /// The source's latest state, written with the pending events.
    pending_checkpoint: Option<Checkpoint>,
    /// Events dropped from the backlog and not yet reported to the spool.
    drops: DropReport,
    host: String,
    /// A cycle is running: the next tick is skipped rather than piling up queries.
    in_flight: bool,
    /// An `Enqueue` is on its way: events are not sent twice.
    delivering: bool,
    /// When the current tick started; the next one is an interval later.
    tick_started: Instant,
    /// When the next tick is due, and its handle (to bring it forward).
    next_tick_at: Instant,
    next_tick: Option<SpawnHandle>,
    stats: CollectorStats,
    progress: Instant,
    last_success: Option<chrono::DateTime<Utc>>,
    last_error: Option<String>,
    log: Logger,
    _guard: ExitGuard,
}

impl CollectorActor {
    /// Builds the collector; call on the thread it will run on (the pool's connections
    /// are driven by that thread's runtime).
    pub fn new(
        source: Box<dyn Source>,
        interval: Duration,
        config: &Config,
        buffer: Route<BufferActor>,
        log: Logger,
        guard: ExitGuard,
    ) -> CollectorActor {
        // One connection per collector: a collector runs one statement at a time, and
        // the supervisor keeps the number of collectors within database.pool_max_size.
        let db = Rc::new(Db::new(&config.database, 1, &log));
        CollectorActor {
            source,
            db,
            interval,
            limit: cycle_limit(&config.database),
            deadline: progress_deadline(interval, &config.database),
            buffer,
            pending: Vec::new(),
            pending_checkpoint: None,
            drops: DropReport::default(),
            host: config.agent.hostname.clone(),
            in_flight: false,
            delivering: false,
            tick_started: Instant::now(),
            next_tick_at: Instant::now(),
            next_tick: None,
            stats: CollectorStats {
                interval_s: interval.as_secs(),
                ..Default::default()
            },
            progress: Instant::now(),
            last_success: None,
            last_error: None,
            log,
            _guard: guard,
        }
    }

    fn name(&self) -> &'static str {
        self.source.kind().as_str()
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        match fault::take(self.name()) {
            // A cycle that never finishes, as a future stuck on a dead socket would be.
            Some(fault::Fault::Stall) => {
                self.in_flight = true;
                return;
            }
            Some(f) => fault::inject(self.name(), f),
            None => {}
        }
        if self.in_flight {
            self.stats.cycles_skipped_total += 1;
            warn!(self.log, "collect_cycle_skipped"; "reason" => "previous cycle still running");
            return;
        }
        self.in_flight = true;
        let limit = self.limit;
        let fut = self.source.collect(self.db.clone());
        let fut = async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => Err(DbError::Timeout(limit)),
            }
        };
        ctx.spawn(
            fut.into_actor(self)
                .map(|res, act, ctx| act.finish(res, ctx)),
        );
    }

    /// Schedules the next tick one interval after the last one started. Ticks keep
    /// their rhythm whether or not a cycle finished. The source may ask for a shorter
    /// interval (locks while blocking is seen); `finish` then brings the tick forward.
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        let at = self.tick_started + self.source.interval(self.interval);
        self.next_tick_at = at;
        self.next_tick = Some(ctx.run_later(
            at.saturating_duration_since(Instant::now()),
            |act, ctx| {
                act.tick_started = Instant::now();
                act.tick(ctx);
                act.schedule(ctx);
            },
        ));
    }

    fn finish(&mut self, res: Result<Vec<Event>, DbError>, ctx: &mut Context<Self>) {
        self.in_flight = false;
        let wanted = self.tick_started + self.source.interval(self.interval);
        if wanted + Duration::from_millis(10) < self.next_tick_at {
            if let Some(h) = self.next_tick.take() {
                ctx.cancel_future(h);
            }
            self.schedule(ctx);
        }
        self.progress = Instant::now();
        self.stats.cycles_total += 1;
        crate::sources::note_state(&self.log, &mut self.stats.source_state, self.source.state());
        self.stats.rows_skipped_total = self.source.rows_skipped();
        match res {
            Ok(events) => {
                debug!(self.log, "collect_cycle_done"; "events" => events.len());
                self.stats.events_total += events.len() as u64;
                self.last_success = Some(Utc::now());
                self.last_error = None;
                if let Some(c) = self.source.checkpoint() {
                    self.pending_checkpoint = Some(c);
                }
                self.keep(events);
            }
            Err(e) => {
                self.stats.cycle_errors_total += 1;
                warn!(self.log, "collect_cycle_failed"; "error" => %e);
                self.last_error = Some(e.to_string());
            }
        }
        self.deliver(ctx);
    }

    fn keep(&mut self, events: Vec<Event>) {
        let dropped = push_capped_reported(
            &mut self.pending,
            events,
            MAX_PENDING_EVENTS,
            &mut self.drops,
        );
        if dropped > 0 {
            self.stats.dropped_events_total += dropped as u64;
            error!(self.log, "collector_backlog_overflow"; "dropped" => dropped,
                   "effect" => "reported to the listener as an agent event once the spool takes events again");
        }
    }

    /// Hands the backlog to the spool. On failure the events go back to the front of the
    /// backlog and delivery is retried in a second (the spool may be restarting).
    fn deliver(&mut self, ctx: &mut Context<Self>) {
        if (self.pending.is_empty() && self.pending_checkpoint.is_none()) || self.delivering {
            return;
        }
        let Some(buffer) = self.buffer.get() else {
            ctx.run_later(Duration::from_secs(1), |act, ctx| act.deliver(ctx));
            return;
        };
        let events = std::mem::take(&mut self.pending);
        let checkpoint = self.pending_checkpoint.take();
        // The loss report goes first, so the spool has it whatever comes next.
        let report = self.drops.event(self.name(), &self.host);
        let reported = self.drops.clone();
        let msg = Enqueue {
            events: report.into_iter().chain(events.iter().cloned()).collect(),
            checkpoint: checkpoint.clone(),
        };
        self.delivering = true;
        ctx.spawn(buffer.send(msg).into_actor(self).map(move |res, act, ctx| {
            act.delivering = false;
            let err = match res {
                Ok(Ok(())) => {
                    // Reported: count only what was dropped since.
                    act.drops.dropped -= reported.dropped.min(act.drops.dropped);
                    if act.drops.dropped == 0 {
                        act.drops = DropReport::default();
                    }
                    return act.deliver(ctx);
                }
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            warn!(act.log, "spool_enqueue_failed"; "error" => err, "events" => events.len());
            let newer = std::mem::replace(&mut act.pending, events);
            act.keep(newer);
            if act.pending_checkpoint.is_none() {
                act.pending_checkpoint = checkpoint;
            }
            ctx.run_later(Duration::from_secs(1), |act, ctx| act.deliver(ctx));
        }));
    }
}

impl Actor for CollectorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.tick_started = Instant::now();
        self.tick(ctx);
        self.schedule(ctx);
    }
}

impl Handler<Ping> for CollectorActor {
    type Result = MessageResult<Ping>;

    fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> Self::Result {
        let mut stats = self.stats.clone();
        stats.pending_events = self.pending.len();
        MessageResult(Health {
            progress: self.progress,
            deadline: Some(self.deadline),
            last_success: self.last_success,
            last_error: self.last_error.clone(),
            detail: ChildDetail::Collector(stats),
        })
    }
}
