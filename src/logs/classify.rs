//! What a message is about: by SQLSTATE where the format carries it, by the (English)
//! message text otherwise, with the figures the message holds.

use serde::Serialize;
use serde_json::{Map, Value};

use super::record::Record;

/// The `class` of a `pg_log` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// `duration: … ms` (log_min_duration_statement, log_duration).
    SlowQuery,
    /// ERROR/FATAL not covered by a more specific class.
    Error,
    /// `deadlock detected` (40P01).
    Deadlock,
    /// `process N still waiting for … after … ms` (log_lock_waits), and its variant
    /// `process N detected deadlock while waiting for …` written just before the
    /// deadlock ERROR.
    LockWait,
    /// `process N acquired … after … ms`.
    LockAcquired,
    /// Checkpoint or restartpoint starting/complete.
    Checkpoint,
    /// `automatic vacuum of table …`.
    Autovacuum,
    /// `automatic analyze of table …`.
    Autoanalyze,
    /// `temporary file: path …, size …` (log_temp_files).
    TempFile,
    /// `connection received/authorized/authenticated`.
    Connection,
    /// `disconnection: session time …`.
    Disconnection,
    /// Authentication failed (28000, 28P01).
    AuthFailure,
    /// The server starting up.
    Startup,
    /// The server shutting down.
    Shutdown,
    /// PANIC, a backend killed by a signal, crash recovery.
    Crash,
    /// Anything else (and lines that fit no format).
    Other,
}

impl Class {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::SlowQuery => "slow_query",
            Class::Error => "error",
            Class::Deadlock => "deadlock",
            Class::LockWait => "lock_wait",
            Class::LockAcquired => "lock_acquired",
            Class::Checkpoint => "checkpoint",
            Class::Autovacuum => "autovacuum",
            Class::Autoanalyze => "autoanalyze",
            Class::TempFile => "temp_file",
            Class::Connection => "connection",
            Class::Disconnection => "disconnection",
            Class::AuthFailure => "auth_failure",
            Class::Startup => "startup",
            Class::Shutdown => "shutdown",
            Class::Crash => "crash",
            Class::Other => "other",
        }
    }
}

impl Class {
    /// The class of a message of a translated server, from its subclass: what the
    /// English text gives an English server's (`checkpoint_complete` is a
    /// `checkpoint`).
    pub fn of_subclass(sub: &str) -> Option<Class> {
        Some(match sub {
            "statement_duration" | "auto_explain_plan" => Class::SlowQuery,
            "deadlock_detected" => Class::Deadlock,
            "lock_waiting" | "deadlock_wait" => Class::LockWait,
            "lock_acquired" => Class::LockAcquired,
            "autovacuum_completed" => Class::Autovacuum,
            "autoanalyze_completed" => Class::Autoanalyze,
            "temp_file" => Class::TempFile,
            "connection_received"
            | "connection_authorized"
            | "connection_authenticated"
            | "replication_connection_authorized" => Class::Connection,
            "disconnection" => Class::Disconnection,
            "server_starting" | "server_listening" | "server_ready" | "server_was_shut_down" => {
                Class::Startup
            }
            "shutdown_requested" | "server_shutting_down" | "server_shut_down" => Class::Shutdown,
            "process_terminated_by_signal"
            | "crash_restart"
            | "terminated_by_crash"
            | "recovery_after_crash" => Class::Crash,
            s if s.starts_with("checkpoint_") || s.starts_with("restartpoint_") => {
                Class::Checkpoint
            }
            s if s.starts_with("auth_") || s.starts_with("hba_") => Class::AuthFailure,
            _ => return None,
        })
    }
}

/// The class, the duration of a slow query and the figures of the message.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    /// The class.
    pub class: Class,
    /// `duration: N ms`.
    pub duration_ms: Option<f64>,
    /// The statement of a `duration:` message (`statement: …`, `execute …: …`).
    pub statement: Option<String>,
    /// Class-specific numbers and names (table, size_bytes, write_s, …).
    pub figures: Map<String, Value>,
}

/// Classifies one record.
pub fn classify(r: &Record) -> Classified {
    let mut c = Classified {
        class: Class::Other,
        duration_ms: None,
        statement: None,
        figures: Map::new(),
    };
    // A line that fits no format, or one read more than one way whose readings disagree
    // on where the message starts: its text may be a client's forgery, so it is not
    // classified (a forged "PANIC" or "duration:" must not become a crash or a slow query).
    if r.raw.is_some() || (r.ambiguous && r.severity.is_none()) {
        return c;
    }
    let sev = r.severity.as_deref().unwrap_or("");
    let code = r.sqlstate.as_deref().unwrap_or("");
    let m = r.message.as_str();
    c.class = if sev == "PANIC" {
        Class::Crash
    } else if code == "40P01" || m == "deadlock detected" {
        Class::Deadlock
    } else if code.starts_with("28") || auth_failure_text(sev, m) {
        Class::AuthFailure
    } else if code == "57P02" || crash_text(m) {
        Class::Crash
    } else if let Some(rest) = m.strip_prefix("duration: ") {
        slow_query(rest, &mut c);
        Class::SlowQuery
    } else if m.starts_with("process ")
        && (m.contains(" still waiting for ")
            || m.contains(" detected deadlock while waiting for "))
    {
        lock_figures(m, &mut c.figures);
        Class::LockWait
    } else if m.starts_with("process ") && m.contains(" acquired ") && m.contains(" after ") {
        lock_figures(m, &mut c.figures);
        Class::LockAcquired
    } else if let Some(rest) = m
        .strip_prefix("checkpoint ")
        .or_else(|| m.strip_prefix("restartpoint "))
    {
        checkpoint(rest, &mut c.figures);
        Class::Checkpoint
    } else if m.starts_with("automatic vacuum of table ")
        || m.starts_with("automatic aggressive vacuum ")
    {
        table_figures(m, &mut c.figures);
        Class::Autovacuum
    } else if m.starts_with("automatic analyze of table ") {
        table_figures(m, &mut c.figures);
        Class::Autoanalyze
    } else if let Some(rest) = m.strip_prefix("temporary file: path \"") {
        if let Some((path, after)) = rest.split_once('"') {
            c.figures.insert("path".into(), path.into());
            if let Some(n) = after
                .strip_prefix(", size ")
                .and_then(|s| s.parse::<u64>().ok())
            {
                c.figures.insert("size_bytes".into(), n.into());
            }
        }
        Class::TempFile
    } else if m.starts_with("connection received:")
        || m.starts_with("connection authorized:")
        || m.starts_with("connection authenticated:")
        || m.starts_with("replication connection authorized:")
    {
        Class::Connection
    } else if let Some(rest) = m.strip_prefix("disconnection: session time: ") {
        if let Some(s) = rest.split_whitespace().next().and_then(hms_seconds) {
            c.figures.insert("session_s".into(), num(s));
        }
        Class::Disconnection
    } else if startup_text(m) {
        Class::Startup
    } else if shutdown_text(m) {
        Class::Shutdown
    } else if matches!(sev, "ERROR" | "FATAL") {
        // By severity, not by SQLSTATE: a LOG line with an error code (08P01 "unexpected
        // EOF on client connection") stays `other` in every format alike, since stderr
        // without %e has no code to go by.
        Class::Error
    } else {
        Class::Other
    };
    if c.class == Class::Other && sev == "LOG" {
        // log_statement = all|ddl|mod: the statement as it came, so that the event
        // carries its request (the statement's comment) and its fingerprint.
        c.statement = statement_of(m);
    }
    c
}

/// The messages PostgreSQL 12–18 raise with SQLSTATE 28000/28P01, so that stderr without
/// `%e` gives the class that csvlog and jsonlog give by code.
fn auth_failure_text(sev: &str, m: &str) -> bool {
    let role = |end: &str| m.starts_with("role \"") && m.ends_with(end);
    m.starts_with("password authentication failed for user ")
        || m.starts_with("no pg_hba.conf entry for ")
        || m.contains(" authentication failed for user ")
        || m.starts_with("pg_hba.conf rejects ")
        || m == "connection requires a valid client certificate"
        || m.starts_with("provided user name (")
        // An ERROR "role … does not exist" (SET ROLE, ALTER ROLE) is 42704: only the
        // FATAL at login is an authentication failure.
        || (sev == "FATAL" && (role("\" does not exist") || role("\" is not permitted to log in")))
}

fn crash_text(m: &str) -> bool {
    (m.contains(" was terminated by signal ")
        || m.contains(" was terminated by exception ")
        || (m.starts_with("server process (PID ") && m.contains(" exited with exit code ")))
        || m == "terminating any other active server processes"
        || m == "all server processes terminated; reinitializing"
        || m.starts_with("database system was interrupted")
        || m == "database system was not properly shut down; automatic recovery in progress"
        || m.starts_with("terminating connection because of crash of another server process")
}

fn startup_text(m: &str) -> bool {
    m.starts_with("starting PostgreSQL ")
        || m == "database system is ready to accept connections"
        || m == "database system is ready to accept read-only connections"
        || m.starts_with("database system was shut down at ")
        || m.starts_with("listening on ")
}

fn shutdown_text(m: &str) -> bool {
    m.starts_with("received smart shutdown request")
        || m.starts_with("received fast shutdown request")
        || m.starts_with("received immediate shutdown request")
        || m == "database system is shut down"
        || m == "shutting down"
        || m == "aborting any active transactions"
}

/// `duration: 12.345 ms  statement: select 1` and the extended-protocol variants
/// (`execute <unnamed>: …`, `parse S_1: …`, `bind …: …`).
fn slow_query(rest: &str, c: &mut Classified) {
    let (num_s, after) = rest.split_once(" ms").unwrap_or((rest, ""));
    c.duration_ms = num_s.trim().parse().ok();
    c.statement = statement_of(after.trim_start());
}

/// The statement of `statement: select 1` and the extended protocol's
/// `execute <unnamed>: select …`, `parse S_1: …`, `bind …: …` (a duration line's tail, or
/// a `log_statement` line).
fn statement_of(text: &str) -> Option<String> {
    for head in ["statement: ", "execute ", "parse ", "bind "] {
        if let Some(s) = text.strip_prefix(head) {
            let stmt = if head == "statement: " {
                s
            } else {
                // "execute <unnamed>: select …" — the statement follows the name.
                s.split_once(": ")?.1
            };
            return Some(stmt.to_string());
        }
    }
    None
}

/// `process 123 still waiting for ShareLock on transaction 456 after 1000.123 ms`.
fn lock_figures(m: &str, f: &mut Map<String, Value>) {
    let mut words = m.split(' ');
    if let Some(pid) = words.nth(1).and_then(|p| p.parse::<i64>().ok()) {
        f.insert("waiting_pid".into(), pid.into());
    }
    let for_ = m
        .split_once(" waiting for ")
        .or_else(|| m.split_once(" acquired "))
        .map(|(_, r)| r);
    if let Some(r) = for_ {
        if let Some((what, after)) = r.rsplit_once(" after ") {
            if let Some((mode, object)) = what.split_once(" on ") {
                f.insert("lock_mode".into(), mode.into());
                f.insert("object".into(), object.into());
            }
            if let Some(ms) = after
                .strip_suffix(" ms")
                .and_then(|s| s.parse::<f64>().ok())
            {
                f.insert("waited_ms".into(), num(ms));
            }
        }
    }
}

/// `starting: time` or `complete: wrote 3 buffers (0.0%); …; write=0.1 s, …`.
fn checkpoint(rest: &str, f: &mut Map<String, Value>) {
    if let Some(reason) = rest.strip_prefix("starting: ") {
        f.insert("phase".into(), "starting".into());
        f.insert("reason".into(), reason.trim().into());
        return;
    }
    let Some(body) = rest.strip_prefix("complete: ") else {
        return;
    };
    f.insert("phase".into(), "complete".into());
    if let Some(n) = body
        .strip_prefix("wrote ")
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse::<u64>().ok())
    {
        f.insert("buffers_written".into(), n.into());
    }
    for part in body.split([';', ',']) {
        let part = part.trim();
        let Some((k, v)) = part.split_once('=') else {
            // "0 WAL file(s) added", "1 removed", "0 recycled"
            let mut w = part.split(' ');
            if let (Some(n), Some(last)) = (w.next(), part.rsplit(' ').next()) {
                if let Ok(n) = n.parse::<u64>() {
                    let key = match last {
                        "added" => "wal_added",
                        "removed" => "wal_removed",
                        "recycled" => "wal_recycled",
                        _ => continue,
                    };
                    f.insert(key.into(), n.into());
                }
            }
            continue;
        };
        let k = k.trim().replace(' ', "_");
        let v = v.trim();
        if let Some(s) = v.strip_suffix(" s").and_then(|s| s.parse::<f64>().ok()) {
            f.insert(format!("{k}_s"), num(s));
        } else if let Some(kb) = v.strip_suffix(" kB").and_then(|s| s.parse::<u64>().ok()) {
            f.insert(format!("{k}_kb"), kb.into());
        } else if let Ok(n) = v.parse::<u64>() {
            f.insert(k, n.into());
        } else if k.ends_with("lsn") {
            f.insert(k, v.into());
        }
    }
}

/// The table of an autovacuum/autoanalyze report and its elapsed time.
fn table_figures(m: &str, f: &mut Map<String, Value>) {
    if let Some((_, r)) = m.split_once(" of table \"") {
        if let Some((t, _)) = r.split_once('"') {
            f.insert("table".into(), t.into());
        }
    }
    if let Some(e) = m
        .rsplit_once("elapsed: ")
        .and_then(|(_, r)| r.split(' ').next())
        .and_then(|s| s.parse::<f64>().ok())
    {
        f.insert("elapsed_s".into(), num(e));
    }
    for (key, label) in [("pages", "pages: "), ("tuples", "tuples: ")] {
        // "pages: 0 removed, 5 remain, …"
        if let Some((_, r)) = m.split_once(label) {
            let mut w = r.split([' ', ',']).filter(|s| !s.is_empty());
            if let (Some(a), Some("removed"), Some(b), Some("remain")) =
                (w.next(), w.next(), w.next(), w.next())
            {
                if let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>()) {
                    f.insert(format!("{key}_removed"), a.into());
                    f.insert(format!("{key}_remain"), b.into());
                }
            }
        }
    }
}

/// `0:00:01.234` → seconds.
fn hms_seconds(s: &str) -> Option<f64> {
    let mut p = s.split(':');
    let h: f64 = p.next()?.parse().ok()?;
    let m: f64 = p.next()?.parse().ok()?;
    let sec: f64 = p.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + sec)
}

fn num(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// The name of a SQLSTATE class (its first two characters).
pub fn sqlstate_class(code: &str) -> Option<&'static str> {
    Some(match code.get(..2)? {
        "00" => "successful_completion",
        "01" => "warning",
        "02" => "no_data",
        "03" => "sql_statement_not_yet_complete",
        "08" => "connection_exception",
        "09" => "triggered_action_exception",
        "0A" => "feature_not_supported",
        "0B" => "invalid_transaction_initiation",
        "0F" => "locator_exception",
        "0L" => "invalid_grantor",
        "0P" => "invalid_role_specification",
        "0Z" => "diagnostics_exception",
        "20" => "case_not_found",
        "21" => "cardinality_violation",
        "22" => "data_exception",
        "23" => "integrity_constraint_violation",
        "24" => "invalid_cursor_state",
        "25" => "invalid_transaction_state",
        "26" => "invalid_sql_statement_name",
        "27" => "triggered_data_change_violation",
        "28" => "invalid_authorization_specification",
        "2B" => "dependent_privilege_descriptors_still_exist",
        "2D" => "invalid_transaction_termination",
        "2F" => "sql_routine_exception",
        "34" => "invalid_cursor_name",
        "38" => "external_routine_exception",
        "39" => "external_routine_invocation_exception",
        "3B" => "savepoint_exception",
        "3D" => "invalid_catalog_name",
        "3F" => "invalid_schema_name",
        "40" => "transaction_rollback",
        "42" => "syntax_error_or_access_rule_violation",
        "44" => "with_check_option_violation",
        "53" => "insufficient_resources",
        "54" => "program_limit_exceeded",
        "55" => "object_not_in_prerequisite_state",
        "57" => "operator_intervention",
        "58" => "system_error",
        "72" => "snapshot_failure",
        "F0" => "config_file_error",
        "HV" => "fdw_error",
        "P0" => "plpgsql_error",
        "XX" => "internal_error",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(sev: &str, code: Option<&str>, m: &str) -> Record {
        Record {
            severity: Some(sev.into()),
            sqlstate: code.map(str::to_string),
            message: m.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_logged_statement_names_its_statement() {
        for (m, want) in [
            (
                "statement: select 1 /*request_id='r'*/",
                Some("select 1 /*request_id='r'*/"),
            ),
            ("execute <unnamed>: select $1", Some("select $1")),
            (
                "execute S_1: update t set a = $1",
                Some("update t set a = $1"),
            ),
            ("checkpoint starting: time", None),
        ] {
            let c = classify(&rec("LOG", None, m));
            assert_eq!(c.statement.as_deref(), want, "{m}");
        }
        // Only the server's own LOG lines: an error's text is not a statement.
        assert_eq!(
            classify(&rec("ERROR", None, "statement: x")).statement,
            None
        );
    }

    #[test]
    fn classes_by_text_and_sqlstate() {
        let cases = [
            (
                rec(
                    "LOG",
                    None,
                    "duration: 1500.250 ms  statement: select pg_sleep(1.5)",
                ),
                Class::SlowQuery,
            ),
            (
                rec("ERROR", Some("40P01"), "deadlock detected"),
                Class::Deadlock,
            ),
            (rec("ERROR", None, "deadlock detected"), Class::Deadlock),
            (
                rec(
                    "FATAL",
                    Some("28P01"),
                    "password authentication failed for user \"x\"",
                ),
                Class::AuthFailure,
            ),
            (
                rec(
                    "FATAL",
                    None,
                    "password authentication failed for user \"x\"",
                ),
                Class::AuthFailure,
            ),
            (
                rec("ERROR", Some("42P01"), "relation \"nope\" does not exist"),
                Class::Error,
            ),
            (
                rec(
                    "LOG",
                    None,
                    "process 12 still waiting for ShareLock on transaction 7 after 1000.100 ms",
                ),
                Class::LockWait,
            ),
            (
                rec(
                    "LOG",
                    None,
                    "process 12 acquired ShareLock on transaction 7 after 2000.500 ms",
                ),
                Class::LockAcquired,
            ),
            (
                rec("LOG", None, "checkpoint starting: time"),
                Class::Checkpoint,
            ),
            (
                rec(
                    "LOG",
                    None,
                    "automatic analyze of table \"shop.public.t\"\navg read rate: 0.000 MB/s",
                ),
                Class::Autoanalyze,
            ),
            (
                rec(
                    "LOG",
                    None,
                    "temporary file: path \"base/pgsql_tmp/pgsql_tmp1.0\", size 1400000",
                ),
                Class::TempFile,
            ),
            (
                rec("LOG", None, "connection received: host=[local]"),
                Class::Connection,
            ),
            (
                rec(
                    "LOG",
                    None,
                    "disconnection: session time: 0:00:01.500 user=a database=b host=[local]",
                ),
                Class::Disconnection,
            ),
            (
                rec(
                    "LOG",
                    None,
                    "database system is ready to accept connections",
                ),
                Class::Startup,
            ),
            (
                rec("LOG", None, "received fast shutdown request"),
                Class::Shutdown,
            ),
            (
                rec(
                    "LOG",
                    None,
                    "server process (PID 77) was terminated by signal 9: Killed",
                ),
                Class::Crash,
            ),
            (rec("PANIC", None, "could not write to file"), Class::Crash),
            (
                rec("LOG", None, "parameter \"work_mem\" changed to \"8MB\""),
                Class::Other,
            ),
            (rec("WARNING", Some("01000"), "something"), Class::Other),
        ];
        for (r, want) in cases {
            assert_eq!(classify(&r).class, want, "{}", r.message);
        }
    }

    #[test]
    fn figures() {
        let c = classify(&rec(
            "LOG",
            None,
            "duration: 2.5 ms  execute <unnamed>: select $1",
        ));
        assert_eq!(c.duration_ms, Some(2.5));
        assert_eq!(c.statement.as_deref(), Some("select $1"));
        let c = classify(&rec("LOG", None, "checkpoint complete: wrote 3 buffers (0.0%); 0 WAL file(s) added, 1 removed, 0 recycled; write=0.101 s, sync=0.002 s, total=0.110 s; sync files=2, longest=0.001 s, average=0.001 s; distance=16 kB, estimate=16 kB; lsn=0/1A2B3C4, redo lsn=0/1A2B3C4"));
        let f = &c.figures;
        assert_eq!(f["buffers_written"], 3);
        assert_eq!(f["wal_removed"], 1);
        assert_eq!(f["write_s"], 0.101);
        assert_eq!(f["total_s"], 0.11);
        assert_eq!(f["sync_files"], 2);
        assert_eq!(f["distance_kb"], 16);
        assert_eq!(f["redo_lsn"], "0/1A2B3C4");
        let c = classify(&rec("LOG", None, "automatic vacuum of table \"shop.public.t\": index scans: 0\npages: 0 removed, 45 remain, 45 scanned (100.00% of total)\ntuples: 10000 removed, 0 remain, 0 are dead but not yet removable\nsystem usage: CPU: user: 0.01 s, system: 0.00 s, elapsed: 0.02 s"));
        assert_eq!(c.class, Class::Autovacuum);
        assert_eq!(c.figures["table"], "shop.public.t");
        assert_eq!(c.figures["tuples_removed"], 10000);
        assert_eq!(c.figures["pages_remain"], 45);
        assert_eq!(c.figures["elapsed_s"], 0.02);
        let c = classify(&rec(
            "LOG",
            None,
            "temporary file: path \"base/pgsql_tmp/pgsql_tmp1.0\", size 1400000",
        ));
        assert_eq!(c.figures["size_bytes"], 1400000);
        let c = classify(&rec(
            "LOG",
            None,
            "process 12 still waiting for ShareLock on transaction 7 after 1000.100 ms",
        ));
        assert_eq!(c.figures["lock_mode"], "ShareLock");
        assert_eq!(c.figures["object"], "transaction 7");
        assert_eq!(c.figures["waited_ms"], 1000.1);
        assert_eq!(
            sqlstate_class("23505"),
            Some("integrity_constraint_violation")
        );
    }
}
