//! The spool actor: owns the [`Spool`] on its own thread, so SQLite's blocking I/O never
//! stalls a collector or the shipper.

use std::path::PathBuf;
use std::time::Instant;

use actix::prelude::*;
use chrono::Utc;
use slog::{error, info, Logger};

use super::Spool;
use crate::catalogue::AgentEvent;
use crate::model::{
    Ack, AckRows, Backlog, Batch, ChildDetail, Enqueue, ExitGuard, Health, NextBatch, Output, Ping,
    QuarantineRows, SpoolError, SpoolNews, SpoolStats,
};

/// The spool's actor.
pub struct SpoolActor {
    dir: PathBuf,
    max_bytes: u64,
    host: String,
    outputs: Vec<Output>,
    spool: Option<Spool>,
    errors_total: u64,
    last_error: Option<String>,
    last_success: Option<chrono::DateTime<Utc>>,
    /// Shippers that found nothing to send, told once when events arrive.
    idle: Vec<(Output, Recipient<SpoolNews>)>,
    /// The spool's depth in the last status dump before this start.
    last_depth: Option<u64>,
    log: Logger,
    _guard: ExitGuard,
}

impl SpoolActor {
    /// A buffer over the spool in `dir` (opened when the actor starts).
    pub fn new(
        dir: PathBuf,
        max_bytes: u64,
        host: String,
        outputs: Vec<Output>,
        log: Logger,
        guard: ExitGuard,
    ) -> SpoolActor {
        SpoolActor {
            dir,
            max_bytes,
            host,
            outputs,
            spool: None,
            errors_total: 0,
            last_error: None,
            last_success: None,
            idle: Vec::new(),
            last_depth: None,
            log,
            _guard: guard,
        }
    }

    /// With the spool's depth the last status dump counted: the loss reported if the file
    /// was emptied while the agent was down.
    pub fn last_depth(mut self, depth: Option<u64>) -> SpoolActor {
        self.last_depth = depth;
        self
    }

    /// Events were added: every shipper waiting for some is told (once).
    fn tell_idle(&mut self) {
        for (_, r) in self.idle.drain(..) {
            r.do_send(SpoolNews);
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

impl SpoolActor {
    /// Once a second: is the spool file still the one open? Deleted or replaced under
    /// the running agent, everything it holds is copied to a new file at its path (so
    /// a restart finds it) and the event is reported, loud and shipped.
    fn check_file(&mut self) {
        let Some(spool) = self.spool.as_mut() else {
            return;
        };
        if spool.clobbered() {
            self.rescue();
            return;
        }
        if !spool.detached() {
            return;
        }
        let done = spool
            .reattach()
            .map(|(carried, aside)| AgentEvent::SpoolFileReplaced {
                events_carried_over: carried,
                foreign_file_moved_to: aside.map(|p| p.display().to_string()),
                events_lost: 0,
            });
        self.replaced(
            done,
            "deleted or replaced while the agent ran",
            "its contents were copied to a new file, nothing lost",
        );
    }

    /// The spool's file was emptied or overwritten in place: a new file with what is
    /// still in memory, and the rest reported lost.
    fn rescue(&mut self) {
        let Some(spool) = self.spool.as_mut() else {
            return;
        };
        let done = spool.rescue().map(|r| AgentEvent::SpoolFileReplaced {
            events_carried_over: r.recovered,
            foreign_file_moved_to: Some(r.moved_to.display().to_string()),
            events_lost: r.lost,
        });
        self.replaced(
            done,
            "emptied or overwritten in place",
            "a new file holds the events still in memory, the others are lost",
        );
    }

    /// Says what became of a spool file that changed under the agent: logged, and
    /// shipped as an agent event; or why no new file could be made.
    fn replaced(&mut self, done: Result<AgentEvent, SpoolError>, what: &str, effect: &str) {
        let path = self
            .spool
            .as_ref()
            .map(|s| s.path().display().to_string())
            .unwrap_or_default();
        match done {
            Ok(report) => {
                if let AgentEvent::SpoolFileReplaced {
                    events_carried_over,
                    foreign_file_moved_to,
                    events_lost,
                } = &report
                {
                    error!(self.log, "spool_file_replaced"; "path" => &path,
                           "events_carried_over" => events_carried_over, "events_lost" => events_lost,
                           "foreign_file_moved_to" => foreign_file_moved_to.clone().unwrap_or_default(),
                           "effect" => format!("the spool file was {what}; {effect}"));
                }
                if let Ok(ev) = report.event(&self.host, Utc::now()) {
                    if self.with(|s| s.append(&[ev])).is_ok() {
                        self.tell_idle();
                    }
                }
            }
            Err(e) => {
                self.errors_total += 1;
                error!(self.log, "spool_reattach_failed"; "path" => &path, "error" => %e);
                self.last_error = Some(format!(
                    "the spool file was {what} and could not be recreated: {e}"
                ));
            }
        }
    }
}

impl Actor for SpoolActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if crate::fault::peek("buffer") == Some(crate::fault::Fault::Stop) {
            error!(self.log, "spool_open_failed"; "dir" => %self.dir.display(), "error" => "fault injection: asked to stop");
            ctx.stop();
            return;
        }
        // Emptied or overwritten while the agent was down: what it held is gone; the
        // last status dump (written every 10 s) says how much that was.
        let clobbered = match super::rescue::set_aside_if_clobbered(&self.dir) {
            Ok(c) => c,
            Err(e) => {
                error!(self.log, "spool_open_failed"; "dir" => %self.dir.display(), "error" => %e);
                ctx.stop();
                return;
            }
        };
        match Spool::open_or_recover(&self.dir) {
            Ok((mut s, moved)) => {
                if let Some(aside) = clobbered {
                    let lost = self.last_depth.unwrap_or(0);
                    error!(self.log, "spool_file_replaced"; "path" => %s.path().display(),
                           "events_carried_over" => 0, "events_lost" => lost,
                           "foreign_file_moved_to" => %aside.display(),
                           "effect" => "the spool file was emptied or overwritten while the agent was not running; the events it held (as many as the last status dump counted) are lost");
                    let report = AgentEvent::SpoolFileReplaced {
                        events_carried_over: 0,
                        foreign_file_moved_to: Some(aside.display().to_string()),
                        events_lost: lost,
                    };
                    if let Ok(ev) = report.event(&self.host, Utc::now()) {
                        if let Err(e) = s.append(&[ev]) {
                            error!(self.log, "spool_error"; "error" => %e);
                        }
                    }
                }
                s.set_cap(self.max_bytes, &self.host);
                if let Err(e) = s.set_outputs(&self.outputs) {
                    error!(self.log, "spool_open_failed"; "dir" => %self.dir.display(), "error" => %e);
                    ctx.stop();
                    return;
                }
                let depth = s.stats().map(|st| st.depth).unwrap_or(0);
                info!(self.log, "spool_opened"; "path" => %s.path().display(), "depth" => depth,
                      "max_bytes" => self.max_bytes, "disk_bytes" => s.disk_bytes());
                if let Some(aside) = moved {
                    // Loud, and shipped: what was in the old spool is not lost on disk
                    // but will not be sent.
                    error!(self.log, "spool_corrupt_moved_aside"; "moved_to" => %aside.display(),
                           "effect" => "a fresh spool was started; the old one is kept for inspection");
                    let report = AgentEvent::SpoolCorruptMovedAside {
                        moved_to: aside.display().to_string(),
                    };
                    if let Ok(ev) = report.event(&self.host, Utc::now()) {
                        if let Err(e) = s.append(&[ev]) {
                            error!(self.log, "spool_error"; "error" => %e);
                        }
                    }
                }
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

impl Handler<Enqueue> for SpoolActor {
    type Result = Result<u64, SpoolError>;

    fn handle(&mut self, msg: Enqueue, _: &mut Context<Self>) -> Self::Result {
        let empty = msg.events.is_empty();
        self.with(|s| s.append_shared(msg.events, msg.checkpoint.as_ref()))?;
        if !empty {
            self.tell_idle();
        }
        // The events are in; a failing eviction is reported but does not fail them.
        if let Ok(Some(ev)) = self.with(Spool::enforce_cap) {
            slog::warn!(self.log, "buffer_eviction_complete"; "evicted_count" => ev.evicted,
                "bytes" => ev.bytes, "by_kind" => serde_json::to_string(&ev.by_kind).unwrap_or_default(),
                "oldest" => ev.oldest_collected_at.as_deref().unwrap_or(""),
                "newest" => ev.newest_collected_at.as_deref().unwrap_or(""),
                "disk_bytes_before" => ev.disk_bytes_before, "disk_bytes_after" => ev.disk_bytes_after);
        }
        Ok(self.spool.as_ref().map_or(0, Spool::backlog_bytes))
    }
}

impl Handler<NextBatch> for SpoolActor {
    type Result = Result<Option<Batch>, SpoolError>;

    fn handle(&mut self, msg: NextBatch, _: &mut Context<Self>) -> Self::Result {
        let batch = self.with(|s| s.next_batch_within(msg.output, msg.max_events, msg.max_bytes));
        self.idle.retain(|(o, _)| *o != msg.output);
        if let (Ok(None), Some(r)) = (&batch, msg.notify) {
            self.idle.push((msg.output, r));
        }
        batch
    }
}

impl Handler<Backlog> for SpoolActor {
    type Result = u64;

    fn handle(&mut self, _: Backlog, _: &mut Context<Self>) -> u64 {
        self.spool.as_ref().map_or(0, Spool::backlog_bytes)
    }
}

impl Handler<Ack> for SpoolActor {
    type Result = Result<u64, SpoolError>;

    fn handle(&mut self, msg: Ack, _: &mut Context<Self>) -> Self::Result {
        self.with(|s| s.ack(msg.output, &msg.batch_id))
    }
}

impl Handler<AckRows> for SpoolActor {
    type Result = Result<u64, SpoolError>;

    fn handle(&mut self, msg: AckRows, _: &mut Context<Self>) -> Self::Result {
        self.with(|s| s.ack_rows(msg.output, &msg.seqs))
    }
}

impl Handler<QuarantineRows> for SpoolActor {
    type Result = Result<u64, SpoolError>;

    fn handle(&mut self, msg: QuarantineRows, _: &mut Context<Self>) -> Self::Result {
        let n = self.with(|s| s.quarantine(msg.output, &msg.seqs, &msg.reason))?;
        slog::warn!(self.log, "events_quarantined"; "events" => n, "reason" => &msg.reason, "output" => msg.output.as_str());
        Ok(n)
    }
}

impl Handler<Ping> for SpoolActor {
    type Result = MessageResult<Ping>;

    fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> Self::Result {
        self.check_file();
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
            detail: ChildDetail::Spool(stats),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ChildId, Event, EventKind};

    /// The log reader paces itself by the answer to each hand-over: it must be the
    /// backlog that `Backlog` tells, counting the events just stored.
    #[test]
    fn a_hand_over_is_answered_with_the_backlog_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        actix::System::new().block_on(async move {
            let guard = ExitGuard::unwatched(ChildId::Spool);
            let spool = SpoolActor::new(
                dir.path().to_path_buf(),
                0,
                "h".into(),
                vec![Output::Listener],
                slog::Logger::root(slog::Discard, slog::o!()),
                guard,
            )
            .start();
            let events = |round: usize| {
                (0..5)
                    .map(|i| {
                        Event::new(
                            format!("e{round}-{i}"),
                            EventKind::System,
                            Utc::now(),
                            &serde_json::json!({ "text": "x".repeat(100) }),
                        )
                        .expect("event")
                    })
                    .collect::<Vec<_>>()
            };
            assert_eq!(spool.send(Backlog).await.expect("spool"), 0);
            let mut answers = Vec::new();
            for round in 0..2 {
                let answer = spool
                    .send(Enqueue {
                        events: std::sync::Arc::new(events(round)),
                        checkpoint: None,
                    })
                    .await
                    .expect("spool")
                    .expect("append");
                assert_eq!(answer, spool.send(Backlog).await.expect("spool"));
                answers.push(answer);
            }
            let one: u64 = events(0).iter().map(|e| e.data.get().len() as u64).sum();
            assert_eq!(answers, vec![one, 2 * one]);
        });
    }
}
