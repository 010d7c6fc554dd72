//! Following the log from file to file. A file is known by its device, inode and a
//! fingerprint of its first line, so a renamed file is still recognized and a truncated
//! or replaced one is not mistaken for the old. The position (identity + offset of the
//! next unread message) travels with the events to the spool and comes back at start.
//!
//! Rules, in the order they are checked on each poll:
//! - the file shrank or its first line changed: it was truncated (or copied and
//!   truncated): if a copy of it is beside it, the rest is read from the copy first,
//!   then the file is read from its start;
//! - unread bytes: read at most one chunk, parse the complete messages;
//! - at the end, and the file has stopped growing since the last poll: if another file
//!   follows it (the server rotated, the file was renamed), the held last message is
//!   taken and the next file is read from its start; a deleted file with nothing after
//!   it is closed.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::locate::{Candidate, Locator};
use super::record::Record;
use super::{Flush, LogParser};

/// Bytes read per poll.
pub const READ_CHUNK: usize = 1 << 20;
/// A message longer than this is split (each part marked truncated).
pub const MAX_RECORD: usize = 8 << 20;
/// Bytes of the first line that make the fingerprint.
const FP_MAX: usize = 256;

/// Where reading stands: the file and the offset of the next unread message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Path when it was read (informational; the identity decides).
    pub path: String,
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// FNV-1a of the first `fp_len` bytes (0 when the first line was not complete).
    pub fp: u64,
    /// Bytes the fingerprint covers.
    pub fp_len: u32,
    /// Offset of the next unread message.
    pub offset: u64,
}

impl Position {
    /// The file identity as used in event ids.
    pub fn identity(&self) -> String {
        format!("{:x}-{:x}-{:016x}", self.dev, self.ino, self.fp)
    }
}

/// Something that happened to the files, for the log and status.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// Started reading a file.
    Opened {
        /// The file.
        path: String,
        /// From where.
        offset: u64,
        /// True when continuing from a stored position.
        resumed: bool,
    },
    /// Finished a file and moved to the next.
    Rotated {
        /// The finished file.
        from: String,
        /// The next one.
        to: String,
    },
    /// The file got shorter or its start changed.
    Truncated {
        /// The file.
        path: String,
        /// Where reading was.
        offset: u64,
        /// The rest was read from this copy first (copytruncate).
        copy: Option<String>,
    },
    /// The file was deleted and nothing follows it: closed.
    Closed {
        /// The file.
        path: String,
    },
    /// The stored position names a file that no longer exists.
    Lost {
        /// The stored file.
        path: String,
    },
}

/// What one poll found.
#[derive(Debug, Default)]
pub struct Poll {
    /// Messages, all from one file.
    pub records: Vec<Record>,
    /// Position after them (`None` while no file is open).
    pub position: Option<Position>,
    /// More is waiting: poll again at once.
    pub more: bool,
    /// File events.
    pub notes: Vec<Note>,
}

struct OpenFile {
    file: File,
    path: PathBuf,
    dev: u64,
    ino: u64,
    fp: Option<(u64, u32)>,
    offset: u64,
    /// File size at the previous poll: equal now means it stopped growing.
    seen_size: Option<u64>,
}

pub use crate::base::StartAt;
pub use crate::model::TailStats;

/// Bytes per second over a sliding window of readings, one kept per second at most.
/// Plain code over given instants (unit-tested with made-up times).
#[derive(Debug, Default)]
pub struct Rate {
    samples: std::collections::VecDeque<(std::time::Instant, u64)>,
}

impl Rate {
    /// The window.
    const WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

    /// Adds a reading of the running total at `at`; returns the rate over the window.
    pub fn add(&mut self, at: std::time::Instant, total: u64) -> f64 {
        let several = self.samples.len() > 1;
        match self.samples.back_mut() {
            // Within a second of the last one: that reading moves forward.
            Some(last)
                if several && at.duration_since(last.0) < std::time::Duration::from_secs(1) =>
            {
                *last = (at, total);
            }
            _ => self.samples.push_back((at, total)),
        }
        while self.samples.len() > 2 && at.duration_since(self.samples[1].0) >= Self::WINDOW {
            self.samples.pop_front();
        }
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else {
            return 0.0;
        };
        let secs = last.0.duration_since(first.0).as_secs_f64();
        if secs < 0.5 {
            return 0.0;
        }
        (last.1.saturating_sub(first.1)) as f64 / secs
    }
}

/// Follows the log.
pub struct Tailer {
    locator: Locator,
    open: Option<OpenFile>,
    resume: Option<Position>,
    start: StartAt,
    buf: Vec<u8>,
    /// The last batch's vector, handed back to be filled again ([`Tailer::recycle`]):
    /// 2,000 records are about a megabyte, allocated and freed per poll otherwise.
    spare: Vec<Record>,
    rate: Rate,
    /// Counters.
    pub stats: TailStats,
}

impl Tailer {
    /// A tailer over `locator`, continuing at `resume` when given (and still there).
    pub fn new(locator: Locator, resume: Option<Position>, start: StartAt) -> Tailer {
        Tailer {
            locator,
            open: None,
            resume,
            start,
            buf: Vec::new(),
            spare: Vec::new(),
            rate: Rate::default(),
            stats: TailStats::default(),
        }
    }

    /// The locator in use.
    pub fn locator(&self) -> &Locator {
        &self.locator
    }

    /// Takes back a batch's vector once its records are used: the next poll fills it.
    pub fn recycle(&mut self, mut records: Vec<Record>) {
        records.clear();
        self.spare = records;
    }

    /// Records the kept vector has room for ([`Tailer::recycle`]).
    #[cfg(test)]
    pub fn spare_capacity(&self) -> usize {
        self.spare.capacity()
    }

    /// The current position, if a file is open.
    pub fn position(&self) -> Option<Position> {
        self.open.as_ref().map(position_of)
    }

    /// Reads what is new: at most `max` messages from one file.
    pub fn poll(&mut self, parser: &mut LogParser, max: usize) -> io::Result<Poll> {
        let mut poll = Poll::default();
        if self.open.is_none() && !self.open_first(&mut poll.notes)? {
            return Ok(poll);
        }
        let Some(o) = self.open.as_mut() else {
            return Ok(poll);
        };
        let meta = o.file.metadata()?;
        let size = meta.len();
        let settled = o.seen_size == Some(size);
        o.seen_size = Some(size);
        if size < o.offset
            || o.fp
                .is_some_and(|(fp, len)| fingerprint_of(&o.file, len) != Some(fp))
        {
            self.stats.truncations_total += 1;
            let copy = find_copy(&self.locator, o);
            poll.notes.push(Note::Truncated {
                path: o.path.display().to_string(),
                offset: o.offset,
                copy: copy.as_ref().map(|c| c.path.display().to_string()),
            });
            match copy {
                Some(c) => {
                    let offset = o.offset;
                    self.open = Some(open_at(&c, offset)?);
                }
                None => {
                    o.offset = 0;
                    // Learn the new first line now: a copy made of it later is then
                    // recognized.
                    o.fp = fingerprint(&o.file);
                    o.seen_size = None;
                }
            }
            poll.position = self.position();
            poll.more = true;
            return Ok(poll);
        }
        if o.fp.is_none() {
            o.fp = fingerprint(&o.file);
        }
        if o.offset < size {
            let (records, consumed, at_eof) = read(
                &mut self.buf,
                o,
                size,
                parser,
                max,
                settled,
                false,
                std::mem::take(&mut self.spare),
            )?;
            if consumed > 0 || !records.is_empty() {
                self.account(&records, consumed);
                let o = self.open.as_mut().expect("open");
                o.offset += consumed as u64;
                poll.more = !at_eof || records.len() >= max;
                poll.records = records;
                poll.position = self.position();
                return Ok(poll);
            }
        }
        // At the end (perhaps with a held message or a partial line).
        if settled {
            if let Some(next) = self.locator.next_after(o.dev, o.ino) {
                if o.offset < size {
                    // The file is finished: what is held is complete.
                    let (records, consumed, _) = read(
                        &mut self.buf,
                        o,
                        size,
                        parser,
                        max,
                        true,
                        true,
                        std::mem::take(&mut self.spare),
                    )?;
                    self.account(&records, consumed);
                    let o = self.open.as_mut().expect("open");
                    o.offset += consumed as u64;
                    poll.records = records;
                    poll.more = true;
                    poll.position = self.position();
                    return Ok(poll);
                }
                self.stats.rotations_total += 1;
                poll.notes.push(Note::Rotated {
                    from: o.path.display().to_string(),
                    to: next.path.display().to_string(),
                });
                self.open = Some(open_at(&next, 0)?);
                poll.more = true;
            } else if meta.nlink() == 0 && o.offset >= size {
                poll.notes.push(Note::Closed {
                    path: o.path.display().to_string(),
                });
                // Nothing follows yet; the next file is read from its start when it
                // appears.
                self.open = None;
                self.start = StartAt::Beginning;
                return Ok(poll);
            }
        }
        poll.position = self.position();
        self.update_stats();
        Ok(poll)
    }

    fn account(&mut self, records: &[Record], consumed: usize) {
        self.stats.bytes_read_total += consumed as u64;
        self.stats.records_total += records.len() as u64;
        self.stats.unparsed_lines_total +=
            records.iter().filter(|r| r.raw.is_some()).count() as u64;
        self.update_stats();
    }

    fn update_stats(&mut self) {
        if let Some(o) = &self.open {
            self.stats.file = Some(o.path.display().to_string());
            self.stats.offset = o.offset;
            self.stats.size = o.file.metadata().map(|m| m.len()).unwrap_or(0);
            self.stats.bytes_behind = self.stats.size.saturating_sub(o.offset);
        }
        let rate = self
            .rate
            .add(std::time::Instant::now(), self.stats.bytes_read_total);
        self.stats.read_bytes_per_s = (rate * 10.0).round() / 10.0;
    }

    /// Opens the stored position's file, or the current file; false when there is none.
    fn open_first(&mut self, notes: &mut Vec<Note>) -> io::Result<bool> {
        if let Some(pos) = self.resume.take() {
            let mut all = self.locator.candidates();
            all.extend(self.locator.current());
            let fp_matches = |c: &Candidate| {
                pos.fp_len == 0
                    || File::open(&c.path)
                        .ok()
                        .and_then(|f| fingerprint_of(&f, pos.fp_len))
                        == Some(pos.fp)
            };
            // The same file (perhaps renamed); else, when it was truncated while we
            // were away, the copy holding its old content (copytruncate).
            let found = all
                .iter()
                .find(|c| {
                    c.dev == pos.dev && c.ino == pos.ino && c.size >= pos.offset && fp_matches(c)
                })
                .or_else(|| {
                    all.iter().find(|c| {
                        pos.fp_len > 0 && c.ino != pos.ino && c.size >= pos.offset && fp_matches(c)
                    })
                })
                .map(|c| (c.clone(), pos.offset))
                // The same inode with other content: truncated while we were away; it
                // is read again from its start.
                .or_else(|| {
                    all.iter()
                        .find(|c| c.dev == pos.dev && c.ino == pos.ino)
                        .map(|c| (c.clone(), 0))
                });
            match found {
                Some((c, offset)) => {
                    self.open = Some(open_at(&c, offset)?);
                    notes.push(Note::Opened {
                        path: c.path.display().to_string(),
                        offset,
                        resumed: true,
                    });
                    return Ok(true);
                }
                None => {
                    notes.push(Note::Lost { path: pos.path });
                    // We were following this log: read the current file whole.
                    self.start = StartAt::Beginning;
                }
            }
        }
        let Some(cur) = self.locator.current() else {
            return Ok(false);
        };
        let offset = match self.start {
            StartAt::Beginning => 0,
            StartAt::End => line_start_before(&cur.path, cur.size)?,
        };
        self.open = Some(open_at(&cur, offset)?);
        self.start = StartAt::Beginning;
        notes.push(Note::Opened {
            path: cur.path.display().to_string(),
            offset,
            resumed: false,
        });
        Ok(true)
    }
}

/// After a truncation: a sibling whose first line is ours and that is long enough
/// to hold what was not read yet is the copy (logrotate `copytruncate`).
fn find_copy(locator: &Locator, o: &OpenFile) -> Option<Candidate> {
    let (fp, len) = o.fp?;
    if !matches!(locator, Locator::File(_)) {
        return None;
    }
    locator.candidates().into_iter().find(|c| {
        c.ino != o.ino
            && c.size >= o.offset
            && File::open(&c.path)
                .ok()
                .and_then(|f| fingerprint_of(&f, len))
                == Some(fp)
    })
}

fn position_of(o: &OpenFile) -> Position {
    let (fp, fp_len) = o.fp.unwrap_or((0, 0));
    Position {
        path: o.path.display().to_string(),
        dev: o.dev,
        ino: o.ino,
        fp,
        fp_len,
        offset: o.offset,
    }
}

fn open_at(c: &Candidate, offset: u64) -> io::Result<OpenFile> {
    let file = File::open(&c.path)?;
    let m = file.metadata()?;
    let fp = fingerprint(&file);
    Ok(OpenFile {
        file,
        path: c.path.clone(),
        dev: m.dev(),
        ino: m.ino(),
        fp,
        offset,
        seen_size: None,
    })
}

/// Reads from `o.offset` to at most `size` and parses. Returns the messages, the bytes
/// they used and whether the read reached `size`. A message that does not fit in a
/// chunk is read in doubling chunks up to [`MAX_RECORD`], then split. The messages go
/// into `out` (empty; a vector handed back to be filled again keeps its allocation).
#[allow(clippy::too_many_arguments)]
fn read(
    buf: &mut Vec<u8>,
    o: &OpenFile,
    size: u64,
    parser: &mut LogParser,
    max: usize,
    settled: bool,
    finished: bool,
    mut out: Vec<Record>,
) -> io::Result<(Vec<Record>, usize, bool)> {
    let mut cap = READ_CHUNK;
    loop {
        let want = ((size - o.offset) as usize).min(cap);
        buf.resize(want, 0);
        let n = read_full_at(&o.file, buf, o.offset)?;
        buf.truncate(n);
        let at_eof = o.offset + n as u64 >= size;
        let forced = !at_eof && n >= MAX_RECORD;
        let flush = if (finished && at_eof) || forced {
            Flush::Force
        } else if settled && at_eof {
            Flush::Settled
        } else {
            Flush::No
        };
        // Sized for the most a poll takes: growing a vector of records (hundreds of
        // bytes each) by doubling copies each one about twice, and the copies were a
        // large part of parse-log's time (BENCHMARKS.md).
        out.reserve(max.min(RECORDS_RESERVED));
        let consumed = parser.parse(buf, o.offset, flush, &mut out, max);
        if consumed == 0 && out.is_empty() && !at_eof && n == cap && cap < MAX_RECORD {
            cap *= 2;
            continue;
        }
        if forced {
            for r in &mut out {
                r.truncated = true;
            }
        }
        // Keep the buffer from holding a large chunk between polls.
        if buf.capacity() > 2 * READ_CHUNK {
            *buf = Vec::new();
        }
        return Ok((out, consumed, at_eof));
    }
}

fn read_full_at(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The fingerprint of a file: its first line (up to 256 bytes), once complete.
fn fingerprint(f: &File) -> Option<(u64, u32)> {
    let mut head = [0u8; FP_MAX];
    let n = read_full_at(f, &mut head, 0).ok()?;
    let len = match memchr::memchr(b'\n', &head[..n]) {
        Some(i) => i + 1,
        None if n == FP_MAX => FP_MAX,
        None => return None,
    };
    Some((fnv1a(&head[..len]), len as u32))
}

/// The hash of the first `len` bytes, if the file has them.
fn fingerprint_of(f: &File, len: u32) -> Option<u64> {
    let mut head = vec![0u8; len as usize];
    let n = read_full_at(f, &mut head, 0).ok()?;
    (n == len as usize).then(|| fnv1a(&head))
}

fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, c| {
        (h ^ u64::from(*c)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The start of the line that `size` is in (after the last newline before it).
fn line_start_before(path: &Path, size: u64) -> io::Result<u64> {
    let f = File::open(path)?;
    let from = size.saturating_sub(64 * 1024);
    let mut tail = vec![0u8; (size - from) as usize];
    let n = read_full_at(&f, &mut tail, from)?;
    Ok(match memchr::memrchr(b'\n', &tail[..n]) {
        Some(i) => from + i as u64 + 1,
        None => from,
    })
}

/// Records reserved per read, and the most `parse-log` takes per read (the daemon
/// takes 2,000 per poll).
const RECORDS_RESERVED: usize = 2_000;

/// Parses a whole file offline (`parse-log`), handing `each` the messages in order, a
/// read's worth at a time (a batch moves; its records are not copied one by one).
/// `each` hands back an empty vector to fill next (one it is done with keeps its
/// allocation: no megabyte allocated per read), or `None` to stop. Returns how many
/// messages were handed over.
pub fn read_file(
    path: &Path,
    parser: &mut LogParser,
    mut each: impl FnMut(Vec<Record>) -> Option<Vec<Record>>,
) -> io::Result<u64> {
    let f = File::open(path)?;
    let size = f.metadata()?.len();
    let c = Candidate::of(path).ok_or_else(|| io::Error::other("not a regular file"))?;
    let mut o = open_at(&c, 0)?;
    let mut buf = Vec::new();
    let mut n = 0;
    let mut spare = Vec::new();
    while o.offset < size {
        let (records, consumed, at_eof) = read(
            &mut buf,
            &o,
            size,
            parser,
            RECORDS_RESERVED,
            true,
            true,
            spare,
        )?;
        n += records.len() as u64;
        if records.is_empty() {
            spare = records;
        } else {
            let Some(mut next) = each(records) else {
                break;
            };
            next.clear();
            spare = next;
        }
        o.offset += consumed as u64;
        if consumed == 0 && at_eof {
            break;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod rate_tests {
    use super::Rate;
    use std::time::{Duration, Instant};

    #[test]
    fn the_rate_is_bytes_over_the_last_half_minute() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut r = Rate::default();
        assert_eq!(r.add(at(0), 0), 0.0, "one reading is no rate");
        assert_eq!(r.add(at(200), 1_000), 0.0, "too short a span");
        // 50 MB/s for 10 s, read in 100 ms steps.
        let mut rate = 0.0;
        for i in 1..=100u64 {
            rate = r.add(at(i * 100), i * 5_000_000);
        }
        assert!((rate - 50e6).abs() < 1e6, "{rate}");
        // Then nothing for a minute: the window forgets the burst.
        for s in 11..=70u64 {
            rate = r.add(at(s * 1000), 500_000_000);
        }
        assert_eq!(rate, 0.0);
        assert!(
            r.samples.len() <= 32,
            "one reading a second: {}",
            r.samples.len()
        );
    }
}
