//! `log_line_prefix`, compiled once into a matcher. The server expands the prefix for
//! every line it writes in `stderr` format; the matcher reads the fields back.
//!
//! No regex: literals are compared as bytes, fields whose shape is known (pids,
//! timestamps, SQLSTATEs) are scanned by shape, and free-text fields (user, database,
//! application, backend type, command tag) extend to the next literal, trying the next
//! occurrence when the rest of the line does not fit (an application name may contain the
//! separator). A prefix match only counts when a severity label (`LOG:  `) follows, so a
//! line that merely starts like a prefix is not mistaken for one.

use memchr::memmem;

use super::record::{opt_text, Record};

/// What one `%` escape stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// `%a` application name.
    App,
    /// `%u` user name.
    User,
    /// `%d` database name.
    Database,
    /// `%r` remote host and port.
    RemoteHostPort,
    /// `%h` remote host.
    RemoteHost,
    /// `%b` backend type.
    BackendType,
    /// `%p` process id.
    Pid,
    /// `%P` parallel group leader pid.
    LeaderPid,
    /// `%t` time stamp without milliseconds.
    Time,
    /// `%m` time stamp with milliseconds.
    TimeMs,
    /// `%n` Unix epoch with milliseconds.
    Epoch,
    /// `%i` command tag.
    CommandTag,
    /// `%e` SQLSTATE.
    SqlState,
    /// `%c` session id.
    SessionId,
    /// `%l` session line number.
    SessionLine,
    /// `%s` session start time stamp.
    SessionStart,
    /// `%v` virtual transaction id.
    Vxid,
    /// `%x` transaction id.
    Xid,
    /// `%Q` query id.
    QueryId,
}

impl Escape {
    fn from_letter(c: u8) -> Option<Escape> {
        Some(match c {
            b'a' => Escape::App,
            b'u' => Escape::User,
            b'd' => Escape::Database,
            b'r' => Escape::RemoteHostPort,
            b'h' => Escape::RemoteHost,
            b'b' => Escape::BackendType,
            b'p' => Escape::Pid,
            b'P' => Escape::LeaderPid,
            b't' => Escape::Time,
            b'm' => Escape::TimeMs,
            b'n' => Escape::Epoch,
            b'i' => Escape::CommandTag,
            b'e' => Escape::SqlState,
            b'c' => Escape::SessionId,
            b'l' => Escape::SessionLine,
            b's' => Escape::SessionStart,
            b'v' => Escape::Vxid,
            b'x' => Escape::Xid,
            b'Q' => Escape::QueryId,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Elem {
    Lit(Vec<u8>),
    Field { esc: Escape, pad: usize },
}

/// The labels the server writes before a message (with `lc_messages = 'C'`).
const PRIMARY: [&str; 8] = [
    "LOG", "ERROR", "WARNING", "FATAL", "PANIC", "NOTICE", "INFO", "DEBUG",
];
/// Labels of the extra lines that belong to the message before them.
pub const SECONDARY: [&str; 6] = [
    "DETAIL",
    "HINT",
    "CONTEXT",
    "STATEMENT",
    "QUERY",
    "LOCATION",
];

/// Longest label looked for (localized ones included).
const MAX_LABEL: usize = 24;
/// Occurrences of a separator tried per free-text field before giving up on a line.
const MAX_TRIES: usize = 8;

/// A compiled `log_line_prefix`.
#[derive(Debug, Clone, PartialEq)]
pub struct Prefix {
    source: String,
    elems: Vec<Elem>,
    /// Index of `%q`: non-session processes stop the prefix there.
    q_at: Option<usize>,
}

/// Escapes of one prefix that are read back (more are matched but not kept).
const MAX_SPANS: usize = 24;

/// Where the fields of one matched line are (on the stack: one per line).
struct Spans {
    fields: [(Escape, usize, usize); MAX_SPANS],
    len: usize,
}

impl Spans {
    fn new() -> Spans {
        Spans {
            fields: [(Escape::Pid, 0, 0); MAX_SPANS],
            len: 0,
        }
    }

    fn push(&mut self, f: (Escape, usize, usize)) {
        if self.len < MAX_SPANS {
            self.fields[self.len] = f;
            self.len += 1;
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    fn iter(&self) -> impl Iterator<Item = &(Escape, usize, usize)> {
        self.fields[..self.len].iter()
    }
}

/// The label and text of a line after its prefix.
#[derive(Debug, PartialEq)]
pub struct Body<'a> {
    /// `LOG`, `DETAIL`, … (or a localized word).
    pub label: &'a str,
    /// True for one of the known labels.
    pub known: bool,
    /// The text after `LABEL:  `.
    pub text: &'a [u8],
}

impl Prefix {
    /// Compiles a prefix; unknown escapes are dropped, as the server does.
    pub fn compile(source: &str) -> Prefix {
        let b = source.as_bytes();
        let mut elems: Vec<Elem> = Vec::new();
        let mut q_at = None;
        let mut lit = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'%' || i + 1 >= b.len() {
                lit.push(b[i]);
                i += 1;
                continue;
            }
            let mut j = i + 1;
            if b[j] == b'%' {
                lit.push(b'%');
                i = j + 1;
                continue;
            }
            // Padding: %-10u (left-justified) or %10u; the width is what matters here.
            if b[j] == b'-' {
                j += 1;
            }
            let digits = j;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let pad = std::str::from_utf8(&b[digits..j])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let Some(&c) = b.get(j) else { break };
            i = j + 1;
            if c == b'q' {
                if !lit.is_empty() {
                    elems.push(Elem::Lit(std::mem::take(&mut lit)));
                }
                q_at.get_or_insert(elems.len());
                continue;
            }
            if let Some(esc) = Escape::from_letter(c) {
                if !lit.is_empty() {
                    elems.push(Elem::Lit(std::mem::take(&mut lit)));
                }
                elems.push(Elem::Field { esc, pad });
            }
        }
        if !lit.is_empty() {
            elems.push(Elem::Lit(lit));
        }
        Prefix {
            source: source.to_string(),
            elems,
            q_at,
        }
    }

    /// The prefix as configured.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The escapes it has.
    pub fn escapes(&self) -> Vec<Escape> {
        self.elems
            .iter()
            .filter_map(|e| match e {
                Elem::Field { esc, .. } => Some(*esc),
                Elem::Lit(_) => None,
            })
            .collect()
    }

    /// What correlation will miss with this prefix, in words (empty when nothing).
    pub fn shortcomings(&self) -> Vec<&'static str> {
        let e = self.escapes();
        let mut v = Vec::new();
        if !e.contains(&Escape::Pid) {
            v.push("no %p: lines of one message cannot be told apart from other backends'");
        }
        if ![Escape::TimeMs, Escape::Time, Escape::Epoch]
            .iter()
            .any(|t| e.contains(t))
        {
            v.push("no %m/%t/%n: events carry no server timestamp");
        }
        if !e.contains(&Escape::App) {
            v.push("no %a: log events cannot be correlated with requests");
        }
        v
    }

    /// Matches the prefix at the start of `line`; fills `rec` with its fields and
    /// returns the label and text that follow. `None` when the line does not start with
    /// this prefix followed by a label.
    pub fn parse<'a>(&self, line: &'a [u8], rec: &mut Record) -> Option<Body<'a>> {
        let full = &self.elems[..];
        let short = self.q_at.map(|q| &self.elems[..q]);
        let mut spans = Spans::new();
        for strict in [true, false] {
            for elems in [Some(full), short].into_iter().flatten() {
                spans.truncate(0);
                if let Some(end) = match_elems(elems, line, 0, &mut spans, strict) {
                    let body = body(&line[end..], strict)?;
                    fill(line, &spans, rec);
                    return Some(body);
                }
            }
        }
        None
    }
}

/// Matches `elems` at `p`, then a label; returns where the label starts.
fn match_elems(
    elems: &[Elem],
    line: &[u8],
    p: usize,
    spans: &mut Spans,
    strict: bool,
) -> Option<usize> {
    let Some((first, rest)) = elems.split_first() else {
        return body(&line[p..], strict).map(|_| p);
    };
    match first {
        Elem::Lit(l) => {
            if line[p..].starts_with(l) {
                match_elems(rest, line, p + l.len(), spans, strict)
            } else {
                None
            }
        }
        Elem::Field { esc, pad } => {
            let mark = spans.len();
            if let Some(end) = shaped_end(*esc, line, p, *pad) {
                spans.push((*esc, p, end));
                let r = match_elems(rest, line, end, spans, strict);
                if r.is_none() {
                    spans.truncate(mark);
                }
                return r;
            }
            if !free_text(*esc) {
                return None;
            }
            let from = (p + pad).min(line.len());
            match rest.first() {
                Some(Elem::Lit(l)) => {
                    let mut at = from;
                    for _ in 0..MAX_TRIES {
                        let found = memmem::find(&line[at..], l)? + at;
                        spans.push((*esc, p, found));
                        if let Some(r) = match_elems(rest, line, found, spans, strict) {
                            return Some(r);
                        }
                        spans.truncate(mark);
                        at = found + 1;
                    }
                    None
                }
                // Two fields without a separator, or a field at the very end of the
                // prefix: the field ends where the label starts.
                _ => {
                    let end = label_start(line, from)?;
                    spans.push((*esc, p, end));
                    let r = match_elems(rest, line, end, spans, strict);
                    if r.is_none() {
                        spans.truncate(mark);
                    }
                    r
                }
            }
        }
    }
}

/// Fields that may hold any text.
fn free_text(esc: Escape) -> bool {
    matches!(
        esc,
        Escape::App
            | Escape::User
            | Escape::Database
            | Escape::RemoteHostPort
            | Escape::RemoteHost
            | Escape::BackendType
            | Escape::CommandTag
    )
}

/// The end of a field with a known shape starting at `p` (padding included), or `None`
/// for free-text fields and when the shape does not fit.
fn shaped_end(esc: Escape, line: &[u8], p: usize, pad: usize) -> Option<usize> {
    let mut q = p;
    // Right-aligned padding puts spaces first.
    while q < line.len() && line[q] == b' ' && q < p + pad {
        q += 1;
    }
    let end = match esc {
        Escape::Time | Escape::SessionStart => timestamp(line, q, false)?,
        Escape::TimeMs => timestamp(line, q, true)?,
        Escape::Pid | Escape::SessionLine => digits(line, q, 1)?,
        // Empty outside parallel workers / without an xid in some versions.
        Escape::LeaderPid | Escape::Xid => digits(line, q, 0)?,
        Escape::QueryId => {
            let s = if line.get(q) == Some(&b'-') { q + 1 } else { q };
            digits(line, s, 1)?
        }
        Escape::Epoch => {
            let d = digits(line, q, 1)?;
            if line.get(d) == Some(&b'.') {
                digits(line, d + 1, 1)?
            } else {
                d
            }
        }
        Escape::SqlState => {
            let e = q + 5;
            if e <= line.len() && line[q..e].iter().all(u8::is_ascii_alphanumeric) {
                e
            } else {
                return None;
            }
        }
        Escape::SessionId => {
            let d = hex(line, q)?;
            if line.get(d) != Some(&b'.') {
                return None;
            }
            hex(line, d + 1)?
        }
        Escape::Vxid => {
            // "3/12", or nothing for processes without a proc entry.
            match digits(line, q, 1) {
                Some(d) if line.get(d) == Some(&b'/') => digits(line, d + 1, 1)?,
                _ => q,
            }
        }
        _ => return None,
    };
    // Left-aligned padding puts spaces after.
    let mut e = end;
    while e < line.len() && e < p + pad && line[e] == b' ' {
        e += 1;
    }
    Some(e)
}

fn digits(line: &[u8], p: usize, min: usize) -> Option<usize> {
    let n = line[p.min(line.len())..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    (n >= min).then_some(p + n)
}

fn hex(line: &[u8], p: usize) -> Option<usize> {
    let n = line[p.min(line.len())..]
        .iter()
        .take_while(|b| b.is_ascii_hexdigit())
        .count();
    (n >= 1).then_some(p + n)
}

/// `YYYY-MM-DD HH:MM:SS[.mmm] TZ`; the zone is a run of letters, digits, `+`, `-`, `:`.
fn timestamp(line: &[u8], p: usize, ms: bool) -> Option<usize> {
    const SHAPE: &[u8; 19] = b"0000-00-00 00:00:00";
    let s = line.get(p..p + 19)?;
    for (c, m) in s.iter().zip(SHAPE) {
        let ok = if *m == b'0' {
            c.is_ascii_digit()
        } else {
            c == m
        };
        if !ok {
            return None;
        }
    }
    let mut q = p + 19;
    if ms {
        if line.get(q) != Some(&b'.') {
            return None;
        }
        q = digits(line, q + 1, 1)?;
    }
    if line.get(q) != Some(&b' ') {
        return None;
    }
    let z = line[q + 1..]
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b':'))
        .count();
    (z > 0).then_some(q + 1 + z)
}

/// Where the first `WORD:  ` after `from` starts.
fn label_start(line: &[u8], from: usize) -> Option<usize> {
    let colon = memmem::find(&line[from..], b":  ")? + from;
    let start = line[from..colon]
        .iter()
        .rposition(|c| !c.is_ascii_alphanumeric())
        .map_or(from, |i| from + i + 1);
    (start < colon).then_some(start)
}

/// `LABEL:  text` at the start of `rest`. Strict: only the English labels; otherwise
/// any short word without spaces (a localized server: `FEHLER:  `).
pub fn body(rest: &[u8], strict: bool) -> Option<Body<'_>> {
    let head = &rest[..rest.len().min(MAX_LABEL + 3)];
    let colon = memmem::find(head, b":  ")?;
    let label = std::str::from_utf8(&rest[..colon]).ok()?;
    let known = PRIMARY.contains(&label) || SECONDARY.contains(&label);
    if strict && !known {
        return None;
    }
    if label.is_empty() || label.contains(' ') {
        return None;
    }
    Some(Body {
        label,
        known,
        text: &rest[colon + 3..],
    })
}

/// True for the labels of lines that continue a message.
pub fn is_secondary(label: &str) -> bool {
    SECONDARY.contains(&label)
}

fn fill(line: &[u8], spans: &Spans, rec: &mut Record) {
    let mut cut = false;
    for &(esc, s, e) in spans.iter() {
        let v = trim(&line[s..e]);
        let name = |v: &[u8], cut: &mut bool| {
            // The server writes "[unknown]" where it has no name yet.
            if v == b"[unknown]" {
                None
            } else {
                opt_text(v, cut)
            }
        };
        let num = |v: &[u8]| std::str::from_utf8(v).ok().and_then(|s| s.parse().ok());
        match esc {
            Escape::App => rec.application_name = name(v, &mut cut),
            Escape::User => rec.user = name(v, &mut cut),
            Escape::Database => rec.database = name(v, &mut cut),
            Escape::RemoteHostPort | Escape::RemoteHost => rec.remote_host = opt_text(v, &mut cut),
            Escape::BackendType => rec.backend_type = opt_text(v, &mut cut),
            Escape::Pid => rec.pid = num(v),
            Escape::LeaderPid => rec.leader_pid = num(v),
            Escape::Time | Escape::TimeMs => rec.timestamp = opt_text(v, &mut cut),
            Escape::Epoch => rec.epoch = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()),
            Escape::CommandTag => rec.command_tag = opt_text(v, &mut cut),
            Escape::SqlState => rec.sqlstate = opt_text(v, &mut cut),
            Escape::SessionId => rec.session_id = opt_text(v, &mut cut),
            Escape::SessionLine => rec.session_line = num(v),
            Escape::SessionStart => {}
            Escape::Vxid => rec.vxid = opt_text(v, &mut cut),
            Escape::Xid => rec.xid = opt_text(v, &mut cut),
            Escape::QueryId => rec.query_id = num(v),
        }
    }
    rec.truncated |= cut;
}

fn trim(v: &[u8]) -> &[u8] {
    let s = v.iter().position(|c| *c != b' ').unwrap_or(v.len());
    let e = v.iter().rposition(|c| *c != b' ').map_or(s, |i| i + 1);
    &v[s..e.max(s)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(prefix: &str, line: &str) -> Option<(Record, String, String)> {
        let p = Prefix::compile(prefix);
        let mut r = Record::default();
        let b = p.parse(line.as_bytes(), &mut r)?;
        Some((
            r,
            b.label.to_string(),
            String::from_utf8_lossy(b.text).into_owned(),
        ))
    }

    #[test]
    fn default_prefix() {
        let (r, label, text) = parse(
            "%m [%p] ",
            "2026-11-26 17:35:07.123 UTC [4242] LOG:  checkpoint starting: time",
        )
        .expect("match");
        assert_eq!(r.timestamp.as_deref(), Some("2026-11-26 17:35:07.123 UTC"));
        assert_eq!(r.pid, Some(4242));
        assert_eq!(label, "LOG");
        assert_eq!(text, "checkpoint starting: time");
    }

    #[test]
    fn free_text_fields_with_spaces_and_separators() {
        let (r, label, _) = parse(
            "%m [%p] app=%a,user=%u,db=%d,%e ",
            "2026-11-26 17:35:07.123 UTC [7] app=my app, x,user=postgres,db=shop,42P01 ERROR:  relation \"t\" does not exist",
        )
        .expect("match");
        // The app name holds the separator: the matcher tries the next occurrence when
        // the rest of the line does not fit.
        assert_eq!(label, "ERROR");
        assert_eq!(r.application_name.as_deref(), Some("my app, x"));
        assert_eq!(r.user.as_deref(), Some("postgres"));
        assert_eq!(r.database.as_deref(), Some("shop"));
        assert_eq!(r.sqlstate.as_deref(), Some("42P01"));
        assert_eq!(r.pid, Some(7));
    }

    #[test]
    fn backend_type_with_space() {
        let (r, _, text) = parse(
            "%t [%p] %b: ",
            "2026-11-26 17:35:07 CET [9] client backend: ERROR:  boom",
        )
        .expect("match");
        assert_eq!(r.backend_type.as_deref(), Some("client backend"));
        assert_eq!(text, "boom");
    }

    #[test]
    fn padding_and_q() {
        let prefix = "%m %-8p %q%-10u@%d ";
        let (r, _, _) = parse(
            prefix,
            "2026-11-26 17:35:07.123 UTC 51       alice     @shop LOG:  statement: select 1",
        )
        .expect("session line");
        assert_eq!(r.pid, Some(51));
        assert_eq!(r.user.as_deref(), Some("alice"));
        assert_eq!(r.database.as_deref(), Some("shop"));
        // A non-session process stops at %q.
        let (r, label, text) = parse(
            prefix,
            "2026-11-26 17:35:07.123 UTC 50       LOG:  checkpoint starting: time",
        )
        .expect("non-session line");
        assert_eq!(r.pid, Some(50));
        assert_eq!(r.user, None);
        assert_eq!(
            (label.as_str(), text.as_str()),
            ("LOG", "checkpoint starting: time")
        );
    }

    #[test]
    fn unknown_is_none_and_every_escape_parses() {
        let prefix = "%t|%m|%n|%p|%P|%c|%l|%s|%v|%x|%e|%Q|%i|%b|%r|%h|%a|%u|%d|%%|";
        let line = "2026-11-26 17:35:07 UTC|2026-11-26 17:35:07.123 UTC|1764178507.123|77||6745f1.4d|3|2026-11-26 17:30:00 UTC|3/14|0|00000|-123|SELECT|client backend|[local]|[local]|[unknown]|bob|db|%|LOG:  x";
        let (r, _, text) = parse(prefix, line).expect("match");
        assert_eq!(r.epoch, Some(1764178507.123));
        assert_eq!(r.pid, Some(77));
        assert_eq!(r.leader_pid, None);
        assert_eq!(r.session_id.as_deref(), Some("6745f1.4d"));
        assert_eq!(r.session_line, Some(3));
        assert_eq!(r.vxid.as_deref(), Some("3/14"));
        assert_eq!(r.query_id, Some(-123));
        assert_eq!(r.command_tag.as_deref(), Some("SELECT"));
        assert_eq!(r.application_name, None);
        assert_eq!(r.user.as_deref(), Some("bob"));
        assert_eq!(text, "x");
    }

    #[test]
    fn non_matching_lines_and_localized_labels() {
        assert!(parse("%m [%p] ", "random garbage LOG:  x").is_none());
        assert!(parse("%m [%p] ", "").is_none());
        let (_, label, _) = parse(
            "%m [%p] ",
            "2026-11-26 17:35:07.123 UTC [4] FEHLER:  Relation »t« existiert nicht",
        )
        .expect("localized");
        assert_eq!(label, "FEHLER");
    }

    #[test]
    fn shortcomings_name_what_is_missing() {
        assert_eq!(Prefix::compile("%m [%p] %a ").shortcomings().len(), 0);
        assert_eq!(Prefix::compile("%m [%p] ").shortcomings().len(), 1);
        assert_eq!(Prefix::compile("").shortcomings().len(), 3);
    }
}
