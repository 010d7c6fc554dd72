//! The collector actor: a thin shell that schedules its source and delivers events.

use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use slog::{debug, warn, Logger};

use super::progress_deadline;
use crate::config::Config;
use crate::db::cycle_limit;
use crate::db::Db;
use crate::fault;
use crate::model::{ChildDetail, CollectorStats, Event, ExitGuard, FinishUp, Health, Ping, Route};
use crate::sources::outbox::{outbox, Backlog, Inbox};
use crate::sources::{CycleError, Source};
use crate::spool::handoff::{
    hand_over, log_overflow, Handed, Handoff, HandsOver, MAX_PENDING_BYTES,
};
use crate::spool::SpoolActor;

/// Collects one source every interval and hands the events to the spool.
pub struct CollectorActor {
    source: Box<dyn Source>,
    db: Rc<Db>,
    interval: Duration,
    limit: Duration,
    deadline: Duration,
    /// Events (and the source's state to store with them) the spool has not taken yet.
    handoff: Handoff,
    /// A cycle is running: the next tick is skipped rather than piling up queries.
    in_flight: bool,
    /// When the current tick started; the next one is an interval later.
    tick_started: Instant,
    /// When the next tick is due, and its handle (to bring it forward).
    next_tick_at: Instant,
    next_tick: Option<SpawnHandle>,
    stats: CollectorStats,
    progress: Instant,
    last_success: Option<chrono::DateTime<Utc>>,
    last_error: Option<String>,
    /// Shutting down: told when everything is handed to the spool.
    finishing: Option<tokio::sync::oneshot::Sender<()>>,
    /// The collector's end of the source's outbox, taken when the actor starts.
    inbox: Option<Inbox>,
    /// Where the outbox learns of the backlog (its chunks received and bytes waiting).
    backlog: Option<tokio::sync::watch::Sender<Backlog>>,
    chunks_received: u64,
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
        db: Db,
        spool: Route<SpoolActor>,
        log: Logger,
        guard: ExitGuard,
    ) -> CollectorActor {
        // The connections are shared by every collector (see `Db`).
        let db = Rc::new(db);
        let limit = source.cycle_limit(cycle_limit(&config.database));
        let cap = fault::backlog_cap(MAX_PENDING_BYTES);
        let mut handoff = Handoff::new(
            spool,
            log.clone(),
            source.kind().as_str(),
            &config.id_host(),
            cap,
        )
        .for_server(config.server_name());
        if source.tracks_shipped() {
            handoff = handoff.telling_losses();
        }
        // A source that hands over as it goes may send while the backlog is under half
        // its cap: what it reads next fits.
        let inbox = source.wants_outbox().then(|| {
            let (out, inbox) = outbox(cap / 2);
            source.set_outbox(out);
            inbox
        });
        CollectorActor {
            source,
            db,
            interval,
            limit,
            deadline: progress_deadline(interval, limit),
            handoff,
            in_flight: false,
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
            finishing: None,
            inbox,
            backlog: None,
            chunks_received: 0,
            log,
            _guard: guard,
        }
    }

    /// Keeps events for the spool and tells the source of any its cap dropped.
    fn keep(&mut self, events: Vec<Event>, checkpoint: Option<crate::model::Checkpoint>) {
        let dropped = self.handoff.keep(events, checkpoint);
        log_overflow(&self.log, dropped);
        self.tell_losses();
    }

    fn tell_losses(&mut self) {
        let lost = self.handoff.take_lost();
        if !lost.is_empty() {
            self.source.lost(&lost);
        }
    }

    /// Tells the source's outbox how far the backlog got.
    fn publish_backlog(&self) {
        if let Some(tx) = &self.backlog {
            tx.send_replace(Backlog {
                received: self.chunks_received,
                bytes: self.handoff.backlog_bytes(),
            });
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
                Err(_) => Err(CycleError::Timeout(limit)),
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

    fn finish(&mut self, res: Result<Vec<Event>, CycleError>, ctx: &mut Context<Self>) {
        self.in_flight = false;
        let wanted = self.tick_started + self.source.interval(self.interval);
        if wanted + Duration::from_millis(10) < self.next_tick_at {
            if let Some(h) = self.next_tick.take() {
                ctx.cancel_future(h);
            }
            self.schedule(ctx);
        }
        self.progress = Instant::now();
        self.stats
            .cycle_seconds
            .observe(self.tick_started.elapsed());
        self.stats.cycles_total += 1;
        crate::model::note_state(&self.log, &mut self.stats.source_state, self.source.state());
        self.stats.rows_skipped_total = self.source.rows_skipped();
        self.tell_board(&res);
        if let Some((events, identity)) = self.source.report() {
            self.stats.events_total += events.len() as u64;
            self.keep(events, Some(identity));
        }
        match res {
            Ok(events) => {
                debug!(self.log, "collect_cycle_done"; "events" => events.len());
                self.stats.events_total += events.len() as u64;
                self.last_success = Some(Utc::now());
                self.last_error = None;
                let checkpoint = self.source.checkpoint();
                self.keep(events, checkpoint);
            }
            Err(e) => {
                self.stats.cycle_errors_total += 1;
                warn!(self.log, "collect_cycle_failed"; "error" => %e, "retriable" => e.retriable());
                self.last_error = Some(e.to_string());
            }
        }
        hand_over(self, ctx);
        self.publish_backlog();
    }
}

impl CollectorActor {
    /// Whether the server answered, for the metrics page's `pg_up`: a database source's
    /// cycle that succeeded says yes, one that could not connect says no; other
    /// failures (a query refused, a timeout) say nothing of it.
    fn tell_board<T>(&self, res: &Result<T, CycleError>) {
        if self.source.kind() == crate::model::EventKind::System {
            return;
        }
        let up = match res {
            Ok(_) => true,
            Err(CycleError::Db(crate::db::DbError::Unreachable(_))) => false,
            Err(_) => return,
        };
        self.db
            .server()
            .board()
            .post(|p| &mut p.up, std::sync::Arc::new(up));
    }
}

/// The chunks a source sends through its outbox during a cycle.
struct Chunks(tokio::sync::mpsc::UnboundedReceiver<Vec<Event>>);

impl futures_core::Stream for Chunks {
    type Item = Vec<Event>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Vec<Event>>> {
        self.0.poll_recv(cx)
    }
}

impl StreamHandler<Vec<Event>> for CollectorActor {
    fn handle(&mut self, chunk: Vec<Event>, ctx: &mut Context<Self>) {
        self.stats.events_total += chunk.len() as u64;
        self.chunks_received += 1;
        self.keep(chunk, None);
        hand_over(self, ctx);
        self.publish_backlog();
    }

    /// The source is gone with the actor; nothing to do (the default stops the actor).
    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl HandsOver for CollectorActor {
    fn handoff(&mut self) -> &mut Handoff {
        &mut self.handoff
    }

    fn handed(&mut self, _: &Handed, _: &mut Context<Self>) {
        self.tell_losses();
        self.publish_backlog();
        if self.handoff.is_empty() {
            if let Some(tx) = self.finishing.take() {
                let _ = tx.send(());
            }
        }
    }
}

impl Handler<FinishUp> for CollectorActor {
    type Result = ResponseActFuture<Self, usize>;

    /// No more cycles; the source's work in progress joins what waits for the spool, and
    /// the answer comes when the spool took it all (or at the deadline).
    fn handle(&mut self, msg: FinishUp, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(h) = self.next_tick.take() {
            ctx.cancel_future(h);
        }
        let events = match self.source.finish() {
            Ok(events) => events,
            Err(e) => {
                warn!(self.log, "collect_cycle_failed"; "error" => %e, "retriable" => e.retriable());
                Vec::new()
            }
        };
        let n = events.len();
        if n > 0 {
            self.stats.events_total += n as u64;
            self.keep(events, None);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.handoff.is_empty() {
            let _ = tx.send(());
        } else {
            self.finishing = Some(tx);
            hand_over(self, ctx);
        }
        let wait = msg.deadline.saturating_duration_since(Instant::now());
        Box::pin(
            async move {
                let _ = tokio::time::timeout(wait, rx).await;
            }
            .into_actor(self)
            .map(move |_, act, _| {
                if !act.handoff.is_empty() {
                    warn!(act.log, "shutdown_flush_incomplete"; "reason" => "the spool did not take the collector's last events in time", "events" => act.handoff.waiting());
                }
                n
            }),
        )
    }
}

impl Actor for CollectorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(inbox) = self.inbox.take() {
            self.backlog = Some(inbox.backlog);
            ctx.add_stream(Chunks(inbox.chunks));
        }
        self.tick_started = Instant::now();
        self.tick(ctx);
        self.schedule(ctx);
    }
}

impl Handler<Ping> for CollectorActor {
    type Result = MessageResult<Ping>;

    fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> Self::Result {
        let mut stats = self.stats.clone();
        stats.pending_events = self.handoff.waiting();
        stats.dropped_events_total = self.handoff.dropped_total();
        MessageResult(Health {
            progress: self.progress,
            deadline: Some(self.deadline),
            last_success: self.last_success,
            last_error: self.last_error.clone(),
            detail: ChildDetail::Collector(stats),
        })
    }
}
