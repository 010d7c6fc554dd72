//! The syslog receiver (`[syslog] listen`): TCP and UDP on one port; each message's
//! header read, routed to the server whose `[logs] syslog_ident` (and `syslog_host`) it
//! names, PostgreSQL's chunks put back together, then parsed, classified and shaped as a
//! tailed stderr file is, and handed to the spool. A message counts as received once
//! the spool holds its event. While the spool's intake is behind, nothing is read: UDP
//! datagrams are then dropped by the kernel at the socket (counted from
//! `/proc/net/udp`), TCP senders wait; memory stays bounded either way.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use slog::{info, warn, Logger};
use tokio::io::AsyncReadExt;

use super::frame::{self, Step};
use super::header;
use super::rejoin::{Joined, Rejoin};
use crate::base::Format;
use crate::config::Config;
use crate::db::Db;
use crate::logs::{Flush, LogParser, OwnSessions, Shaper};
use crate::model::{ChildDetail, Event, ExitGuard, Health, LogInsights, Ping, Route};
use crate::model::{ReceiverServerStats, ReceiverStats};
use crate::spool::handoff::{hand_over, Handed, Handoff, HandsOver};
use crate::spool::SpoolActor;

/// The longest syslog message taken (PostgreSQL sends at most ~1 KB each).
const MAX_MESSAGE: usize = 64 * 1024;
/// The longest PostgreSQL message put back together (as a plan in a file).
const MAX_JOINED: usize = 1 << 20;
/// Processes with a message in progress, per server.
const MAX_PENDING: usize = 4096;
/// A process's message is whole after this long without a chunk.
const IDLE: Duration = Duration::from_secs(2);
/// Events waiting for the spool beyond which reading pauses.
const PAUSE_BYTES: usize = 4 << 20;
/// TCP connections at once.
const MAX_CONNECTIONS: usize = 64;
/// The longest a TLS sender may take to finish its handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// How often the waiting events go to the spool and idle messages are finished.
const TICK: Duration = Duration::from_millis(100);
/// How often each server's `log_line_prefix` is asked again (when not configured).
const SETTINGS_EVERY: Duration = Duration::from_secs(600);
/// After the server could not say it.
const RETRY: Duration = Duration::from_secs(5);
/// Messages kept while a server's prefix is not known yet, at most.
const MAX_PARKED_BYTES: usize = 4 << 20;

/// One server whose log arrives here.
struct ServerRoute {
    name: String,
    ident: String,
    host: String,
    id_host: String,
    /// From `[logs] prefix`; else asked of the server.
    configured_prefix: bool,
    /// The prefix is known (configured, or the server answered or could not be asked):
    /// until then messages wait in `parked`, read with no prefix they would be raw.
    prefix_known: bool,
    parked: Vec<Joined>,
    parked_bytes: usize,
    parser: LogParser,
    shaper: Shaper,
    own: OwnSessions,
    rejoin: Rejoin,
    db: Db,
    stats: ReceiverServerStats,
    insights: LogInsights,
}

/// What the reading tasks share with the actor (one thread: `Rc`).
#[derive(Default)]
struct Shared {
    /// Events made, not yet given to the hand-off.
    outbox: RefCell<Vec<Event>>,
    outbox_bytes: Cell<usize>,
    /// The spool's intake is behind: the sockets are not read.
    paused: Cell<bool>,
    connections: Cell<usize>,
    counters: RefCell<Counters>,
}

#[derive(Default, Clone)]
struct Counters {
    messages: u64,
    bytes: u64,
    unreadable: u64,
    unrouted: u64,
    oversize: u64,
    connections_refused: u64,
    tls_failed: u64,
}

/// The receiver.
pub struct Receiver {
    listen: Option<std::net::SocketAddr>,
    listen_tls: Option<std::net::SocketAddr>,
    tls_files: (String, String),
    routes: Rc<RefCell<Vec<ServerRoute>>>,
    shared: Rc<Shared>,
    handoff: Handoff,
    /// Events in the hand-over now, by server (credited when the spool took them).
    in_hand: Vec<(String, u64)>,
    udp_inode: Option<u64>,
    udp_drops_at_start: Option<u64>,
    progress: Instant,
    last_success: Option<chrono::DateTime<Utc>>,
    last_error: Option<String>,
    log: Logger,
    _guard: ExitGuard,
}

impl Receiver {
    /// A receiver for `config`'s servers whose log arrives by syslog (`servers`: each
    /// one's view and connections).
    pub fn new(
        config: &Config,
        servers: Vec<(Config, Db)>,
        spool: Route<SpoolActor>,
        log: Logger,
        guard: ExitGuard,
    ) -> Receiver {
        let routes = servers
            .into_iter()
            .filter(|(v, _)| !v.logs.syslog_ident.is_empty() && v.collection.logs)
            .map(|(v, db)| {
                let prefix = if v.logs.prefix.is_empty() {
                    DEFAULT_PREFIX
                } else {
                    v.logs.prefix.as_str()
                };
                ServerRoute {
                    name: v.server_name().to_string(),
                    ident: v.logs.syslog_ident.clone(),
                    host: v.logs.syslog_host.clone(),
                    id_host: v.id_host(),
                    configured_prefix: !v.logs.prefix.is_empty(),
                    prefix_known: !v.logs.prefix.is_empty(),
                    parked: Vec::new(),
                    parked_bytes: 0,
                    parser: LogParser::new(Format::Stderr, prefix).relayed(),
                    shaper: Shaper::new(
                        v.correlation.application_name_pattern.clone(),
                        v.logs.redact,
                    ),
                    own: OwnSessions {
                        user: v.database.user.clone(),
                    },
                    rejoin: Rejoin::new(MAX_JOINED, MAX_PENDING, IDLE),
                    db,
                    stats: ReceiverServerStats {
                        prefix: prefix.to_string(),
                        ..Default::default()
                    },
                    insights: LogInsights::default(),
                }
            })
            .collect();
        Receiver {
            listen: config.syslog.listen,
            listen_tls: config.syslog.listen_tls,
            tls_files: (
                config.syslog.tls_cert.clone(),
                config.syslog.tls_key.clone(),
            ),
            routes: Rc::new(RefCell::new(routes)),
            shared: Rc::default(),
            handoff: Handoff::new(spool, log.clone(), "pg_log", &config.id_host(), 16 << 20),
            in_hand: Vec::new(),
            udp_inode: None,
            udp_drops_at_start: None,
            progress: Instant::now(),
            last_success: None,
            last_error: None,
            log,
            _guard: guard,
        }
    }

    /// Binds `listen` (UDP and TCP) and `listen_tls` (TCP with TLS); the reason, naming
    /// the address and key, when one cannot be.
    fn bind(&mut self, ctx: &mut Context<Self>) -> Result<(), String> {
        if let Some(addr) = self.listen {
            let bound = |e: std::io::Error| format!("cannot listen on {addr} (syslog.listen): {e}");
            let udp = std::net::UdpSocket::bind(addr).map_err(bound)?;
            udp.set_nonblocking(true).map_err(bound)?;
            let tcp = std::net::TcpListener::bind(addr).map_err(bound)?;
            tcp.set_nonblocking(true).map_err(bound)?;
            self.udp_inode = socket_inode(&udp);
            self.udp_drops_at_start = self.udp_inode.and_then(udp_drops);
            let udp = tokio::net::UdpSocket::from_std(udp).map_err(bound)?;
            let tcp = tokio::net::TcpListener::from_std(tcp).map_err(bound)?;
            let (routes, shared) = (self.routes.clone(), self.shared.clone());
            ctx.spawn(read_udp(udp, routes, shared).into_actor(self));
            let (routes, shared) = (self.routes.clone(), self.shared.clone());
            ctx.spawn(accept_tcp(tcp, None, routes, shared, self.log.clone()).into_actor(self));
        }
        if let Some(addr) = self.listen_tls {
            let (cert, key) = &self.tls_files;
            let acceptor = tls_acceptor(cert, key)?;
            let bound =
                |e: std::io::Error| format!("cannot listen on {addr} (syslog.listen_tls): {e}");
            let tcp = std::net::TcpListener::bind(addr).map_err(bound)?;
            tcp.set_nonblocking(true).map_err(bound)?;
            let tcp = tokio::net::TcpListener::from_std(tcp).map_err(bound)?;
            let (routes, shared) = (self.routes.clone(), self.shared.clone());
            ctx.spawn(
                accept_tcp(tcp, Some(acceptor), routes, shared, self.log.clone()).into_actor(self),
            );
        }
        Ok(())
    }

    /// Finishes idle messages, moves the events made to the hand-off, pauses or resumes
    /// reading, and asks the servers' prefixes when due.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        {
            let mut routes = self.routes.borrow_mut();
            let mut joined = Vec::new();
            for r in routes.iter_mut() {
                r.rejoin.flush_idle(now, &mut joined);
                for j in joined.drain(..) {
                    shape(r, j, &self.shared);
                }
            }
        }
        let events = std::mem::take(&mut *self.shared.outbox.borrow_mut());
        self.shared.outbox_bytes.set(0);
        if !events.is_empty() {
            for e in &events {
                let server = e.server.as_deref().unwrap_or_default();
                match self.in_hand.iter_mut().find(|(s, _)| s == server) {
                    Some((_, n)) => *n += 1,
                    None => self.in_hand.push((server.to_string(), 1)),
                }
            }
            self.handoff.keep(events, None);
            hand_over(self, ctx);
        }
        self.shared
            .paused
            .set(self.handoff.backlog_bytes() > PAUSE_BYTES);
        self.progress = now;
    }

    fn ask_prefixes(&mut self, ctx: &mut Context<Self>) {
        let asks: Vec<usize> = self
            .routes
            .borrow()
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.configured_prefix)
            .map(|(i, _)| i)
            .collect();
        for i in asks {
            self.ask_prefix(i, ctx);
        }
    }

    /// Asks server `i` its `log_line_prefix` (again in [`RETRY`] when it cannot say).
    fn ask_prefix(&mut self, i: usize, ctx: &mut Context<Self>) {
        let Some(db) = self.routes.borrow().get(i).map(|r| r.db.clone()) else {
            return;
        };
        {
            let fut = async move {
                let limit = Duration::from_secs(30);
                tokio::time::timeout(limit, crate::logs::plan::server_settings(&db)).await
            };
            ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
                let retry = {
                    let mut routes = act.routes.borrow_mut();
                    let Some(r) = routes.get_mut(i) else {
                        return;
                    };
                    let retry = match res {
                        Ok(Ok(s)) => {
                            let prefix = s.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_string());
                            if r.parser.prefix() != Some(prefix.as_str()) || !r.prefix_known {
                                info!(act.log, "syslog_prefix"; "server" => &r.name, "prefix" => &prefix);
                                r.parser = LogParser::new(Format::Stderr, &prefix).relayed();
                                r.stats.prefix = prefix;
                            }
                            false
                        }
                        Ok(Err(e)) => {
                            if !r.prefix_known {
                                warn!(act.log, "log_settings_unavailable"; "server" => &r.name, "error" => %e,
                                      "effect" => "its syslog messages are read with the last prefix known (PostgreSQL's default at first); asked again in 5 s");
                            }
                            true
                        }
                        Err(_) => true,
                    };
                    // Messages that waited for the prefix are read with what is known now.
                    r.prefix_known = true;
                    for j in std::mem::take(&mut r.parked) {
                        shape(r, j, &act.shared);
                    }
                    r.parked_bytes = 0;
                    retry
                };
                if retry {
                    ctx.run_later(RETRY, move |act, ctx| act.ask_prefix(i, ctx));
                }
            }));
        }
    }

    fn stats(&self) -> ReceiverStats {
        let c = self.shared.counters.borrow().clone();
        let drops = match (self.udp_inode.and_then(udp_drops), self.udp_drops_at_start) {
            (Some(now), Some(start)) => now.saturating_sub(start),
            _ => 0,
        };
        ReceiverStats {
            listen: self.listen.map(|a| a.to_string()),
            listen_tls: self.listen_tls.map(|a| a.to_string()),
            tls_handshake_failures_total: c.tls_failed,
            messages_total: c.messages,
            bytes_total: c.bytes,
            unreadable_total: c.unreadable,
            unrouted_total: c.unrouted,
            oversize_total: c.oversize,
            udp_dropped_total: drops,
            connections: self.shared.connections.get(),
            connections_refused_total: c.connections_refused,
            paused: self.shared.paused.get(),
            pending_events: self.handoff.waiting(),
            dropped_events_total: self.handoff.dropped_total(),
            servers: self
                .routes
                .borrow()
                .iter()
                .map(|r| {
                    let mut s = r.stats.clone();
                    s.pending_messages = r.rejoin.pending();
                    (r.name.clone(), s)
                })
                .collect(),
            insights: self
                .routes
                .borrow()
                .iter()
                .map(|r| (r.name.clone(), r.insights.clone()))
                .collect(),
        }
    }
}

/// PostgreSQL's default `log_line_prefix`, until the server says its own.
const DEFAULT_PREFIX: &str = "%m [%p] ";

impl Actor for Receiver {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Err(why) = self.bind(ctx) {
            slog::error!(self.log, "syslog_listen_failed"; "error" => &why);
            self.last_error = Some(why);
            // Stopped: the supervisor restarts it with its backoff and says why.
            ctx.stop();
            return;
        }
        info!(self.log, "syslog_listening"; "addr" => self.listen.map(|a| a.to_string()),
              "tls_addr" => self.listen_tls.map(|a| a.to_string()),
              "servers" => self.routes.borrow().len());
        self.ask_prefixes(ctx);
        ctx.run_interval(TICK, |act, ctx| act.tick(ctx));
        ctx.run_interval(SETTINGS_EVERY, |act, ctx| act.ask_prefixes(ctx));
    }
}

impl HandsOver for Receiver {
    fn handoff(&mut self) -> &mut Handoff {
        &mut self.handoff
    }

    fn handed(&mut self, outcome: &Handed, _: &mut Context<Self>) {
        self.progress = Instant::now();
        match outcome {
            Handed::Delivered(..) => {
                // Everything given to the hand-off before is in the spool now, unless
                // some is still waiting behind the cap.
                if self.handoff.waiting() == 0 {
                    let mut routes = self.routes.borrow_mut();
                    for (server, n) in self.in_hand.drain(..) {
                        if let Some(r) = routes.iter_mut().find(|r| r.name == server) {
                            r.stats.events_total += n;
                        }
                    }
                }
                self.last_success = Some(Utc::now());
                self.last_error = None;
            }
            Handed::Failed(e) => self.last_error = Some(e.to_string()),
        }
    }
}

impl Handler<Ping> for Receiver {
    type Result = MessageResult<Ping>;

    fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> Self::Result {
        MessageResult(Health {
            progress: self.progress,
            deadline: Some(Duration::from_secs(60)),
            last_success: self.last_success,
            last_error: self.last_error.clone(),
            detail: ChildDetail::Receiver(self.stats()),
        })
    }
}

/// One syslog message from `peer`: read, routed, rejoined, shaped into the outbox.
fn deliver(
    raw: &[u8],
    peer: std::net::IpAddr,
    routes: &RefCell<Vec<ServerRoute>>,
    shared: &Shared,
) {
    {
        let mut c = shared.counters.borrow_mut();
        c.messages += 1;
        c.bytes += raw.len() as u64;
    }
    let h = match header::parse(raw) {
        Ok(h) => h,
        Err(_) => {
            shared.counters.borrow_mut().unreadable += 1;
            return;
        }
    };
    let mut routes = routes.borrow_mut();
    let Some(r) = routes.iter_mut().find(|r| {
        h.app == Some(r.ident.as_str())
            && (r.host.is_empty()
                || h.host == Some(r.host.as_str())
                || r.host.parse::<std::net::IpAddr>().is_ok_and(|a| a == peer))
    }) else {
        shared.counters.borrow_mut().unrouted += 1;
        return;
    };
    r.stats.messages_total += 1;
    let mut joined = Vec::new();
    r.rejoin.push(&h, Instant::now(), &mut joined);
    for j in joined {
        shape(r, j, shared);
    }
}

/// A whole PostgreSQL message into events, in the outbox (kept back while its server's
/// prefix is not known, up to a cap; beyond, read with the default).
fn shape(r: &mut ServerRoute, j: Joined, shared: &Shared) {
    if !r.prefix_known && r.parked_bytes + j.text.len() <= MAX_PARKED_BYTES {
        r.parked_bytes += j.text.len();
        r.parked.push(j);
        return;
    }
    if j.incomplete {
        r.stats.incomplete_total += 1;
    }
    let mut text = j.text;
    text.push(b'\n');
    let mut records = Vec::new();
    r.parser
        .parse(&text, 0, Flush::Force, &mut records, usize::MAX);
    let identity = format!(
        "syslog:{}:{}:{}:{}:{}",
        r.id_host,
        j.host.as_deref().unwrap_or("-"),
        j.pid.map_or(0, |p| p as i64),
        j.seq.map_or(0, |s| s as i64),
        j.timestamp.as_deref().unwrap_or("-"),
    );
    let file = format!("syslog:{}", j.host.as_deref().unwrap_or("-"));
    let now = Utc::now();
    let mut outbox = shared.outbox.borrow_mut();
    for mut rec in records {
        if rec.pid.is_none() {
            rec.pid = j.pid.map(i64::from);
        }
        if r.own.owns(&rec) {
            r.stats.own_events_skipped_total += 1;
            continue;
        }
        let mut e = r
            .shaper
            .event(rec, &file, Format::Stderr, &identity, now, &mut r.insights);
        e.server = Some(std::sync::Arc::from(r.name.as_str()));
        shared
            .outbox_bytes
            .set(shared.outbox_bytes.get() + e.bytes());
        outbox.push(e);
    }
}

/// Whether the reading tasks wait for the spool: paused by the actor, or the outbox
/// holds as much as one hand-over should.
fn must_wait(shared: &Shared) -> bool {
    shared.paused.get() || shared.outbox_bytes.get() > PAUSE_BYTES
}

async fn read_udp(
    socket: tokio::net::UdpSocket,
    routes: Rc<RefCell<Vec<ServerRoute>>>,
    shared: Rc<Shared>,
) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        while must_wait(&shared) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match socket.recv_from(&mut buf).await {
            Ok((n, peer)) => deliver(&buf[..n], peer.ip(), &routes, &shared),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn accept_tcp(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    routes: Rc<RefCell<Vec<ServerRoute>>>,
    shared: Rc<Shared>,
    log: Logger,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if shared.connections.get() >= MAX_CONNECTIONS {
            shared.counters.borrow_mut().connections_refused += 1;
            drop(stream);
            continue;
        }
        shared.connections.set(shared.connections.get() + 1);
        let (routes, shared, log, tls) = (routes.clone(), shared.clone(), log.clone(), tls.clone());
        actix::spawn(async move {
            match tls {
                None => read_tcp(stream, peer.ip(), &routes, &shared, &log).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => read_tcp(s, peer.ip(), &routes, &shared, &log).await,
                        Ok(Err(e)) => {
                            shared.counters.borrow_mut().tls_failed += 1;
                            warn!(log, "syslog_tls_refused"; "peer" => %peer, "error" => %e);
                        }
                        Err(_) => {
                            shared.counters.borrow_mut().tls_failed += 1;
                            warn!(log, "syslog_tls_refused"; "peer" => %peer,
                                  "error" => "no TLS handshake within 10 s");
                        }
                    }
                }
            }
            shared.connections.set(shared.connections.get() - 1);
        });
    }
}

/// The TLS side of `listen_tls`: the receiver's certificate and key (checked as the
/// configuration was; read again here, at each start of the receiver).
fn tls_acceptor(cert: &str, key: &str) -> Result<tokio_rustls::TlsAcceptor, String> {
    let (certs, key) = crate::config::read_cert_and_key(
        cert,
        key,
        ("syslog.tls_cert", "syslog.tls_key"),
        "a server",
    )
    .map_err(|(k, reason)| format!("{k}: {reason}"))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("syslog TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("syslog.tls_cert: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

async fn read_tcp<S: tokio::io::AsyncRead + Unpin>(
    mut stream: S,
    peer: std::net::IpAddr,
    routes: &RefCell<Vec<ServerRoute>>,
    shared: &Shared,
    log: &Logger,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut skipping = false;
    loop {
        while must_wait(shared) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        loop {
            match frame::step(&buf[at..], skipping, MAX_MESSAGE) {
                Step::Message { start, end, used } => {
                    deliver(&buf[at + start..at + end], peer, routes, shared);
                    at += used;
                    skipping = false;
                }
                Step::Skip { used, within } => {
                    if used > 1 {
                        shared.counters.borrow_mut().oversize += 1;
                    }
                    skipping = within;
                    at += used;
                }
                Step::More => break,
                Step::Garbage => {
                    warn!(log, "syslog_stream_unreadable"; "peer" => %peer,
                          "effect" => "the connection is closed (not syslog framing)");
                    return;
                }
            }
        }
        buf.drain(..at);
    }
}

/// The inode of a socket (its line in `/proc/net/udp`).
fn socket_inode(s: &std::net::UdpSocket) -> Option<u64> {
    use std::os::unix::io::AsRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", s.as_raw_fd())).ok()?;
    let text = link.to_str()?;
    text.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Datagrams the kernel dropped at the socket with inode `inode` (its receive buffer
/// was full): the last column of its line in `/proc/net/udp` or `udp6`.
fn udp_drops(inode: u64) -> Option<u64> {
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(9).and_then(|i| i.parse::<u64>().ok()) == Some(inode) {
                return f.last()?.parse().ok();
            }
        }
    }
    None
}
