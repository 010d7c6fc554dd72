//! `pg_xmin_horizon`: who holds the xmin horizon back — the thing to end when dead
//! tuples pile up and vacuum cannot remove them. Per interval: the sessions with the
//! oldest snapshot or transaction (with their request's correlation id), replication
//! slots holding `xmin`/`catalog_xmin`, prepared transactions, and standbys' feedback;
//! `oldest` names the one furthest behind.

use std::cell::Cell;
use std::rc::Rc;

use chrono::Utc;
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::types::ToSql;

use super::{int_of, json_rows, objects, read_rows, str_of, Row};
use crate::config::Config;
use crate::db::text::text;
use crate::db::{Db, DbError};
use crate::model::{Event, EventKind};
use crate::sources::session::{self, Session};
use crate::sources::{versioned_query, CollectFuture, CycleError, Source};

/// At most this many sessions, prepared transactions listed (oldest first).
const MAX_LISTED: i64 = 5;

fn sessions_sql(version: i32) -> String {
    let cols = session::columns(version, "now()");
    let not_agent = session::NOT_THE_AGENT;
    format!(
        "SELECT {cols}, a.backend_type, a.backend_xmin::text AS backend_xmin,
            age(a.backend_xmin)::bigint AS xmin_age, age(a.backend_xid)::bigint AS xid_age
         FROM pg_catalog.pg_stat_activity a
         WHERE (a.backend_xmin IS NOT NULL OR a.backend_xid IS NOT NULL)
           AND a.pid <> pg_backend_pid()
           AND a.backend_type IS DISTINCT FROM 'walsender'
           AND {not_agent}
         ORDER BY greatest(age(a.backend_xmin), age(a.backend_xid)) DESC NULLS LAST, a.pid
         LIMIT $2"
    )
}

const OTHERS_SQL: &str = "SELECT jsonb_build_object(
    'slots', (SELECT coalesce(jsonb_agg(s ORDER BY greatest(s.xmin_age, s.catalog_xmin_age) DESC), '[]')
        FROM (SELECT slot_name, slot_type, database, active, active_pid,
                xmin::text AS xmin, catalog_xmin::text AS catalog_xmin,
                age(xmin)::bigint AS xmin_age, age(catalog_xmin)::bigint AS catalog_xmin_age
              FROM pg_catalog.pg_replication_slots
              WHERE xmin IS NOT NULL OR catalog_xmin IS NOT NULL) s),
    'prepared', (SELECT coalesce(jsonb_agg(p ORDER BY p.xid_age DESC), '[]')
        FROM (SELECT gid, prepared, owner, database, transaction::text AS xid,
                age(transaction)::bigint AS xid_age,
                extract(epoch FROM now() - prepared)::float8 AS age_s
              FROM pg_catalog.pg_prepared_xacts
              ORDER BY age(transaction) DESC LIMIT $1) p),
    'prepared_total', (SELECT count(*) FROM pg_catalog.pg_prepared_xacts),
    'standbys', (SELECT coalesce(jsonb_agg(r ORDER BY r.xmin_age DESC), '[]')
        FROM (SELECT pid, application_name, host(client_addr) AS client_addr, state,
                backend_xmin::text AS xmin, age(backend_xmin)::bigint AS xmin_age
              FROM pg_catalog.pg_stat_replication
              WHERE backend_xmin IS NOT NULL) r))::text";

/// A session holding the horizon.
#[derive(Debug, Serialize)]
pub struct HolderSession {
    /// The session, read as every source reads sessions.
    #[serde(flatten)]
    pub session: Session,
    /// `backend_type` (client backend, autovacuum worker, …).
    pub backend_type: Option<String>,
    /// Its snapshot's xmin.
    pub backend_xmin: Option<String>,
    /// `age(backend_xmin)`: transactions since its snapshot.
    pub xmin_age: Option<i64>,
    /// `age(backend_xid)`: transactions since it took its id.
    pub xid_age: Option<i64>,
}

/// The one holding the horizon furthest back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Oldest {
    /// `session`, `replication_slot`, `prepared_transaction` or `standby`.
    pub holder: &'static str,
    /// Transactions behind.
    pub age: i64,
    /// Its pid (session, standby's walsender, slot's active pid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
    /// The slot's name, the prepared transaction's gid, the standby's application name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The session's request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// `data` of a `pg_xmin_horizon` event.
#[derive(Debug, Serialize)]
pub struct Horizon {
    /// The holder furthest behind; absent when nothing holds the horizon.
    pub oldest: Option<Oldest>,
    /// Sessions with the oldest snapshots or transaction ids (at most 5).
    pub sessions: Vec<HolderSession>,
    /// Replication slots holding `xmin` or `catalog_xmin`.
    pub slots: Vec<Row>,
    /// Prepared transactions, oldest first (at most 5; `prepared_total` counts all).
    pub prepared: Vec<Row>,
    /// How many prepared transactions there are.
    pub prepared_total: Value,
    /// Standbys whose `hot_standby_feedback` holds a horizon.
    pub standbys: Vec<Row>,
}

/// The holder furthest behind among all of them.
pub fn oldest(h: &Horizon) -> Option<Oldest> {
    let mut all: Vec<Oldest> = Vec::new();
    for s in &h.sessions {
        let age = s.xmin_age.into_iter().chain(s.xid_age).max();
        if let Some(age) = age {
            all.push(Oldest {
                holder: "session",
                age,
                pid: Some(s.session.pid.into()),
                name: None,
                correlation_id: s.session.correlation_id.clone(),
            });
        }
    }
    for s in &h.slots {
        let age = [int_of(s, "xmin_age"), int_of(s, "catalog_xmin_age")]
            .into_iter()
            .flatten()
            .max();
        if let Some(age) = age {
            all.push(Oldest {
                holder: "replication_slot",
                age,
                pid: int_of(s, "active_pid"),
                name: str_of(s, "slot_name").map(str::to_string),
                correlation_id: None,
            });
        }
    }
    for (list, holder, name) in [
        (&h.prepared, "prepared_transaction", "gid"),
        (&h.standbys, "standby", "application_name"),
    ] {
        for r in list {
            let age = int_of(r, "xid_age").or_else(|| int_of(r, "xmin_age"));
            if let Some(age) = age {
                all.push(Oldest {
                    holder,
                    age,
                    pid: int_of(r, "pid"),
                    name: str_of(r, name).map(str::to_string),
                    correlation_id: None,
                });
            }
        }
    }
    // Ties: the first listed (sessions before slots before prepared before standbys).
    all.into_iter().rev().max_by_key(|o| o.age)
}

/// Reads who holds the horizon.
pub struct HorizonSource {
    host: String,
    reading: Rc<session::Reading>,
    max_query_length: u32,
    version: Rc<Cell<Option<i32>>>,
    skipped: Rc<Cell<u64>>,
}

impl HorizonSource {
    /// From the configuration.
    pub fn new(config: &Config) -> HorizonSource {
        HorizonSource {
            host: config.id_host(),
            reading: session::Reading::of(config),
            max_query_length: config.collection.max_query_length,
            version: Rc::new(Cell::new(None)),
            skipped: Rc::new(Cell::new(0)),
        }
    }
}

fn holder(
    r: &tokio_postgres::Row,
    reading: &session::Reading,
) -> Result<HolderSession, tokio_postgres::Error> {
    let mut bad = false;
    let mut s = HolderSession {
        session: session::read(r, reading)?,
        backend_type: text(r, "backend_type", &mut bad)?,
        backend_xmin: text(r, "backend_xmin", &mut bad)?,
        xmin_age: r.try_get("xmin_age")?,
        xid_age: r.try_get("xid_age")?,
    };
    s.session.not_utf8 |= bad;
    Ok(s)
}

impl Source for HorizonSource {
    fn kind(&self) -> EventKind {
        EventKind::PgXminHorizon
    }

    fn rows_skipped(&self) -> u64 {
        self.skipped.get()
    }

    fn collect(&self, db: Rc<Db>) -> CollectFuture {
        let host = self.host.clone();
        let reading = self.reading.clone();
        let max_len = self.max_query_length as i32;
        let version = self.version.clone();
        let skipped = self.skipped.clone();
        Box::pin(async move {
            let conn = db.get().await?;
            let params: [&(dyn ToSql + Sync); 2] = [&max_len, &MAX_LISTED];
            let found = versioned_query(&conn, &version, sessions_sql, &params).await?;
            let (others, _) = json_rows(&conn, OTHERS_SQL, &[&MAX_LISTED]).await?;
            drop(conn);
            let sessions = read_rows(&found, &skipped, |r| holder(r, &reading));
            let mut o = others.into_iter().next().ok_or_else(|| DbError::Query {
                message: "the horizon query returned no row".into(),
                sqlstate: None,
            })?;
            let mut h = Horizon {
                oldest: None,
                sessions,
                slots: objects(o.remove("slots")),
                prepared: objects(o.remove("prepared")),
                prepared_total: o.remove("prepared_total").unwrap_or(Value::Null),
                standbys: objects(o.remove("standbys")),
            };
            h.oldest = oldest(&h);
            let at = Utc::now();
            let id = format!("pg_xmin_horizon:{host}:{}", at.timestamp_micros());
            Ok(vec![Event::new(id, EventKind::PgXminHorizon, at, &h)
                .map_err(|e| CycleError::encode("horizon", e))?])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> Row {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn the_oldest_holder_of_any_kind_is_named() {
        let mut h = Horizon {
            oldest: None,
            sessions: Vec::new(),
            slots: vec![row(
                json!({"slot_name": "s", "xmin_age": null, "catalog_xmin_age": 70, "active_pid": null}),
            )],
            prepared: vec![row(json!({"gid": "g", "xid_age": 50}))],
            prepared_total: json!(1),
            standbys: vec![row(
                json!({"application_name": "r1", "pid": 9, "xmin_age": 60}),
            )],
        };
        let o = oldest(&h).expect("a holder");
        assert_eq!(
            (o.holder, o.age, o.name.as_deref()),
            ("replication_slot", 70, Some("s"))
        );
        h.slots.clear();
        let o = oldest(&h).expect("a holder");
        assert_eq!((o.holder, o.pid), ("standby", Some(9)));
        h.standbys.clear();
        h.prepared.clear();
        assert_eq!(oldest(&h), None);
    }
}
