//! One POST of a batch to the listener, used by the shipper and by `check` alike, and
//! the answer as far as delivery cares: its status, its Retry-After and, for a
//! redirect, where it pointed.
//!
//! Redirects are never followed: a client that follows a 302 re-sends as a GET without
//! the body, and the 200 of that GET would count as an acknowledgement of events that
//! were never delivered; a 307/308 would send the events and the token to another
//! host. Only a 2xx from the configured URL acknowledges.

use std::time::Duration;

use chrono::Utc;

use super::policy::retry_after;
use super::{encode_body, envelope_json, Origin};
use crate::config::{display_url, Compression, ListenerConfig, Secret};
use crate::model::Batch;

/// The longest `Location` repeated in a message.
const MAX_LOCATION: usize = 200;

/// Why no answer came.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The body could not be compressed (out of memory).
    #[error("cannot compress batch: {0}")]
    Compress(std::io::Error),
    /// No answer: connect error, timeout, broken connection.
    #[error("request failed: {0}")]
    Request(String),
}

/// What the listener answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After`, when given and readable.
    pub retry_after: Option<Duration>,
    /// `Location` of a 3xx, credentials masked and cut to a sane length.
    pub location: Option<String>,
}

impl Answer {
    /// `HTTP 302 redirecting to "https://…" (not followed)`, or `HTTP 500`.
    pub fn describe(&self) -> String {
        match (&self.location, self.status) {
            (Some(l), 300..=399) => {
                format!("HTTP {} redirecting to {l:?} (not followed)", self.status)
            }
            (None, 300..=399) => format!("HTTP {} redirect (not followed)", self.status),
            _ => format!("HTTP {}", self.status),
        }
    }
}

/// Everything a request needs, cloned into each request's future.
#[derive(Clone)]
pub struct Post {
    client: awc::Client,
    url: String,
    token: Secret,
    compression: Compression,
    origin: Origin,
}

impl Post {
    /// A poster for `cfg`; build it on the thread that uses it (awc's client is not
    /// `Send`).
    pub fn new(cfg: &ListenerConfig, origin: Origin) -> Post {
        let client = awc::Client::builder()
            .timeout(cfg.timeout)
            .disable_redirects()
            .add_default_header(("User-Agent", format!("postgres-agent/{}", crate::VERSION)))
            .finish();
        Post {
            client,
            url: cfg.url.clone(),
            token: cfg.token.clone(),
            compression: cfg.compression,
            origin,
        }
    }

    /// POSTs a batch; `Err` when no answer came (connect error, timeout).
    pub async fn send(&self, batch: &Batch) -> Result<Answer, PostError> {
        let body = encode_body(
            envelope_json(&self.origin, batch, Utc::now()),
            self.compression,
        )
        .map_err(PostError::Compress)?;
        let mut req = self
            .client
            .post(&self.url)
            .insert_header(("Authorization", format!("Bearer {}", self.token.expose())))
            .insert_header(("Content-Type", "application/json"))
            .insert_header(("Idempotency-Key", batch.batch_id.as_str()));
        if self.compression == Compression::Gzip {
            req = req.insert_header(("Content-Encoding", "gzip"));
        }
        let resp = req
            .send_body(body)
            .await
            .map_err(|e| PostError::Request(e.to_string()))?;
        let header = |name: &str| resp.headers().get(name).map(|v| v.to_str());
        let retry_after = header("retry-after")
            .and_then(Result::ok)
            .and_then(|v| retry_after(v, Utc::now()));
        let status = resp.status().as_u16();
        let location = (300..400)
            .contains(&status)
            .then(|| location_text(header("location").map(|h| h.ok())));
        Ok(Answer {
            status,
            retry_after,
            location,
        })
    }
}

/// A `Location` as it may be repeated in a message: credentials masked, cut to a sane
/// length on a character boundary; a header that is not text or is missing is said so.
pub fn location_text(header: Option<Option<&str>>) -> String {
    match header {
        Some(Some(l)) => {
            let mut l = display_url(l);
            if l.len() > MAX_LOCATION {
                let cut = (0..=MAX_LOCATION)
                    .rev()
                    .find(|i| l.is_char_boundary(*i))
                    .unwrap_or(0);
                l.truncate(cut);
                l.push('…');
            }
            l
        }
        Some(None) => "(not readable text)".to_string(),
        None => "(no Location header)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a listener answers: a status class for every code, no panic on any
        /// Retry-After or Location, and what is repeated is bounded and masked.
        #[test]
        fn any_answer_is_handled(status in any::<u16>(), retry in ".{0,40}", loc in "\\PC{0,400}", user in "[a-z]{1,8}") {
            let _ = super::super::policy::status_verdict(status);
            let _ = super::super::policy::retry_after(&retry, Utc::now());
            let with_user = format!("https://{user}:pw@{loc}");
            let t = location_text(Some(Some(&with_user)));
            prop_assert!(t.len() <= MAX_LOCATION + '…'.len_utf8());
            prop_assert!(!t.starts_with(&format!("https://{user}:pw@")), "{t}");
            let a = Answer { status, retry_after: None, location: Some(t) };
            let _ = a.describe();
        }
    }

    #[test]
    fn describe_names_the_redirect() {
        let a = Answer {
            status: 302,
            retry_after: None,
            location: Some("https://***@other/x".into()),
        };
        assert_eq!(
            a.describe(),
            "HTTP 302 redirecting to \"https://***@other/x\" (not followed)"
        );
        let a = Answer {
            status: 500,
            retry_after: None,
            location: None,
        };
        assert_eq!(a.describe(), "HTTP 500");
    }
}
