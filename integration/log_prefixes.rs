//! The stderr log under the prefixes people run (hosted defaults, zones, padding, empty
//! fields) and under clients that write separators and forged severities into their
//! names, checked line for line against the csvlog (and jsonlog) the same server run
//! wrote: every stderr event is either exactly its csv twin or flagged `ambiguous` and
//! then gives nothing the csv contradicts. Truth from the structured formats, which
//! clients cannot forge.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::harness::pg::PgCluster;
use crate::harness::wait_for;
use crate::logs::{files, key, parse_log, stop_and_wait_logged, text, LOG_CONF};

/// Application names a client may choose: forged severities, a fake slow query, many
/// spaces, a fake line start.
const FORGED_PANIC: &str = "bitville-11111111-2222-3333-4444-555555555555 PANIC:  x";
const FAKE_SLOW: &str = "evil LOG:  duration: 123456.0 ms  statement: DROP";
const SPACES: &str = "a b c d e f g h i j";
const LINE_START: &str = "2026-11-26 17:35:07.123 UTC [99] x@y/z";

/// Sessions of every kind the prefixes must survive; waits until the last is logged.
fn workload(pg: &PgCluster, log_dir: &Path, tcp: Option<u16>) {
    let as_app = |app: &str, sql: &str| {
        pg.psql()
            .args(["-c", sql])
            .env("PGAPPNAME", app)
            .output()
            .expect("psql")
    };
    as_app(FORGED_PANIC, "select 1");
    as_app(FORGED_PANIC, "select 1/0");
    as_app(FAKE_SLOW, "select 2");
    as_app(SPACES, "select 1/0");
    as_app(LINE_START, "select * from nope");
    // A role whose name holds the '@' of `%u@%d`, and one that does not exist
    // (auth_failure in every format, with or without %e).
    let alice = pg
        .psql()
        .args(["-U", "alice@corp", "-c", "select 1/0"])
        .output()
        .expect("psql");
    assert!(!alice.status.success());
    let nobody = pg
        .psql()
        .args(["-U", "no_such_role", "-c", "select 1"])
        .output()
        .expect("psql");
    assert!(!nobody.status.success());
    if let Some(port) = tcp {
        // %r / %h of a TCP client: host(port).
        let out = pg
            .psql()
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-c",
                "select 1/0",
            ])
            .env("PGAPPNAME", SPACES)
            .output()
            .expect("psql");
        assert!(!out.status.success());
    }
    // A password in a logged statement (log_statement = all): never shipped.
    pg.sql("alter role \"alice@corp\" password 'pw-SECRET-42'");
    pg.sql("select 'the end'");
    wait_for("the last statement logged", Duration::from_secs(30), || {
        text(log_dir, "csv").contains("the end").then_some(())
    });
}

/// Text a client chose (its names, or the message and statement that repeat them) that
/// holds a severity label.
fn forged_label(e: &Value) -> bool {
    const LABELS: [&str; 6] = [
        "LOG:  ",
        "PANIC:  ",
        "ERROR:  ",
        "STATEMENT:  ",
        "FATAL:  ",
        "DETAIL:  ",
    ];
    [
        "application_name",
        "user",
        "database",
        "message",
        "statement",
    ]
    .iter()
    .any(|k| {
        e[*k]
            .as_str()
            .is_some_and(|s| LABELS.iter().any(|l| s.contains(l)))
    })
}

/// The only causes a line may be ambiguous for: a forged label, or names holding a
/// prefix's separators (a user with '@' in `%u@%d` until the session's `connection
/// authorized` line settles it).
fn label_like(e: &Value) -> bool {
    forged_label(e)
        || ["application_name", "user", "database"].iter().any(|k| {
            e[*k]
                .as_str()
                .is_some_and(|s| s.contains(['@', '/', ' ', ',']))
        })
}

/// The fields an ambiguous event may give: each null or the csv's value.
const CHECKED: [&str; 11] = [
    "timestamp",
    "pid",
    "user",
    "database",
    "application_name",
    "correlation_id",
    "sqlstate",
    "detail",
    "hint",
    "context",
    "query",
];

/// An ambiguous stderr event `s` against its csv twin `c`: nothing different, nothing
/// invented, nothing lost.
fn compatible(s: &Value, c: &Value) -> Result<(), String> {
    for k in CHECKED {
        if !s[k].is_null() && s[k] != c[k] {
            return Err(format!("{k}: {} where csv has {}", s[k], c[k]));
        }
    }
    let msg = s["message"].as_str().unwrap_or_default();
    let want = c["message"].as_str().unwrap_or_default();
    if s["severity"].is_null() {
        if s["class"] != "other" || !s["duration_ms"].is_null() {
            return Err(format!("undecided yet classified {}", s["class"]));
        }
        if !msg.ends_with(want) {
            return Err(format!("message {msg:?} lost {want:?}"));
        }
    } else if s["severity"] != c["severity"] || msg != want || s["class"] != c["class"] {
        return Err(format!(
            "severity/message/class {} {msg:?} {}",
            s["severity"], s["class"]
        ));
    }
    Ok(())
}

/// An undecided line that is an extra line (STATEMENT, DETAIL, …) of csv message `c`.
fn part_of(s: &Value, c: &Value) -> bool {
    let msg = s["message"].as_str().unwrap_or_default();
    s["ambiguous"] == true
        && s["severity"].is_null()
        && s["pid"] == c["pid"]
        && ["detail", "hint", "context", "statement", "query"]
            .iter()
            .any(|k| c[*k].as_str().is_some_and(|t| msg.ends_with(t)))
}

/// Aligns the stderr events with the csv events of the same run, backend by backend
/// (one backend writes its lines in order; backends interleave differently per
/// destination). Returns the csv twins of the ambiguous stderr events, one per
/// ambiguous stderr event.
fn align(phase: &str, stderr: &[Value], csv: &[Value], extra: &[&str]) -> Vec<Value> {
    let by_pid = |ev: &[Value]| {
        let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for e in ev {
            m.entry(e["pid"].to_string()).or_default().push(e.clone());
        }
        m
    };
    let (s_all, c_all) = (by_pid(stderr), by_pid(csv));
    assert_eq!(
        s_all.keys().collect::<Vec<_>>(),
        c_all.keys().collect::<Vec<_>>(),
        "{phase}: the same backends; without a pid: {:?}",
        stderr
            .iter()
            .filter(|e| e["pid"].is_null())
            .collect::<Vec<_>>()
    );
    let mut ambiguous = Vec::new();
    for (pid, cs) in &c_all {
        let ss = &s_all[pid];
        let mut i = 0;
        for c in cs {
            let s = ss
                .get(i)
                .unwrap_or_else(|| panic!("{phase} pid {pid}: stderr ran out at {c}"));
            i += 1;
            if s["ambiguous"] == true {
                ambiguous.push(c.clone());
                if let Err(e) = compatible(s, c) {
                    panic!("{phase} pid {pid}: {e}\nstderr {s}\ncsv {c}");
                }
                assert!(
                    label_like(c),
                    "{phase}: ambiguous without cause\nstderr {s}\ncsv {c}"
                );
                while ss.get(i).is_some_and(|n| part_of(n, c)) {
                    ambiguous.push(c.clone());
                    i += 1;
                }
            } else {
                assert_eq!(key(s, extra), key(c, extra), "{phase} pid {pid}");
            }
        }
        assert_eq!(
            i,
            ss.len(),
            "{phase} pid {pid}: stderr has more: {:?}",
            &ss[i..]
        );
    }
    ambiguous
}

#[test]
fn hosted_and_hostile_prefixes_read_back_as_the_csvlog_says() {
    let major = crate::harness::pg::major_version();
    let json = major >= 15;
    let dest = if json {
        "stderr,csvlog,jsonlog"
    } else {
        "stderr,csvlog"
    };
    let mut pg = PgCluster::init(&format!(
        "{LOG_CONF}log_destination = '{dest}'\nlog_rotation_size = 0\nlog_statement = 'all'\n"
    ));
    let tcp = pg.enable_tcp();
    // (prefix, log_timezone, the extra fields the prefix carries, undecided sessions)
    let phases: [(&str, &str, &[&str]); 7] = [
        // Debian's suggestion with %a: forged severities are flagged, never believed.
        (
            "%m [%p] %q%u@%d/%a ",
            "UTC",
            &["application_name", "user", "database", "correlation_id"],
        ),
        // Amazon RDS: no space before the severity, %r, empty background fields.
        (
            "%t:%r:%u@%d:[%p]:",
            "UTC",
            &["user", "database", "remote_host"],
        ),
        // Cloud SQL / Heroku style, a zone written as -03 (%l counts per destination:
        // stderr and csvlog number their lines apart, so it is not compared).
        (
            "%m [%p]: [%l-1] db=%d,user=%u ",
            "America/Sao_Paulo",
            &["user", "database"],
        ),
        // Crunchy style, CET/CEST (%h is the host without the port csvlog adds).
        (
            "%t [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h ",
            "Europe/Berlin",
            &["user", "database", "application_name"],
        ),
        // Padding on both sides, no space before the label.
        (
            "%m %-8p %e %q%10u %-12d:",
            "UTC",
            &["user", "database", "sqlstate"],
        ),
        // No free text at all but a session id (and a query id from 14 on).
        (
            if major >= 14 {
                "%m [%p] %c %Q %v "
            } else {
                "%m [%p] %c %v "
            },
            "Asia/Kolkata",
            &["session_id", "vxid"],
        ),
        // Names next to each other, with the label right after %a.
        (
            "%m [%p] %q%u %d %a",
            "UTC",
            &["application_name", "user", "database"],
        ),
    ];
    for (i, (prefix, tz, extra)) in phases.iter().enumerate() {
        let dir = format!("log{i}");
        pg.append_conf(&format!(
            "log_directory = '{dir}'\nlog_line_prefix = '{prefix}'\nlog_timezone = '{tz}'\n"
        ));
        pg.start_server();
        if i == 0 {
            pg.sql("create role \"alice@corp\" login");
        }
        let log_dir = pg.data().join(&dir);
        eprintln!("phase {i}: prefix {prefix:?}, {tz}");
        workload(&pg, &log_dir, Some(tcp));
        stop_and_wait_logged(&mut pg, &log_dir, json);
        let stderr = parse_log(
            &["--format", "stderr", "--prefix", prefix],
            &files(&log_dir, "log"),
        );
        let mut csv = parse_log(&["--format", "csvlog"], &files(&log_dir, "csv"));
        if json {
            // The two structured formats agree with each other exactly.
            let jsonl = parse_log(&["--format", "jsonlog"], &files(&log_dir, "json"));
            let keys = |ev: &[Value]| {
                let mut v: Vec<String> = ev.iter().map(|e| key(e, &[])).collect();
                v.sort();
                v
            };
            let (c, j) = (keys(&csv), keys(&jsonl));
            let diff: Vec<_> = c.iter().zip(&j).filter(|(a, b)| a != b).take(2).collect();
            assert!(
                diff.is_empty() && c.len() == j.len(),
                "{i}: csv vs json: {diff:#?}"
            );
        }
        let mut stderr = stderr;
        if !prefix.contains("%m") {
            // %t is taken from the clock when the prefix is written, csvlog's time when
            // the message was raised: across a second boundary they differ by one.
            for e in stderr.iter_mut().chain(csv.iter_mut()) {
                e["timestamp"] = Value::Null;
            }
        }
        let phase = format!("phase {i} {prefix:?}");
        let raw: Vec<&Value> = stderr.iter().filter(|e| !e["raw"].is_null()).collect();
        assert!(raw.is_empty(), "{phase}: unparsed lines {raw:?}");
        let ambiguous = align(&phase, &stderr, &csv, extra);
        for e in stderr.iter().chain(&csv) {
            assert!(
                !e.to_string().contains("pw-SECRET-42"),
                "{phase}: a password shipped: {e}"
            );
        }
        assert!(
            csv.iter().any(|e| e["message"]
                .as_str()
                .is_some_and(|m| m.contains("PASSWORD '***'") || m.contains("password '***'"))),
            "{phase}: the ALTER ROLE is shipped with its password masked"
        );
        // Nothing forged got through, nothing was hidden.
        for e in &stderr {
            assert_ne!(e["severity"], "PANIC", "{phase}: {e}");
            assert_ne!(e["class"], "crash", "{phase}: {e}");
            assert!(e["duration_ms"].is_null(), "{phase}: a fake slow query {e}");
            assert_ne!(
                e["correlation_id"], "11111111-2222-3333-4444-555555555555",
                "{phase}"
            );
        }
        let errors = |ev: &[Value]| {
            ev.iter()
                .filter(|e| e["class"] == "error" && e["message"] == "division by zero")
                .count()
        };
        // 1/0 by the forged-PANIC session (flagged where %a precedes the label, so not
        // counted there), by SPACES over the socket and TCP, by alice@corp.
        let app_last = prefix.ends_with("%a ") || prefix.ends_with("%a");
        let forged_hidden = usize::from(app_last);
        assert_eq!(errors(&csv), 4, "{phase}");
        assert_eq!(errors(&stderr), 4 - forged_hidden, "{phase}");
        let auth = |ev: &[Value]| ev.iter().filter(|e| e["class"] == "auth_failure").count();
        assert_eq!(
            (auth(&stderr), auth(&csv)),
            (1, 1),
            "{phase}: role does not exist"
        );
        if app_last {
            // Every line of the two label-like sessions (connection, statements, the
            // error and its STATEMENT, disconnection), and nothing else.
            let marked = csv.iter().filter(|e| forged_label(e)).count();
            assert!(marked >= 6, "{phase}: {marked}");
            assert!(
                ambiguous.len() >= marked,
                "{phase}: {} of {marked}",
                ambiguous.len()
            );
            let spaces = stderr
                .iter()
                .filter(|e| e["application_name"] == SPACES && e["class"] == "error")
                .count();
            assert_eq!(
                spaces, 2,
                "{phase}: the spaced name's errors, socket and TCP"
            );
            let start = stderr.iter().find(|e| {
                e["application_name"] == LINE_START
                    && e["sqlstate_class"].is_null()
                    && e["class"] == "error"
            });
            assert!(
                start.is_some_and(|e| e["database"] == "postgres" && e["ambiguous"].is_null()),
                "{phase}: the session settled by its connection line: {start:?}"
            );
        } else {
            // Without %a before the label, only a name with a separator of the prefix
            // may read two ways, and only until its session's `connection authorized`
            // line settles it (PostgreSQL 17 logs `connection authenticated` first).
            let unsettled: Vec<&Value> = ambiguous
                .iter()
                .filter(|c| {
                    c["user"] != "alice@corp"
                        || !c["message"]
                            .as_str()
                            .is_some_and(|m| m.starts_with("connection authenticated:"))
                })
                .collect();
            assert!(unsettled.is_empty(), "{phase}: {unsettled:#?}");
        }
    }
}

#[test]
fn a_newline_in_a_user_name_forges_no_line() {
    // The user name of a failed login reaches %u unescaped, newline and all.
    let mut pg = PgCluster::init(&format!(
        "{LOG_CONF}log_destination = 'stderr'\nlog_rotation_size = 0\nlog_directory = 'log'\n\
         log_line_prefix = '%m [%p] %q%u@%d '\n"
    ));
    pg.start_server();
    let forged = "evil\n2026-12-01 00:00:00.000 UTC [1] PANIC:  forged\n";
    let out = pg
        .psql()
        .args(["-U", forged, "-c", "select 1"])
        .output()
        .expect("psql");
    assert!(!out.status.success());
    pg.sql("select 'the end'");
    let log_dir = pg.data().join("log");
    wait_for("the failed login logged", Duration::from_secs(30), || {
        text(&log_dir, "log")
            .contains("does not exist")
            .then_some(())
    });
    let events = parse_log(
        &["--format", "stderr", "--prefix", "%m [%p] %q%u@%d "],
        &files(&log_dir, "log"),
    );
    assert!(
        !events.is_empty()
            && events
                .iter()
                .all(|e| e["severity"] != "PANIC" && e["class"] != "crash"),
        "a forged PANIC: {events:#?}"
    );
    // The cut line is read joined with the rest: the FATAL, its user name exact.
    let fatal: Vec<&Value> = events.iter().filter(|e| e["severity"] == "FATAL").collect();
    assert_eq!(fatal.len(), 1, "{events:#?}");
    assert_eq!(fatal[0]["user"], forged, "{events:#?}");
    assert_eq!(fatal[0]["class"], "auth_failure");
    let raw: Vec<&Value> = events.iter().filter(|e| !e["raw"].is_null()).collect();
    assert!(raw.is_empty(), "{raw:#?}");
}
