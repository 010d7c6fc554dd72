//! Structured logging with slog: human-readable text on a terminal, JSON lines otherwise
//! (journald, files, CI). Messages are stable snake_case event names with the details in
//! key-value fields, never formatted into the text. Records of dependencies that use the
//! `log` crate are routed into the same drain, so nothing is printed past it.
//!
//! Each record is written to stderr in one `write` (a line is never interleaved with
//! another writer's). When stderr is the journal (systemd sets `JOURNAL_STREAM` to its
//! device and inode), every line starts with its syslog priority as sd-daemon(3)
//! defines it (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug): journald stores it
//! as the entry's priority, so `journalctl -p warning -u postgres-agent` shows warnings
//! and errors only.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use slog::{o, Drain, Level, Logger};

/// How log records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text on a terminal, JSON lines otherwise.
    Auto,
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

/// Keeps the global `log` → slog bridge alive and, when dropped at the end of the
/// process, flushes the async drain: the last records (`shutdown_flushed`,
/// `agent_stopped`) are written before the process exits, even though actors on other
/// threads still hold logger clones.
pub struct LogGuard {
    _scope: slog_scope::GlobalLoggerGuard,
    _flush: slog_async::AsyncGuard,
}

/// Builds the root logger writing to stderr, and routes `log` records into it.
pub fn init(format: LogFormat, level: Level) -> (Logger, LogGuard) {
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let journal = stderr_is_journal();
    let priority = Arc::new(AtomicU8::new(PRIORITY_INFO));
    let out = LineWriter::new(std::io::stderr(), journal.then(|| priority.clone()));
    let drain: Box<dyn Drain<Ok = (), Err = slog::Never> + Send> = if json {
        let d = slog_json::Json::new(out).add_default_keys().build().fuse();
        Box::new(Prioritized::new(d, priority))
    } else if journal || !std::io::stderr().is_terminal() {
        let decorator = slog_term::PlainDecorator::new(out);
        let d = slog_term::FullFormat::new(decorator).build().fuse();
        Box::new(Prioritized::new(d, priority))
    } else {
        let decorator = slog_term::TermDecorator::new().stderr().build();
        Box::new(slog_term::FullFormat::new(decorator).build().fuse())
    };
    // An async drain keeps a slow stderr (a stalled journald) from blocking the actors;
    // if its queue overflows it reports how many records it dropped.
    let (drain, flush) = slog_async::Async::new(drain)
        .chan_size(8192)
        .build_with_guard();
    let drain = drain.fuse();
    let drain = drain.filter_level(level).fuse();
    let log = Logger::root(drain, o!());
    let scope = slog_scope::set_global_logger(log.clone());
    // Dependencies (bb8, rustls, actix) log through `log`; forward their records. The
    // call fails only if a `log` logger was installed already, which we never do.
    let _ = slog_stdlog::init_with_level(log::Level::Warn);
    (
        log,
        LogGuard {
            _scope: scope,
            _flush: flush,
        },
    )
}

const PRIORITY_INFO: u8 = 6;

/// The syslog priority of a record's level (sd-daemon(3), RFC 5424 severities).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Critical => 2,
        Level::Error => 3,
        Level::Warning => 4,
        Level::Info => PRIORITY_INFO,
        Level::Debug | Level::Trace => 7,
    }
}

/// True when stderr is the journal: `JOURNAL_STREAM` (`<device>:<inode>`, set by
/// systemd for a service whose output goes to the journal) names the file descriptor
/// stderr is. A variable inherited by a process whose stderr was redirected elsewhere
/// names another file and is ignored, as systemd's documentation asks.
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    // SAFETY: fstat on fd 2 with a zeroed stat buffer the call fills in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    names_file(&value.to_string_lossy(), st.st_dev, st.st_ino)
}

/// Whether a `JOURNAL_STREAM` value names the file of device `dev`, inode `ino`.
pub fn names_file(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

/// A drain that tells the [`LineWriter`] the priority of the record it writes next.
/// The async drain runs its inner drain on one thread, so the record and its line
/// cannot be told apart by another record in between.
struct Prioritized<D> {
    inner: D,
    current: Arc<AtomicU8>,
}

impl<D> Prioritized<D> {
    fn new(inner: D, current: Arc<AtomicU8>) -> Self {
        Prioritized { inner, current }
    }
}

impl<D: Drain> Drain for Prioritized<D> {
    type Ok = D::Ok;
    type Err = D::Err;

    fn log(&self, r: &slog::Record, kv: &slog::OwnedKVList) -> Result<D::Ok, D::Err> {
        self.current.store(priority(r.level()), Ordering::Relaxed);
        self.inner.log(r, kv)
    }
}

/// Collects a record's pieces (the JSON serializer writes a field at a time) and writes
/// each whole line at once, prefixed with `<priority>` when `priority` is given.
pub struct LineWriter<W: Write> {
    out: W,
    priority: Option<Arc<AtomicU8>>,
    line: Vec<u8>,
}

impl<W: Write> LineWriter<W> {
    /// Lines go to `out`; with `priority`, each starts with the priority it holds.
    pub fn new(out: W, priority: Option<Arc<AtomicU8>>) -> Self {
        LineWriter {
            out,
            priority,
            line: Vec::with_capacity(512),
        }
    }

    fn emit(&mut self) -> std::io::Result<()> {
        if self.line.is_empty() {
            return Ok(());
        }
        let r = match &self.priority {
            Some(p) => {
                let mut framed = format!("<{}>", p.load(Ordering::Relaxed)).into_bytes();
                framed.extend_from_slice(&self.line);
                self.out.write_all(&framed)
            }
            None => self.out.write_all(&self.line),
        };
        self.line.clear();
        r
    }
}

impl<W: Write> Write for LineWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut rest = buf;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            self.line.extend_from_slice(&rest[..=nl]);
            self.emit()?;
            rest = &rest[nl + 1..];
        }
        self.line.extend_from_slice(rest);
        Ok(buf.len())
    }

    /// Writes what was collected of an unfinished line (without a newline).
    fn flush(&mut self) -> std::io::Result<()> {
        self.emit()?;
        self.out.flush()
    }
}

impl<W: Write> Drop for LineWriter<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_is_written_whole_with_the_priority_of_its_record() {
        let p = Arc::new(AtomicU8::new(PRIORITY_INFO));
        let mut out = Vec::new();
        {
            let mut w = LineWriter::new(&mut out, Some(p.clone()));
            p.store(priority(Level::Warning), Ordering::Relaxed);
            w.write_all(b"{\"msg\":").unwrap();
            w.write_all(b"\"a\"}\n").unwrap();
            p.store(priority(Level::Error), Ordering::Relaxed);
            w.write_all(b"{\"msg\":\"b\"}\n{\"msg\":").unwrap();
            p.store(priority(Level::Debug), Ordering::Relaxed);
            w.write_all(b"\"c\"}\n").unwrap();
            p.store(priority(Level::Info), Ordering::Relaxed);
            w.write_all(b"unfinished").unwrap();
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<4>{\"msg\":\"a\"}\n<3>{\"msg\":\"b\"}\n<7>{\"msg\":\"c\"}\n<6>unfinished"
        );
    }

    #[test]
    fn without_the_journal_lines_are_written_whole_and_unprefixed() {
        let mut out = Vec::new();
        {
            let mut w = LineWriter::new(&mut out, None);
            w.write_all(b"one ").unwrap();
            w.write_all(b"line\ntwo\n").unwrap();
        }
        assert_eq!(out, b"one line\ntwo\n");
    }

    #[test]
    fn journal_stream_must_name_the_file_exactly() {
        assert!(names_file("2049:1234", 2049, 1234));
        assert!(names_file("2049:1234\n", 2049, 1234));
        assert!(!names_file("2049:1235", 2049, 1234));
        assert!(!names_file("2048:1234", 2049, 1234));
        assert!(!names_file("", 2049, 1234));
        assert!(!names_file("2049", 2049, 1234));
        assert!(!names_file("x:y", 2049, 1234));
    }

    #[test]
    fn priorities_follow_syslog_severities() {
        assert_eq!(priority(Level::Critical), 2);
        assert_eq!(priority(Level::Error), 3);
        assert_eq!(priority(Level::Warning), 4);
        assert_eq!(priority(Level::Info), 6);
        assert_eq!(priority(Level::Debug), 7);
        assert_eq!(priority(Level::Trace), 7);
    }
}
