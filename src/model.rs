//! Every type that crosses an actor boundary: events and batches, the messages children
//! exchange, health reports, and [`Route`], the indirection that lets senders reach a
//! child after it was restarted under a new `Addr`.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use crate::base::{EventKind, Naming, Output};

/// One event as collected. `data` is serialized once, by the collector that made it, and
/// travels as raw JSON through the spool to the listener without being parsed again.
#[derive(Debug, Clone)]
pub struct Event {
    /// Deterministic, source-scoped id: the same observation always gets the same id.
    pub id: String,
    /// The source.
    pub kind: EventKind,
    /// When the source observed it.
    pub collected_at: DateTime<Utc>,
    /// The source-specific payload.
    pub data: Box<RawValue>,
    /// The configured name of the server it is about (`None`: the agent's own).
    pub server: Option<std::sync::Arc<str>>,
}

impl Event {
    /// The memory an event holds, roughly: its text plus the struct. Queues in the agent
    /// are bounded by this, not by counts (an event may carry a 1 MB statement).
    pub fn bytes(&self) -> usize {
        self.data.get().len() + self.id.len() + 64
    }

    /// Makes an event from a serializable payload.
    pub fn new<T: Serialize>(
        id: String,
        kind: EventKind,
        collected_at: DateTime<Utc>,
        data: &T,
    ) -> Result<Event, serde_json::Error> {
        Ok(Event {
            id,
            kind,
            collected_at,
            data: serde_json::value::to_raw_value(data)?,
            server: None,
        })
    }

    /// Makes an event from the JSON text of a log message as [`LogData::write_json`]
    /// wrote it. Not parsed again to check it: that writer puts out serde_json's bytes
    /// for the same value (tested byte for byte, escaping of every byte included), and
    /// the check was a large part of the log reader's time (BENCHMARKS.md). Checked in
    /// debug builds, so every test that reads a log checks it.
    ///
    /// [`LogData::write_json`]: crate::logs::LogData::write_json
    pub(crate) fn from_written_log_json(
        id: String,
        kind: EventKind,
        collected_at: DateTime<Utc>,
        json: &[u8],
    ) -> Event {
        debug_assert!(
            serde_json::from_slice::<&serde_json::value::RawValue>(json).is_ok(),
            "write_json wrote what is not one JSON value: {}",
            String::from_utf8_lossy(json)
        );
        // SAFETY: `write_json` appends only the bytes of `&str` values, serde_json's
        // output and ASCII, so the bytes are UTF-8; and they are one JSON value (above).
        // `RawValue` is `#[repr(transparent)]` over `str`: serde_json itself turns a
        // `Box<str>` into a `Box<RawValue>` this way once it has checked the text.
        // Copied from the writer's buffer into an allocation of its exact size (one
        // allocation, where shrinking a vector sized by guess was two).
        let data = unsafe {
            let text = Box::<str>::from(std::str::from_utf8_unchecked(json));
            std::mem::transmute::<Box<str>, Box<serde_json::value::RawValue>>(text)
        };
        Event {
            id,
            kind,
            collected_at,
            data,
            server: None,
        }
    }
}

/// A batch handed from the spool to the shipper. Its id is stored with its events, so a
/// batch sent again after a failure or a crash has the same `batch_id` and event ids.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The `batch_id` and `Idempotency-Key`.
    pub batch_id: String,
    /// Events in spool order.
    pub events: Vec<Event>,
    /// The spool row of each event (same order): parts of a batch are acknowledged or
    /// quarantined by row.
    pub seqs: Vec<i64>,
}

/// Errors of the spool, classified where they are produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpoolError {
    /// The spool is not open (its actor is starting or failed to open it).
    #[error("spool not open: {0}")]
    NotOpen(String),
    /// SQLite reported an error (other than the two below).
    #[error("sqlite: {0}")]
    Sqlite(String),
    /// The file is damaged or not a database: reopening it moves it aside.
    #[error("spool damaged: {0}")]
    Corrupt(String),
    /// The spool's child is not running right now (restarting); try again later.
    #[error("spool unavailable (restarting)")]
    Unavailable,
    /// No room on the spool's file system (or less than what acknowledgements need).
    #[error("spool full: {0}")]
    Full(String),
}

/// Why a source cannot do (all of) its work, and what fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong, in the words of whoever found it.
    pub reason: String,
    /// What an operator does about it (SQL, a setting, a file mode).
    pub fix: String,
}

impl Problem {
    /// A reason and its fix.
    pub fn new(reason: impl Into<String>, fix: impl Into<String>) -> Problem {
        Problem {
            reason: reason.into(),
            fix: fix.into(),
        }
    }
}

/// A source's own account of its condition. Sources make it typed; it becomes text
/// only where it is printed (status, the agent's log), and `status` reads that text back
/// with [`std::str::FromStr`], the exact inverse of [`std::fmt::Display`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceState {
    /// Working; what it reads (`following /var/log/… (csvlog)`, `available (…)`).
    Working(String),
    /// Working, but this sample only sets the baseline later deltas start from.
    Baseline(String),
    /// Working with a part missing (e.g. other sessions' queries hidden).
    Degraded(Problem),
    /// Not working until the fix is applied; not an error of the cycle.
    Unavailable(Problem),
}

impl SourceState {
    /// Degraded or unavailable: said at warning level, not info.
    pub fn is_problem(&self) -> bool {
        matches!(self, SourceState::Degraded(_) | SourceState::Unavailable(_))
    }

    /// The problem, if there is one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            SourceState::Degraded(p) | SourceState::Unavailable(p) => Some(p),
            _ => None,
        }
    }
}

impl std::fmt::Display for SourceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceState::Working(what) => f.write_str(what),
            SourceState::Baseline(what) => write!(f, "baseline: {what}"),
            SourceState::Degraded(p) => write!(f, "degraded: {} (fix: {})", p.reason, p.fix),
            SourceState::Unavailable(p) => {
                write!(f, "unavailable: {} (fix: {})", p.reason, p.fix)
            }
        }
    }
}

impl std::str::FromStr for SourceState {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<SourceState, Self::Err> {
        let problem = |rest: &str| {
            let (reason, fix) = rest
                .strip_suffix(')')
                .and_then(|r| r.rsplit_once(" (fix: "))
                .unwrap_or((rest, ""));
            Problem::new(reason, fix)
        };
        Ok(if let Some(rest) = s.strip_prefix("unavailable: ") {
            SourceState::Unavailable(problem(rest))
        } else if let Some(rest) = s.strip_prefix("degraded: ") {
            SourceState::Degraded(problem(rest))
        } else if let Some(rest) = s.strip_prefix("baseline: ") {
            SourceState::Baseline(rest.to_string())
        } else {
            SourceState::Working(s.to_string())
        })
    }
}

impl Serialize for SourceState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SourceState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SourceState, D::Error> {
        let text = String::deserialize(d)?;
        Ok(text.parse().unwrap_or_else(|e| match e {}))
    }
}

/// Records a source's new state and says so in the agent's log when it changed: at
/// warning level when something is wrong, else at info. A source with nothing to say
/// (`None`: all is as it should be) clears the last state without a word.
pub fn note_state(log: &slog::Logger, current: &mut Option<SourceState>, new: Option<SourceState>) {
    let Some(new) = new else {
        *current = None;
        return;
    };
    if current.as_ref() == Some(&new) {
        return;
    }
    if new.is_problem() {
        slog::warn!(log, "source_state_changed"; "state" => %new);
    } else {
        slog::info!(log, "source_state_changed"; "state" => %new);
    }
    *current = Some(new);
}

/// What the agent learnt of one server as it went: its version (the OTLP resource says
/// it). One per server, shared by its connections and its outputs' requests.
#[derive(Debug, Default)]
pub struct ServerFacts {
    /// `server_version_num`; 0 until a source asked.
    version: std::sync::atomic::AtomicI32,
    /// Which cluster it was at the last look, in which role.
    identity: std::sync::Mutex<Option<Identity>>,
    /// How many times the cluster or its role changed: a baseline taken under another
    /// epoch is another cluster's (or another role's) counters.
    epoch: std::sync::atomic::AtomicU64,
}

/// Which cluster a server is and in which role (`pg_server_stats`' `identity`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Identity {
    /// `pg_control_system().system_identifier`, as text.
    pub system_identifier: String,
    /// The timeline.
    pub timeline: i64,
    /// `primary` or `standby`.
    pub role: String,
    /// `server_version`.
    pub version: String,
    /// `server_version_num`.
    pub version_num: i64,
}

/// A change of cluster or role: what it was and what it is.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentityChange {
    /// Before.
    pub before: Identity,
    /// After.
    pub after: Identity,
}

impl ServerFacts {
    /// Records what the server says it is now; returns the epoch the reading belongs to
    /// and, to the one caller that saw it first, the change when the cluster (system
    /// identifier) or its role differs from the last look. A new timeline alone (a
    /// standby following a promoted primary) or a new version (a restart into a minor
    /// release) is recorded without a change: the counters are the same server's.
    pub fn observe(&self, now: Identity) -> Seen {
        use std::sync::atomic::Ordering;
        let mut last = self.identity.lock().unwrap_or_else(|p| p.into_inner());
        let (change, store) = match last.as_ref() {
            Some(was) if was.system_identifier != now.system_identifier || was.role != now.role => {
                self.epoch.fetch_add(1, Ordering::AcqRel);
                let change = IdentityChange {
                    before: was.clone(),
                    after: now.clone(),
                };
                (Some(change), true)
            }
            Some(_) => (None, false),
            None => (None, true),
        };
        *last = Some(now);
        Seen {
            epoch: self.epoch.load(Ordering::Acquire),
            change,
            store,
        }
    }

    /// Starts from the identity last reported (stored in the spool): a server that is
    /// another cluster or role at the first look is a change.
    pub fn remember(&self, identity: Identity) {
        let mut last = self.identity.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none() {
            *last = Some(identity);
        }
    }

    /// The epoch of the last look (see [`ServerFacts::observe`]).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }
    /// Records `server_version_num`.
    pub fn set_version(&self, v: i32) {
        self.version.store(v, std::sync::atomic::Ordering::Relaxed);
    }

    /// The version as `major.minor` (`15.8`), once a source has asked it.
    pub fn version(&self) -> Option<String> {
        let v = self.version.load(std::sync::atomic::Ordering::Relaxed);
        (v >= 100_000).then(|| format!("{}.{}", v / 10_000, v % 10_000))
    }
}

/// Two records of facts are equal when they say the same.
impl PartialEq for ServerFacts {
    fn eq(&self, other: &ServerFacts) -> bool {
        self.version() == other.version()
    }
}

/// What one look at the server's identity meant (see [`ServerFacts::observe`]).
#[derive(Debug)]
pub struct Seen {
    /// The epoch the reading belongs to.
    pub epoch: u64,
    /// The change since the last look, to the one caller that saw it first.
    pub change: Option<IdentityChange>,
    /// The identity is to be stored (the first ever seen, or a change): for that caller.
    pub store: bool,
}

/// A source's state that must advance together with the events it produced (the
/// statements baseline, the log position): written in the same transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Whose state (one row per name).
    pub name: String,
    /// The state, opaque to the spool.
    pub value: Vec<u8>,
    /// Changes to keyed rows kept under the same name: a journal, so a large state (a
    /// baseline of thousands of entries) is not rewritten whole when a few rows change.
    pub rows: RowChanges,
}

impl Checkpoint {
    /// A checkpoint of one value and no rows.
    pub fn value(name: impl Into<String>, value: Vec<u8>) -> Checkpoint {
        Checkpoint {
            name: name.into(),
            value,
            rows: RowChanges::default(),
        }
    }

    /// This checkpoint taking the place of `older`, which was never written: the value
    /// is this one's, and the row changes are both, this one's winning (a journal must
    /// not lose the older changes). A checkpoint of another name simply replaces it.
    pub fn after(mut self, older: Checkpoint) -> Checkpoint {
        if older.name != self.name || self.rows.replace {
            return self;
        }
        let mut set = older.rows.set;
        set.append(&mut self.rows.set);
        self.rows = RowChanges {
            replace: older.rows.replace,
            set,
        };
        self
    }
}

/// Changes to a checkpoint's keyed rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowChanges {
    /// Every row of the name goes before `set` applies (a new state).
    pub replace: bool,
    /// Rows written (key → value) or removed (key → `None`).
    pub set: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl RowChanges {
    /// Nothing to change.
    pub fn is_empty(&self) -> bool {
        !self.replace && self.set.is_empty()
    }
}

/// Collector or log reader → spool: append these events, and the checkpoint if any, in one
/// transaction. The answer is the spool's backlog then (as [`Backlog`]'s), so a reader
/// that paces itself by it needs no second round trip per batch.
#[derive(Message)]
#[rtype(result = "Result<u64, SpoolError>")]
pub struct Enqueue {
    /// The events, shared with the sender, which keeps them until the spool answers
    /// (to offer them again if it fails): a hand-over copies no event.
    pub events: std::sync::Arc<Vec<Event>>,
    /// State that is true once these events are on disk.
    pub checkpoint: Option<Checkpoint>,
}

/// Shipper → spool: the oldest batch (the same one again until it is acknowledged).
#[derive(Message)]
#[rtype(result = "Result<Option<Batch>, SpoolError>")]
pub struct NextBatch {
    /// For which output (each has its own batches and acknowledgements).
    pub output: Output,
    /// At most this many events.
    pub max_events: u32,
    /// At most this many bytes of event data (one event at least, whatever its size).
    pub max_bytes: u64,
    /// When nothing waits: who to tell once events arrive (once), so an idle shipper
    /// sleeps instead of polling.
    pub notify: Option<Recipient<SpoolNews>>,
}

/// Spool → an idle shipper: events arrived since it last found nothing to send.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct SpoolNews;

/// A reader → spool: bytes of event data not shipped yet by the output furthest along
/// (see `Spool::backlog_bytes`): the log reader waits while that is a good part of the
/// cap instead of filling the spool until it evicts.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "u64")]
pub struct Backlog;

/// Shipper → spool: the listener accepted this batch; delete its events.
#[derive(Message)]
#[rtype(result = "Result<u64, SpoolError>")]
pub struct Ack {
    /// The output that took it.
    pub output: Output,
    /// The acknowledged batch.
    pub batch_id: String,
}

/// Shipper → spool: these rows of a split batch were accepted; delete them.
#[derive(Message)]
#[rtype(result = "Result<u64, SpoolError>")]
pub struct AckRows {
    /// The output that took them.
    pub output: Output,
    /// Spool rows.
    pub seqs: Vec<i64>,
}

/// Shipper → spool: the listener refuses these rows on their own; keep them aside.
#[derive(Message)]
#[rtype(result = "Result<u64, SpoolError>")]
pub struct QuarantineRows {
    /// The output that refuses them (the others still get them).
    pub output: Output,
    /// Spool rows.
    pub seqs: Vec<i64>,
    /// Why (e.g. "HTTP 400").
    pub reason: String,
}

/// Supervisor → shipper: ship what is spooled until empty or `deadline`.
#[derive(Message)]
#[rtype(result = "FlushOutcome")]
pub struct Flush {
    /// When to give up.
    pub deadline: Instant,
}

/// Supervisor → collector at shutdown: stop collecting, hand the work in progress (the
/// sampler's open window) to the spool, answer with the events handed.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct FinishUp {
    /// When to give up waiting for the spool.
    pub deadline: Instant,
}

/// What a final flush achieved.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FlushOutcome {
    /// Batches the listener accepted during the flush.
    pub batches: u64,
    /// True when the spool was empty at the end.
    pub drained: bool,
}

/// Supervisor → any child: are you alive, and how are you doing?
#[derive(Message)]
#[rtype(result = "Health")]
pub struct Ping;

/// A child's answer to [`Ping`].
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// When the child last finished a unit of work (a cycle, an attempt); a child that
    /// answers pings but makes no progress past `deadline` is treated as hung.
    #[serde(skip)]
    pub progress: Instant,
    /// How long the child may go without progress; `None` for children without cycles.
    #[serde(skip)]
    pub deadline: Option<Duration>,
    /// When the child last succeeded.
    pub last_success: Option<DateTime<Utc>>,
    /// The last error, if the last attempt failed.
    pub last_error: Option<String>,
    /// Child-specific figures.
    pub detail: ChildDetail,
}

/// Child-specific figures of a [`Health`] report.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ChildDetail {
    /// A collector's counters.
    Collector(CollectorStats),
    /// The spool's depth and size.
    Spool(SpoolStats),
    /// The shipper's delivery state.
    Shipper(ShipperStats),
    /// The log reader's position and counters.
    LogReader(LogReaderStats),
    /// The syslog receiver's counters.
    Receiver(ReceiverStats),
}

/// The syslog receiver's counters (`[syslog] listen`).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct ReceiverStats {
    /// The address it listens on (TCP and UDP).
    pub listen: Option<String>,
    /// The address it listens on with TLS (TCP).
    pub listen_tls: Option<String>,
    /// TLS senders whose handshake failed (or did not finish in 10 s).
    pub tls_handshake_failures_total: u64,
    /// Syslog messages received (datagrams and framed TCP messages).
    pub messages_total: u64,
    /// Their bytes.
    pub bytes_total: u64,
    /// Messages without a syslog header (dropped).
    pub unreadable_total: u64,
    /// Messages of no configured server's `syslog_ident` / `syslog_host` (dropped).
    pub unrouted_total: u64,
    /// TCP messages over the size cap (skipped).
    pub oversize_total: u64,
    /// UDP datagrams the kernel dropped at the socket since the receiver started (its
    /// buffer full: the sender outran the spool's intake).
    pub udp_dropped_total: u64,
    /// TCP connections open.
    pub connections: usize,
    /// TCP connections refused over the cap.
    pub connections_refused_total: u64,
    /// Reading waits for the spool.
    pub paused: bool,
    /// Events made, not yet in the spool.
    pub pending_events: usize,
    /// Events dropped before the spool took them.
    pub dropped_events_total: u64,
    /// Each server's part, by name.
    pub servers: std::collections::BTreeMap<String, ReceiverServerStats>,
    /// What each server's messages said, counted (for `/metrics`; not in status).
    #[serde(skip)]
    pub insights: std::collections::BTreeMap<String, LogInsights>,
}

/// One server's part of what the syslog receiver took.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct ReceiverServerStats {
    /// Syslog messages routed to it (PostgreSQL's chunks).
    pub messages_total: u64,
    /// Events of its messages in the spool.
    pub events_total: u64,
    /// Messages put back together with chunks missing or cut at the cap.
    pub incomplete_total: u64,
    /// Messages of the agent's own sessions, left out.
    pub own_events_skipped_total: u64,
    /// Messages in progress (waiting for their next chunk).
    pub pending_messages: usize,
    /// The `log_line_prefix` its messages are read with.
    pub prefix: String,
}

impl ChildDetail {
    /// The detail of child `id` as a status file holds it: read as the type that child
    /// reports, never guessed from the shape of the object. `None` when it is not that
    /// type (a file written by another version).
    pub fn read(id: ChildId, value: serde_json::Value) -> Option<ChildDetail> {
        use serde_json::from_value;
        match id {
            ChildId::Spool => from_value(value).ok().map(ChildDetail::Spool),
            ChildId::Shipper(_) => from_value(value).ok().map(ChildDetail::Shipper),
            ChildId::Collector(..) | ChildId::Custom(..) => {
                from_value(value).ok().map(ChildDetail::Collector)
            }
            ChildId::LogReader(_) => from_value(value).ok().map(ChildDetail::LogReader),
            ChildId::Receiver => from_value(value).ok().map(ChildDetail::Receiver),
        }
    }
}

/// The log reader's position and counters.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct LogReaderStats {
    /// What is followed and how (`following …`), or why nothing is (`unavailable: …`).
    pub source_state: Option<SourceState>,
    /// `stderr`, `csvlog` or `jsonlog`.
    pub format: Option<crate::base::Format>,
    /// The `log_line_prefix` the stderr parser uses.
    pub prefix: Option<String>,
    /// Events handed to the spool.
    pub events_total: u64,
    /// Events read but not yet in the spool: the batch on its way and the one read
    /// meanwhile (more stay while the spool is restarting or failing).
    pub pending_events: usize,
    /// Failed hand-overs to the spool (retried; nothing is read meanwhile).
    pub spool_errors_total: u64,
    /// Messages of the agent's own sessions, left out (see `logs::OwnSessions`).
    pub own_events_skipped_total: u64,
    /// Reading waits for the spool to drain: it holds 40 % of `buffer.max_bytes` in
    /// events (the log file keeps what is not read yet; nothing is evicted for it).
    pub waiting_for_spool: bool,
    /// Times reading paused that way.
    pub spool_waits_total: u64,
    /// Reader counters and position.
    #[serde(flatten)]
    pub tail: TailStats,
    /// What the messages read said, counted (for `/metrics`; not in status).
    #[serde(skip)]
    pub insights: LogInsights,
}

/// A histogram over fixed bounds (a value counts in the first bucket whose bound it
/// does not exceed; past the last, in the last slot).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Upper bounds.
    pub bounds: &'static [f64],
    /// Counts per bucket, one more than `bounds`.
    pub counts: Vec<u64>,
    /// Sum of the values.
    pub sum: f64,
}

impl Histogram {
    /// Empty, over `bounds`.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    /// Counts `v`.
    pub fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
    }
}

/// Bounds of slow statements' durations, seconds.
pub const SLOW_QUERY_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Bounds of lock waits that ended, seconds.
pub const LOCK_WAIT_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
/// Bounds of checkpoints' and autovacuum runs' durations, seconds.
pub const MAINTENANCE_BUCKETS: &[f64] = &[
    0.1, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// The severities a label may take (others, translated ones included: `other`).
pub const SEVERITIES: &[&str] = &[
    "DEBUG5", "DEBUG4", "DEBUG3", "DEBUG2", "DEBUG1", "INFO", "NOTICE", "WARNING", "ERROR", "LOG",
    "FATAL", "PANIC",
];

/// What the server's messages said, counted as they are read: by class and severity
/// (both from bounded sets), and the durations they report.
#[derive(Debug, Clone, PartialEq)]
pub struct LogInsights {
    /// Messages by (class, severity).
    pub messages: std::collections::BTreeMap<(&'static str, &'static str), u64>,
    /// `duration:` of slow statements.
    pub slow_query_seconds: Histogram,
    /// `acquired … after N ms`: lock waits that ended.
    pub lock_wait_seconds: Histogram,
    /// `checkpoint complete: … total=N s` (and restartpoints).
    pub checkpoint_seconds: Histogram,
    /// `automatic vacuum`/`analyze` … `elapsed: N s`, by class.
    pub autovacuum_seconds: std::collections::BTreeMap<&'static str, Histogram>,
}

impl Default for LogInsights {
    fn default() -> Self {
        LogInsights {
            messages: Default::default(),
            slow_query_seconds: Histogram::new(SLOW_QUERY_BUCKETS),
            lock_wait_seconds: Histogram::new(LOCK_WAIT_BUCKETS),
            checkpoint_seconds: Histogram::new(MAINTENANCE_BUCKETS),
            autovacuum_seconds: Default::default(),
        }
    }
}

impl LogInsights {
    /// Counts one message of `class` (a wire name) and `severity`, with its duration
    /// (slow statements) and figures.
    pub fn note(
        &mut self,
        class: &'static str,
        severity: Option<&str>,
        duration_ms: Option<f64>,
        figures: Option<&serde_json::Map<String, serde_json::Value>>,
    ) {
        let sev = match severity {
            Some(s) => SEVERITIES
                .iter()
                .find(|k| **k == s)
                .copied()
                .unwrap_or("other"),
            None => "none",
        };
        *self.messages.entry((class, sev)).or_default() += 1;
        let fig = |k: &str| {
            figures
                .and_then(|f| f.get(k))
                .and_then(serde_json::Value::as_f64)
        };
        match class {
            "slow_query" => {
                if let Some(ms) = duration_ms {
                    self.slow_query_seconds.observe(ms / 1000.0);
                }
            }
            "lock_acquired" => {
                if let Some(ms) = fig("waited_ms") {
                    self.lock_wait_seconds.observe(ms / 1000.0);
                }
            }
            "checkpoint" => {
                if let Some(s) = fig("total_s") {
                    self.checkpoint_seconds.observe(s);
                }
            }
            "autovacuum" | "autoanalyze" => {
                if let Some(s) = fig("elapsed_s") {
                    self.autovacuum_seconds
                        .entry(class)
                        .or_insert_with(|| Histogram::new(MAINTENANCE_BUCKETS))
                        .observe(s);
                }
            }
            _ => {}
        }
    }
}

/// Counters of one collector.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct CollectorStats {
    /// Cycles completed (successful or not).
    pub cycles_total: u64,
    /// Cycles that failed (database unreachable, timeout, bad row).
    pub cycle_errors_total: u64,
    /// Ticks skipped because the previous cycle was still running.
    pub cycles_skipped_total: u64,
    /// Events produced.
    pub events_total: u64,
    /// Events waiting in memory because the spool did not take them yet.
    pub pending_events: usize,
    /// Events dropped because the in-memory backlog exceeded its cap (spool down long).
    pub dropped_events_total: u64,
    /// Sampling interval in seconds.
    pub interval_s: u64,
    /// The source's own account of its state (e.g. unavailable, with the fix).
    pub source_state: Option<SourceState>,
    /// Rows the source could not read (e.g. text that fails to decode), skipped and
    /// counted rather than failing the whole sample.
    pub rows_skipped_total: u64,
    /// How long its cycles took (for `/metrics`; not in `status.json`).
    #[serde(skip)]
    pub cycle_seconds: CycleTimes,
}

/// The upper bounds of [`CycleTimes`]' buckets, in seconds.
pub const CYCLE_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How long a source's cycles took, as a histogram of [`CYCLE_BUCKETS`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CycleTimes {
    /// Cycles that took at most each bucket's bound and more than the one before (the
    /// last counts what took longer than every bound).
    pub counts: [u64; CYCLE_BUCKETS.len() + 1],
    /// Seconds in all.
    pub sum_s: f64,
    /// Seconds the last cycle took.
    pub last_s: f64,
}

impl CycleTimes {
    /// Counts one cycle that took `took`.
    pub fn observe(&mut self, took: Duration) {
        let s = took.as_secs_f64();
        let i = CYCLE_BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(CYCLE_BUCKETS.len());
        self.counts[i] += 1;
        self.sum_s += s;
        self.last_s = s;
    }

    /// Cycles counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// The spool's depth and size.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct SpoolStats {
    /// Events waiting to be shipped.
    pub depth: u64,
    /// Bytes of event data waiting.
    pub bytes: u64,
    /// Size of the database files on disk (db + WAL).
    pub file_bytes: u64,
    /// Age of the oldest waiting event, seconds.
    pub oldest_age_s: Option<f64>,
    /// Events appended since start.
    pub appended_total: u64,
    /// Events acknowledged and deleted since start.
    pub acked_total: u64,
    /// Events evicted because of the size cap.
    pub evicted_total: u64,
    /// Events in quarantine (refused by the listener on their own, or unreadable).
    pub quarantined: u64,
    /// Their bytes.
    pub quarantined_bytes: u64,
    /// Spool write/read errors since start.
    pub errors_total: u64,
    /// Per configured output: events it has not taken yet (with one output, `depth`).
    pub pending_by_output: std::collections::BTreeMap<String, u64>,
    /// The cap on the spool's file (`buffer.max_bytes`; 0: none).
    pub max_bytes: u64,
}

/// The shipper's delivery state.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct ShipperStats {
    /// HTTP status of the last response, if any.
    pub last_http_status: Option<u16>,
    /// Batches accepted by the listener.
    pub batches_sent_total: u64,
    /// Events accepted by the listener.
    pub events_sent_total: u64,
    /// Failed attempts (network errors and non-2xx answers).
    pub failures_total: u64,
    /// Consecutive failures right now.
    pub consecutive_failures: u32,
    /// Seconds until the next attempt when backing off.
    pub retry_in_s: Option<f64>,
    /// The circuit breaker.
    pub breaker: BreakerStats,
    /// Set while the listener refuses the token (401/403): nothing is sent but a probe
    /// now and then until the config is reloaded or the probe succeeds.
    pub token_refused: Option<String>,
    /// Batches split because the listener refused them (400/413/422).
    pub batches_split_total: u64,
    /// Events the listener refused on their own, moved to quarantine.
    pub events_quarantined_total: u64,
}

/// Counters of the tailer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TailStats {
    /// Bytes parsed.
    pub bytes_read_total: u64,
    /// Messages read.
    pub records_total: u64,
    /// Lines that fit no format (shipped as class `other` with their raw text).
    pub unparsed_lines_total: u64,
    /// Files finished and left for the next one.
    pub rotations_total: u64,
    /// Truncations seen.
    pub truncations_total: u64,
    /// The file being read.
    pub file: Option<String>,
    /// The offset in it.
    pub offset: u64,
    /// Its size (size − offset is how far behind the reader is).
    pub size: u64,
    /// Bytes of the file not read yet.
    pub bytes_behind: u64,
    /// Bytes read per second over the last half minute (a reader catching up shows its
    /// pace here; a quiet log shows the server's write rate).
    pub read_bytes_per_s: f64,
}

/// The breaker's phase as status shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerPhase {
    /// Requests flow.
    #[default]
    Closed,
    /// Nothing goes until the probe.
    Open,
    /// The probe is on its way.
    HalfOpen,
}

/// The breaker as status shows it.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct BreakerStats {
    /// `closed`, `open` or `half_open`.
    pub state: BreakerPhase,
    /// Consecutive failures counted.
    pub consecutive_failures: u32,
    /// When it opened (while open or half-open).
    pub open_since: Option<DateTime<Utc>>,
    /// Seconds until the probe (while open).
    pub next_probe_in_s: Option<f64>,
}

/// A late-bound address: the supervisor replaces the `Addr` when it restarts a child, and
/// senders look it up at each send, so nobody holds a stale address.
pub struct Route<A: Actor>(Arc<RwLock<Option<Addr<A>>>>);

impl<A: Actor> Clone for Route<A> {
    fn clone(&self) -> Self {
        Route(self.0.clone())
    }
}

impl<A: Actor> Default for Route<A> {
    fn default() -> Self {
        Route(Arc::new(RwLock::new(None)))
    }
}

impl<A: Actor> Route<A> {
    /// The current address, if the child is running.
    pub fn get(&self) -> Option<Addr<A>> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Points the route at a new address (or at nothing while the child is down).
    pub fn set(&self, addr: Option<Addr<A>>) {
        match self.0.write() {
            Ok(mut g) => *g = addr,
            Err(poisoned) => *poisoned.into_inner() = addr,
        }
    }
}

/// Which configured server a child serves: [`ServerNo::ONLY`] in the single-server form
/// (`[database]` alone; children named as before servers had names), otherwise the
/// number the `[[servers]]` entry's name was given in this process. Numbers are never
/// reused, so a server removed and added again by reloads keeps its children's names
/// and a child of a removed server is never taken for another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerNo(u16);

/// The names given numbers: bounded by the distinct names configured in the process's
/// life (a name is kept, leaked, once: child names are `&'static str` for threads,
/// logs and status).
struct ServerNames {
    names: Vec<&'static str>,
    /// Each server's children's names: `<server>/<child>`.
    children: std::collections::BTreeMap<(u16, &'static str), &'static str>,
}

static SERVER_NAMES: std::sync::Mutex<ServerNames> = std::sync::Mutex::new(ServerNames {
    names: Vec::new(),
    children: std::collections::BTreeMap::new(),
});

fn server_names() -> std::sync::MutexGuard<'static, ServerNames> {
    SERVER_NAMES.lock().unwrap_or_else(|p| p.into_inner())
}

impl ServerNo {
    /// The server of the single-server form.
    pub const ONLY: ServerNo = ServerNo(0);

    /// The number of the `[[servers]]` entry named `name` (the same for the same name).
    pub fn of(name: &str) -> ServerNo {
        let mut n = server_names();
        if let Some(i) = n.names.iter().position(|x| *x == name) {
            return ServerNo(i as u16 + 1);
        }
        n.names.push(Box::leak(name.to_string().into_boxed_str()));
        ServerNo(n.names.len() as u16)
    }

    /// A `[[servers]]` entry's name, if this is one.
    pub fn name(self) -> Option<&'static str> {
        (self.0 > 0)
            .then(|| server_names().names.get(self.0 as usize - 1).copied())
            .flatten()
    }

    /// A child's name for this server: `child` alone for [`ServerNo::ONLY`].
    fn child_name(self, child: &'static str) -> &'static str {
        let Some(server) = self.name() else {
            return child;
        };
        let mut n = server_names();
        n.children
            .entry((self.0, child))
            .or_insert_with(|| Box::leak(format!("{server}/{child}").into_boxed_str()))
    }
}

/// A `[[custom]]` query, by the number its name was given in this process (names are
/// kept, leaked, once, like [`ServerNo`]'s): its child is `pg_custom.<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CustomNo(u16);

/// The child names of the custom queries named so far (`pg_custom.<name>`).
static CUSTOM_NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());

/// The prefix of a custom query's child name.
pub const CUSTOM_CHILD: &str = "pg_custom.";

impl CustomNo {
    /// The number of the query named `name` (the same for the same name).
    pub fn of(name: &str) -> CustomNo {
        let mut n = CUSTOM_NAMES.lock().unwrap_or_else(|p| p.into_inner());
        let child = format!("{CUSTOM_CHILD}{name}");
        if let Some(i) = n.iter().position(|x| *x == child) {
            return CustomNo(i as u16);
        }
        n.push(Box::leak(child.into_boxed_str()));
        CustomNo(n.len() as u16 - 1)
    }

    /// Every query named so far.
    fn all() -> Vec<CustomNo> {
        let n = CUSTOM_NAMES.lock().unwrap_or_else(|p| p.into_inner()).len();
        (0..n as u16).map(CustomNo).collect()
    }

    /// Its child's name, `pg_custom.<name>`.
    pub fn child(self) -> &'static str {
        CUSTOM_NAMES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(self.0 as usize)
            .copied()
            .unwrap_or(CUSTOM_CHILD)
    }

    /// The query's name.
    pub fn name(self) -> &'static str {
        self.child().strip_prefix(CUSTOM_CHILD).unwrap_or("")
    }
}

/// A child of the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChildId {
    /// The SQLite spool.
    Spool,
    /// The shipper of one output.
    Shipper(Output),
    /// The collector of one sampled source (activity, statements, locks, system) of
    /// one server.
    Collector(ServerNo, EventKind),
    /// The server log's reader (`pg_log`) of one server.
    LogReader(ServerNo),
    /// The collector of one `[[custom]]` query of one server.
    Custom(ServerNo, CustomNo),
    /// The syslog receiver (`[syslog] listen`), for every server whose log arrives so.
    Receiver,
}

/// Where a child is in its life, as status and metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildState {
    /// Started; no health report yet.
    Starting,
    /// Answers health checks and makes progress.
    Running,
    /// Went down; a restart is scheduled.
    Restarting,
    /// Went down too often; retried at the slow rate.
    Failed,
    /// Not running on purpose (shutdown, reload, disabled).
    Stopped,
}

impl ChildState {
    /// The name in status.
    pub fn as_str(self) -> &'static str {
        match self {
            ChildState::Starting => "starting",
            ChildState::Running => "running",
            ChildState::Restarting => "restarting",
            ChildState::Failed => "failed",
            ChildState::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for ChildState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ChildId {
    /// Every child this build can run for `server`, in start order (the spool and the
    /// shippers, which serve every server, first).
    pub fn all_of(server: ServerNo) -> impl Iterator<Item = ChildId> {
        std::iter::once(ChildId::Spool)
            .chain(Output::ALL.into_iter().map(ChildId::Shipper))
            .chain(
                EventKind::all()
                    .filter(|k| {
                        !matches!(k, EventKind::PgLog | EventKind::Agent | EventKind::PgCustom)
                    })
                    .map(move |k| ChildId::Collector(server, k)),
            )
            .chain(
                CustomNo::all()
                    .into_iter()
                    .map(move |n| ChildId::Custom(server, n)),
            )
            .chain(std::iter::once(ChildId::LogReader(server)))
            .chain(std::iter::once(ChildId::Receiver))
    }

    /// Every child of the single-server form, in start order.
    pub fn all() -> impl Iterator<Item = ChildId> {
        ChildId::all_of(ServerNo::ONLY)
    }

    /// The child named `name` in status (`buffer`, `shipper`, `pg_tables`,
    /// `db1/pg_tables`, …).
    pub fn parse(name: &str) -> Option<ChildId> {
        let (server, own) = match name.rsplit_once('/') {
            Some((server, own)) => (ServerNo::of(server), own),
            None => (ServerNo::ONLY, name),
        };
        if let Some(custom) = own.strip_prefix(CUSTOM_CHILD).filter(|n| !n.is_empty()) {
            return Some(ChildId::Custom(server, CustomNo::of(custom)));
        }
        ChildId::all_of(server).find(|c| c.name() == name)
    }

    /// The name shown in logs and status: the child's own (`pg_tables`), after its
    /// server's name in the `[[servers]]` form (`db1/pg_tables`).
    pub fn name(self) -> &'static str {
        match self {
            ChildId::Collector(s, _) | ChildId::LogReader(s) | ChildId::Custom(s, _) => {
                s.child_name(self.base())
            }
            _ => self.base(),
        }
    }

    /// The child's own name, without its server's: the same for every server.
    pub fn base(self) -> &'static str {
        match self {
            // "buffer" in status and logs, like its `[buffer]` section: names users
            // already alert on; the code calls the thing by what it is, the spool.
            ChildId::Spool => "buffer",
            ChildId::Shipper(o) => o.naming().child,
            ChildId::Collector(_, k) => k.as_str(),
            ChildId::LogReader(_) => EventKind::PgLog.as_str(),
            ChildId::Custom(_, n) => n.child(),
            ChildId::Receiver => "syslog",
        }
    }

    /// The server a child serves (`None` for the spool and the shippers).
    pub fn server(self) -> Option<ServerNo> {
        match self {
            ChildId::Collector(s, _) | ChildId::LogReader(s) | ChildId::Custom(s, _) => Some(s),
            _ => None,
        }
    }

    /// A child that produces events (stopped first at shutdown).
    pub fn is_source(self) -> bool {
        matches!(
            self,
            ChildId::Collector(..)
                | ChildId::LogReader(_)
                | ChildId::Receiver
                | ChildId::Custom(..)
        )
    }
}

/// A child is written as its name (status, the reload's list of restarted children).
impl Serialize for ChildId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for ChildId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ChildId, D::Error> {
        let name = std::borrow::Cow::<str>::deserialize(d)?;
        ChildId::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("no child is named {name:?}")))
    }
}

/// Child → supervisor, sent from the `Drop` of an [`ExitGuard`]: the child's actor is
/// gone (it stopped, or its handler panicked and unwound).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ChildExited {
    /// Which child.
    pub child: ChildId,
    /// Which incarnation of it; a stale report of an old incarnation is ignored.
    pub generation: u64,
    /// True when the thread was unwinding from a panic.
    pub panicked: bool,
}

/// Held by every child actor: when the actor is dropped (stopped, or unwound by a panic,
/// which actix does not report to anybody) the guard tells the supervisor.
pub struct ExitGuard {
    /// Where to report.
    pub to: Recipient<ChildExited>,
    /// Which child.
    pub child: ChildId,
    /// Which incarnation.
    pub generation: u64,
}

#[cfg(test)]
impl ExitGuard {
    /// A guard whose report nobody reads (tests of one actor, without a supervisor).
    /// Needs a running actix system.
    pub fn unwatched(child: ChildId) -> ExitGuard {
        struct Nobody;
        impl Actor for Nobody {
            type Context = Context<Self>;
        }
        impl Handler<ChildExited> for Nobody {
            type Result = ();
            fn handle(&mut self, _: ChildExited, _: &mut Context<Self>) {}
        }
        ExitGuard {
            to: Nobody.start().recipient(),
            child,
            generation: 1,
        }
    }
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.to.do_send(ChildExited {
            child: self.child,
            generation: self.generation,
            panicked: std::thread::panicking(),
        });
    }
}

/// What the statements source saw in its last cycle: the statements with the most
/// execution time in it, most first.
#[derive(Debug, Clone, Default)]
pub struct Top {
    /// When the cycle's sample was taken.
    pub taken_at: DateTime<Utc>,
    /// The statements (every `toplevel` of one summed).
    pub statements: Vec<TopStatement>,
}

/// A statement the session sampler saw running long (PostgreSQL 14+, where a session
/// shows its statement's query id), for pg_plans.
#[derive(Debug, Clone, PartialEq)]
pub struct LongRunning {
    /// Its database.
    pub datname: String,
    /// The role running it.
    pub usename: Option<String>,
    /// pg_stat_statements' query id.
    pub queryid: i64,
    /// How long it had been running when last seen, s.
    pub running_s: f64,
}

/// The most statements [`PlanShapes`] keeps a generic shape of, and the most distinct
/// auto_explain shapes it keeps until pg_plans takes them.
pub const PLAN_SHAPES_KEPT: usize = 5000;

/// What pg_plans and the log reader of one server share of plans: the generic shape
/// pg_plans last got per statement (database name, query id), and the shapes of the
/// auto_explain plans read since pg_plans last looked.
#[derive(Debug, Default)]
pub struct PlanShapes {
    inner: std::sync::Mutex<Shapes>,
}

#[derive(Debug, Default)]
struct Shapes {
    generic: std::collections::HashMap<(String, i64), String>,
    logged: std::collections::HashMap<LoggedKey, Logged>,
}

/// An auto_explain plan's database name, query id and shape hash.
pub type LoggedKey = (String, i64, String);

/// How often a shape was seen in the log for a statement, and when last.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Logged {
    /// Plans read with it.
    pub runs: u64,
    /// When the last was read.
    pub last_at: DateTime<Utc>,
}

impl PlanShapes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shapes> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// pg_plans got `hash` for the statement.
    pub fn generic(&self, datname: &str, queryid: i64, hash: &str) {
        let mut s = self.lock();
        let key = (datname.to_string(), queryid);
        if s.generic.len() >= PLAN_SHAPES_KEPT && !s.generic.contains_key(&key) {
            // The statements planned lately are planned again each cycle: they come back.
            s.generic.clear();
        }
        s.generic.insert(key, hash.to_string());
    }

    /// An auto_explain plan of shape `hash` was read for the statement at `at`: noted
    /// for pg_plans; returns the generic shape pg_plans last got for it.
    pub fn logged(
        &self,
        datname: &str,
        queryid: i64,
        hash: &str,
        at: DateTime<Utc>,
    ) -> Option<String> {
        let mut s = self.lock();
        let key = (datname.to_string(), queryid, hash.to_string());
        let full = s.logged.len() >= PLAN_SHAPES_KEPT;
        match s.logged.get_mut(&key) {
            Some(l) => {
                l.runs += 1;
                l.last_at = l.last_at.max(at);
            }
            None if !full => {
                s.logged.insert(
                    key,
                    Logged {
                        runs: 1,
                        last_at: at,
                    },
                );
            }
            None => {}
        }
        s.generic.get(&(datname.to_string(), queryid)).cloned()
    }

    /// The auto_explain shapes read since the last call.
    pub fn take_logged(&self) -> Vec<(LoggedKey, Logged)> {
        std::mem::take(&mut self.lock().logged)
            .into_iter()
            .collect()
    }
}

/// One statement of [`Top`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopStatement {
    /// The role that ran it.
    pub userid: u32,
    /// Its database.
    pub dbid: u32,
    /// pg_stat_statements' query id.
    pub queryid: i64,
    /// Execution time in the cycle, ms.
    pub total_ms: f64,
    /// Calls in the cycle.
    pub calls: f64,
}

impl TopStatement {
    /// Mean execution time per call in the cycle, ms.
    pub fn mean_ms(&self) -> Option<f64> {
        (self.calls > 0.0).then(|| self.total_ms / self.calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(system: &str, timeline: i64, role: &str, version: &str) -> Identity {
        Identity {
            system_identifier: system.into(),
            timeline,
            role: role.into(),
            version: version.into(),
            version_num: 0,
        }
    }

    /// `observe` as (epoch, change, store).
    fn look(f: &ServerFacts, now: Identity) -> (u64, Option<IdentityChange>, bool) {
        let s = f.observe(now);
        (s.epoch, s.change, s.store)
    }

    #[test]
    fn a_new_cluster_or_role_is_a_change_seen_once_and_a_new_timeline_or_version_is_not() {
        let f = ServerFacts::default();
        // The first identity ever seen is stored, without a change.
        assert_eq!(look(&f, id("A", 1, "standby", "15.7")), (0, None, true));
        assert_eq!(look(&f, id("A", 1, "standby", "15.7")), (0, None, false));
        // A standby following a promoted primary, then restarted into a minor release.
        assert_eq!(look(&f, id("A", 2, "standby", "15.7")), (0, None, false));
        assert_eq!(look(&f, id("A", 2, "standby", "15.8")), (0, None, false));
        // Promoted.
        let (epoch, change, store) = look(&f, id("A", 3, "primary", "15.8"));
        assert_eq!((epoch, store), (1, true));
        let change = change.expect("a change");
        assert_eq!(
            (change.before.role.as_str(), change.after.role.as_str()),
            ("standby", "primary")
        );
        assert_eq!((change.before.timeline, change.after.timeline), (2, 3));
        // Told once: the next look is the same epoch, no change.
        assert_eq!(look(&f, id("A", 3, "primary", "15.8")), (1, None, false));
        // Another cluster at the same address.
        let (epoch, change, _) = look(&f, id("B", 1, "primary", "15.8"));
        assert_eq!(epoch, 2);
        assert_eq!(change.expect("a change").before.system_identifier, "A");
        assert_eq!(f.epoch(), 2);
    }

    #[test]
    fn the_identity_stored_before_a_restart_is_the_first_looks_baseline() {
        // The same cluster: nothing to say or store.
        let f = ServerFacts::default();
        f.remember(id("A", 1, "primary", "15.8"));
        assert_eq!(look(&f, id("A", 1, "primary", "15.8")), (0, None, false));
        // Replaced while the agent was down: a change at the first look.
        let f = ServerFacts::default();
        f.remember(id("A", 1, "primary", "15.8"));
        let (epoch, change, store) = look(&f, id("B", 1, "primary", "16.2"));
        assert_eq!((epoch, store), (1, true));
        assert_eq!(change.expect("a change").after.system_identifier, "B");
        // What a look already saw is not overwritten by an older stored identity.
        f.remember(id("A", 1, "primary", "15.8"));
        assert_eq!(look(&f, id("B", 1, "primary", "16.2")), (1, None, false));
    }

    #[test]
    fn a_cycle_lands_in_the_first_bucket_that_holds_it() {
        let mut t = CycleTimes::default();
        t.observe(Duration::from_micros(1000));
        t.observe(Duration::from_millis(3));
        t.observe(Duration::from_secs(31));
        assert_eq!(t.counts[0], 1, "1 ms is within the 1 ms bucket");
        assert_eq!(t.counts[2], 1, "3 ms: over 2.5 ms, within 5 ms");
        assert_eq!(t.counts[CYCLE_BUCKETS.len()], 1, "over every bound");
        assert_eq!(t.count(), 3);
        assert!((t.sum_s - 31.004).abs() < 1e-9, "{}", t.sum_s);
    }

    #[test]
    fn a_source_state_reads_back_from_its_text() {
        let states = [
            SourceState::Working("following /var/log/pg.csv (csvlog)".into()),
            SourceState::Baseline("the first sample sets the baseline".into()),
            SourceState::Degraded(Problem::new(
                "3 other session(s) show <insufficient privilege> (really)",
                "GRANT pg_monitor TO a;",
            )),
            SourceState::Unavailable(Problem::new(
                "cannot read the log: Permission denied (os error 13)",
                "let the agent's user read /x (e.g. add it to a group)",
            )),
        ];
        for s in states {
            let text = s.to_string();
            assert_eq!(text.parse::<SourceState>(), Ok(s.clone()), "{text}");
            let json = serde_json::to_string(&s).expect("json");
            assert_eq!(json, serde_json::to_string(&text).expect("json"));
            let back: SourceState = serde_json::from_str(&json).expect("back");
            assert_eq!(back, s);
        }
        assert!(!SourceState::Working("x".into()).is_problem());
        assert!(SourceState::Degraded(Problem::new("a", "b")).is_problem());
        assert_eq!(
            SourceState::Unavailable(Problem::new("a", "b")).to_string(),
            "unavailable: a (fix: b)"
        );
    }
}
