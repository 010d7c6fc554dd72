//! One delivery attempt as a future: take the oldest batch from the spool, hand it to
//! the transport, record the outcome in the spool. It talks to the spool and the
//! transport and decides nothing itself: the answer's meaning comes from the
//! transport's [`SendError`], a split from the plain [`Splitter`], and what follows
//! (backoff, breaker, status) from the actor.

use std::rc::Rc;

use actix::prelude::*;
use slog::{debug, warn, Logger};

use super::split::{NotRecorded, SplitOutcome, Splitter, Step};
use super::transport::{SendError, Transport};
use crate::model::{Ack, AckRows, NextBatch, Output, QuarantineRows, Route, SpoolError, SpoolNews};
use crate::spool::SpoolActor;

/// The outcome of one attempt.
pub enum Attempt {
    /// The spool is empty.
    Idle,
    /// The spool could not hand out a batch (not the output's fault).
    SpoolFailed(SpoolError),
    /// The output took this batch but the spool could not record it (a full disk):
    /// only the local acknowledgement is retried, the batch is not sent again.
    AckFailed {
        /// The batch delivered.
        batch_id: String,
        /// Why the spool did not record it.
        error: NotRecorded,
    },
    /// The output accepted a batch of this many events.
    Sent {
        /// Events delivered.
        events: usize,
        /// The acceptance's status.
        status: u16,
    },
    /// The output refused the batch's content; it was split.
    Split(SplitOutcome),
    /// The output did not take the batch.
    Failed(SendError),
}

/// What an attempt needs, cloned into its future.
pub struct Job {
    /// Whose batches.
    pub output: Output,
    /// The spool.
    pub spool: Route<SpoolActor>,
    /// Where batches go.
    pub transport: Rc<dyn Transport>,
    /// Batch size.
    pub max_events: u32,
    /// Batch size in bytes of event data.
    pub max_bytes: u64,
    /// A batch the output already took whose deletion the spool did not record.
    pub delivered_unrecorded: Option<String>,
    /// The shipper's log.
    pub log: Logger,
    /// Told by the spool when events arrive after it found none.
    pub notify: Option<actix::Recipient<SpoolNews>>,
}

/// The spool's answer to a request that records rows (a spool that went away before
/// answering is restarting).
fn recorded<E>(
    r: Result<Result<u64, SpoolError>, E>,
    what: &'static str,
) -> Result<u64, NotRecorded> {
    r.unwrap_or(Err(SpoolError::Unavailable))
        .map_err(|error| NotRecorded { what, error })
}

impl Job {
    /// Runs one attempt.
    pub async fn run(self) -> Attempt {
        let Some(spool) = self.spool.get() else {
            return Attempt::SpoolFailed(SpoolError::Unavailable);
        };
        let batch = match spool
            .send(NextBatch {
                output: self.output,
                max_events: self.max_events,
                max_bytes: self.max_bytes,
                notify: self.notify.clone(),
            })
            .await
        {
            Ok(Ok(Some(b))) => b,
            Ok(Ok(None)) => return Attempt::Idle,
            Ok(Err(e)) => return Attempt::SpoolFailed(e),
            Err(_) => return Attempt::SpoolFailed(SpoolError::Unavailable),
        };
        // The output already has this one (its acceptance came, the delete failed):
        // record it, do not send it again.
        let status = if self.delivered_unrecorded.as_deref() == Some(batch.batch_id.as_str()) {
            debug!(self.log, "batch_ack_retried"; "batch_id" => &batch.batch_id);
            200
        } else {
            match self.transport.send(&batch).await {
                Ok(status) => {
                    debug!(self.log, "batch_posted"; "batch_id" => &batch.batch_id, "status" => status, "events" => batch.events.len());
                    status
                }
                Err(SendError::Refused { status }) => {
                    warn!(self.log, "batch_refused_splitting"; "status" => status,
                          "batch_id" => &batch.batch_id, "events" => batch.events.len());
                    return Attempt::Split(self.split(&spool, Splitter::new(batch, status)).await);
                }
                Err(e) => return Attempt::Failed(e),
            }
        };
        // Test-only: a crash between the output's acceptance and the delete.
        if let Some(f) = crate::fault::take("shipper_after_2xx") {
            crate::fault::inject("shipper", f);
        }
        // Accepted: only now may the spool delete the events. If this ack is lost
        // (crash), the batch is sent again with the same ids.
        let ack = spool
            .send(Ack {
                output: self.output,
                batch_id: batch.batch_id.clone(),
            })
            .await;
        match recorded(ack, "ack") {
            Ok(_) => Attempt::Sent {
                events: batch.events.len(),
                status,
            },
            Err(error) => Attempt::AckFailed {
                batch_id: batch.batch_id,
                error,
            },
        }
    }

    /// Drives a [`Splitter`]: sends what it says to send, records what it says to
    /// record.
    async fn split(&self, spool: &Addr<SpoolActor>, mut s: Splitter) -> SplitOutcome {
        loop {
            match s.next_step() {
                Step::Send(part) => {
                    let answer = self.transport.send(part).await;
                    s.sent(answer);
                }
                Step::Ack(seqs) => {
                    let r = spool
                        .send(AckRows {
                            output: self.output,
                            seqs,
                        })
                        .await;
                    s.recorded(recorded(r, "ack"));
                }
                Step::Quarantine {
                    seqs,
                    event_id,
                    status,
                } => {
                    warn!(self.log, "event_refused"; "id" => &event_id, "status" => status);
                    let who = self.output.naming().who;
                    let reason = format!("HTTP {status} from the {who}");
                    let r = spool
                        .send(QuarantineRows {
                            output: self.output,
                            seqs,
                            reason,
                        })
                        .await;
                    s.recorded(recorded(r, "quarantine"));
                }
                Step::Done(outcome) => return outcome,
            }
        }
    }
}
