//! A spool file emptied or overwritten in place (`: > spool.db`, a copy over it): the
//! path still names the file the spool has open, so [`Spool::detached`] does not see it,
//! but what SQLite reads back is gone — every statement then fails as "malformed" and
//! the next start would move the file aside with everything it held. It is noticed by
//! its header, and the spool starts again in a new file with what it still has in memory
//! (this run's events not yet acknowledged, as far as the tail holds them); what it
//! cannot recover is counted, so the loss is reported, not silent.

use std::io::Read;
use std::path::{Path, PathBuf};

use chrono::Utc;

use super::{wal_sibling, Spool, SpoolError, SPOOL_FILE};

/// The first 16 bytes of every SQLite database file.
const HEADER: &[u8; 16] = b"SQLite format 3\0";

/// What [`Spool::rescue`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Rescued {
    /// Events still held in memory, appended to the new file.
    pub recovered: u64,
    /// Events the spool held that are gone with the old file's contents.
    pub lost: u64,
    /// Where the emptied or overwritten file was moved.
    pub moved_to: PathBuf,
}

/// True when the file at `path` is there but does not start as a SQLite database: it
/// was truncated or overwritten in place.
pub fn clobbered(path: &Path) -> bool {
    let mut head = [0u8; 16];
    match std::fs::File::open(path) {
        Ok(mut f) => match f.read_exact(&mut head) {
            Ok(()) => &head != HEADER,
            // Shorter than a header: emptied.
            Err(e) => e.kind() == std::io::ErrorKind::UnexpectedEof,
        },
        // Gone: `detached` handles that.
        Err(_) => false,
    }
}

/// At start, before the spool opens: a spool file emptied while the agent was not
/// running is moved aside (with its WAL, which must not be applied to an empty file)
/// instead of being opened as an empty database. Returns where it went. (One holding
/// something else than a database is the corrupt spool `open_or_recover` sets aside.)
pub fn set_aside_if_clobbered(dir: &Path) -> Result<Option<PathBuf>, SpoolError> {
    let path = dir.join(SPOOL_FILE);
    let emptied = std::fs::metadata(&path).is_ok_and(|m| m.len() < HEADER.len() as u64);
    if !emptied {
        return Ok(None);
    }
    let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
    let moved_to = path.with_file_name(format!("{SPOOL_FILE}.clobbered.{stamp}"));
    std::fs::rename(&path, &moved_to)
        .map_err(|e| SpoolError::NotOpen(format!("cannot move aside {}: {e}", path.display())))?;
    for ext in ["-wal", "-shm"] {
        let from = wal_sibling(&path, ext);
        if from.exists() {
            let _ = std::fs::rename(&from, wal_sibling(&moved_to, ext));
        }
    }
    Ok(Some(moved_to))
}

impl Spool {
    /// True when the spool's file was emptied or overwritten in place.
    pub fn clobbered(&self) -> bool {
        clobbered(&self.path)
    }

    /// Moves the clobbered file (and its WAL) aside, starts a new spool at the path with
    /// the events still in memory, and counts the rest as lost.
    pub fn rescue(&mut self) -> Result<Rescued, SpoolError> {
        let (events, _) = self.tail.take(u32::MAX, u64::MAX);
        let before = self.depth;
        let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
        let moved_to = self
            .path
            .with_file_name(format!("{SPOOL_FILE}.clobbered.{stamp}"));
        std::fs::rename(&self.path, &moved_to).map_err(|e| {
            SpoolError::NotOpen(format!("cannot move aside {}: {e}", self.path.display()))
        })?;
        for ext in ["-wal", "-shm"] {
            // Kept beside the old file: applied to the new one they would corrupt it.
            let from = wal_sibling(&self.path, ext);
            if from.exists() {
                let _ = std::fs::rename(&from, wal_sibling(&moved_to, ext));
            }
        }
        let mut fresh = self.successor()?;
        if !events.is_empty() {
            fresh.append(&events)?;
        }
        let recovered = events.len() as u64;
        *self = fresh;
        Ok(Rescued {
            recovered,
            lost: before.saturating_sub(recovered),
            moved_to,
        })
    }
}
