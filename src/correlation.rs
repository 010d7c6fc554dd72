//! Finding the request a database session belongs to: the `application_name` pattern
//! (default `bitville-<uuid>`), or else a sqlcommenter-style comment in the query text
//! (`/*request_id='…',traceparent='00-…'*/`).

use regex::Regex;
use serde::Serialize;

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

/// The bodies of the `/* … */` comments of `query`, in order.
fn comments(query: &str) -> impl Iterator<Item = &str> {
    let mut rest = query;
    std::iter::from_fn(move || {
        let start = rest.find("/*")?;
        let after = &rest[start + 2..];
        let end = after.find("*/")?;
        rest = &after[end + 2..];
        Some(&after[..end])
    })
}

/// The sqlcommenter `key='value'` pairs of a comment body.
fn pairs(body: &str) -> impl Iterator<Item = (&str, &str)> {
    body.split(',').filter_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        Some((k.trim(), v.trim().trim_matches('\'')))
    })
}

/// Reads the first comment that names the request: a `request_id` / `correlation_id`
/// key, else the trace id of a valid `traceparent`.
pub fn from_comment(query: &str) -> Option<(String, CorrelationSource)> {
    comments(query).find_map(|body| {
        let mut trace = None;
        for (k, v) in pairs(body) {
            match k {
                "request_id" | "correlation_id" if usable(v) => {
                    return Some((v.to_string(), CorrelationSource::QueryComment))
                }
                // The trace id names the request.
                "traceparent" => trace = traceparent(v).map(|t| t.trace_id),
                _ => {}
            }
        }
        trace.map(|t| (t, CorrelationSource::Traceparent))
    })
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

/// The trace context of the first sqlcommenter comment with a valid `traceparent`.
pub fn trace(query: Option<&str>) -> Option<Trace> {
    comments(query?).find_map(|body| {
        pairs(body)
            .filter(|(k, _)| *k == "traceparent")
            .find_map(|(_, v)| traceparent(v))
    })
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
