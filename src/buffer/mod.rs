//! The spool: a SQLite database under `state_dir` holding every event until the listener
//! acknowledged it. Plain code with no actor in it; [`BufferActor`] owns one [`Spool`] on
//! its own thread.
//!
//! Events are appended in one transaction per collector batch. The shipper takes the
//! oldest events as a batch: the batch id is written onto those rows in the same
//! transaction that picks them, so after a failure or a crash the same events go out
//! again under the same `batch_id`. Rows are deleted only when their batch is acked.

mod actor;

pub use actor::BufferActor;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use crate::model::{Batch, Checkpoint, Event, EventKind, SpoolError, SpoolStats};

/// File name of the spool inside `state_dir`.
pub const SPOOL_FILE: &str = "spool.db";

impl From<rusqlite::Error> for SpoolError {
    fn from(e: rusqlite::Error) -> Self {
        SpoolError::Sqlite(e.to_string())
    }
}

/// The on-disk queue of events.
pub struct Spool {
    conn: Connection,
    path: PathBuf,
    /// Depth and bytes kept in memory (read once at open) so status never scans the table.
    depth: u64,
    bytes: u64,
    appended_total: u64,
    acked_total: u64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    -- AUTOINCREMENT: sequence numbers are never reused, so arrival order survives the
    -- table being emptied and refilled.
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    collected_at TEXT    NOT NULL,
    data         TEXT    NOT NULL,
    bytes        INTEGER NOT NULL,
    -- Set when the row is handed out in a batch; kept until the batch is acknowledged.
    batch_id     TEXT
);
CREATE INDEX IF NOT EXISTS events_batch ON events(batch_id) WHERE batch_id IS NOT NULL;
-- Events the listener refused on their own (400/413/422 after splitting) or that could
-- not be read back: kept for an operator, never retried, never evicted silently.
CREATE TABLE IF NOT EXISTS quarantine (
    seq            INTEGER PRIMARY KEY,
    id             TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    collected_at   TEXT    NOT NULL,
    data           TEXT    NOT NULL,
    bytes          INTEGER NOT NULL,
    reason         TEXT    NOT NULL,
    quarantined_at TEXT    NOT NULL
);
-- Sources' state that advances with the events they produced (see Checkpoint).
CREATE TABLE IF NOT EXISTS checkpoints (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
";

impl Spool {
    /// Opens (creating if needed) the spool in `dir`.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| SpoolError::NotOpen(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(SPOOL_FILE);
        let conn = Connection::open(&path)?;
        // WAL: appends do not rewrite pages, readers never block the writer, and a crash
        // (kill -9) leaves every committed transaction intact.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL in WAL mode syncs at checkpoints, not at every commit: a killed process
        // loses nothing (the WAL is in the OS page cache); only a power loss may lose the
        // last commits, never corrupt the file. A full sync per batch would cost an fsync
        // per collector cycle for a guarantee the agent's host rarely needs.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // A second process (a test, an operator's sqlite3) reading the spool must not
        // make our writes fail at once.
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        let (depth, bytes): (i64, i64) = conn.query_row(
            "SELECT count(*), coalesce(sum(bytes), 0) FROM events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(Spool {
            conn,
            path,
            depth: depth as u64,
            bytes: bytes as u64,
            appended_total: 0,
            acked_total: 0,
        })
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends events in one transaction: all of them are on disk, or none.
    pub fn append(&mut self, events: &[Event]) -> Result<(), SpoolError> {
        self.append_with(events, None)
    }

    /// Appends events and stores a checkpoint in the same transaction: after a crash
    /// either both are there or neither, so a source's state never runs ahead of (or
    /// behind) the events it shipped.
    pub fn append_with(
        &mut self,
        events: &[Event],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), SpoolError> {
        let tx = self.conn.transaction()?;
        if let Some(c) = checkpoint {
            tx.execute(
                "INSERT INTO checkpoints (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                params![c.name, c.value],
            )?;
        }
        let mut added = 0u64;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO events (id, kind, collected_at, data, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for e in events {
                let data = e.data.get();
                st.execute(params![
                    e.id,
                    e.kind.as_str(),
                    e.collected_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    data,
                    data.len() as i64
                ])?;
                added += data.len() as u64;
            }
        }
        tx.commit()?;
        self.depth += events.len() as u64;
        self.bytes += added;
        self.appended_total += events.len() as u64;
        Ok(())
    }

    /// The oldest batch: the one handed out before and not yet acknowledged if there is
    /// one (same id, same events), else up to `max_events` new ones under a fresh id.
    pub fn next_batch(&mut self, max_events: u32) -> Result<Option<Batch>, SpoolError> {
        // At most one batch is open at a time (a new one is claimed only when none is),
        // so no ORDER BY: the partial index answers this without touching the table.
        let open: Option<String> = self
            .conn
            .query_row(
                "SELECT batch_id FROM events WHERE batch_id IS NOT NULL LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let batch_id = match open {
            Some(id) => id,
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                let n = self.conn.execute(
                    "UPDATE events SET batch_id = ?1 WHERE seq IN
                       (SELECT seq FROM events WHERE batch_id IS NULL ORDER BY seq LIMIT ?2)",
                    params![id, max_events as i64],
                )?;
                if n == 0 {
                    return Ok(None);
                }
                id
            }
        };
        let mut st = self.conn.prepare_cached(
            "SELECT seq, id, kind, collected_at, data FROM events WHERE batch_id = ?1 ORDER BY seq",
        )?;
        let rows = st.query_map(params![batch_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut events = Vec::new();
        let mut seqs = Vec::new();
        let mut unreadable = Vec::new();
        for row in rows {
            let (seq, id, kind, at, data) = row?;
            match decode(id, &kind, &at, data) {
                Ok(e) => {
                    events.push(e);
                    seqs.push(seq);
                }
                Err(_) => unreadable.push(seq),
            }
        }
        drop(st);
        // A row that cannot be read back would block the queue forever: aside with it.
        if !unreadable.is_empty() {
            self.quarantine(&unreadable, "unreadable in the spool")?;
        }
        if events.is_empty() {
            return self.next_batch(max_events);
        }
        Ok(Some(Batch {
            batch_id,
            events,
            seqs,
        }))
    }

    /// Deletes acknowledged rows of a split batch; returns how many.
    pub fn ack_rows(&mut self, seqs: &[i64]) -> Result<u64, SpoolError> {
        let tx = self.conn.transaction()?;
        let (mut n, mut bytes) = (0u64, 0u64);
        {
            let mut st = tx.prepare_cached("DELETE FROM events WHERE seq = ?1 RETURNING bytes")?;
            for seq in seqs {
                if let Some(b) = st
                    .query_row(params![seq], |r| r.get::<_, i64>(0))
                    .optional()?
                {
                    n += 1;
                    bytes += b as u64;
                }
            }
        }
        tx.commit()?;
        self.depth = self.depth.saturating_sub(n);
        self.bytes = self.bytes.saturating_sub(bytes);
        self.acked_total += n;
        Ok(n)
    }

    /// Moves rows to the quarantine table (kept, counted, never sent again).
    pub fn quarantine(&mut self, seqs: &[i64], reason: &str) -> Result<u64, SpoolError> {
        let tx = self.conn.transaction()?;
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let (mut n, mut bytes) = (0u64, 0u64);
        {
            let mut mv = tx.prepare_cached(
                "INSERT OR REPLACE INTO quarantine (seq, id, kind, collected_at, data, bytes, reason, quarantined_at)
                 SELECT seq, id, kind, collected_at, data, bytes, ?2, ?3 FROM events WHERE seq = ?1",
            )?;
            let mut del = tx.prepare_cached("DELETE FROM events WHERE seq = ?1 RETURNING bytes")?;
            for seq in seqs {
                mv.execute(params![seq, reason, now])?;
                if let Some(b) = del
                    .query_row(params![seq], |r| r.get::<_, i64>(0))
                    .optional()?
                {
                    n += 1;
                    bytes += b as u64;
                }
            }
        }
        tx.commit()?;
        self.depth = self.depth.saturating_sub(n);
        self.bytes = self.bytes.saturating_sub(bytes);
        Ok(n)
    }

    /// Deletes the events of an acknowledged batch; returns how many.
    pub fn ack(&mut self, batch_id: &str) -> Result<u64, SpoolError> {
        let tx = self.conn.transaction()?;
        let (n, bytes): (i64, i64) = tx.query_row(
            "SELECT count(*), coalesce(sum(bytes), 0) FROM events WHERE batch_id = ?1",
            params![batch_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        tx.execute("DELETE FROM events WHERE batch_id = ?1", params![batch_id])?;
        tx.commit()?;
        self.depth = self.depth.saturating_sub(n as u64);
        self.bytes = self.bytes.saturating_sub(bytes as u64);
        self.acked_total += n as u64;
        Ok(n as u64)
    }

    /// Depth, size and age of what waits.
    pub fn stats(&self) -> Result<SpoolStats, SpoolError> {
        let oldest: Option<String> = self
            .conn
            .query_row(
                "SELECT collected_at FROM events ORDER BY seq LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let oldest_age_s = oldest
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| (Utc::now() - t.with_timezone(&Utc)).num_milliseconds() as f64 / 1000.0);
        let file_bytes = [self.path.clone(), wal_path(&self.path)]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        let (quarantined, quarantined_bytes): (i64, i64) = self.conn.query_row(
            "SELECT count(*), coalesce(sum(bytes), 0) FROM quarantine",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(SpoolStats {
            depth: self.depth,
            bytes: self.bytes,
            file_bytes,
            oldest_age_s,
            appended_total: self.appended_total,
            acked_total: self.acked_total,
            quarantined: quarantined as u64,
            quarantined_bytes: quarantined_bytes as u64,
            ..Default::default()
        })
    }
}

/// Reads a checkpoint from the spool in `dir` without disturbing the agent that owns it
/// (a read-only connection; WAL lets it read while the buffer writes). `None` when there
/// is no spool or no such checkpoint.
pub fn read_checkpoint(dir: &Path, name: &str) -> Option<Vec<u8>> {
    let path = dir.join(SPOOL_FILE);
    if !path.exists() {
        return None;
    }
    let conn =
        Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).ok()?;
    conn.query_row(
        "SELECT value FROM checkpoints WHERE name = ?1",
        params![name],
        |r| r.get(0),
    )
    .optional()
    .ok()
    .flatten()
}

fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

fn decode(id: String, kind: &str, at: &str, data: String) -> Result<Event, SpoolError> {
    let bad = |what: &str| SpoolError::Sqlite(format!("corrupt spool row {id}: {what}"));
    Ok(Event {
        kind: EventKind::parse(kind).ok_or_else(|| bad("unknown kind"))?,
        collected_at: DateTime::parse_from_rfc3339(at)
            .map_err(|_| bad("bad collected_at"))?
            .with_timezone(&Utc),
        data: serde_json::value::RawValue::from_string(data).map_err(|_| bad("bad data"))?,
        id,
    })
}

#[cfg(test)]
mod tests;
