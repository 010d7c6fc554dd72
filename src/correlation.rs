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

/// Extracts the correlation id of a session: the application name wins; the query
/// comment is the fallback for applications that tag queries instead of sessions.
pub fn extract(
    pattern: &Regex,
    application_name: Option<&str>,
    query: Option<&str>,
) -> Option<(String, CorrelationSource)> {
    if let Some(id) = application_name
        .and_then(|a| pattern.captures(a))
        .and_then(|c| c.name("id"))
    {
        return Some((id.as_str().to_string(), CorrelationSource::ApplicationName));
    }
    query.and_then(from_comment)
}

/// Reads the first `/* … */` comment that has sqlcommenter key='value' pairs.
fn from_comment(query: &str) -> Option<(String, CorrelationSource)> {
    let mut rest = query;
    while let Some(start) = rest.find("/*") {
        let after = &rest[start + 2..];
        let end = after.find("*/")?;
        let body = &after[..end];
        let mut trace = None;
        for pair in body.split(',') {
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('\'');
            match k.trim() {
                "request_id" | "correlation_id" if !v.is_empty() => {
                    return Some((v.to_string(), CorrelationSource::QueryComment))
                }
                // traceparent = version-traceid-parentid-flags; the trace id names the request.
                "traceparent" => trace = v.split('-').nth(1).map(str::to_string),
                _ => {}
            }
        }
        if let Some(t) = trace.filter(|t| t.len() == 32) {
            return Some((t, CorrelationSource::Traceparent));
        }
        rest = &after[end + 2..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
