//! Creating a child on a fresh arbiter, and talking to it without knowing its type.

use std::future::Future;
use std::pin::Pin;

use actix::prelude::*;
use slog::{o, Logger};

use crate::collector::CollectorActor;
use crate::config::Config;
use crate::db::Db;
use crate::logs::actor::LogReader;
use crate::logs::syslog::receiver::Receiver;
use crate::model::{
    ChildExited, ChildId, ExitGuard, FinishUp, Flush, Health, Ping, Route, ServerNo,
};
use crate::shipper::{outputs, Origin, ShipperActor};
use crate::sources;
use crate::spool::SpoolActor;

/// The address of a running child, whatever its type.
#[derive(Clone)]
pub enum ChildAddr {
    /// The spool.
    Spool(Addr<SpoolActor>),
    /// The shipper.
    Shipper(Addr<ShipperActor>),
    /// A collector.
    Collector(Addr<CollectorActor>),
    /// The log reader.
    LogReader(Addr<LogReader>),
    /// The syslog receiver.
    Receiver(Addr<Receiver>),
}

type PingFuture = Pin<Box<dyn Future<Output = Result<Health, MailboxError>>>>;

impl ChildAddr {
    /// Sends a health check.
    pub fn ping(&self) -> PingFuture {
        match self {
            ChildAddr::Spool(a) => Box::pin(a.send(Ping)),
            ChildAddr::Shipper(a) => Box::pin(a.send(Ping)),
            ChildAddr::Collector(a) => Box::pin(a.send(Ping)),
            ChildAddr::LogReader(a) => Box::pin(a.send(Ping)),
            ChildAddr::Receiver(a) => Box::pin(a.send(Ping)),
        }
    }

    /// Asks a collector to hand its work in progress to the spool (shutdown).
    pub fn finish(&self, msg: FinishUp) -> Option<Request<CollectorActor, FinishUp>> {
        match self {
            ChildAddr::Collector(a) => Some(a.send(msg)),
            _ => None,
        }
    }

    /// Asks the shipper for a final flush (other children have nothing to flush).
    pub fn flush(&self, msg: Flush) -> Option<Request<ShipperActor, Flush>> {
        match self {
            ChildAddr::Shipper(a) => Some(a.send(msg)),
            _ => None,
        }
    }
}

/// A child running on its own arbiter.
pub struct Running {
    /// The thread the child runs on; stopped when the child is replaced.
    pub arbiter: Arbiter,
    /// Its address.
    pub addr: ChildAddr,
}

/// Each server's number and the configuration its children see ([`Config::view`]).
pub fn servers(config: &Config) -> Vec<(ServerNo, Config)> {
    config
        .servers
        .iter()
        .map(|s| {
            let no = s.name.as_deref().map_or(ServerNo::ONLY, ServerNo::of);
            (no, config.view(s))
        })
        .collect()
}

/// The configuration server `no`'s children see, if `config` has that server.
pub fn view_of(config: &Config, no: ServerNo) -> Option<Config> {
    servers(config)
        .into_iter()
        .find(|(n, _)| *n == no)
        .map(|(_, v)| v)
}

/// The children the configuration asks for, in start order: the spool first so that
/// collectors have somewhere to put events, the shippers, then each server's sources.
pub fn desired(config: &Config) -> Vec<ChildId> {
    let mut v = vec![ChildId::Spool];
    v.extend(config.outputs().into_iter().map(ChildId::Shipper));
    for (no, view) in servers(config) {
        v.extend(
            sources::enabled(&view)
                .into_iter()
                .map(|(k, _)| ChildId::Collector(no, k)),
        );
        v.extend(
            config
                .custom
                .iter()
                .map(|q| ChildId::Custom(no, crate::model::CustomNo::of(&q.name))),
        );
        if view.collection.logs && view.logs.syslog_ident.is_empty() {
            v.push(ChildId::LogReader(no));
        }
    }
    if config.syslog.on() && !syslog_routes(config).is_empty() {
        v.push(ChildId::Receiver);
    }
    v
}

/// What the syslog receiver is built from, per server whose log arrives by syslog: its
/// name, log settings, connection settings (the prefix is asked of it), role (its own
/// sessions are left out), correlation pattern and ids.
fn syslog_routes(config: &Config) -> Vec<String> {
    servers(config)
        .into_iter()
        .filter(|(_, v)| v.collection.logs && !v.logs.syslog_ident.is_empty())
        .map(|(_, v)| {
            format!(
                "{:?}",
                (
                    v.server_name(),
                    v.id_host(),
                    &v.logs,
                    &v.database,
                    v.correlation.application_name_pattern.as_str()
                )
            )
        })
        .collect()
}

/// True when the settings `id` is built from differ between `old` and `new`.
pub fn settings_changed(id: ChildId, old: &Config, new: &Config) -> bool {
    let agent = old.agent.hostname != new.agent.hostname;
    let views = |no| (view_of(old, no), view_of(new, no));
    match id {
        ChildId::Spool => {
            old.agent.state_dir != new.agent.state_dir
                || old.buffer != new.buffer
                || old.outputs() != new.outputs()
        }
        ChildId::Shipper(o) => {
            agent
                || old.agent.project_id != new.agent.project_id
                || old.projects() != new.projects()
                || (outputs::spec(o).changed)(old, new)
                || old.breaker != new.breaker
        }
        ChildId::Collector(no, kind) => {
            let (Some(old), Some(new)) = views(no) else {
                return true;
            };
            agent
                || old.database != new.database
                || collection_seen_by(kind, &old) != collection_seen_by(kind, &new)
                || old.correlation != new.correlation
        }
        ChildId::Receiver => {
            old.syslog != new.syslog
                || old.agent.state_dir != new.agent.state_dir
                || syslog_routes(old) != syslog_routes(new)
        }
        ChildId::Custom(no, n) => {
            let (Some(old_view), Some(new_view)) = views(no) else {
                return true;
            };
            let entry = |c: &Config| c.custom.iter().find(|q| q.name == n.name()).cloned();
            agent
                || old_view.database != new_view.database
                || old_view.collection.max_query_length != new_view.collection.max_query_length
                || entry(old) != entry(new)
        }
        // The log reader reads none of `[collection]` (its switch is in `desired`).
        ChildId::LogReader(no) => {
            let (Some(old), Some(new)) = views(no) else {
                return true;
            };
            agent
                || old.database != new.database
                || old.correlation != new.correlation
                || old.logs != new.logs
                || old.agent.state_dir != new.agent.state_dir
        }
    }
}

/// What source `kind` reads of `[collection]`: its own interval, and every setting that
/// is not another source's interval or switch (limits are compared whole: a change to
/// one restarts every source, which is safe). Changing `interval_s` then restarts the
/// sources on that interval, not the health sources on their own.
fn collection_seen_by(
    kind: crate::model::EventKind,
    config: &Config,
) -> (Option<std::time::Duration>, crate::config::CollectionConfig) {
    use std::time::Duration;
    let own = sources::spec(kind).and_then(|s| (s.interval)(&config.collection));
    let mut c = config.collection.clone();
    c.interval = Duration::ZERO;
    c.activity_interval = Duration::ZERO;
    c.sample_interval = None;
    c.health.clear();
    (c.activity, c.statements, c.locks, c.system, c.logs) = (false, false, false, false, false);
    if kind != crate::model::EventKind::PgLocks {
        c.locks_blocking_interval = Duration::ZERO;
    }
    (own, c)
}

/// The connections a child is built with.
pub struct Conns {
    /// Its server's (the first server's for the spool and the shippers).
    pub own: Db,
    /// Every server's view and connections (the syslog receiver's; empty for others).
    pub every_server: Vec<(Config, Db)>,
}

/// Starts incarnation `generation` of `id` on a new arbiter: a server's child with
/// that server's view of the configuration and its connections, the spool and the
/// shippers with the whole configuration (`db`: the first server's, whose facts the
/// OTLP resource names).
pub fn spawn(
    id: ChildId,
    generation: u64,
    config: &Config,
    dbs: Conns,
    spool: &Route<SpoolActor>,
    supervisor: Recipient<ChildExited>,
    log: &Logger,
) -> Running {
    let Conns {
        own: db,
        every_server,
    } = dbs;
    let db = &db;
    let arbiter = Arbiter::new();
    // The thread takes the child's name, so `top -H` and `/proc/<pid>/task/*/comm` say
    // which child uses the CPU (arbiters are otherwise all "actix-rt|system:0|…").
    let name = id.name();
    arbiter.spawn_fn(move || crate::thread::name_thread(name));
    let log = log.new(o!("child" => id.name(), "generation" => generation));
    let guard = ExitGuard {
        to: supervisor,
        child: id,
        generation,
    };
    let h = arbiter.handle();
    let addr = match id {
        ChildId::Spool => {
            let dir = config.agent.state_dir.clone();
            let max = config.buffer.max_bytes;
            let host = config.agent.hostname.clone();
            let outputs = config.outputs();
            // What the last status dump counted in the spool, read before this start's
            // dump replaces it: the loss to report if the file was emptied meanwhile.
            let last_depth = crate::status::read(&dir)
                .ok()
                .and_then(|s| s.spool().map(|b| b.depth));
            ChildAddr::Spool(SpoolActor::start_in_arbiter(&h, move |_| {
                SpoolActor::new(dir, max, host, outputs, log, guard).last_depth(last_depth)
            }))
        }
        ChildId::Shipper(output) => {
            let config = config.clone();
            let origin = Origin::of(&config, db.server().facts());
            let route = spool.clone();
            ChildAddr::Shipper(ShipperActor::start_in_arbiter(&h, move |_| {
                let spec = outputs::spec(output);
                ShipperActor::with_transport(
                    output,
                    (spec.delivery)(&config),
                    config.breaker.clone(),
                    (spec.transport)(&config, origin, &log),
                    route,
                    log,
                    guard,
                )
            }))
        }
        ChildId::Receiver => {
            let config = config.clone();
            let route = spool.clone();
            ChildAddr::Receiver(Receiver::start_in_arbiter(&h, move |_| {
                Receiver::new(&config, every_server, route, log, guard)
            }))
        }
        ChildId::LogReader(_) => {
            let config = config.clone();
            let route = spool.clone();
            let db = db.clone();
            ChildAddr::LogReader(LogReader::start_in_arbiter(&h, move |_| {
                LogReader::new(&config, db, route, log, guard)
            }))
        }
        ChildId::Custom(_, n) => {
            let config = config.clone();
            let route = spool.clone();
            let db = db.clone();
            let q = config
                .custom
                .iter()
                .find(|q| q.name == n.name())
                .cloned()
                .unwrap_or_else(|| unreachable!("`desired` lists only configured queries"));
            ChildAddr::Collector(CollectorActor::start_in_arbiter(&h, move |_| {
                let source = Box::new(sources::custom::CustomSource::new(&config, &q, true));
                CollectorActor::new(source, q.interval, &config, db, route, log, guard)
            }))
        }
        ChildId::Collector(_, kind) => {
            let config = config.clone();
            let route = spool.clone();
            let db = db.clone();
            let interval = sources::spec(kind)
                .and_then(|s| (s.interval)(&config.collection))
                .unwrap_or(config.collection.interval);
            ChildAddr::Collector(CollectorActor::start_in_arbiter(&h, move |_| {
                // Sources hold thread-local state (Rc), so they are built on the child's
                // own thread. `desired` only lists kinds that `make` knows.
                let source = sources::make(kind, &config, sources::Mode::Daemon)
                    .unwrap_or_else(|| unreachable!("no source for {kind:?}"));
                CollectorActor::new(source, interval, &config, db, route, log, guard)
            }))
        }
    };
    Running { arbiter, addr }
}
