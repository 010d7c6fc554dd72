//! The `stderr` format: a prefix on every line, extra lines (DETAIL, STATEMENT, …) with
//! their own prefix, and tab-indented continuation lines for text with newlines.

use memchr::memchr;

use super::prefix::{is_secondary, Body, Prefix, Reader};
use super::record::{append_line, text, Record};
use super::Flush;

/// Which field a tab-continued line extends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Field {
    Message,
    Detail,
    Hint,
    Context,
    Statement,
    Query,
    Location,
}

impl Field {
    fn of(label: &str) -> Field {
        match super::messages::english_label(label).unwrap_or(label) {
            "DETAIL" => Field::Detail,
            "HINT" => Field::Hint,
            "CONTEXT" => Field::Context,
            "STATEMENT" => Field::Statement,
            "QUERY" => Field::Query,
            "LOCATION" => Field::Location,
            _ => Field::Message,
        }
    }

    fn get(self, r: &mut Record) -> &mut String {
        let slot = match self {
            Field::Message => return &mut r.message,
            Field::Detail => &mut r.detail,
            Field::Hint => &mut r.hint,
            Field::Context => &mut r.context,
            Field::Statement => &mut r.statement,
            Field::Query => &mut r.query,
            Field::Location => &mut r.location,
        };
        slot.get_or_insert_with(String::new)
    }
}

/// A line parsed ahead (its fields are in [`StderrParser::spare`]): where it starts, its
/// label (`None`: undecided) and text.
type Peeked<'a> = (usize, Option<(Option<&'a str>, &'a [u8])>);

/// Parses `stderr` logs written with one `log_line_prefix`.
#[derive(Debug)]
pub struct StderrParser {
    prefix: Prefix,
    /// The matcher's buffers and what the log showed of its sessions (settles lines
    /// that can be read more than one way).
    reader: Reader,
    /// File offset just after a line a newline in a name cut short (see
    /// [`Prefix::broken_start`]): the line starting there is not believed.
    after_broken: Option<u64>,
    /// The record a line read ahead is parsed into (kept: one allocation, not one per
    /// message).
    spare: Box<Record>,
    /// Lines come through a relay that may have dropped the tab of continuation lines
    /// (syslog): a line without prefix or tab continues the message before it. In a
    /// file the server writes, every continuation line has its tab, and such a line is
    /// another program's output (an archive or restore command's `cp: cannot stat …`,
    /// a memory context dump): a record of its own, not part of a message.
    relayed: bool,
}

impl Clone for StderrParser {
    /// A parser for the same prefix; what one log showed of its sessions is not
    /// carried to another.
    fn clone(&self) -> StderrParser {
        StderrParser {
            relayed: self.relayed,
            ..StderrParser::new(self.prefix.clone())
        }
    }
}

impl StderrParser {
    /// This parser, for lines that came through a relay (see `relayed`).
    pub fn relayed(mut self) -> StderrParser {
        self.relayed = true;
        self
    }

    /// A parser for lines written with `prefix`.
    pub fn new(prefix: Prefix) -> StderrParser {
        StderrParser {
            prefix,
            reader: Reader::default(),
            after_broken: None,
            spare: Box::default(),
            relayed: false,
        }
    }

    /// The prefix in use.
    pub fn prefix(&self) -> &Prefix {
        &self.prefix
    }

    /// Parses the complete messages of `buf` (which starts at file offset `base`) into
    /// `out`, at most `max` of them; returns how many bytes they used. The last message
    /// is held back unless `flush` says the data will not grow: its DETAIL or STATEMENT
    /// line may still be on its way.
    pub fn parse(
        &mut self,
        buf: &[u8],
        base: u64,
        flush: Flush,
        out: &mut Vec<Record>,
        max: usize,
    ) -> usize {
        let mut pos = 0;
        let mut consumed = 0;
        // Some: the last record in `out` is a message still being read, and its lines
        // of this field go on. Records are built where they end up: a record is
        // hundreds of bytes, and moving each a few times was a tenth of the time.
        let mut cur: Option<Field> = None;
        // The line after a message, parsed while looking for its DETAIL lines: reused
        // rather than parsed twice. Its record is `self.spare`.
        let mut peeked: Option<Peeked<'_>> = None;
        while pos < buf.len() {
            let (line, next) = match memchr(b'\n', &buf[pos..]) {
                Some(n) => (&buf[pos..pos + n], pos + n + 1),
                None if flush == Flush::Force => (&buf[pos..], buf.len()),
                None => break,
            };
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let (Some(b'\t'), Some(field), Some(rec)) = (line.first(), cur, out.last_mut()) {
                let cut = append_line(field.get(rec), &line[1..]);
                rec.truncated |= cut;
                rec.end = base + next as u64;
                pos = next;
                continue;
            }
            // Everything before this line is complete.
            if cur.take().is_some() {
                consumed = pos;
                if let Some(rec) = out.last_mut() {
                    rec.split_cursor_position();
                }
            }
            if out.len() >= max {
                return consumed;
            }
            let offset = base + pos as u64;
            let end = base + next as u64;
            pos = next;
            if line.is_empty() {
                consumed = pos;
                continue;
            }
            let mut body = match peeked.take() {
                Some((at, body)) if base + at as u64 == offset => {
                    out.push(std::mem::take(&mut *self.spare));
                    body
                }
                _ => {
                    out.push(Record::default());
                    let rec = out.last_mut().expect("just pushed");
                    self.prefix
                        .parse(line, &mut self.reader, rec)
                        .map(|b| (b.label, b.text))
                }
            };
            let rec = out.last_mut().expect("just pushed");
            let mut end = end;
            if body.is_none() && self.prefix.broken_start(line, &mut self.reader) {
                // A name with a newline cut this line: read it joined with the lines
                // after it, as the server meant it. If that fails, the next line is
                // not believed (it may be the name's forgery of a line).
                match self.rejoin(buf, (offset - base) as usize, next) {
                    Some((r, b, joined_next)) => {
                        (*rec, body) = (r, Some(b));
                        pos = joined_next;
                        end = base + joined_next as u64;
                    }
                    None => self.after_broken = Some(end),
                }
            }
            rec.offset = offset;
            rec.end = end;
            let Some((mut label, mut body_text)) = body else {
                let mut lines = line;
                if is_memory_dump(line) {
                    // The whole dump is one record: its lines after this one, as far
                    // as they have arrived.
                    let start = (offset - base) as usize;
                    while let Some(n) = memchr(b'\n', &buf[pos..]) {
                        let l = &buf[pos..pos + n];
                        if !is_memory_dump(l.strip_suffix(b"\r").unwrap_or(l)) {
                            break;
                        }
                        pos += n + 1;
                    }
                    end = base + pos as u64;
                    lines = &buf[start..pos];
                    lines = lines.strip_suffix(b"\n").unwrap_or(lines);
                }
                *rec = Record::unparsed(lines, offset, end);
                consumed = pos;
                continue;
            };
            // Right after a line a name's newline cut short: this one may be the rest of
            // that name dressed up as a line of its own. Kept whole, flagged, severity
            // unknown, like a line that reads two ways.
            if self.after_broken.take() == Some(offset) {
                if let Some(l) = label {
                    let at = l.as_ptr() as usize - line.as_ptr() as usize;
                    body_text = &line[at..];
                }
                label = None;
                rec.ambiguous = true;
            }
            let (t, cut) = text(body_text);
            rec.truncated |= cut;
            let Some(label) = label else {
                // Read more than one way, and the readings disagree on where the
                // message starts: kept whole and flagged, severity unknown.
                rec.message = t;
                cur = Some(Field::Message);
                continue;
            };
            let field = head(rec, label, t);
            let (at, field, next) = self.join_following(buf, pos, base, rec, field);
            (pos, peeked) = (at, next);
            cur = Some(field);
        }
        if cur.is_some() {
            if flush != Flush::No && pos >= buf.len() {
                if let Some(rec) = out.last_mut() {
                    consumed = (rec.end - base) as usize;
                    rec.split_cursor_position();
                }
            } else {
                // Its DETAIL or STATEMENT line may still be on its way: read again
                // next time.
                out.pop();
            }
        }
        consumed
    }

    /// Joins the lines after a message's first one that belong to it, from `pos`: tab
    /// continuations, and the DETAIL/HINT/STATEMENT/… lines of the same backend. Returns
    /// where it stopped, the field the last line went to, and the line after the
    /// message when it was parsed on the way (its record is `self.spare`; reused, not
    /// parsed twice).
    #[inline]
    fn join_following<'b>(
        &mut self,
        buf: &'b [u8],
        mut pos: usize,
        base: u64,
        rec: &mut Record,
        mut field: Field,
    ) -> (usize, Field, Option<Peeked<'b>>) {
        while let Some(n) = memchr(b'\n', &buf[pos..]) {
            let l = &buf[pos..pos + n];
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            if l.first() == Some(&b'\t') {
                let cut = append_line(field.get(rec), &l[1..]);
                rec.truncated |= cut;
            } else {
                let other = &mut *self.spare;
                *other = Record::default();
                match self.prefix.parse(l, &mut self.reader, other) {
                    Some(Body {
                        label: Some(label),
                        text: b_text,
                        ..
                    }) if is_secondary(label) && other.pid == rec.pid => {
                        field = Field::of(label);
                        let (t, cut) = text(b_text);
                        rec.truncated |= cut;
                        let slot = field.get(rec);
                        if slot.is_empty() {
                            *slot = t;
                        } else {
                            slot.push('\n');
                            slot.push_str(&t);
                        }
                    }
                    // No prefix at all: a continuation line whose leading tab a relay
                    // dropped (syslog, a cloud log API). Joined, flagged as a reading
                    // that is likely, not certain — unless it is the start of a
                    // line a newline in a name cut, which is read as such.
                    None if self.relayed
                        && !self.prefix.broken_start(l, &mut self.reader)
                        && !is_memory_dump(l) =>
                    {
                        let cut = append_line(field.get(rec), l);
                        rec.truncated |= cut;
                        rec.continued_without_tab = true;
                    }
                    b => {
                        return (pos, field, Some((pos, b.map(|b| (b.label, b.text)))));
                    }
                }
            }
            pos += n + 1;
            rec.end = base + pos as u64;
        }
        (pos, field, None)
    }
}

/// A line of the memory context dump a backend writes straight to stderr when it runs
/// out of memory (`TopMemoryContext: 8192 total in 1 blocks; 7928 free (0 chunks); 264
/// used`, `Grand total: …`): no continuation of the message before it, whose figures it
/// would otherwise become part of.
fn is_memory_dump(l: &[u8]) -> bool {
    use memchr::memmem::find;
    let t = l.trim_ascii_start();
    let used = t.ends_with(b" used") || find(t, b" used: ").is_some();
    used && find(t, b" blocks; ").is_some()
        && find(t, b" free (").is_some()
        && (find(t, b" total in ").is_some() || t.starts_with(b"Grand total: "))
}

impl StderrParser {
    /// The line starting at `start` (cut by a newline in a name) read together with up
    /// to [`MAX_REJOIN`] following lines: the record, its label and text, and where the
    /// next line starts. `None` when no such reading has a decided label.
    #[allow(clippy::type_complexity)]
    fn rejoin<'a>(
        &mut self,
        buf: &'a [u8],
        start: usize,
        mut next: usize,
    ) -> Option<(Record, (Option<&'a str>, &'a [u8]), usize)> {
        for _ in 0..MAX_REJOIN {
            let n = memchr(b'\n', buf.get(next..)?)?;
            let joined = &buf[start..next + n];
            let joined = joined.strip_suffix(b"\r").unwrap_or(joined);
            let mut rec = Record::default();
            if let Some(b) = self.prefix.parse(joined, &mut self.reader, &mut rec) {
                if b.label.is_some() {
                    return Some((rec, (b.label, b.text), next + n + 1));
                }
            }
            next += n + 1;
        }
        None
    }
}

/// Lines a name may span: user and database names are at most 63 bytes each.
const MAX_REJOIN: usize = 4;

/// A message's first line into `rec`: its severity, SQLSTATE (`log_error_verbosity =
/// verbose`) and text; or an extra line on its own, whose message is not here (another
/// backend's line came between, or it was cut off at a rotation). The field it went to.
#[inline]
fn head(rec: &mut Record, label: &str, t: String) -> Field {
    let field = Field::of(label);
    if is_secondary(label) {
        *field.get(rec) = t;
    } else {
        // A translated server's label in English (`FEHLER` is an `ERROR`), so that
        // severities mean the same in every language.
        rec.language = super::record::label_language(label);
        rec.severity = Some(
            super::messages::english_label(label)
                .unwrap_or(label)
                .to_string(),
        );
        // "ERROR:  42P01: relation …".
        match sqlstate_inline(&t) {
            Some(code) => {
                rec.sqlstate = Some(code.to_string());
                rec.message = t[7..].to_string();
            }
            None => rec.message = t,
        }
    }
    field
}

/// The SQLSTATE written inline by `log_error_verbosity = verbose`.
fn sqlstate_inline(t: &str) -> Option<&str> {
    let b = t.as_bytes();
    (b.len() >= 7
        && b[..5]
            .iter()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        && &b[5..7] == b": ")
        .then(|| &t[..5])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(log: &str, flush: Flush) -> (Vec<Record>, usize) {
        run_with(StderrParser::new(Prefix::compile("%m [%p] ")), log, flush)
    }

    fn run_with(mut p: StderrParser, log: &str, flush: Flush) -> (Vec<Record>, usize) {
        let mut out = Vec::new();
        let n = p.parse(log.as_bytes(), 100, flush, &mut out, 1000);
        (out, n)
    }

    #[test]
    fn extra_lines_and_continuations_join_their_message() {
        let log = "2026-11-26 10:00:00.001 UTC [10] ERROR:  duplicate key value violates unique constraint \"t_pkey\"\n\
2026-11-26 10:00:00.001 UTC [10] DETAIL:  Key (id)=(1) already exists.\n\
2026-11-26 10:00:00.001 UTC [10] STATEMENT:  insert into t\n\
\tvalues (1)\n\
2026-11-26 10:00:01.000 UTC [11] LOG:  checkpoint starting: time\n";
        let (recs, n) = run(log, Flush::Settled);
        assert_eq!(n, log.len());
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].severity.as_deref(), Some("ERROR"));
        assert_eq!(
            recs[0].detail.as_deref(),
            Some("Key (id)=(1) already exists.")
        );
        assert_eq!(
            recs[0].statement.as_deref(),
            Some("insert into t\nvalues (1)")
        );
        assert_eq!(recs[0].offset, 100);
        assert_eq!(recs[1].offset, recs[0].end);
        assert_eq!(recs[1].message, "checkpoint starting: time");
        // Without flush the last message waits: its DETAIL may still come.
        let (recs, n) = run(log, Flush::No);
        assert_eq!(recs.len(), 1);
        assert_eq!(100 + n as u64, recs[0].end);
    }

    #[test]
    fn in_a_file_another_programs_line_is_a_record_of_its_own() {
        let log = "2026-11-26 10:00:00.001 UTC [10] LOG:  database system was interrupted; last known up at 2026-11-26 09:00:00 UTC\n\
cp: cannot stat '/archive/00000002.history': No such file or directory\n\
2026-11-26 10:00:00.002 UTC [10] LOG:  starting archive recovery\n";
        let (recs, _) = run(log, Flush::Settled);
        assert_eq!(recs.len(), 3, "{recs:#?}");
        assert!(recs[0].message.ends_with("09:00:00 UTC") && !recs[0].continued_without_tab);
        assert_eq!(
            recs[1].raw.as_deref(),
            Some("cp: cannot stat '/archive/00000002.history': No such file or directory")
        );
        assert_eq!(recs[2].message, "starting archive recovery");
    }

    #[test]
    fn a_memory_context_dump_is_a_record_of_its_own_not_part_of_a_message() {
        let log = "2026-11-26 10:00:00.001 UTC [10] LOG:  connection authorized: user=u database=d application_name=psql\n\
TopMemoryContext: 36648 total in 3 blocks; 4280 free (6 chunks); 32368 used\n\
  MessageContext: 16384 total in 2 blocks; 7816 free (5 chunks); 8568 used\n\
    index info: 2048 total in 2 blocks; 728 free (2 chunks); 1320 used: pg_class_oid_index\n\
  12 more child contexts containing 40960 total in 7 blocks; 1 free (2 chunks); 3 used\n\
Grand total: 1027144 bytes in 158 blocks; 290624 free (108 chunks); 736520 used\n\
2026-11-26 10:00:00.002 UTC [10] ERROR:  out of memory\n\
2026-11-26 10:00:00.002 UTC [10] DETAIL:  Failed on request of size 900000004 in memory context \"ExprContext\".\n";
        let (recs, n) = run(log, Flush::Settled);
        assert_eq!(n, log.len());
        assert_eq!(recs.len(), 3, "{recs:#?}");
        assert_eq!(
            recs[0].message,
            "connection authorized: user=u database=d application_name=psql"
        );
        assert!(!recs[0].continued_without_tab);
        let dump = recs[1].raw.as_deref().expect("raw");
        assert!(
            dump.starts_with("TopMemoryContext: ") && dump.ends_with("736520 used"),
            "{dump}"
        );
        assert_eq!(dump.lines().count(), 5);
        assert_eq!(recs[2].message, "out of memory");
        assert!(recs[2].detail.is_some());
    }

    #[test]
    fn continuation_lines_that_lost_their_tab_join_their_message_flagged() {
        let run = |log: &str, flush| {
            run_with(
                StderrParser::new(Prefix::compile("%m [%p] ")).relayed(),
                log,
                flush,
            )
        };
        // As syslog relays it: the statement's second line and a plan's lines without
        // their leading tab.
        let log = "2026-11-26 10:00:00.001 UTC [10] LOG:  statement: select *\n\
from t\n\
where id = 1\n\
2026-11-26 10:00:00.001 UTC [10] DETAIL:  first line\n\
second line\n\
2026-11-26 10:00:01.000 UTC [11] LOG:  checkpoint starting: time\n\
2026-11-26 10:00:02.000 UTC [12] LOG:  tabbed\n\
\tas it should be\n";
        let (recs, n) = run(log, Flush::Settled);
        assert_eq!(n, log.len());
        assert_eq!(recs.len(), 3, "{recs:#?}");
        assert_eq!(recs[0].message, "statement: select *\nfrom t\nwhere id = 1");
        assert_eq!(recs[0].detail.as_deref(), Some("first line\nsecond line"));
        assert!(recs[0].continued_without_tab && recs[0].raw.is_none());
        assert!(!recs[1].continued_without_tab);
        assert_eq!(recs[2].message, "tabbed\nas it should be");
        assert!(!recs[2].continued_without_tab);
        // Before any message there is nothing to continue: kept as a line of its own.
        let (recs, _) = run(
            "orphan line\n2026-11-26 10:00:01.000 UTC [11] LOG:  x\n",
            Flush::Settled,
        );
        assert_eq!(recs[0].raw.as_deref(), Some("orphan line"));
    }

    #[test]
    fn partial_lines_wait_and_garbage_is_kept() {
        let log: &[u8] = b"not a log line \xff\n2026-11-26 10:00:00.001 UTC [10] LOG:  half";
        let mut p = StderrParser::new(Prefix::compile("%m [%p] "));
        let mut out = Vec::new();
        let n = p.parse(log, 0, Flush::Settled, &mut out, 10);
        assert_eq!(n, 17);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].raw.as_deref(), Some("not a log line \u{fffd}"));
        let mut out = Vec::new();
        let n = p.parse(log, 0, Flush::Force, &mut out, 10);
        assert_eq!(n, log.len());
        assert_eq!(out[1].message, "half");
    }

    #[test]
    fn verbose_sqlstate_and_location() {
        let log = "2026-11-26 10:00:00.001 UTC [10] ERROR:  42P01: relation \"nope\" does not exist at character 15\n\
2026-11-26 10:00:00.001 UTC [10] LOCATION:  parserOpenTable, parse_relation.c:1449\n";
        let (recs, _) = run(log, Flush::Settled);
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].sqlstate.as_deref(), Some("42P01"));
        assert!(recs[0].message.starts_with("relation"));
        assert_eq!(
            recs[0].location.as_deref(),
            Some("parserOpenTable, parse_relation.c:1449")
        );
    }

    #[test]
    fn a_newline_in_a_name_forges_no_line() {
        // As PostgreSQL 15 wrote it for psql -U $'evil\n2026-12-01 00:00:00.000 UTC [1] PANIC:  forged\n'
        let log = "2026-12-01 16:22:05.321 UTC [11537] evil\n\
2026-12-01 00:00:00.000 UTC [1] PANIC:  forged\n\
@postgres FATAL:  role \"evil\n\
\t2026-12-01 00:00:00.000 UTC [1] PANIC:  forged\n\
\t\" does not exist\n\
2026-12-01 16:22:06.000 UTC [11538] bob@shop LOG:  connection authorized: user=bob database=shop\n";
        let mut p = StderrParser::new(Prefix::compile("%m [%p] %q%u@%d "));
        let mut out = Vec::new();
        p.parse(log.as_bytes(), 0, Flush::Settled, &mut out, 100);
        assert!(
            out.iter().all(|r| r.severity.as_deref() != Some("PANIC")),
            "{out:#?}"
        );
        // The cut line is read joined with the rest, as the server meant it.
        assert_eq!(out.len(), 2, "{out:#?}");
        let fatal = &out[0];
        assert_eq!(fatal.severity.as_deref(), Some("FATAL"));
        assert_eq!(fatal.pid, Some(11537));
        assert_eq!(
            fatal.user.as_deref(),
            Some("evil\n2026-12-01 00:00:00.000 UTC [1] PANIC:  forged\n")
        );
        assert_eq!(fatal.database.as_deref(), Some("postgres"));
        assert_eq!(
            fatal.message,
            "role \"evil\n2026-12-01 00:00:00.000 UTC [1] PANIC:  forged\n\" does not exist"
        );
        assert_eq!(
            (out[1].severity.as_deref(), out[1].ambiguous),
            (Some("LOG"), false)
        );

        // When the rest cannot be joined (here it is missing), the line after the cut one
        // is not believed.
        let log = "2026-12-01 16:22:05.321 UTC [11537] evil\n\
2026-12-01 00:00:00.000 UTC [1] PANIC:  forged\n\
2026-12-01 16:22:06.000 UTC [11538] bob@shop LOG:  connection authorized: user=bob database=shop\n";
        let mut out = Vec::new();
        p.parse(log.as_bytes(), 0, Flush::Settled, &mut out, 100);
        let forged = out
            .iter()
            .find(|r| r.message.contains("forged"))
            .expect("kept");
        assert!(forged.ambiguous);
        assert_eq!(
            (forged.severity.as_deref(), forged.message.as_str()),
            (None, "PANIC:  forged")
        );
        assert_eq!(out.last().and_then(|r| r.severity.as_deref()), Some("LOG"));
    }

    #[test]
    fn another_backends_line_does_not_join() {
        let log = "2026-11-26 10:00:00.001 UTC [10] ERROR:  a\n\
2026-11-26 10:00:00.001 UTC [11] DETAIL:  b\n";
        let (recs, _) = run(log, Flush::Settled);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].detail, None);
        assert_eq!(recs[1].detail.as_deref(), Some("b"));
        assert_eq!(recs[1].severity, None);
    }

    #[test]
    fn max_bounds_the_batch_and_consumed_is_a_message_boundary() {
        let line = "2026-11-26 10:00:00.001 UTC [10] LOG:  x\n";
        let log = line.repeat(5);
        let mut p = StderrParser::new(Prefix::compile("%m [%p] "));
        let mut out = Vec::new();
        let n = p.parse(log.as_bytes(), 0, Flush::Settled, &mut out, 2);
        assert_eq!(out.len(), 2);
        assert_eq!(n, 2 * line.len());
    }
}
