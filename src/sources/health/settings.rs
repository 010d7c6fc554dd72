//! `pg_settings`: the server's non-default settings with where each comes from, once at
//! start and then whenever one changes (an `ALTER SYSTEM` and a reload, an edited
//! postgresql.conf), as one event with what changed; settings waiting for a restart
//! are flagged. Passwords in values (`primary_conninfo`) are masked.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use chrono::Utc;
use serde::Serialize;
use serde_json::Value;

use super::{json_rows, mask_passwords, str_of, Row};
use crate::board;
use crate::config::Config;
use crate::db::Db;
use crate::model::{Event, EventKind};
use crate::sources::{CollectFuture, CycleError, Source};

/// Sources left out: the built-in default, and this session's own (`client`: the
/// agent's startup options such as its statement_timeout; `session`: SET).
const SQL: &str = "SELECT jsonb_build_object('name', name, 'setting', setting, 'unit', unit,
    'source', source, 'sourcefile', sourcefile, 'sourceline', sourceline,
    'pending_restart', pending_restart, 'context', context, 'vartype', vartype,
    'boot_val', boot_val)::text
FROM pg_catalog.pg_settings
WHERE source NOT IN ('default', 'client', 'session') OR pending_restart
ORDER BY name";

/// Every setting that is a number or a switch, default or not, for the metrics page
/// (the only kinds postgres_exporter shows; none holds a password). What the agent's
/// own session set (its timeouts, read-only transactions) is shown as another session
/// sees it: the built-in default (a value from postgresql.conf for these is not told
/// apart).
const NUMERIC_SQL: &str = "SELECT name,
    CASE WHEN source IN ('client', 'session') OR name = 'transaction_read_only'
         THEN boot_val ELSE setting END,
    coalesce(unit, ''), coalesce(short_desc, ''), vartype
FROM pg_catalog.pg_settings WHERE vartype IN ('bool', 'integer', 'real') ORDER BY name";

/// Roles and their connection limits, for the metrics page (read with the settings:
/// both change by hand, seldom).
/// Posts every numeric setting and the roles for the metrics page.
async fn post_numeric(
    conn: &tokio_postgres::Client,
    board: &crate::board::Board,
) -> Result<(), crate::db::DbError> {
    use crate::db::DbError;
    let all = conn.query(NUMERIC_SQL, &[]).await.map_err(DbError::query)?;
    let all: Vec<board::Setting> = all
        .iter()
        .filter_map(|r| {
            Some(board::Setting {
                name: r.try_get(0).ok()?,
                setting: r.try_get(1).ok()?,
                unit: r.try_get(2).ok()?,
                short_desc: r.try_get(3).ok()?,
                vartype: r.try_get(4).ok()?,
            })
        })
        .collect();
    board.post(|p| &mut p.settings, std::sync::Arc::new(all));
    let roles = conn
        .query(&roles_sql(), &[])
        .await
        .map_err(DbError::query)?;
    let mut bad = false;
    let roles: Vec<(String, f64)> = roles
        .iter()
        .filter_map(|r| {
            Some((
                crate::db::text::text(r, "rolname", &mut bad).ok()??,
                r.try_get::<_, f64>("limit").ok()?,
            ))
        })
        .collect();
    board.post(|p| &mut p.roles, std::sync::Arc::new(roles));
    Ok(())
}

fn roles_sql() -> String {
    format!(
        "SELECT {} AS rolname, rolconnlimit::float8 AS limit FROM pg_catalog.pg_roles ORDER BY 1",
        crate::db::text::raw_bytes("rolname::text")
    )
}

/// What changed in one setting.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SettingChange {
    /// The setting.
    pub name: String,
    /// Its value before (`None`: it was at its default).
    pub from: Option<String>,
    /// Its value now (`None`: back to its default).
    pub to: Option<String>,
    /// Where the new value comes from.
    pub source: Option<String>,
    /// The new value takes effect only after a restart.
    pub pending_restart: bool,
}

/// `data` of a `pg_settings` event.
#[derive(Debug, Serialize)]
pub struct Settings {
    /// The first reading since the agent started (everything is listed, nothing changed).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub first: bool,
    /// Every non-default setting, as `pg_settings` has it.
    pub settings: Vec<Row>,
    /// What changed since the last event.
    pub changed: Vec<SettingChange>,
    /// Settings changed in the configuration that need a restart to take effect.
    pub pending_restart: Vec<String>,
}

/// A setting as compared between readings: value, source, pending restart.
type Seen = BTreeMap<String, (Option<String>, Option<String>, bool)>;

/// Compares the settings read now with the last ones; `None` when nothing changed.
pub fn diff(last: Option<&Seen>, now: &Seen) -> Option<Vec<SettingChange>> {
    let last = last?;
    let mut out = Vec::new();
    for (name, (value, source, pending)) in now {
        match last.get(name) {
            Some(before) if before == &(value.clone(), source.clone(), *pending) => {}
            before => out.push(SettingChange {
                name: name.clone(),
                from: before.and_then(|b| b.0.clone()),
                to: value.clone(),
                source: source.clone(),
                pending_restart: *pending,
            }),
        }
    }
    for (name, (value, _, _)) in last {
        if !now.contains_key(name) {
            out.push(SettingChange {
                name: name.clone(),
                from: value.clone(),
                to: None,
                source: Some("default".into()),
                pending_restart: false,
            });
        }
    }
    Some(out)
}

/// Reads the non-default settings.
pub struct SettingsSource {
    host: String,
    last: Rc<RefCell<Option<Seen>>>,
}

impl SettingsSource {
    /// From the configuration.
    pub fn new(config: &Config) -> SettingsSource {
        SettingsSource {
            host: config.id_host(),
            last: Rc::new(RefCell::new(None)),
        }
    }
}

/// Masks passwords in the value and returns what is compared.
fn read(rows: &mut [Row]) -> Seen {
    let mut seen = Seen::new();
    for r in rows.iter_mut() {
        for key in ["setting", "boot_val"] {
            if let Some(Value::String(v)) = r.get_mut(key) {
                *v = mask_passwords(v);
            }
        }
        let Some(name) = str_of(r, "name").map(str::to_string) else {
            continue;
        };
        seen.insert(
            name,
            (
                str_of(r, "setting").map(str::to_string),
                str_of(r, "source").map(str::to_string),
                r.get("pending_restart").and_then(Value::as_bool) == Some(true),
            ),
        );
    }
    seen
}

impl Source for SettingsSource {
    fn kind(&self) -> EventKind {
        EventKind::PgSettings
    }

    fn tracks_shipped(&self) -> bool {
        true
    }

    /// A change that never reached the spool would never ship again (the next cycle
    /// compares with the settings it saw): the next cycle ships them all, as a first.
    fn lost(&self, ids: &[String]) {
        if !ids.is_empty() {
            *self.last.borrow_mut() = None;
        }
    }

    fn collect(&self, db: Rc<Db>) -> CollectFuture {
        let host = self.host.clone();
        let last = self.last.clone();
        Box::pin(async move {
            let conn = db.get().await?;
            let (mut rows, _) = json_rows(&conn, SQL, &[]).await?;
            let board = db.server().board();
            if board.wanted() {
                // Only the page needs these: a failure shows as the readings' age, not
                // as a lost cycle.
                let _ = post_numeric(&conn, board).await;
            }
            drop(conn);
            let seen = read(&mut rows);
            let mut last = last.borrow_mut();
            let changed = diff(last.as_ref(), &seen);
            if changed.as_ref().is_some_and(Vec::is_empty) {
                return Ok(Vec::new());
            }
            let data = Settings {
                first: changed.is_none(),
                pending_restart: seen
                    .iter()
                    .filter(|(_, v)| v.2)
                    .map(|(k, _)| k.clone())
                    .collect(),
                changed: changed.unwrap_or_default(),
                settings: rows,
            };
            *last = Some(seen);
            let at = Utc::now();
            let id = format!("pg_settings:{host}:{}", at.timestamp_micros());
            Ok(vec![Event::new(id, EventKind::PgSettings, at, &data)
                .map_err(|e| CycleError::encode("settings", e))?])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(v: &[(&str, &str, &str, bool)]) -> Seen {
        v.iter()
            .map(|(n, val, src, p)| {
                (
                    n.to_string(),
                    (Some(val.to_string()), Some(src.to_string()), *p),
                )
            })
            .collect()
    }

    #[test]
    fn changes_additions_and_returns_to_default_are_listed() {
        let a = seen(&[
            ("work_mem", "4096", "configuration file", false),
            ("jit", "off", "configuration file", false),
        ]);
        let b = seen(&[
            ("work_mem", "8192", "configuration file", false),
            ("shared_buffers", "32768", "configuration file", true),
        ]);
        assert_eq!(diff(None, &a), None);
        assert_eq!(diff(Some(&a), &a), Some(vec![]));
        let d = diff(Some(&a), &b).expect("compared");
        let names: Vec<(&str, Option<&str>, Option<&str>, bool)> = d
            .iter()
            .map(|c| {
                (
                    c.name.as_str(),
                    c.from.as_deref(),
                    c.to.as_deref(),
                    c.pending_restart,
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("shared_buffers", None, Some("32768"), true),
                ("work_mem", Some("4096"), Some("8192"), false),
                ("jit", Some("off"), None, false),
            ]
        );
    }

    #[test]
    fn a_change_that_never_reached_the_spool_ships_again_as_a_full_reading() {
        let src = SettingsSource {
            host: "h".into(),
            last: Rc::new(RefCell::new(Some(seen(&[(
                "jit", "off", "default", false,
            )])))),
        };
        assert!(src.tracks_shipped());
        src.lost(&[]);
        assert!(src.last.borrow().is_some());
        src.lost(&["pg_settings:h:1".into()]);
        assert!(src.last.borrow().is_none());
    }

    #[test]
    fn passwords_in_values_are_masked() {
        let mut rows = vec![serde_json::json!({"name": "primary_conninfo",
            "setting": "host=p user=r password=s3cret", "source": "configuration file"})
        .as_object()
        .cloned()
        .expect("object")];
        let s = read(&mut rows);
        let v = s["primary_conninfo"].0.as_deref().expect("value");
        assert!(!v.contains("s3cret"), "{v}");
        assert!(!serde_json::to_string(&rows[0])
            .unwrap_or_default()
            .contains("s3cret"));
    }
}
