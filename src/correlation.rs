//! Finding the request a database session belongs to: the `application_name` pattern
//! (default `bitville-<uuid>`), or else a sqlcommenter-style comment in the query text
//! (`/*request_id='…',traceparent='00-…'*/`). Comments are found with [`crate::sql`]'s
//! lexer: a `/*` inside a string constant is the end user's text, not the application's
//! tag.

use regex::Regex;
use serde::Serialize;

use crate::sql::{Kind, Lexer};

/// Where a correlation id was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CorrelationSource {
    /// Matched `correlation.application_name_pattern`.
    ApplicationName,
    /// A `request_id` / `correlation_id` key of a sqlcommenter comment.
    QueryComment,
    /// The trace id of a `traceparent` key of a sqlcommenter comment.
    Traceparent,
}

/// The longest correlation id taken (bytes). A request id is a UUID or the like; a
/// longer value in a query comment is some other text, and every id may end up in the
/// sampler's keys, so memory stays bounded by bytes, not only by the number of keys.
pub const MAX_ID_BYTES: usize = 256;

/// True for a value that may be a correlation id: not empty, at most [`MAX_ID_BYTES`],
/// no control characters.
fn usable(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_BYTES && !id.chars().any(char::is_control)
}

/// Extracts the correlation id of a session: the application name wins; the query
/// comment is the fallback for applications that tag queries instead of sessions.
pub fn extract(
    pattern: &Regex,
    application_name: Option<&str>,
    query: Option<&str>,
) -> Option<(String, CorrelationSource)> {
    if let Some(id) = application_name.and_then(|a| from_application_name(pattern, a)) {
        return Some((id, CorrelationSource::ApplicationName));
    }
    query.and_then(from_comment)
}

/// The id the pattern finds in an application name.
pub fn from_application_name(pattern: &Regex, application_name: &str) -> Option<String> {
    pattern
        .captures(application_name)
        .and_then(|c| c.name("id"))
        .filter(|id| usable(id.as_str()))
        .map(|id| id.as_str().to_string())
}

/// The bodies of the `/* … */` comments of `query` that are comments to PostgreSQL, in
/// order: not a `/*` inside a string constant, a quoted name or another comment, and not
/// one left open. A text with a backslash may be read with or without backslash escapes
/// in `'…'` (`standard_conforming_strings`), and a client's string constant could hide a
/// forged comment from one reading; only comments that both readings see count.
fn comments(query: &str) -> Vec<&str> {
    if memchr::memmem::find(query.as_bytes(), b"/*").is_none() {
        return Vec::new();
    }
    let blocks = |lexer: Lexer<'_>| {
        lexer
            .filter(|t| t.kind == Kind::BlockComment && t.closed)
            .map(|t| (t.start, t.end))
            .collect::<Vec<_>>()
    };
    let mut spans = blocks(Lexer::new(query));
    if query.contains('\\') {
        let other = blocks(Lexer::new(query).backslash_quotes());
        spans.retain(|s| other.contains(s));
    }
    spans
        .into_iter()
        .map(|(start, end)| &query[start + 2..end - 2])
        .collect()
}

/// The sqlcommenter `key='value'` pairs of a comment body.
fn pairs(body: &str) -> impl Iterator<Item = (&str, &str)> {
    body.split(',').filter_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        Some((k.trim(), v.trim().trim_matches('\'')))
    })
}

/// The request a statement's comments name: the last `request_id` / `correlation_id` of
/// its comments (sqlcommenter appends, so a later comment is the newer tag), else the trace
/// id of the last valid `traceparent`.
pub fn from_comment(query: &str) -> Option<(String, CorrelationSource)> {
    let (mut id, mut trace) = (None, None);
    for body in comments(query) {
        for (k, v) in pairs(body) {
            match k {
                "request_id" | "correlation_id" if usable(v) => id = Some(v),
                // The trace id names the request.
                "traceparent" => {
                    if let Some(t) = traceparent(v) {
                        trace = Some(t.trace_id);
                    }
                }
                _ => {}
            }
        }
    }
    id.map(|v| (v.to_string(), CorrelationSource::QueryComment))
        .or_else(|| trace.map(|t| (t, CorrelationSource::Traceparent)))
}

/// A W3C trace context: the request's trace and the span that ran the statement, so a
/// tracing backend can hang the database's view of the request under its span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits (the traceparent's parent id: the application's span).
    pub span_id: String,
}

/// The trace context of the last valid `traceparent` of the statement's comments.
pub fn trace(query: Option<&str>) -> Option<Trace> {
    comments(query?)
        .into_iter()
        .flat_map(pairs)
        .filter(|(k, _)| *k == "traceparent")
        .filter_map(|(_, v)| traceparent(v))
        .last()
}

/// Parses a `traceparent` value as W3C Trace Context defines it:
/// `version-traceid-parentid-flags`, lowercase hex, version `ff` invalid, ids not all
/// zeros; version 00 has exactly these four fields, later versions may append more.
/// Anything else is no trace (a client writes this text; it is not trusted).
pub fn traceparent(v: &str) -> Option<Trace> {
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let mut parts = v.split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let more = parts.next().is_some();
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    let ok = hex(version, 2)
        && version != "ff"
        && !(version == "00" && more)
        && hex(trace_id, 32)
        && !zero(trace_id)
        && hex(span_id, 16)
        && !zero(span_id)
        && hex(flags, 2);
    ok.then(|| Trace {
        trace_id: trace_id.to_string(),
        span_id: span_id.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_too_long_or_with_control_characters_are_not_ids() {
        let long = "a".repeat(MAX_ID_BYTES + 1);
        let ok = "a".repeat(MAX_ID_BYTES);
        let q = |id: &str| format!("select 1 /*request_id='{id}'*/");
        assert_eq!(extract(&re(), None, Some(&q(&long))), None);
        assert_eq!(
            extract(&re(), None, Some(&q(&ok))).map(|c| c.0),
            Some(ok.clone())
        );
        assert_eq!(extract(&re(), None, Some(&q("a\u{7}b"))), None);
        // A later valid key of the same comment is still read.
        assert_eq!(
            extract(
                &re(),
                None,
                Some(&format!(
                    "select 1 /*request_id='{long}',correlation_id='r-1'*/"
                ))
            )
            .map(|c| c.0),
            Some("r-1".to_string())
        );
    }

    fn re() -> Regex {
        Regex::new(
            crate::config::parse_str("[agent]\nproject_id='p'\n")
                .expect("valid")
                .correlation
                .application_name_pattern
                .as_str(),
        )
        .expect("valid")
    }

    #[test]
    fn application_name_wins() {
        let id = "0f1c2b7e-0d3a-4c55-9a8e-1b2c3d4e5f60";
        assert_eq!(
            extract(
                &re(),
                Some(&format!("bitville-{id}")),
                Some("/*request_id='x'*/ select 1")
            ),
            Some((id.to_string(), CorrelationSource::ApplicationName))
        );
        assert_eq!(extract(&re(), Some("bitville-short"), None), None);
        assert_eq!(extract(&re(), Some(&format!("xbitville-{id}")), None), None);
    }

    #[test]
    fn sqlcommenter_comment_is_the_fallback() {
        assert_eq!(
            extract(
                &re(),
                Some("psql"),
                Some("select 1 /*controller='a',request_id='r-42'*/")
            ),
            Some(("r-42".to_string(), CorrelationSource::QueryComment))
        );
        assert_eq!(
            extract(
                &re(),
                None,
                Some("/* plain */ select /*traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/ 1")
            ),
            Some((
                "4bf92f3577b34da6a3ce929d0e0e4736".to_string(),
                CorrelationSource::Traceparent
            ))
        );
        assert_eq!(extract(&re(), None, Some("select '/*' ")), None);
    }

    #[test]
    fn only_comments_that_postgresql_sees_name_the_request() {
        let id = |q: &str| from_comment(q).map(|c| c.0);
        let real = "/*request_id='real-1'*/";
        for forged in [
            "select 'form input /*request_id=''attacker'' */' as n",
            "select E'\\' /*request_id=''attacker''*/' as n",
            "select $é$ /*request_id='attacker'*/ $é$ as n",
            "select $$ /*request_id='attacker'*/ $$ as n",
            "select U&' /*request_id=''attacker''*/' as n",
            "select 1 as \" /*request_id='attacker'*/\"",
            "select 1 -- /*request_id='attacker'*/\n",
            "select 'a'\n' /*request_id=''attacker''*/' as n",
        ] {
            assert_eq!(id(forged), None, "{forged}");
            assert_eq!(
                id(&format!("{forged} {real}")),
                Some("real-1".into()),
                "{forged}"
            );
            assert_eq!(
                trace(Some(&forged.replace(
                    "request_id='attacker'",
                    "traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'"
                ))),
                None,
                "{forged}"
            );
        }
        // A backslash before a quote: with standard_conforming_strings off the string
        // goes on over the forged comment and the real one is inside a string, with it on
        // both are comments. The text does not say which the server used: neither counts.
        let two_readings = "select 'C:\\' /*request_id='attacker'*/, ' x' as n";
        assert_eq!(id(two_readings), None);
        assert_eq!(id(&format!("{two_readings} {real}")), None);
        assert_eq!(id(&format!("select 'C:\\' as n {real}")), None);
        assert_eq!(
            id(&format!("select 'C:\\\\' as n {real}")),
            Some("real-1".into())
        );
        // Open: not a comment yet (cut at track_activity_query_size), and what follows
        // is inside it.
        assert_eq!(id("select 1 /*request_id='attacker'"), None);
        assert_eq!(
            id(&format!("select 1 /*request_id='attacker' {real}")),
            None
        );
        // A comment inside a comment is part of it, not a tag.
        assert_eq!(id("select 1 /* x /*request_id='a'*/ y */"), None);
    }

    #[test]
    fn the_last_real_comment_wins() {
        let q = "/*request_id='old'*/ select 1 /*controller='c',request_id='new'*/";
        assert_eq!(from_comment(q).map(|c| c.0), Some("new".into()));
        let t1 = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t2 = "00-5bf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-01";
        let q = format!("/*traceparent='{t1}'*/ select 1 /*traceparent='{t2}'*/");
        assert_eq!(
            trace(Some(&q)).map(|t| t.trace_id),
            Some("5bf92f3577b34da6a3ce929d0e0e4736".into())
        );
        // A request id beats a trace id whatever their order.
        let q = format!("/*request_id='r'*/ select 1 /*traceparent='{t2}'*/");
        assert_eq!(from_comment(&q).map(|c| c.0), Some("r".into()));
    }

    #[test]
    fn a_traceparent_is_read_strictly() {
        let t = "4bf92f3577b34da6a3ce929d0e0e4736";
        let p = "00f067aa0ba902b7";
        let want = Some(Trace {
            trace_id: t.into(),
            span_id: p.into(),
        });
        assert_eq!(traceparent(&format!("00-{t}-{p}-01")), want);
        assert_eq!(
            traceparent(&format!("01-{t}-{p}-01-later")),
            want,
            "a later version may add fields"
        );
        for bad in [
            format!("00-{t}-{p}-01-extra"),
            format!("ff-{t}-{p}-01"),
            format!("00-{}-{p}-01", t.to_uppercase()),
            format!("00-{}-{p}-01", "0".repeat(32)),
            format!("00-{t}-{}-01", "0".repeat(16)),
            format!("00-{}-{p}-01", &t[1..]),
            format!("00-{t}-{p}"),
            format!("00-{t}-{p}-1"),
            format!("00-{t}x-{p}-01"),
            format!("0g-{t}-{p}-01"),
            String::new(),
        ] {
            assert_eq!(traceparent(&bad), None, "{bad}");
        }
    }

    #[test]
    fn the_trace_comes_from_the_first_comment_that_has_a_valid_one() {
        let q = "/* app='x', traceparent='00-zz' */ select /*traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/ 1";
        let t = trace(Some(q)).expect("trace");
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.span_id, "00f067aa0ba902b7");
        assert_eq!(trace(Some("select 1 /* unterminated")), None);
        assert_eq!(trace(None), None);
        // A forged traceparent names no request either.
        assert_eq!(
            extract(
                &re(),
                None,
                Some("/*traceparent='00-not-a-trace-at-all-01'*/ select 1")
            ),
            None
        );
    }
}
