//! The table of outputs: for each, what its shipper is built from and how. Its names are
//! its [`Naming`](crate::base::Naming); its config section is read by `config`, which
//! also says which outputs are configured (`Config::outputs`).

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use slog::Logger;

use super::{Origin, OtlpPost, Post, SendError, Transport};
use crate::config::{display_url, Config, ListenerConfig};
use crate::model::{Batch, Output};

/// What `check` found of an output: that it works (said how), or what is wrong and its
/// fix.
pub type Checked = Result<String, (String, String)>;

/// The future of a check.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Checked> + 'a>>;

/// One output's row.
pub struct Spec {
    /// Which output.
    pub output: Output,
    /// Its own settings differ between two configs (its shipper restarts on reload).
    pub changed: fn(&Config, &Config) -> bool,
    /// Its delivery settings: batch sizes, timeout, retry.
    pub delivery: fn(&Config) -> ListenerConfig,
    /// Builds its transport, on the thread the shipper runs on (HTTP clients are not
    /// `Send`).
    pub transport: fn(&Config, Origin, &Logger) -> Rc<dyn Transport>,
    /// What `check` sends it: an empty request through the shipper's own transport.
    pub check: for<'a> fn(&'a Config) -> CheckFuture<'a>,
}

/// Every output, in the order of [`Output::ALL`].
pub const OUTPUTS: [Spec; 2] = [
    Spec {
        output: Output::Listener,
        changed: |old, new| old.listener != new.listener,
        delivery: |c| c.listener.clone(),
        transport: |c, origin, _| Rc::new(Post::new(&c.listener, origin)),
        check: |c| Box::pin(check_listener(c)),
    },
    Spec {
        output: Output::Otlp,
        changed: |old, new| old.otlp != new.otlp,
        delivery: |c| c.otlp.delivery.clone(),
        transport: |c, origin, log| Rc::new(OtlpPost::new(&c.otlp, origin).logging(log.clone())),
        check: |c| Box::pin(check_otlp(c)),
    },
];

/// The row of `output`.
pub fn spec(output: Output) -> &'static Spec {
    &OUTPUTS[output as usize]
}

/// A batch of no events and who sends it: what `check` posts to an output.
fn empty_batch(config: &Config) -> (Batch, Origin) {
    let batch = Batch {
        batch_id: uuid::Uuid::new_v4().to_string(),
        events: vec![],
        seqs: Vec::new(),
    };
    (batch, Origin::of(config, &Default::default()))
}

/// The listener: an empty batch exercises the URL, TLS and the token without sending
/// any data, through the shipper's own request (same headers, same body encoding,
/// redirects refused).
async fn check_listener(config: &Config) -> Checked {
    let l = &config.listener;
    let (batch, origin) = empty_batch(config);
    let url = display_url(&l.url);
    let fail = |problem: String, fix: &str| Err((problem, fix.to_string()));
    match Post::new(l, origin).send(&batch).await {
        Ok(a) => match a.status {
            s @ 200..=299 => Ok(format!("{url} accepted the token (HTTP {s})")),
            s @ (401 | 403) => fail(
                format!("{url} rejected the token (HTTP {s})"),
                "set listener.token or listener.token_file to the project's ingest token",
            ),
            300..=399 => fail(
                format!(
                    "{url} answered {}: the agent never follows a redirect on the ingest path, so nothing would be delivered",
                    a.describe()
                ),
                "set listener.url to the address the listener really takes (scheme, host and path)",
            ),
            _ => fail(
                format!("{url} answered {}", a.describe()),
                "check listener.url (the path too: /ingest/postgres) and the listener's own logs",
            ),
        },
        Err(e) => fail(
            format!("cannot reach {url}: {e}"),
            "check listener.url and that the listener is running and reachable from this host",
        ),
    }
}

/// The OTLP receiver: an empty export (no records: the receiver stores nothing)
/// through the shipper's own request: endpoint, TLS and headers.
async fn check_otlp(config: &Config) -> Checked {
    let (batch, origin) = empty_batch(config);
    let url = display_url(config.otlp.url.as_deref().unwrap_or_default());
    let post = OtlpPost::new(&config.otlp, origin);
    let who = Output::Otlp.naming();
    let fail = |problem: String, fix: &str| Err((problem, fix.to_string()));
    match Transport::send(&post, &batch).await {
        Ok(s) => Ok(format!("{url} accepted an empty export (HTTP {s})")),
        Err(SendError::TokenRefused { status }) => fail(
            format!("{url} refused the credentials (HTTP {status})"),
            "set otlp.headers (or otlp.headers_file) to what the collector expects, e.g. authorization",
        ),
        Err(e @ SendError::Retriable { status: None, .. }) => fail(
            format!("cannot reach {url}: {}", e.describe(who.who, who.url_key)),
            "check otlp.endpoint and that the collector's OTLP/HTTP receiver (port 4318) is running and reachable from this host",
        ),
        Err(e) => fail(
            format!("{url}: {}", e.describe(who.who, who.url_key)),
            "check otlp.endpoint (the base URL; /v1/logs is appended) and the collector's own logs",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_output_has_its_row_in_its_place() {
        for o in Output::ALL {
            assert_eq!(spec(o).output, o);
        }
        assert_eq!(OUTPUTS.len(), Output::ALL.len());
    }
}
