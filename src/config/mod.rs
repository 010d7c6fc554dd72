//! Configuration: the TOML file plus `POSTGRES_AGENT__SECTION__KEY` environment
//! overrides, read in two stages. `raw` holds the file as written; `validate` turns it
//! into a [`Config`] with strong types, enforcing the safety limits (pool ≤ 5 connections,
//! statement timeout ≥ 1 s, interval 1..3600 s) and reporting every problem at once.

mod certs;
mod raw;
mod secret;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use certs::{read_cert_and_key, read_client_cert, read_root_certs};
pub use secret::{display_url, Secret};
pub use validate::{default_pattern, is_this_host, validate};

/// The prefix of environment overrides: `POSTGRES_AGENT__DATABASE__PORT=5433`.
pub const ENV_PREFIX: &str = "POSTGRES_AGENT";

/// A validated configuration. Each section is its own type so that a reload can tell
/// which children's settings changed by comparing sections.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[agent]`
    pub agent: AgentConfig,
    /// `[database]`: the first server's (see [`Config::view`] for each server's).
    pub database: DatabaseConfig,
    /// `[collection]`: the first server's.
    pub collection: CollectionConfig,
    /// `[correlation]`
    pub correlation: CorrelationConfig,
    /// `[logs]`: the first server's.
    pub logs: LogsConfig,
    /// The servers watched: the one of the single-server form, or each `[[servers]]`
    /// entry, in the file's order. In a [`Config::view`], that server alone.
    pub servers: Vec<ServerConfig>,
    /// `[listener]`
    pub listener: ListenerConfig,
    /// `[buffer]`
    pub buffer: BufferConfig,
    /// `[breaker]`
    pub breaker: BreakerConfig,
    /// `[metrics]`
    pub metrics: MetricsConfig,
    /// `[otlp]`
    pub otlp: OtlpConfig,
    /// `[syslog]`
    pub syslog: SyslogConfig,
    /// `[[custom]]`: the user's own queries, each a source of its own on every server.
    pub custom: Vec<CustomQuery>,
}

/// `[[custom]]`: a user's query, proven at load to be one query that only reads.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomQuery {
    /// Its name: on its events, metrics and child (`pg_custom.<name>`).
    pub name: String,
    /// The query, without trailing semicolons.
    pub query: String,
    /// Where it runs.
    pub databases: CustomDatabases,
    /// How often.
    pub interval: Duration,
    /// The most rows kept of one run (fetched by a cursor: the rest stay on the server).
    pub max_rows: u32,
    /// Its `statement_timeout`.
    pub timeout: Duration,
    /// The oldest server (`server_version_num`) it runs on.
    pub min_server_version: Option<i32>,
    /// The newest server it runs on.
    pub max_server_version: Option<i32>,
    /// Columns that name a row (metric labels; a counter's row is known by them).
    pub labels: Vec<String>,
    /// Columns that are gauges.
    pub gauges: Vec<String>,
    /// Columns that are counters (shipped with their deltas).
    pub counters: Vec<String>,
}

/// The databases a `[[custom]]` query runs in.
#[derive(Debug, Clone, PartialEq)]
pub enum CustomDatabases {
    /// The agent's own (`database.dbname`).
    Connected,
    /// Every database the role may connect to (`"*"`).
    All,
    /// These.
    List(Vec<String>),
}

impl CustomDatabases {
    /// As written in the file.
    pub fn describe(&self) -> serde_json::Value {
        match self {
            CustomDatabases::Connected => "connected".into(),
            CustomDatabases::All => "*".into(),
            CustomDatabases::List(l) => l.clone().into(),
        }
    }
}

/// `[syslog]`: the receiver of server logs sent by syslog (opt-in).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SyslogConfig {
    /// Where messages are received, TCP and UDP on the same port; `None` (an empty
    /// `listen`) means off.
    pub listen: Option<std::net::SocketAddr>,
    /// Where messages are received over TLS (RFC 5425, TCP); `None`: nowhere.
    pub listen_tls: Option<std::net::SocketAddr>,
    /// The receiver's certificate (PEM, with its chain) and private key for
    /// `listen_tls`: paths, read when the receiver starts (and checked at load).
    pub tls_cert: String,
    /// The private key (PEM) of `tls_cert`.
    pub tls_key: String,
}

impl SyslogConfig {
    /// The receiver has somewhere to listen.
    pub fn on(&self) -> bool {
        self.listen.is_some() || self.listen_tls.is_some()
    }
}

/// One server the agent watches: a `[[servers]]` entry, or the top-level sections of
/// the single-server form.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// The entry's `name`; `None` in the single-server form (its events' `server` is
    /// the agent's host name).
    pub name: Option<String>,
    /// The `project` of its events (`agent.project_id` unless the entry sets one).
    pub project_id: String,
    /// How to reach it.
    pub database: DatabaseConfig,
    /// Which sources run for it, how often.
    pub collection: CollectionConfig,
    /// Its log.
    pub logs: LogsConfig,
    /// It runs on this host (a socket, loopback or one of this host's addresses):
    /// only then are this host's figures its own.
    pub local: bool,
}

/// `[otlp]`: OTLP/HTTP log records to an OpenTelemetry Collector (opt-in).
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// The logs URL (`<endpoint>/v1/logs`); `None` (an empty `endpoint`) means off.
    pub url: Option<String>,
    /// Extra request headers (authorization and the like): secrets, never shown.
    pub headers: Vec<(String, Secret)>,
    /// `service.name` of the resource.
    pub service_name: String,
    /// Delivery settings, as for the listener (`url` and `token` unused).
    pub delivery: ListenerConfig,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            url: None,
            headers: Vec::new(),
            service_name: "postgresql".into(),
            delivery: ListenerConfig {
                url: String::new(),
                token: Secret::default(),
                timeout: Duration::from_secs(10),
                compression: Compression::Gzip,
                batch_max_events: 500,
                batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
                retry_base: Duration::from_secs(1),
                retry_max: Duration::from_secs(60),
            },
        }
    }
}

/// `[metrics]`: the agent's own health as a Prometheus endpoint (opt-in).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served; `None` (an empty `listen`) means off.
    pub listen: Option<std::net::SocketAddr>,
    /// The database's metrics on the same page, under postgres_exporter's names.
    pub database: bool,
    /// Statements on the page: the most time-consuming this many (by role, database
    /// and query id).
    pub statements_limit: u32,
}

impl MetricsConfig {
    /// True when the sources keep their latest readings for the page: it is served and
    /// asks for them.
    pub fn database_readings(&self) -> bool {
        self.listen.is_some() && self.database
    }
}

/// `[agent]`: who we are and where we keep state.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Sent with every batch and every event so the listener knows the project.
    pub project_id: String,
    /// This host's name as the listener will see it.
    pub hostname: String,
    /// Spool, status dump and (later) log positions live here.
    pub state_dir: PathBuf,
    /// How long SIGTERM waits for the last flush before exiting anyway.
    pub shutdown_grace: Duration,
    /// Every server's connections together, at most (each server's own cap,
    /// `pool_max_size`, holds too).
    pub max_connections: u32,
}

/// `agent.max_connections` by default: ten servers at the largest pool.
pub const DEFAULT_MAX_CONNECTIONS: i64 = 50;

/// How TLS is used towards the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS if the server offers it, without checking its certificate (libpq's meaning).
    Prefer,
    /// Always TLS, without checking the certificate (libpq's meaning).
    Require,
    /// Always TLS; the certificate must chain to `sslrootcert` (or the system CAs); its
    /// names are not checked.
    VerifyCa,
    /// Always TLS; the certificate must chain to `sslrootcert` (or the system CAs) and
    /// name the host.
    VerifyFull,
}

/// `[database]`: how to reach the server, and the limits that keep the agent harmless.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseConfig {
    /// Socket directory (starts with `/`) or host name.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Role to connect as; `pg_monitor` is enough.
    pub user: String,
    /// Database to connect to.
    pub dbname: String,
    /// Password read from `password_file`, if one was configured.
    pub password: Option<Secret>,
    /// TLS mode (TCP connections only; Unix sockets never use TLS).
    pub sslmode: SslMode,
    /// CA certificates (PEM) for `verify-ca` and `verify-full`; empty: the system's CA
    /// store.
    pub sslrootcert: String,
    /// The agent's client certificate (PEM, with its chain), for servers that ask for
    /// one (`hostssl … cert`); empty: none. Set together with `sslkey`.
    pub sslcert: String,
    /// The client certificate's private key (PEM).
    pub sslkey: String,
    /// Connections the pool may open; never above [`MAX_POOL_SIZE`].
    pub pool_max_size: u32,
    /// Server-side limit of every agent statement; never below one second.
    pub statement_timeout: Duration,
    /// Server-side limit on waiting for a lock; never above the statement timeout.
    pub lock_timeout: Duration,
    /// Limit on establishing a connection (and on waiting for a pooled one).
    pub connect_timeout: Duration,
}

/// The largest pool the agent will ever open: more would compete with the application.
pub const MAX_POOL_SIZE: i64 = 5;
/// The smallest statement timeout accepted, in milliseconds.
pub const MIN_STATEMENT_TIMEOUT_MS: i64 = 1000;

/// `listener.batch_max_bytes` by default: 5 MB of event data per batch.
pub const DEFAULT_BATCH_MAX_BYTES: u64 = 5_000_000;

/// `[collection]`: which sources run, how often, and how much they may read.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionConfig {
    /// Default sampling interval of every source.
    pub interval: Duration,
    /// Interval of `pg_activity` (defaults to `interval`).
    pub activity_interval: Duration,
    /// Session sampling interval; `None` when off (`sample_interval_ms = 0`). Samples are
    /// summarized per `activity_interval` window.
    pub sample_interval: Option<Duration>,
    /// Interval of `pg_locks` while blocking is seen (never slower than `interval`).
    pub locks_blocking_interval: Duration,
    /// `pg_activity` enabled.
    pub activity: bool,
    /// `pg_statements` enabled.
    pub statements: bool,
    /// `pg_locks` enabled.
    pub locks: bool,
    /// `system` enabled.
    pub system: bool,
    /// `pg_log` enabled.
    pub logs: bool,
    /// At most this many `pg_stat_activity` rows per sample.
    pub max_activity_rows: u32,
    /// Query texts are cut to this many characters.
    pub max_query_length: u32,
    /// At most this many statements per `pg_statements` sample (most execution time first).
    pub statements_max_rows: u32,
    /// `pg_plans` plans at most this many of the last `pg_statements` cycle's statements
    /// (most execution time first).
    pub plans_top: u32,
    /// `pg_plans` spends at most this long planning per cycle.
    pub plans_budget: Duration,
    /// Literals out of the query texts read from the database (`none` or `literals`;
    /// passwords go whatever it says).
    pub redact: crate::sql::redact::Redact,
    /// The health sources that are on, with their intervals.
    pub health: std::collections::BTreeMap<crate::base::EventKind, Duration>,
    /// At most this many relations per database per `pg_tables` pass.
    pub tables_max_relations: u32,
    /// Longest `pg_tables` pass across the databases.
    pub tables_max_pass: Duration,
}

/// `[correlation]`: how request ids are found in `application_name`.
#[derive(Debug, Clone)]
pub struct CorrelationConfig {
    /// Pattern with a named group `id`.
    pub application_name_pattern: regex::Regex,
}

impl PartialEq for CorrelationConfig {
    fn eq(&self, other: &Self) -> bool {
        self.application_name_pattern.as_str() == other.application_name_pattern.as_str()
    }
}

/// `[logs]`: where and how to read the server log (used by the log source).
#[derive(Debug, Clone, PartialEq)]
pub struct LogsConfig {
    /// File or directory; empty means "ask the server".
    pub path: String,
    /// `stderr`, `csvlog` or `jsonlog`; `None` is `auto` (the server says).
    pub format: Option<crate::base::Format>,
    /// `log_line_prefix`; empty means "ask the server".
    pub prefix: String,
    /// `none`, `parameters` or `literals`.
    pub redact: crate::sql::redact::Redact,
    /// Where to start in a log never read before: `end` (default) or `beginning`.
    pub start_at: crate::base::StartAt,
    /// The log arrives by syslog (`[syslog] listen`) under this program name
    /// (PostgreSQL's `syslog_ident`) instead of being read from a file; empty: a file.
    pub syslog_ident: String,
    /// Only messages from this sending host (the syslog header's host name or the
    /// peer's address) are this server's; empty: any host.
    pub syslog_host: String,
}

/// Request body compression towards the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `Content-Encoding: gzip`.
    Gzip,
    /// Plain JSON.
    None,
}

/// `[listener]`: where events go.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// The ingest URL.
    pub url: String,
    /// The bearer token (from `token` or `token_file`).
    pub token: Secret,
    /// Limit of one request, connect to last byte.
    pub timeout: Duration,
    /// Request body compression.
    pub compression: Compression,
    /// Events per batch at most.
    pub batch_max_events: u32,
    /// Bytes of event data (before compression) per batch at most; one event at least.
    pub batch_max_bytes: u64,
    /// First retry waits up to this long (full jitter), doubling per failure.
    pub retry_base: Duration,
    /// Longest wait between retries of a failed batch.
    pub retry_max: Duration,
}

/// `[buffer]`: the local spool.
#[derive(Debug, Clone, PartialEq)]
pub struct BufferConfig {
    /// Size cap of the spool on disk.
    pub max_bytes: u64,
}

/// `[breaker]`: the circuit breaker towards the listener.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub fail_max: u32,
    /// Time the breaker stays open before one probe.
    pub reset_timeout: Duration,
}

/// One problem of a configuration, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key path, e.g. `database.pool_max_size`; empty for the file as a whole.
    pub key: String,
    /// What is wrong and what would be right.
    pub problem: String,
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The file that was read.
    pub path: PathBuf,
    /// All problems, in file order of sections.
    pub problems: Vec<ConfigProblem>,
    /// Keys set by environment variables, with the variable's name: a problem with one
    /// of them is not in the file.
    pub from_env: std::collections::BTreeMap<String, String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env = |p: &ConfigProblem| self.from_env.get(&p.key);
        let in_env = self.problems.iter().filter(|p| env(p).is_some()).count();
        let place = if in_env == 0 {
            self.path.display().to_string()
        } else if in_env == self.problems.len() {
            "the environment".to_string()
        } else {
            format!("{} and the environment", self.path.display())
        };
        write!(f, "{} problem(s) in {place}:", self.problems.len())?;
        for p in &self.problems {
            match (p.key.is_empty(), env(p)) {
                (true, _) => write!(f, "\n  {}", p.problem)?,
                (false, Some(var)) => write!(
                    f,
                    "\n  {} (environment variable {var}): {}",
                    p.key, p.problem
                )?,
                (false, None) => write!(f, "\n  {}: {}", p.key, p.problem)?,
            }
        }
        Ok(())
    }
}

impl Config {
    /// The name of the server the agent watches, shipped on each of its events
    /// (`server`): in the single-server form, the agent's host name.
    pub fn server_name(&self) -> &str {
        self.servers
            .first()
            .and_then(|s| s.name.as_deref())
            .unwrap_or(&self.agent.hostname)
    }

    /// What the ids of the server's events are made from: the host name, and the
    /// server's name in the `[[servers]]` form (two servers' events never share an id).
    pub fn id_host(&self) -> String {
        match self.servers.first().and_then(|s| s.name.as_deref()) {
            Some(name) => format!("{}/{name}", self.agent.hostname),
            None => self.agent.hostname.clone(),
        }
    }

    /// The configuration as one server's children see it: its sections and project in
    /// place of the first server's, the shared sections as they are.
    pub fn view(&self, server: &ServerConfig) -> Config {
        let mut v = self.clone();
        v.database = server.database.clone();
        v.collection = server.collection.clone();
        v.logs = server.logs.clone();
        v.agent.project_id = server.project_id.clone();
        v.servers = vec![server.clone()];
        v
    }

    /// The servers' names and their projects where one differs from `agent.project_id`.
    pub fn projects(&self) -> Vec<(String, String)> {
        self.servers
            .iter()
            .filter(|s| s.project_id != self.agent.project_id)
            .filter_map(|s| Some((s.name.clone()?, s.project_id.clone())))
            .collect()
    }

    /// The outputs configured: the listener unless its URL is empty, OTLP when an
    /// endpoint is set (validation makes sure there is at least one).
    pub fn outputs(&self) -> Vec<crate::base::Output> {
        let mut v = Vec::new();
        if !self.listener.url.is_empty() {
            v.push(crate::base::Output::Listener);
        }
        if self.otlp.url.is_some() {
            v.push(crate::base::Output::Otlp);
        }
        v
    }

    /// Reads `path`, applies environment overrides and validates the result.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_effective(path).map(|(c, _)| c)
    }

    /// [`Config::load`], and every key's value with where it came from (secrets
    /// masked): what `postgres-agent config` prints.
    pub fn load_effective(path: &Path) -> Result<(Config, Vec<EffectiveKey>), ConfigError> {
        let mut from_env = std::collections::BTreeMap::new();
        let whole =
            |problems: Vec<ConfigProblem>,
             from_env: &std::collections::BTreeMap<String, String>| ConfigError {
                path: path.to_path_buf(),
                problems,
                from_env: from_env.clone(),
            };
        if !path.is_file() {
            return Err(whole(
                one(format!(
                    "cannot read the file: {}",
                    if path.exists() {
                        "not a regular file"
                    } else {
                        "no such file"
                    }
                )),
                &from_env,
            ));
        }
        let text = std::fs::read(path)
            .map_err(|e| whole(one(format!("cannot read the file: {e}")), &from_env))?;
        let text = String::from_utf8(text).map_err(|e| {
            whole(
                one(format!(
                    "not valid TOML: not UTF-8 text (byte {})",
                    e.utf8_error().valid_up_to()
                )),
                &from_env,
            )
        })?;
        let mut tree = file_tree(&text).map_err(|p| whole(one(p), &from_env))?;
        let env = env_overrides(&mut tree, std::env::vars_os(), &mut from_env);
        env.map_err(|p| whole(p, &from_env))?;
        raw::inherit(&mut tree);
        let raw: raw::RawConfig = serde_json::from_value(tree).map_err(|e| {
            whole(
                one(format!(
                    "unexpected structure: {}",
                    raw::no_values(&e.to_string())
                )),
                &from_env,
            )
        })?;
        let (config, settled) = validate::validate_settled(raw);
        let config = config.map_err(|p| whole(p, &from_env))?;
        let keys = settled
            .into_iter()
            .map(|(key, (value, given))| {
                let origin = match (given, from_env.get(&key)) {
                    (false, _) => Origin::Default,
                    (true, Some(var)) => Origin::Environment(var.clone()),
                    (true, None) => Origin::File,
                };
                let value = shown(&key, &value);
                EffectiveKey { key, value, origin }
            })
            .collect();
        Ok((config, keys))
    }

    /// A short fingerprint of the settings (secrets included only as "set/unset"), shown
    /// in the status dump so an operator can tell which configuration is running.
    pub fn fingerprint(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        format!("{self:?}").hash(&mut h);
        format!("{:016x}", h.finish())
    }
}

fn one(problem: String) -> Vec<ConfigProblem> {
    vec![ConfigProblem {
        key: String::new(),
        problem,
    }]
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Not set: the built-in default (or what it was worked out from).
    Default,
    /// The config file.
    File,
    /// An environment variable (named).
    Environment(String),
}

/// One setting as `config` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveKey {
    /// `section.key`.
    pub key: String,
    /// The value as TOML writes it; secrets masked, URLs without their query values.
    pub value: String,
    /// Where it came from.
    pub origin: Origin,
}

/// A settled value as TOML text, with what must not be shown masked: tokens and
/// passwords (set or not), header values, the query values of URLs.
fn shown(key: &str, v: &serde_json::Value) -> String {
    let name = key.rsplit('.').next().unwrap_or(key);
    let secret = matches!(name, "token" | "password");
    match v {
        serde_json::Value::String(s) if secret => {
            if s.is_empty() {
                "\"\"".into()
            } else {
                "\"********\"".into()
            }
        }
        serde_json::Value::String(s) if name == "url" || name == "endpoint" => {
            toml_string(&display_url(s))
        }
        serde_json::Value::String(s) => toml_string(s),
        serde_json::Value::Object(m) if key == "otlp.headers" => {
            let inner: Vec<String> = m
                .keys()
                .map(|k| format!("{} = \"********\"", toml_string(k)))
                .collect();
            format!("{{ {} }}", inner.join(", "))
        }
        serde_json::Value::Null => "(unset)".into(),
        other => other.to_string(),
    }
}

/// A TOML basic string (JSON's escapes are TOML's).
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// Where the state directory is according to `path` and the environment, read as far
/// as the file allows: `status` finds a running agent's dump with it when the file has
/// broken since the agent started (a reload the agent rejected, say).
pub fn state_dir_hint(path: &Path) -> PathBuf {
    if let Some(v) = std::env::var_os(format!("{ENV_PREFIX}__AGENT__STATE_DIR")) {
        return PathBuf::from(v);
    }
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| {
            t.get("agent")?
                .get("state_dir")?
                .as_str()
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

/// The state directory when the config names none (the package's, the unit's
/// StateDirectory=).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/postgres-agent";

/// The file as a tree. The syntax is checked first so that an error names the line and
/// column and what is wrong but never shows the text around it: an unterminated
/// `token = "…` would otherwise put the token into the message, and from there into
/// the log and the status dump.
fn file_tree(text: &str) -> Result<serde_json::Value, String> {
    if let Err(e) = text.parse::<toml::Table>() {
        let at = e.span().map_or(String::new(), |s| {
            let before = &text[..s.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(" at line {line}, column {col}")
        });
        return Err(format!(
            "not valid TOML{at}: {} (the text is not repeated here: it may hold a secret)",
            e.message().trim_end()
        ));
    }
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize::<serde_json::Value>())
        .map_err(|e| format!("not valid TOML: {}", raw::no_values(&e.to_string())))
}

/// Puts `POSTGRES_AGENT__SECTION__KEY=value` overrides into the tree, each marked as
/// coming from the environment (see [`raw::Field`]: text there may stand for a number).
fn env_overrides(
    tree: &mut serde_json::Value,
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    from_env: &mut std::collections::BTreeMap<String, String>,
) -> Result<(), Vec<ConfigProblem>> {
    let prefix = format!("{ENV_PREFIX}__");
    let mut problems = Vec::new();
    for (k, v) in vars {
        let Some(name) = k.to_str().and_then(|k| k.strip_prefix(&prefix)) else {
            continue;
        };
        let parts: Vec<String> = name.split("__").map(str::to_ascii_lowercase).collect();
        let [section, key] = parts.as_slice() else {
            problems.push(ConfigProblem {
                key: String::new(),
                problem: format!(
                    "environment variable {prefix}{name}: expected {prefix}SECTION__KEY"
                ),
            });
            continue;
        };
        from_env.insert(format!("{section}.{key}"), format!("{prefix}{name}"));
        let Some(value) = v.to_str() else {
            problems.push(ConfigProblem {
                key: format!("{section}.{key}"),
                problem: format!("environment variable {prefix}{name} is not UTF-8 text"),
            });
            continue;
        };
        if !tree.is_object() {
            *tree = serde_json::json!({});
        }
        let sec = tree.as_object_mut().map(|t| {
            t.entry(section.clone())
                .or_insert_with(|| serde_json::json!({}))
        });
        match sec.and_then(|s| s.as_object_mut()) {
            Some(s) => {
                s.insert(key.clone(), raw::env_value(value));
            }
            None => problems.push(ConfigProblem {
                key: section.clone(),
                problem: "is not a table".into(),
            }),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The tree read into the raw structs, then validated.
fn finish(mut tree: serde_json::Value) -> Result<Config, Vec<ConfigProblem>> {
    raw::inherit(&mut tree);
    let raw: raw::RawConfig = serde_json::from_value(tree).map_err(|e| {
        one(format!(
            "unexpected structure: {}",
            raw::no_values(&e.to_string())
        ))
    })?;
    validate(raw)
}

/// Parses a configuration from TOML text without environment overrides (for tests and
/// for tools that hold the text already).
pub fn parse_str(text: &str) -> Result<Config, Vec<ConfigProblem>> {
    finish(file_tree(text).map_err(one)?)
}

#[cfg(test)]
mod tests;
