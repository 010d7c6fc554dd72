//! Delivery to the listener. The plain parts live here (the envelope of the listener
//! protocol, gzip, how an answer is classified, the retry backoff); [`ShipperActor`]
//! drives them.

mod actor;

pub use actor::ShipperActor;

use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::Compression;
use crate::model::Batch;

/// Who is sending: the envelope's `project` and `agent` fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Sender {
    /// `project` at the top and in every event.
    pub project: String,
    /// `agent.host`.
    pub host: String,
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
    data: &'a RawValue,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The JSON body of a batch (design.md §4). Event payloads are copied through as raw
/// JSON, never parsed again.
pub fn envelope_json(sender: &Sender, batch: &Batch, sent_at: DateTime<Utc>) -> Vec<u8> {
    let env = Envelope {
        project: &sender.project,
        agent: AgentInfo {
            host: &sender.host,
            version: crate::VERSION,
        },
        batch_id: &batch.batch_id,
        sent_at: rfc3339(sent_at),
        events: batch
            .events
            .iter()
            .map(|e| OutEvent {
                id: &e.id,
                kind: e.kind.as_str(),
                collected_at: rfc3339(e.collected_at),
                project: &sender.project,
                data: &e.data,
            })
            .collect(),
    };
    // Serializing strings and raw JSON into a Vec cannot fail.
    serde_json::to_vec(&env).unwrap_or_default()
}

/// One event as a JSON line, exactly as it appears inside a batch (used by `once`).
pub fn event_json(sender: &Sender, e: &crate::model::Event) -> String {
    let out = OutEvent {
        id: &e.id,
        kind: e.kind.as_str(),
        collected_at: rfc3339(e.collected_at),
        project: &sender.project,
        data: &e.data,
    };
    serde_json::to_string(&out).unwrap_or_default()
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

/// What to do with a batch after the listener answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: delete it from the spool.
    Ack,
    /// Anything else: keep it and try again later. (Splitting on 400/413 and quarantine
    /// come with the delivery-hardening work; until then nothing is ever dropped.)
    Retry,
}

/// Classifies an HTTP status.
pub fn classify(status: u16) -> Verdict {
    if (200..300).contains(&status) {
        Verdict::Ack
    } else {
        Verdict::Retry
    }
}

/// Exponential backoff with jitter: the n-th consecutive failure waits between half and
/// all of `min(max, initial * 2^n)`, so that many agents do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `initial`, never above `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The ceiling of the next delay, without jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + Duration::from_nanos(fastrand::u64(0..=half.as_nanos() as u64))
    }

    /// Back to the initial delay after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests;
