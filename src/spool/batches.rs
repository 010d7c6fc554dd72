//! Batches: the oldest events of an output handed out under an id that stays theirs
//! until they are acknowledged, bounded by count and bytes; from the tail in memory
//! when it holds every row waiting.

use rusqlite::{params, OptionalExtension};

use super::{decode, tail, Spool};
use crate::model::{Batch, Event, Output, SpoolError};

impl Spool {
    /// The oldest batch for `output`: the one handed out before and not yet
    /// acknowledged if there is one (same id, same events), else up to `max_events` new
    /// ones under a fresh id.
    pub fn next_batch(
        &mut self,
        output: Output,
        max_events: u32,
    ) -> Result<Option<Batch>, SpoolError> {
        self.next_batch_within(output, max_events, crate::config::DEFAULT_BATCH_MAX_BYTES)
    }

    /// [`Spool::next_batch`] with at most `max_bytes` of event data in a new batch (one
    /// event at least): memory follows bytes, not the count of events that may each
    /// be large.
    pub fn next_batch_within(
        &mut self,
        output: Output,
        max_events: u32,
        max_bytes: u64,
    ) -> Result<Option<Batch>, SpoolError> {
        // Nothing waits by the count kept with every append and removal: no statement
        // (an idle shipper asks every few seconds, and at once when events arrive).
        // Every 5th time the table is asked anyway, so a count that ever went wrong
        // costs seconds, not events.
        if self.pending(output) == 0 {
            self.empty_polls += 1;
            if !self.empty_polls.is_multiple_of(5) {
                return Ok(None);
            }
        }
        // Handing out writes a batch row: it needs room like a delete.
        self.roomy(|s| s.next_batch_once(output, max_events, max_bytes))
    }

    fn next_batch_once(
        &mut self,
        output: Output,
        max_events: u32,
        max_bytes: u64,
    ) -> Result<Option<Batch>, SpoolError> {
        loop {
            // At most one batch per output is open at a time (a new one is claimed only
            // when none is).
            let (batch_id, rows) = match self.open_batch(output)? {
                Some((batch_id, last_seq)) => (batch_id, self.reread_batch(output, last_seq)?),
                None => match self.claim_batch(output, max_events, max_bytes)? {
                    Some(claimed) => claimed,
                    None => return Ok(None),
                },
            };
            // A row that cannot be read back would block the queue forever: aside with
            // it, for every output.
            if !rows.unreadable.is_empty() {
                self.take_rows(&rows.unreadable, Some("unreadable in the spool"))?;
                if self.multi() {
                    self.recount()?;
                }
            }
            if !rows.events.is_empty() {
                return Ok(Some(Batch {
                    batch_id,
                    events: rows.events,
                    seqs: rows.seqs,
                }));
            }
            // Every row of the batch is gone or this output's (acknowledged one by one,
            // quarantined or evicted): it is done, and the next one is due.
            if self.multi() {
                self.ack_cursor(output, &batch_id)?;
            } else {
                self.conn
                    .prepare_cached("DELETE FROM batches WHERE batch_id = ?1")?
                    .execute(params![batch_id])?;
            }
            if self.pending(output) == 0 {
                return Ok(None);
            }
        }
    }

    /// The batch handed out to `output` and not acknowledged yet: its id and last row.
    /// (Statements are cached: the shipper asks every few hundred milliseconds.)
    fn open_batch(&self, output: Output) -> Result<Option<(String, i64)>, SpoolError> {
        Ok(self
            .conn
            .prepare_cached("SELECT batch_id, last_seq FROM batches WHERE output = ?1 LIMIT 1")?
            .query_row(params![output.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    /// With several outputs, the rows this one took or refused one by one are not its to
    /// send again (`?3` is the output).
    fn not_done(&self) -> &'static str {
        if self.multi() {
            " AND NOT EXISTS (SELECT 1 FROM output_done d WHERE d.output = ?3 AND d.seq = events.seq)"
        } else {
            " AND ?3 IS NOT NULL"
        }
    }

    /// The rows of the batch handed out before, up to `last_seq` (those still there).
    fn reread_batch(&self, output: Output, last_seq: i64) -> Result<BatchRows, SpoolError> {
        let mut rows = BatchRows::default();
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {BATCH_COLUMNS} FROM events WHERE seq <= ?1 AND seq > ?2{} ORDER BY seq",
            self.not_done()
        ))?;
        for r in st.query_map(
            params![last_seq, self.cursor(output), output.as_str()],
            BatchRow::read,
        )? {
            rows.take(r?);
        }
        Ok(rows)
    }

    /// A new batch for `output`: its rows are read in the same pass that bounds it by
    /// count and bytes, then its end is recorded under a fresh id. When the tail in
    /// memory holds every row waiting, they are taken from it instead. `None`: nothing
    /// waits.
    fn claim_batch(
        &mut self,
        output: Output,
        max_events: u32,
        max_bytes: u64,
    ) -> Result<Option<(String, BatchRows)>, SpoolError> {
        let mut rows = BatchRows::default();
        let mut last = None;
        if let Some((events, seqs)) = self.tail_batch(max_events, max_bytes)? {
            last = seqs.last().copied();
            rows.events = events;
            rows.seqs = seqs;
        } else {
            let mut st = self.conn.prepare_cached(&format!(
                "SELECT {BATCH_COLUMNS} FROM events WHERE seq > ?2{} ORDER BY seq LIMIT ?1",
                self.not_done()
            ))?;
            let mut found = st.query(params![
                max_events as i64,
                self.cursor(output),
                output.as_str()
            ])?;
            let mut sum = 0u64;
            while let Some(r) = found.next()? {
                let r = BatchRow::read(r)?;
                sum += r.bytes.max(0) as u64;
                if last.is_some() && sum > max_bytes {
                    break;
                }
                last = Some(r.seq);
                rows.take(r);
            }
        }
        let Some(last) = last else {
            return Ok(None);
        };
        let id = uuid::Uuid::new_v4().to_string();
        self.conn
            .prepare_cached("INSERT INTO batches (batch_id, last_seq, output) VALUES (?1, ?2, ?3)")?
            .execute(params![id, last, output.as_str()])?;
        Ok(Some((id, rows)))
    }

    /// The oldest waiting events, taken from the tail in memory when it holds every row
    /// waiting: its first and last sequence numbers are the table's least and greatest
    /// (so no older row, or one the tail never saw, is passed over). `None`: read them
    /// from the table.
    fn tail_batch(
        &mut self,
        max_events: u32,
        max_bytes: u64,
    ) -> Result<Option<tail::Taken>, SpoolError> {
        if self.multi() {
            return Ok(None);
        }
        let Some((first, last)) = self.tail.span() else {
            return Ok(None);
        };
        let (least, greatest): (Option<i64>, Option<i64>) = self
            .conn
            .prepare_cached("SELECT (SELECT min(seq) FROM events), (SELECT max(seq) FROM events)")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        if greatest != Some(last) || least.is_none_or(|l| l > first) {
            // Rows came that the tail never saw, or some of its rows went otherwise
            // than by an acknowledgement.
            self.tail.clear();
            return Ok(None);
        }
        if least != Some(first) {
            // Older rows wait first: they come from the table.
            return Ok(None);
        }
        Ok(Some(self.tail.take(max_events, max_bytes)))
    }
}

/// The columns a batch reads of `events`.
const BATCH_COLUMNS: &str = "seq, id, kind, collected_at, data, bytes, server";

/// One row of [`BATCH_COLUMNS`].
struct BatchRow {
    seq: i64,
    id: String,
    kind: String,
    at: String,
    data: String,
    bytes: i64,
    server: Option<String>,
}

impl BatchRow {
    fn read(r: &rusqlite::Row) -> rusqlite::Result<BatchRow> {
        Ok(BatchRow {
            seq: r.get(0)?,
            id: r.get(1)?,
            kind: r.get(2)?,
            at: r.get(3)?,
            data: r.get(4)?,
            bytes: r.get(5)?,
            server: r.get(6)?,
        })
    }
}

/// A batch's rows as read: its events with their rows, and the rows that could not be
/// read back as events.
#[derive(Default)]
struct BatchRows {
    events: Vec<Event>,
    seqs: Vec<i64>,
    unreadable: Vec<i64>,
}

impl BatchRows {
    fn take(&mut self, r: BatchRow) {
        match decode(r.id, &r.kind, &r.at, r.data, r.server) {
            Ok(e) => {
                self.events.push(e);
                self.seqs.push(r.seq);
            }
            Err(_) => self.unreadable.push(r.seq),
        }
    }
}
