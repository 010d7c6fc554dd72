//! Stage one of configuration: the file and the environment as they were written.
//!
//! Every field is a [`Field`], which never fails to deserialize: a value of the wrong type
//! is kept as [`Field::Bad`] so that validation can report *every* problem of a file at
//! once instead of stopping at the first one, as plain serde would. Unknown keys are
//! collected through `#[serde(flatten)]` and reported as errors by validation; this is
//! `deny_unknown_fields` with all offenders named rather than only the first.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One configuration value as written: absent, well-typed, or of the wrong type.
#[derive(Debug, Clone, Default)]
pub enum Field<T> {
    /// The key was not given; validation applies the default.
    #[default]
    Missing,
    /// The key was given with a value of the right type.
    Given(T),
    /// The key was given but its value could not be read as `T` (the message says why).
    Bad(String),
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        // An environment override is always text: "5" stands for a number and "true"
        // for a bool there. In the file a value must have the right type.
        if let Some(text) = from_env(&v) {
            let as_text = serde_json::Value::String(text.to_string());
            return Ok(match serde_json::from_value::<T>(as_text.clone()) {
                Ok(t) => Field::Given(t),
                Err(_) => match serde_json::from_str::<T>(text) {
                    Ok(t) => Field::Given(t),
                    Err(e) => Field::Bad(mismatch(&as_text, &e)),
                },
            });
        }
        Ok(match serde_json::from_value::<T>(v.clone()) {
            Ok(t) => Field::Given(t),
            Err(e) => Field::Bad(mismatch(&v, &e)),
        })
    }
}

/// Every key, as `null`: how the keys a section knows are listed (`config`'s test
/// compares them with what validation reads and with `conf/agent.toml`).
impl<T> Serialize for Field<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_none()
    }
}

/// The marker around a value that came from the environment.
const ENV_MARK: &str = "$env";

/// A value from the environment, marked as such in the tree.
pub fn env_value(text: &str) -> serde_json::Value {
    serde_json::json!({ ENV_MARK: text })
}

fn from_env(v: &serde_json::Value) -> Option<&str> {
    let o = v.as_object()?;
    (o.len() == 1).then(|| o.get(ENV_MARK)?.as_str()).flatten()
}

/// "expected an integer, found a string": what was wanted and the kind of value given,
/// never the value itself (it may be a secret written into the wrong key or type).
fn mismatch(v: &serde_json::Value, e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let expected = msg
        .rsplit_once(", expected ")
        .map(|(_, x)| x.split(" at line").next().unwrap_or(x).trim())
        .map(|x| match x {
            "i64" | "u64" | "i32" | "u32" | "u16" => "an integer",
            "f64" => "a number",
            x => x,
        });
    let found = match v {
        serde_json::Value::Null => "nothing",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(n) if n.is_f64() => "a number",
        serde_json::Value::Number(_) => "an integer",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "a table",
    };
    match expected {
        Some(x) => format!("expected {x}, found {found}"),
        None => format!("cannot be read from {found}"),
    }
}

/// A serde message without the values it quotes (`…`, "…"): structure errors may point
/// at a value that is a secret.
pub fn no_values(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut quote: Option<char> = None;
    for c in msg.chars() {
        match (quote, c) {
            (None, '`' | '"') => {
                quote = Some(c);
                out.push_str("(value)");
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, c) => out.push(c),
        }
    }
    out
}

/// Keys that no section knows, with their values (only the names are reported).
pub type Unknown = BTreeMap<String, serde_json::Value>;

/// The whole file: one struct per section.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawConfig {
    pub agent: RawAgent,
    pub database: RawDatabase,
    pub collection: RawCollection,
    pub correlation: RawCorrelation,
    pub logs: RawLogs,
    pub listener: RawListener,
    pub buffer: RawBuffer,
    pub breaker: RawBreaker,
    pub metrics: RawMetrics,
    pub otlp: RawOtlp,
    pub syslog: RawSyslog,
    /// `[[servers]]`: each entry read on its own ([`RawServer`]) so that one malformed
    /// entry is one problem, not a file that cannot be read.
    #[serde(skip_serializing)]
    pub servers: Field<Vec<serde_json::Value>>,
    /// `[[custom]]`: each entry read on its own ([`RawCustom`]).
    #[serde(skip_serializing)]
    pub custom: Field<Vec<serde_json::Value>>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// The keys of a `[[custom]]` entry.
#[cfg(test)]
pub const CUSTOM_KEYS: [&str; 11] = [
    "name",
    "query",
    "databases",
    "interval_s",
    "max_rows",
    "timeout_ms",
    "min_server_version",
    "max_server_version",
    "labels",
    "gauges",
    "counters",
];

/// One `[[custom]]` entry: a user's query.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawCustom {
    pub name: Field<String>,
    pub query: Field<String>,
    pub databases: Field<serde_json::Value>,
    pub interval_s: Field<i64>,
    pub max_rows: Field<i64>,
    pub timeout_ms: Field<i64>,
    pub min_server_version: Field<i64>,
    pub max_server_version: Field<i64>,
    pub labels: Field<Vec<String>>,
    pub gauges: Field<Vec<String>>,
    pub counters: Field<Vec<String>>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// One `[[servers]]` entry, its sections already laid over the top-level ones
/// ([`inherit`]).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawServer {
    pub name: Field<String>,
    pub project_id: Field<String>,
    pub database: RawDatabase,
    pub collection: RawCollection,
    pub logs: RawLogs,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// The sections a `[[servers]]` entry has of its own, which start from the top-level
/// ones: a key the entry sets wins, the rest are the top level's.
pub const SERVER_SECTIONS: [&str; 3] = ["database", "collection", "logs"];

/// Lays each `[[servers]]` entry's sections over the top-level ones, key by key (the
/// top-level `[database]`, `[collection]` and `[logs]` are then every server's
/// defaults).
pub fn inherit(tree: &mut serde_json::Value) {
    let Some(top) = tree.as_object_mut() else {
        return;
    };
    let defaults: Vec<(&str, serde_json::Map<String, serde_json::Value>)> = SERVER_SECTIONS
        .iter()
        .map(|s| {
            let t = top.get(*s).and_then(|v| v.as_object()).cloned();
            (*s, t.unwrap_or_default())
        })
        .collect();
    let Some(serde_json::Value::Array(servers)) = top.get_mut("servers") else {
        return;
    };
    for entry in servers.iter_mut().filter_map(|e| e.as_object_mut()) {
        for (section, default) in &defaults {
            let own = entry.remove(*section);
            let mut merged = default.clone();
            match own {
                Some(serde_json::Value::Object(o)) => merged.extend(o),
                // Not a table: kept as written, for validation to name.
                Some(other) => {
                    entry.insert(section.to_string(), other);
                    continue;
                }
                None => {}
            }
            entry.insert(section.to_string(), serde_json::Value::Object(merged));
        }
    }
}

/// `[agent]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawAgent {
    pub project_id: Field<String>,
    pub hostname: Field<String>,
    pub state_dir: Field<String>,
    pub shutdown_grace_s: Field<i64>,
    pub max_connections: Field<i64>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// `[database]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawDatabase {
    pub host: Field<String>,
    pub port: Field<i64>,
    pub user: Field<String>,
    pub dbname: Field<String>,
    pub password_file: Field<String>,
    pub sslmode: Field<String>,
    pub sslrootcert: Field<String>,
    pub sslcert: Field<String>,
    pub sslkey: Field<String>,
    pub pool_max_size: Field<i64>,
    pub statement_timeout_ms: Field<i64>,
    pub lock_timeout_ms: Field<i64>,
    pub connect_timeout_ms: Field<i64>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// `[collection]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawCollection {
    pub interval_s: Field<i64>,
    pub activity_interval_s: Field<i64>,
    pub sample_interval_ms: Field<i64>,
    pub locks_blocking_interval_s: Field<i64>,
    pub activity: Field<bool>,
    pub statements: Field<bool>,
    pub locks: Field<bool>,
    pub system: Field<bool>,
    pub logs: Field<bool>,
    pub max_activity_rows: Field<i64>,
    pub max_query_length: Field<i64>,
    pub statements_max_rows: Field<i64>,
    pub plans_top: Field<i64>,
    pub plans_budget_ms: Field<i64>,
    pub redact: Field<String>,
    pub tables_max_relations: Field<i64>,
    pub tables_max_pass_s: Field<i64>,
    /// The health sources' `<key>` and `<key>_interval_s` (named by the table of kinds,
    /// [`crate::base::KINDS`]) and unknown keys: validation tells them apart.
    #[serde(flatten)]
    pub unknown: Unknown,
}

impl RawCollection {
    /// The keys of the health sources, as the table of kinds names them.
    pub fn health_keys() -> impl Iterator<Item = String> {
        crate::base::EventKind::health()
            .flat_map(|(_, h)| [h.key.to_string(), format!("{}_interval_s", h.key)])
    }
}

impl RawConfig {
    /// `section.key` of every key the agent knows: the fields of the raw structs, and
    /// the health sources' keys.
    pub fn known_keys() -> std::collections::BTreeSet<String> {
        let mut keys = std::collections::BTreeSet::new();
        if let Ok(serde_json::Value::Object(sections)) = serde_json::to_value(RawConfig::default())
        {
            for (section, table) in sections {
                if let serde_json::Value::Object(t) = table {
                    keys.extend(t.keys().map(|k| format!("{section}.{k}")));
                }
            }
        }
        keys.extend(RawCollection::health_keys().map(|k| format!("collection.{k}")));
        keys
    }
}

/// A key taken out of a section's other keys, read as a [`Field`].
pub fn field<T: DeserializeOwned>(v: Option<serde_json::Value>) -> Field<T> {
    match v {
        None => Field::Missing,
        Some(v) => Field::deserialize(v).unwrap_or_else(|e| Field::Bad(no_values(&e.to_string()))),
    }
}

/// `[correlation]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawCorrelation {
    pub application_name_pattern: Field<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// `[logs]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawLogs {
    pub path: Field<String>,
    pub syslog_ident: Field<String>,
    pub syslog_host: Field<String>,
    pub format: Field<String>,
    pub prefix: Field<String>,
    pub redact: Field<String>,
    pub start_at: Field<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// `[listener]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawListener {
    pub url: Field<String>,
    pub token: Field<String>,
    pub token_file: Field<String>,
    pub timeout_ms: Field<i64>,
    pub compression: Field<String>,
    pub batch_max_events: Field<i64>,
    pub batch_max_bytes: Field<i64>,
    pub retry_base_ms: Field<i64>,
    pub retry_max_ms: Field<i64>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// `[otlp]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawOtlp {
    pub endpoint: Field<String>,
    pub headers: Field<BTreeMap<String, String>>,
    pub headers_file: Field<String>,
    pub service_name: Field<String>,
    pub timeout_ms: Field<i64>,
    pub compression: Field<String>,
    pub batch_max_events: Field<i64>,
    pub batch_max_bytes: Field<i64>,
    pub retry_base_ms: Field<i64>,
    pub retry_max_ms: Field<i64>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// `[syslog]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawSyslog {
    pub listen: Field<String>,
    pub listen_tls: Field<String>,
    pub tls_cert: Field<String>,
    pub tls_key: Field<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// `[buffer]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawBuffer {
    pub max_bytes: Field<i64>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// `[metrics]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawMetrics {
    pub listen: Field<String>,
    pub database: Field<bool>,
    pub statements_limit: Field<i64>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// `[breaker]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct RawBreaker {
    pub fail_max: Field<i64>,
    pub reset_timeout_s: Field<i64>,
    #[serde(flatten)]
    pub unknown: Unknown,
}
