//! Stage two: from [`RawConfig`] to [`Config`], collecting every problem with its key.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::{
    Field, RawAgent, RawBreaker, RawBuffer, RawCollection, RawConfig, RawCorrelation, RawDatabase,
    RawListener, RawLogs, RawMetrics, RawOtlp, RawSyslog, Unknown,
};
use super::*;
use crate::base::Format;
use crate::base::StartAt;
use crate::base::{EventKind, Every};
use crate::sql::redact::Redact;
use serde::Deserialize;

/// The default correlation pattern: `bitville-<uuid>` in `application_name`.
pub const DEFAULT_CORRELATION_PATTERN: &str = "^bitville-(?P<id>[0-9a-fA-F-]{36})$";

/// Collects problems while reading fields, so that one pass reports all of them, and
/// the value each key settles on (for `config`).
struct Check {
    problems: Vec<ConfigProblem>,
    settled: Settled,
    /// `servers.<name>` while a `[[servers]]` entry is read: its keys are named so.
    scope: Option<String>,
}

/// Each key's value as validation settled on it (`null` for an unset optional), and
/// whether the file or the environment gave it.
pub type Settled = std::collections::BTreeMap<String, (serde_json::Value, bool)>;

impl Check {
    fn problem(&mut self, key: &str, problem: impl Into<String>) {
        let key = self.scoped(key);
        self.problems.push(ConfigProblem {
            key,
            problem: problem.into(),
        });
    }

    /// `key` as the operator finds it: under its `[[servers]]` entry's name there.
    fn scoped(&self, key: &str) -> String {
        match &self.scope {
            Some(scope) if key.is_empty() => scope.clone(),
            Some(scope) => format!("{scope}.{key}"),
            None => key.to_string(),
        }
    }

    fn unknown(&mut self, section: &str, unknown: &Unknown) {
        for k in unknown.keys() {
            let key = if section.is_empty() {
                k.clone()
            } else {
                format!("{section}.{k}")
            };
            self.problem(
                &key,
                "unknown key (check the spelling against conf/agent.toml)",
            );
        }
    }

    fn value<T: Clone + serde::Serialize>(&mut self, key: &str, f: &Field<T>, default: T) -> T {
        let (v, given) = match f {
            Field::Missing => (default, false),
            Field::Given(v) => (v.clone(), true),
            Field::Bad(e) => {
                self.problem(key, format!("wrong type: {e}"));
                (default, true)
            }
        };
        self.settle(key, &v, given);
        v
    }

    /// Records what `key` settled on (a value worked out after it was read — the host
    /// name when none is set — replaces the one read).
    fn settle<T: serde::Serialize>(&mut self, key: &str, v: &T, given: bool) {
        let v = serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
        self.settled.insert(self.scoped(key), (v, given));
    }

    /// An integer that must lie in `min..=max`; `why` explains the limit to the operator.
    fn int(
        &mut self,
        key: &str,
        f: &Field<i64>,
        default: i64,
        min: i64,
        max: i64,
        why: &str,
    ) -> i64 {
        let v = self.value(key, f, default);
        if v < min || v > max {
            self.problem(key, format!("{v} is out of range {min}..={max}{why}"));
            self.settle(key, &default, true);
            return default;
        }
        v
    }

    /// One of `allowed` (name → value), the first being the default. The string is
    /// turned into its value here, once; nothing downstream parses it again.
    fn choice<T: Copy>(&mut self, key: &str, f: &Field<String>, allowed: &[(&str, T)]) -> T {
        let default = allowed[0];
        let v = self.value(key, f, default.0.to_string());
        match allowed.iter().find(|(name, _)| *name == v) {
            Some((_, t)) => *t,
            None => {
                let names: Vec<&str> = allowed.iter().map(|(n, _)| *n).collect();
                self.problem(key, format!("{v:?} is not one of {}", names.join(" | ")));
                default.1
            }
        }
    }

    /// The secret on the first line of `path` (a trailing newline and `\r` dropped).
    /// Other non-empty lines are refused rather than sent along: a token with a newline
    /// cannot go into a header, and the error would then blame the network.
    fn secret_file(&mut self, key: &str, path: &str) -> Option<Secret> {
        if path.is_empty() {
            return None;
        }
        let text = match std::fs::read(path) {
            Ok(b) => match String::from_utf8(b) {
                Ok(t) => t,
                Err(_) => {
                    self.problem(key, format!("{path} is not UTF-8 text"));
                    return None;
                }
            },
            Err(e) => {
                self.problem(key, format!("cannot read {path}: {e}"));
                return None;
            }
        };
        let mut lines = text.lines();
        let first = lines.next().unwrap_or("").trim_end_matches('\r');
        if first.trim().is_empty() {
            self.problem(
                key,
                format!("{path}: the first line is empty; put the secret on it, alone"),
            );
            return None;
        }
        let more = lines.filter(|l| !l.trim().is_empty()).count();
        if more > 0 {
            self.problem(
                key,
                format!("{path} has {more} more non-empty line(s) after the first: the secret must be alone on the first line"),
            );
        }
        Some(Secret::new(first))
    }
}

fn ms(v: i64) -> Duration {
    Duration::from_millis(v as u64)
}

/// Validates a raw configuration, returning every problem found.
pub fn validate(raw: RawConfig) -> Result<Config, Vec<ConfigProblem>> {
    validate_settled(raw).0
}

/// [`validate`], and what each key settled on.
pub fn validate_settled(raw: RawConfig) -> (Result<Config, Vec<ConfigProblem>>, Settled) {
    let mut c = Check {
        problems: Vec::new(),
        settled: Settled::new(),
        scope: None,
    };
    c.unknown("", &raw.unknown);
    let agent = agent(&mut c, &raw.agent);
    let servers = servers(&mut c, &raw, &agent);
    let first = servers.first().cloned().unwrap_or_else(|| ServerConfig {
        name: None,
        project_id: agent.project_id.clone(),
        database: database(&mut c, &raw.database),
        collection: collection(&mut c, &raw.collection),
        logs: logs(&mut c, &raw.logs),
        local: true,
    });
    let mut config = Config {
        agent,
        database: first.database,
        collection: first.collection,
        correlation: correlation(&mut c, &raw.correlation),
        logs: first.logs,
        servers,
        listener: listener(&mut c, &raw.listener),
        buffer: buffer(&mut c, &raw.buffer),
        breaker: breaker(&mut c, &raw.breaker),
        metrics: metrics(&mut c, &raw.metrics),
        otlp: otlp(&mut c, &raw.otlp),
        syslog: syslog(&mut c, &raw.syslog),
        custom: Vec::new(),
    };
    if let Some(first) = config.servers.first().cloned() {
        config.custom = custom(&mut c, &raw, &first);
    }
    syslog_routes(&mut c, &config);
    if config.outputs().is_empty() {
        c.problem(
            "listener.url",
            "empty, and [otlp] endpoint is empty too: the agent would have nowhere to send events (set one or both)",
        );
    }
    if !c.problems.is_empty() {
        return (Err(c.problems), c.settled);
    }
    (Ok(config), c.settled)
}

/// The servers: the top-level `[database]`, `[collection]` and `[logs]` as the one
/// server of the single-server form, or each `[[servers]]` entry (its sections laid over
/// those, see [`super::raw::inherit`]).
fn servers(c: &mut Check, raw: &RawConfig, agent: &AgentConfig) -> Vec<ServerConfig> {
    let entries = match &raw.servers {
        Field::Missing => {
            let database = database(c, &raw.database);
            let local = is_this_host(&database.host, database.port).unwrap_or(true);
            return vec![ServerConfig {
                name: None,
                project_id: agent.project_id.clone(),
                database,
                collection: collection(c, &raw.collection),
                logs: logs(c, &raw.logs),
                local,
            }];
        }
        Field::Bad(e) => {
            c.problem(
                "servers",
                format!("wrong type: {e} (write one [[servers]] table per server)"),
            );
            return Vec::new();
        }
        Field::Given(entries) => entries,
    };
    if entries.is_empty() {
        c.problem(
            "servers",
            "empty: give at least one [[servers]] entry, or leave it out and use [database]",
        );
    }
    let mut out: Vec<ServerConfig> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("servers[{i}]");
        let Some(s) = entry
            .as_object()
            .and_then(|_| super::raw::RawServer::deserialize(entry).ok())
        else {
            c.problem(
                &at,
                "expected a table ([[servers]] with name = \"…\" and its sections)",
            );
            continue;
        };
        let name = c.value(&format!("{at}.name"), &s.name, String::new());
        if let Some(why) = bad_server_name(&name) {
            c.problem(&format!("{at}.name"), why);
            continue;
        }
        if out.iter().any(|o| o.name.as_deref() == Some(name.as_str())) {
            c.problem(
                &format!("{at}.name"),
                format!("{name:?} names another server too: each server's name is its own"),
            );
            continue;
        }
        c.scope = Some(format!("servers.{name}"));
        c.unknown("", &s.unknown);
        let project_id = c.value("project_id", &s.project_id, agent.project_id.clone());
        if project_id.trim().is_empty() {
            c.problem("project_id", "empty: leave it out to use agent.project_id");
        }
        let database = database(c, &s.database);
        let mut collection = collection(c, &s.collection);
        let logs = logs(c, &s.logs);
        let local = is_this_host(&database.host, database.port).unwrap_or(false);
        if !local {
            // This host's figures are not the server's, and its log is not here: host
            // metrics are off for it, its log read only from a path given for it.
            collection.system = false;
            c.settle("collection.system", &false, false);
            if logs.path.is_empty() && logs.syslog_ident.is_empty() {
                collection.logs = false;
                c.settle("collection.logs", &false, false);
            }
        }
        c.scope = None;
        out.push(ServerConfig {
            name: Some(name),
            project_id,
            database,
            collection,
            logs,
            local,
        });
    }
    out
}

/// Why `name` cannot name a server: it becomes a label value, a child's name and part
/// of the events' ids, so it is short, printable and has no `/`.
fn bad_server_name(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some(
            "required: the server's name, shipped on its events (e.g. \"orders-primary\")".into(),
        );
    }
    if name.len() > 63 {
        return Some(format!("{} characters: at most 63", name.chars().count()));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if !name.chars().all(ok) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Some(format!(
            "{name:?}: letters, digits, '_', '-' and '.' only, starting with a letter or digit"
        ));
    }
    None
}

/// Whether `host` is this machine: a socket directory, a loopback address, or an address
/// this host could bind (`None` when the name does not resolve).
pub fn is_this_host(host: &str, port: u16) -> Option<bool> {
    use std::net::ToSocketAddrs;
    if host.starts_with('/') {
        return Some(true);
    }
    let addrs: Vec<std::net::SocketAddr> = (host, port).to_socket_addrs().ok()?.collect();
    if addrs.is_empty() {
        return None;
    }
    Some(
        addrs
            .iter()
            .any(|a| a.ip().is_loopback() || std::net::UdpSocket::bind((a.ip(), 0)).is_ok()),
    )
}

/// `[agent]`.
fn agent(c: &mut Check, a: &RawAgent) -> AgentConfig {
    c.unknown("agent", &a.unknown);
    let project_id = c.value("agent.project_id", &a.project_id, String::new());
    if project_id.trim().is_empty() {
        c.problem(
            "agent.project_id",
            "required: the project name sent with every event, e.g. \"shop-prod\"",
        );
    }
    let mut hostname = c.value("agent.hostname", &a.hostname, String::new());
    if hostname.is_empty() {
        hostname = gethostname::gethostname().to_string_lossy().into_owned();
        c.settle("agent.hostname", &hostname, false);
    }
    let state_dir = c.value(
        "agent.state_dir",
        &a.state_dir,
        super::DEFAULT_STATE_DIR.to_string(),
    );
    if state_dir.is_empty() {
        c.problem("agent.state_dir", "must not be empty");
    }
    let grace = c.int(
        "agent.shutdown_grace_s",
        &a.shutdown_grace_s,
        10,
        1,
        300,
        "",
    );
    let max_connections = c.int(
        "agent.max_connections",
        &a.max_connections,
        DEFAULT_MAX_CONNECTIONS,
        1,
        1000,
        " (every server's connections together)",
    );
    AgentConfig {
        project_id,
        hostname,
        state_dir: PathBuf::from(state_dir),
        shutdown_grace: Duration::from_secs(grace as u64),
        max_connections: max_connections as u32,
    }
}

/// `[database]`.
fn database(c: &mut Check, d: &RawDatabase) -> DatabaseConfig {
    c.unknown("database", &d.unknown);
    let statement_timeout_ms = c.int(
        "database.statement_timeout_ms",
        &d.statement_timeout_ms,
        5000,
        MIN_STATEMENT_TIMEOUT_MS,
        600_000,
        " (the agent never runs statements without a timeout of at least 1 s)",
    );
    let lock_timeout_ms = c.int(
        "database.lock_timeout_ms",
        &d.lock_timeout_ms,
        1000.min(statement_timeout_ms),
        1,
        statement_timeout_ms,
        " (at most database.statement_timeout_ms)",
    );
    let password_file = c.value("database.password_file", &d.password_file, String::new());
    let sslmode = c.choice(
        "database.sslmode",
        &d.sslmode,
        &[
            ("prefer", SslMode::Prefer),
            ("disable", SslMode::Disable),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ],
    );
    let sslrootcert = c.value("database.sslrootcert", &d.sslrootcert, String::new());
    if !sslrootcert.is_empty() {
        if let Err(reason) = read_root_certs(&sslrootcert) {
            c.problem("database.sslrootcert", format!("{sslrootcert} {reason}"));
        }
    }
    let sslcert = c.value("database.sslcert", &d.sslcert, String::new());
    let sslkey = c.value("database.sslkey", &d.sslkey, String::new());
    match (sslcert.is_empty(), sslkey.is_empty()) {
        (true, true) => {}
        (false, true) => c.problem(
            "database.sslkey",
            "is empty while database.sslcert is set: give the client certificate's key",
        ),
        (true, false) => c.problem(
            "database.sslcert",
            "is empty while database.sslkey is set: give the client certificate",
        ),
        (false, false) => {
            if let Err((key, reason)) = super::read_client_cert(&sslcert, &sslkey) {
                c.problem(key, reason);
            }
        }
    }
    DatabaseConfig {
        host: c.value("database.host", &d.host, "/var/run/postgresql".to_string()),
        port: c.int("database.port", &d.port, 5432, 1, 65535, "") as u16,
        user: c.value("database.user", &d.user, "postgres_agent".to_string()),
        dbname: c.value("database.dbname", &d.dbname, "postgres".to_string()),
        password: c.secret_file("database.password_file", &password_file),
        sslmode,
        sslrootcert,
        sslcert,
        sslkey,
        pool_max_size: c.int(
            "database.pool_max_size",
            &d.pool_max_size,
            4,
            1,
            MAX_POOL_SIZE,
            " (the agent never opens more than 5 connections)",
        ) as u32,
        statement_timeout: ms(statement_timeout_ms),
        lock_timeout: ms(lock_timeout_ms),
        connect_timeout: ms(c.int(
            "database.connect_timeout_ms",
            &d.connect_timeout_ms,
            5000,
            100,
            600_000,
            "",
        )),
    }
}

/// `[collection]`.
fn collection(c: &mut Check, col: &RawCollection) -> CollectionConfig {
    let (others, health_keys) = health_fields(&col.unknown);
    c.unknown("collection", &others);
    let interval_s = c.int("collection.interval_s", &col.interval_s, 60, 1, 3600, "");
    let activity_interval_s = c.int(
        "collection.activity_interval_s",
        &col.activity_interval_s,
        interval_s,
        1,
        3600,
        "",
    );
    let sample_ms = c.int(
        "collection.sample_interval_ms",
        &col.sample_interval_ms,
        1000,
        0,
        60_000,
        "",
    );
    if (1..100).contains(&sample_ms) {
        c.problem(
            "collection.sample_interval_ms",
            format!("{sample_ms} is below 100 (0 turns session sampling off)"),
        );
    }
    let locks_fast_s = c.int(
        "collection.locks_blocking_interval_s",
        &col.locks_blocking_interval_s,
        15,
        1,
        3600,
        "",
    );
    let health = health_intervals(c, &health_keys, interval_s, activity_interval_s);
    CollectionConfig {
        interval: Duration::from_secs(interval_s as u64),
        activity_interval: Duration::from_secs(activity_interval_s as u64),
        sample_interval: (sample_ms >= 100).then(|| Duration::from_millis(sample_ms as u64)),
        locks_blocking_interval: Duration::from_secs(locks_fast_s as u64),
        activity: c.value("collection.activity", &col.activity, true),
        statements: c.value("collection.statements", &col.statements, true),
        locks: c.value("collection.locks", &col.locks, true),
        system: c.value("collection.system", &col.system, true),
        logs: c.value("collection.logs", &col.logs, true),
        max_activity_rows: c.int(
            "collection.max_activity_rows",
            &col.max_activity_rows,
            1000,
            1,
            100_000,
            "",
        ) as u32,
        max_query_length: c.int(
            "collection.max_query_length",
            &col.max_query_length,
            4096,
            16,
            1_048_576,
            "",
        ) as u32,
        statements_max_rows: c.int(
            "collection.statements_max_rows",
            &col.statements_max_rows,
            500,
            1,
            100_000,
            "",
        ) as u32,
        plans_top: c.int("collection.plans_top", &col.plans_top, 20, 1, 200, "") as u32,
        plans_budget: Duration::from_millis(c.int(
            "collection.plans_budget_ms",
            &col.plans_budget_ms,
            250,
            10,
            10_000,
            "",
        ) as u64),
        // The database's texts have no bind parameters to take out: literals or nothing.
        redact: c.choice(
            "collection.redact",
            &col.redact,
            &[("none", Redact::None), ("literals", Redact::Literals)],
        ),
        health,
        tables_max_relations: c.int(
            "collection.tables_max_relations",
            &col.tables_max_relations,
            1000,
            1,
            1_000_000,
            "",
        ) as u32,
        tables_max_pass: Duration::from_secs(c.int(
            "collection.tables_max_pass_s",
            &col.tables_max_pass_s,
            60,
            1,
            3600,
            "",
        ) as u64),
    }
}

/// A health source's keys as written: its kind, its row, `<key>` and `<key>_interval_s`.
type HealthFields = (
    EventKind,
    &'static crate::base::HealthKeys,
    Field<bool>,
    Field<i64>,
);

/// The health sources' keys of `[collection]` (named by the table of kinds) taken out
/// of its other keys, which are then unknown.
fn health_fields(unknown: &Unknown) -> (Unknown, Vec<HealthFields>) {
    let mut others = unknown.clone();
    let fields = EventKind::health()
        .map(|(kind, h)| {
            let on = raw::field::<bool>(others.remove(h.key));
            let every = raw::field::<i64>(others.remove(&format!("{}_interval_s", h.key)));
            (kind, h, on, every)
        })
        .collect();
    (others, fields)
}

/// The health sources that are on, with their intervals (a default follows the
/// interval the table names).
fn health_intervals(
    c: &mut Check,
    fields: &[HealthFields],
    interval_s: i64,
    activity_interval_s: i64,
) -> std::collections::BTreeMap<EventKind, Duration> {
    fields
        .iter()
        .filter_map(|(kind, h, on, every)| {
            let default_s = match h.default {
                Every::Interval => interval_s,
                Every::ActivityInterval => activity_interval_s,
                Every::Seconds(s) => s,
            };
            health_source(c, h.key, on, every, default_s).map(|d| (*kind, d))
        })
        .collect()
}

/// A health source's `<name>` switch and `<name>_interval_s` (1 s to a day): its
/// interval, or `None` when it is off.
fn health_source(
    c: &mut Check,
    name: &str,
    on: &Field<bool>,
    interval: &Field<i64>,
    default_s: i64,
) -> Option<Duration> {
    let on = c.value(&format!("collection.{name}"), on, true);
    let every = c.int(
        &format!("collection.{name}_interval_s"),
        interval,
        default_s,
        1,
        86_400,
        "",
    );
    on.then(|| Duration::from_secs(every as u64))
}

/// `[correlation]`.
fn correlation(c: &mut Check, cor: &RawCorrelation) -> CorrelationConfig {
    c.unknown("correlation", &cor.unknown);
    let pattern_src = c.value(
        "correlation.application_name_pattern",
        &cor.application_name_pattern,
        DEFAULT_CORRELATION_PATTERN.to_string(),
    );
    let pattern = match regex::Regex::new(&pattern_src) {
        Ok(re) if re.capture_names().any(|n| n == Some("id")) => re,
        Ok(_) => {
            c.problem(
                "correlation.application_name_pattern",
                "has no named group `id`, e.g. (?P<id>...)",
            );
            default_pattern()
        }
        Err(e) => {
            c.problem(
                "correlation.application_name_pattern",
                format!("not a valid regular expression: {e}"),
            );
            default_pattern()
        }
    };
    CorrelationConfig {
        application_name_pattern: pattern,
    }
}

/// `[logs]`.
fn logs(c: &mut Check, l: &RawLogs) -> LogsConfig {
    c.unknown("logs", &l.unknown);
    LogsConfig {
        path: c.value("logs.path", &l.path, String::new()),
        format: c.choice(
            "logs.format",
            &l.format,
            &[
                ("auto", None),
                ("stderr", Some(Format::Stderr)),
                ("csvlog", Some(Format::Csv)),
                ("jsonlog", Some(Format::Json)),
            ],
        ),
        prefix: c.value("logs.prefix", &l.prefix, String::new()),
        redact: c.choice(
            "logs.redact",
            &l.redact,
            &[
                ("none", Redact::None),
                ("parameters", Redact::Parameters),
                ("literals", Redact::Literals),
            ],
        ),
        start_at: c.choice(
            "logs.start_at",
            &l.start_at,
            &[("end", StartAt::End), ("beginning", StartAt::Beginning)],
        ),
        syslog_ident: c.value("logs.syslog_ident", &l.syslog_ident, String::new()),
        syslog_host: c.value("logs.syslog_host", &l.syslog_host, String::new()),
    }
}

/// `[syslog]`.
fn syslog(c: &mut Check, s: &RawSyslog) -> SyslogConfig {
    c.unknown("syslog", &s.unknown);
    let address = |c: &mut Check, key: &str, field: &Field<String>, example: &str| {
        let v = c.value(key, field, String::new());
        let v = v.trim();
        if v.is_empty() {
            return None;
        }
        match v.parse::<std::net::SocketAddr>() {
            Ok(a) if a.port() != 0 => Some(a),
            _ => {
                c.problem(
                    key,
                    format!("expected an IP address and a port other than 0, e.g. {example} (empty: off)"),
                );
                None
            }
        }
    };
    let listen = address(
        c,
        "syslog.listen",
        &s.listen,
        "127.0.0.1:5514 or 0.0.0.0:5514",
    );
    let listen_tls = address(c, "syslog.listen_tls", &s.listen_tls, "0.0.0.0:6514");
    let tls_cert = c.value("syslog.tls_cert", &s.tls_cert, String::new());
    let tls_key = c.value("syslog.tls_key", &s.tls_key, String::new());
    match (&listen_tls, tls_cert.is_empty() || tls_key.is_empty()) {
        (Some(_), true) => c.problem(
            "syslog.listen_tls",
            "needs tls_cert and tls_key: the receiver's certificate and its private key (PEM)",
        ),
        (Some(_), false) => {
            if let Err((key, reason)) = super::read_cert_and_key(
                &tls_cert,
                &tls_key,
                ("syslog.tls_cert", "syslog.tls_key"),
                "a server",
            ) {
                c.problem(key, reason);
            }
        }
        (None, false) => c.problem(
            "syslog.tls_cert",
            "set, but listen_tls is empty: give the address the TLS receiver listens on",
        ),
        (None, true) => {}
    }
    SyslogConfig {
        listen,
        listen_tls,
        tls_cert,
        tls_key,
    }
}

/// Each server whose log arrives by syslog is told apart from the others, and there is
/// a receiver for it.
fn syslog_routes(c: &mut Check, config: &Config) {
    let by_syslog: Vec<&ServerConfig> = config
        .servers
        .iter()
        .filter(|s| !s.logs.syslog_ident.is_empty())
        .collect();
    let key = |s: &ServerConfig| match &s.name {
        Some(name) => format!("servers.{name}.logs.syslog_ident"),
        None => "logs.syslog_ident".to_string(),
    };
    for (i, s) in by_syslog.iter().enumerate() {
        if !config.syslog.on() && s.collection.logs {
            c.problem(
                &key(s),
                "set, but [syslog] listen and listen_tls are empty: nothing would receive this server's log",
            );
        }
        let clash = by_syslog[..i].iter().find(|o| {
            o.logs.syslog_ident == s.logs.syslog_ident
                && (o.logs.syslog_host.is_empty()
                    || s.logs.syslog_host.is_empty()
                    || o.logs.syslog_host == s.logs.syslog_host)
        });
        if let Some(o) = clash {
            c.problem(
                &key(s),
                format!(
                    "{:?} is also server {}'s: set syslog_host on both (the sending host) or give each server its own syslog_ident",
                    s.logs.syslog_ident,
                    o.name.as_deref().unwrap_or("?"),
                ),
            );
        }
    }
}

/// `[listener]`.
fn listener(c: &mut Check, li: &RawListener) -> ListenerConfig {
    c.unknown("listener", &li.unknown);
    let url = c.value(
        "listener.url",
        &li.url,
        "http://127.0.0.1:8080/ingest/postgres".to_string(),
    );
    // Empty: the listener is off (only with an [otlp] endpoint, checked at the end).
    if !url.is_empty() && !http_url(&url) {
        c.problem(
            "listener.url",
            format!(
                "{:?} is not an http:// or https:// URL",
                super::display_url(&url)
            ),
        );
    }
    let token = c.value("listener.token", &li.token, String::new());
    let token_file = c.value("listener.token_file", &li.token_file, String::new());
    let token = match (token.is_empty(), token_file.is_empty()) {
        (false, false) => {
            c.problem(
                "listener.token_file",
                "set either listener.token or listener.token_file, not both",
            );
            Secret::new(token)
        }
        (true, false) => c
            .secret_file("listener.token_file", &token_file)
            .unwrap_or_default(),
        _ => Secret::new(token),
    };
    // The token goes into an HTTP header: visible ASCII only (the value is not shown).
    if token.expose().bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
        c.problem(
            "listener.token",
            "holds spaces, control characters or non-ASCII text, which an HTTP header cannot carry (the value is not shown)",
        );
    }
    let sending = Sending {
        timeout_ms: &li.timeout_ms,
        compression: &li.compression,
        batch_max_events: &li.batch_max_events,
        batch_max_bytes: &li.batch_max_bytes,
        retry_base_ms: &li.retry_base_ms,
        retry_max_ms: &li.retry_max_ms,
    };
    sending.read(c, "listener", url, token)
}

fn http_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://")) && url.len() >= 10
}

/// The delivery keys the listener and the OTLP output share.
struct Sending<'a> {
    timeout_ms: &'a Field<i64>,
    compression: &'a Field<String>,
    batch_max_events: &'a Field<i64>,
    batch_max_bytes: &'a Field<i64>,
    retry_base_ms: &'a Field<i64>,
    retry_max_ms: &'a Field<i64>,
}

impl Sending<'_> {
    fn read(&self, c: &mut Check, section: &str, url: String, token: Secret) -> ListenerConfig {
        let key = |k: &str| format!("{section}.{k}");
        let compression = c.choice(
            &key("compression"),
            self.compression,
            &[("gzip", Compression::Gzip), ("none", Compression::None)],
        );
        ListenerConfig {
            url,
            token,
            timeout: ms(c.int(
                &key("timeout_ms"),
                self.timeout_ms,
                10_000,
                100,
                600_000,
                "",
            )),
            compression,
            batch_max_events: c.int(
                &key("batch_max_events"),
                self.batch_max_events,
                500,
                1,
                100_000,
                "",
            ) as u32,
            batch_max_bytes: c.int(
                &key("batch_max_bytes"),
                self.batch_max_bytes,
                DEFAULT_BATCH_MAX_BYTES as i64,
                64 * 1024,
                256 << 20,
                "",
            ) as u64,
            retry_base: ms(c.int(
                &key("retry_base_ms"),
                self.retry_base_ms,
                1_000,
                10,
                600_000,
                "",
            )),
            retry_max: ms(c.int(
                &key("retry_max_ms"),
                self.retry_max_ms,
                60_000,
                100,
                3_600_000,
                "",
            )),
        }
    }
}

/// Headers the OTLP request sets itself.
const OWN_HEADERS: [&str; 5] = [
    "content-type",
    "content-encoding",
    "content-length",
    "host",
    "user-agent",
];

/// `[otlp]`.
fn otlp(c: &mut Check, o: &RawOtlp) -> OtlpConfig {
    c.unknown("otlp", &o.unknown);
    let endpoint = c.value("otlp.endpoint", &o.endpoint, String::new());
    let endpoint = endpoint.trim();
    let url = if endpoint.is_empty() {
        None
    } else if !http_url(endpoint) {
        c.problem(
            "otlp.endpoint",
            format!(
                "{:?} is not an http:// or https:// URL (e.g. http://collector:4318)",
                super::display_url(endpoint)
            ),
        );
        None
    } else {
        Some(otlp_logs_url(endpoint))
    };
    // Each header with where it came from: a name from `headers_file` may be a secret
    // written in the wrong place (`Authorization Bearer …` without its colon), so a
    // problem with one names its line, never its text.
    let mut headers: Vec<(String, Secret, Option<String>)> = c
        .value("otlp.headers", &o.headers, Default::default())
        .into_iter()
        .map(|(k, v)| (k, Secret::new(v), None))
        .collect();
    let file = c.value("otlp.headers_file", &o.headers_file, String::new());
    if !file.is_empty() {
        headers.extend(
            headers_file(c, &file)
                .into_iter()
                .map(|(k, v, line)| (k, v, Some(format!("{file} line {line}")))),
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for (name, value, line) in &headers {
        let (key, what) = match line {
            Some(l) => ("otlp.headers_file", format!("the header of {l}")),
            None => ("otlp.headers", format!("{name:?}")),
        };
        let lower = name.to_ascii_lowercase();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            let problem = match line {
                Some(l) => format!("{l}: the name is not an HTTP header name (expected \"Name: value\"; the line is not shown)"),
                None => format!("{name:?} is not an HTTP header name"),
            };
            c.problem(key, problem);
        } else if OWN_HEADERS.contains(&lower.as_str()) {
            c.problem(key, format!("{what} is set by the agent itself"));
        } else if !seen.insert(lower) {
            c.problem(
                key,
                format!("{what} is given twice (headers and headers_file together)"),
            );
        }
        if value
            .expose()
            .bytes()
            .any(|b| !(0x20..=0x7e).contains(&b) && b != b'\t')
        {
            c.problem(
                key,
                format!("the value of {what} holds control characters or non-ASCII text, which an HTTP header cannot carry (the value is not shown)"),
            );
        }
    }
    let headers: Vec<(String, Secret)> = headers.into_iter().map(|(k, v, _)| (k, v)).collect();
    let service_name = c.value("otlp.service_name", &o.service_name, "postgresql".into());
    if service_name.trim().is_empty() {
        c.problem(
            "otlp.service_name",
            "must not be empty (default \"postgresql\")",
        );
    }
    let sending = Sending {
        timeout_ms: &o.timeout_ms,
        compression: &o.compression,
        batch_max_events: &o.batch_max_events,
        batch_max_bytes: &o.batch_max_bytes,
        retry_base_ms: &o.retry_base_ms,
        retry_max_ms: &o.retry_max_ms,
    };
    let delivery = sending.read(
        c,
        "otlp",
        url.clone().unwrap_or_default(),
        Secret::default(),
    );
    OtlpConfig {
        url,
        headers,
        service_name,
        delivery,
    }
}

/// The logs URL of an OTLP endpoint, as `OTEL_EXPORTER_OTLP_ENDPOINT` is read: the
/// signal's path appended to the endpoint's path (unless it ends with it already), its
/// query kept after it (`http://h/?api_key=k` → `http://h/v1/logs?api_key=k`); a
/// fragment is never sent.
fn otlp_logs_url(endpoint: &str) -> String {
    let endpoint = endpoint.split('#').next().unwrap_or(endpoint);
    let (path, query) = match endpoint.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (endpoint, None),
    };
    let path = path.trim_end_matches('/');
    let mut url = if path.ends_with("/v1/logs") {
        path.to_string()
    } else {
        format!("{path}/v1/logs")
    };
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// `Name: value` lines of `otlp.headers_file` (secrets kept out of the config file);
/// empty lines and `#` comments skipped. Values are never repeated in a message.
fn headers_file(c: &mut Check, path: &str) -> Vec<(String, Secret, usize)> {
    let text = match std::fs::read(path) {
        Ok(b) => match String::from_utf8(b) {
            Ok(t) => t,
            Err(_) => {
                c.problem("otlp.headers_file", format!("{path} is not UTF-8 text"));
                return Vec::new();
            }
        },
        Err(e) => {
            c.problem("otlp.headers_file", format!("cannot read {path}: {e}"));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(':') {
            Some((k, v)) => out.push((k.trim().to_string(), Secret::new(v.trim()), n + 1)),
            None => c.problem(
                "otlp.headers_file",
                format!("{path} line {}: expected \"Name: value\"", n + 1),
            ),
        }
    }
    out
}

/// `[buffer]`.
fn buffer(c: &mut Check, b: &RawBuffer) -> BufferConfig {
    c.unknown("buffer", &b.unknown);
    BufferConfig {
        max_bytes: c.int(
            "buffer.max_bytes",
            &b.max_bytes,
            104_857_600,
            1_048_576,
            1 << 40,
            " (at least 1 MiB)",
        ) as u64,
    }
}

/// `[metrics]`.
fn metrics(c: &mut Check, m: &RawMetrics) -> MetricsConfig {
    c.unknown("metrics", &m.unknown);
    let database = c.value("metrics.database", &m.database, true);
    let statements_limit = c.int(
        "metrics.statements_limit",
        &m.statements_limit,
        100,
        0,
        10_000,
        " (series per family: keep it small)",
    ) as u32;
    let listen = c.value("metrics.listen", &m.listen, String::new());
    let listen = listen.trim();
    let listen = if listen.is_empty() {
        None
    } else {
        listen_address(c, listen)
    };
    MetricsConfig {
        listen,
        database,
        statements_limit,
    }
}

/// `metrics.listen`, not empty.
fn listen_address(c: &mut Check, listen: &str) -> Option<std::net::SocketAddr> {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(a) if a.port() == 0 => {
            c.problem(
                "metrics.listen",
                "port 0 would pick a different port at every start: name one, e.g. 127.0.0.1:9188",
            );
            None
        }
        Ok(a) => Some(a),
        Err(_) => {
            c.problem(
                "metrics.listen",
                "expected an IP address and port, e.g. 127.0.0.1:9188 or [::1]:9188 (empty: off)",
            );
            None
        }
    }
}

/// `[breaker]`.
fn breaker(c: &mut Check, br: &RawBreaker) -> BreakerConfig {
    c.unknown("breaker", &br.unknown);
    BreakerConfig {
        fail_max: c.int("breaker.fail_max", &br.fail_max, 5, 1, 1000, "") as u32,
        reset_timeout: Duration::from_secs(c.int(
            "breaker.reset_timeout_s",
            &br.reset_timeout_s,
            60,
            1,
            3600,
            "",
        ) as u64),
    }
}

/// The default `correlation.application_name_pattern`, compiled.
pub fn default_pattern() -> regex::Regex {
    // The constant is a valid pattern; a unit test below proves it.
    regex::Regex::new(DEFAULT_CORRELATION_PATTERN).unwrap_or_else(|_| unreachable!())
}

/// `[[custom]]`: each entry a user's query, proven at load to be one query that only
/// reads; every problem is named under `custom.<name>`.
fn custom(c: &mut Check, raw: &RawConfig, first: &ServerConfig) -> Vec<CustomQuery> {
    let entries = match &raw.custom {
        Field::Missing => return Vec::new(),
        Field::Bad(e) => {
            c.problem(
                "custom",
                format!("wrong type: {e} (write one [[custom]] table per query)"),
            );
            return Vec::new();
        }
        Field::Given(entries) => entries,
    };
    let statement_ms = first.database.statement_timeout.as_millis() as i64;
    let mut out: Vec<CustomQuery> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("custom[{i}]");
        let Some(r) = entry
            .as_object()
            .and_then(|_| super::raw::RawCustom::deserialize(entry).ok())
        else {
            c.problem(
                &at,
                "expected a table ([[custom]] with name = \"…\" and query = \"…\")",
            );
            continue;
        };
        let name = c.value(&format!("{at}.name"), &r.name, String::new());
        if let Some(why) = bad_custom_name(&name) {
            c.problem(&format!("{at}.name"), why);
            continue;
        }
        if out.iter().any(|o| o.name == name) {
            c.problem(
                &format!("{at}.name"),
                format!("{name:?} names another [[custom]] query too: each one's name is its own"),
            );
            continue;
        }
        c.scope = Some(format!("custom.{name}"));
        c.unknown("", &r.unknown);
        let text = c.value("query", &r.query, String::new());
        let query = match crate::sql::readonly::read_only(&text) {
            Ok(q) => q.to_string(),
            Err(why) => {
                c.problem("query", format!("refused: {why}"));
                String::new()
            }
        };
        let databases = match &r.databases {
            Field::Missing => CustomDatabases::Connected,
            Field::Given(serde_json::Value::String(s)) if s == "connected" => {
                CustomDatabases::Connected
            }
            Field::Given(serde_json::Value::String(s)) if s == "*" => CustomDatabases::All,
            Field::Given(serde_json::Value::Array(list))
                if !list.is_empty()
                    && list
                        .iter()
                        .all(|d| d.as_str().is_some_and(|s| !s.is_empty())) =>
            {
                let mut names: Vec<String> = list
                    .iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect();
                names.dedup();
                CustomDatabases::List(names)
            }
            _ => {
                c.problem(
                    "databases",
                    "expected \"connected\" (the agent's database), \"*\" (every database the role may connect to) or a list of database names",
                );
                CustomDatabases::Connected
            }
        };
        c.settle(
            "databases",
            &databases.describe(),
            !matches!(r.databases, Field::Missing),
        );
        let interval = Duration::from_secs(c.int(
            "interval_s",
            &r.interval_s,
            first.collection.interval.as_secs() as i64,
            1,
            86_400,
            "",
        ) as u64);
        let max_rows = c.int(
            "max_rows",
            &r.max_rows,
            1000,
            1,
            100_000,
            " (the rows kept of one run, fetched by a cursor: the rest are never sent)",
        ) as u32;
        let timeout = ms(c.int(
            "timeout_ms",
            &r.timeout_ms,
            statement_ms,
            1000,
            statement_ms.max(1000),
            " (at least 1 s, at most database.statement_timeout_ms)",
        ));
        let version = |c: &mut Check, key: &str, f: &Field<i64>| -> Option<i32> {
            match f {
                Field::Missing => None,
                _ => Some(c.int(
                    key,
                    f,
                    0,
                    90_000,
                    999_999,
                    " (server_version_num, e.g. 160000)",
                ) as i32),
            }
        };
        let min_server_version = version(c, "min_server_version", &r.min_server_version);
        let max_server_version = version(c, "max_server_version", &r.max_server_version);
        if let (Some(a), Some(b)) = (min_server_version, max_server_version) {
            if a > b {
                c.problem(
                    "max_server_version",
                    format!("{b} is below min_server_version {a}: the query would run nowhere"),
                );
            }
        }
        let columns = |c: &mut Check, key: &str, f: &Field<Vec<String>>| -> Vec<String> {
            let v = c.value(key, f, Vec::new());
            for col in &v {
                if col.is_empty() || col.len() > 63 {
                    c.problem(key, format!("{col:?}: a column name of 1 to 63 characters"));
                }
            }
            v
        };
        let labels = columns(c, "labels", &r.labels);
        let gauges = columns(c, "gauges", &r.gauges);
        let counters = columns(c, "counters", &r.counters);
        for (key, list, others) in [
            ("gauges", &gauges, [&labels, &counters]),
            ("counters", &counters, [&labels, &gauges]),
        ] {
            for col in list {
                if others.iter().any(|o| o.contains(col)) {
                    c.problem(
                        key,
                        format!(
                            "{col:?} is listed twice: a column is a label, a gauge or a counter"
                        ),
                    );
                }
            }
        }
        c.scope = None;
        out.push(CustomQuery {
            name,
            query,
            databases,
            interval,
            max_rows,
            timeout,
            min_server_version,
            max_server_version,
            labels,
            gauges,
            counters,
        });
    }
    out
}

/// Why `name` cannot name a `[[custom]]` query: it is part of metric and child names.
fn bad_custom_name(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some(
            "required: the query's name, on its events and metrics (e.g. \"slot_lag\")".into(),
        );
    }
    if name.len() > 40 {
        return Some(format!("{} characters: at most 40", name.chars().count()));
    }
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    if !name.chars().all(ok) || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Some(format!(
            "{name:?}: lowercase letters, digits and '_' only, starting with a letter (it is part of metric names)"
        ));
    }
    None
}
