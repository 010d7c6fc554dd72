//! The supervisor actor: owns the children, the current config, reloads and shutdown.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use slog::{error, info, warn, Logger};

use super::child::{self, ChildAddr, Running};
use super::{Decision, RestartPolicy, RestartTracker, HEALTH_INTERVAL, PING_TIMEOUT};
use crate::buffer::BufferActor;
use crate::catalogue::AgentEvent;
use crate::config::Config;
use crate::model::{ChildExited, ChildId, Enqueue, Flush, Health, Route};
use crate::status::{self, ChildStatus, ReloadStatus, StatusSnapshot};
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Running,
    Restarting,
    Failed,
    Stopped,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Restarting => "restarting",
            State::Failed => "failed",
            State::Stopped => "stopped",
        }
    }
}

/// Everything the supervisor knows about one child.
struct Slot {
    state: State,
    running: Option<Running>,
    next_generation: u64,
    tracker: RestartTracker,
    restarts: u64,
    up_since: Option<DateTime<Utc>>,
    health: Option<Health>,
    last_restart_reason: Option<String>,
    /// The pending delayed restart, cancelled if a reload restarts the child first.
    restart_timer: Option<SpawnHandle>,
}

/// Starts, watches and restarts the children; handles reload, status and shutdown.
pub struct Supervisor {
    config_path: PathBuf,
    config: Config,
    buffer: Route<BufferActor>,
    slots: BTreeMap<ChildId, Slot>,
    policy: RestartPolicy,
    shutting_down: bool,
    started_at: DateTime<Utc>,
    last_reload: Option<ReloadStatus>,
    last_status_write: Instant,
    systemd: Systemd,
    log: Logger,
}

impl Supervisor {
    /// A supervisor for `config`, read from `config_path` (re-read on reload).
    pub fn new(config_path: PathBuf, config: Config, log: Logger) -> Supervisor {
        Supervisor {
            config_path,
            config,
            buffer: Route::default(),
            slots: BTreeMap::new(),
            policy: RestartPolicy::default(),
            shutting_down: false,
            started_at: Utc::now(),
            last_reload: None,
            last_status_write: Instant::now(),
            systemd: Systemd::from_env(),
            log,
        }
    }

    fn slot(&mut self, id: ChildId) -> &mut Slot {
        let policy = self.policy.clone();
        self.slots.entry(id).or_insert_with(|| Slot {
            state: State::Stopped,
            running: None,
            next_generation: 1,
            tracker: RestartTracker::new(policy),
            restarts: 0,
            up_since: None,
            health: None,
            last_restart_reason: None,
            restart_timer: None,
        })
    }

    fn start_child(&mut self, id: ChildId, ctx: &mut Context<Self>) {
        if self.shutting_down || !child::desired(&self.config).contains(&id) {
            return;
        }
        let me = ctx.address().recipient();
        let (config, buffer, log) = (self.config.clone(), self.buffer.clone(), self.log.clone());
        let slot = self.slot(id);
        if slot.running.is_some() {
            return;
        }
        let generation = slot.next_generation;
        slot.next_generation += 1;
        let running = child::spawn(id, generation, &config, &buffer, me, &log);
        if let ChildAddr::Buffer(a) = &running.addr {
            buffer.set(Some(a.clone()));
        }
        slot.running = Some(running);
        slot.restart_timer = None;
        if slot.state != State::Failed {
            slot.state = State::Starting;
        }
        slot.up_since = Some(Utc::now());
        info!(log, "child_started"; "child" => id.name(), "generation" => generation);
    }

    /// Takes a child out of service. Its arbiter is asked to stop; a thread blocked in
    /// a hung handler cannot be interrupted and is abandoned (it exits when it unblocks).
    fn stop_child(&mut self, id: ChildId) -> Option<Running> {
        let slot = self.slots.get_mut(&id)?;
        let running = slot.running.take()?;
        running.arbiter.stop();
        slot.up_since = None;
        if id == ChildId::Buffer {
            self.buffer.set(None);
        }
        Some(running)
    }

    /// A child is down (exited, panicked, hung): schedule its restart.
    fn child_down(&mut self, id: ChildId, reason: String, ctx: &mut Context<Self>) {
        if self.shutting_down {
            return;
        }
        let Some(running) = self.stop_child(id) else {
            return;
        };
        let ran_for = running.started.elapsed();
        let slot = self.slot(id);
        let Decision { delay, failed } = slot.tracker.on_exit(Instant::now(), ran_for);
        slot.restarts += 1;
        slot.state = if failed {
            State::Failed
        } else {
            State::Restarting
        };
        slot.last_restart_reason = Some(reason.clone());
        let restarts = slot.restarts;
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
        self.slot(id).restart_timer = Some(handle);
    }

    /// Reports the agent's own health to the listener as a `kind: agent` event.
    fn agent_event(&self, report: AgentEvent) {
        let Ok(ev) = report.event(&self.config.agent.hostname, Utc::now()) else {
            return;
        };
        let event = report.name();
        match self.buffer.get() {
            Some(b) => b.do_send(Enqueue {
                events: vec![ev],
                checkpoint: None,
            }),
            None => {
                warn!(self.log, "agent_event_not_spooled"; "event" => event, "reason" => "buffer down")
            }
        }
    }

    fn health_tick(&mut self, ctx: &mut Context<Self>) {
        if self.last_status_write.elapsed() >= STATUS_EVERY {
            self.write_status("periodic", false);
        }
        let mut pings = Vec::new();
        for (&id, slot) in self.slots.iter_mut() {
            let Some(r) = slot.running.as_mut() else {
                continue;
            };
            if r.ping_pending {
                continue;
            }
            r.ping_pending = true;
            pings.push((id, r.generation, r.addr.ping()));
        }
        for (id, generation, ping) in pings {
            let fut = async move { tokio::time::timeout(PING_TIMEOUT, ping).await };
            ctx.spawn(
                fut.into_actor(self)
                    .map(move |res, act, ctx| act.on_pong(id, generation, res, ctx)),
            );
        }
    }

    fn on_pong(
        &mut self,
        id: ChildId,
        generation: u64,
        res: Result<Result<Health, MailboxError>, tokio::time::error::Elapsed>,
        ctx: &mut Context<Self>,
    ) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        match slot.running.as_mut() {
            Some(r) if r.generation == generation => r.ping_pending = false,
            _ => return,
        }
        let reason = match res {
            Ok(Ok(h)) => match h.deadline {
                Some(d) if h.progress.elapsed() > d => format!(
                    "hung: no progress for {}s (deadline {}s)",
                    h.progress.elapsed().as_secs(),
                    d.as_secs()
                ),
                _ => {
                    if matches!(slot.state, State::Starting | State::Restarting) {
                        slot.state = State::Running;
                    }
                    if slot.state == State::Failed
                        && slot
                            .running
                            .as_ref()
                            .is_some_and(|r| r.started.elapsed() >= self.policy.healthy_after)
                    {
                        slot.state = State::Running;
                    }
                    slot.health = Some(h);
                    return;
                }
            },
            Ok(Err(_)) => "stopped: mailbox closed".to_string(),
            Err(_) => format!(
                "hung: no answer to a health check within {}s",
                PING_TIMEOUT.as_secs()
            ),
        };
        self.child_down(id, reason, ctx);
    }

    fn snapshot(&self, trigger: &str) -> StatusSnapshot {
        let children = self
            .slots
            .iter()
            .map(|(id, s)| {
                let h = s.health.as_ref();
                (
                    id.name().to_string(),
                    ChildStatus {
                        state: s.state.as_str().to_string(),
                        restarts: s.restarts,
                        up_since: s.up_since,
                        last_success: h.and_then(|h| h.last_success),
                        last_error: h.and_then(|h| h.last_error.clone()),
                        last_restart_reason: s.last_restart_reason.clone(),
                        detail: h.and_then(|h| serde_json::to_value(&h.detail).ok()),
                    },
                )
            })
            .collect();
        StatusSnapshot {
            written_at: Utc::now(),
            trigger: trigger.to_string(),
            pid: std::process::id(),
            version: crate::VERSION.to_string(),
            started_at: self.started_at,
            config_path: self.config_path.display().to_string(),
            config_fingerprint: self.config.fingerprint(),
            last_reload: self.last_reload.clone(),
            children,
        }
    }

    fn write_status(&mut self, trigger: &str, to_log: bool) {
        self.last_status_write = Instant::now();
        let snap = self.snapshot(trigger);
        if to_log {
            let json = serde_json::to_string(&snap).unwrap_or_default();
            info!(self.log, "status_dump"; "status" => json);
        }
        if let Err(e) = status::write(&self.config.agent.state_dir, &snap) {
            warn!(self.log, "status_write_failed"; "error" => %e);
        }
        let running = snap
            .children
            .values()
            .filter(|c| c.state == "running")
            .count();
        self.systemd.status(&format!(
            "{running}/{} children running, {} restarts",
            snap.children.len(),
            snap.children.values().map(|c| c.restarts).sum::<u64>()
        ));
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
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
        let current = self
            .slots
            .get(&msg.child)
            .and_then(|s| s.running.as_ref())
            .is_some_and(|r| r.generation == msg.generation);
        if !current {
            return; // An incarnation we replaced or stopped on purpose.
        }
        let reason = if msg.panicked { "panicked" } else { "stopped" };
        self.child_down(msg.child, reason.to_string(), ctx);
    }
}

impl Handler<Reload> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: Reload, ctx: &mut Context<Self>) {
        self.systemd.reloading();
        let at = Utc::now();
        let new = match Config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                error!(self.log, "reload_rejected"; "error" => %e, "keeping" => self.config.fingerprint());
                self.last_reload = Some(ReloadStatus {
                    at,
                    applied: false,
                    error: Some(e.to_string()),
                    restarted: vec![],
                });
                self.systemd
                    .ready("running (reload rejected: config invalid)");
                return;
            }
        };
        let old = std::mem::replace(&mut self.config, new);
        let (was, now) = (child::desired(&old), child::desired(&self.config));
        let mut restarted = Vec::new();
        for id in was.iter().chain(now.iter().filter(|id| !was.contains(id))) {
            let id = *id;
            let keep = now.contains(&id);
            if keep && was.contains(&id) && !child::settings_changed(id, &old, &self.config) {
                continue;
            }
            self.stop_child(id);
            let slot = self.slot(id);
            if let Some(h) = slot.restart_timer.take() {
                ctx.cancel_future(h);
            }
            slot.tracker.reset();
            slot.state = State::Stopped;
            if keep {
                restarted.push(id.name().to_string());
                self.start_child(id, ctx);
            }
        }
        info!(self.log, "reload_applied"; "restarted" => restarted.join(","),
              "fingerprint" => self.config.fingerprint());
        self.last_reload = Some(ReloadStatus {
            at,
            applied: true,
            error: None,
            restarted,
        });
        self.write_status("reload", false);
        self.systemd.ready("running");
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
            .slots
            .keys()
            .copied()
            .filter(|id| matches!(id, ChildId::Collector(_)))
            .collect();
        for id in collectors {
            self.stop_child(id);
            self.slot(id).state = State::Stopped;
        }
        let grace = self.config.agent.shutdown_grace;
        let flush = self
            .slots
            .get(&ChildId::Shipper)
            .and_then(|s| s.running.as_ref())
            .and_then(|r| {
                r.addr.flush(Flush {
                    deadline: Instant::now() + grace,
                })
            });
        let fut = async move {
            match flush {
                Some(req) => tokio::time::timeout(grace + Duration::from_secs(1), req)
                    .await
                    .ok()
                    .and_then(Result::ok),
                None => None,
            }
        };
        Box::pin(fut.into_actor(self).map(|outcome, act, _| {
            match outcome {
                Some(o) => info!(act.log, "shutdown_flushed"; "batches" => o.batches, "drained" => o.drained),
                None => warn!(act.log, "shutdown_flush_incomplete"; "reason" => "shipper did not finish within the grace period"),
            }
            act.write_status("shutdown", false);
            info!(act.log, "agent_stopped");
            System::current().stop_with_code(0);
        }))
    }
}
