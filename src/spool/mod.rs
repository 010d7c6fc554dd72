//! The spool: a SQLite database under `state_dir` holding every event until the listener
//! acknowledged it. Plain code with no actor in it; [`SpoolActor`] owns one [`Spool`] on
//! its own thread.
//!
//! Events are appended in one transaction per collector batch. The shipper takes the
//! oldest events as a batch: the batch id and the last sequence number it covers are
//! stored (`batches`), so after a failure or a crash the same events go out again under
//! the same `batch_id`. Rows are deleted only when their batch is acked. (Writing the
//! batch id onto each row rewrote every event once more: a quarter of the spool's
//! writes.)

mod actor;
mod batches;
mod evict;
pub mod handoff;
mod outputs;
pub mod rescue;
mod reserve;
mod tail;

pub use actor::SpoolActor;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use crate::model::{Checkpoint, Event, EventKind, Output, SpoolError, SpoolStats};
pub use reserve::{Reserve, RESERVE_BYTES, RESERVE_FILE};

/// File name of the spool inside `state_dir`.
pub const SPOOL_FILE: &str = "spool.db";

impl From<rusqlite::Error> for SpoolError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => SpoolError::Full(e.to_string()),
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
                SpoolError::Corrupt(e.to_string())
            }
            _ => SpoolError::Sqlite(e.to_string()),
        }
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
    /// Size cap on disk (database + WAL); 0 means none.
    max_bytes: u64,
    /// Who the loss report names.
    host: String,
    evicted_total: u64,
    /// Device and inode of the file opened: a spool deleted or replaced under the
    /// running agent is noticed by comparing them with what the path now names.
    identity: (u64, u64),
    /// Space held back so that acknowledgements work on a full disk.
    pub reserve: Reserve,
    /// `next_batch` calls that found nothing waiting by the count.
    empty_polls: u64,
    /// Per checkpoint name: (rows in checkpoint_rows, changes in checkpoint_log), counted
    /// once when first needed and kept up to date (approximately for the rows: a put of
    /// a key already there counts as new; the fold recounts).
    journal_counts: std::collections::HashMap<String, (u64, u64)>,
    /// The outputs served (see [`outputs`]); with one, acknowledged rows go at once.
    outputs: Vec<Output>,
    /// With several outputs: per output, every row up to this seq is its.
    cursors: std::collections::HashMap<Output, i64>,
    /// With several outputs: per output, rows it has not taken.
    pending: std::collections::HashMap<Output, u64>,
    /// The events appended last, while they wait (see [`tail`]).
    tail: tail::Tail,
}

/// What one eviction dropped (also shipped as an `agent` event, see
/// [`crate::catalogue::AgentEvent::EventsEvicted`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Eviction {
    /// Events dropped.
    pub evicted: u64,
    /// Their bytes of event data.
    pub bytes: u64,
    /// Per kind.
    pub by_kind: std::collections::BTreeMap<String, u64>,
    /// The time range of what was dropped.
    pub oldest_collected_at: Option<String>,
    /// The time range of what was dropped.
    pub newest_collected_at: Option<String>,
    /// Spool size on disk before and after.
    pub disk_bytes_before: u64,
    /// Spool size on disk after.
    pub disk_bytes_after: u64,
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
    -- Unused since batches are kept in `batches` (an older spool's open batch is moved
    -- there when it is opened); kept so older agents can still read the file.
    batch_id     TEXT
);
CREATE INDEX IF NOT EXISTS events_batch ON events(batch_id) WHERE batch_id IS NOT NULL;
-- The batch handed out and not yet acknowledged (at most one): every event with
-- seq <= last_seq. Newer events always have higher sequence numbers (AUTOINCREMENT).
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
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
-- Keyed rows of a checkpoint, changed by a journal (Checkpoint.rows) in the same
-- transaction as its value.
CREATE TABLE IF NOT EXISTS checkpoint_rows (
    name  TEXT NOT NULL,
    key   BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (name, key)
) WITHOUT ROWID;
-- Changes to checkpoint_rows not folded into it yet, in the order they were made (value
-- NULL: the key was removed). Appending them costs a few pages per cycle where updating
-- rows scattered over the key order dirtied most of the table's pages; they are folded
-- in once there are as many as the table has rows (see CHECKPOINT_LOG_MIN).
CREATE TABLE IF NOT EXISTS checkpoint_log (
    seq   INTEGER PRIMARY KEY,
    name  TEXT NOT NULL,
    key   BLOB NOT NULL,
    value BLOB
);
-- With several outputs: every event up to acked_seq is the output's (see outputs.rs).
CREATE TABLE IF NOT EXISTS output_cursors (
    output    TEXT PRIMARY KEY,
    acked_seq INTEGER NOT NULL
);
-- With several outputs: rows past an output's cursor it took or refused one by one.
CREATE TABLE IF NOT EXISTS output_done (
    output TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (output, seq)
) WITHOUT ROWID;
";

/// The spool connection's page cache, in KiB.
const CACHE_KIB: u32 = 512;

/// A checkpoint's journal is folded into its rows when it holds at least this many
/// changes and at least as many as the rows themselves: the fold rewrites the rows'
/// pages once for that many cycles of appends.
const CHECKPOINT_LOG_MIN: u64 = 1000;

impl Spool {
    /// Opens (creating if needed) the spool in `dir`.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| SpoolError::NotOpen(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(SPOOL_FILE);
        let conn = Connection::open(&path)?;
        // Freed pages go back to the file system after an eviction (incremental vacuum),
        // so the cap holds on disk. Only takes effect on a new database; an older one is
        // converted once by VACUUM below.
        // 16 KB pages: a 1 KB event is a quarter of a page, not a third of one, and
        // appends and drains run 25–45 % faster (`cargo bench`). Only a new file takes
        // it (an existing spool keeps its page size: WAL mode cannot change it).
        conn.pragma_update(None, "page_size", 16384)?;
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
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
        // Pages cached in the agent's memory: appends write the table's last pages and
        // the shipper reads what was written last, so a small cache serves both; a miss
        // is a read from the OS's page cache. SQLite's default (2 MB) was a large part of
        // the agent's resident memory (BENCHMARKS.md).
        conn.pragma_update(None, "cache_size", -(CACHE_KIB as i64))?;
        conn.execute_batch(SCHEMA)?;
        // Batches are per output since the OTLP output; an older spool's open batch is
        // the listener's.
        let has_output: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info('batches') WHERE name = 'output')",
            [],
            |r| r.get(0),
        )?;
        if !has_output {
            conn.execute_batch(
                "ALTER TABLE batches ADD COLUMN output TEXT NOT NULL DEFAULT 'listener'",
            )?;
        }
        // Events name their server since an agent watches several; an older spool's
        // rows have none (shipped under the agent's server name).
        for table in ["events", "quarantine"] {
            let has_server: bool = conn.query_row(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM pragma_table_info('{table}') WHERE name = 'server')"
                ),
                [],
                |r| r.get(0),
            )?;
            if !has_server {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN server TEXT"))?;
            }
        }
        // A batch an older agent handed out (its id on the rows) keeps its id.
        conn.execute_batch(
            "BEGIN;
             INSERT OR IGNORE INTO batches (batch_id, last_seq)
               SELECT batch_id, max(seq) FROM events WHERE batch_id IS NOT NULL
               GROUP BY batch_id ORDER BY min(seq) LIMIT 1;
             UPDATE events SET batch_id = NULL WHERE batch_id IS NOT NULL;
             COMMIT;",
        )?;
        let auto_vacuum: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
        if auto_vacuum != 2 {
            conn.execute_batch("VACUUM")?;
        }
        let (depth, bytes): (i64, i64) = conn.query_row(
            "SELECT count(*), coalesce(sum(bytes), 0) FROM events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let identity = file_identity(&path).unwrap_or_default();
        let mut reserve = Reserve::new(dir);
        reserve.ensure();
        Ok(Spool {
            conn,
            path,
            depth: depth as u64,
            bytes: bytes as u64,
            appended_total: 0,
            acked_total: 0,
            max_bytes: 0,
            host: String::new(),
            evicted_total: 0,
            identity,
            reserve,
            empty_polls: 0,
            journal_counts: std::collections::HashMap::new(),
            outputs: vec![Output::Listener],
            cursors: Default::default(),
            pending: Default::default(),
            tail: Default::default(),
        })
    }

    /// True when the spool's path no longer names the file this spool has open (it was
    /// deleted or replaced while the agent ran). SQLite goes on writing into the open,
    /// unlinked file, which would vanish with the process: nothing queued would survive
    /// a restart.
    pub fn detached(&self) -> bool {
        file_identity(&self.path) != Some(self.identity)
    }

    /// Copies everything the open file still holds (events, quarantine, checkpoints)
    /// into a new file at the path (`VACUUM INTO`, a consistent copy) and continues
    /// there. A foreign file found at the path is moved aside first. Returns the events
    /// carried over and where a foreign file went.
    pub fn reattach(&mut self) -> Result<(u64, Option<PathBuf>), SpoolError> {
        let mut aside = None;
        if self.path.exists() {
            let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
            let to = self
                .path
                .with_file_name(format!("{SPOOL_FILE}.foreign.{stamp}"));
            std::fs::rename(&self.path, &to).map_err(|e| {
                SpoolError::NotOpen(format!("cannot move aside {}: {e}", self.path.display()))
            })?;
            aside = Some(to);
        }
        for ext in ["-wal", "-shm"] {
            // Leftovers of the old file must not be applied to the new one.
            let _ = std::fs::remove_file(wal_sibling(&self.path, ext));
        }
        let target = self.path.to_string_lossy().into_owned();
        self.conn.execute("VACUUM INTO ?1", [&target])?;
        let fresh = self.successor()?;
        let carried = fresh.depth;
        *self = fresh;
        Ok((carried, aside))
    }

    /// The spool at the same path, opened again, with this one's settings and running
    /// totals: what takes over when the file was deleted, replaced or clobbered.
    fn successor(&self) -> Result<Spool, SpoolError> {
        let dir = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut fresh = Spool::open(&dir)?;
        fresh.appended_total = self.appended_total;
        fresh.acked_total = self.acked_total;
        fresh.evicted_total = self.evicted_total;
        fresh.set_cap(self.max_bytes, &self.host.clone());
        fresh.set_outputs(&self.outputs.clone())?;
        Ok(fresh)
    }

    /// Opens the spool in `dir`; a spool that cannot be opened or fails SQLite's quick
    /// check is moved aside as `spool.db.corrupt.<timestamp>` (with its WAL) and a fresh
    /// one started. Returns where the old one went, if it was moved.
    pub fn open_or_recover(dir: &Path) -> Result<(Spool, Option<PathBuf>), SpoolError> {
        let path = dir.join(SPOOL_FILE);
        let problem = match Spool::open(dir) {
            Ok(s) => match s
                .conn
                .query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0))
            {
                Ok(ok) if ok == "ok" => return Ok((s, None)),
                Ok(other) => other,
                Err(e) => e.to_string(),
            },
            Err(SpoolError::NotOpen(e)) => return Err(SpoolError::NotOpen(e)),
            Err(e) => e.to_string(),
        };
        let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
        let aside = dir.join(format!("{SPOOL_FILE}.corrupt.{stamp}"));
        std::fs::rename(&path, &aside).map_err(|e| {
            SpoolError::NotOpen(format!(
                "spool {} is unreadable ({problem}) and cannot be moved aside: {e}",
                path.display()
            ))
        })?;
        for ext in ["-wal", "-shm"] {
            let mut from = path.as_os_str().to_owned();
            from.push(ext);
            let mut to = aside.as_os_str().to_owned();
            to.push(ext);
            let _ = std::fs::rename(&from, &to);
        }
        let fresh = Spool::open(dir)?;
        Ok((fresh, Some(aside)))
    }

    /// Sets the size cap on disk (0: none) and the host named in loss reports.
    pub fn set_cap(&mut self, max_bytes: u64, host: &str) {
        self.max_bytes = max_bytes;
        self.host = host.to_string();
        // Keep the WAL small next to the cap: checkpoint about every eighth of it, and
        // at least every 4 MB (pages are 16 KB in a spool made now, 4 KB in one made by
        // an older agent).
        let page: u64 = self
            .conn
            .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
            .map_or(4096, |p| p.max(512) as u64);
        let pages = (max_bytes / 8 / page).clamp(4, (4 << 20) / page);
        let _ = self
            .conn
            .pragma_update(None, "wal_autocheckpoint", pages as i64);
        let _ = self
            .conn
            .pragma_update(None, "journal_size_limit", (max_bytes / 8) as i64);
    }

    /// Bytes of event data the output furthest along has not taken yet (with one
    /// output: all that is held). A reader that outruns delivery waits on this, not on
    /// what is held: an output that is away keeps its rows (up to the cap, evicting)
    /// without holding back the others. With several outputs it is estimated from the
    /// counts (pending events × the average event's bytes).
    pub fn backlog_bytes(&self) -> u64 {
        if !self.multi() || self.depth == 0 {
            return self.bytes;
        }
        let least = self
            .outputs
            .iter()
            .map(|o| self.pending(*o))
            .min()
            .unwrap_or(self.depth)
            .min(self.depth);
        (u128::from(self.bytes) * u128::from(least) / u128::from(self.depth)) as u64
    }

    /// Size of the database and its WAL on disk.
    pub fn disk_bytes(&self) -> u64 {
        [self.path.clone(), wal_path(&self.path)]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
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
        self.append_shared(std::sync::Arc::new(events.to_vec()), checkpoint)
    }

    /// [`Spool::append_with`] for events shared with their sender (a copy of none):
    /// the spool keeps them in memory too until they are acknowledged, so the
    /// shipper's batch does not read them back (see `spool::tail`).
    pub fn append_shared(
        &mut self,
        events: std::sync::Arc<Vec<Event>>,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), SpoolError> {
        // A tail is started only on an empty table: behind a backlog it could not be
        // used until the backlog is gone, and would only hold memory while the
        // listener is away.
        let keep = !self.multi() && (self.tail.span().is_some() || self.depth == 0);
        match self.append_tx(&events, checkpoint) {
            Ok(Some(first)) if keep => self.tail.push(first, events),
            Ok(_) => {}
            Err(e) => {
                self.journal_counts.clear();
                self.tail.clear();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Appends in one transaction; returns the first row's sequence number when the
    /// events got consecutive ones (always, with this process the only writer).
    fn append_tx(
        &mut self,
        events: &[Event],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<Option<i64>, SpoolError> {
        let incoming: usize = events.iter().map(|e| e.data.get().len()).sum();
        self.reserve
            .room_for(incoming as u64)
            .map_err(SpoolError::Full)?;
        let tx = self.conn.transaction()?;
        if let Some(c) = checkpoint {
            tx.execute(
                "INSERT INTO checkpoints (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                params![c.name, c.value],
            )?;
            if c.rows.replace || !c.rows.set.is_empty() {
                write_rows(&tx, c, &mut self.journal_counts)?;
            }
        }
        let mut added = 0u64;
        let first;
        {
            // Rows go in INSERT_ROWS at a time: each INSERT statement also reads and
            // writes the AUTOINCREMENT counter (sqlite_sequence), and runs its program
            // from the start; a row per statement spent more on that than on the row.
            let mut many = tx.prepare_cached(&insert_sql(INSERT_ROWS))?;
            let mut one = tx.prepare_cached(&insert_sql(1))?;
            // Events of one hand-over mostly share their collection time: written once.
            let mut at = (None, String::new());
            let mut chunks = events.chunks_exact(INSERT_ROWS);
            // Sequence numbers: each statement's rows get consecutive ones (SQLite
            // gives a new row the greatest so far plus one); across statements that is
            // checked, so the tail is never told a wrong range.
            let mut seqs: Option<(i64, i64)> = None;
            let mut note = |rows: usize, last: i64| {
                seqs = match seqs {
                    None => Some((last - rows as i64 + 1, last)),
                    Some((first, prev)) if prev + rows as i64 == last => Some((first, last)),
                    Some(_) => Some((i64::MIN, last)),
                };
            };
            for chunk in chunks.by_ref() {
                for (i, e) in chunk.iter().enumerate() {
                    added += bind_event(&mut many, i * INSERT_COLUMNS, e, &mut at)?;
                }
                many.raw_execute()?;
                note(INSERT_ROWS, tx.last_insert_rowid());
            }
            for e in chunks.remainder() {
                added += bind_event(&mut one, 0, e, &mut at)?;
                one.raw_execute()?;
                note(1, tx.last_insert_rowid());
            }
            first = seqs.map(|(f, _)| f).filter(|f| *f != i64::MIN);
        }
        tx.commit()?;
        self.depth += events.len() as u64;
        self.bytes += added;
        for p in self.pending.values_mut() {
            *p += events.len() as u64;
        }
        self.appended_total += events.len() as u64;
        Ok(first)
    }

    /// Deletes acknowledged rows of a split batch; returns how many.
    pub fn ack_rows(&mut self, output: Output, seqs: &[i64]) -> Result<u64, SpoolError> {
        self.roomy(|s| s.ack_rows_once(output, seqs))
    }

    fn ack_rows_once(&mut self, output: Output, seqs: &[i64]) -> Result<u64, SpoolError> {
        if self.multi() {
            return self.mark_done(output, seqs, None);
        }
        let n = self.take_rows(seqs, None)?;
        self.acked_total += n;
        Ok(n)
    }

    /// Deletes `seqs` from the queue in one transaction, copying each to the quarantine
    /// table first when `quarantine` gives a reason; returns how many rows were there.
    fn take_rows(&mut self, seqs: &[i64], quarantine: Option<&str>) -> Result<u64, SpoolError> {
        // Rows taken one by one may be anywhere in the tail: it no longer stands for
        // the table.
        self.tail.clear();
        let tx = self.conn.transaction()?;
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let (mut n, mut bytes) = (0u64, 0u64);
        {
            let mut mv = tx.prepare_cached(
                "INSERT OR REPLACE INTO quarantine (seq, id, kind, collected_at, data, bytes, reason, quarantined_at, server)
                 SELECT seq, id, kind, collected_at, data, bytes, ?2, ?3, server FROM events WHERE seq = ?1",
            )?;
            let mut del = tx.prepare_cached("DELETE FROM events WHERE seq = ?1 RETURNING bytes")?;
            let mut undone = tx.prepare_cached("DELETE FROM output_done WHERE seq = ?1")?;
            for seq in seqs {
                if let Some(reason) = quarantine {
                    mv.execute(params![seq, reason, now])?;
                }
                undone.execute(params![seq])?;
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

    /// Copies rows `output` refuses to the quarantine table (kept, counted, never sent
    /// to it again); other outputs still get them.
    pub fn quarantine(
        &mut self,
        output: Output,
        seqs: &[i64],
        reason: &str,
    ) -> Result<u64, SpoolError> {
        self.roomy(|s| s.quarantine_once(output, seqs, reason))
    }

    fn quarantine_once(
        &mut self,
        output: Output,
        seqs: &[i64],
        reason: &str,
    ) -> Result<u64, SpoolError> {
        if self.multi() {
            return self.mark_done(output, seqs, Some(reason));
        }
        self.take_rows(seqs, Some(reason))
    }

    /// `output` took batch `batch_id`: with one output its events are deleted, with
    /// several its cursor moves past them; returns how many it had not had.
    pub fn ack(&mut self, output: Output, batch_id: &str) -> Result<u64, SpoolError> {
        self.roomy(|s| {
            if s.multi() {
                s.ack_cursor(output, batch_id)
            } else {
                s.ack_once(batch_id)
            }
        })
    }

    /// Runs a delete; when it fails for lack of space, gives up the reserve and runs it
    /// again. Afterwards the reserve is taken back if there is room.
    fn roomy<T>(
        &mut self,
        f: impl Fn(&mut Spool) -> Result<T, SpoolError>,
    ) -> Result<T, SpoolError> {
        let r = match f(self) {
            Err(SpoolError::Full(_)) if self.reserve.release() => f(self),
            r => r,
        };
        if r.is_ok() {
            self.reserve.ensure();
        }
        r
    }

    fn ack_once(&mut self, batch_id: &str) -> Result<u64, SpoolError> {
        let tx = self.conn.transaction()?;
        let last: Option<i64> = tx
            .prepare_cached("DELETE FROM batches WHERE batch_id = ?1 RETURNING last_seq")?
            .query_row(params![batch_id], |r| r.get(0))
            .optional()?;
        let (mut n, mut bytes) = (0u64, 0u64);
        if let Some(last) = last {
            let greatest: Option<i64> = tx
                .prepare_cached("SELECT max(seq) FROM events")?
                .query_row([], |r| r.get(0))?;
            if greatest.is_some_and(|g| g <= last) {
                // The batch is every row (the shipper keeps up): emptied whole, which
                // SQLite does page by page; a DELETE with a WHERE (or RETURNING)
                // rebalanced the tree after every row.
                (n, bytes) = tx
                    .prepare_cached("SELECT count(*), coalesce(sum(bytes), 0) FROM events")?
                    .query_row([], |r| {
                        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
                    })?;
                tx.prepare_cached("DELETE FROM events")?.execute([])?;
            } else {
                let mut st =
                    tx.prepare_cached("DELETE FROM events WHERE seq <= ?1 RETURNING bytes")?;
                let mut rows = st.query(params![last])?;
                while let Some(r) = rows.next()? {
                    n += 1;
                    bytes += r.get::<_, i64>(0)? as u64;
                }
            }
            self.tail.drop_through(last);
        }
        tx.commit()?;
        self.depth = self.depth.saturating_sub(n);
        self.bytes = self.bytes.saturating_sub(bytes);
        self.acked_total += n;
        Ok(n)
    }

    /// Depth, size and age of what waits.
    pub fn stats(&self) -> Result<SpoolStats, SpoolError> {
        let oldest: Option<String> = self
            .conn
            .prepare_cached("SELECT collected_at FROM events ORDER BY seq LIMIT 1")?
            .query_row([], |r| r.get(0))
            .optional()?;
        let oldest_age_s = oldest
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| (Utc::now() - t.with_timezone(&Utc)).num_milliseconds() as f64 / 1000.0);
        let file_bytes = self.disk_bytes();
        let (quarantined, quarantined_bytes): (i64, i64) = self
            .conn
            .prepare_cached("SELECT count(*), coalesce(sum(bytes), 0) FROM quarantine")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(SpoolStats {
            depth: self.depth,
            bytes: self.bytes,
            file_bytes,
            oldest_age_s,
            appended_total: self.appended_total,
            acked_total: self.acked_total,
            quarantined: quarantined as u64,
            quarantined_bytes: quarantined_bytes as u64,
            evicted_total: self.evicted_total,
            pending_by_output: self
                .outputs
                .iter()
                .map(|o| (o.as_str().to_string(), self.pending(*o)))
                .collect(),
            max_bytes: self.max_bytes,
            ..Default::default()
        })
    }
}

/// Reads a checkpoint from the spool in `dir` without disturbing the agent that owns it
/// (a read-only connection; WAL lets it read while the spool actor writes). `None` when there
/// is no spool or no such checkpoint.
pub fn read_checkpoint(dir: &Path, name: &str) -> Option<Vec<u8>> {
    read_checkpoint_with_rows(dir, name, false).map(|(value, _)| value)
}

/// A checkpoint's keyed row: key and value.
pub type KeyedRow = (Vec<u8>, Vec<u8>);

/// Stores a checkpoint's keyed rows: a replacement writes them in key order (and drops
/// the journal); a change set is appended to the journal, which is folded into the rows
/// when it has grown as large as they are.
fn write_rows(
    tx: &rusqlite::Transaction,
    c: &Checkpoint,
    counts: &mut std::collections::HashMap<String, (u64, u64)>,
) -> Result<(), SpoolError> {
    if c.rows.replace {
        tx.execute(
            "DELETE FROM checkpoint_rows WHERE name = ?1",
            params![c.name],
        )?;
        tx.execute(
            "DELETE FROM checkpoint_log WHERE name = ?1",
            params![c.name],
        )?;
        let mut put = tx.prepare_cached(
            "INSERT OR REPLACE INTO checkpoint_rows (name, key, value) VALUES (?1, ?2, ?3)",
        )?;
        let mut n = 0;
        for (key, value) in &c.rows.set {
            if let Some(v) = value {
                put.execute(params![c.name, key, v])?;
                n += 1;
            }
        }
        counts.insert(c.name.clone(), (n, 0));
        return Ok(());
    }
    let (rows, logged) = match counts.get(&c.name) {
        Some(&n) => n,
        None => {
            let rows: i64 = tx.query_row(
                "SELECT count(*) FROM checkpoint_rows WHERE name = ?1",
                params![c.name],
                |r| r.get(0),
            )?;
            let logged: i64 = tx.query_row(
                "SELECT count(*) FROM checkpoint_log WHERE name = ?1",
                params![c.name],
                |r| r.get(0),
            )?;
            (rows as u64, logged as u64)
        }
    };
    {
        let mut log =
            tx.prepare_cached("INSERT INTO checkpoint_log (name, key, value) VALUES (?1, ?2, ?3)")?;
        for (key, value) in &c.rows.set {
            log.execute(params![c.name, key, value])?;
        }
    }
    let logged = logged + c.rows.set.len() as u64;
    if logged < CHECKPOINT_LOG_MIN.max(rows) {
        counts.insert(c.name.clone(), (rows, logged));
        return Ok(());
    }
    // Fold: the last change of each key, applied in key order.
    let mut last: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>> = Default::default();
    {
        let mut st = tx
            .prepare_cached("SELECT key, value FROM checkpoint_log WHERE name = ?1 ORDER BY seq")?;
        let mut it = st.query(params![c.name])?;
        while let Some(r) = it.next()? {
            last.insert(r.get(0)?, r.get(1)?);
        }
    }
    {
        let mut put = tx.prepare_cached(
            "INSERT INTO checkpoint_rows (name, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (name, key) DO UPDATE SET value = excluded.value",
        )?;
        let mut del =
            tx.prepare_cached("DELETE FROM checkpoint_rows WHERE name = ?1 AND key = ?2")?;
        for (key, value) in &last {
            match value {
                Some(v) => put.execute(params![c.name, key, v])?,
                None => del.execute(params![c.name, key])?,
            };
        }
    }
    tx.execute(
        "DELETE FROM checkpoint_log WHERE name = ?1",
        params![c.name],
    )?;
    let rows: i64 = tx.query_row(
        "SELECT count(*) FROM checkpoint_rows WHERE name = ?1",
        params![c.name],
        |r| r.get(0),
    )?;
    counts.insert(c.name.clone(), (rows as u64, 0));
    Ok(())
}

/// A checkpoint's value and (with `rows`) its keyed rows, read in one transaction so
/// they belong together; rows ordered by key. `None` as for [`read_checkpoint`]; a
/// spool from before keyed rows has none.
pub fn read_checkpoint_with_rows(
    dir: &Path,
    name: &str,
    rows: bool,
) -> Option<(Vec<u8>, Vec<KeyedRow>)> {
    let path = dir.join(SPOOL_FILE);
    if !path.exists() {
        return None;
    }
    let mut conn =
        Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).ok()?;
    let tx = conn.transaction().ok()?;
    let value: Vec<u8> = tx
        .query_row(
            "SELECT value FROM checkpoints WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )
        .optional()
        .ok()
        .flatten()?;
    let mut out = Vec::new();
    if rows && has_table(&tx, "checkpoint_rows")? {
        let mut st = tx
            .prepare("SELECT key, value FROM checkpoint_rows WHERE name = ?1 ORDER BY key")
            .ok()?;
        let it = st
            .query_map(params![name], |r| Ok((r.get(0)?, r.get(1)?)))
            .ok()?;
        let mut rows: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
        for row in it {
            let (k, v) = row.ok()?;
            rows.insert(k, v);
        }
        if has_table(&tx, "checkpoint_log")? {
            let mut st = tx
                .prepare("SELECT key, value FROM checkpoint_log WHERE name = ?1 ORDER BY seq")
                .ok()?;
            let it = st
                .query_map(params![name], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Option<Vec<u8>>>(1)?))
                })
                .ok()?;
            for row in it {
                match row.ok()? {
                    (k, Some(v)) => rows.insert(k, v),
                    (k, None) => rows.remove(&k),
                };
            }
        }
        out.extend(rows);
    }
    Some((value, out))
}

/// Whether a table exists (a spool written by an older agent may lack the newer ones);
/// `None` if the question itself failed.
fn has_table(tx: &rusqlite::Transaction, name: &str) -> Option<bool> {
    tx.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        params![name],
        |_| Ok(()),
    )
    .optional()
    .ok()
    .map(|r| r.is_some())
}

/// Device and inode of the file at `p`.
fn file_identity(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// `spool.db-wal` / `spool.db-shm` beside the database file.
fn wal_sibling(db: &Path, ext: &str) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(ext);
    PathBuf::from(s)
}

fn wal_path(db: &Path) -> PathBuf {
    wal_sibling(db, "-wal")
}

/// Rows per multi-row INSERT of [`Spool::append`] ([`INSERT_COLUMNS`] parameters each).
const INSERT_ROWS: usize = 32;

/// `INSERT INTO events … VALUES (…), (…)` with `rows` rows of parameters. OR ROLLBACK:
/// a row that failed would fail the whole append anyway, and without it SQLite keeps a
/// statement journal (a temporary file) for every multi-row statement, to undo it
/// alone.
fn insert_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|r| {
            let p = r * INSERT_COLUMNS;
            let each: Vec<String> = (1..=INSERT_COLUMNS)
                .map(|i| format!("?{}", p + i))
                .collect();
            format!("({})", each.join(", "))
        })
        .collect();
    format!(
        "INSERT OR ROLLBACK INTO events (id, kind, collected_at, data, bytes, server) VALUES {}",
        values.join(", ")
    )
}

/// Parameters of one row of [`insert_sql`].
const INSERT_COLUMNS: usize = 6;

/// Binds `e` to the [`INSERT_COLUMNS`] parameters after `at` (0-based) of an [`insert_sql`]
/// statement; returns its data bytes. `time` keeps the last collection time written.
fn bind_event(
    st: &mut rusqlite::CachedStatement<'_>,
    at: usize,
    e: &Event,
    time: &mut (Option<DateTime<Utc>>, String),
) -> Result<u64, SpoolError> {
    if time.0 != Some(e.collected_at) {
        *time = (
            Some(e.collected_at),
            e.collected_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        );
    }
    let data = e.data.get();
    st.raw_bind_parameter(at + 1, &e.id)?;
    st.raw_bind_parameter(at + 2, e.kind.as_str())?;
    st.raw_bind_parameter(at + 3, &time.1)?;
    st.raw_bind_parameter(at + 4, data)?;
    st.raw_bind_parameter(at + 5, data.len() as i64)?;
    st.raw_bind_parameter(at + 6, e.server.as_deref())?;
    Ok(data.len() as u64)
}

fn decode(
    id: String,
    kind: &str,
    at: &str,
    data: String,
    server: Option<String>,
) -> Result<Event, SpoolError> {
    let bad = |what: &str| SpoolError::Sqlite(format!("corrupt spool row {id}: {what}"));
    Ok(Event {
        kind: EventKind::parse(kind).ok_or_else(|| bad("unknown kind"))?,
        collected_at: DateTime::parse_from_rfc3339(at)
            .map_err(|_| bad("bad collected_at"))?
            .with_timezone(&Utc),
        data: serde_json::value::RawValue::from_string(data).map_err(|_| bad("bad data"))?,
        id,
        server: server.map(std::sync::Arc::from),
    })
}

#[cfg(test)]
mod tests;
