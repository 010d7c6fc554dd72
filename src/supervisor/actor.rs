//! The supervisor actor: owns the children, the current config, reloads and shutdown.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use slog::{error, info, warn, Logger};

use super::child::{self, ChildAddr, Running};
use super::slots::{plan_reload, Down, Pong, Slots};
use super::{RestartPolicy, HEALTH_INTERVAL, PING_TIMEOUT};
use crate::catalogue::AgentEvent;
use crate::config::Config;
use crate::db::Db;
use crate::model::{
    ChildExited, ChildId, Enqueue, FinishUp, Flush, FlushOutcome, Output, Route, ServerNo,
};
use crate::spool::SpoolActor;
use crate::status::{self, ReloadStatus, StatusSnapshot};
use crate::systemd::Systemd;

/// How often the status file is refreshed without being asked.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// SIGHUP: re-read the config file.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reload;

/// SIGUSR1 (or a timer): write the status dump.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DumpStatus {
    /// Why (`sigusr1`, `periodic`, …), recorded in the dump.
    pub trigger: &'static str,
}

/// SIGTERM/SIGINT: stop collecting, flush, exit 0.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// A second SIGTERM/SIGINT during the flush: exit now with
/// [`EXIT_CUT_SHORT`](crate::cli::EXIT_CUT_SHORT); the flush's end, which the stopping
/// children bring about, must not log an orderly stop nor change the exit code.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CutShort;

/// Starts, watches and restarts the children; handles reload, status and shutdown.
pub struct Supervisor {
    config_path: PathBuf,
    config: Config,
    spool: Route<SpoolActor>,
    /// Each server's connections, which its children borrow from (rebuilt when its
    /// `[database]` changes; the children it serves are restarted then).
    dbs: BTreeMap<ServerNo, Db>,
    /// What lasts of each server's connections (its cap, facts and board), kept for the
    /// process's life by name: a server removed and added again by reloads is under the
    /// cap its old sockets still count against.
    servers: BTreeMap<ServerNo, crate::db::Server>,
    /// The cap on every server's connections together (`[agent] max_connections`),
    /// for the process's life.
    all_connections: std::sync::Arc<crate::db::cap::Cap>,
    /// The boards the metrics page shows (every server's while `[metrics] database`).
    page_boards: std::sync::Arc<crate::metrics::PageBoards>,
    /// What is known of each child (plain, see [`Slots`]).
    slots: Slots,
    /// The threads and addresses of the children that run.
    running: BTreeMap<ChildId, Running>,
    /// Pending delayed restarts, cancelled if a reload restarts the child first.
    restart_timers: BTreeMap<ChildId, SpawnHandle>,
    shutting_down: bool,
    cut_short: bool,
    started_at: DateTime<Utc>,
    last_reload: Option<ReloadStatus>,
    last_status_write: Instant,
    systemd: Systemd,
    /// The Prometheus endpoint while `[metrics] listen` is set and could be bound.
    metrics: Option<crate::metrics::MetricsServer>,
    /// Why it could not be bound (retried every [`STATUS_EVERY`]).
    metrics_error: Option<String>,
    log: Logger,
}

impl Supervisor {
    /// A supervisor for `config`, read from `config_path` (re-read on reload). Fails
    /// when a server's connection thread cannot start.
    pub fn new(config_path: PathBuf, config: Config, log: Logger) -> std::io::Result<Supervisor> {
        let mut s = Supervisor {
            config_path,
            config: config.clone(),
            spool: Route::default(),
            dbs: BTreeMap::new(),
            servers: BTreeMap::new(),
            all_connections: crate::db::cap::Cap::new(config.agent.max_connections),
            page_boards: Default::default(),
            slots: Slots::new(RestartPolicy::default()),
            running: BTreeMap::new(),
            restart_timers: BTreeMap::new(),
            shutting_down: false,
            cut_short: false,
            started_at: Utc::now(),
            last_reload: None,
            last_status_write: Instant::now(),
            systemd: Systemd::from_env(),
            metrics: None,
            metrics_error: None,
            log,
        };
        s.connect(&config)?;
        Ok(s)
    }

    /// Makes each server of `config` its connections: a new pool for a server that is
    /// new or whose `[database]` changed (the old one retired, its sockets still under
    /// the server's cap), none for a server removed.
    fn connect(&mut self, config: &Config) -> std::io::Result<()> {
        self.all_connections.set_max(config.agent.max_connections);
        let views = child::servers(config);
        for (no, view) in &views {
            if !self.servers.contains_key(no) {
                let server = crate::db::Server::under(&self.all_connections)?;
                // The identity last reported: a server replaced or promoted while the
                // agent was down is reported at the first look.
                let name = crate::sources::identity::checkpoint_name(view);
                if let Some(id) = crate::sources::identity::stored(&view.agent.state_dir, &name) {
                    server.facts().remember(id);
                }
                self.servers.insert(*no, server);
            }
            let same = self.dbs.contains_key(no)
                && child::view_of(&self.config, *no).is_some_and(|v| v.database == view.database);
            if same {
                continue;
            }
            if let Some(old) = self.dbs.remove(no) {
                old.retire();
            }
            let server = &self.servers[no];
            let db = Db::new(
                &view.database,
                server,
                view.database.pool_max_size,
                &self.log,
            );
            self.dbs.insert(*no, db);
        }
        let gone: Vec<ServerNo> = self
            .dbs
            .keys()
            .filter(|no| !views.iter().any(|(n, _)| n == *no))
            .copied()
            .collect();
        for no in gone {
            if let Some(db) = self.dbs.remove(&no) {
                db.retire();
            }
        }
        Ok(())
    }

    /// The first server's connections: whose facts the shippers' OTLP resource names.
    fn first_db(&self) -> Option<&Db> {
        let (no, _) = child::servers(&self.config).into_iter().next()?;
        self.dbs.get(&no)
    }

    /// Turns each server's board of readings on while the metrics page shows the
    /// database's metrics (before the sources start, so their first cycle posts), and
    /// shows them: under `host:port` in the single-server form (postgres_exporter's
    /// `server` label), under their names in the `[[servers]]` form.
    fn configure_board(&self) {
        let wanted = self.config.metrics.database_readings();
        let mut shown = Vec::new();
        for (no, view) in child::servers(&self.config) {
            let Some(db) = self.dbs.get(&no) else {
                continue;
            };
            let board = db.server().board();
            let d = &view.database;
            let label = match no.name() {
                Some(name) => name.to_string(),
                None => format!("{}:{}", d.host, d.port),
            };
            board.set_label(label.clone());
            board.set_wanted(wanted);
            shown.push((label, board.clone()));
        }
        // A removed server's board posts nothing more.
        for (no, server) in &self.servers {
            if !self.dbs.contains_key(no) {
                server.board().set_wanted(false);
            }
        }
        self.page_boards.set(shown);
    }

    /// Serves `[metrics] listen`: starts, moves or stops the endpoint to match the
    /// config. A port that cannot be bound is said once (and in status) and tried again
    /// every few seconds; the rest of the agent runs on without it.
    fn ensure_metrics(&mut self, ctx: &mut Context<Self>) {
        self.configure_board();
        let want = self.config.metrics.listen;
        if let Some(m) = &self.metrics {
            if Some(m.addr) == want {
                return;
            }
            if let Some(m) = self.metrics.take() {
                info!(self.log, "metrics_stopped"; "addr" => %m.addr);
                m.stop();
            }
        }
        let Some(addr) = want else {
            self.metrics_error = None;
            return;
        };
        match crate::metrics::MetricsServer::start(
            addr,
            ctx.address().recipient(),
            self.page_boards.clone(),
            &self.log,
        ) {
            Ok(m) => {
                if self.metrics_error.take().is_some() {
                    info!(self.log, "metrics_recovered"; "addr" => %m.addr);
                }
                self.metrics = Some(m);
            }
            Err(e) => {
                if self.metrics_error.as_deref() != Some(e.as_str()) {
                    error!(self.log, "metrics_listen_failed"; "error" => &e,
                           "effect" => "no Prometheus endpoint; the agent runs on and tries again every 10 s");
                }
                self.metrics_error = Some(e);
            }
        }
    }

    fn start_child(&mut self, id: ChildId, ctx: &mut Context<Self>) {
        self.restart_timers.remove(&id);
        if self.shutting_down
            || self.slots.is_running(id)
            || !child::desired(&self.config).contains(&id)
        {
            return;
        }
        // A server's child gets its view and its connections; the spool and shippers
        // the whole configuration and the first server's.
        let (config, db) = match id.server() {
            Some(no) => (child::view_of(&self.config, no), self.dbs.get(&no)),
            None => (Some(self.config.clone()), self.first_db()),
        };
        let (Some(config), Some(db)) = (config, db.cloned()) else {
            return;
        };
        let generation = self.slots.started(id, Instant::now(), Utc::now());
        let me = ctx.address().recipient();
        // The syslog receiver serves every server: each one's view and connections.
        let every_server = match id {
            ChildId::Receiver => child::servers(&self.config)
                .into_iter()
                .filter_map(|(no, v)| Some((v, self.dbs.get(&no)?.clone())))
                .collect(),
            _ => Vec::new(),
        };
        let conns = child::Conns {
            own: db,
            every_server,
        };
        let running = child::spawn(id, generation, &config, conns, &self.spool, me, &self.log);
        if let ChildAddr::Spool(a) = &running.addr {
            self.spool.set(Some(a.clone()));
        }
        self.running.insert(id, running);
        info!(self.log, "child_started"; "child" => id.name(), "generation" => generation);
    }

    /// Takes a child out of service. Its arbiter is asked to stop; a thread blocked in
    /// a hung handler cannot be interrupted and is abandoned (it exits when it unblocks).
    fn stop_child(&mut self, id: ChildId) {
        if let Some(running) = self.running.remove(&id) {
            running.arbiter.stop();
        }
        if id == ChildId::Spool {
            self.spool.set(None);
        }
    }

    /// A child is down (exited, panicked, hung): schedule its restart.
    fn child_down(&mut self, id: ChildId, reason: String, ctx: &mut Context<Self>) {
        if self.shutting_down {
            return;
        }
        let Some(down) = self.slots.went_down(id, reason, Instant::now()) else {
            return;
        };
        self.stop_child(id);
        let Down {
            reason,
            restarts,
            delay,
            failed,
        } = down;
        error!(self.log, "child_down"; "child" => id.name(), "reason" => &reason,
               "restart_in_ms" => delay.as_millis() as u64, "restarts" => restarts, "failed" => failed);
        self.agent_event(AgentEvent::ChildRestarted {
            child: id.name().to_string(),
            reason,
            restarts,
            failed,
            restart_in_ms: delay.as_millis() as u64,
        });
        let handle = ctx.run_later(delay, move |act, ctx| act.start_child(id, ctx));
        self.restart_timers.insert(id, handle);
    }

    /// Reports the agent's own health to the listener as a `kind: agent` event.
    fn agent_event(&self, report: AgentEvent) {
        let Ok(ev) = report.event(&self.config.agent.hostname, Utc::now()) else {
            return;
        };
        let event = report.name();
        match self.spool.get() {
            Some(b) => b.do_send(Enqueue {
                events: std::sync::Arc::new(vec![ev]),
                checkpoint: None,
            }),
            None => {
                warn!(self.log, "agent_event_not_spooled"; "event" => event, "reason" => "spool down")
            }
        }
    }

    fn health_tick(&mut self, ctx: &mut Context<Self>) {
        if self.last_status_write.elapsed() >= STATUS_EVERY {
            if self.metrics_error.is_some() {
                self.ensure_metrics(ctx);
            }
            self.write_status("periodic", false);
            crate::memory::trim();
        }
        for (id, generation) in self.slots.pings_due() {
            let Some(ping) = self.running.get(&id).map(|r| r.addr.ping()) else {
                continue;
            };
            let fut = async move { tokio::time::timeout(PING_TIMEOUT, ping).await };
            ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
                let pong = match res {
                    Ok(Ok(h)) => Pong::Answer(Box::new(h)),
                    Ok(Err(_)) => Pong::Closed,
                    Err(_) => Pong::Timeout,
                };
                if let Some(reason) = act.slots.on_pong(id, generation, pong, Instant::now()) {
                    act.child_down(id, reason, ctx);
                }
            }));
        }
    }

    fn snapshot(&self, trigger: &str) -> StatusSnapshot {
        let children = self.slots.status();
        StatusSnapshot {
            written_at: Utc::now(),
            trigger: trigger.to_string(),
            pid: std::process::id(),
            version: crate::VERSION.to_string(),
            started_at: self.started_at,
            config_path: self.config_path.display().to_string(),
            config_fingerprint: self.config.fingerprint(),
            last_reload: self.last_reload.clone(),
            metrics: match (&self.metrics, &self.metrics_error) {
                (Some(m), _) => Some(self.describe_page(m.addr)),
                (None, Some(e)) => Some(e.clone()),
                (None, None) => None,
            },
            children,
        }
    }

    /// What the metrics page serves: each server's readings, how many and how old.
    fn describe_page(&self, addr: std::net::SocketAddr) -> String {
        let now = SystemTime::now();
        let boards = self.page_boards.wanted();
        let fleet = self.config.servers.iter().any(|s| s.name.is_some());
        let said: Vec<String> = boards
            .iter()
            .filter_map(|(name, b)| {
                let page = b.describe(now)?;
                Some(if fleet {
                    format!("{name}: {page}")
                } else {
                    page
                })
            })
            .collect();
        match said.is_empty() {
            true => format!("serving http://{addr}/metrics"),
            false => format!("serving http://{addr}/metrics; {}", said.join("; ")),
        }
    }

    fn write_status(&mut self, trigger: &str, to_log: bool) {
        self.last_status_write = Instant::now();
        let snap = self.snapshot(trigger);
        if to_log {
            // A nested object in the JSON log (not a string holding JSON), compact JSON
            // in the text log.
            info!(self.log, "status_dump"; "status" => slog::Serde(snap.clone()));
        }
        if let Err(e) = status::write(&self.config.agent.state_dir, &snap) {
            warn!(self.log, "status_write_failed"; "error" => %e);
        }
        self.systemd.status(&self.slots.summary());
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.configure_board();
        for id in child::desired(&self.config) {
            self.start_child(id, ctx);
        }
        self.agent_event(AgentEvent::AgentStarted {
            version: crate::VERSION.to_string(),
            pid: std::process::id(),
            config_fingerprint: self.config.fingerprint(),
        });
        ctx.run_interval(HEALTH_INTERVAL, |act, ctx| act.health_tick(ctx));
        if let Some(every) = self.systemd.watchdog_interval() {
            self.systemd.watchdog();
            ctx.run_interval(every, |act, _| act.systemd.watchdog());
        }
        self.ensure_metrics(ctx);
        self.write_status("startup", false);
        self.systemd.ready("running");
        info!(self.log, "agent_started"; "version" => crate::VERSION, "pid" => std::process::id(),
              "config" => %self.config_path.display());
    }
}

impl Drop for Supervisor {
    /// The supervisor itself is gone (its handler panicked) while not shutting down:
    /// nothing would restart children any more, so the process exits non-zero and
    /// systemd (`Restart=on-failure`) starts a fresh agent.
    fn drop(&mut self) {
        if !self.shutting_down {
            slog::crit!(self.log, "supervisor_lost"; "action" => "exiting with code 1");
            System::current().stop_with_code(1);
        }
    }
}

impl Handler<ChildExited> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ChildExited, ctx: &mut Context<Self>) {
        if !self.slots.is_current(msg.child, msg.generation) {
            return; // An incarnation we replaced or stopped on purpose.
        }
        let reason = if msg.panicked { "panicked" } else { "stopped" };
        self.child_down(msg.child, reason.to_string(), ctx);
    }
}

impl Handler<Reload> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: Reload, ctx: &mut Context<Self>) {
        let at = Utc::now();
        if self.shutting_down {
            // The children are flushing and stopping: a reload would restart them
            // mid-flush. Nothing changes; the process is on its way out.
            warn!(self.log, "reload_rejected"; "error" => "the agent is stopping", "keeping" => self.config.fingerprint());
            return;
        }
        self.systemd.reloading();
        let loaded = Config::load(&self.config_path)
            .map_err(|e| e.to_string())
            .and_then(|new| {
                // A new state directory is checked as `check` checks it, before anything
                // stops: the spool could not open there.
                if new.agent.state_dir == self.config.agent.state_dir {
                    return Ok(new);
                }
                match crate::state_dir::usable(&new.agent.state_dir) {
                    Ok(()) => Ok(new),
                    Err(e) => Err(format!(
                        "agent.state_dir: cannot write in {}: {e}",
                        new.agent.state_dir.display()
                    )),
                }
            });
        let new = match loaded {
            Ok(c) => c,
            Err(e) => return self.reject_reload(at, e, "config invalid"),
        };
        let plan = plan_reload(&self.config, &new);
        if let Err(e) = self.connect(&new) {
            let e = format!("cannot start a server's connection thread: {e}");
            return self.reject_reload(at, e, "no thread for a server");
        }
        self.config = new;
        self.configure_board();
        for &id in &plan.stop {
            self.stop_child(id);
            if let Some(h) = self.restart_timers.remove(&id) {
                ctx.cancel_future(h);
            }
            self.slots.stopped_on_purpose(id, true);
            // A removed server's children leave status with it.
            if id
                .server()
                .is_some_and(|no| child::view_of(&self.config, no).is_none())
            {
                self.slots.remove(id);
            }
        }
        for &id in &plan.start {
            self.start_child(id, ctx);
        }
        self.ensure_metrics(ctx);
        let names: Vec<&str> = plan.start.iter().map(|id| id.name()).collect();
        info!(self.log, "reload_applied"; "restarted" => names.join(","),
              "fingerprint" => self.config.fingerprint());
        self.last_reload = Some(ReloadStatus {
            at,
            applied: true,
            error: None,
            restarted: plan.start.clone(),
        });
        self.write_status("reload", false);
        self.systemd.ready("running");
    }
}

impl Supervisor {
    /// A reload that changes nothing: said in the log, status and to systemd.
    fn reject_reload(&mut self, at: DateTime<Utc>, error: String, why: &str) {
        error!(self.log, "reload_rejected"; "error" => &error, "keeping" => self.config.fingerprint());
        self.last_reload = Some(ReloadStatus {
            at,
            applied: false,
            error: Some(error),
            restarted: vec![],
        });
        self.systemd
            .ready(&format!("running (reload rejected: {why})"));
    }
}

impl Handler<crate::metrics::GetSnapshot> for Supervisor {
    type Result = MessageResult<crate::metrics::GetSnapshot>;

    fn handle(&mut self, _: crate::metrics::GetSnapshot, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.snapshot("metrics"))
    }
}

impl Handler<DumpStatus> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: DumpStatus, _: &mut Context<Self>) {
        self.write_status(msg.trigger, true);
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
        info!(self.log, "shutdown_started"; "grace_s" => self.config.agent.shutdown_grace.as_secs());
        self.systemd.stopping();
        self.shutting_down = true;
        let collectors: Vec<ChildId> = self
            .running
            .keys()
            .copied()
            .filter(|id| id.is_source())
            .collect();
        let grace = self.config.agent.shutdown_grace;
        // First the collectors hand over their work in progress (the sampler's open
        // window), within a third of the grace; then they stop and the shipper flushes.
        let end = Instant::now() + grace;
        let finish_by = Instant::now() + grace / 3;
        let finishing: Vec<_> = collectors
            .iter()
            .filter_map(|id| self.running.get(id))
            .filter_map(|r| {
                r.addr.finish(FinishUp {
                    deadline: finish_by,
                })
            })
            .collect();
        let finished = async move {
            let mut handed = 0;
            for f in finishing {
                let left = finish_by.saturating_duration_since(Instant::now());
                if let Ok(Ok(n)) = tokio::time::timeout(left + Duration::from_millis(200), f).await
                {
                    handed += n;
                }
            }
            handed
        };
        Box::pin(
            finished
                .into_actor(self)
                .then(move |handed, act, _| {
                    if handed > 0 {
                        info!(act.log, "shutdown_work_in_progress_spooled"; "events" => handed);
                    }
                    for id in collectors {
                        act.stop_child(id);
                        act.slots.stopped_on_purpose(id, false);
                    }
                    // Every output flushes at once (each on its own thread); the outcome
                    // is theirs together.
                    let flushes: Vec<_> = Output::ALL
                        .iter()
                        .filter_map(|o| act.running.get(&ChildId::Shipper(*o)))
                        .filter_map(|r| r.addr.flush(Flush { deadline: end }))
                        .collect();
                    let limit = end.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
                    async move {
                        let until = tokio::time::Instant::now() + limit;
                        let mut all: Option<FlushOutcome> = None;
                        for req in flushes {
                            let o = tokio::time::timeout_at(until, req).await.ok().and_then(Result::ok)?;
                            let sum = all.get_or_insert(FlushOutcome { drained: true, ..Default::default() });
                            sum.batches += o.batches;
                            sum.drained &= o.drained;
                        }
                        all
                    }
                    .into_actor(act)
                })
                .map(|outcome, act, _| {
                    if act.cut_short {
                        return;
                    }
                    match outcome {
                        Some(o) => info!(act.log, "shutdown_flushed"; "batches" => o.batches, "drained" => o.drained),
                        None => warn!(act.log, "shutdown_flush_incomplete"; "reason" => "shipper did not finish within the grace period"),
                    }
                    act.write_status("shutdown", false);
                    info!(act.log, "agent_stopped");
                    System::current().stop_with_code(0);
                }),
        )
    }
}

impl Handler<CutShort> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: CutShort, _: &mut Context<Self>) {
        self.shutting_down = true;
        self.cut_short = true;
        System::current().stop_with_code(crate::cli::EXIT_CUT_SHORT);
    }
}
