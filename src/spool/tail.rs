//! The events appended last, kept in memory while they wait for the shipper, so a
//! batch of them is taken without reading them back from SQLite (and checking their
//! JSON again: they were checked when built). On a busy server reading back cost the
//! spool as much as writing.
//!
//! The tail holds runs of events with consecutive sequence numbers, as appended. It is
//! a hint: before a batch is taken from it, the spool checks that its first and last
//! sequence numbers are the table's least and greatest (see `Spool::next_batch_once`),
//! so rows the tail does not know about (an older process's, a loss report) are never
//! passed over. Anything that removes rows other than an acknowledgement clears it.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::model::Event;

/// Most event data the tail holds. When the shipper falls behind by more, the tail is
/// dropped and batches come from disk until it has caught up.
pub const TAIL_MAX_BYTES: u64 = 4_000_000;

/// Events and their sequence numbers, as a batch holds them.
pub type Taken = (Vec<Event>, Vec<i64>);

/// One hand-over: `events[skip..]` have sequence numbers `first + skip ..`.
struct Run {
    first: i64,
    events: Arc<Vec<Event>>,
    skip: usize,
}

impl Run {
    fn last(&self) -> i64 {
        self.first + self.events.len() as i64 - 1
    }
}

/// See the module's documentation.
#[derive(Default)]
pub struct Tail {
    runs: VecDeque<Run>,
    bytes: u64,
}

impl Tail {
    /// Forgets everything.
    pub fn clear(&mut self) {
        self.runs.clear();
        self.bytes = 0;
    }

    /// The sequence numbers of the first and last event held.
    pub fn span(&self) -> Option<(i64, i64)> {
        let first = self.runs.front()?;
        let last = self.runs.back()?;
        Some((first.first + first.skip as i64, last.last()))
    }

    /// Adds events just appended as rows `first ..= first + len - 1`. A run that does
    /// not follow the last one, or that would take the tail over [`TAIL_MAX_BYTES`],
    /// clears it, and is not kept: the shipper is behind, and a tail is started again
    /// only on an empty table (`Spool::append_shared`). Kept on, it would hold the
    /// newest 4 MB for nothing, and free every event on the spool's thread instead of
    /// its source's.
    pub fn push(&mut self, first: i64, events: Arc<Vec<Event>>) {
        if events.is_empty() {
            return;
        }
        let bytes: u64 = events.iter().map(|e| e.data.get().len() as u64).sum();
        let follows = self.span().is_none_or(|(_, last)| last + 1 == first);
        if !follows || self.bytes + bytes > TAIL_MAX_BYTES {
            self.clear();
            return;
        }
        self.bytes += bytes;
        self.runs.push_back(Run {
            first,
            events,
            skip: 0,
        });
    }

    /// Forgets every event up to sequence number `last` (acknowledged, so deleted).
    pub fn drop_through(&mut self, last: i64) {
        while let Some(run) = self.runs.front_mut() {
            if run.last() <= last {
                for e in &run.events[run.skip..] {
                    self.bytes -= e.data.get().len() as u64;
                }
                self.runs.pop_front();
            } else {
                let upto = ((last - run.first + 1).max(0) as usize).max(run.skip);
                for e in &run.events[run.skip..upto] {
                    self.bytes -= e.data.get().len() as u64;
                }
                run.skip = upto;
                break;
            }
        }
    }

    /// Copies of the oldest events, at most `max_events` and `max_bytes` of data (one
    /// event at least), with their sequence numbers. Nothing is removed: that happens
    /// when the batch is acknowledged.
    pub fn take(&self, max_events: u32, max_bytes: u64) -> Taken {
        let (mut events, mut seqs) = (Vec::new(), Vec::new());
        let mut sum = 0u64;
        for run in &self.runs {
            for (i, e) in run.events.iter().enumerate().skip(run.skip) {
                sum += e.data.get().len() as u64;
                if events.len() >= max_events as usize || (!events.is_empty() && sum > max_bytes) {
                    return (events, seqs);
                }
                events.push(e.clone());
                seqs.push(run.first + i as i64);
            }
        }
        (events, seqs)
    }

    /// Bytes of event data held.
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventKind;

    fn events(from: usize, n: usize, size: usize) -> Arc<Vec<Event>> {
        Arc::new(
            (from..from + n)
                .map(|i| {
                    let data = serde_json::json!({ "i": i, "pad": "x".repeat(size) });
                    Event::new(
                        format!("e{i}"),
                        EventKind::PgActivity,
                        chrono::Utc::now(),
                        &data,
                    )
                    .unwrap()
                })
                .collect(),
        )
    }

    fn ids(evs: &[Event]) -> Vec<String> {
        evs.iter().map(|e| e.id.clone()).collect()
    }

    #[test]
    fn batches_come_in_sequence_order_across_runs_and_acks_drop_what_they_cover() {
        let mut t = Tail::default();
        t.push(10, events(0, 3, 10));
        t.push(13, events(3, 2, 10));
        assert_eq!(t.span(), Some((10, 14)));
        let (evs, seqs) = t.take(4, u64::MAX);
        assert_eq!(ids(&evs), ["e0", "e1", "e2", "e3"]);
        assert_eq!(seqs, [10, 11, 12, 13]);
        t.drop_through(11);
        assert_eq!(t.span(), Some((12, 14)));
        let (evs, seqs) = t.take(10, u64::MAX);
        assert_eq!(ids(&evs), ["e2", "e3", "e4"]);
        assert_eq!(seqs, [12, 13, 14]);
        // An ack of a batch taken earlier than the tail's start changes nothing.
        t.drop_through(5);
        assert_eq!(t.span(), Some((12, 14)));
        t.drop_through(14);
        assert_eq!(t.span(), None);
        assert_eq!(t.bytes(), 0);
    }

    #[test]
    fn a_batch_is_bounded_by_bytes_but_holds_one_event_at_least() {
        let mut t = Tail::default();
        let run = events(0, 4, 100);
        let one = run[0].data.get().len() as u64;
        t.push(1, run);
        assert_eq!(t.take(100, one * 2).1, [1, 2]);
        assert_eq!(t.take(100, one * 2 + 1).1, [1, 2]);
        assert_eq!(t.take(100, 1).1, [1]);
        assert_eq!(t.take(3, u64::MAX).1, [1, 2, 3]);
    }

    #[test]
    fn a_run_that_does_not_follow_or_does_not_fit_ends_the_tail() {
        let mut t = Tail::default();
        t.push(1, events(0, 2, 10));
        // A row the tail never saw (seq 3) came between.
        t.push(4, events(2, 2, 10));
        assert_eq!(t.span(), None);
        // Up to the cap, runs are added; over it, the tail ends.
        t.push(6, events(10, 3, TAIL_MAX_BYTES as usize / 4));
        t.push(9, events(13, 1, 10));
        assert_eq!(t.span(), Some((6, 9)));
        assert!(t.bytes() <= TAIL_MAX_BYTES);
        assert_eq!(ids(&t.take(10, u64::MAX).0), ["e10", "e11", "e12", "e13"]);
        t.push(10, events(20, 1, TAIL_MAX_BYTES as usize / 2));
        assert_eq!(t.span(), None);
        // A run larger than the cap is not kept at all.
        t.push(10, events(30, 1, TAIL_MAX_BYTES as usize + 1));
        assert_eq!(t.span(), None);
        assert_eq!(t.bytes(), 0);
    }
}
