//! Which cluster a server is and in which role, checked by every source that takes
//! deltas, on its own connection, before it reads: a failover or a cluster replaced at
//! the same address is seen before any counter is compared, so no delta is ever taken
//! against another cluster's (or the other role's) counters. The first source to see a
//! change reports it (`role_changed`).

use std::cell::{Cell, RefCell};

use chrono::Utc;

use crate::catalogue::AgentEvent;
use crate::db::{Conn, DbError, Server};
use crate::model::{Checkpoint, Event, EventKind, Identity};

/// The identity as one JSON object (every function is PUBLIC): the system identifier
/// as text (it does not fit a JSON number's exact range); the timeline of a primary from
/// its current WAL file (a promotion moves it at once), of a standby from its WAL
/// receiver, else from its last restartpoint.
pub const IDENTITY: &str = "jsonb_build_object(
    'system_identifier', (SELECT system_identifier::text FROM pg_catalog.pg_control_system()),
    'timeline', CASE WHEN pg_is_in_recovery()
        THEN coalesce((SELECT received_tli FROM pg_catalog.pg_stat_wal_receiver),
                      (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()))
        ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END,
    'role', CASE WHEN pg_is_in_recovery() THEN 'standby' ELSE 'primary' END,
    'version', current_setting('server_version'),
    'version_num', current_setting('server_version_num')::int)";

/// Which server a source looks at, as the identity's report names it.
#[derive(Debug, Clone, Default)]
pub struct Who {
    /// The server's configured name (`role_changed`'s `server`).
    pub name: String,
    /// What the ids of the server's events are made from.
    pub id_host: String,
    /// The spool checkpoint that keeps the identity last reported.
    pub checkpoint: String,
}

impl Who {
    /// The server `config` is the view of.
    pub fn of(config: &crate::config::Config) -> Who {
        Who {
            name: config.server_name().to_string(),
            id_host: config.id_host(),
            checkpoint: checkpoint_name(config),
        }
    }
}

/// The checkpoint holding server `config`'s identity as last reported: read at start
/// (a server replaced while the agent was down is a `role_changed` then), written with
/// the report.
pub fn checkpoint_name(config: &crate::config::Config) -> String {
    match config.servers.first().and_then(|s| s.name.as_deref()) {
        Some(name) => format!("identity:{name}"),
        None => "identity".to_string(),
    }
}

/// The identity stored under `name` in the spool in `state_dir`, if any.
pub fn stored(state_dir: &std::path::Path, name: &str) -> Option<Identity> {
    let bytes = crate::spool::read_checkpoint(state_dir, name)?;
    serde_json::from_slice(&bytes).ok()
}

/// The epoch a source's baseline was taken under, and what its look found to report.
#[derive(Debug, Default)]
pub struct Guard {
    epoch: Cell<Option<u64>>,
    /// The `role_changed` event (if any) and the identity to store with it, for the
    /// collector to hand over.
    report: RefCell<Option<(Vec<Event>, Checkpoint)>>,
}

/// What a look at the server found.
pub struct Look {
    /// The baseline was taken under another cluster or role: drop it.
    pub stale: bool,
    /// What the server said it is (`None`: an answer that could not be read).
    pub now: Option<Identity>,
}

impl Guard {
    /// Reads the identity on `conn` and records it in `server`'s facts. The one source
    /// that saw a change first (or the first identity ever) keeps the report for
    /// [`Guard::take_report`].
    pub async fn look(&self, conn: &Conn, server: &Server, who: &Who) -> Result<Look, DbError> {
        let row = conn
            .query_one(&format!("SELECT {IDENTITY}::text"), &[])
            .await
            .map_err(DbError::query)?;
        let text: String = row.try_get(0).map_err(DbError::query)?;
        let Ok(now) = serde_json::from_str::<Identity>(&text) else {
            return Ok(Look {
                stale: false,
                now: None,
            });
        };
        let seen = server.facts().observe(now.clone());
        let stale = self
            .epoch
            .replace(Some(seen.epoch))
            .is_some_and(|was| was != seen.epoch);
        if seen.store {
            let events = seen
                .change
                .and_then(|c| {
                    let at = Utc::now();
                    let report = AgentEvent::RoleChanged {
                        server: who.name.clone(),
                        before: c.before,
                        after: c.after,
                    };
                    Event::new(report.id(&who.id_host, at), EventKind::Agent, at, &report).ok()
                })
                .into_iter()
                .collect();
            let value = serde_json::to_vec(&now).unwrap_or_default();
            let checkpoint = Checkpoint::value(who.checkpoint.clone(), value);
            *self.report.borrow_mut() = Some((events, checkpoint));
        }
        Ok(Look {
            stale,
            now: Some(now),
        })
    }

    /// The report of the last look, once: a `role_changed` event (or none, for the first
    /// identity ever seen) with the identity to store in the same spool transaction.
    pub fn take_report(&self) -> Option<(Vec<Event>, Checkpoint)> {
        self.report.borrow_mut().take()
    }
}
