//! The `csvlog` format: one CSV record per message, fields quoted with `"` and able to
//! span lines. Columns (PG12: 23; PG13 adds backend_type; PG14 leader_pid, query_id).

use memchr::memchr2;

use super::record::{message_text, opt_text, Record};
use super::Flush;

/// Parses `csvlog` files.
#[derive(Debug, Clone, Default)]
pub struct CsvParser;

impl CsvParser {
    /// Parses the complete records of `buf` (at file offset `base`) into `out`, at most
    /// `max`; returns the bytes used. A record whose closing newline has not been
    /// written yet waits, unless `flush` is [`Flush::Force`].
    pub fn parse(
        &self,
        buf: &[u8],
        base: u64,
        flush: Flush,
        out: &mut Vec<Record>,
        max: usize,
    ) -> usize {
        let mut pos = 0;
        while pos < buf.len() && out.len() < max {
            let (rec, next) = match record_end(&buf[pos..]) {
                Some(n) => (&buf[pos..pos + n], pos + n + 1),
                None if flush == Flush::Force => (&buf[pos..], buf.len()),
                None => break,
            };
            let offset = base + pos as u64;
            let end = base + next as u64;
            pos = next;
            let rec = rec.strip_suffix(b"\r").unwrap_or(rec);
            if rec.is_empty() {
                continue;
            }
            out.push(to_record(rec, offset, end));
        }
        pos
    }
}

/// The newline that ends the record at the start of `b` (outside quotes).
fn record_end(b: &[u8]) -> Option<usize> {
    let mut quoted = false;
    let mut i = 0;
    while let Some(n) = memchr2(b'"', b'\n', &b[i..]) {
        let at = i + n;
        if b[at] == b'"' {
            quoted = !quoted;
        } else if !quoted {
            return Some(at);
        }
        i = at + 1;
    }
    None
}

/// Splits one record into unquoted fields.
fn fields(rec: &[u8]) -> Vec<std::borrow::Cow<'_, [u8]>> {
    use std::borrow::Cow;
    let mut v = Vec::with_capacity(26);
    let mut i = 0;
    loop {
        if rec.get(i) == Some(&b'"') {
            let mut owned: Option<Vec<u8>> = None;
            let start = i + 1;
            let mut j = start;
            loop {
                match memchr::memchr(b'"', &rec[j..]) {
                    Some(n) if rec.get(j + n + 1) == Some(&b'"') => {
                        // "" is a quote inside the field.
                        let o = owned.get_or_insert_with(Vec::new);
                        o.extend_from_slice(&rec[j..j + n + 1]);
                        j += n + 2;
                    }
                    Some(n) => {
                        let field = match owned.take() {
                            Some(mut o) => {
                                o.extend_from_slice(&rec[j..j + n]);
                                Cow::Owned(o)
                            }
                            None => Cow::Borrowed(&rec[start..j + n]),
                        };
                        v.push(field);
                        i = j + n + 1;
                        break;
                    }
                    None => {
                        // Unterminated quote (a record cut short): take the rest.
                        let mut o = owned.take().unwrap_or_default();
                        o.extend_from_slice(&rec[j..]);
                        v.push(Cow::Owned(o));
                        return v;
                    }
                }
            }
            // Skip to the comma after the closing quote.
            match memchr::memchr(b',', &rec[i..]) {
                Some(n) => i += n + 1,
                None => return v,
            }
        } else {
            match memchr::memchr(b',', &rec[i.min(rec.len())..]) {
                Some(n) => {
                    v.push(Cow::Borrowed(&rec[i..i + n]));
                    i += n + 1;
                }
                None => {
                    v.push(Cow::Borrowed(&rec[i.min(rec.len())..]));
                    return v;
                }
            }
        }
    }
}

/// csvlog writes the client as `host:port`; stderr's `%r` and jsonlog as `host(port)`:
/// one shape for every format.
fn host_port(h: String) -> String {
    match h.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{host}({port})")
        }
        _ => h,
    }
}

fn to_record(rec: &[u8], offset: u64, end: u64) -> Record {
    let f = fields(rec);
    if f.len() < 23 {
        return Record::unparsed(rec, offset, end);
    }
    let mut cut = false;
    let get = |i: usize, cut: &mut bool| f.get(i).and_then(|b| opt_text(b, cut));
    let num = |i: usize| {
        f.get(i)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.parse().ok())
    };
    let (message, c) = message_text(&f[13]);
    cut |= c;
    let severity = get(11, &mut cut);
    let mut r = Record {
        offset,
        end,
        timestamp: get(0, &mut cut),
        user: get(1, &mut cut),
        database: get(2, &mut cut),
        pid: num(3),
        remote_host: get(4, &mut cut).map(host_port),
        session_id: get(5, &mut cut),
        session_line: num(6),
        command_tag: get(7, &mut cut),
        vxid: get(9, &mut cut),
        xid: get(10, &mut cut),
        language: severity.as_deref().and_then(super::record::label_language),
        severity: severity.map(super::record::english_severity_label),
        sqlstate: get(12, &mut cut),
        message,
        detail: get(14, &mut cut),
        hint: get(15, &mut cut),
        query: get(16, &mut cut),
        context: get(18, &mut cut),
        statement: get(19, &mut cut),
        location: get(21, &mut cut),
        application_name: get(22, &mut cut),
        backend_type: get(23, &mut cut),
        leader_pid: num(24),
        query_id: num(25).filter(|q| *q != 0),
        cursor_position: num(20).or_else(|| num(17)),
        ..Default::default()
    };
    r.truncated = cut;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_multiline_fields_and_escaped_quotes() {
        let log = concat!(
            "2026-11-26 10:00:00.001 UTC,\"bob\",\"shop\",42,\"[local]\",6745f1.2a,3,\"INSERT\",2026-11-26 09:59:00 UTC,3/7,0,ERROR,23505,\"duplicate key value violates unique constraint \"\"t_pkey\"\"\",\"Key (id)=(1) already exists.\",,,,,\"insert into t\nvalues (1)\",,,\"psql\",\"client backend\",,0\n",
            "2026-11-26 10:00:01.000 UTC,,,40,,6745f0.28,1,,2026-11-26 09:58:00 UTC,,0,LOG,00000,\"checkpoint starting: time\",,,,,,,,,\"\",\"checkpointer\",,0\n",
            "2026-11-26 10:00:02.000 UTC,,,40,,6745f0.28,2,,2026-11-26 09:58:00 UTC,,0,LOG,00000,\"half"
        );
        let mut out = Vec::new();
        let n = CsvParser.parse(log.as_bytes(), 0, Flush::Settled, &mut out, 10);
        assert_eq!(out.len(), 2);
        let r = &out[0];
        assert_eq!(r.user.as_deref(), Some("bob"));
        assert_eq!(r.pid, Some(42));
        assert_eq!(r.sqlstate.as_deref(), Some("23505"));
        assert_eq!(
            r.message,
            "duplicate key value violates unique constraint \"t_pkey\""
        );
        assert_eq!(r.statement.as_deref(), Some("insert into t\nvalues (1)"));
        assert_eq!(r.application_name.as_deref(), Some("psql"));
        assert_eq!(r.backend_type.as_deref(), Some("client backend"));
        assert_eq!(r.query_id, None);
        assert_eq!(out[1].backend_type.as_deref(), Some("checkpointer"));
        assert_eq!(out[1].offset, out[0].end);
        assert_eq!(n as u64, out[1].end);
    }

    #[test]
    fn short_records_are_kept_raw() {
        let mut out = Vec::new();
        CsvParser.parse(b"a,b,c\n", 0, Flush::Settled, &mut out, 10);
        assert_eq!(out[0].raw.as_deref(), Some("a,b,c"));
    }
}
