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
        match label {
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

/// A line parsed ahead: where it starts, its fields, its label (`None`: undecided) and
/// text.
type Peeked<'a> = (usize, Box<Record>, Option<(Option<&'a str>, &'a [u8])>);

/// Parses `stderr` logs written with one `log_line_prefix`.
#[derive(Debug)]
pub struct StderrParser {
    prefix: Prefix,
    /// The matcher's buffers and what the log showed of its sessions (settles lines
    /// that can be read more than one way).
    reader: Reader,
}

impl Clone for StderrParser {
    /// A parser for the same prefix; what one log showed of its sessions is not
    /// carried to another.
    fn clone(&self) -> StderrParser {
        StderrParser::new(self.prefix.clone())
    }
}

impl StderrParser {
    /// A parser for lines written with `prefix`.
    pub fn new(prefix: Prefix) -> StderrParser {
        StderrParser {
            prefix,
            reader: Reader::default(),
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
        let mut cur: Option<(Record, Field)> = None;
        // The line after a message, parsed while looking for its DETAIL lines: reused
        // rather than parsed twice.
        let mut peeked: Option<Peeked<'_>> = None;
        while pos < buf.len() {
            let (line, next) = match memchr(b'\n', &buf[pos..]) {
                Some(n) => (&buf[pos..pos + n], pos + n + 1),
                None if flush == Flush::Force => (&buf[pos..], buf.len()),
                None => break,
            };
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let (Some(b'\t'), Some((rec, field))) = (line.first(), cur.as_mut()) {
                let cut = append_line(field.get(rec), &line[1..]);
                rec.truncated |= cut;
                rec.end = base + next as u64;
                pos = next;
                continue;
            }
            // Everything before this line is complete.
            if let Some((mut rec, _)) = cur.take() {
                consumed = pos;
                rec.split_cursor_position();
                out.push(rec);
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
            let (mut rec, body) = match peeked.take() {
                Some((at, rec, body)) if base + at as u64 == offset => (*rec, body),
                _ => {
                    let mut rec = Record::default();
                    let body = self
                        .prefix
                        .parse(line, &mut self.reader, &mut rec)
                        .map(|b| (b.label, b.text));
                    (rec, body)
                }
            };
            rec.offset = offset;
            rec.end = end;
            let Some((label, body_text)) = body else {
                out.push(Record::unparsed(line, offset, end));
                consumed = pos;
                continue;
            };
            let (t, cut) = text(body_text);
            rec.truncated |= cut;
            let Some(label) = label else {
                // Read more than one way, and the readings disagree on where the
                // message starts: kept whole and flagged, severity unknown.
                rec.message = t;
                cur = Some((rec, Field::Message));
                continue;
            };
            let field = Field::of(label);
            if is_secondary(label) {
                // An extra line whose message is not here (another backend's line came
                // between, or it was cut off at a rotation): kept on its own.
                *field.get(&mut rec) = t;
            } else {
                rec.severity = Some(label.to_string());
                // log_error_verbosity = verbose: "ERROR:  42P01: relation …".
                match sqlstate_inline(&t) {
                    Some(code) => {
                        rec.sqlstate = Some(code.to_string());
                        rec.message = t[7..].to_string();
                    }
                    None => rec.message = t,
                }
            }
            // Join the following DETAIL/STATEMENT lines of the same backend.
            let mut field = field;
            while let Some(n) = memchr(b'\n', &buf[pos..]) {
                let l = &buf[pos..pos + n];
                let l = l.strip_suffix(b"\r").unwrap_or(l);
                if l.first() == Some(&b'\t') {
                    let cut = append_line(field.get(&mut rec), &l[1..]);
                    rec.truncated |= cut;
                } else {
                    let mut other = Box::<Record>::default();
                    match self.prefix.parse(l, &mut self.reader, &mut other) {
                        Some(Body {
                            label: Some(label),
                            text: b_text,
                            ..
                        }) if is_secondary(label) && other.pid == rec.pid => {
                            field = Field::of(label);
                            let (t, cut) = text(b_text);
                            rec.truncated |= cut;
                            let slot = field.get(&mut rec);
                            if slot.is_empty() {
                                *slot = t;
                            } else {
                                slot.push('\n');
                                slot.push_str(&t);
                            }
                        }
                        b => {
                            peeked = Some((pos, other, b.map(|b| (b.label, b.text))));
                            break;
                        }
                    }
                }
                pos += n + 1;
                rec.end = base + pos as u64;
            }
            cur = Some((rec, field));
        }
        if let Some((mut rec, _)) = cur {
            if flush != Flush::No && pos >= buf.len() {
                consumed = (rec.end - base) as usize;
                rec.split_cursor_position();
                out.push(rec);
            }
        }
        consumed
    }
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
        let mut p = StderrParser::new(Prefix::compile("%m [%p] "));
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
