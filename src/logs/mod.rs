//! The server log: parsers for the three formats (`stderr` with any `log_line_prefix`,
//! `csvlog`, `jsonlog`), classification, redaction, and the tailer that follows the
//! server from file to file and remembers its position in the spool. Everything here
//! is plain code; [`actor::LogReader`] is the thin shell that runs it.
//!
//! Parsers are stateless over a byte buffer: they return how many bytes the complete
//! messages used, and the tailer reads again from there. A message whose next line may
//! still be on its way is held back until the file is seen not to grow (or is left for
//! the next file), so the position stored with the events is always a message boundary.

pub mod actor;
pub mod classify;
pub mod csv;
pub mod explain;
pub mod follow;
#[cfg(test)]
mod fuzz;
pub mod json;
pub mod locate;
pub mod messages;
pub mod plan;
pub mod prefix;
pub mod record;
pub use crate::sql::redact;
pub mod stderr;
pub mod subclass;
pub mod syslog;
pub mod tail;
#[cfg(test)]
mod tail_model;
pub mod time;

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use regex::Regex;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::correlation;
use crate::model::{Event, EventKind};
use classify::{classify, sqlstate_class, Class};
use prefix::Prefix;
use record::Record;
use redact::Redact;

/// The `log_line_prefix` of a server that was never asked (PostgreSQL 10+ default).
pub const DEFAULT_PREFIX: &str = "%m [%p] ";

pub use crate::base::{Format, StartAt};

impl Format {
    /// The file name extension the logging collector gives it.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Stderr => "log",
            Format::Csv => "csv",
            Format::Json => "json",
        }
    }

    /// Guesses the format of a file from its name, then from its first bytes.
    pub fn sniff(path: &std::path::Path, head: &[u8]) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => return Format::Csv,
            Some("json") => return Format::Json,
            _ => {}
        }
        let first = head.iter().find(|c| !c.is_ascii_whitespace());
        if first == Some(&b'{') {
            return Format::Json;
        }
        // csvlog starts with a timestamp followed by a comma.
        if head.len() > 24 && head[..32.min(head.len())].contains(&b',') {
            let line = &head[..memchr::memchr(b'\n', head).unwrap_or(head.len())];
            if line.iter().filter(|c| **c == b',').count() >= 22 {
                return Format::Csv;
            }
        }
        Format::Stderr
    }
}

/// The first 4 KiB of a file (for [`Format::sniff`]); empty when unreadable.
pub fn head(p: &std::path::Path) -> Vec<u8> {
    use std::io::Read;
    let mut b = vec![0u8; 4096];
    let n = std::fs::File::open(p)
        .and_then(|mut f| f.read(&mut b))
        .unwrap_or(0);
    b.truncate(n);
    b
}

/// Whether the parser may treat the end of its buffer as the end of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// More may come: hold the last message, read only complete lines.
    No,
    /// The file has stopped growing: emit the last message too (complete lines only).
    Settled,
    /// Take everything, a last line without its newline included (a record longer than
    /// the reader's limit, or the end of a file read offline).
    Force,
}

/// A parser for one format.
#[derive(Debug, Clone)]
pub enum LogParser {
    /// `stderr` with a prefix.
    Stderr(Box<stderr::StderrParser>),
    /// `csvlog`.
    Csv(csv::CsvParser),
    /// `jsonlog`.
    Json(json::JsonParser),
}

impl LogParser {
    /// The parser of `format`; `prefix` matters for `stderr` only.
    pub fn new(format: Format, prefix: &str) -> LogParser {
        match format {
            Format::Stderr => {
                LogParser::Stderr(Box::new(stderr::StderrParser::new(Prefix::compile(prefix))))
            }
            Format::Csv => LogParser::Csv(csv::CsvParser),
            Format::Json => LogParser::Json(json::JsonParser),
        }
    }

    /// This parser, for lines that came through a relay that may drop the tab of a
    /// message's continuation lines (syslog): such a line then continues the message
    /// before it instead of being another program's output.
    pub fn relayed(self) -> LogParser {
        match self {
            LogParser::Stderr(p) => LogParser::Stderr(Box::new(p.relayed())),
            other => other,
        }
    }

    /// Its format.
    pub fn format(&self) -> Format {
        match self {
            LogParser::Stderr(_) => Format::Stderr,
            LogParser::Csv(_) => Format::Csv,
            LogParser::Json(_) => Format::Json,
        }
    }

    /// The prefix of a `stderr` parser.
    pub fn prefix(&self) -> Option<&str> {
        match self {
            LogParser::Stderr(p) => Some(p.prefix().as_str()),
            _ => None,
        }
    }

    /// Parses complete messages of `buf` (at file offset `base`) into `out`, at most
    /// `max`; returns the bytes they used (always a message boundary).
    pub fn parse(
        &mut self,
        buf: &[u8],
        base: u64,
        flush: Flush,
        out: &mut Vec<Record>,
        max: usize,
    ) -> usize {
        match self {
            LogParser::Stderr(p) => p.parse(buf, base, flush, out, max),
            LogParser::Csv(p) => p.parse(buf, base, flush, out, max),
            LogParser::Json(p) => p.parse(buf, base, flush, out, max),
        }
    }
}

/// The `data` of a `pg_log` event: the design.md §4 keys always (null when unknown),
/// then extras only when the format has them.
#[derive(Debug, Serialize)]
pub struct LogData<'a> {
    /// RFC 3339 when the zone is known, else as written.
    pub timestamp: Option<String>,
    /// Backend pid.
    pub pid: Option<i64>,
    /// Role.
    pub user: Option<&'a str>,
    /// Database.
    pub database: Option<&'a str>,
    /// `application_name`.
    pub application_name: Option<&'a str>,
    /// Request id from the application name (or a sqlcommenter comment).
    pub correlation_id: Option<String>,
    /// Where the correlation id was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_source: Option<correlation::CorrelationSource>,
    /// The agent's fingerprint of the normalized statement (see
    /// [`crate::fingerprint`]); not the server's `query_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_fingerprint: Option<String>,
    /// W3C trace id of a sqlcommenter `traceparent` in the statement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The `traceparent`'s parent id: the application span that ran the statement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    /// LOG, ERROR, …
    pub severity: Option<&'a str>,
    /// SQLSTATE.
    pub sqlstate: Option<&'a str>,
    /// Name of the SQLSTATE class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlstate_class: Option<&'static str>,
    /// Primary message.
    pub message: Cow<'a, str>,
    /// DETAIL.
    pub detail: Option<Cow<'a, str>>,
    /// HINT.
    pub hint: Option<Cow<'a, str>>,
    /// CONTEXT.
    pub context: Option<Cow<'a, str>>,
    /// The statement (STATEMENT line, or the statement of a `duration:` message).
    pub statement: Option<Cow<'a, str>>,
    /// QUERY (internal query).
    pub query: Option<Cow<'a, str>>,
    /// `duration: N ms`.
    pub duration_ms: Option<f64>,
    /// The plan of an `auto_explain` message (`duration: … ms  plan:`); the message is
    /// then its first line and the plan's `Query Text` the statement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<explain::Plan>,
    /// Classification.
    pub class: Class,
    /// The fine class, from the message's template (`unique_violation`,
    /// `checkpoint_complete`, …): the same in every format and language.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subclass: Option<&'static str>,
    /// Class-specific figures (table, size_bytes, write_s, waited_ms, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub figures: Option<Map<String, Value>>,
    /// The message's template in PostgreSQL's catalogue: its id (stable across servers,
    /// languages and the text of its arguments).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<messages::MessageId>,
    /// The template in English (`relation "%s" does not exist`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_template: Option<&'static str>,
    /// The template's arguments as the message wrote them, in the English template's
    /// order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub message_args: Vec<Option<Cow<'a, str>>>,
    /// The language the message was written in, when not English (`de`, `ja`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_language: Option<&'static str>,
    /// The file it was read from.
    pub file: &'a str,
    /// Byte offset of its first line.
    pub offset: u64,
    /// The file's format.
    pub format: &'static str,
    /// Session id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<&'a str>,
    /// Line number in the session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_line: Option<i64>,
    /// Command tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_tag: Option<&'a str>,
    /// Backend type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_type: Option<&'a str>,
    /// Client host (and port).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_host: Option<&'a str>,
    /// Virtual transaction id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vxid: Option<&'a str>,
    /// Transaction id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xid: Option<&'a str>,
    /// Query id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_id: Option<i64>,
    /// Parallel leader pid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_pid: Option<i64>,
    /// LOCATION (verbose).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<&'a str>,
    /// Position of the error in the statement (characters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor_position: Option<i64>,
    /// The text of a line that fits no format.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<Cow<'a, str>>,
    /// Server address the client connected to (`%L`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_address: Option<&'a str>,
    /// Some text was cut.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// The stderr line could be read more than one way (a client wrote separators or a
    /// severity label into a name): fields the readings disagree on are null, and the
    /// severity too when they disagree on where the message starts.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ambiguous: bool,
    /// Lines that lost the continuation's leading tab (relayed through syslog or a
    /// cloud log API) were read as this message's continuation.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub continued_without_tab: bool,
}

impl LogData<'_> {
    /// The same JSON as `serde_json::to_vec(self)`, byte for byte, written directly:
    /// keys are constants, and a string with nothing to escape is copied whole (serde
    /// escaped every key of every record: a tenth of `parse-log`'s time).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut o = JsonObject::open(out);
        o.str(key!("timestamp"), self.timestamp.as_deref());
        o.num(key!("pid"), self.pid);
        o.str(key!("user"), self.user);
        o.str(key!("database"), self.database);
        o.str(key!("application_name"), self.application_name);
        o.str(key!("correlation_id"), self.correlation_id.as_deref());
        if let Some(c) = &self.correlation_source {
            o.serde(key!("correlation_source"), c);
        }
        if let Some(f) = &self.query_fingerprint {
            o.str(key!("query_fingerprint"), Some(f));
        }
        if let Some(t) = &self.trace_id {
            o.str(key!("trace_id"), Some(t));
        }
        if let Some(t) = &self.span_id {
            o.str(key!("span_id"), Some(t));
        }
        o.str(key!("severity"), self.severity);
        o.str(key!("sqlstate"), self.sqlstate);
        if let Some(c) = self.sqlstate_class {
            o.str(key!("sqlstate_class"), Some(c));
        }
        o.str(key!("message"), Some(&self.message));
        o.str(key!("detail"), self.detail.as_deref());
        o.str(key!("hint"), self.hint.as_deref());
        o.str(key!("context"), self.context.as_deref());
        o.str(key!("statement"), self.statement.as_deref());
        o.str(key!("query"), self.query.as_deref());
        o.serde(key!("duration_ms"), &self.duration_ms);
        if let Some(p) = &self.plan {
            o.serde(key!("plan"), p);
        }
        o.str(key!("class"), Some(self.class.as_str()));
        if self.subclass.is_some() {
            o.str(key!("subclass"), self.subclass);
        }
        if let Some(f) = &self.figures {
            o.serde(key!("figures"), f);
        }
        if let Some(id) = self.message_id {
            o.raw(key!("message_id"), &id.quoted());
        }
        if self.message_template.is_some() {
            o.str(key!("message_template"), self.message_template);
        }
        if !self.message_args.is_empty() {
            o.key(key!("message_args"));
            o.out.push(b'[');
            for (i, a) in self.message_args.iter().enumerate() {
                if i > 0 {
                    o.out.push(b',');
                }
                match a {
                    Some(a) => o.str_value(a),
                    None => o.out.extend_from_slice(b"null"),
                }
            }
            o.out.push(b']');
        }
        if self.message_language.is_some() {
            o.str(key!("message_language"), self.message_language);
        }
        o.str(key!("file"), Some(self.file));
        o.num(key!("offset"), Some(self.offset));
        o.str(key!("format"), Some(self.format));
        if self.session_id.is_some() {
            o.str(key!("session_id"), self.session_id);
        }
        if self.session_line.is_some() {
            o.num(key!("session_line"), self.session_line);
        }
        for (k, v) in [
            (key!("command_tag"), self.command_tag),
            (key!("backend_type"), self.backend_type),
            (key!("remote_host"), self.remote_host),
            (key!("vxid"), self.vxid),
            (key!("xid"), self.xid),
        ] {
            if v.is_some() {
                o.str(k, v);
            }
        }
        for (k, v) in [
            (key!("query_id"), self.query_id),
            (key!("leader_pid"), self.leader_pid),
        ] {
            if v.is_some() {
                o.num(k, v);
            }
        }
        if self.location.is_some() {
            o.str(key!("location"), self.location);
        }
        if self.cursor_position.is_some() {
            o.num(key!("cursor_position"), self.cursor_position);
        }
        if let Some(r) = &self.raw {
            o.str(key!("raw"), Some(r));
        }
        if self.local_address.is_some() {
            o.str(key!("local_address"), self.local_address);
        }
        if self.truncated {
            o.raw(key!("truncated"), b"true");
        }
        if self.ambiguous {
            o.raw(key!("ambiguous"), b"true");
        }
        if self.continued_without_tab {
            o.raw(key!("continued_without_tab"), b"true");
        }
        o.close();
    }
}

/// The longest argument shipped in `message_args`: a longer one (a statement, a plan)
/// is in the message already and would only double the event.
const MAX_ARG_BYTES: usize = 256;

/// A template's arguments as shipped: `None` for one longer than [`MAX_ARG_BYTES`] or
/// that is the event's statement (`statement: %s`), which the event carries already;
/// none at all when every one is left out.
fn shipped_args<'m, 'a>(
    args: impl Iterator<Item = &'m str> + Clone,
    statement: Option<&str>,
    own: impl Fn(&'m str) -> Cow<'a, str>,
) -> Vec<Option<Cow<'a, str>>> {
    let keep = |a: &&str| a.len() <= MAX_ARG_BYTES && Some(*a) != statement;
    if !args.clone().any(|a| keep(&a)) {
        return Vec::new();
    }
    args.map(|a| keep(&a).then(|| own(a))).collect()
}

/// `v` in decimal, written into `buf`.
fn itoa_u64(mut v: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[at..]).unwrap_or("0")
}

/// A JSON key as [`JsonObject`] takes it: `"name":`. Only for names that need no
/// escaping (this module's constants).
macro_rules! key {
    ($k:literal) => {
        concat!("\"", $k, "\":")
    };
}
use key;

/// A JSON object written field by field into a buffer.
struct JsonObject<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl<'o> JsonObject<'o> {
    fn open(out: &'o mut Vec<u8>) -> JsonObject<'o> {
        out.push(b'{');
        JsonObject { out, first: true }
    }

    /// A key as [`key!`] wrote it: quoted, with its colon (one copy per key, where
    /// four pushes were 5 % of `parse-log`'s instructions).
    fn key(&mut self, k: &str) {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
        self.out.extend_from_slice(k.as_bytes());
    }

    fn raw(&mut self, k: &str, v: &[u8]) {
        self.key(k);
        self.out.extend_from_slice(v);
    }

    fn str(&mut self, k: &str, v: Option<&str>) {
        self.key(k);
        match v {
            None => self.out.extend_from_slice(b"null"),
            Some(s) => self.str_value(s),
        }
    }

    fn str_value(&mut self, s: &str) {
        if needs_escape(s.as_bytes()) {
            self.serde_value(&s);
        } else {
            // serde_json escapes only what needs_escape finds: the rest is copied.
            self.out.push(b'"');
            self.out.extend_from_slice(s.as_bytes());
            self.out.push(b'"');
        }
    }

    fn num<T: Serialize>(&mut self, k: &str, v: Option<T>) {
        self.key(k);
        self.serde_value(&v);
    }

    fn serde<T: Serialize + ?Sized>(&mut self, k: &str, v: &T) {
        self.key(k);
        self.serde_value(v);
    }

    fn serde_value<T: Serialize + ?Sized>(&mut self, v: &T) {
        // Writing into a Vec fails only for a value that cannot be JSON (none here:
        // numbers, strings, maps of strings); such a value would be written as null.
        let at = self.out.len();
        if serde_json::to_writer(&mut *self.out, v).is_err() {
            self.out.truncate(at);
            self.out.extend_from_slice(b"null");
        }
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

/// True when serde_json would escape something in `b` (a control character, `"` or
/// `\\`). Checked 32 bytes at a time without a branch per byte, so it vectorizes; the
/// rest (most fields are shorter: names, severities, timestamps) 8 bytes at a time.
fn needs_escape(b: &[u8]) -> bool {
    let mut long = b.chunks_exact(32);
    let found = long.any(|c| {
        c.iter().fold(false, |any, &x| {
            any | (x < 0x20) | (x == b'"') | (x == b'\\')
        })
    });
    let mut words = long.remainder().chunks_exact(8);
    found
        || words.any(|w| {
            word_needs_escape(u64::from_le_bytes([
                w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7],
            ]))
        })
        || words
            .remainder()
            .iter()
            .any(|&x| x < 0x20 || x == b'"' || x == b'\\')
}

/// True when a byte of `w` is below 0x20, `"` or `\\` (the bit tricks of "Bit Twiddling
/// Hacks": a borrow only ever spreads from a byte that is itself a hit, so the word's
/// answer is exact).
fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = w.wrapping_sub(0x20 * ONES) & !w & HIGH;
    below_space | zero_byte(w ^ (b'"' as u64 * ONES)) | zero_byte(w ^ (b'\\' as u64 * ONES)) != 0
}

/// The agent's own sessions in the server's log (with `log_min_duration_statement = 0`
/// or `log_statement = all` every sample it takes would come back as a log event): its
/// application name *and* its role. A client may call itself `postgres-agent`; where
/// the line names another user it is shipped like any other. Where the format carries
/// no user (a stderr prefix without `%u`) the name alone decides.
#[derive(Debug, Clone)]
pub struct OwnSessions {
    /// `database.user`.
    pub user: String,
}

impl OwnSessions {
    /// True for a record of one of the agent's own sessions.
    pub fn owns(&self, r: &Record) -> bool {
        let named = r.application_name.as_deref() == Some(crate::db::APPLICATION_NAME)
            || self.own_authorization(&r.message);
        named && r.user.as_deref().is_none_or(|u| u == self.user)
    }

    /// `connection authorized: user=… database=… application_name=postgres-agent`
    /// (`log_connections`) of the agent's role: the prefix's `%a` is not set yet when
    /// it is written, the message names the application. The lines before it
    /// (`connection received`, `connection authenticated`) name none and are shipped.
    fn own_authorization(&self, message: &str) -> bool {
        let Some(rest) = message.strip_prefix("connection authorized: user=") else {
            return false;
        };
        let Some((user, rest)) = rest.split_once(" database=") else {
            return false;
        };
        let app = format!(" application_name={}", crate::db::APPLICATION_NAME);
        let Some(at) = rest.find(&app) else {
            return false;
        };
        let after = &rest[at + app.len()..];
        user == self.user
            && (after.is_empty()
                || after.starts_with(" SSL enabled")
                || after.starts_with(" GSS ("))
    }
}

/// Turns records into events: classification, correlation, redaction.
#[derive(Debug, Clone)]
pub struct Shaper {
    /// `correlation.application_name_pattern`.
    pub pattern: Regex,
    /// `[logs] redact`.
    pub redact: Redact,
    /// The languages this log's messages were found in.
    pub languages: messages::Languages,
    /// Plan shapes shared with pg_plans: an auto_explain plan with a query id is noted
    /// and compared with the statement's generic plan.
    pub plan_shapes: Option<std::sync::Arc<crate::model::PlanShapes>>,
}

impl Shaper {
    /// A shaper for a log whose languages are not known yet.
    pub fn new(pattern: Regex, redact: Redact) -> Shaper {
        Shaper {
            pattern,
            redact,
            languages: messages::Languages::default(),
            plan_shapes: None,
        }
    }

    /// The event `data` of a record read from `file` (in `format`).
    pub fn data<'a>(&self, r: &'a Record, file: &'a str, format: Format) -> LogData<'a> {
        let mut c = classify(r);
        // A line that fits no format, or whose readings disagree on where the message
        // starts, may be a client's forgery: no template, as no class.
        let trusted = r.raw.is_none() && !(r.ambiguous && r.severity.is_none());
        let found = trusted
            .then(|| {
                self.languages
                    .find_hinted(&r.message, r.language.map(usize::from))
            })
            .flatten();
        let refined = found.as_ref().map(|f| {
            subclass::refine(
                &self.languages,
                f,
                &r.message,
                r.severity.as_deref().unwrap_or(""),
                r.detail.as_deref(),
                r.context.as_deref(),
            )
        });
        if let (Some(f), Some(rf)) = (&found, &refined) {
            if f.lang != 0 {
                // A translated server's message: its class, duration and statement from
                // its template, as the English text gives them.
                if let Some(class) = rf.subclass.and_then(Class::of_subclass) {
                    if matches!(c.class, Class::Other | Class::Error) {
                        c.class = class;
                    }
                }
                if c.statement.is_none() {
                    c.statement = rf
                        .statement
                        .and_then(|s| r.message.get(s.start as usize..s.end as usize))
                        .map(str::to_string);
                }
            }
        }
        let subclass = refined.as_ref().and_then(|rf| rf.subclass);
        if let Some(rf) = refined {
            let mut figures = rf.figures;
            if let Some(d) = figures.remove("duration_ms") {
                c.duration_ms = c.duration_ms.or(d.as_f64());
            }
            for (k, v) in figures {
                c.figures.insert(k, v);
            }
        }
        let mut message = Cow::Borrowed(r.message.as_str());
        let explained = (c.class == Class::SlowQuery
            && explain::is_plan_head(r.message.as_bytes()))
        .then(|| {
            let (head, body) = r.message.split_once('\n').unwrap_or((&r.message, ""));
            message = Cow::Borrowed(head);
            explain::explain(body, r.truncated)
        });
        let (plan, plan_query) = match explained {
            Some(e) => (Some(e.plan), e.query_text),
            None => (None, None),
        };
        let statement = match (&r.statement, c.statement, plan_query) {
            (Some(s), _, _) => Some(Cow::Borrowed(s.as_str())),
            (None, Some(s), _) | (None, None, Some(s)) => Some(Cow::Owned(s)),
            (None, None, None) => None,
        };
        let query_id = r
            .query_id
            .or_else(|| plan.as_ref().and_then(|p| p.query_identifier));
        let corr = correlation::extract(
            &self.pattern,
            r.application_name.as_deref(),
            statement.as_deref(),
        );
        let trace = correlation::trace(statement.as_deref());
        let timestamp = match (&r.timestamp, r.epoch) {
            (Some(t), _) => Some(time::to_rfc3339(t).unwrap_or_else(|| t.clone())),
            (None, Some(e)) => time::epoch_to_rfc3339(e),
            _ => None,
        };
        let b = |f: &'a Option<String>| f.as_deref();
        let cow = |f: &'a Option<String>| f.as_deref().map(Cow::Borrowed);
        let mut d = LogData {
            timestamp,
            pid: r.pid,
            user: b(&r.user),
            database: b(&r.database),
            application_name: b(&r.application_name),
            correlation_source: corr.as_ref().map(|c| c.1),
            correlation_id: corr.map(|c| c.0),
            query_fingerprint: statement
                .as_deref()
                .filter(|_| !r.truncated)
                .and_then(crate::fingerprint::fingerprint),
            trace_id: trace.as_ref().map(|t| t.trace_id.clone()),
            span_id: trace.map(|t| t.span_id),
            severity: b(&r.severity),
            sqlstate_class: r.sqlstate.as_deref().and_then(sqlstate_class),
            sqlstate: b(&r.sqlstate),
            message,
            detail: cow(&r.detail),
            hint: cow(&r.hint),
            context: cow(&r.context),
            statement,
            query: cow(&r.query),
            duration_ms: c.duration_ms,
            plan,
            class: c.class,
            subclass,
            figures: (!c.figures.is_empty()).then_some(c.figures),
            message_id: found.as_ref().map(|f| f.message.id()),
            message_template: found.as_ref().map(|f| f.message.template()),
            message_args: Vec::new(),
            message_language: found.as_ref().filter(|f| f.lang != 0).map(|f| f.language()),
            file,
            offset: r.offset,
            format: format.as_str(),
            session_id: b(&r.session_id),
            session_line: r.session_line,
            command_tag: b(&r.command_tag),
            backend_type: b(&r.backend_type),
            remote_host: b(&r.remote_host),
            vxid: b(&r.vxid),
            xid: b(&r.xid),
            query_id,
            leader_pid: r.leader_pid,
            location: b(&r.location),
            cursor_position: r.cursor_position,
            raw: cow(&r.raw),
            local_address: b(&r.local_address),
            truncated: r.truncated,
            ambiguous: r.ambiguous,
            continued_without_tab: r.continued_without_tab,
        };
        self.apply_redaction(&mut d);
        if let Some(f) = found.as_ref().filter(|f| !f.args.is_empty()) {
            d.message_args = match &d.message {
                Cow::Borrowed(m) => {
                    let texts = f
                        .args
                        .iter()
                        .map(|s| m.get(s.start as usize..s.end as usize).unwrap_or(""));
                    shipped_args(texts, d.statement.as_deref(), Cow::Borrowed)
                }
                // Redaction rewrote the message: its arguments are read again from what
                // is shipped, so that none carries what redaction took out.
                Cow::Owned(m) => f.rematch(m).map_or_else(Vec::new, |args| {
                    shipped_args(args.into_iter(), d.statement.as_deref(), |a| {
                        Cow::Owned(a.to_string())
                    })
                }),
            };
        }
        d
    }

    fn apply_redaction(&self, d: &mut LogData<'_>) {
        if let Some(p) = d.plan.as_mut() {
            p.redact(self.redact);
        }
        // Passwords go whatever `redact` says (a logged `ALTER ROLE … PASSWORD '…'`).
        for f in [
            &mut d.detail,
            &mut d.context,
            &mut d.statement,
            &mut d.query,
            &mut d.hint,
            &mut d.raw,
        ] {
            if let Some(r) = f.as_deref().and_then(redact::passwords) {
                *f = Some(Cow::Owned(r));
            }
        }
        if let Some(r) = redact::passwords(&d.message) {
            d.message = Cow::Owned(r);
        }
        if self.redact == Redact::None {
            return;
        }
        for f in [&mut d.detail, &mut d.context] {
            if let Some(r) = f.as_deref().and_then(redact::parameters) {
                *f = Some(Cow::Owned(r));
            }
        }
        if let Some(r) = redact::parameters(&d.message) {
            d.message = Cow::Owned(r);
        }
        if self.redact != Redact::Literals {
            return;
        }
        d.message = Cow::Owned(redact::literals(&d.message));
        for f in [
            &mut d.detail,
            &mut d.hint,
            &mut d.context,
            &mut d.statement,
            &mut d.query,
            &mut d.raw,
        ] {
            if let Some(s) = f.as_mut() {
                *s = Cow::Owned(redact::literals(s));
            }
        }
        if let Some(s) = d.detail.as_mut() {
            *s = Cow::Owned(redact::row_values(s));
        }
        // A syntax error quotes the token it stopped at, which may be a literal of the
        // statement (`at or near "'s3cret'"`): inside the message's quotes the lexer
        // reads it as a name, so it is redacted here, in the message and its figure.
        let near = d
            .figures
            .as_mut()
            .and_then(|f| f.get_mut("near"))
            .and_then(|v| match v {
                Value::String(n) => Some(n),
                _ => None,
            });
        if let Some(n) = near {
            let redacted = redact::literals(n);
            if redacted != *n {
                let quoted = format!("\"{n}\"");
                if d.message.contains(&quoted) {
                    d.message = Cow::Owned(d.message.replace(&quoted, &format!("\"{redacted}\"")));
                }
                *n = redacted;
            }
        }
    }

    /// The event of a record; `identity` names the file (device, inode, fingerprint) so
    /// that reading the same line again gives the same id.
    pub fn event(
        &self,
        r: Record,
        file: &str,
        format: Format,
        identity: &str,
        now: DateTime<Utc>,
        seen: &mut crate::model::LogInsights,
    ) -> Event {
        // Sized once (format! grew it twice per event).
        let mut id = String::with_capacity(identity.len() + 28);
        id.push_str("pg_log:");
        id.push_str(identity);
        id.push(':');
        id.push_str(itoa_u64(r.offset, &mut [0u8; 20]));
        // Written by `write_json` (serde's output, byte for byte, at a fraction of the
        // cost) into this thread's buffer, which keeps its allocation.
        thread_local! {
            static JSON: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        JSON.with_borrow_mut(|json| {
            json.clear();
            let mut d = self.data(&r, file, format);
            if let (Some(shapes), Some(p), Some(q), Some(db)) = (
                &self.plan_shapes,
                d.plan.as_mut(),
                d.query_id.filter(|q| *q != 0),
                d.database,
            ) {
                if let Some(hash) = p.shape_hash.as_deref() {
                    let generic = shapes.logged(db, q, hash, now);
                    p.matches_generic = generic.as_deref().map(|g| g == hash);
                    p.generic_shape_hash = generic;
                }
            }
            seen.note(
                d.class.as_str(),
                d.severity,
                d.duration_ms,
                d.figures.as_ref(),
            );
            d.write_json(json);
            let event = Event::from_written_log_json(id, EventKind::PgLog, now, json);
            // One very long message does not leave its buffer behind.
            if json.capacity() > 1 << 20 {
                *json = Vec::new();
            }
            event
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shaper(redact: Redact) -> Shaper {
        Shaper::new(
            Regex::new(r"^bitville-(?P<id>[0-9a-fA-F-]{36})$").expect("re"),
            redact,
        )
    }

    #[test]
    fn a_literal_a_syntax_error_stopped_at_is_redacted_in_the_message_and_its_figure() {
        let r = Record {
            severity: Some("ERROR".into()),
            message: "syntax error at or near \"'s3cret'\"".into(),
            ..Default::default()
        };
        let d = shaper(Redact::Literals).data(&r, "f", Format::Stderr);
        assert_eq!(d.subclass, Some("syntax_error"));
        assert_eq!(d.message, "syntax error at or near \"?\"");
        assert_eq!(
            d.figures.as_ref().and_then(|f| f.get("near")),
            Some(&Value::from("?"))
        );
        assert_eq!(
            d.message_args,
            vec![
                Some(Cow::Borrowed("syntax error")),
                Some(Cow::Borrowed("?"))
            ]
        );
        // A keyword is no literal: it stays, as does everything without redaction.
        let r = Record {
            message: "syntax error at or near \"selec\"".into(),
            ..r
        };
        let d = shaper(Redact::Literals).data(&r, "f", Format::Stderr);
        assert_eq!(
            d.figures.as_ref().and_then(|f| f.get("near")),
            Some(&Value::from("selec"))
        );
        let r = Record {
            message: "syntax error at or near \"'s3cret'\"".into(),
            ..r
        };
        let d = shaper(Redact::None).data(&r, "f", Format::Stderr);
        assert_eq!(
            d.figures.as_ref().and_then(|f| f.get("near")),
            Some(&Value::from("'s3cret'"))
        );
    }

    #[test]
    fn offsets_are_written_in_decimal_like_display() {
        for v in [
            0,
            7,
            9,
            10,
            99,
            100,
            655_380,
            1 << 40,
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert_eq!(itoa_u64(v, &mut [0u8; 20]), v.to_string());
        }
        let r = Record {
            offset: 18_446_744_073_709_551_615,
            message: "m".into(),
            ..Default::default()
        };
        let e = shaper(Redact::None).event(
            r,
            "f.log",
            Format::Stderr,
            "fe00-1-ab",
            Utc::now(),
            &mut Default::default(),
        );
        assert_eq!(e.id, "pg_log:fe00-1-ab:18446744073709551615");
    }

    #[test]
    fn write_json_is_serdes_json_byte_for_byte() {
        let same = |d: &LogData, what: &str| {
            let mut fast = Vec::new();
            d.write_json(&mut fast);
            let serde = serde_json::to_vec(d).expect("serde");
            assert_eq!(
                String::from_utf8_lossy(&fast),
                String::from_utf8_lossy(&serde),
                "{what}"
            );
        };
        // Every field set, with text that needs escaping.
        let full = Record {
            language: None,
            offset: 9,
            end: 99,
            timestamp: Some("2026-11-26 10:00:00.001 +0330".into()),
            epoch: None,
            pid: Some(-5),
            user: Some("we\"b".into()),
            database: Some("sh\\op".into()),
            application_name: Some("bitville-0b7e6c84-5a2f-4d43-9a4e-2b1f0f6e7a10".into()),
            remote_host: Some("10.0.0.1(5432)".into()),
            local_address: Some("[local]".into()),
            session_id: Some("6745e0a1.1f".into()),
            session_line: Some(3),
            command_tag: Some("SELECT".into()),
            backend_type: Some("client backend".into()),
            vxid: Some("3/7".into()),
            xid: Some("0".into()),
            query_id: Some(-42),
            leader_pid: Some(77),
            severity: Some("ERROR".into()),
            sqlstate: Some("23505".into()),
            message: "duplicate key \"k\"\n\ttab \u{1} bell é ✓".into(),
            detail: Some("Key (id)=(1) already exists.".into()),
            hint: Some("h".into()),
            context: Some("c\r\n".into()),
            statement: Some("insert into t values (1) /* request_id='r1' */".into()),
            query: Some("q".into()),
            location: Some("f.c:1".into()),
            cursor_position: Some(12),
            raw: Some("raw \u{7f}".into()),
            truncated: true,
            ambiguous: true,
            continued_without_tab: true,
        };
        for redact in [Redact::None, Redact::Literals] {
            same(
                &shaper(redact).data(&full, "/l/\"x\".log", Format::Csv),
                "full",
            );
        }
        same(
            &shaper(Redact::None).data(&Record::default(), "f", Format::Stderr),
            "empty",
        );
        // A template's arguments (one to escape), in a translation.
        let german = Record {
            severity: Some("FEHLER".into()),
            message: "Relation »we\"b\t« existiert nicht".into(),
            ..Default::default()
        };
        let d = shaper(Redact::None).data(&german, "f", Format::Stderr);
        assert_eq!(d.message_args, [Some(Cow::Borrowed("we\"b\t"))]);
        assert_eq!(d.message_language, Some("de"));
        same(&d, "german");
        // Real servers' logs: slow queries with plans, checkpoints, errors, all formats.
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/logs/explain/fixtures");
        let mut n = 0;
        for (file, format) in [
            ("pg12.log", Format::Stderr),
            ("pg15.log", Format::Stderr),
            ("pg18.log", Format::Stderr),
            ("pg15.csv", Format::Csv),
            ("pg15.json", Format::Json),
        ] {
            let mut parser = LogParser::new(format, "%m [%p] %q%u@%d ");
            let path = dir.join(file);
            let name = path.display().to_string();
            tail::read_file(&path, &mut parser, |mut batch| {
                for r in batch.drain(..) {
                    n += 1;
                    let s = shaper(Redact::None);
                    same(&s.data(&r, &name, format), file);
                    // The daemon's event carries the same text.
                    let serde = serde_json::to_string(&s.data(&r, &name, format)).expect("serde");
                    let ev = s.event(r, &name, format, "id", Utc::now(), &mut Default::default());
                    assert_eq!(ev.data.get(), serde, "{file}");
                }
                Some(batch)
            })
            .expect("fixture");
        }
        assert!(n > 100, "{n} records");
    }

    #[test]
    fn needs_escape_agrees_with_serde_for_every_byte_anywhere() {
        // Every byte next to every other, in a word: no neighbour hides or fakes a hit.
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let word = [a, b, b'a', 0xff, b'~', a, 0x80, b];
                let serde = |x: u8| x < 0x20 || x == b'"' || x == b'\\';
                assert_eq!(needs_escape(&word), serde(a) || serde(b), "{a:#x} {b:#x}");
            }
        }
        for at in [0, 1, 7, 8, 9, 31, 32, 33, 39, 40, 63, 64, 100] {
            for byte in 0..=255u8 {
                let mut b = vec![b'a'; 101];
                b[at] = byte;
                let serde_escapes = byte < 0x20 || byte == b'"' || byte == b'\\';
                assert_eq!(needs_escape(&b), serde_escapes, "byte {byte:#x} at {at}");
                assert_eq!(needs_escape(&b[..at + 1]), serde_escapes, "{byte:#x} last");
            }
        }
        assert!(!needs_escape(b""));
    }

    #[test]
    fn event_data_has_the_contract_keys() {
        let r = Record {
            offset: 7,
            timestamp: Some("2026-11-26 10:00:00.001 UTC".into()),
            pid: Some(5),
            application_name: Some("bitville-0b7e6c84-5a2f-4d43-9a4e-2b1f0f6e7a10".into()),
            severity: Some("LOG".into()),
            message: "duration: 1200.5 ms  statement: select 'secret', 42".into(),
            ..Default::default()
        };
        let d = shaper(Redact::Literals).data(&r, "/l/x.log", Format::Stderr);
        let v = serde_json::to_value(&d).expect("json");
        for key in [
            "timestamp",
            "pid",
            "user",
            "database",
            "application_name",
            "correlation_id",
            "severity",
            "sqlstate",
            "message",
            "detail",
            "hint",
            "context",
            "statement",
            "query",
            "duration_ms",
            "class",
            "file",
            "offset",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["timestamp"], "2026-11-26T10:00:00.001Z");
        assert_eq!(v["class"], "slow_query");
        assert_eq!(v["duration_ms"], 1200.5);
        assert_eq!(v["statement"], "select ?, ?");
        assert_eq!(v["correlation_id"], "0b7e6c84-5a2f-4d43-9a4e-2b1f0f6e7a10");
        assert!(!v.to_string().contains("secret"));
    }

    #[test]
    fn a_traceparent_in_the_statement_links_the_event_to_its_span() {
        let r = Record {
            severity: Some("LOG".into()),
            message: "duration: 2001.0 ms  statement: select pg_sleep(2) /*traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/".into(),
            ..Default::default()
        };
        let d = shaper(Redact::Literals).data(&r, "/l/x.log", Format::Stderr);
        let v = serde_json::to_value(&d).expect("json");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["span_id"], "00f067aa0ba902b7");
        assert_eq!(v["correlation_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["correlation_source"], "traceparent");
        let plain = Record {
            message: "duration: 1.0 ms  statement: select 1".into(),
            ..r
        };
        let v = serde_json::to_value(shaper(Redact::None).data(&plain, "/l/x.log", Format::Stderr))
            .expect("json");
        assert!(
            v.get("trace_id").is_none() && v.get("span_id").is_none(),
            "{v}"
        );
    }

    #[test]
    fn parameters_redaction_keeps_statement() {
        let r = Record {
            severity: Some("LOG".into()),
            message: "duration: 1.0 ms  execute <unnamed>: select $1".into(),
            detail: Some("parameters: $1 = 'hunter2'".into()),
            ..Default::default()
        };
        let d = shaper(Redact::Parameters).data(&r, "f", Format::Stderr);
        assert_eq!(d.detail.as_deref(), Some("parameters: $1 = ?"));
        assert_eq!(d.statement.as_deref(), Some("select $1"));
    }

    #[test]
    fn passwords_are_redacted_even_without_redaction() {
        let r = Record {
            severity: Some("LOG".into()),
            message: "statement: ALTER ROLE app PASSWORD 'hunter2'".into(),
            ..Default::default()
        };
        let d = shaper(Redact::None).data(&r, "f", Format::Stderr);
        assert_eq!(d.message, "statement: ALTER ROLE app PASSWORD '***'");
        let r = Record {
            severity: Some("ERROR".into()),
            message: "syntax error".into(),
            statement: Some("create role x password 'hunter2' foo".into()),
            ..Default::default()
        };
        let d = shaper(Redact::None).data(&r, "f", Format::Stderr);
        assert!(!serde_json::to_string(&d).expect("json").contains("hunter2"));
    }

    #[test]
    fn own_sessions_by_name_and_role() {
        let own = OwnSessions {
            user: "agent".into(),
        };
        let rec = |app: Option<&str>, user: Option<&str>| Record {
            application_name: app.map(Into::into),
            user: user.map(Into::into),
            ..Default::default()
        };
        assert!(own.owns(&rec(Some("postgres-agent"), Some("agent"))));
        assert!(own.owns(&rec(Some("postgres-agent"), None)));
        assert!(!own.owns(&rec(Some("postgres-agent"), Some("mallory"))));
        assert!(!own.owns(&rec(Some("psql"), Some("agent"))));
        assert!(!own.owns(&rec(None, Some("agent"))));
        // log_connections: the prefix has no name yet, the message has.
        let authorized = |m: &str, user: Option<&str>| Record {
            application_name: Some("[unknown]".into()),
            user: user.map(Into::into),
            message: m.into(),
            ..Default::default()
        };
        for m in [
            "connection authorized: user=agent database=postgres application_name=postgres-agent",
            "connection authorized: user=agent database=my db application_name=postgres-agent SSL enabled (protocol=TLSv1.3, cipher=TLS_AES_256_GCM_SHA384, bits=256)",
        ] {
            assert!(own.owns(&authorized(m, Some("agent"))), "{m}");
            assert!(own.owns(&authorized(m, None)), "{m}");
        }
        for m in [
            "connection authorized: user=mallory database=postgres application_name=postgres-agent",
            "connection authorized: user=agent database=postgres application_name=postgres-agent2",
            "connection authorized: user=agent database=postgres application_name=psql",
            "connection authorized: user=agent database=postgres",
            "connection received: host=[local]",
        ] {
            assert!(!own.owns(&authorized(m, Some("agent"))), "{m}");
        }
        // The prefix's user decides too.
        assert!(!own.owns(&authorized(
            "connection authorized: user=agent database=postgres application_name=postgres-agent",
            Some("mallory")
        )));
    }

    #[test]
    fn sniffing() {
        use std::path::Path;
        assert_eq!(Format::sniff(Path::new("a.csv"), b""), Format::Csv);
        assert_eq!(
            Format::sniff(Path::new("a"), b"{\"timestamp\":1}"),
            Format::Json
        );
        assert_eq!(
            Format::sniff(
                Path::new("a.log"),
                b"2026-11-26 10:00:00.001 UTC [1] LOG:  x"
            ),
            Format::Stderr
        );
    }
}
