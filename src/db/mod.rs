//! The database connection pool and the settings that keep the agent harmless: every
//! connection identifies itself as `postgres-agent`, is read-only, and carries a
//! statement, lock and idle-in-transaction timeout set at connection start (so no
//! statement can ever run without them), and the pool is small and fails fast.

use std::sync::{Arc, Mutex};

use bb8::{ErrorSink, Pool as Bb8Pool, RunError};
use bb8_postgres::PostgresConnectionManager;
use slog::{warn, Logger};
pub mod text;
pub mod tls;

use crate::config::{DatabaseConfig, SslMode};
pub use tls::Tls;

/// The `application_name` of every agent connection; the activity source excludes
/// sessions with this name and the agent's own role from what it reports.
pub const APPLICATION_NAME: &str = "postgres-agent";

/// The connection pool type.
pub type Pool = Bb8Pool<PostgresConnectionManager<Tls>>;

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
            DbError::Unreachable(_) | DbError::Timeout(_) => true,
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
            SslMode::Require | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
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

/// Remembers the last connection error, because bb8 otherwise only reports `TimedOut`.
#[derive(Clone)]
pub struct LastError {
    last: Arc<Mutex<Option<String>>>,
    log: Logger,
}

impl std::fmt::Debug for LastError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LastError")
    }
}

impl ErrorSink<tokio_postgres::Error> for LastError {
    fn sink(&self, e: tokio_postgres::Error) {
        let msg = describe(&e);
        warn!(self.log, "db_connect_failed"; "error" => &msg);
        if let Ok(mut g) = self.last.lock() {
            *g = Some(msg);
        }
    }

    fn boxed_clone(&self) -> Box<dyn ErrorSink<tokio_postgres::Error>> {
        Box::new(self.clone())
    }
}

impl LastError {
    /// Takes the last connection error seen, if any.
    pub fn take(&self) -> Option<String> {
        self.last.lock().ok().and_then(|mut g| g.take())
    }
}

/// A pool and the place where its connection errors land.
pub struct Db {
    /// The pool (connections are made lazily, on first use).
    pub pool: Pool,
    errors: LastError,
    config: tokio_postgres::Config,
    /// `None` when the TLS setup failed (bad `sslrootcert`): every connect then fails
    /// with that reason instead of the agent refusing to run.
    tls: Result<Tls, tls::TlsError>,
    connect_timeout: std::time::Duration,
}

impl Db {
    /// Builds a pool of at most `max_size` connections. No connection is made here, so a
    /// database that is down does not keep the agent from starting.
    pub fn new(cfg: &DatabaseConfig, max_size: u32, log: &Logger) -> Db {
        let errors = LastError {
            last: Arc::new(Mutex::new(None)),
            log: log.clone(),
        };
        let tls = tls::make(cfg);
        if let Err(e) = &tls {
            warn!(log, "db_tls_setup_failed"; "error" => %e);
        }
        let manager = PostgresConnectionManager::new(
            pg_config(cfg),
            tls.clone().unwrap_or_else(|_| tls::make_plain()),
        );
        let pool = Bb8Pool::builder()
            .max_size(max_size.max(1))
            .min_idle(None)
            .connection_timeout(cfg.connect_timeout)
            // Do not keep retrying a refused connection inside one `get`: the cycle should
            // fail fast and the next cycle try again.
            .retry_connection(false)
            .idle_timeout(Some(std::time::Duration::from_secs(600)))
            .error_sink(Box::new(errors.clone()))
            .build_unchecked(manager);
        Db {
            pool,
            errors,
            config: pg_config(cfg),
            tls,
            connect_timeout: cfg.connect_timeout,
        }
    }

    /// A new connection outside the pool (closed when the client is dropped), with the
    /// same settings and limits as the pool's.
    pub async fn connect_once(&self) -> Result<tokio_postgres::Client, DbError> {
        let tls = self
            .tls
            .clone()
            .map_err(|e| DbError::Unreachable(e.to_string()))?;
        let connect = self.config.connect(tls);
        let (client, conn) = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(DbError::Unreachable(describe(&e))),
            Err(_) => {
                return Err(DbError::Unreachable(format!(
                    "no connection within {} ms",
                    self.connect_timeout.as_millis()
                )))
            }
        };
        // The connection future drives the socket; it ends when the client is dropped.
        tokio::spawn(conn);
        Ok(client)
    }

    /// A connection, or a classified error saying why there is none.
    ///
    /// When the pool is empty we connect ourselves and hand the connection to the pool:
    /// bb8 would wait out the whole `connection_timeout` even when the server refuses at
    /// once, and then report only "timed out". Connecting here fails fast, with the
    /// server's own reason.
    pub async fn get(
        &self,
    ) -> Result<bb8::PooledConnection<'_, PostgresConnectionManager<Tls>>, DbError> {
        if self.pool.state().connections == 0 {
            let client = self.connect_once().await?;
            // A full pool (a connection appeared meanwhile) just drops ours.
            let _ = self.pool.add(client);
        }
        self.pool.get().await.map_err(|e| match e {
            RunError::User(e) => DbError::Unreachable(describe(&e)),
            RunError::TimedOut => DbError::Unreachable(
                self.errors
                    .take()
                    .unwrap_or_else(|| "no connection within connect_timeout_ms".to_string()),
            ),
        })
    }
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
