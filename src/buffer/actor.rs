//! The buffer actor: owns the [`Spool`] on its own thread, so SQLite's blocking I/O never
//! stalls a collector or the shipper.

use std::path::PathBuf;
use std::time::Instant;

use actix::prelude::*;
use chrono::Utc;
use slog::{error, info, Logger};

use super::Spool;
use crate::model::{
    Ack, AckRows, Batch, ChildDetail, Enqueue, ExitGuard, Health, NextBatch, Ping, QuarantineRows,
    SpoolError, SpoolStats,
};

/// The spool's actor.
pub struct BufferActor {
    dir: PathBuf,
    spool: Option<Spool>,
    errors_total: u64,
    last_error: Option<String>,
    last_success: Option<chrono::DateTime<Utc>>,
    log: Logger,
    _guard: ExitGuard,
}

impl BufferActor {
    /// A buffer over the spool in `dir` (opened when the actor starts).
    pub fn new(dir: PathBuf, log: Logger, guard: ExitGuard) -> BufferActor {
        BufferActor {
            dir,
            spool: None,
            errors_total: 0,
            last_error: None,
            last_success: None,
            log,
            _guard: guard,
        }
    }

    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut Spool) -> Result<T, SpoolError>,
    ) -> Result<T, SpoolError> {
        let spool = self
            .spool
            .as_mut()
            .ok_or_else(|| SpoolError::NotOpen("spool is not open".into()))?;
        match f(spool) {
            Ok(v) => {
                self.last_success = Some(Utc::now());
                self.last_error = None;
                Ok(v)
            }
            Err(e) => {
                self.errors_total += 1;
                error!(self.log, "spool_error"; "error" => %e);
                self.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }
}

impl Actor for BufferActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        match Spool::open(&self.dir) {
            Ok(s) => {
                let depth = s.stats().map(|st| st.depth).unwrap_or(0);
                info!(self.log, "spool_opened"; "path" => %s.path().display(), "depth" => depth);
                self.spool = Some(s);
            }
            Err(e) => {
                // Stopping hands the problem to the supervisor, which retries with
                // backoff and shows the error in status; collectors keep their events
                // in memory meanwhile.
                error!(self.log, "spool_open_failed"; "dir" => %self.dir.display(), "error" => %e);
                ctx.stop();
            }
        }
    }
}

impl Handler<Enqueue> for BufferActor {
    type Result = Result<(), SpoolError>;

    fn handle(&mut self, msg: Enqueue, _: &mut Context<Self>) -> Self::Result {
        self.with(|s| s.append_with(&msg.events, msg.checkpoint.as_ref()))
    }
}

impl Handler<NextBatch> for BufferActor {
    type Result = Result<Option<Batch>, SpoolError>;

    fn handle(&mut self, msg: NextBatch, _: &mut Context<Self>) -> Self::Result {
        self.with(|s| s.next_batch(msg.max_events))
    }
}

impl Handler<Ack> for BufferActor {
    type Result = Result<u64, SpoolError>;

    fn handle(&mut self, msg: Ack, _: &mut Context<Self>) -> Self::Result {
        self.with(|s| s.ack(&msg.batch_id))
    }
}

impl Handler<AckRows> for BufferActor {
    type Result = Result<u64, SpoolError>;

    fn handle(&mut self, msg: AckRows, _: &mut Context<Self>) -> Self::Result {
        self.with(|s| s.ack_rows(&msg.seqs))
    }
}

impl Handler<QuarantineRows> for BufferActor {
    type Result = Result<u64, SpoolError>;

    fn handle(&mut self, msg: QuarantineRows, _: &mut Context<Self>) -> Self::Result {
        let n = self.with(|s| s.quarantine(&msg.seqs, &msg.reason))?;
        slog::warn!(self.log, "events_quarantined"; "events" => n, "reason" => &msg.reason);
        Ok(n)
    }
}

impl Handler<Ping> for BufferActor {
    type Result = MessageResult<Ping>;

    fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> Self::Result {
        let mut stats = match self.spool.as_ref().map(Spool::stats) {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                self.last_error = Some(e.to_string());
                SpoolStats::default()
            }
            None => SpoolStats::default(),
        };
        stats.errors_total = self.errors_total;
        MessageResult(Health {
            progress: Instant::now(),
            deadline: None,
            last_success: self.last_success,
            last_error: self.last_error.clone(),
            detail: ChildDetail::Buffer(stats),
        })
    }
}
