//! `pg_replication`: per interval, on a primary every standby (state, sync state, how
//! far behind it is in bytes — sent, written, flushed, replayed — and in time) and every
//! replication slot (active, `wal_status` 13+, the WAL it retains, `inactive_since`
//! 17+); on a standby the WAL receiver and how far replay is behind. Slots and the
//! receiver are read whole (`to_jsonb`), so each version's columns arrive as they are.

use std::rc::Rc;

use chrono::Utc;
use serde::Serialize;
use serde_json::Value;

use super::{json_rows, object, objects, Row};
use crate::config::Config;
use crate::db::{Db, DbError};
use crate::model::{Event, EventKind};
use crate::sources::{CollectFuture, CycleError, Source};

/// The WAL position everything is measured against: the current insert position on a
/// primary, the last received (or replayed) one on a standby.
const HERE: &str = "CASE WHEN pg_is_in_recovery()
    THEN coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
    ELSE pg_current_wal_lsn() END";

fn sql() -> String {
    format!(
        "SELECT jsonb_build_object(
    'in_recovery', pg_is_in_recovery(),
    'wal_lsn', ({HERE})::text,
    'standbys', (SELECT coalesce(jsonb_agg((to_jsonb(r) - 'backend_xmin' - 'client_addr')
            || jsonb_build_object(
                'client_addr', host(r.client_addr),
                'sent_lag_bytes', pg_wal_lsn_diff(({HERE}), r.sent_lsn)::bigint,
                'write_lag_bytes', pg_wal_lsn_diff(({HERE}), r.write_lsn)::bigint,
                'flush_lag_bytes', pg_wal_lsn_diff(({HERE}), r.flush_lsn)::bigint,
                'replay_lag_bytes', pg_wal_lsn_diff(({HERE}), r.replay_lsn)::bigint,
                'write_lag_s', extract(epoch FROM r.write_lag)::float8,
                'flush_lag_s', extract(epoch FROM r.flush_lag)::float8,
                'replay_lag_s', extract(epoch FROM r.replay_lag)::float8)
            ORDER BY r.application_name, r.pid), '[]')
        FROM pg_catalog.pg_stat_replication r),
    'slots', (SELECT coalesce(jsonb_agg(to_jsonb(s)
            || jsonb_build_object('retained_bytes',
                pg_wal_lsn_diff(({HERE}), s.restart_lsn)::bigint)
            ORDER BY s.slot_name), '[]')
        FROM pg_catalog.pg_replication_slots s),
    'receiver', (SELECT to_jsonb(w) - 'conninfo' FROM pg_catalog.pg_stat_wal_receiver w),
    'replay', CASE WHEN pg_is_in_recovery() THEN jsonb_build_object(
        'receive_lsn', pg_last_wal_receive_lsn()::text,
        'replay_lsn', pg_last_wal_replay_lsn()::text,
        'replay_lag_bytes',
            pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint,
        'last_replayed_xact_at', pg_last_xact_replay_timestamp(),
        'replay_delay_s', extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8,
        'paused', pg_is_wal_replay_paused()) END)::text"
    )
}

/// `data` of a `pg_replication` event.
#[derive(Debug, Serialize)]
pub struct Replication {
    /// `standby` (in recovery) or `primary`.
    pub role: &'static str,
    /// The WAL position lags are measured from.
    pub wal_lsn: Value,
    /// Standbys streaming from this server (`pg_stat_replication` and the lags).
    pub standbys: Vec<Row>,
    /// Replication slots (`pg_replication_slots` and `retained_bytes`).
    pub slots: Vec<Row>,
    /// On a standby: its WAL receiver (`pg_stat_wal_receiver`, without `conninfo`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receiver: Option<Row>,
    /// On a standby: how far replay is behind what was received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<Row>,
}

/// Turns the query's one row into the event's data.
pub fn to_replication(mut r: Row) -> Replication {
    let in_recovery = r.get("in_recovery").and_then(Value::as_bool) == Some(true);
    Replication {
        role: if in_recovery { "standby" } else { "primary" },
        wal_lsn: r.remove("wal_lsn").unwrap_or(Value::Null),
        standbys: objects(r.remove("standbys")),
        slots: objects(r.remove("slots")),
        receiver: object(r.remove("receiver")),
        replay: object(r.remove("replay")),
    }
}

/// Reads replication from this server's side.
pub struct ReplicationSource {
    host: String,
}

impl ReplicationSource {
    /// From the configuration.
    pub fn new(config: &Config) -> ReplicationSource {
        ReplicationSource {
            host: config.id_host(),
        }
    }
}

impl Source for ReplicationSource {
    fn kind(&self) -> EventKind {
        EventKind::PgReplication
    }

    fn collect(&self, db: Rc<Db>) -> CollectFuture {
        let host = self.host.clone();
        Box::pin(async move {
            let conn = db.get().await?;
            let (rows, _) = json_rows(&conn, &sql(), &[]).await?;
            drop(conn);
            let row = rows.into_iter().next().ok_or_else(|| DbError::Query {
                message: "the replication query returned no row".into(),
                sqlstate: None,
            })?;
            let data = to_replication(row);
            let board = db.server().board();
            if board.wanted() {
                let shown = crate::board::Replication {
                    standbys: data.standbys.clone(),
                    slots: data.slots.clone(),
                    wal_lsn_bytes: crate::board::lsn_bytes(Some(&data.wal_lsn)),
                    receiver: data.receiver.clone(),
                };
                board.post(|p| &mut p.replication, std::sync::Arc::new(shown));
            }
            let at = Utc::now();
            let id = format!("pg_replication:{host}:{}", at.timestamp_micros());
            Ok(vec![Event::new(id, EventKind::PgReplication, at, &data)
                .map_err(|e| CycleError::encode("replication", e))?])
        })
    }
}
