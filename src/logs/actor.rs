//! The log actor: schedules the [`Follower`], asks the server for its log settings (a
//! short connection of its own: at start, every 10 min, and when the log is not
//! found), and hands each batch to the spool together with the position after it (one
//! SQLite transaction). While the spool stores a batch, the next one is read (when more
//! is ready), so parsing and storing overlap; it is handed over once the spool took
//! the last. Memory stays at two batches however far behind the reader is, and nothing
//! read is dropped while the spool is away. Nor is more read while the spool holds 40 %
//! of its cap in events (until it is below 30 %): a log far behind (or a listener away)
//! would otherwise fill the spool until it evicts what it read, where the file keeps it.

use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use slog::{info, warn, Logger};

use super::follow::{Follower, Polled, Read, CHECKPOINT};
use super::plan::server_settings;
use super::plan::Saved;
use crate::config::Config;
use crate::db::cycle_limit;
use crate::db::{Db, DbError};
use crate::fault;
use crate::model::{Backlog, ChildDetail, ExitGuard, Health, Ping, Route};
use crate::spool::handoff::{hand_over, Handed, Handoff, HandsOver};
use crate::spool::{self, SpoolActor};

/// Wait between polls when the reader is at the end of the log.
const POLL: Duration = Duration::from_millis(200);
/// How often the server's log settings are asked again.
const SETTINGS_EVERY: Duration = Duration::from_secs(600);
/// After a failure to find the log or to ask the server.
const RETRY: Duration = Duration::from_secs(5);
/// The source's name (in loss reports).
const SOURCE: &str = "pg_log";
/// Reading pauses while the spool holds this share of `buffer.max_bytes` in events…
const PAUSE_AT: (u64, u64) = (4, 10);
/// …and resumes once it holds less than this share.
const RESUME_BELOW: (u64, u64) = (3, 10);

/// Whether a batch of the log is on its way to the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handing {
    /// None is.
    Nothing,
    /// One is, and more was ready to read right after it.
    WithMore,
    /// One is, and it was all there was to read.
    Last,
}

/// Follows the server log.
pub struct LogReader {
    follower: Follower,
    db: Rc<Db>,
    limit: Duration,
    /// Why the server's log settings could not be read last time (logged once).
    settings_error: Option<String>,
    settings_due: Instant,
    asking: bool,
    /// The batch on its way to the spool (one at a time).
    handoff: Handoff,
    /// Whether a batch is on its way to the spool, and whether more was ready after it.
    handing: Handing,
    /// The batch read while the one on its way is stored: handed over next.
    ahead: Option<Read>,
    /// `buffer.max_bytes` (0: no cap, never paused).
    spool_cap: u64,
    progress: Instant,
    last_success: Option<chrono::DateTime<Utc>>,
    last_error: Option<String>,
    log: Logger,
    _guard: ExitGuard,
}

impl LogReader {
    /// Builds the actor; reads the stored position from the spool.
    pub fn new(
        config: &Config,
        db: Db,
        spool: Route<SpoolActor>,
        log: Logger,
        guard: ExitGuard,
    ) -> LogReader {
        let saved: Saved = spool::read_checkpoint(&config.agent.state_dir, CHECKPOINT)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        LogReader {
            follower: Follower::new(config, saved, log.clone())
                .share_plans(db.server().plan_shapes().clone()),
            db: Rc::new(db),
            limit: cycle_limit(&config.database),
            settings_error: None,
            settings_due: Instant::now(),
            asking: false,
            handoff: Handoff::new(spool, log.clone(), SOURCE, &config.id_host(), usize::MAX)
                .for_server(config.server_name())
                .recycling(),
            handing: Handing::Nothing,
            ahead: None,
            spool_cap: config.buffer.max_bytes,
            progress: Instant::now(),
            last_success: None,
            last_error: None,
            log,
            _guard: guard,
        }
    }

    fn ask_server(&mut self, ctx: &mut Context<Self>) {
        self.asking = true;
        let db = self.db.clone();
        let limit = self.limit;
        let fut = async move {
            match tokio::time::timeout(limit, server_settings(&db)).await {
                Ok(r) => r,
                Err(_) => Err(DbError::Timeout(limit)),
            }
        };
        ctx.spawn(fut.into_actor(self).map(|res, act, _| {
            act.asking = false;
            match res {
                Ok(s) => {
                    act.settings_error = None;
                    act.settings_due = Instant::now() + SETTINGS_EVERY;
                    act.follower.server_settings(s);
                }
                Err(e) => {
                    act.settings_due = Instant::now() + RETRY;
                    // Once per distinct reason, at warning level: it is why no log is read.
                    let why = e.to_string();
                    if act.settings_error.as_deref() != Some(why.as_str()) {
                        warn!(act.log, "log_settings_unavailable"; "error" => &why);
                        act.settings_error = Some(why);
                    }
                }
            }
            act.follower.replan();
        }));
    }

    /// One poll: read, hand over; or schedule the next.
    fn step(&mut self, ctx: &mut Context<Self>) {
        self.progress = Instant::now();
        if let Some(f) = fault::take("pg_log") {
            fault::inject("pg_log", f);
        }
        if self.follower.needs_server() && !self.asking && Instant::now() >= self.settings_due {
            self.ask_server(ctx);
        }
        if !self.follower.has_plan() && !self.asking {
            self.follower.replan();
        }
        let polled = match self.ahead.take() {
            Some(r) => Polled::Read(r),
            None => self.follower.poll(),
        };
        let wait = match polled {
            // While the server is being asked, look again soon.
            Polled::NoPlan if self.asking => POLL,
            Polled::NoPlan => RETRY,
            Polled::Unavailable { error } => {
                if let Some(e) = error {
                    self.last_error = Some(e);
                    // Ask the server again: the log may have moved.
                    self.settings_due = Instant::now();
                }
                RETRY
            }
            Polled::Idle { more: true } => Duration::ZERO,
            Polled::Idle { more: false } => POLL,
            Polled::Read(r) => return self.hand(r, ctx),
        };
        ctx.run_later(wait, |a, ctx| a.step(ctx));
    }

    /// Hands `r` to the spool and, when more was ready, reads the next batch while the
    /// spool stores it (parsing and storing overlap; one batch is read ahead at most).
    fn hand(&mut self, r: Read, ctx: &mut Context<Self>) {
        self.handoff.keep(r.events, r.checkpoint);
        self.handing = if r.more {
            Handing::WithMore
        } else {
            Handing::Last
        };
        hand_over(self, ctx);
        if r.more && self.ahead.is_none() {
            // Anything else the poll found (nothing new, an error) is found again by
            // the next one.
            if let Polled::Read(next) = self.follower.poll() {
                self.ahead = Some(next);
            }
        }
    }
}

impl HandsOver for LogReader {
    fn handoff(&mut self) -> &mut Handoff {
        &mut self.handoff
    }

    /// Reading resumes once the spool took the batch.
    fn handed(&mut self, outcome: &Handed, ctx: &mut Context<Self>) {
        self.progress = Instant::now();
        match outcome {
            Handed::Failed(e) => {
                self.follower.stats.spool_errors_total += 1;
                self.last_error = Some(e.to_string());
            }
            Handed::Delivered(n, backlog) => {
                let more = match std::mem::replace(&mut self.handing, Handing::Nothing) {
                    Handing::Nothing => return,
                    Handing::WithMore => true,
                    Handing::Last => false,
                };
                self.follower.committed(*n);
                let spare = self.handoff.spare();
                self.follower.recycle(spare, more || self.ahead.is_some());
                self.last_success = Some(Utc::now());
                self.last_error = None;
                let wait = if more || self.ahead.is_some() {
                    Duration::ZERO
                } else {
                    POLL
                };
                self.room(*backlog, wait, ctx);
            }
        }
    }
}

impl LogReader {
    /// While reading waits for the spool: asks it for its backlog (no hand-over is on its
    /// way to answer with it), then goes on as [`LogReader::room`] says.
    fn when_room(&mut self, wait: Duration, ctx: &mut Context<Self>) {
        let spool = self.handoff.spool.get();
        let (Some(spool), true) = (spool, self.spool_cap > 0) else {
            ctx.run_later(wait, |a, ctx| a.step(ctx));
            return;
        };
        ctx.spawn(
            spool
                .send(Backlog)
                .into_actor(self)
                .map(move |res, act, ctx| {
                    act.progress = Instant::now();
                    // A spool that does not answer is not full: the next hand-over
                    // fails and is retried like any other.
                    act.room(res.unwrap_or(0), wait, ctx);
                }),
        );
    }

    /// Reads on after `wait` once the spool has room: while it holds [`PAUSE_AT`] of its
    /// cap in events (until below [`RESUME_BELOW`]), reading waits and asks again every
    /// [`POLL`]. `held` is the spool's backlog as its answer to the last hand-over (or to
    /// [`Backlog`]) gave it: one round trip per batch, not two.
    fn room(&mut self, held: u64, wait: Duration, ctx: &mut Context<Self>) {
        if self.spool_cap > 0 {
            let (num, den) = if self.follower.stats.waiting_for_spool {
                RESUME_BELOW
            } else {
                PAUSE_AT
            };
            let limit = self.spool_cap / den * num;
            let stats = &mut self.follower.stats;
            if held >= limit {
                if !stats.waiting_for_spool {
                    stats.waiting_for_spool = true;
                    stats.spool_waits_total += 1;
                    info!(self.log, "log_reading_paused"; "spooled_bytes" => held, "buffer_max_bytes" => self.spool_cap,
                          "effect" => "the log is read on once the spool has shipped events (the file keeps them; nothing is evicted for them)");
                }
                ctx.run_later(POLL, |a, ctx| a.when_room(Duration::ZERO, ctx));
                return;
            }
            if stats.waiting_for_spool {
                stats.waiting_for_spool = false;
                info!(self.log, "log_reading_resumed"; "spooled_bytes" => held);
            }
        }
        if wait.is_zero() {
            // At once: a timer of zero still waits for the runtime's next tick (up to a
            // millisecond, per batch).
            self.step(ctx);
        } else {
            ctx.run_later(wait, |a, ctx| a.step(ctx));
        }
    }
}

impl Actor for LogReader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.step(ctx);
    }
}

impl Handler<Ping> for LogReader {
    type Result = MessageResult<Ping>;

    fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> Self::Result {
        MessageResult(Health {
            progress: self.progress,
            deadline: Some(Duration::from_secs(60) + self.limit),
            last_success: self.last_success,
            last_error: self.last_error.clone(),
            detail: ChildDetail::LogReader(self.follower.stats.clone()),
        })
    }
}
