//! Keeping the spool within `buffer.max_bytes`: the oldest events go, the agent's own
//! and the quarantine stay, and a loss report is written in the same transaction as
//! the deletes.

use chrono::Utc;
use rusqlite::params;

use super::{outputs, Eviction, Spool};
use crate::model::{Event, Output, SpoolError};

impl Spool {
    /// Keeps the spool within its cap: checkpoints the WAL, then evicts the oldest
    /// events in chunks (quarantine and the agent's own events are never touched) until the database uses at most
    /// 90 % of the cap, gives the pages back, and appends an `agent` event that says how
    /// many events of which kinds from which time range were dropped — in the same
    /// transaction as the deletes, so the loss is never itself lost.
    pub fn enforce_cap(&mut self) -> Result<Option<Eviction>, SpoolError> {
        if self.max_bytes == 0 || self.disk_bytes() <= self.max_bytes {
            return Ok(None);
        }
        let before = self.disk_bytes();
        self.checkpoint_wal()?;
        if self.disk_bytes() <= self.max_bytes {
            return Ok(None);
        }
        let multi = self.multi();
        let tx = self.conn.transaction()?;
        let taken = outputs::Taken::read(&tx, &self.outputs, &self.cursors)?;
        let mut gone = Evicting::new(before, &self.outputs);
        evict_oldest(&tx, self.max_bytes / 10 * 9, self.depth, &taken, &mut gone)?;
        if gone.ev.evicted == 0 {
            tx.commit()?;
            return Ok(None);
        }
        self.tail.clear();
        if multi {
            tx.execute(
                "DELETE FROM output_done WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.seq = output_done.seq)",
                [],
            )?;
        }
        let report = gone.report(self.max_bytes, &self.host)?;
        let report_bytes = report.data.get().len() as u64;
        insert_event(&tx, &report)?;
        tx.commit()?;
        self.give_back_pages()?;
        let mut ev = gone.ev;
        self.depth = self.depth.saturating_sub(ev.evicted) + 1;
        self.bytes = self.bytes.saturating_sub(ev.bytes) + report_bytes;
        self.evicted_total += ev.evicted;
        if multi {
            self.recount()?;
        }
        ev.disk_bytes_after = self.disk_bytes();
        Ok(Some(ev))
    }

    /// Moves the WAL into the database file and empties it.
    fn checkpoint_wal(&self) -> Result<(), SpoolError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Gives the free pages back to the file system (each step of incremental_vacuum
    /// frees one page: stepped to the end), then empties the WAL.
    fn give_back_pages(&self) -> Result<(), SpoolError> {
        {
            let mut st = self.conn.prepare("PRAGMA incremental_vacuum")?;
            let mut rows = st.raw_query();
            while rows.next()?.is_some() {}
        }
        self.checkpoint_wal()
    }
}

/// What an eviction took out, gathered row by row.
struct Evicting {
    ev: Eviction,
    /// Per output: events it had not taken.
    undelivered: std::collections::BTreeMap<String, u64>,
    /// The rows' range.
    first_seq: Option<i64>,
    last_seq: i64,
}

impl Evicting {
    fn new(disk_bytes_before: u64, outputs: &[Output]) -> Evicting {
        Evicting {
            ev: Eviction {
                disk_bytes_before,
                ..Default::default()
            },
            undelivered: outputs
                .iter()
                .map(|o| (o.as_str().to_string(), 0))
                .collect(),
            first_seq: None,
            last_seq: 0,
        }
    }

    /// Counts one evicted row, of the outputs in `missing` not taken yet.
    fn count(
        &mut self,
        seq: i64,
        kind: String,
        at: String,
        bytes: i64,
        missing: impl Iterator<Item = Output>,
    ) {
        for o in missing {
            *self.undelivered.entry(o.as_str().to_string()).or_default() += 1;
        }
        self.first_seq = Some(self.first_seq.map_or(seq, |f| f.min(seq)));
        self.last_seq = self.last_seq.max(seq);
        let ev = &mut self.ev;
        ev.evicted += 1;
        ev.bytes += bytes as u64;
        *ev.by_kind.entry(kind).or_default() += 1;
        if ev.oldest_collected_at.as_ref().is_none_or(|o| at < *o) {
            ev.oldest_collected_at = Some(at.clone());
        }
        if ev.newest_collected_at.as_ref().is_none_or(|n| at > *n) {
            ev.newest_collected_at = Some(at);
        }
    }

    /// The loss report of what was taken out.
    fn report(&self, max_bytes: u64, host: &str) -> Result<Event, SpoolError> {
        let ev = &self.ev;
        crate::catalogue::AgentEvent::EventsEvicted {
            evicted: ev.evicted,
            bytes: ev.bytes,
            by_kind: ev.by_kind.clone(),
            oldest_collected_at: ev.oldest_collected_at.clone(),
            newest_collected_at: ev.newest_collected_at.clone(),
            disk_bytes_before: ev.disk_bytes_before,
            undelivered_by_output: self.undelivered.clone(),
            reason: format!("spool over buffer.max_bytes = {max_bytes}"),
            rows: (self.first_seq.unwrap_or_default(), self.last_seq),
        }
        .event(host, Utc::now())
        .map_err(|e| SpoolError::Sqlite(format!("loss report: {e}")))
    }
}

/// Deletes the oldest events but the agent's own, in chunks of a tenth of what is left
/// (100 at least), until the database uses at most `target` bytes or nothing else is
/// left; counts each in `gone`.
fn evict_oldest(
    tx: &rusqlite::Transaction,
    target: u64,
    depth: u64,
    taken: &outputs::Taken,
    gone: &mut Evicting,
) -> Result<(), SpoolError> {
    loop {
        let used: i64 = tx.query_row(
            "SELECT (page_count - freelist_count) * page_size FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()",
            [],
            |r| r.get(0),
        )?;
        if used as u64 <= target {
            return Ok(());
        }
        let chunk = (depth.saturating_sub(gone.ev.evicted) / 10).max(100) as i64;
        let mut st = tx.prepare_cached(
            // The agent's own events (loss reports, restarts) are small and say what
            // happened to the rest: they are not evicted.
            "DELETE FROM events WHERE seq IN
               (SELECT seq FROM events WHERE kind != 'agent' ORDER BY seq LIMIT ?1)
             RETURNING seq, kind, collected_at, bytes",
        )?;
        let rows = st
            .query_map(params![chunk], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        if rows.is_empty() {
            return Ok(());
        }
        for (seq, kind, at, bytes) in rows {
            gone.count(seq, kind, at, bytes, taken.missing(seq));
        }
    }
}

/// Appends one event (the spool's own loss report) in `tx`.
fn insert_event(tx: &rusqlite::Transaction, e: &Event) -> Result<(), SpoolError> {
    let text = e.data.get();
    tx.execute(
        "INSERT INTO events (id, kind, collected_at, data, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            e.id,
            e.kind.as_str(),
            e.collected_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            text,
            text.len() as i64
        ],
    )?;
    Ok(())
}
