//! Several outputs on one spool. Each configured output ([`Output`]) takes batches and
//! acknowledges them on its own; an event leaves the spool when every output has it.
//!
//! With one output (the usual case) nothing changes from a single queue: an
//! acknowledged row is deleted at once and no cursor is kept. With several, each output
//! has a cursor (`output_cursors`: every event up to `acked_seq` is its), plus the rows
//! past its cursor it took or refused one by one in a split batch (`output_done`, a
//! handful at most). A row is deleted when every output's cursor is past it or has it
//! done; an outage of one output holds its rows (within the cap) and never blocks the
//! other.

use std::collections::{HashMap, HashSet};

use rusqlite::{params, OptionalExtension, Transaction};

use super::Spool;
use crate::model::{Output, SpoolError};

/// Per output, the rows it has: every seq up to its cursor, and its done set.
pub(super) struct Taken {
    cursors: Vec<(Output, i64)>,
    done: HashSet<(Output, i64)>,
}

impl Taken {
    /// Read inside `tx` (the done sets are small: rows of split batches).
    pub(super) fn read(
        tx: &Transaction,
        outputs: &[Output],
        cursors: &HashMap<Output, i64>,
    ) -> Result<Taken, SpoolError> {
        let cursors = outputs
            .iter()
            .map(|o| (*o, cursors.get(o).copied().unwrap_or(i64::MIN)))
            .collect();
        let mut done = HashSet::new();
        let mut st = tx.prepare_cached("SELECT output, seq FROM output_done")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            if let Some(o) = Output::parse(&r.get::<_, String>(0)?) {
                done.insert((o, r.get(1)?));
            }
        }
        Ok(Taken { cursors, done })
    }

    /// The outputs that had not received row `seq`.
    pub(super) fn missing(&self, seq: i64) -> impl Iterator<Item = Output> + '_ {
        self.cursors
            .iter()
            .filter(move |(o, c)| seq > *c && !self.done.contains(&(*o, seq)))
            .map(|(o, _)| *o)
    }
}

impl Spool {
    /// True with more than one output: rows are kept until each has them.
    pub(super) fn multi(&self) -> bool {
        self.outputs.len() > 1
    }

    /// Every row up to this one is `output`'s (with one output: every row left is
    /// waiting for it).
    pub(super) fn cursor(&self, output: Output) -> i64 {
        self.cursors.get(&output).copied().unwrap_or(i64::MIN)
    }

    /// The outputs this spool serves.
    pub fn outputs(&self) -> &[Output] {
        &self.outputs
    }

    /// Sets the outputs the configuration names (called once after opening). An output
    /// no longer configured is forgotten; a new one starts with what is spooled now;
    /// with one output left, what it already has leaves the spool.
    pub fn set_outputs(&mut self, outputs: &[Output]) -> Result<(), SpoolError> {
        let mut outs = outputs.to_vec();
        outs.sort();
        outs.dedup();
        if outs.is_empty() {
            outs.push(Output::Listener);
        }
        // The tail serves one output only; whatever it held is read from the table.
        self.tail.clear();
        let tx = self.conn.transaction()?;
        let active: Vec<&str> = outs.iter().map(|o| o.as_str()).collect();
        let listed = active
            .iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(", ");
        for table in ["output_cursors", "output_done", "batches"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE output NOT IN ({listed})"),
                [],
            )?;
        }
        let mut cursors = HashMap::new();
        if let [only] = outs[..] {
            let cursor: Option<i64> = tx
                .query_row(
                    "SELECT acked_seq FROM output_cursors WHERE output = ?1",
                    params![only.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(c) = cursor {
                tx.execute("DELETE FROM events WHERE seq <= ?1", params![c])?;
            }
            tx.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM output_done WHERE output = ?1)",
                params![only.as_str()],
            )?;
            tx.execute("DELETE FROM output_cursors", [])?;
            tx.execute("DELETE FROM output_done", [])?;
        } else {
            // A new output starts before the oldest row still spooled (or after the
            // last one ever written when nothing is).
            let start: i64 = tx.query_row(
                "SELECT coalesce((SELECT min(seq) FROM events) - 1,
                                 (SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)",
                [],
                |r| r.get(0),
            )?;
            for o in &outs {
                tx.execute(
                    "INSERT OR IGNORE INTO output_cursors (output, acked_seq) VALUES (?1, ?2)",
                    params![o.as_str(), start],
                )?;
                let c: i64 = tx.query_row(
                    "SELECT acked_seq FROM output_cursors WHERE output = ?1",
                    params![o.as_str()],
                    |r| r.get(0),
                )?;
                cursors.insert(*o, c);
            }
        }
        if outs.len() > 1 {
            purge(&tx, &outs, &cursors)?;
        }
        tx.commit()?;
        self.outputs = outs;
        self.cursors = cursors;
        self.recount()
    }

    /// Depth, bytes and each output's pending count, read from the tables (after a
    /// change that is not counted as it happens: opening, eviction, unreadable rows).
    pub(super) fn recount(&mut self) -> Result<(), SpoolError> {
        let (depth, bytes): (i64, i64) = self.conn.query_row(
            "SELECT count(*), coalesce(sum(bytes), 0) FROM events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        self.depth = depth as u64;
        self.bytes = bytes as u64;
        self.pending.clear();
        for o in self.outputs.clone() {
            let n = if self.multi() {
                let c = self.cursor(o);
                let ahead: i64 = self.conn.query_row(
                    "SELECT count(*) FROM events WHERE seq > ?1",
                    params![c],
                    |r| r.get(0),
                )?;
                let done: i64 = self.conn.query_row(
                    "SELECT count(*) FROM output_done WHERE output = ?1 AND seq > ?2",
                    params![o.as_str(), c],
                    |r| r.get(0),
                )?;
                (ahead - done).max(0) as u64
            } else {
                self.depth
            };
            self.pending.insert(o, n);
        }
        Ok(())
    }

    /// Events `output` has not taken yet.
    pub fn pending(&self, output: Output) -> u64 {
        if self.multi() {
            self.pending.get(&output).copied().unwrap_or(0)
        } else {
            self.depth
        }
    }

    /// With several outputs: `output` took (or refused, when `quarantine` gives a
    /// reason) these rows of a split batch. Returns how many it had not had.
    pub(super) fn mark_done(
        &mut self,
        output: Output,
        seqs: &[i64],
        quarantine: Option<&str>,
    ) -> Result<u64, SpoolError> {
        let cursor = self.cursor(output);
        let tx = self.conn.transaction()?;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let mut n = 0u64;
        {
            let mut exists = tx.prepare_cached("SELECT 1 FROM events WHERE seq = ?1")?;
            let mut mark = tx.prepare_cached(
                "INSERT OR IGNORE INTO output_done (output, seq) VALUES (?1, ?2)",
            )?;
            let mut aside = tx.prepare_cached(
                "INSERT INTO quarantine (seq, id, kind, collected_at, data, bytes, reason, quarantined_at)
                 SELECT seq, id, kind, collected_at, data, bytes, ?2, ?3 FROM events WHERE seq = ?1
                 ON CONFLICT (seq) DO UPDATE SET reason = quarantine.reason || '; ' || excluded.reason",
            )?;
            for &seq in seqs {
                if seq <= cursor || !exists.exists(params![seq])? {
                    continue;
                }
                if let Some(reason) = quarantine {
                    aside.execute(params![seq, reason, now])?;
                }
                n += mark.execute(params![output.as_str(), seq])? as u64;
            }
        }
        let (gone, bytes) = purge(&tx, &self.outputs, &self.cursors)?;
        tx.commit()?;
        self.forget(gone, bytes);
        if let Some(p) = self.pending.get_mut(&output) {
            *p = p.saturating_sub(n);
        }
        Ok(n)
    }

    /// With several outputs: `output` took its batch `batch_id`; its cursor moves to
    /// the batch's end. Returns how many events it had not had.
    pub(super) fn ack_cursor(&mut self, output: Output, batch_id: &str) -> Result<u64, SpoolError> {
        let cursor = self.cursor(output);
        let tx = self.conn.transaction()?;
        let last: Option<i64> = tx
            .prepare_cached(
                "DELETE FROM batches WHERE batch_id = ?1 AND output = ?2 RETURNING last_seq",
            )?
            .query_row(params![batch_id, output.as_str()], |r| r.get(0))
            .optional()?;
        let mut n = 0u64;
        let mut moved = None;
        if let Some(last) = last.filter(|l| *l > cursor) {
            let ahead: i64 = tx
                .prepare_cached("SELECT count(*) FROM events WHERE seq > ?1 AND seq <= ?2")?
                .query_row(params![cursor, last], |r| r.get(0))?;
            let done: i64 = tx
                .prepare_cached(
                    "SELECT count(*) FROM output_done WHERE output = ?1 AND seq > ?2 AND seq <= ?3",
                )?
                .query_row(params![output.as_str(), cursor, last], |r| r.get(0))?;
            n = (ahead - done).max(0) as u64;
            tx.prepare_cached("UPDATE output_cursors SET acked_seq = ?2 WHERE output = ?1")?
                .execute(params![output.as_str(), last])?;
            tx.prepare_cached("DELETE FROM output_done WHERE output = ?1 AND seq <= ?2")?
                .execute(params![output.as_str(), last])?;
            moved = Some(last);
        }
        let mut cursors = self.cursors.clone();
        if let Some(last) = moved {
            cursors.insert(output, last);
        }
        let (gone, bytes) = purge(&tx, &self.outputs, &cursors)?;
        tx.commit()?;
        self.cursors = cursors;
        self.forget(gone, bytes);
        if let Some(p) = self.pending.get_mut(&output) {
            *p = p.saturating_sub(n);
        }
        Ok(n)
    }

    /// Rows left the spool: the counts follow.
    fn forget(&mut self, rows: u64, bytes: u64) {
        self.depth = self.depth.saturating_sub(rows);
        self.bytes = self.bytes.saturating_sub(bytes);
        self.acked_total += rows;
    }
}

/// Deletes the rows every output has; returns how many and their bytes.
fn purge(
    tx: &Transaction,
    outputs: &[Output],
    cursors: &HashMap<Output, i64>,
) -> Result<(u64, u64), SpoolError> {
    let cursor = |o: &Output| cursors.get(o).copied().unwrap_or(i64::MIN);
    let low = outputs.iter().map(cursor).min().unwrap_or(i64::MIN);
    let (mut n, mut bytes) = (0u64, 0u64);
    {
        let mut st = tx.prepare_cached("DELETE FROM events WHERE seq <= ?1 RETURNING bytes")?;
        let mut rows = st.query(params![low])?;
        while let Some(r) = rows.next()? {
            n += 1;
            bytes += r.get::<_, i64>(0)?.max(0) as u64;
        }
    }
    let any_done: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM output_done)")?
        .query_row([], |r| r.get(0))?;
    if any_done {
        // Names are the fixed output names and cursors integers: nothing from outside
        // is formatted into the statement.
        let every = outputs
            .iter()
            .map(|o| {
                format!(
                    "(seq <= {} OR EXISTS (SELECT 1 FROM output_done d WHERE d.output = '{}' AND d.seq = events.seq))",
                    cursor(o),
                    o.as_str()
                )
            })
            .collect::<Vec<_>>()
            .join(" AND ");
        let sql = format!(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM output_done) AND {every} RETURNING bytes"
        );
        let mut st = tx.prepare(&sql)?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            n += 1;
            bytes += r.get::<_, i64>(0)?.max(0) as u64;
        }
        drop(rows);
        tx.execute(
            "DELETE FROM output_done WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.seq = output_done.seq)",
            [],
        )?;
    }
    Ok((n, bytes))
}
