//! The log tailer actor: asks the server where its log is and how it is written, then
//! polls the tailer, hands each batch of events to the spool together with the position
//! after it (one SQLite transaction), and reads the next batch only once the spool has
//! taken the last. Memory stays at one batch however far behind the reader is; nothing
//! read is dropped while the spool is away.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use slog::{info, warn, Logger};

use super::locate::{current_formats, Locator};
use super::tail::{Note, Position, Tailer};
use super::{Format, LogParser, OwnSessions, Shaper, DEFAULT_PREFIX};
use crate::buffer::handoff::{hand_over, Handed, Handoff, HandsOver};
use crate::buffer::{self, BufferActor};
use crate::collector::cycle_limit;
use crate::config::{Config, LogsConfig};
use crate::db::{Db, DbError};
use crate::fault;
use crate::model::{
    Checkpoint, ChildDetail, ExitGuard, Health, LogStats, Ping, Problem, Route, SourceState,
};

/// Name of the position checkpoint in the spool.
pub const CHECKPOINT: &str = "pg_log.position";
/// The source's name (in loss reports).
const SOURCE: &str = "pg_log";
/// Wait between polls when the reader is at the end of the log.
const POLL: Duration = Duration::from_millis(200);
/// How often the server's log settings are asked again.
const SETTINGS_EVERY: Duration = Duration::from_secs(600);
/// After a failure to find the log or to ask the server.
const RETRY: Duration = Duration::from_secs(5);
/// Messages per batch.
const BATCH_MAX: usize = 2000;

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

/// Works out where the log is and how to parse it from the config, the server's
/// settings (when it was reachable) and what was stored last time. `Err` says why the
/// log cannot be read, with the fix.
pub fn plan(
    cfg: &LogsConfig,
    server: Option<&ServerSettings>,
    saved: &Saved,
) -> Result<Plan, Problem> {
    let wanted = cfg.format;
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
        let p = PathBuf::from(&cfg.path);
        if p.is_dir() {
            let format = wanted
                .or_else(|| newest_format(&p))
                .or_else(|| {
                    saved
                        .format
                        .as_deref()
                        .and_then(|f| Format::parse(f).ok().flatten())
                })
                .unwrap_or(Format::Stderr);
            return Ok(Plan {
                locator: Locator::Dir { dir: p, format },
                format,
                prefix,
            });
        }
        let format = wanted.unwrap_or_else(|| Format::sniff(&p, &crate::logs::head(&p)));
        return Ok(Plan {
            locator: Locator::File(p),
            format,
            prefix,
        });
    }
    let (data_dir, log_dir, dests) = match server {
        Some(s) => {
            if !s.logging_collector {
                return Err(Problem::new(
                    "the server runs without logging_collector, so its log goes wherever its stderr goes",
                    format!(
                        "set [logs] path to that file{}, or turn logging_collector on",
                        debian_hint()
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
    let mut available: Vec<Format> = dests
        .iter()
        .filter_map(|d| Format::parse(d).ok().flatten())
        .collect();
    if let Some(d) = &data_dir {
        available.extend(current_formats(Path::new(d)));
    }
    let format = match wanted {
        Some(f) => {
            if !available.is_empty() && !available.contains(&f) {
                return Err(Problem::new(
                    format!(
                        "[logs] format is {} but the server's log_destination has no {}",
                        f.as_str(),
                        f.as_str()
                    ),
                    "add it to log_destination, or set [logs] format = \"auto\"",
                ));
            }
            f
        }
        // Structured formats need no prefix and keep every field: prefer them.
        None => [Format::Json, Format::Csv, Format::Stderr]
            .into_iter()
            .find(|f| available.contains(f))
            .or_else(|| {
                saved
                    .format
                    .as_deref()
                    .and_then(|f| Format::parse(f).ok().flatten())
            })
            .unwrap_or(Format::Stderr),
    };
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

/// Debian and Ubuntu clusters (pg_ctlcluster) log to /var/log/postgresql without the
/// logging collector; when that directory has logs, say so.
fn debian_hint() -> String {
    let dir = Path::new("/var/log/postgresql");
    let newest = Locator::Dir {
        dir: dir.to_path_buf(),
        format: Format::Stderr,
    }
    .current();
    match newest {
        Some(c) => format!(
            " — here probably {} (readable by group adm; rotated with copytruncate, which the agent follows)",
            c.path.display()
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

/// Where a batch on its way to the spool leaves the reader.
struct Waiting {
    position: Option<Position>,
    /// More was ready to read right after it.
    more: bool,
}

/// Follows the server log.
pub struct LogTailActor {
    logs: LogsConfig,
    db: Rc<Db>,
    limit: Duration,
    shaper: Shaper,
    /// The agent's own sessions, left out of what is shipped.
    own: OwnSessions,
    /// Why the server's log settings could not be read last time (logged once).
    settings_error: Option<String>,
    buffer: Route<BufferActor>,
    server: Option<ServerSettings>,
    settings_due: Instant,
    asking: bool,
    saved: Saved,
    active: Option<(Plan, LogParser, Tailer)>,
    committed: Option<Position>,
    /// The batch read last, on its way to the spool (one at a time: nothing more is
    /// read until the spool took it).
    handoff: Handoff,
    waiting: Option<Waiting>,
    stats: LogStats,
    progress: Instant,
    last_success: Option<chrono::DateTime<Utc>>,
    last_error: Option<String>,
    warned_prefix: Option<String>,
    log: Logger,
    _guard: ExitGuard,
}

impl LogTailActor {
    /// Builds the actor; reads the stored position from the spool.
    pub fn new(
        config: &Config,
        buffer: Route<BufferActor>,
        log: Logger,
        guard: ExitGuard,
    ) -> LogTailActor {
        let saved: Saved = buffer::read_checkpoint(&config.agent.state_dir, CHECKPOINT)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        LogTailActor {
            logs: config.logs.clone(),
            db: Rc::new(Db::new(&config.database, 1, &log)),
            limit: cycle_limit(&config.database),
            shaper: Shaper {
                pattern: config.correlation.application_name_pattern.clone(),
                redact: config.logs.redact,
            },
            own: OwnSessions {
                user: config.database.user.clone(),
            },
            settings_error: None,
            buffer,
            server: None,
            settings_due: Instant::now(),
            asking: false,
            committed: saved.position.clone(),
            saved,
            active: None,
            handoff: Handoff::new(SOURCE, &config.agent.hostname, usize::MAX),
            waiting: None,
            stats: LogStats::default(),
            progress: Instant::now(),
            last_success: None,
            last_error: None,
            warned_prefix: None,
            log,
            _guard: guard,
        }
    }

    /// The database is asked only when the config leaves something to it.
    fn needs_server(&self) -> bool {
        self.logs.path.is_empty()
            || (self.logs.prefix.is_empty()
                && !matches!(self.logs.format, Some(Format::Csv | Format::Json)))
    }

    fn ask_server(&mut self, ctx: &mut Context<Self>) {
        self.asking = true;
        let db = self.db.clone();
        let limit = self.limit;
        let fut = async move {
            match tokio::time::timeout(limit, server_settings(&db)).await {
                Ok(r) => r,
                Err(_) => Err(DbError::Timeout(limit)),
            }
        };
        ctx.spawn(fut.into_actor(self).map(|res, act, _| {
            act.asking = false;
            match res {
                Ok(s) => {
                    act.settings_error = None;
                    act.settings_due = Instant::now() + SETTINGS_EVERY;
                    if act.server.as_ref() != Some(&s) {
                        info!(act.log, "log_settings_read";
                            "logging_collector" => s.logging_collector,
                            "log_destination" => s.destinations.join(","),
                            "log_line_prefix" => s.prefix.as_deref().unwrap_or(""),
                            "log_directory" => s.log_dir.as_deref().unwrap_or(""));
                        if let Some(lc) = s.lc_messages.as_deref() {
                            if !(lc.is_empty() || lc == "C" || lc == "POSIX" || lc.starts_with("en")) {
                                warn!(act.log, "log_messages_localized"; "lc_messages" => lc,
                                    "effect" => "messages are classified by SQLSTATE only; set lc_messages = 'C' for text classification");
                            }
                        }
                    }
                    act.server = Some(s);
                }
                Err(e) => {
                    act.settings_due = Instant::now() + RETRY;
                    // Once per distinct reason, at warning level: it is why no log is read.
                    let why = e.to_string();
                    if act.settings_error.as_deref() != Some(why.as_str()) {
                        warn!(act.log, "log_settings_unavailable"; "error" => &why);
                        act.settings_error = Some(why);
                    }
                }
            }
            act.replan();
        }));
    }

    /// Builds (or rebuilds, when the plan changed) the parser and tailer.
    fn replan(&mut self) {
        let p = match plan(&self.logs, self.server.as_ref(), &self.saved) {
            Ok(p) => p,
            Err(e) => {
                if self.active.is_none() {
                    self.set_state(SourceState::Unavailable(e));
                }
                return;
            }
        };
        if self.active.as_ref().is_some_and(|(old, _, _)| *old == p) {
            return;
        }
        let resume = match &self.active {
            Some((_, _, t)) => self.committed.clone().or_else(|| t.position()),
            None => self.saved.position.clone(),
        };
        let parser = LogParser::new(p.format, &p.prefix);
        if let LogParser::Stderr(s) = &parser {
            if self.warned_prefix.as_deref() != Some(p.prefix.as_str()) {
                let missing = s.prefix().shortcomings();
                if !missing.is_empty() {
                    warn!(self.log, "log_prefix_incomplete"; "prefix" => &p.prefix, "missing" => missing.join("; "));
                }
                self.warned_prefix = Some(p.prefix.clone());
            }
        }
        let start = self.logs.start_at;
        info!(self.log, "log_source_planned"; "follows" => p.locator.describe(),
            "format" => p.format.as_str(), "prefix" => &p.prefix);
        self.stats.format = Some(p.format);
        self.stats.prefix = parser.prefix().map(str::to_string);
        self.saved.format = Some(p.format.as_str().to_string());
        self.saved.prefix = Some(p.prefix.clone());
        if let Locator::Server {
            data_dir, log_dir, ..
        } = &p.locator
        {
            self.saved.data_dir = Some(data_dir.display().to_string());
            self.saved.log_dir = Some(log_dir.display().to_string());
        }
        self.set_state(SourceState::Working(format!(
            "following {} ({})",
            p.locator.describe(),
            p.format.as_str()
        )));
        self.active = Some((p.clone(), parser, Tailer::new(p.locator, resume, start)));
    }

    fn set_state(&mut self, s: SourceState) {
        crate::sources::note_state(&self.log, &mut self.stats.source_state, Some(s));
    }

    /// One poll: read, shape, hand over; then schedule the next.
    fn step(&mut self, ctx: &mut Context<Self>) {
        self.progress = Instant::now();
        if let Some(f) = fault::take("pg_log") {
            fault::inject("pg_log", f);
        }
        if self.needs_server() && !self.asking && Instant::now() >= self.settings_due {
            self.ask_server(ctx);
        }
        if self.active.is_none() && !self.asking {
            self.replan();
        }
        let Some((plan, parser, tailer)) = self.active.as_mut() else {
            // While the server is being asked, look again soon.
            let wait = if self.asking { POLL } else { RETRY };
            ctx.run_later(wait, |a, ctx| a.step(ctx));
            return;
        };
        let poll = match tailer.poll(parser, BATCH_MAX) {
            Ok(p) => p,
            Err(e) => {
                let problem = Problem::new(
                    format!("cannot read the log: {e}"),
                    format!(
                        "let the agent's user read {} — e.g. add it to the postgres group — or set [logs] path",
                        plan.locator.describe()
                    ),
                );
                self.last_error = Some(e.to_string());
                self.set_state(SourceState::Unavailable(problem));
                // Ask the server again: the log may have moved.
                self.settings_due = Instant::now();
                ctx.run_later(RETRY, |a, ctx| a.step(ctx));
                return;
            }
        };
        let format = plan.format;
        self.stats.tail = tailer.stats.clone();
        for n in &poll.notes {
            self.note(n);
        }
        if poll.position.is_none() && self.waiting.is_none() {
            self.set_state(SourceState::Unavailable(Problem::new(
                format!(
                    "no log file found ({})",
                    self.active
                        .as_ref()
                        .map(|a| a.0.locator.describe())
                        .unwrap_or_default()
                ),
                "check log_directory / [logs] path",
            )));
            ctx.run_later(RETRY, |a, ctx| a.step(ctx));
            return;
        }
        if let Some(p) = &poll.position {
            let desc = self
                .active
                .as_ref()
                .map(|a| a.0.format.as_str())
                .unwrap_or("");
            self.set_state(SourceState::Working(format!(
                "following {} ({desc})",
                p.path
            )));
        }
        let now = Utc::now();
        let identity = poll
            .position
            .as_ref()
            .map(Position::identity)
            .unwrap_or_default();
        let file = poll
            .position
            .as_ref()
            .map(|p| p.path.clone())
            .unwrap_or_default();
        let mut events = Vec::with_capacity(poll.records.len());
        for r in poll.records {
            if self.own.owns(&r) {
                self.stats.own_events_skipped_total += 1;
                continue;
            }
            match self.shaper.event(r, &file, format, &identity, now) {
                Ok(e) => events.push(e),
                Err(e) => warn!(self.log, "log_event_encode_failed"; "error" => %e),
            }
        }
        let moved = poll.position.is_some() && poll.position != self.committed;
        if events.is_empty() && !moved {
            let wait = if poll.more { Duration::ZERO } else { POLL };
            ctx.run_later(wait, |a, ctx| a.step(ctx));
            return;
        }
        self.saved.position = poll.position.clone();
        let checkpoint = serde_json::to_vec(&self.saved)
            .ok()
            .map(|value| Checkpoint {
                name: CHECKPOINT.to_string(),
                value,
            });
        self.stats.pending_events = events.len();
        self.handoff.keep(events, checkpoint);
        self.waiting = Some(Waiting {
            position: poll.position,
            more: poll.more,
        });
        hand_over(self, ctx);
    }

    fn note(&mut self, n: &Note) {
        match n {
            Note::Opened {
                path,
                offset,
                resumed,
            } => {
                info!(self.log, "log_file_opened"; "file" => path, "offset" => offset, "resumed" => resumed)
            }
            Note::Rotated { from, to } => {
                info!(self.log, "log_rotation_detected"; "from" => from, "to" => to)
            }
            Note::Truncated { path, offset, copy } => {
                warn!(self.log, "log_truncation_detected"; "file" => path, "offset" => offset,
                    "copy" => copy.as_deref().unwrap_or(""))
            }
            Note::Closed { path } => {
                info!(self.log, "log_file_closed"; "file" => path, "reason" => "deleted")
            }
            Note::Lost { path } => warn!(self.log, "log_position_lost"; "file" => path,
                "effect" => "the stored file is gone; reading the current file from its start"),
        }
    }
}

impl HandsOver for LogTailActor {
    fn handoff(&mut self) -> &mut Handoff {
        &mut self.handoff
    }

    fn spool(&self) -> &Route<BufferActor> {
        &self.buffer
    }

    fn log(&self) -> &Logger {
        &self.log
    }

    /// Reading resumes once the spool took the batch.
    fn handed(&mut self, outcome: &Handed, ctx: &mut Context<Self>) {
        self.progress = Instant::now();
        match outcome {
            Handed::Failed(e) => {
                self.stats.spool_errors_total += 1;
                self.last_error = Some(e.clone());
            }
            Handed::Delivered(n) => {
                let Some(w) = self.waiting.take() else { return };
                self.stats.events_total += *n as u64;
                self.stats.pending_events = 0;
                self.committed = w.position;
                self.last_success = Some(Utc::now());
                self.last_error = None;
                let wait = if w.more { Duration::ZERO } else { POLL };
                ctx.run_later(wait, |a, ctx| a.step(ctx));
            }
        }
    }
}

impl Actor for LogTailActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.step(ctx);
    }
}

impl Handler<Ping> for LogTailActor {
    type Result = MessageResult<Ping>;

    fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> Self::Result {
        MessageResult(Health {
            progress: self.progress,
            deadline: Some(Duration::from_secs(60) + self.limit),
            last_success: self.last_success,
            last_error: self.last_error.clone(),
            detail: ChildDetail::Log(self.stats.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::redact::Redact;
    use crate::logs::tail::StartAt;

    fn cfg(path: &str, format: &str) -> LogsConfig {
        LogsConfig {
            path: path.into(),
            format: Format::parse(format).expect("a format"),
            prefix: String::new(),
            redact: Redact::None,
            start_at: StartAt::End,
        }
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
        let p = plan(&cfg("", "auto"), Some(&server), &Saved::default()).expect("plan");
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
        let p = plan(&cfg("", "stderr"), Some(&server), &Saved::default()).expect("plan");
        assert_eq!(p.format, Format::Stderr);
        let e = plan(&cfg("", "jsonlog"), Some(&server), &Saved::default()).unwrap_err();
        assert!(e.reason.contains("log_destination has no jsonlog"), "{e:?}");
        let off = ServerSettings {
            logging_collector: false,
            ..server.clone()
        };
        assert!(plan(&cfg("", "auto"), Some(&off), &Saved::default())
            .unwrap_err()
            .reason
            .contains("logging_collector"));
        // Database down: what was stored last time is enough to go on.
        let e = plan(&cfg("", "auto"), None, &Saved::default()).unwrap_err();
        assert!(e.fix.contains("[logs] path"), "{e:?}");
        let saved = Saved {
            format: Some("stderr".into()),
            prefix: Some("%t ".into()),
            data_dir: Some("/pg/data".into()),
            log_dir: Some("/pg/data/log".into()),
            position: None,
        };
        let p = plan(&cfg("", "auto"), None, &saved).expect("plan");
        assert_eq!((p.format, p.prefix.as_str()), (Format::Stderr, "%t "));
        let p = plan(&cfg("/var/log/pg.csv", "auto"), None, &Saved::default()).expect("plan");
        assert_eq!(p.format, Format::Csv);
        assert_eq!(p.prefix, DEFAULT_PREFIX);
    }
}
