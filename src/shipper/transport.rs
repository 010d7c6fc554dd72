//! The output seam: a [`Transport`] delivers one batch and says, typed, what became of
//! it. The delivery logic (breaker, backoff, split, quarantine, token handling) sits on
//! this trait and knows nothing of HTTP; the listener's POST ([`Post`]) is the first
//! implementation.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::policy::{status_verdict, Verdict};
use super::Post;
use crate::model::Batch;

/// Why a batch was not delivered, as the delivery logic needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Try the same batch again later: no answer (connect error, timeout) or a
    /// temporary refusal (408, 429, 5xx). `status` is `None` when no answer came.
    Retriable {
        /// What happened, for the log and status.
        reason: String,
        /// The answer's status, if one came.
        status: Option<u16>,
        /// How long the output asked us to wait.
        retry_after: Option<Duration>,
    },
    /// The output refuses this content (400, 413, 422): some event in it cannot be
    /// taken; smaller parts may be.
    Refused {
        /// The answer's status.
        status: u16,
    },
    /// The output refuses our credentials (401, 403): nothing will be taken until the
    /// configuration changes.
    TokenRefused {
        /// The answer's status.
        status: u16,
    },
    /// An answer that means the output is misconfigured (a redirect, 404, 501): keep
    /// everything and retry like a failure.
    Rejected {
        /// What was answered (a redirect names where it pointed).
        reason: String,
        /// The answer's status.
        status: u16,
        /// How long the output asked us to wait.
        retry_after: Option<Duration>,
    },
}

impl SendError {
    /// The status of the answer, if one came.
    pub fn status(&self) -> Option<u16> {
        match self {
            SendError::Retriable { status, .. } => *status,
            SendError::Refused { status }
            | SendError::TokenRefused { status }
            | SendError::Rejected { status, .. } => Some(*status),
        }
    }

    /// How long the output asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SendError::Retriable { retry_after, .. } | SendError::Rejected { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }
}

impl SendError {
    /// What happened, naming the output as `who` ("listener", "OTLP receiver") and
    /// the configuration key of its URL.
    pub fn describe(&self, who: &str, key: &str) -> String {
        match self {
            SendError::Retriable {
                reason,
                status: None,
                ..
            } => reason.clone(),
            SendError::Retriable {
                status: Some(s), ..
            } => format!("{who} answered HTTP {s}"),
            SendError::Refused { status } => {
                format!("{who} refused the batch (HTTP {status})")
            }
            SendError::TokenRefused { status } => {
                format!("{who} refused the credentials (HTTP {status})")
            }
            SendError::Rejected { reason, .. } => {
                format!("{who} answered {reason}: check {key} (the events are kept)")
            }
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::TokenRefused { status } => {
                write!(f, "listener refused the token (HTTP {status})")
            }
            e => f.write_str(&e.describe("listener", "listener.url")),
        }
    }
}

/// The future of one delivery: the status of the acceptance, or why not.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<u16, SendError>> + 'a>>;

/// Somewhere batches go.
pub trait Transport {
    /// Delivers `batch`. `Ok` only when the output took it for good: that alone lets the
    /// spool delete the events.
    fn send<'a>(&'a self, batch: &'a Batch) -> SendFuture<'a>;
}

/// What an HTTP answer means for delivery.
pub fn verdict(answer: &super::Answer) -> Result<u16, SendError> {
    let status = answer.status;
    match status_verdict(status) {
        Verdict::Ack => Ok(status),
        Verdict::Retry => Err(SendError::Retriable {
            reason: format!("listener answered HTTP {status}"),
            status: Some(status),
            retry_after: answer.retry_after,
        }),
        Verdict::Split => Err(SendError::Refused { status }),
        Verdict::Unauthorized => Err(SendError::TokenRefused { status }),
        Verdict::Rejected => Err(SendError::Rejected {
            reason: answer.describe(),
            status,
            retry_after: answer.retry_after,
        }),
    }
}

impl Transport for Post {
    fn send<'a>(&'a self, batch: &'a Batch) -> SendFuture<'a> {
        Box::pin(async move {
            match Post::send(self, batch).await {
                Ok(answer) => verdict(&answer),
                Err(e) => Err(SendError::Retriable {
                    reason: e.to_string(),
                    status: None,
                    retry_after: None,
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shipper::Answer;

    fn answer(status: u16) -> Answer {
        Answer {
            status,
            retry_after: Some(Duration::from_secs(3)),
            location: (status == 302).then(|| "https://other/x".to_string()),
        }
    }

    #[test]
    fn every_answer_has_one_meaning() {
        assert_eq!(verdict(&answer(202)), Ok(202));
        let e = verdict(&answer(503)).unwrap_err();
        assert_eq!(
            (e.status(), e.retry_after()),
            (Some(503), Some(Duration::from_secs(3)))
        );
        assert_eq!(e.to_string(), "listener answered HTTP 503");
        assert_eq!(
            verdict(&answer(413)),
            Err(SendError::Refused { status: 413 })
        );
        assert_eq!(
            verdict(&answer(403)),
            Err(SendError::TokenRefused { status: 403 })
        );
        let e = verdict(&answer(302)).unwrap_err();
        assert!(
            matches!(e, SendError::Rejected { status: 302, .. }),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "listener answered HTTP 302 redirecting to \"https://other/x\" (not followed): check listener.url (the events are kept)"
        );
        let none = SendError::Retriable {
            reason: "request failed: connection refused".into(),
            status: None,
            retry_after: None,
        };
        assert_eq!(none.to_string(), "request failed: connection refused");
        assert_eq!(none.status(), None);
    }
}
