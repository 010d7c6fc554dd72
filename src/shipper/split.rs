//! Splitting a refused batch, as plain code: the output refused a batch for its content
//! (400, 413, 422), so it is sent again by halves until every event the output takes is
//! delivered and every event it still refuses alone is put aside. [`Splitter`] decides;
//! whoever drives it sends the parts and records in the spool what it is told to.

use std::collections::VecDeque;

use super::transport::SendError;
use crate::model::{Batch, Event, SpoolError};

/// What the driver does next.
#[derive(Debug)]
pub enum Step<'a> {
    /// Send this part; report the answer with [`Splitter::sent`].
    Send(&'a Batch),
    /// The output took these spool rows: acknowledge them, then [`Splitter::recorded`].
    Ack(Vec<i64>),
    /// The output refuses this event on its own: quarantine its rows, then
    /// [`Splitter::recorded`].
    Quarantine {
        /// Its spool rows.
        seqs: Vec<i64>,
        /// Its id (for the log).
        event_id: String,
        /// The status that refused it.
        status: u16,
    },
    /// Nothing more to do.
    Done(SplitOutcome),
}

/// Why a split stopped before its end.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// The output failed otherwise (no answer, 5xx, token refused, …): the rest stays
    /// spooled for the next attempt.
    Output(SendError),
    /// The spool could not record an acknowledgement or a quarantine.
    Spool(NotRecorded),
}

/// A request to the spool that it did not record (an acknowledgement, a quarantine).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} not recorded: {error}")]
pub struct NotRecorded {
    /// What was asked: `ack`, `quarantine`.
    pub what: &'static str,
    /// Why not.
    pub error: SpoolError,
}

/// What a split achieved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SplitOutcome {
    /// The status that refused the whole batch.
    pub refused: u16,
    /// Events delivered and acknowledged.
    pub acked: u64,
    /// Events put aside.
    pub quarantined: u64,
    /// Why it stopped early, if it did.
    pub stopped: Option<Stop>,
}

/// What was asked of the driver and not yet answered.
#[derive(Debug)]
enum Asked {
    Nothing,
    Sent,
    Ack,
    Quarantine,
}

/// A refused batch, worked through by halves in spool order.
#[derive(Debug)]
pub struct Splitter {
    batch_id: String,
    /// Parts still to send, in order.
    todo: VecDeque<(Vec<Event>, Vec<i64>)>,
    /// The part sent last.
    part: Option<Batch>,
    /// A step decided by the last answer, to hand out next.
    ready: Option<Step<'static>>,
    asked: Asked,
    outcome: SplitOutcome,
}

impl Splitter {
    /// Starts on `batch`, which the output refused with `status`. A batch of one event
    /// needs no second try: it goes to quarantine at once.
    pub fn new(batch: Batch, status: u16) -> Splitter {
        let mut s = Splitter {
            batch_id: batch.batch_id,
            todo: VecDeque::new(),
            part: None,
            ready: None,
            asked: Asked::Nothing,
            outcome: SplitOutcome {
                refused: status,
                ..Default::default()
            },
        };
        if batch.events.len() == 1 {
            s.ready = Some(Step::Quarantine {
                event_id: batch.events[0].id.clone(),
                seqs: batch.seqs,
                status,
            });
        } else {
            halve(batch.events, batch.seqs, &mut s.todo);
        }
        s
    }

    /// The next thing to do.
    pub fn next_step(&mut self) -> Step<'_> {
        if self.outcome.stopped.is_some() {
            return Step::Done(std::mem::take(&mut self.outcome));
        }
        if let Some(step) = self.ready.take() {
            self.asked = match step {
                Step::Ack(_) => Asked::Ack,
                _ => Asked::Quarantine,
            };
            return step;
        }
        let Some((events, seqs)) = self.todo.pop_front() else {
            self.asked = Asked::Nothing;
            return Step::Done(std::mem::take(&mut self.outcome));
        };
        let first = seqs.first().copied().unwrap_or_default();
        // Deterministic: the same part of the same batch has the same key.
        let part = Batch {
            batch_id: format!("{}.{first}.{}", self.batch_id, seqs.len()),
            events,
            seqs,
        };
        self.asked = Asked::Sent;
        Step::Send(self.part.insert(part))
    }

    /// The output's answer to the part last handed out.
    pub fn sent(&mut self, answer: Result<u16, SendError>) {
        let Some(part) = self.part.take() else { return };
        self.asked = Asked::Nothing;
        match answer {
            Ok(_) => self.ready = Some(Step::Ack(part.seqs)),
            Err(SendError::Refused { status }) if part.events.len() == 1 => {
                self.ready = Some(Step::Quarantine {
                    event_id: part.events[0].id.clone(),
                    seqs: part.seqs,
                    status,
                })
            }
            Err(SendError::Refused { .. }) => {
                // Halves go first, in order, before the parts queued earlier.
                let mut halves = VecDeque::new();
                halve(part.events, part.seqs, &mut halves);
                while let Some(h) = halves.pop_back() {
                    self.todo.push_front(h);
                }
            }
            Err(e) => self.outcome.stopped = Some(Stop::Output(e)),
        }
    }

    /// The spool's answer to the acknowledgement or quarantine last handed out: the
    /// rows it recorded, or why it could not.
    pub fn recorded(&mut self, result: Result<u64, NotRecorded>) {
        let asked = std::mem::replace(&mut self.asked, Asked::Nothing);
        match (result, asked) {
            (Ok(n), Asked::Ack) => self.outcome.acked += n,
            (Ok(n), Asked::Quarantine) => self.outcome.quarantined += n,
            (Ok(_), _) => {}
            (Err(e), _) => self.outcome.stopped = Some(Stop::Spool(e)),
        }
    }
}

/// Splits events (and their rows) in two halves, appended to `out` in order.
fn halve(mut events: Vec<Event>, mut seqs: Vec<i64>, out: &mut VecDeque<(Vec<Event>, Vec<i64>)>) {
    let mid = events.len().div_ceil(2);
    let tail_e = events.split_off(mid);
    let tail_s = seqs.split_off(mid.min(seqs.len()));
    out.push_back((events, seqs));
    if !tail_e.is_empty() {
        out.push_back((tail_e, tail_s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventKind;

    fn batch(n: i64) -> Batch {
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("t");
        Batch {
            batch_id: "b".into(),
            events: (0..n)
                .map(|i| Event::new(format!("e{i}"), EventKind::PgActivity, at, &i).expect("e"))
                .collect(),
            seqs: (10..10 + n).collect(),
        }
    }

    /// Drives a split against an output that refuses the events in `bad` (every part
    /// holding one of them), with a spool that records everything. Returns the part
    /// keys sent, in order, the rows quarantined and the outcome.
    fn drive(n: i64, bad: &[i64]) -> (Vec<String>, Vec<i64>, SplitOutcome) {
        let mut s = Splitter::new(batch(n), 400);
        let (mut sent, mut quarantined) = (Vec::new(), Vec::new());
        loop {
            match s.next_step() {
                Step::Send(part) => {
                    sent.push(part.batch_id.clone());
                    let refused = part.seqs.iter().any(|q| bad.contains(&(q - 10)));
                    let answer = if refused {
                        Err(SendError::Refused { status: 422 })
                    } else {
                        Ok(200)
                    };
                    s.sent(answer);
                }
                Step::Ack(seqs) => s.recorded(Ok(seqs.len() as u64)),
                Step::Quarantine { seqs, status, .. } => {
                    assert_eq!(status, if n == 1 { 400 } else { 422 });
                    quarantined.extend(&seqs);
                    s.recorded(Ok(seqs.len() as u64))
                }
                Step::Done(o) => return (sent, quarantined, o),
            }
        }
    }

    #[test]
    fn one_bad_event_in_eight_is_found_and_the_rest_delivered_in_order() {
        let (sent, quarantined, o) = drive(8, &[5]);
        assert_eq!(
            sent,
            ["b.10.4", "b.14.4", "b.14.2", "b.14.1", "b.15.1", "b.16.2"],
            "halves in spool order, the refused one split first"
        );
        assert_eq!(quarantined, [15]);
        assert_eq!(
            (o.refused, o.acked, o.quarantined, o.stopped),
            (400, 7, 1, None)
        );
    }

    #[test]
    fn a_single_refused_event_is_quarantined_without_a_second_request() {
        let (sent, quarantined, o) = drive(1, &[0]);
        assert!(sent.is_empty());
        assert_eq!(quarantined, [10]);
        assert_eq!((o.acked, o.quarantined), (0, 1));
    }

    #[test]
    fn all_refused_puts_every_event_aside_and_odd_sizes_halve_cleanly() {
        let (_, quarantined, o) = drive(5, &[0, 1, 2, 3, 4]);
        assert_eq!(quarantined, [10, 11, 12, 13, 14]);
        assert_eq!((o.acked, o.quarantined), (0, 5));
    }

    #[test]
    fn another_failure_stops_the_split_and_keeps_the_rest() {
        let mut s = Splitter::new(batch(4), 413);
        let Step::Send(p) = s.next_step() else {
            panic!("a part")
        };
        assert_eq!(p.seqs, [10, 11]);
        s.sent(Ok(202));
        assert!(matches!(s.next_step(), Step::Ack(v) if v == [10, 11]));
        s.recorded(Ok(2));
        let Step::Send(p) = s.next_step() else {
            panic!("a part")
        };
        assert_eq!(p.seqs, [12, 13]);
        let down = SendError::Retriable {
            reason: "HTTP 503".into(),
            status: Some(503),
            retry_after: None,
        };
        s.sent(Err(down.clone()));
        let Step::Done(o) = s.next_step() else {
            panic!("done")
        };
        assert_eq!((o.acked, o.quarantined), (2, 0));
        assert_eq!(o.stopped, Some(Stop::Output(down)));
    }

    #[test]
    fn a_spool_that_cannot_record_stops_the_split() {
        let mut s = Splitter::new(batch(2), 400);
        let Step::Send(_) = s.next_step() else {
            panic!("a part")
        };
        s.sent(Ok(200));
        assert!(matches!(s.next_step(), Step::Ack(v) if v == [10]));
        let full = NotRecorded {
            what: "ack",
            error: SpoolError::Full("disk full".into()),
        };
        s.recorded(Err(full.clone()));
        let Step::Done(o) = s.next_step() else {
            panic!("done")
        };
        assert_eq!(o.stopped, Some(Stop::Spool(full)));
        assert_eq!(o.acked, 0);
    }
}
