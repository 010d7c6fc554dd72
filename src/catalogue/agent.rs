//! The agent's own events (`kind: agent`): what happened to the agent and to the data
//! it holds — a child restarted, events dropped or evicted, the spool moved aside. This
//! enum alone knows their names, their fields and their ids; the code that notices
//! such a thing builds a variant and hands it to the spool.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::{Event, EventKind};

/// One agent event. Serialized with its name in `event`, then its fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AgentEvent {
    /// The daemon started (once per start).
    AgentStarted {
        /// `CARGO_PKG_VERSION`.
        version: String,
        /// Process id.
        pid: u32,
        /// Fingerprint of the configuration in use.
        config_fingerprint: String,
    },
    /// A child (collector, log reader, spool, shipper) went down and was restarted, or
    /// gave up after too many restarts.
    ChildRestarted {
        /// Its name (as in status).
        child: String,
        /// Why: panicked, stopped, hung.
        reason: String,
        /// Restarts since the agent started.
        restarts: u64,
        /// True when it is not restarted any more.
        failed: bool,
        /// When it starts again.
        restart_in_ms: u64,
    },
    /// A collector's in-memory backlog overflowed while the spool did not take events.
    EventsDropped {
        /// The source whose events were dropped.
        source: String,
        /// How many.
        dropped: u64,
        /// Their time range.
        oldest_collected_at: Option<DateTime<Utc>>,
        /// Their time range.
        newest_collected_at: Option<DateTime<Utc>>,
        /// Why.
        reason: String,
    },
    /// The spool went over `buffer.max_bytes` and dropped its oldest events.
    EventsEvicted {
        /// Events dropped.
        evicted: u64,
        /// Their bytes of event data.
        bytes: u64,
        /// Per kind.
        by_kind: BTreeMap<String, u64>,
        /// The time range of what was dropped.
        oldest_collected_at: Option<String>,
        /// The time range of what was dropped.
        newest_collected_at: Option<String>,
        /// Spool size on disk before the eviction.
        disk_bytes_before: u64,
        /// Per configured output: how many of the dropped events it had not received
        /// (an output that already took them lost nothing).
        undelivered_by_output: BTreeMap<String, u64>,
        /// Why (the cap).
        reason: String,
        /// First and last spool row dropped: the id of the report (not shipped as
        /// fields), so a report written twice is one event.
        #[serde(skip)]
        rows: (i64, i64),
    },
    /// The server at the configured address is another cluster (its system identifier
    /// changed) or changed role (promoted, demoted): the sources' baselines restart, no
    /// delta is taken across it.
    RoleChanged {
        /// The server's configured name.
        server: String,
        /// What it was.
        before: crate::model::Identity,
        /// What it is.
        after: crate::model::Identity,
    },
    /// The spool file could not be read; it was moved aside and a fresh one started.
    SpoolCorruptMovedAside {
        /// Where the old file is.
        moved_to: String,
    },
    /// The spool file was deleted or replaced under the running agent; what it held
    /// was copied to a new file.
    SpoolFileReplaced {
        /// Events copied over.
        events_carried_over: u64,
        /// Where a foreign file found at the spool's path was moved (or the file
        /// emptied or overwritten in place).
        foreign_file_moved_to: Option<String>,
        /// Events gone with a file emptied or overwritten in place (0 when the file was
        /// deleted or replaced: the open one still held everything).
        events_lost: u64,
    },
}

impl AgentEvent {
    /// The name in `event` (and in the agent's log, where it is logged too).
    pub fn name(&self) -> &'static str {
        match self {
            AgentEvent::AgentStarted { .. } => "agent_started",
            AgentEvent::ChildRestarted { .. } => "child_restarted",
            AgentEvent::EventsDropped { .. } => "events_dropped",
            AgentEvent::EventsEvicted { .. } => "events_evicted",
            AgentEvent::RoleChanged { .. } => "role_changed",
            AgentEvent::SpoolCorruptMovedAside { .. } => "spool_corrupt_moved_aside",
            AgentEvent::SpoolFileReplaced { .. } => "spool_file_replaced",
        }
    }

    /// The event's id: `agent:<host>:<name>:` and what makes this occurrence unique —
    /// the spool rows for an eviction (the same loss is one event however often its
    /// report is written), the source and the time for a drop, the identities before
    /// and after for a role change, the time otherwise.
    pub fn id(&self, host: &str, at: DateTime<Utc>) -> String {
        let name = self.name();
        let nanos = at.timestamp_nanos_opt().unwrap_or_default();
        match self {
            AgentEvent::EventsEvicted {
                rows: (first, last),
                ..
            } => format!("agent:{host}:{name}:{first}-{last}"),
            AgentEvent::EventsDropped { source, .. } => {
                format!("agent:{host}:{name}:{source}:{nanos}")
            }
            // The transition itself: told again after a crash (its identity not yet
            // stored), it is the same event.
            AgentEvent::RoleChanged { before, after, .. } => {
                let side = |i: &crate::model::Identity| {
                    format!("{}.{}.{}", i.system_identifier, i.timeline, i.role)
                };
                format!("agent:{host}:{name}:{}>{}", side(before), side(after))
            }
            _ => format!("agent:{host}:{name}:{nanos}"),
        }
    }

    /// The event as the spool stores it and the listener receives it.
    pub fn event(&self, host: &str, at: DateTime<Utc>) -> Result<Event, serde_json::Error> {
        Event::new(self.id(host, at), EventKind::Agent, at, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(role: &str) -> crate::model::Identity {
        crate::model::Identity {
            system_identifier: "7715704645883035614".into(),
            timeline: 1,
            role: role.into(),
            version: "15.8".into(),
            version_num: 150008,
        }
    }

    fn data(e: &Event) -> serde_json::Value {
        serde_json::from_str(e.data.get()).expect("json")
    }

    #[test]
    fn an_agent_event_carries_its_name_and_fields() {
        let at = DateTime::from_timestamp(1_700_000_000, 5).expect("t");
        let e = AgentEvent::ChildRestarted {
            child: "pg_locks".into(),
            reason: "panicked".into(),
            restarts: 2,
            failed: false,
            restart_in_ms: 400,
        }
        .event("h", at)
        .expect("event");
        assert_eq!(e.kind, EventKind::Agent);
        assert_eq!(e.id, "agent:h:child_restarted:1700000000000000005");
        assert_eq!(
            data(&e),
            serde_json::json!({"event": "child_restarted", "child": "pg_locks",
                "reason": "panicked", "restarts": 2, "failed": false, "restart_in_ms": 400})
        );
    }

    #[test]
    fn an_eviction_report_is_named_by_the_rows_it_dropped() {
        let at = DateTime::from_timestamp(1_700_000_000, 0).expect("t");
        let later = DateTime::from_timestamp(1_700_000_100, 0).expect("t");
        let ev = AgentEvent::EventsEvicted {
            evicted: 3,
            bytes: 30,
            by_kind: [("pg_activity".to_string(), 3)].into_iter().collect(),
            oldest_collected_at: Some("a".into()),
            newest_collected_at: Some("b".into()),
            disk_bytes_before: 100,
            undelivered_by_output: [("listener".to_string(), 2)].into_iter().collect(),
            reason: "cap".into(),
            rows: (7, 9),
        };
        assert_eq!(ev.id("h", at), "agent:h:events_evicted:7-9");
        assert_eq!(ev.id("h", at), ev.id("h", later));
        let d = data(&ev.event("h", at).expect("event"));
        assert_eq!(d["event"], "events_evicted");
        assert_eq!(d["by_kind"]["pg_activity"], 3);
        assert_eq!(d["undelivered_by_output"]["listener"], 2);
        assert!(d.get("rows").is_none(), "{d}");
    }

    #[test]
    fn every_variant_has_its_own_name() {
        let all = [
            AgentEvent::AgentStarted {
                version: "1".into(),
                pid: 1,
                config_fingerprint: "f".into(),
            },
            AgentEvent::ChildRestarted {
                child: "c".into(),
                reason: "r".into(),
                restarts: 0,
                failed: false,
                restart_in_ms: 0,
            },
            AgentEvent::EventsDropped {
                source: "s".into(),
                dropped: 1,
                oldest_collected_at: None,
                newest_collected_at: None,
                reason: "r".into(),
            },
            AgentEvent::EventsEvicted {
                evicted: 1,
                bytes: 1,
                by_kind: BTreeMap::new(),
                oldest_collected_at: None,
                newest_collected_at: None,
                disk_bytes_before: 0,
                undelivered_by_output: BTreeMap::new(),
                reason: "r".into(),
                rows: (1, 1),
            },
            AgentEvent::RoleChanged {
                server: "s".into(),
                before: identity("standby"),
                after: identity("primary"),
            },
            AgentEvent::SpoolCorruptMovedAside {
                moved_to: "x".into(),
            },
            AgentEvent::SpoolFileReplaced {
                events_carried_over: 0,
                foreign_file_moved_to: None,
                events_lost: 0,
            },
        ];
        let at = Utc::now();
        let mut names: Vec<&str> = all.iter().map(AgentEvent::name).collect();
        for e in &all {
            assert_eq!(data(&e.event("h", at).expect("event"))["event"], e.name());
            assert!(
                super::super::AGENT_EVENTS.contains(&e.name()),
                "{}",
                e.name()
            );
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert_eq!(super::super::AGENT_EVENTS.len(), all.len());
    }
}
