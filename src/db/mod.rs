//! The database connection pool and the settings that keep the agent harmless: every
//! connection identifies itself as `postgres-agent`, is read-only, and carries a
//! statement, lock and idle-in-transaction timeout set at connection start (so no
//! statement can ever run without them), and the pool is small and fails fast.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use slog::{warn, Logger};
pub mod cap;
pub mod text;
pub mod tls;

use cap::Slot;

pub mod socket;

use crate::config::{DatabaseConfig, SslMode};
pub use tls::Tls;

/// The `application_name` of every agent connection; the activity source excludes
/// sessions with this name and the agent's own role from what it reports.
pub const APPLICATION_NAME: &str = "postgres-agent";

/// Errors talking to the database, classified for the collector.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No connection could be had within `connect_timeout` (the last connect error, if
    /// the pool saw one, says why).
    #[error("database unreachable: {0}")]
    Unreachable(String),
    /// A statement failed (including `statement_timeout`).
    #[error("query failed: {message}")]
    Query {
        /// The server's message and SQLSTATE, or the client's description.
        message: String,
        /// The SQLSTATE when the server sent the error.
        sqlstate: Option<String>,
    },
    /// A request to the server got no answer within its deadline.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// Every connection the agent may open was in use for the whole wait.
    #[error("all {max} agent connections (database.pool_max_size) stayed in use for {} ms", waited.as_millis())]
    Busy {
        /// The cap.
        max: u32,
        /// How long the borrower waited.
        waited: std::time::Duration,
    },
}

impl DbError {
    /// Describes a tokio-postgres error with the server's message when there is one.
    pub fn query(e: tokio_postgres::Error) -> DbError {
        DbError::Query {
            message: describe(&e),
            sqlstate: e.as_db_error().map(|d| d.code().code().to_string()),
        }
    }

    /// True when trying again later may succeed without anyone changing anything: the
    /// server is unreachable, slow, restarting, out of resources or the transaction
    /// was rolled back. False for what needs a fix (syntax, privilege, missing object,
    /// bad data).
    pub fn retriable(&self) -> bool {
        match self {
            DbError::Unreachable(_) | DbError::Timeout(_) | DbError::Busy { .. } => true,
            // A client-side error (connection closed, protocol): the next connection may do.
            DbError::Query { sqlstate: None, .. } => true,
            DbError::Query {
                sqlstate: Some(code),
                ..
            } => retriable_class(code),
        }
    }
}

/// SQLSTATE classes that pass by themselves: connection exception (08), transaction
/// rollback (40), insufficient resources (53), object not in prerequisite state (55,
/// e.g. a lock not available), operator intervention (57: statement timeout, admin
/// shutdown, the server starting up), system error (58).
fn retriable_class(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "40" | "53" | "55" | "57" | "58"))
}

/// Server message (with SQLSTATE) when the error came from the server, else the
/// client-side description with its causes ("error performing TLS handshake: invalid
/// peer certificate: UnknownIssuer").
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Builds the client configuration with the agent's session settings.
pub fn pg_config(cfg: &DatabaseConfig) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    if cfg.host.starts_with('/') {
        c.host_path(&cfg.host);
    } else {
        c.host(&cfg.host);
    }
    c.port(cfg.port)
        .user(&cfg.user)
        .dbname(&cfg.dbname)
        .application_name(APPLICATION_NAME)
        .connect_timeout(cfg.connect_timeout)
        .ssl_mode(match cfg.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        })
        .options(session_options(cfg));
    if let Some(p) = &cfg.password {
        c.password(p.expose());
    }
    c
}

/// The `-c` options sent in the startup packet. Setting them at connection start (rather
/// than with `SET` after connecting) means no agent statement can ever run without them.
pub fn session_options(cfg: &DatabaseConfig) -> String {
    format!(
        "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={} -c default_transaction_read_only=on",
        cfg.statement_timeout.as_millis(),
        cfg.lock_timeout.as_millis(),
        cfg.statement_timeout.as_millis(),
    )
}

/// How long a closed connection's slot waits at most for its backend to end (the server
/// closes its end of the socket then): a backend that is stopped or stuck keeps its slot
/// this long.
const BACKEND_EXIT_MAX: Duration = Duration::from_secs(300);

/// How long an unused connection stays open for the next borrower.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// The agent's connections to the database, shared by every source and the log reader
/// (clones share them): at most `database.pool_max_size` sockets open at once in the
/// whole process ([`cap`]), counting the short ones to other databases, the one-off ones,
/// the idle ones, those of the pool a reload replaced that are still open, and those
/// whose borrower gave up while the backend still owed an answer. A borrower waits for an
/// idle connection or a free slot at most `connect_timeout`; an unused connection to the
/// configured database is kept for the next borrower for [`IDLE_TIMEOUT`].
///
/// Connections are driven by a thread of their own (not by the borrower's), so a
/// collector that is restarted does not take down a connection another one is using,
/// and a connection given back is only kept when its borrower had it for less than one
/// `statement_timeout`: a borrower cut short (cycle timeout, hang, restart) may leave a
/// statement running or a dead socket behind, and its connection is closed instead. Its
/// slot is free once its socket is.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    max: u32,
    server: Server,
    idle: Mutex<Vec<Idle>>,
    /// A reload replaced this pool: connections coming back are closed, not kept.
    retired: AtomicBool,
    config: tokio_postgres::Config,
    /// The TLS setup failed (bad `sslrootcert`): every connect then fails with that
    /// reason instead of the agent refusing to run.
    tls: Result<Tls, tls::TlsError>,
    connect_timeout: Duration,
    keep_if_held_under: Duration,
    log: Logger,
}

struct Idle {
    client: tokio_postgres::Client,
    since: Instant,
}

/// A borrowed connection (derefs to the client); given back when dropped.
pub struct Conn {
    client: Option<tokio_postgres::Client>,
    /// The server it is a connection to (its facts; its thread drives the socket).
    server: Server,
    /// Where it goes back to; `None` for a connection closed after use.
    home: Option<Weak<Inner>>,
    lent_at: Instant,
}

impl std::ops::Deref for Conn {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &tokio_postgres::Client {
        self.client
            .as_ref()
            .unwrap_or_else(|| unreachable!("the client is taken only on drop"))
    }
}

impl Conn {
    /// The server it is a connection to.
    pub fn server(&self) -> &Server {
        &self.server
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let (Some(client), Some(home)) = (
            self.client.take(),
            self.home.as_ref().and_then(Weak::upgrade),
        ) else {
            return;
        };
        if !client.is_closed()
            && self.lent_at.elapsed() < home.keep_if_held_under
            && !home.retired.load(Ordering::Acquire)
        {
            home.lock_idle().push(Idle {
                client,
                since: Instant::now(),
            });
            // A borrower waiting for a connection may take this one.
            home.server.cap().wake();
        }
    }
}

/// The most statements seen running long kept for pg_plans between its cycles.
pub const LONG_RUNNING_KEPT: usize = 100;

/// What lasts of one server's connections through reloads: the cap on its sockets, the
/// thread that drives them, and what was learnt of the server. A reload's new pool gets
/// the same one, so the old pool's open sockets count against the new cap and go on
/// being driven. Clones share it; the thread ends when the last clone is dropped.
#[derive(Clone)]
pub struct Server {
    inner: Arc<ServerInner>,
}

struct ServerInner {
    cap: Arc<cap::Cap>,
    facts: Arc<crate::model::ServerFacts>,
    board: Arc<crate::board::Board>,
    /// The statements with the most time in the last pg_statements cycle, for pg_plans.
    top: Mutex<Option<Arc<crate::model::Top>>>,
    /// Statements the session sampler saw running long since pg_plans last looked.
    long_running: Mutex<Vec<crate::model::LongRunning>>,
    /// Plan shapes pg_plans and the log reader share.
    plan_shapes: Arc<crate::model::PlanShapes>,
    drivers: tokio::runtime::Handle,
    /// Dropped with the last clone: the driving thread then ends.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    /// A server's state, with a thread to drive its connections. Fails only when the
    /// system cannot start a thread.
    pub fn new() -> std::io::Result<Server> {
        Server::make(cap::Cap::new(1))
    }

    /// [`Server::new`], its sockets counted under the process-wide cap `all` too.
    pub fn under(all: &Arc<cap::Cap>) -> std::io::Result<Server> {
        Server::make(cap::Cap::under(1, all.clone()))
    }

    fn make(cap: Arc<cap::Cap>) -> std::io::Result<Server> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let drivers = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("pg-connections".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                })
            })?;
        Ok(Server {
            inner: Arc::new(ServerInner {
                cap,
                facts: Arc::default(),
                board: Arc::default(),
                top: Mutex::default(),
                long_running: Mutex::default(),
                plan_shapes: Arc::default(),
                drivers,
                _stop: stop,
            }),
        })
    }

    /// The cap on its sockets (`database.pool_max_size`).
    pub fn cap(&self) -> &Arc<cap::Cap> {
        &self.inner.cap
    }

    /// What was learnt of the server.
    pub fn facts(&self) -> &Arc<crate::model::ServerFacts> {
        &self.inner.facts
    }

    /// Its sources' latest readings, for the metrics page.
    pub fn board(&self) -> &Arc<crate::board::Board> {
        &self.inner.board
    }

    /// The statements with the most execution time in the last pg_statements cycle.
    pub fn top_statements(&self) -> Option<Arc<crate::model::Top>> {
        self.inner
            .top
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Hands a pg_statements cycle's top statements to pg_plans.
    pub fn post_top_statements(&self, top: Arc<crate::model::Top>) {
        *self.inner.top.lock().unwrap_or_else(|p| p.into_inner()) = Some(top);
    }

    /// The plan shapes pg_plans and the log reader share.
    pub fn plan_shapes(&self) -> &Arc<crate::model::PlanShapes> {
        &self.inner.plan_shapes
    }

    /// Notes statements the session sampler saw running long: one entry per database
    /// and query id (the longest seen), at most [`LONG_RUNNING_KEPT`] until pg_plans
    /// takes them.
    pub fn note_long_running(&self, seen: impl IntoIterator<Item = crate::model::LongRunning>) {
        let mut kept = self
            .inner
            .long_running
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for s in seen {
            match kept
                .iter()
                .position(|k| k.queryid == s.queryid && k.datname == s.datname)
            {
                Some(i) if kept[i].running_s < s.running_s => kept[i] = s,
                Some(_) => {}
                None if kept.len() < LONG_RUNNING_KEPT => kept.push(s),
                None => {}
            }
        }
    }

    /// The statements seen running long since the last call, longest first.
    pub fn take_long_running(&self) -> Vec<crate::model::LongRunning> {
        let mut v = std::mem::take(
            &mut *self
                .inner
                .long_running
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        v.sort_by(|a, b| b.running_s.total_cmp(&a.running_s));
        v
    }

    fn drivers(&self) -> &tokio::runtime::Handle {
        &self.inner.drivers
    }
}

impl cap::Reclaim for Inner {
    fn close_idle(&self) -> bool {
        self.take_idle().is_some()
    }
}

impl Inner {
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes idle connections unused for [`IDLE_TIMEOUT`] or closed by the server.
    fn prune(&self) {
        self.lock_idle()
            .retain(|i| !i.client.is_closed() && i.since.elapsed() < IDLE_TIMEOUT);
    }

    /// An idle connection that is still open, if there is one.
    fn take_idle(&self) -> Option<tokio_postgres::Client> {
        let mut idle = self.lock_idle();
        while let Some(i) = idle.pop() {
            if !i.client.is_closed() {
                return Some(i.client);
            }
        }
        None
    }
}

/// What a borrower got: a connection kept idle, or a slot to open one with.
enum Got {
    Idle(tokio_postgres::Client),
    Slot(Slot),
}

impl Db {
    /// At most `max_size` sockets to `server` (a reload's new pool sets the cap for the
    /// old one's sockets too). None is made here, so a database that is down does not
    /// keep the agent from starting.
    pub fn new(cfg: &DatabaseConfig, server: &Server, max_size: u32, log: &Logger) -> Db {
        let tls = tls::make(cfg);
        if let Err(e) = &tls {
            warn!(log, "db_tls_setup_failed"; "error" => %e);
        }
        let max = max_size.max(1);
        server.cap().set_max(max);
        let inner = Arc::new(Inner {
            max,
            server: server.clone(),
            idle: Mutex::new(Vec::new()),
            retired: AtomicBool::new(false),
            config: pg_config(cfg),
            tls,
            connect_timeout: cfg.connect_timeout,
            keep_if_held_under: cfg.statement_timeout,
            log: log.clone(),
        });
        let pool: Arc<dyn cap::Reclaim> = inner.clone();
        server.cap().register(Arc::downgrade(&pool));
        let weak = Arc::downgrade(&inner);
        server.drivers().spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                match weak.upgrade() {
                    Some(inner) => inner.prune(),
                    None => return,
                }
            }
        });
        Db { inner }
    }

    /// A reload replaced this pool: its idle connections are closed now, and those
    /// still lent are closed when they come back, so their slots go to the new pool.
    pub fn retire(&self) {
        self.inner.retired.store(true, Ordering::Release);
        let idle = std::mem::take(&mut *self.inner.lock_idle());
        drop(idle);
    }

    /// The server it connects to.
    pub fn server(&self) -> &Server {
        &self.inner.server
    }

    /// The cap (`database.pool_max_size`).
    pub fn max_size(&self) -> u32 {
        self.inner.max
    }

    /// Idle connections kept for the next borrower.
    pub fn idle(&self) -> usize {
        self.inner.lock_idle().len()
    }

    /// A connection to the configured database: an idle one, else a new one. Fails fast
    /// with the server's own reason when it refuses.
    pub async fn get(&self) -> Result<Conn, DbError> {
        self.inner.prune();
        let got = self
            .wait(|| {
                let cap = self.inner.server.cap();
                let got = self
                    .inner
                    .take_idle()
                    .map(Got::Idle)
                    .or_else(|| cap.try_take().map(Got::Slot));
                if got.is_none() {
                    cap.reclaim();
                }
                got
            })
            .await?;
        let client = match got {
            Got::Idle(client) => client,
            Got::Slot(slot) => self.open(self.inner.config.clone(), slot).await?,
        };
        Ok(Conn {
            client: Some(client),
            server: self.inner.server.clone(),
            home: Some(Arc::downgrade(&self.inner)),
            lent_at: Instant::now(),
        })
    }

    /// A new connection to the configured database, closed after use (the log
    /// reader's settings question, the postmaster's discovery).
    pub async fn connect_once(&self) -> Result<Conn, DbError> {
        self.connect_to(None).await
    }

    /// A new connection to database `dbname` (the configured one when `None`) with the
    /// same settings and limits, counted against the cap and closed after use.
    pub async fn connect_to(&self, dbname: Option<&str>) -> Result<Conn, DbError> {
        let slot = self
            .wait(|| {
                let cap = self.inner.server.cap();
                let slot = cap.try_take();
                if slot.is_none() {
                    // An idle connection gives its slot to the new one (once its socket
                    // is closed, which wakes this wait): this pool's, else another
                    // server's when the process-wide cap is the one reached.
                    if self.inner.take_idle().is_none() {
                        cap.reclaim();
                    }
                }
                slot
            })
            .await?;
        let mut config = self.inner.config.clone();
        if let Some(name) = dbname {
            config.dbname(name);
        }
        let client = self.open(config, slot).await?;
        Ok(Conn {
            client: Some(client),
            server: self.inner.server.clone(),
            home: None,
            lent_at: Instant::now(),
        })
    }

    /// Runs `attempt` until it gives something, for at most `connect_timeout`.
    async fn wait<T>(&self, attempt: impl FnMut() -> Option<T>) -> Result<T, DbError> {
        let wait = self.inner.connect_timeout;
        let deadline = tokio::time::Instant::now() + wait;
        let cap = self.inner.server.cap();
        cap.wait_for(deadline, attempt)
            .await
            .ok_or_else(|| DbError::Busy {
                max: cap.max(),
                waited: wait,
            })
    }

    /// Connects on the connection thread, within `connect_timeout`. The socket keeps
    /// `slot` until it is closed.
    async fn open(
        &self,
        config: tokio_postgres::Config,
        slot: Slot,
    ) -> Result<tokio_postgres::Client, DbError> {
        let tls = self
            .inner
            .tls
            .clone()
            .map_err(|e| DbError::Unreachable(e.to_string()))?;
        let timeout = self.inner.connect_timeout;
        let log = self.inner.log.clone();
        let job = self.inner.server.drivers().spawn(async move {
            let (host, port) = match (config.get_hosts().first(), config.get_ports().first()) {
                (Some(tokio_postgres::config::Host::Tcp(h)), Some(p)) => (h.clone(), *p),
                (Some(tokio_postgres::config::Host::Unix(d)), Some(p)) => {
                    (d.to_string_lossy().into_owned(), *p)
                }
                _ => return Err("no host or port configured".to_string()),
            };
            let late = || format!("no connection within {} ms", timeout.as_millis());
            let deadline = tokio::time::Instant::now() + timeout;
            let (stream, watch) =
                match tokio::time::timeout_at(deadline, socket::connect(&host, port)).await {
                    Ok(Ok(connected)) => connected,
                    Ok(Err(e)) => return Err(format!("error connecting to server: {e}")),
                    Err(_) => return Err(late()),
                };
            let startup = async {
                // TLS checks the host name of a TCP host; a socket directory has none.
                let name = if host.starts_with('/') { "" } else { host.as_str() };
                let mut make = tls;
                let tls = tokio_postgres::tls::MakeTlsConnect::<socket::Stream>::make_tls_connect(
                    &mut make, name,
                )
                .map_err(|e| format!("TLS setup: {e}"))?;
                config
                    .connect_raw(stream, tls)
                    .await
                    .map_err(|e| describe(&e))
            };
            match tokio::time::timeout_at(deadline, startup).await {
                Ok(Ok((client, conn))) => {
                    // Drives the socket; ends when the client is dropped and nothing is
                    // owed by the server any more. The slot is given back when the
                    // server closed its end: its backend has ended (a stopped one keeps
                    // the slot, so the cap counts backends, not our sockets).
                    tokio::spawn(async move {
                        let _ = conn.await;
                        if !socket::backend_gone(watch, BACKEND_EXIT_MAX).await {
                            warn!(log, "db_backend_lingered";
                                "waited_s" => BACKEND_EXIT_MAX.as_secs(),
                                "effect" => "the backend of a closed connection did not end; its slot is given back");
                        }
                        drop(slot);
                    });
                    Ok(client)
                }
                failed => {
                    // The server may have started a backend for this socket (a startup
                    // cut short by the deadline, refused credentials): the slot is
                    // given back once it has ended, as for any other connection.
                    tokio::spawn(async move {
                        socket::end_writes(&watch);
                        let _ = socket::backend_gone(watch, BACKEND_EXIT_MAX).await;
                        drop(slot);
                    });
                    Err(match failed {
                        Ok(Err(e)) => e,
                        _ => late(),
                    })
                }
            }
        });
        let res = job
            .await
            .unwrap_or_else(|e| Err(format!("the connection task failed: {e}")));
        res.map_err(|msg| {
            warn!(self.inner.log, "db_connect_failed"; "error" => &msg);
            DbError::Unreachable(msg)
        })
    }
}

/// The longest one cycle may take: waiting for a free connection and making one (each
/// at most `connect_timeout`), plus two statements (the version check and the query),
/// plus a second of slack. The server enforces
/// `statement_timeout` too; this limit also covers a network that swallows packets.
pub fn cycle_limit(db: &crate::config::DatabaseConfig) -> std::time::Duration {
    db.connect_timeout * 2 + db.statement_timeout * 2 + std::time::Duration::from_secs(1)
}

#[cfg(test)]
mod error_tests {
    use super::*;

    #[test]
    fn what_passes_by_itself_is_retriable_and_what_needs_a_fix_is_not() {
        let q = |code: &str| DbError::Query {
            message: "m".into(),
            sqlstate: Some(code.into()),
        };
        for code in [
            "08006", "40P01", "53300", "55P03", "57014", "57P03", "58030",
        ] {
            assert!(q(code).retriable(), "{code}");
        }
        for code in ["42501", "42P01", "42883", "22021", "0A000", "28P01"] {
            assert!(!q(code).retriable(), "{code}");
        }
        assert!(DbError::Unreachable("refused".into()).retriable());
        assert!(DbError::Timeout(std::time::Duration::from_secs(1)).retriable());
        assert_eq!(q("57014").to_string(), "query failed: m");
    }
}
