//! Configuration: the TOML file plus `POSTGRES_AGENT__SECTION__KEY` environment
//! overrides, read in two stages. [`raw`] holds the file as written; [`validate`] turns it
//! into a [`Config`] with strong types, enforcing the safety limits (pool ≤ 5 connections,
//! statement timeout ≥ 1 s, interval 1..3600 s) and reporting every problem at once.

mod raw;
mod secret;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use secret::{display_url, Secret};
pub use validate::{default_pattern, validate};

/// The prefix of environment overrides: `POSTGRES_AGENT__DATABASE__PORT=5433`.
pub const ENV_PREFIX: &str = "POSTGRES_AGENT";

/// A validated configuration. Each section is its own type so that a reload can tell
/// which children's settings changed by comparing sections.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[agent]`
    pub agent: AgentConfig,
    /// `[database]`
    pub database: DatabaseConfig,
    /// `[collection]`
    pub collection: CollectionConfig,
    /// `[correlation]`
    pub correlation: CorrelationConfig,
    /// `[logs]`
    pub logs: LogsConfig,
    /// `[listener]`
    pub listener: ListenerConfig,
    /// `[buffer]`
    pub buffer: BufferConfig,
    /// `[breaker]`
    pub breaker: BreakerConfig,
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
}

/// How TLS is used towards the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS if the server offers it, without checking its certificate (libpq's meaning).
    Prefer,
    /// Always TLS, without checking the certificate (libpq's meaning).
    Require,
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
    /// CA certificates (PEM) for `verify-full`; empty: the system's CA store.
    pub sslrootcert: String,
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

/// `[collection]`: which sources run, how often, and how much they may read.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionConfig {
    /// Default sampling interval of every source.
    pub interval: Duration,
    /// Interval of `pg_activity` (defaults to `interval`).
    pub activity_interval: Duration,
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
    /// `auto`, `stderr`, `csvlog` or `jsonlog`.
    pub format: String,
    /// `log_line_prefix`; empty means "ask the server".
    pub prefix: String,
    /// `none`, `parameters` or `literals`.
    pub redact: String,
    /// Where to start in a log never read before: `end` (default) or `beginning`.
    pub start_at: String,
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
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} problem(s) in {}:",
            self.problems.len(),
            self.path.display()
        )?;
        for p in &self.problems {
            if p.key.is_empty() {
                write!(f, "\n  {}", p.problem)?;
            } else {
                write!(f, "\n  {}: {}", p.key, p.problem)?;
            }
        }
        Ok(())
    }
}

impl Config {
    /// Reads `path`, applies environment overrides and validates the result.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let whole = |problems: Vec<ConfigProblem>| ConfigError {
            path: path.to_path_buf(),
            problems,
        };
        if !path.is_file() {
            return Err(whole(one(format!(
                "cannot read the file: {}",
                if path.exists() {
                    "not a regular file"
                } else {
                    "no such file"
                }
            ))));
        }
        let text =
            std::fs::read(path).map_err(|e| whole(one(format!("cannot read the file: {e}"))))?;
        let text = String::from_utf8(text).map_err(|e| {
            whole(one(format!(
                "not valid TOML: not UTF-8 text (byte {})",
                e.utf8_error().valid_up_to()
            )))
        })?;
        let mut tree = file_tree(&text).map_err(|p| whole(one(p)))?;
        env_overrides(&mut tree, std::env::vars_os()).map_err(whole)?;
        finish(tree).map_err(whole)
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
fn finish(tree: serde_json::Value) -> Result<Config, Vec<ConfigProblem>> {
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
mod tests {
    use super::*;

    fn keys(text: &str) -> Vec<String> {
        parse_str(text)
            .expect_err("config should be refused")
            .into_iter()
            .map(|p| p.key)
            .collect()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse_str("[agent]\nproject_id = \"p\"\n").expect("valid");
        assert_eq!(c.database.pool_max_size, 3);
        assert_eq!(c.database.statement_timeout, Duration::from_millis(5000));
        assert_eq!(c.collection.interval, Duration::from_secs(60));
        assert_eq!(c.collection.activity_interval, Duration::from_secs(60));
        assert_eq!(c.listener.batch_max_events, 500);
        assert_eq!(c.buffer.max_bytes, 104_857_600);
        assert_eq!(c.breaker.fail_max, 5);
        assert!(c.listener.token.is_empty());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let k = keys(
            "[agent]\nbogus = 1\n[database]\npool_max_size = 6\nstatement_timeout_ms = 999\nport = \"x\"\n\
             [collection]\ninterval_s = 0\n[correlation]\napplication_name_pattern = '^(x)$'\n\
             [listener]\ncompression = \"brotli\"\n[nosuch]\na = 1\n",
        );
        assert_eq!(
            k,
            vec![
                "nosuch",
                "agent.bogus",
                "agent.project_id",
                "database.statement_timeout_ms",
                "database.port",
                "database.pool_max_size",
                "collection.interval_s",
                "correlation.application_name_pattern",
                "listener.compression",
            ]
        );
    }

    #[test]
    fn safety_limits_are_enforced_at_the_edges() {
        let ok = parse_str(
            "[agent]\nproject_id=\"p\"\n[database]\npool_max_size=5\nstatement_timeout_ms=1000\n[collection]\ninterval_s=3600\n",
        )
        .expect("limits themselves are allowed");
        assert_eq!(ok.database.pool_max_size, 5);
        assert_eq!(ok.database.lock_timeout, Duration::from_millis(1000));
        assert_eq!(
            keys("[agent]\nproject_id=\"p\"\n[collection]\ninterval_s=3601\n"),
            vec!["collection.interval_s"]
        );
    }

    #[test]
    fn token_file_is_read_and_never_printed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("token");
        std::fs::write(&f, "s3cret-token\n").expect("write");
        let c = parse_str(&format!(
            "[agent]\nproject_id=\"p\"\n[listener]\ntoken_file={:?}\n",
            f.display().to_string()
        ))
        .expect("valid");
        assert_eq!(c.listener.token.expose(), "s3cret-token");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    fn problems(text: &str) -> String {
        parse_str(text)
            .expect_err("config should be refused")
            .iter()
            .map(|p| format!("{}: {}\n", p.key, p.problem))
            .collect()
    }

    #[test]
    fn no_error_echoes_a_secret_or_the_text_around_it() {
        // A token of the wrong type.
        let p = problems("[agent]\nproject_id=\"p\"\n[listener]\ntoken = 987654321123\n");
        assert!(
            p.contains("listener.token: wrong type: expected a string, found an integer"),
            "{p}"
        );
        assert!(!p.contains("987654321123"), "{p}");
        // An unterminated string: the line is named, its text is not repeated.
        let p = problems("[agent]\nproject_id=\"p\"\n[listener]\ntoken = \"s3cret-unterminated\nurl = \"http://x:8080/\"\n");
        assert!(p.contains("not valid TOML at line 4"), "{p}");
        assert!(!p.contains("s3cret"), "{p}");
        // A secret in a key the structure does not expect.
        let p = problems("listener = \"s3cret-as-section\"\n");
        assert!(!p.contains("s3cret"), "{p}");
        // Credentials in the listener URL are masked.
        let p =
            problems("[agent]\nproject_id=\"p\"\n[listener]\nurl = \"ftp://u:s3cret-pw@h/x\"\n");
        assert!(p.contains("ftp://***@h/x"), "{p}");
        assert!(!p.contains("s3cret"), "{p}");
        // A token an HTTP header cannot carry.
        let p = problems("[agent]\nproject_id=\"p\"\n[listener]\ntoken = \"ab cd\"\n");
        assert!(p.contains("listener.token: holds spaces"), "{p}");
        assert!(!p.contains("ab cd"), "{p}");
    }

    #[test]
    fn values_in_the_file_have_their_type_but_the_environment_is_text() {
        let p = problems(
            "[agent]\nproject_id=\"p\"\n[collection]\ninterval_s = \"1\"\nactivity = \"true\"\n",
        );
        assert!(
            p.contains("collection.interval_s: wrong type: expected an integer, found a string"),
            "{p}"
        );
        assert!(
            p.contains("collection.activity: wrong type: expected a boolean, found a string"),
            "{p}"
        );
        let mut tree = file_tree("[agent]\nproject_id=\"p\"\n").expect("toml");
        let vars = [
            ("POSTGRES_AGENT__COLLECTION__INTERVAL_S", "7"),
            ("POSTGRES_AGENT__COLLECTION__ACTIVITY", "false"),
            ("POSTGRES_AGENT__LISTENER__TOKEN", "12345"),
            ("OTHER", "x"),
        ]
        .map(|(k, v)| (k.into(), v.into()));
        env_overrides(&mut tree, vars.into_iter()).expect("env");
        let c = finish(tree).expect("valid");
        assert_eq!(c.collection.interval, Duration::from_secs(7));
        assert!(!c.collection.activity);
        assert_eq!(
            c.listener.token.expose(),
            "12345",
            "a numeric token from the environment is text"
        );
        let mut tree = file_tree("").expect("toml");
        let bad = [("POSTGRES_AGENT__NOSECTION", "1")].map(|(k, v)| (k.into(), v.into()));
        assert!(env_overrides(&mut tree, bad.into_iter()).is_err());
    }

    #[test]
    fn secret_files_hold_the_secret_alone_on_the_first_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = |key: &str, section: &str, f: &std::path::Path| {
            format!(
                "[agent]\nproject_id=\"p\"\n[{section}]\n{key}={:?}\n",
                f.display().to_string()
            )
        };
        let two = dir.path().join("two");
        std::fs::write(&two, "tok-1\ntok-2\n").expect("write");
        let p = problems(&conf("token_file", "listener", &two));
        assert!(
            p.contains("listener.token_file:") && p.contains("1 more non-empty line"),
            "{p}"
        );
        assert!(!p.contains("tok-1"), "{p}");
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "pw-line\r\n\n").expect("write");
        let c = parse_str(&conf("password_file", "database", &pw)).expect("valid");
        assert_eq!(
            c.database.password.as_ref().map(|s| s.expose()),
            Some("pw-line")
        );
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\nsecret-on-line-2\n").expect("write");
        let p = problems(&conf("password_file", "database", &empty));
        assert!(p.contains("the first line is empty"), "{p}");
        assert!(!p.contains("secret-on-line-2"), "{p}");
    }

    #[test]
    fn an_unknown_redact_value_is_refused() {
        assert_eq!(
            keys("[agent]\nproject_id=\"p\"\n[logs]\nredact = \"all\"\n"),
            vec!["logs.redact"]
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 500, .. Default::default() })]

        /// Any text, broken any way: no panic, and the secret written in it never shows
        /// in a problem (the token, in any key or shape).
        #[test]
        fn any_text_loads_or_is_refused_without_showing_the_secret(
            pieces in proptest::collection::vec(proptest::sample::select(vec![
                "[agent]\n", "project_id = \"p\"\n", "[listener]\n", "token = ", "\"SECRETX",
                "SECRETX", "'SECRETX'", "\"\n", "\n", "= ", "[", "]", "url = \"http://u:SECRETX@h/\"\n",
                "interval_s = ", "1", "\"1\"", "[collection]\n", "{", "}", "SECRETX = 1\n",
                "token_file = \"/nonexistent/SECRETX\"\n", "\\", "\u{0}", "é", "#",
            ]), 0..16),
        ) {
            let text = pieces.concat();
            if let Err(problems) = parse_str(&text) {
                for p in problems {
                    // A key name may be the secret's text itself (an unknown key
                    // `SECRETX`): keys are named, values never.
                    let shown = p.problem.replace("/nonexistent/SECRETX", "");
                    proptest::prop_assert!(!shown.contains("SECRETX"), "{text:?}: {}: {}", p.key, p.problem);
                }
            }
        }
    }

    #[test]
    fn default_pattern_extracts_the_id() {
        let c = parse_str("[agent]\nproject_id=\"p\"\n").expect("valid");
        let caps = c
            .correlation
            .application_name_pattern
            .captures("bitville-0f1c2b7e-0d3a-4c55-9a8e-1b2c3d4e5f60")
            .expect("matches");
        assert_eq!(&caps["id"], "0f1c2b7e-0d3a-4c55-9a8e-1b2c3d4e5f60");
    }
}
