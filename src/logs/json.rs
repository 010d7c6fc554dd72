//! The `jsonlog` format (PG15+): one JSON object per line.

use std::borrow::Cow;

use memchr::memchr;
use serde::Deserialize;

use super::record::{message_text, text, Record, MAX_FIELD_BYTES};
use super::Flush;

/// Parses `jsonlog` files.
#[derive(Debug, Clone, Default)]
pub struct JsonParser;

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow)]
    dbname: Option<Cow<'a, str>>,
    pid: Option<i64>,
    #[serde(borrow)]
    remote_host: Option<Cow<'a, str>>,
    remote_port: Option<i64>,
    #[serde(borrow)]
    session_id: Option<Cow<'a, str>>,
    line_num: Option<i64>,
    #[serde(borrow)]
    ps: Option<Cow<'a, str>>,
    #[serde(borrow)]
    vxid: Option<Cow<'a, str>>,
    txid: Option<serde_json::Value>,
    #[serde(borrow)]
    error_severity: Option<Cow<'a, str>>,
    #[serde(borrow)]
    state_code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow)]
    detail: Option<Cow<'a, str>>,
    #[serde(borrow)]
    hint: Option<Cow<'a, str>>,
    #[serde(borrow)]
    internal_query: Option<Cow<'a, str>>,
    #[serde(borrow)]
    context: Option<Cow<'a, str>>,
    #[serde(borrow)]
    statement: Option<Cow<'a, str>>,
    cursor_position: Option<i64>,
    internal_position: Option<i64>,
    #[serde(borrow)]
    func_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    file_name: Option<Cow<'a, str>>,
    file_line_num: Option<i64>,
    #[serde(borrow)]
    application_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    backend_type: Option<Cow<'a, str>>,
    leader_pid: Option<i64>,
    query_id: Option<i64>,
}

impl JsonParser {
    /// Parses the complete lines of `buf` (at file offset `base`) into `out`, at most
    /// `max`; returns the bytes used. A line that is not a JSON object is kept raw.
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
            let (line, next) = match memchr(b'\n', &buf[pos..]) {
                Some(n) => (&buf[pos..pos + n], pos + n + 1),
                None if flush == Flush::Force => (&buf[pos..], buf.len()),
                None => break,
            };
            let offset = base + pos as u64;
            let end = base + next as u64;
            pos = next;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            out.push(match serde_json::from_slice::<Line>(line) {
                Ok(l) => to_record(l, offset, end),
                Err(_) => Record::unparsed(line, offset, end),
            });
        }
        pos
    }
}

fn to_record(l: Line<'_>, offset: u64, end: u64) -> Record {
    let mut cut = false;
    let message = l
        .message
        .filter(|v| !v.is_empty())
        .map(|v| {
            let (t, c) = message_text(v.as_bytes());
            cut |= c;
            t
        })
        .unwrap_or_default();
    let mut s = |v: Option<Cow<'_, str>>| {
        v.filter(|v| !v.is_empty()).map(|v| {
            if v.len() > MAX_FIELD_BYTES {
                let (t, c) = text(v.as_bytes());
                cut |= c;
                t
            } else {
                v.into_owned()
            }
        })
    };
    let remote_host = match (s(l.remote_host), l.remote_port) {
        (Some(h), Some(p)) => Some(format!("{h}({p})")),
        (h, _) => h,
    };
    let location = match (s(l.func_name), s(l.file_name), l.file_line_num) {
        (Some(f), Some(file), Some(n)) => Some(format!("{f}, {file}:{n}")),
        (None, Some(file), Some(n)) => Some(format!("{file}:{n}")),
        _ => None,
    };
    let mut r = Record {
        offset,
        end,
        timestamp: s(l.timestamp),
        user: s(l.user),
        database: s(l.dbname),
        pid: l.pid,
        remote_host,
        session_id: s(l.session_id),
        session_line: l.line_num,
        command_tag: s(l.ps),
        vxid: s(l.vxid),
        xid: l.txid.map(|v| match v {
            serde_json::Value::String(s) => s,
            v => v.to_string(),
        }),
        language: l
            .error_severity
            .as_deref()
            .and_then(super::record::label_language),
        severity: s(l.error_severity).map(super::record::english_severity_label),
        // jsonlog leaves state_code out for code 0 (successful_completion), where csvlog
        // and %e write 00000.
        sqlstate: s(l.state_code).or_else(|| Some("00000".to_string())),
        message,
        detail: s(l.detail),
        hint: s(l.hint),
        query: s(l.internal_query),
        context: s(l.context),
        statement: s(l.statement),
        location,
        application_name: s(l.application_name),
        backend_type: s(l.backend_type),
        leader_pid: l.leader_pid,
        query_id: l.query_id.filter(|q| *q != 0),
        cursor_position: l.cursor_position.or(l.internal_position),
        ..Default::default()
    };
    r.truncated = cut;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_records_and_garbage_is_kept() {
        let log = concat!(
            r#"{"timestamp":"2026-11-26 10:00:00.001 UTC","user":"bob","dbname":"shop","pid":42,"remote_host":"10.0.0.1","remote_port":5000,"session_id":"6745f1.2a","line_num":3,"ps":"INSERT","session_start":"2026-11-26 09:59:00 UTC","vxid":"3/7","txid":0,"error_severity":"ERROR","state_code":"23505","message":"dup \"t_pkey\"","detail":"Key (id)=(1) already exists.","statement":"insert into t\nvalues (1)","application_name":"psql","backend_type":"client backend","query_id":0}"#,
            "\n{not json\n",
            r#"{"timestamp":"x","pid":1"#
        );
        let mut out = Vec::new();
        let n = JsonParser.parse(log.as_bytes(), 0, Flush::Settled, &mut out, 10);
        assert_eq!(out.len(), 2);
        assert_eq!(n as u64, out[1].end);
        let r = &out[0];
        assert_eq!(r.remote_host.as_deref(), Some("10.0.0.1(5000)"));
        assert_eq!(r.message, "dup \"t_pkey\"");
        assert_eq!(r.statement.as_deref(), Some("insert into t\nvalues (1)"));
        assert_eq!(r.xid.as_deref(), Some("0"));
        assert_eq!(out[1].raw.as_deref(), Some("{not json"));
    }
}
