//! Delivery to the listener. The plain parts live here (the envelope of the listener
//! protocol, gzip, how an answer is classified, the retry backoff); [`ShipperActor`]
//! drives them.

mod actor;
pub mod attempt;
pub mod delivery;
pub mod otlp;
pub mod outputs;
pub mod policy;
mod post;
pub mod split;
pub mod transport;

pub use actor::ShipperActor;
pub use otlp::OtlpPost;
pub use policy::{status_verdict, Backoff, Breaker, Verdict};
pub use post::{Answer, Post, PostError};
pub use transport::{SendError, Transport};

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::Compression;
use crate::model::Batch;

/// Where the events come from: the envelope's `project` and `agent` fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    /// `project` at the top and in every event.
    pub project: String,
    /// `agent.host`.
    pub host: String,
    /// What was learnt of the server the events are from (its version, for OTLP's
    /// resource).
    pub server: std::sync::Arc<crate::model::ServerFacts>,
    /// The server's configured name: the `server` of its events that name none (rows
    /// an older agent spooled).
    pub server_name: String,
    /// The servers whose events go under a project of their own (`[[servers]]`
    /// `project_id`), by name.
    pub projects: Vec<(String, String)>,
    /// More than one server is watched: the facts of the first are not every event's.
    pub fleet: bool,
}

impl Origin {
    /// The project and host `config` names, for events of the server `server` knows.
    pub fn of(
        config: &crate::config::Config,
        server: &std::sync::Arc<crate::model::ServerFacts>,
    ) -> Origin {
        Origin {
            project: config.agent.project_id.clone(),
            host: config.agent.hostname.clone(),
            server: server.clone(),
            server_name: config.server_name().to_string(),
            projects: config.projects(),
            fleet: config.servers.len() > 1,
        }
    }

    /// The project of an event about `server`: the server's own, if it has one.
    pub fn project_of(&self, server: Option<&str>) -> &str {
        server
            .and_then(|s| self.projects.iter().find(|(n, _)| n == s))
            .map_or(&self.project, |(_, p)| p)
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    project: &'a str,
    agent: AgentInfo<'a>,
    batch_id: &'a str,
    sent_at: String,
    events: Vec<OutEvent<'a>>,
}

#[derive(Serialize)]
struct AgentInfo<'a> {
    host: &'a str,
    version: &'static str,
}

#[derive(Serialize)]
struct OutEvent<'a> {
    id: &'a str,
    kind: &'static str,
    collected_at: String,
    project: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<&'a str>,
    data: &'a RawValue,
}

impl<'a> OutEvent<'a> {
    fn of(origin: &'a Origin, e: &'a crate::model::Event) -> OutEvent<'a> {
        let server = server_of(origin, e);
        OutEvent {
            id: &e.id,
            kind: e.kind.as_str(),
            collected_at: rfc3339(e.collected_at),
            project: origin.project_of(server),
            server,
            data: &e.data,
        }
    }
}

/// The server an event is about: the one it names; for a row an older agent spooled,
/// the configured one, unless it is the agent's own event.
pub fn server_of<'a>(origin: &'a Origin, e: &'a crate::model::Event) -> Option<&'a str> {
    match (&e.server, e.kind) {
        (Some(s), _) => Some(s),
        (None, crate::model::EventKind::Agent) => None,
        (None, _) => Some(&origin.server_name),
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The JSON body of a batch (design.md §4). Event payloads are copied through as raw
/// JSON, never parsed again.
pub fn envelope_json(origin: &Origin, batch: &Batch, sent_at: DateTime<Utc>) -> Vec<u8> {
    let env = Envelope {
        project: &origin.project,
        agent: AgentInfo {
            host: &origin.host,
            version: crate::VERSION,
        },
        batch_id: &batch.batch_id,
        sent_at: rfc3339(sent_at),
        events: batch
            .events
            .iter()
            .map(|e| OutEvent::of(origin, e))
            .collect(),
    };
    // Serializing strings and raw JSON into a Vec cannot fail.
    serde_json::to_vec(&env).unwrap_or_default()
}

/// One event as a JSON line, exactly as it appears inside a batch (used by `once`).
pub fn event_json(origin: &Origin, e: &crate::model::Event) -> String {
    serde_json::to_string(&OutEvent::of(origin, e)).unwrap_or_default()
}

/// The body as sent: compressed when configured.
pub fn encode_body(json: Vec<u8>, compression: Compression) -> std::io::Result<Vec<u8>> {
    match compression {
        Compression::None => Ok(json),
        Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(
                Vec::with_capacity(json.len() / 4),
                flate2::Compression::fast(),
            );
            gz.write_all(&json)?;
            gz.finish()
        }
    }
}

#[cfg(test)]
mod tests;
