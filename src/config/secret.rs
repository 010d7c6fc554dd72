//! A string that must never be printed: the listener token and the database password.

use std::fmt;

/// A secret value. `Debug` and `Display` print `***`, and it implements no `Serialize`,
/// so it cannot reach a log line, the status dump or a test snapshot by accident. The
/// only way to read it is [`Secret::expose`], which is called where it is put on the wire.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no secret was configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A URL as it may be shown: credentials in it (`https://user:password@host/…`) and
/// the values of its query (`?api_key=…`, how some receivers take their key) become
/// `***`. Used wherever the listener URL, the OTLP endpoint (or a `Location` one
/// answered with) reaches a message, the log or the status dump.
pub fn display_url(url: &str) -> String {
    let Some(scheme) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let mut out = match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..scheme], &rest[at..]),
        None => url.to_string(),
    };
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query = query.split('#').next().unwrap_or("");
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) => format!("{k}=***"),
                None => pair.to_string(),
            })
            .collect();
        out = format!("{head}{}", masked.join("&"));
    }
    out
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_masked() {
        assert_eq!(
            display_url("https://u:p@h:8080/x?a=b@c"),
            "https://***@h:8080/x?a=***"
        );
        assert_eq!(
            display_url("http://h/v1/logs?api_key=S3&region=eu&flag#frag"),
            "http://h/v1/logs?api_key=***&region=***&flag"
        );
        assert_eq!(display_url("http://h/ingest"), "http://h/ingest");
        assert_eq!(display_url("http://a@b@h/"), "http://***@h/");
        assert_eq!(display_url("not a url"), "not a url");
    }

    #[test]
    fn never_printed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }
}
