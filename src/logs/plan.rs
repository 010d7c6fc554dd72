//! Where the server's log is and how to read it, decided from the config, the server's
//! own settings, what was stored last time and a few facts of the file system. The
//! decision ([`plan`]) is plain; [`Facts::gather`] and [`server_settings`] are the I/O
//! it needs, kept apart so the decision is tested without files or a server.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::locate::{current_formats, Locator};
use super::tail::Position;
use super::{Format, DEFAULT_PREFIX};
use crate::config::LogsConfig;
use crate::db::{Db, DbError};
use crate::model::Problem;

/// What is stored with the events: the position, and what is needed to go on reading
/// when the database is unreachable at the next start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// Reader position.
    pub position: Option<Position>,
    /// Format in use.
    pub format: Option<String>,
    /// Prefix in use.
    pub prefix: Option<String>,
    /// The server's data directory.
    pub data_dir: Option<String>,
    /// The server's log directory (absolute).
    pub log_dir: Option<String>,
}

/// The server's logging settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerSettings {
    /// `data_directory` (hidden without pg_read_all_settings).
    pub data_dir: Option<String>,
    /// `log_directory` as set (may be relative to the data directory).
    pub log_dir: Option<String>,
    /// `logging_collector`.
    pub logging_collector: bool,
    /// `log_destination`, split.
    pub destinations: Vec<String>,
    /// `log_line_prefix`.
    pub prefix: Option<String>,
    /// `lc_messages`.
    pub lc_messages: Option<String>,
    /// `log_timezone`.
    pub timezone: Option<String>,
}

/// How the log will be read.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Where the files are.
    pub locator: Locator,
    /// Their format.
    pub format: Format,
    /// The prefix (stderr).
    pub prefix: String,
}

/// What the file system shows that the plan depends on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// `[logs] path` is a directory.
    pub path_is_dir: bool,
    /// The format of the newest log-like file in that directory.
    pub newest_in_path: Option<Format>,
    /// The format `[logs] path`, a file, looks like (name, then first bytes).
    pub sniffed: Option<Format>,
    /// The destinations the server's `current_logfiles` lists.
    pub current: Vec<Format>,
    /// The newest file of Debian's `/var/log/postgresql`, for the hint when the server
    /// logs without its collector.
    pub debian_log: Option<PathBuf>,
}

/// Debian and Ubuntu clusters (pg_ctlcluster) log here without the logging collector.
const DEBIAN_LOG_DIR: &str = "/var/log/postgresql";

impl Facts {
    /// Looks at what the config and the server's settings point to.
    pub fn gather(cfg: &LogsConfig, server: Option<&ServerSettings>, saved: &Saved) -> Facts {
        let mut f = Facts::default();
        if !cfg.path.is_empty() {
            let p = Path::new(&cfg.path);
            f.path_is_dir = p.is_dir();
            if f.path_is_dir {
                f.newest_in_path = newest_format(p);
            } else {
                f.sniffed = Some(Format::sniff(p, &super::head(p)));
            }
            return f;
        }
        let data_dir = match server {
            Some(s) => s.data_dir.clone(),
            None => saved.data_dir.clone(),
        };
        if let Some(d) = data_dir {
            f.current = current_formats(Path::new(&d));
        }
        if server.is_some_and(|s| !s.logging_collector) {
            f.debian_log = Locator::Dir {
                dir: PathBuf::from(DEBIAN_LOG_DIR),
                format: Format::Stderr,
            }
            .current()
            .map(|c| c.path);
        }
        f
    }
}

/// Works out where the log is and how to parse it from the config, the server's
/// settings (when it was reachable), what was stored last time and what the file
/// system showed ([`Facts`]); reads nothing itself. `Err` says why the log cannot be
/// read, with the fix.
pub fn plan(
    cfg: &LogsConfig,
    server: Option<&ServerSettings>,
    saved: &Saved,
    facts: &Facts,
) -> Result<Plan, Problem> {
    let prefix = [
        Some(cfg.prefix.clone()).filter(|p| !p.is_empty()),
        server.and_then(|s| s.prefix.clone()),
        saved.prefix.clone(),
    ]
    .into_iter()
    .flatten()
    .next()
    .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
    if !cfg.path.is_empty() {
        return Ok(configured_path(cfg, saved, facts, prefix));
    }
    let (data_dir, log_dir, dests) = server_log_dir(server, saved, facts)?;
    let mut available: Vec<Format> = dests
        .iter()
        .filter_map(|d| Format::parse(d).ok().flatten())
        .collect();
    if data_dir.is_some() {
        available.extend(facts.current.iter().copied());
    }
    let format = choose_format(cfg.format, &available, saved)?;
    let locator = match data_dir {
        Some(d) => Locator::Server {
            data_dir: PathBuf::from(d),
            log_dir,
            format,
        },
        None => Locator::Dir {
            dir: log_dir,
            format,
        },
    };
    Ok(Plan {
        locator,
        format,
        prefix,
    })
}

/// The format stored with the position, if any.
fn saved_format(saved: &Saved) -> Option<Format> {
    saved
        .format
        .as_deref()
        .and_then(|f| Format::parse(f).ok().flatten())
}

/// `[logs] path` is set: that directory (its newest file's format unless one is
/// configured) or that file (its format sniffed).
fn configured_path(cfg: &LogsConfig, saved: &Saved, facts: &Facts, prefix: String) -> Plan {
    let p = PathBuf::from(&cfg.path);
    if facts.path_is_dir {
        let format = cfg
            .format
            .or(facts.newest_in_path)
            .or_else(|| saved_format(saved))
            .unwrap_or(Format::Stderr);
        return Plan {
            locator: Locator::Dir { dir: p, format },
            format,
            prefix,
        };
    }
    let format = cfg.format.or(facts.sniffed).unwrap_or(Format::Stderr);
    Plan {
        locator: Locator::File(p),
        format,
        prefix,
    }
}

/// Where the server writes its log, from its settings (or, when it could not be
/// asked, from what was stored): the data directory if known, the log directory
/// (absolute) and `log_destination`.
fn server_log_dir(
    server: Option<&ServerSettings>,
    saved: &Saved,
    facts: &Facts,
) -> Result<(Option<String>, PathBuf, Vec<String>), Problem> {
    let (data_dir, log_dir, dests) = match server {
        Some(s) => {
            if !s.logging_collector {
                return Err(Problem::new(
                    "the server runs without logging_collector, so its log goes wherever its stderr goes",
                    format!(
                        "set [logs] path to that file{}, or turn logging_collector on",
                        debian_hint(facts.debian_log.as_deref())
                    ),
                ));
            }
            (
                s.data_dir.clone(),
                s.log_dir.clone(),
                s.destinations.clone(),
            )
        }
        None => (saved.data_dir.clone(), saved.log_dir.clone(), Vec::new()),
    };
    let Some(log_dir) = log_dir else {
        return Err(match server {
            // Connected and asked, but the rows were not shown: a privilege, not the network.
            Some(_) => Problem::new(
                "the agent's role cannot see where the server writes its log (log_directory and data_directory are shown only to roles with pg_read_all_settings)",
                "GRANT pg_monitor TO the agent's role, or set [logs] path to the log file or directory",
            ),
            None => Problem::new(
                "cannot find the server log: the server's log settings could not be read (log_settings_unavailable in the agent's log says why) and [logs] path is not set",
                "check that the database is reachable, or set [logs] path to the log file or directory",
            ),
        });
    };
    let mut log_dir = PathBuf::from(log_dir);
    if log_dir.is_relative() {
        match &data_dir {
            Some(d) => log_dir = Path::new(d).join(log_dir),
            None => {
                return Err(Problem::new(
                    "log_directory is relative to the data directory, which this role cannot see",
                    "GRANT pg_monitor TO the agent's role, or set [logs] path",
                ))
            }
        }
    }
    Ok((data_dir, log_dir, dests))
}

/// The format to read: the configured one if the server writes it, else the best the
/// server writes (structured formats need no prefix and keep every field), else the
/// stored one, else stderr.
fn choose_format(
    wanted: Option<Format>,
    available: &[Format],
    saved: &Saved,
) -> Result<Format, Problem> {
    match wanted {
        Some(f) if !available.is_empty() && !available.contains(&f) => Err(Problem::new(
            format!(
                "[logs] format is {} but the server's log_destination has no {}",
                f.as_str(),
                f.as_str()
            ),
            "add it to log_destination, or set [logs] format = \"auto\"",
        )),
        Some(f) => Ok(f),
        None => Ok([Format::Json, Format::Csv, Format::Stderr]
            .into_iter()
            .find(|f| available.contains(f))
            .or_else(|| saved_format(saved))
            .unwrap_or(Format::Stderr)),
    }
}

/// When Debian's log directory has logs, say so.
fn debian_hint(newest: Option<&Path>) -> String {
    match newest {
        Some(p) => format!(
            " — here probably {} (readable by group adm; rotated with copytruncate, which the agent follows)",
            p.display()
        ),
        None => String::new(),
    }
}

/// The format of the newest log-like file in `dir`.
fn newest_format(dir: &Path) -> Option<Format> {
    [Format::Json, Format::Csv, Format::Stderr]
        .into_iter()
        .filter_map(|f| {
            Locator::Dir {
                dir: dir.to_path_buf(),
                format: f,
            }
            .current()
            .map(|c| (c.mtime, f))
        })
        .max_by_key(|(t, _)| *t)
        .map(|(_, f)| f)
}

/// Reads the server's logging settings (a short connection of its own).
pub async fn server_settings(db: &Db) -> Result<ServerSettings, DbError> {
    let conn = db.connect_once().await?;
    let rows = conn
        .query(
            "SELECT name, setting FROM pg_catalog.pg_settings WHERE name = ANY($1)",
            &[&vec![
                "data_directory",
                "log_directory",
                "logging_collector",
                "log_destination",
                "log_line_prefix",
                "lc_messages",
                "log_timezone",
            ]],
        )
        .await
        .map_err(DbError::query)?;
    let mut s = ServerSettings::default();
    for r in rows {
        let name: String = r.try_get(0).map_err(DbError::query)?;
        let v: Option<String> = r.try_get(1).map_err(DbError::query)?;
        match name.as_str() {
            "data_directory" => s.data_dir = v,
            "log_directory" => s.log_dir = v,
            "logging_collector" => s.logging_collector = v.as_deref() == Some("on"),
            "log_destination" => {
                s.destinations = v
                    .unwrap_or_default()
                    .split(',')
                    .map(|d| d.trim().to_string())
                    .collect()
            }
            "log_line_prefix" => s.prefix = v,
            "lc_messages" => s.lc_messages = v,
            "log_timezone" => s.timezone = v,
            _ => {}
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::StartAt;
    use crate::sql::redact::Redact;

    fn cfg(path: &str, format: &str) -> LogsConfig {
        LogsConfig {
            path: path.into(),
            format: Format::parse(format).expect("a format"),
            prefix: String::new(),
            redact: Redact::None,
            start_at: StartAt::End,
            syslog_ident: String::new(),
            syslog_host: String::new(),
        }
    }

    #[test]
    fn the_files_decide_the_format_when_the_config_and_server_do_not() {
        let dir = Facts {
            path_is_dir: true,
            newest_in_path: Some(Format::Json),
            ..Default::default()
        };
        let p = plan(&cfg("/logs", "auto"), None, &Saved::default(), &dir).expect("plan");
        assert_eq!(p.format, Format::Json);
        assert_eq!(
            p.locator,
            Locator::Dir {
                dir: "/logs".into(),
                format: Format::Json
            }
        );
        // The config wins over the files.
        let p = plan(&cfg("/logs", "csvlog"), None, &Saved::default(), &dir).expect("plan");
        assert_eq!(p.format, Format::Csv);
        // The server lists jsonlog in current_logfiles though log_destination says
        // only stderr (changed without a reload): jsonlog is followed.
        let server = ServerSettings {
            data_dir: Some("/pg/data".into()),
            log_dir: Some("/pg/log".into()),
            logging_collector: true,
            destinations: vec!["stderr".into()],
            ..Default::default()
        };
        let current = Facts {
            current: vec![Format::Json],
            ..Default::default()
        };
        let p = plan(&cfg("", "auto"), Some(&server), &Saved::default(), &current).expect("plan");
        assert_eq!(p.format, Format::Json);
        // Without the collector, Debian's log is named in the fix.
        let off = ServerSettings {
            logging_collector: false,
            ..server
        };
        let debian = Facts {
            debian_log: Some("/var/log/postgresql/postgresql-15-main.log".into()),
            ..Default::default()
        };
        let e = plan(&cfg("", "auto"), Some(&off), &Saved::default(), &debian).unwrap_err();
        assert!(
            e.fix.starts_with("set [logs] path to that file — here probably /var/log/postgresql/postgresql-15-main.log"),
            "{e:?}"
        );
    }

    #[test]
    fn plans() {
        let server = ServerSettings {
            data_dir: Some("/pg/data".into()),
            log_dir: Some("log".into()),
            logging_collector: true,
            destinations: vec!["stderr".into(), "csvlog".into()],
            prefix: Some("%m [%p] %a ".into()),
            ..Default::default()
        };
        let p = plan(
            &cfg("", "auto"),
            Some(&server),
            &Saved::default(),
            &Facts::default(),
        )
        .expect("plan");
        assert_eq!(p.format, Format::Csv);
        assert_eq!(p.prefix, "%m [%p] %a ");
        assert_eq!(
            p.locator,
            Locator::Server {
                data_dir: "/pg/data".into(),
                log_dir: "/pg/data/log".into(),
                format: Format::Csv
            }
        );
        let p = plan(
            &cfg("", "stderr"),
            Some(&server),
            &Saved::default(),
            &Facts::default(),
        )
        .expect("plan");
        assert_eq!(p.format, Format::Stderr);
        let e = plan(
            &cfg("", "jsonlog"),
            Some(&server),
            &Saved::default(),
            &Facts::default(),
        )
        .unwrap_err();
        assert!(e.reason.contains("log_destination has no jsonlog"), "{e:?}");
        let off = ServerSettings {
            logging_collector: false,
            ..server.clone()
        };
        assert!(plan(
            &cfg("", "auto"),
            Some(&off),
            &Saved::default(),
            &Facts::default()
        )
        .unwrap_err()
        .reason
        .contains("logging_collector"));
        // Database down: what was stored last time is enough to go on.
        let e = plan(&cfg("", "auto"), None, &Saved::default(), &Facts::default()).unwrap_err();
        assert!(e.fix.contains("[logs] path"), "{e:?}");
        let saved = Saved {
            format: Some("stderr".into()),
            prefix: Some("%t ".into()),
            data_dir: Some("/pg/data".into()),
            log_dir: Some("/pg/data/log".into()),
            position: None,
        };
        let p = plan(&cfg("", "auto"), None, &saved, &Facts::default()).expect("plan");
        assert_eq!((p.format, p.prefix.as_str()), (Format::Stderr, "%t "));
        let c = cfg("/var/log/pg.csv", "auto");
        let facts = Facts::gather(&c, None, &Saved::default());
        assert_eq!(facts.sniffed, Some(Format::Csv), "by its name");
        let p = plan(&c, None, &Saved::default(), &facts).expect("plan");
        assert_eq!(p.format, Format::Csv);
        assert_eq!(p.prefix, DEFAULT_PREFIX);
    }
}
