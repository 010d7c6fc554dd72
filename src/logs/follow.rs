//! Following the server log without an actor: [`Follower`] keeps the plan (where the
//! log is, its format and prefix), the parser and the tailer, reads the next batch when
//! asked and turns its messages into events with the position to store with them. The
//! log actor only schedules it, asks the server for its settings and hands batches to
//! the spool.

use chrono::Utc;
use slog::{info, warn, Logger};

use super::locate::Locator;
use super::plan::{plan, Facts, Plan, Saved, ServerSettings};
use super::tail::{Note, Position, Tailer};
use super::{LogParser, OwnSessions, Shaper};
use crate::access::Who;
use crate::config::{Config, LogsConfig};
use crate::model::{Checkpoint, Event, LogReaderStats, Problem, SourceState};

/// Name of the position checkpoint in the spool.
pub const CHECKPOINT: &str = "pg_log.position";
/// Messages per batch.
const BATCH_MAX: usize = 2000;

/// A batch read from the log.
#[derive(Debug)]
pub struct Read {
    /// Its events (the agent's own sessions left out).
    pub events: Vec<Event>,
    /// The position after it, to store with the events.
    pub checkpoint: Option<Checkpoint>,
    /// The same position (where the reader is after this batch).
    pub position: Option<Position>,
    /// More is ready to read right away.
    pub more: bool,
}

/// What a poll found.
#[derive(Debug)]
pub enum Polled {
    /// There is no plan yet (the server has not been asked, or the log cannot be found).
    NoPlan,
    /// The log cannot be read now; `error` when reading failed (the log may have moved:
    /// ask the server again).
    Unavailable {
        /// The reader's error, if one occurred.
        error: Option<String>,
    },
    /// Nothing new.
    Idle {
        /// More is ready (look again at once).
        more: bool,
    },
    /// A batch to hand to the spool.
    Read(Read),
}

/// Follows the server log.
pub struct Follower {
    logs: LogsConfig,
    shaper: Shaper,
    /// The agent's own sessions, left out of what is shipped.
    own: OwnSessions,
    server: Option<ServerSettings>,
    saved: Saved,
    active: Option<(Plan, LogParser, Tailer)>,
    warned_prefix: Option<String>,
    /// The message language the log shows, until it is judged.
    language: Option<super::record::Language>,
    /// A stored batch's vector, filled again by the next read ([`Follower::recycle`]).
    spare: Vec<Event>,
    /// Counters and state for status.
    pub stats: LogReaderStats,
    log: Logger,
}

impl Follower {
    /// A follower for `config`, resuming from what was stored.
    pub fn new(config: &Config, saved: Saved, log: Logger) -> Follower {
        Follower {
            logs: config.logs.clone(),
            shaper: Shaper::new(
                config.correlation.application_name_pattern.clone(),
                config.logs.redact,
            ),
            own: OwnSessions {
                user: config.database.user.clone(),
            },
            server: None,
            saved,
            active: None,
            language: Some(Default::default()),
            warned_prefix: None,
            spare: Vec::new(),
            stats: LogReaderStats::default(),
            log,
        }
    }

    /// Shares the auto_explain plans read with pg_plans (see [`Shaper::plan_shapes`]).
    pub fn share_plans(mut self, shapes: std::sync::Arc<crate::model::PlanShapes>) -> Follower {
        self.shaper.plan_shapes = Some(shapes);
        self
    }

    /// The database is asked only when the config leaves something to it.
    pub fn needs_server(&self) -> bool {
        self.logs.path.is_empty()
            || (self.logs.prefix.is_empty()
                && !matches!(
                    self.logs.format,
                    Some(super::Format::Csv | super::Format::Json)
                ))
    }

    /// True when a plan is in use.
    pub fn has_plan(&self) -> bool {
        self.active.is_some()
    }

    /// The server's current log settings; a change is logged and may change the plan.
    pub fn server_settings(&mut self, s: ServerSettings) {
        if self.server.as_ref() != Some(&s) {
            info!(self.log, "log_settings_read";
                "logging_collector" => s.logging_collector,
                "log_destination" => s.destinations.join(","),
                "log_line_prefix" => s.prefix.as_deref().unwrap_or(""),
                "log_directory" => s.log_dir.as_deref().unwrap_or(""));
        }
        // The server's language, tried before the others are guessed at.
        if let Some(lc) = s.lc_messages.as_deref() {
            self.shaper.languages.prefer_locale(lc);
        }
        self.server = Some(s);
    }

    /// Builds (or rebuilds, when the plan changed) the parser and tailer.
    pub fn replan(&mut self) {
        let facts = Facts::gather(&self.logs, self.server.as_ref(), &self.saved);
        let p = match plan(&self.logs, self.server.as_ref(), &self.saved, &facts) {
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
            // After the last batch read: every batch read is in the spool or on its
            // way there (the actor hands over each one, in order), so reading it again
            // would ship it twice.
            Some((_, _, t)) => self.saved.position.clone().or_else(|| t.position()),
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
        let start = self.logs.start_at;
        self.active = Some((p.clone(), parser, Tailer::new(p.locator, resume, start)));
    }

    fn set_state(&mut self, s: SourceState) {
        crate::model::note_state(&self.log, &mut self.stats.source_state, Some(s));
    }

    /// Reads the next batch.
    pub fn poll(&mut self) -> Polled {
        let Some((plan, parser, tailer)) = self.active.as_mut() else {
            return Polled::NoPlan;
        };
        let poll = match tailer.poll(parser, BATCH_MAX) {
            Ok(p) => p,
            Err(e) => {
                let problem = match plan.locator.permission_problem(&Who::current()) {
                    Some((problem, fix)) => Problem::new(problem, fix),
                    None => Problem::new(
                        format!("cannot read the log: {e}"),
                        format!(
                            "let the agent's user read {} — e.g. add it to the postgres group — or set [logs] path",
                            plan.locator.describe()
                        ),
                    ),
                };
                self.set_state(SourceState::Unavailable(problem));
                return Polled::Unavailable {
                    error: Some(e.to_string()),
                };
            }
        };
        let (format, describe) = (plan.format, plan.locator.describe());
        self.stats.tail = tailer.stats.clone();
        for n in &poll.notes {
            self.note(n);
        }
        let Some(position) = &poll.position else {
            let denied = self
                .active
                .as_ref()
                .and_then(|(plan, _, _)| plan.locator.permission_problem(&Who::current()));
            let problem = match denied {
                Some((problem, fix)) => Problem::new(problem, fix),
                None => Problem::new(
                    format!("no log file found ({describe})"),
                    "check log_directory / [logs] path",
                ),
            };
            self.set_state(SourceState::Unavailable(problem));
            return Polled::Unavailable { error: None };
        };
        self.set_state(SourceState::Working(format!(
            "following {} ({})",
            position.path,
            format.as_str()
        )));
        let now = Utc::now();
        let identity = position.identity();
        let file = position.path.clone();
        if let Some(lang) = self.language.as_mut() {
            lang.count(&poll.records);
            if let Some(localized) = lang.judge() {
                if localized {
                    let lc = self.server.as_ref().and_then(|s| s.lc_messages.clone());
                    warn!(self.log, "log_messages_localized";
                        "lc_messages" => lc.unwrap_or_default(),
                        "label" => lang.example.clone().unwrap_or_default(),
                        "records" => lang.english + lang.other,
                        "translated" => lang.other,
                        "effect" => "the server writes its messages in a language the agent's catalogue does not have: they are classified by SQLSTATE only (add %e to log_line_prefix, or set lc_messages = 'C' for text classification)");
                }
                self.language = None;
            }
        }
        let mut events = std::mem::take(&mut self.spare);
        events.reserve(poll.records.len());
        let mut records = poll.records;
        for r in records.drain(..) {
            if self.own.owns(&r) {
                self.stats.own_events_skipped_total += 1;
                continue;
            }
            let seen = &mut self.stats.insights;
            events.push(self.shaper.event(r, &file, format, &identity, now, seen));
        }
        // Kept while the reader is behind (a catch-up reads batch after batch); once
        // it has caught up the vectors go, so a burst leaves no megabyte behind.
        if let (true, Some((_, _, tailer))) = (poll.more, self.active.as_mut()) {
            tailer.recycle(records);
        }
        // Compared with the last batch read, not the last one stored: the next batch
        // may be read while the last is on its way to the spool.
        let moved = poll.position != self.saved.position;
        if events.is_empty() && !moved {
            return Polled::Idle { more: poll.more };
        }
        self.saved.position = poll.position.clone();
        let checkpoint = serde_json::to_vec(&self.saved)
            .ok()
            .map(|value| Checkpoint::value(CHECKPOINT, value));
        self.stats.pending_events += events.len();
        Polled::Read(Read {
            events,
            checkpoint,
            position: poll.position,
            more: poll.more,
        })
    }

    /// Takes back the vector of a batch the spool stored: the next read fills it while
    /// `behind` (more is waiting to be read); otherwise it is freed, with any kept.
    pub fn recycle(&mut self, mut events: Vec<Event>, behind: bool) {
        if !behind {
            self.spare = Vec::new();
            return;
        }
        events.clear();
        if events.capacity() > self.spare.capacity() {
            self.spare = events;
        }
    }

    /// The spool took the oldest batch read and not taken yet, of `events` events.
    pub fn committed(&mut self, events: usize) {
        self.stats.events_total += events as u64;
        self.stats.pending_events = self.stats.pending_events.saturating_sub(events);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::DEFAULT_PREFIX;

    fn follower(dir: &std::path::Path, start_at: &str) -> Follower {
        let toml = format!(
            "[agent]\nproject_id='p'\n[logs]\npath='{}'\nformat='stderr'\nprefix='{DEFAULT_PREFIX}'\nstart_at='{start_at}'\n",
            dir.join("pg.log").display()
        );
        let config = crate::config::parse_str(&toml).expect("valid");
        Follower::new(
            &config,
            Saved::default(),
            slog::Logger::root(slog::Discard, slog::o!()),
        )
    }

    fn line(pid: u32, msg: &str) -> String {
        format!("2026-12-01 10:00:00.000 UTC [{pid}] LOG:  {msg}\n")
    }

    #[test]
    fn batch_vectors_are_kept_while_the_reader_is_behind_and_freed_once_it_caught_up() {
        let d = tempfile::tempdir().expect("tmp");
        let path = d.path().join("pg.log");
        let log: String = (0..2_500).map(|i| line(i, &format!("m{i}"))).collect();
        std::fs::write(&path, log).expect("write");
        let mut f = follower(d.path(), "beginning");
        f.replan();
        let held = |f: &Follower| f.active.as_ref().map_or(0, |a| a.2.spare_capacity());
        let Polled::Read(r) = f.poll() else {
            panic!("a batch")
        };
        assert!(r.more);
        assert_eq!(r.events.len(), BATCH_MAX);
        assert!(held(&f) >= BATCH_MAX, "records kept: {}", held(&f));
        f.committed(r.events.len());
        f.recycle(r.events, true);
        assert!(f.spare.capacity() >= BATCH_MAX);
        let mut total = BATCH_MAX;
        let mut ids = std::collections::HashSet::new();
        for _ in 0..4 {
            if let Polled::Read(r) = f.poll() {
                total += r.events.len();
                ids.extend(r.events.iter().map(|e| e.id.clone()));
                f.committed(r.events.len());
                f.recycle(r.events, r.more);
            }
        }
        assert_eq!(total, 2_500, "every message once");
        assert_eq!(ids.len(), 500);
        assert!(matches!(f.poll(), Polled::Idle { more: false }));
        assert_eq!(held(&f), 0, "records freed once caught up");
        assert_eq!(f.spare.capacity(), 0, "events freed once caught up");
    }

    #[test]
    fn a_batch_is_read_once_committed_and_the_next_starts_after_it() {
        let d = tempfile::tempdir().expect("tmp");
        let path = d.path().join("pg.log");
        std::fs::write(&path, line(1, "one") + &line(2, "two")).expect("write");
        let mut f = follower(d.path(), "beginning");
        assert!(
            !f.needs_server(),
            "path, format and prefix are all configured"
        );
        assert!(matches!(f.poll(), Polled::NoPlan));
        f.replan();
        assert!(f.has_plan());
        let Polled::Read(r) = f.poll() else {
            panic!("a batch")
        };
        // The last message may still grow: it is read once the file is seen to stop.
        let mut messages: Vec<String> = r.events.iter().map(|e| e.data.get().to_string()).collect();
        let mut position = r.position.clone();
        let mut total = r.events.len();
        let checkpoint = r.checkpoint.expect("a checkpoint");
        assert_eq!(checkpoint.name, CHECKPOINT);
        let saved: Saved = serde_json::from_slice(&checkpoint.value).expect("saved");
        assert_eq!(saved.position, position);
        f.committed(r.events.len());
        for _ in 0..3 {
            if let Polled::Read(r) = f.poll() {
                messages.extend(r.events.iter().map(|e| e.data.get().to_string()));
                total += r.events.len();
                position = r.position.clone();
                f.committed(r.events.len());
            }
        }
        assert_eq!(total, 2, "{messages:?}");
        assert!(messages[0].contains("\"message\":\"one\""), "{messages:?}");
        assert!(messages[1].contains("\"message\":\"two\""), "{messages:?}");
        assert_eq!(f.stats.events_total, 2);
        assert!(matches!(f.poll(), Polled::Idle { more: false }));
        assert_eq!(
            position.map(|p| p.offset),
            Some(std::fs::metadata(&path).expect("m").len())
        );
        assert_eq!(
            f.stats.source_state.as_ref().map(ToString::to_string),
            Some(format!("following {} (stderr)", path.display()))
        );
    }

    #[test]
    fn a_batch_read_ahead_is_read_once_when_the_plan_changes_before_it_is_stored() {
        let d = tempfile::tempdir().expect("tmp");
        let path = d.path().join("pg.log");
        let lines = |from: u32, to: u32| -> String {
            (from..=to).map(|i| line(i, &format!("m{i}"))).collect()
        };
        std::fs::write(&path, lines(1, 3)).expect("write");
        // No prefix configured: the server's log_line_prefix makes the plan.
        let toml = format!(
            "[agent]\nproject_id='p'\n[logs]\npath='{}'\nformat='stderr'\nstart_at='beginning'\n",
            path.display()
        );
        let config = crate::config::parse_str(&toml).expect("valid");
        let mut f = Follower::new(
            &config,
            Saved::default(),
            slog::Logger::root(slog::Discard, slog::o!()),
        );
        assert!(f.needs_server());
        let server = |prefix: &str| ServerSettings {
            prefix: Some(prefix.to_string()),
            ..Default::default()
        };
        f.server_settings(server(DEFAULT_PREFIX));
        f.replan();
        let mut seen = vec![];
        let mut read = |f: &mut Follower| -> usize {
            let Polled::Read(r) = f.poll() else { return 0 };
            seen.extend(r.events.iter().map(|e| {
                let v: serde_json::Value = serde_json::from_str(e.data.get()).expect("json");
                v["message"].as_str().expect("message").to_string()
            }));
            r.events.len()
        };
        // The first three, each batch stored.
        for _ in 0..4 {
            let n = read(&mut f);
            f.committed(n);
        }
        assert_eq!(f.stats.events_total, 3);
        // A batch read and not stored yet (the actor reads one ahead while the spool
        // stores the last)…
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut w| std::io::Write::write_all(&mut w, lines(4, 6).as_bytes()))
            .expect("append");
        let ahead = read(&mut f);
        assert!(ahead > 0, "m4 and m5 (m6 may still grow)");
        assert_eq!(f.stats.pending_events, ahead);
        // …then the server's prefix changes: the new parser and tailer go on after what
        // was read, not after what was stored (that would read the batch twice).
        f.server_settings(server("%m [%p] %q"));
        f.replan();
        let mut rest = 0;
        for _ in 0..4 {
            rest += read(&mut f);
        }
        assert_eq!(seen, (1..=6).map(|i| format!("m{i}")).collect::<Vec<_>>());
        assert_eq!(
            f.stats.pending_events, 3,
            "none of the last three stored yet"
        );
        f.committed(ahead);
        f.committed(rest);
        assert_eq!((f.stats.pending_events, f.stats.events_total), (0, 6));
        assert!(matches!(f.poll(), Polled::Idle { more: false }));
    }

    #[test]
    fn a_missing_log_is_unavailable_with_its_fix() {
        let d = tempfile::tempdir().expect("tmp");
        let mut f = follower(d.path(), "end");
        f.replan();
        assert!(matches!(f.poll(), Polled::Unavailable { error: None }));
        let Some(SourceState::Unavailable(p)) = &f.stats.source_state else {
            panic!("{:?}", f.stats.source_state)
        };
        assert!(p.reason.starts_with("no log file found"), "{p:?}");
        assert_eq!(p.fix, "check log_directory / [logs] path");
    }
}
