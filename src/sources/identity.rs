//! Which cluster a server is and in which role, checked by every source that takes
//! deltas, on its own connection, before it reads: a failover or a cluster replaced at
//! the same address is seen before any counter is compared, so no delta is ever taken
//! against another cluster's (or the other role's) counters. The first source to see a
//! change reports it (`role_changed`).

use std::cell::Cell;

use chrono::Utc;

use crate::catalogue::AgentEvent;
use crate::db::{Conn, DbError, Server};
use crate::model::{Event, Identity};

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

/// The epoch a source's baseline was taken under.
#[derive(Debug, Default)]
pub struct Guard {
    epoch: Cell<Option<u64>>,
}

/// What a look at the server found.
pub struct Look {
    /// The baseline was taken under another cluster or role: drop it.
    pub stale: bool,
    /// The `role_changed` event, for the one source that saw the change first.
    pub event: Option<Event>,
    /// What the server said it is (`None`: an answer that could not be read).
    pub now: Option<Identity>,
}

impl Guard {
    /// Reads the identity on `conn` and records it in `server`'s facts; `name` is the
    /// server's configured name (in the event and its id).
    pub async fn look(&self, conn: &Conn, server: &Server, name: &str) -> Result<Look, DbError> {
        let row = conn
            .query_one(&format!("SELECT {IDENTITY}::text"), &[])
            .await
            .map_err(DbError::query)?;
        let text: String = row.try_get(0).map_err(DbError::query)?;
        let Ok(now) = serde_json::from_str::<Identity>(&text) else {
            return Ok(Look {
                stale: false,
                event: None,
                now: None,
            });
        };
        let (epoch, change) = server.facts().observe(now.clone());
        let stale = self
            .epoch
            .replace(Some(epoch))
            .is_some_and(|was| was != epoch);
        let event = change.and_then(|c| {
            AgentEvent::RoleChanged {
                server: name.to_string(),
                before: c.before,
                after: c.after,
            }
            .event(name, Utc::now())
            .ok()
        });
        Ok(Look {
            stale,
            event,
            now: Some(now),
        })
    }
}
