//! `log_line_prefix`, compiled once into a matcher. The server expands the prefix for
//! every line it writes in `stderr` format; the matcher reads the fields back.
//!
//! The stderr format is ambiguous by nature: a client writes `application_name` (and,
//! before authentication, the user and database names), and those land in the prefix
//! unquoted, so a name can hold the prefix's separators, a severity label or a whole
//! forged line start. The matcher therefore finds *every* reading of a line (in time
//! linear in the line, see `matcher`), settles what it can with what the log has
//! established (`PostgreSQL` writes `SEVERITY:  ` with two spaces; a pid's user and
//! database are fixed, [`sessions`]), and where readings still disagree keeps only what
//! they agree on and marks the record `ambiguous` — never a guess. csvlog and jsonlog
//! quote every field and cannot be forged this way.
//!
//! No regex: literals are compared as bytes and fields whose shape is known (pids, time
//! stamps, SQLSTATEs) are scanned by shape (`shape`).

mod matcher;
pub mod sessions;
mod shape;
#[cfg(test)]
mod tests;

use memchr::memmem;

use super::record::{opt_text, Record};
use matcher::{Parse, Scratch as Buffers, Spans, Split};
pub use sessions::Sessions;

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
    /// `%L` local address (PG18).
    LocalAddress,
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
            b'L' => Escape::LocalAddress,
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

    /// The escape as written in a prefix (`%a`).
    pub fn as_str(self) -> &'static str {
        match self {
            Escape::App => "%a",
            Escape::User => "%u",
            Escape::Database => "%d",
            Escape::RemoteHostPort => "%r",
            Escape::RemoteHost => "%h",
            Escape::LocalAddress => "%L",
            Escape::BackendType => "%b",
            Escape::Pid => "%p",
            Escape::LeaderPid => "%P",
            Escape::Time => "%t",
            Escape::TimeMs => "%m",
            Escape::Epoch => "%n",
            Escape::CommandTag => "%i",
            Escape::SqlState => "%e",
            Escape::SessionId => "%c",
            Escape::SessionLine => "%l",
            Escape::SessionStart => "%s",
            Escape::Vxid => "%v",
            Escape::Xid => "%x",
            Escape::QueryId => "%Q",
        }
    }

    /// A field whose text a client chooses: the application name at any time, the user
    /// and database names in the startup packet (they appear in the prefix of the
    /// failed-authentication lines of roles that do not exist).
    pub fn client_controlled(self) -> bool {
        matches!(self, Escape::App | Escape::User | Escape::Database)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Elem {
    Lit(Literal),
    Field { esc: Escape, pad: usize },
}

/// Literal text of the prefix, with its searcher built once (building one per line
/// was a tenth of the matcher's time).
#[derive(Debug, Clone)]
struct Literal(Box<memmem::Finder<'static>>);

impl Literal {
    fn new(bytes: Vec<u8>) -> Literal {
        Literal(Box::new(memmem::Finder::new(&bytes).into_owned()))
    }
}

impl std::ops::Deref for Literal {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.needle()
    }
}

impl PartialEq for Literal {
    fn eq(&self, other: &Literal) -> bool {
        **self == **other
    }
}

/// The labels the server writes before a message (with `lc_messages = 'C'`).
const PRIMARY: [&str; 8] = crate::logs::messages::PRIMARY_LABELS;
/// Labels of the extra lines that belong to the message before them.
pub const SECONDARY: [&str; 7] = crate::logs::messages::SECONDARY_LABELS;

/// Longest label looked for (localized ones included).
const MAX_LABEL: usize = 24;

/// A compiled `log_line_prefix`.
#[derive(Debug, Clone, PartialEq)]
pub struct Prefix {
    source: String,
    elems: Vec<Elem>,
    /// Index of `%q`: non-session processes stop the prefix there.
    q_at: Option<usize>,
}

/// The label and text of a line after its prefix.
#[derive(Debug, PartialEq)]
pub struct Body<'a> {
    /// `LOG`, `DETAIL`, … (or a localized word); `None` when the readings of an
    /// ambiguous line disagree on where the message starts.
    pub label: Option<&'a str>,
    /// True for one of the known labels.
    pub known: bool,
    /// The text after `LABEL:  `; for an undecided line, everything from the first
    /// place a label could start (so nothing is lost).
    pub text: &'a [u8],
}

/// Reusable state of a reader of one log: the matcher's buffers and what the log has
/// shown about its sessions.
#[derive(Debug, Default)]
pub struct Reader {
    buffers: Buffers,
    /// User and database per pid.
    pub sessions: Sessions,
}

/// How a label ends: `LABEL:  ` (what the server writes), `LABEL: ` (seen in logs that
/// passed through other tools), or any word with two spaces (a localized server).
#[derive(Clone, Copy, PartialEq)]
enum Tier {
    Strict,
    OneSpace,
    Localized,
}

impl Prefix {
    /// Compiles a prefix the way the server expands it: unknown escapes and a lone `%`
    /// at the end produce nothing.
    pub fn compile(source: &str) -> Prefix {
        let b = source.as_bytes();
        let mut elems: Vec<Elem> = Vec::new();
        let mut q_at = None;
        let mut lit = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'%' {
                lit.push(b[i]);
                i += 1;
                continue;
            }
            let mut j = i + 1;
            if b.get(j) == Some(&b'%') {
                lit.push(b'%');
                i = j + 1;
                continue;
            }
            // Padding: %-10u (left-justified) or %10u; the width is what matters here.
            if b.get(j) == Some(&b'-') {
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
                    elems.push(Elem::Lit(Literal::new(std::mem::take(&mut lit))));
                }
                q_at.get_or_insert(elems.len());
                continue;
            }
            if let Some(esc) = Escape::from_letter(c) {
                if !lit.is_empty() {
                    elems.push(Elem::Lit(Literal::new(std::mem::take(&mut lit))));
                }
                elems.push(Elem::Field { esc, pad });
            }
        }
        if !lit.is_empty() {
            elems.push(Elem::Lit(Literal::new(lit)));
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

    /// The escapes whose text a client chooses (see [`Escape::client_controlled`]).
    pub fn client_fields(&self) -> Vec<Escape> {
        self.escapes()
            .into_iter()
            .filter(|e| e.client_controlled())
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

    /// True for a line that starts like this prefix up to its first client-written
    /// field yet holds no label: what a newline inside a user or database name leaves
    /// behind (they reach the prefix unescaped, as the names of failed logins). The rest
    /// of that prefix went to the next physical line, which may then look like a whole
    /// line of its own — a forged one.
    pub fn broken_start(&self, line: &[u8], rd: &mut Reader) -> bool {
        let Some(first) = self
            .elems
            .iter()
            .position(|e| matches!(e, Elem::Field { esc, .. } if esc.client_controlled()))
        else {
            return false;
        };
        first > 0 && rd.buffers.starts_with(&self.elems[..first], line)
    }

    /// Reads `line` with fresh state (tests and one-off lines).
    pub fn parse_line<'a>(&self, line: &'a [u8], rec: &mut Record) -> Option<Body<'a>> {
        self.parse(line, &mut Reader::default(), rec)
    }

    /// Matches the prefix at the start of `line`; fills `rec` with its fields and
    /// returns the label and text that follow. `None` when the line does not start with
    /// this prefix followed by a label. When the line can be read more than one way,
    /// `rec.ambiguous` is set and only what every reading agrees on is filled in.
    pub fn parse<'a>(&self, line: &'a [u8], rd: &mut Reader, rec: &mut Record) -> Option<Body<'a>> {
        for tier in [Tier::Strict, Tier::OneSpace, Tier::Localized] {
            let b = &mut rd.buffers;
            splits(line, tier, &mut b.splits);
            if b.splits.is_empty() {
                continue;
            }
            b.parses.clear();
            let complete = b.read(&self.elems, self.q_at, line, &rd.sessions);
            if b.parses.is_empty() {
                continue;
            }
            return Some(decide(line, tier, complete, rd, rec));
        }
        None
    }
}

/// Every place in `line` where a label of `tier` could start a message body.
fn splits(line: &[u8], tier: Tier, out: &mut Vec<Split>) {
    out.clear();
    static COLON: std::sync::LazyLock<memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memmem::Finder::new(b": "));
    for c in COLON.find_iter(line) {
        let two = line.get(c + 2) == Some(&b' ');
        let text = c + 2 + usize::from(two);
        match tier {
            Tier::Strict | Tier::OneSpace => {
                if two != (tier == Tier::Strict) {
                    continue;
                }
                // Every label ends in a capital: most colons are passed at once.
                let Some(&last) = line[..c].last().filter(|b| b.is_ascii_uppercase()) else {
                    continue;
                };
                for l in PRIMARY.iter().chain(SECONDARY.iter()) {
                    let b = l.as_bytes();
                    if b[b.len() - 1] == last && c >= b.len() && line[c - b.len()..c] == *b {
                        out.push(Split {
                            at: c - l.len(),
                            label_len: l.len(),
                            text,
                        });
                    }
                }
            }
            Tier::Localized => {
                if !two {
                    continue;
                }
                // A word: letters of any script, no spaces or punctuation.
                let n = label_word(&line[..c]);
                if (1..=MAX_LABEL).contains(&n) && std::str::from_utf8(&line[c - n..c]).is_ok() {
                    let at = two_words(line, c - n, c).unwrap_or(c - n);
                    out.push(Split {
                        at,
                        label_len: c - at,
                        text,
                    });
                    continue;
                }
                // French writes a space before the colon (`INSTRUCTION :  `): only a
                // label the catalogue knows is read that way.
                let Some(end) = [b" ".as_slice(), "\u{a0}".as_bytes()]
                    .iter()
                    .find(|s| line[..c].ends_with(s))
                    .map(|s| c - s.len())
                else {
                    continue;
                };
                let n = label_word(&line[..end]);
                let at = two_words(line, end - n, end).unwrap_or(end - n);
                if (1..=MAX_LABEL).contains(&n)
                    && std::str::from_utf8(&line[at..end])
                        .ok()
                        .and_then(crate::logs::messages::english_label)
                        .is_some()
                {
                    out.push(Split {
                        at,
                        label_len: end - at,
                        text,
                    });
                }
            }
        }
    }
}

/// How many bytes at the end of `before` make one word of a label: letters of any
/// script, no spaces or punctuation.
fn label_word(before: &[u8]) -> usize {
    before
        .iter()
        .rev()
        .take(MAX_LABEL + 1)
        .take_while(|b| b.is_ascii_alphanumeric() || **b >= 0x80)
        .count()
}

/// Where a label of two words that ends with the word at `at..end` starts, when the
/// catalogue knows it as one (Korean `명령 구문` is `STATEMENT`).
fn two_words(line: &[u8], at: usize, end: usize) -> Option<usize> {
    let space = at.checked_sub(1).filter(|&i| line[i] == b' ')?;
    let n = label_word(&line[..space]);
    let start = space - n;
    (n > 0 && end - start <= MAX_LABEL)
        .then(|| std::str::from_utf8(&line[start..end]).ok())
        .flatten()
        .and_then(crate::logs::messages::english_label)
        .map(|_| start)
}

/// Picks the reading of `line` (or what all readings agree on), fills `rec` and learns
/// what the line establishes about its session.
fn decide<'a>(
    line: &'a [u8],
    tier: Tier,
    complete: bool,
    rd: &mut Reader,
    rec: &mut Record,
) -> Body<'a> {
    let parses = &mut rd.buffers.parses;
    if complete && parses.len() > 1 {
        settle(line, parses, &rd.sessions);
    }
    let first = &parses[0];
    let split = first.split;
    let one_split =
        parses.iter().all(|p| p.split == split) && (complete || rd.buffers.splits.len() == 1);
    let mut ambiguous = !complete || !one_split;
    if !complete {
        // Too many readings to compare: only the fields every reading must share.
        let mut certain = Spans::new();
        for f in first.spans.iter().filter(|f| f.2 <= rd.buffers.certain) {
            certain.push(f);
        }
        fill(line, &certain, rec);
    } else if parses.len() == 1 {
        fill(line, &first.spans, rec);
    } else {
        // Every field any reading has: kept when all readings give it the same value.
        let mut agreed = Spans::new();
        for p in parses.iter() {
            for f in p.spans.iter() {
                if agreed.iter().any(|a| a.0 == f.0) {
                    continue;
                }
                let v = known(value(line, f));
                if parses
                    .iter()
                    .all(|q| field(line, q, f.0).and_then(known) == v)
                {
                    agreed.push(f);
                } else {
                    ambiguous = true;
                }
            }
        }
        fill(line, &agreed, rec);
    }
    rec.ambiguous |= ambiguous;
    let body = if one_split {
        let s = split;
        let label = std::str::from_utf8(&line[s.at..s.at + s.label_len]).ok();
        let known = label.is_some_and(|l| PRIMARY.contains(&l) || SECONDARY.contains(&l));
        Body {
            label,
            known: known && tier != Tier::Localized,
            text: &line[s.text.min(line.len())..],
        }
    } else {
        let at = parses.iter().map(|p| p.split.at).min().unwrap_or(split.at);
        Body {
            label: None,
            known: false,
            text: &line[at..],
        }
    };
    learn(&body, rec, &mut rd.sessions);
    body
}

/// Drops the readings that give an escape written twice (`%a … %a`) two values (the
/// server wrote one), then those that contradict what the log showed of their pid's
/// session (when the pid follows the free fields, the walk could not use it). Only
/// narrows; when nothing would be left the readings stay as they were.
fn settle(line: &[u8], parses: &mut Vec<Parse>, sessions: &Sessions) {
    let consistent = |p: &Parse| {
        p.spans.iter().all(|a| {
            let va = value(line, a).trim_ascii();
            p.spans
                .iter()
                .filter(|b| b.0 == a.0)
                .all(|b| value(line, b).trim_ascii() == va)
        })
    };
    if parses.iter().any(&consistent) {
        parses.retain(consistent);
    }
    let fits = |p: &Parse| {
        let Some(n) = field(line, p, Escape::Pid)
            .and_then(|v| {
                std::str::from_utf8(v.trim_ascii())
                    .ok()?
                    .parse::<i64>()
                    .ok()
            })
            .and_then(|pid| sessions.get(pid))
        else {
            return true;
        };
        let agrees = |esc, known: Option<&str>| match (field(line, p, esc), known) {
            (Some(v), Some(k)) => v == k.as_bytes(),
            _ => true,
        };
        agrees(Escape::User, n.user) && agrees(Escape::Database, n.database)
    };
    if parses.iter().any(&fits) {
        parses.retain(fits);
    }
}

/// Updates the session table from a decided line.
fn learn(body: &Body<'_>, rec: &Record, sessions: &mut Sessions) {
    let Some(pid) = rec.pid else { return };
    if body.label.is_some()
        && (body.text.starts_with(b"connection received:")
            || body.text.starts_with(b"disconnection:"))
    {
        sessions.forget(pid);
        return;
    }
    sessions.learn(pid, rec.user.as_deref(), rec.database.as_deref());
}

/// The (trimmed) value of escape `esc` in reading `p`.
fn field<'a>(line: &'a [u8], p: &Parse, esc: Escape) -> Option<&'a [u8]> {
    p.spans.iter().find(|f| f.0 == esc).map(|f| value(line, f))
}

/// A value that says something: not empty, not the server's `[unknown]`.
fn known(v: &[u8]) -> Option<&[u8]> {
    (!v.is_empty() && v != b"[unknown]").then_some(v)
}

fn value(line: &[u8], f: (Escape, usize, usize)) -> &[u8] {
    &line[f.1..f.2]
}

/// True for the labels of lines that continue a message.
pub fn is_secondary(label: &str) -> bool {
    SECONDARY.contains(&label)
        || crate::logs::messages::english_label(label).is_some_and(|l| SECONDARY.contains(&l))
}

fn fill(line: &[u8], spans: &Spans, rec: &mut Record) {
    let mut cut = false;
    for f in spans.iter() {
        let esc = f.0;
        let v = value(line, f);
        // An escape written twice has one value; a padded copy lost its edge spaces,
        // so the longest copy is the exact one.
        if spans.iter().any(|g| g.0 == esc && g.2 - g.1 > f.2 - f.1) {
            continue;
        }
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
            Escape::LocalAddress => rec.local_address = opt_text(v, &mut cut),
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
