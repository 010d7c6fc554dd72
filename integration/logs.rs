//! The server log, written by a real server doing real things: the stderr parser checked
//! against the csvlog and jsonlog of the same run under three prefixes, and the daemon
//! following a log that rotates while the agent is stopped, started and killed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::agent::{bin, config, Agent};
use crate::harness::listener::{Listener, Mode};
use crate::harness::pg::PgCluster;
use crate::harness::wait_for;

/// Everything the server can be made to log, in English, in UTC.
pub const LOG_CONF: &str = "logging_collector = on\nlog_filename = 'postgresql-%Y-%m-%d_%H%M%S.log'\n\
log_rotation_age = 0\nlog_timezone = 'UTC'\nlc_messages = 'C'\nlog_min_duration_statement = 150\n\
log_lock_waits = on\ndeadlock_timeout = '100ms'\nlog_temp_files = 0\nlog_checkpoints = on\n\
log_autovacuum_min_duration = 0\nautovacuum_naptime = 1\nlog_connections = on\nlog_disconnections = on\n";

/// The files of one format in a log directory, oldest first.
pub fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().and_then(|e| e.to_str()) == Some(ext));
    v.sort();
    v
}

pub fn text(dir: &Path, ext: &str) -> String {
    files(dir, ext)
        .iter()
        .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned())
        .collect()
}

/// `postgres-agent parse-log ARGS FILES` → the events.
pub fn parse_log(args: &[&str], files: &[PathBuf]) -> Vec<Value> {
    assert!(!files.is_empty(), "no log files");
    let out = Command::new(bin())
        .args(["parse-log", "-c", "/nonexistent/agent.toml"])
        .args(args)
        .args(files)
        .output()
        .expect("run parse-log");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Errors, a deadlock with lock waits, slow multi-line statements, a temp file, a
/// checkpoint, autovacuum, an authentication failure; waits until each is in the log.
fn workload(pg: &PgCluster, log_dir: &Path) {
    let logged = |what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !text(log_dir, "csv").contains(what) {
            assert!(
                std::time::Instant::now() < deadline,
                "{what:?} not logged within 30 s; the log has:\n{}",
                text(log_dir, "log")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(!pg.try_sql("select * from nope"));
    assert!(!pg.try_sql("select 1/0"));
    assert!(!pg.try_sql("insert into t values (1, 'dup')"));
    assert!(!pg.try_sql("selec 1"));
    pg.sql("select pg_sleep(0.2),\n       'multi\nline' as x");
    pg.sql("set work_mem = '64kB'; select count(*) from (select g from generate_series(1, 100000) g order by g desc) s");
    pg.sql("checkpoint");
    let denied = pg
        .psql()
        .args(["-U", "wrongpw", "-c", "select 1"])
        .env("PGPASSWORD", "wrong")
        .output()
        .expect("psql");
    assert!(!denied.status.success());

    // Two sessions wait on each other: a lock wait, then a deadlock, then the survivor
    // gets its lock.
    let mut a = pg.interactive("app-a");
    let mut b = pg.interactive("app-b");
    let idle_in_tx = |app: &str| {
        let q = format!(
            "select count(*) from pg_stat_activity where application_name = '{app}' and state = 'idle in transaction'"
        );
        wait_for(app, Duration::from_secs(10), || {
            (pg.sql(&q) == "1").then_some(())
        });
    };
    a.send("begin; update t set v = 'a' where id = 1;");
    idle_in_tx("app-a");
    b.send("begin; update t set v = 'b' where id = 2;");
    idle_in_tx("app-b");
    a.send("update t set v = 'a' where id = 2;");
    // Only once a has run its own deadlock check (and logged its wait) does b's check
    // find the cycle: b gets the error and a, the survivor, logs that it acquired.
    logged(" still waiting for ShareLock on transaction ");
    b.send("update t set v = 'b' where id = 1;");
    logged("deadlock detected");
    logged(" acquired ShareLock on transaction ");
    a.send("commit;");
    drop(b);
    drop(a);

    pg.sql("insert into av select generate_series(1, 1000); delete from av");
    logged("automatic vacuum of table \"\"postgres.public.av\"\"");
}

/// Stops the server and waits until its shutdown is in the log of every destination
/// (stderr, csvlog, and jsonlog when `json`).
pub fn stop_and_wait_logged(pg: &mut PgCluster, log_dir: &Path, json: bool) {
    pg.stop_server_mode("fast");
    let exts: &[&str] = if json {
        &["log", "csv", "json"]
    } else {
        &["log", "csv"]
    };
    for ext in exts {
        wait_for("shutdown logged", Duration::from_secs(10), || {
            text(log_dir, ext)
                .contains("database system is shut down")
                .then_some(())
        });
    }
}

/// The fields every format carries, plus those this prefix carries.
pub fn key(e: &Value, extra: &[&str]) -> String {
    let mut m = BTreeMap::new();
    for f in [
        "timestamp",
        "pid",
        "severity",
        "message",
        "detail",
        "hint",
        "context",
        "statement",
        "query",
        "class",
        "duration_ms",
        "figures",
        "cursor_position",
    ]
    .iter()
    .chain(extra)
    {
        m.insert(*f, e[*f].clone());
    }
    serde_json::to_string(&m).expect("json")
}

fn sorted_keys(events: &[Value], extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = events.iter().map(|e| key(e, extra)).collect();
    v.sort();
    v
}

fn count(events: &[Value], f: impl Fn(&Value) -> bool) -> usize {
    events.iter().filter(|e| f(e)).count()
}

#[test]
fn stderr_parser_matches_csvlog_and_jsonlog_of_the_same_run() {
    // jsonlog came with PostgreSQL 15.
    let json = crate::harness::pg::major_version() >= 15;
    let dest = if json {
        "stderr,csvlog,jsonlog"
    } else {
        "stderr,csvlog"
    };
    let mut pg = PgCluster::init(&format!(
        "{LOG_CONF}log_destination = '{dest}'\nlog_rotation_size = 0\n"
    ));
    pg.write_data_file(
        "pg_hba.conf",
        b"local all wrongpw scram-sha-256\nlocal all all trust\n",
    );
    let phases: [(&str, &str, &[&str]); 3] = [
        ("%m [%p] ", "default", &[]),
        (
            "%m [%p] %e %q%a %u %d ",
            "default",
            &[
                "application_name",
                "correlation_id",
                "user",
                "database",
                "sqlstate",
            ],
        ),
        (
            "%m %-6p %q%-10u %-10d %e ",
            "verbose",
            &["user", "database", "sqlstate", "location"],
        ),
    ];
    for (i, (prefix, verbosity, extra)) in phases.iter().enumerate() {
        let dir = format!("log{i}");
        pg.append_conf(&format!(
            "log_directory = '{dir}'\nlog_line_prefix = '{prefix}'\nlog_error_verbosity = {verbosity}\n"
        ));
        pg.start_server();
        if i == 0 {
            pg.sql("create role wrongpw login password 'right'");
            pg.sql("create table t (id int primary key, v text); insert into t values (1, 'a'), (2, 'b')");
            pg.sql("create table av (i int) with (autovacuum_vacuum_threshold = 1, autovacuum_vacuum_scale_factor = 0, autovacuum_analyze_threshold = 1, autovacuum_analyze_scale_factor = 0)");
        }
        let log_dir = pg.data().join(&dir);
        eprintln!("phase {i}: prefix {prefix:?}, {verbosity}");
        workload(&pg, &log_dir);
        stop_and_wait_logged(&mut pg, &log_dir, json);
        let stderr = parse_log(
            &["--format", "stderr", "--prefix", prefix],
            &files(&log_dir, "log"),
        );
        let csv = parse_log(&["--format", "csvlog"], &files(&log_dir, "csv"));
        let jsonl = if json {
            parse_log(&["--format", "jsonlog"], &files(&log_dir, "json"))
        } else {
            csv.clone()
        };
        for (name, ev) in [("stderr", &stderr), ("csv", &csv), ("json", &jsonl)] {
            let raw: Vec<&Value> = ev.iter().filter(|e| !e["raw"].is_null()).collect();
            assert!(raw.is_empty(), "phase {i} {name}: unparsed lines {raw:?}");
        }
        let (s, c, j) = (
            sorted_keys(&stderr, extra),
            sorted_keys(&csv, extra),
            sorted_keys(&jsonl, extra),
        );
        let diff: Vec<_> = s.iter().zip(&c).filter(|(a, b)| a != b).take(3).collect();
        assert!(
            diff.is_empty(),
            "phase {i}: stderr vs csv differ: {diff:#?}"
        );
        assert_eq!(s.len(), c.len(), "phase {i}: stderr and csv event counts");
        assert_eq!(c, j, "phase {i}: csv vs json");

        // What the workload did, found and classified.
        let ev = &csv;
        let class = |c: &str| count(ev, |e| e["class"] == c);
        let errors: BTreeSet<&str> = ev
            .iter()
            .filter(|e| e["class"] == "error")
            .filter_map(|e| e["sqlstate"].as_str())
            .collect();
        for code in ["42P01", "22012", "23505", "42601"] {
            assert!(errors.contains(code), "phase {i}: no {code} in {errors:?}");
        }
        let dup = ev.iter().find(|e| e["sqlstate"] == "23505").expect("23505");
        assert_eq!(dup["detail"], "Key (id)=(1) already exists.");
        assert_eq!(dup["statement"], "insert into t values (1, 'dup')");
        assert_eq!(dup["sqlstate_class"], "integrity_constraint_violation");
        assert_eq!(
            count(ev, |e| e["class"] == "deadlock" && e["sqlstate"] == "40P01"),
            1
        );
        assert_eq!(class("deadlock"), 1, "phase {i}");
        assert_eq!(class("auth_failure"), 1, "phase {i}");
        assert!(
            class("lock_wait") >= 2,
            "phase {i}: a waits, b detects the deadlock"
        );
        assert_eq!(class("lock_acquired"), 1, "phase {i}");
        let multi = ev
            .iter()
            .find(|e| {
                e["class"] == "slow_query"
                    && e["statement"]
                        .as_str()
                        .is_some_and(|s| s.contains("'multi\nline'"))
            })
            .expect("the multi-line slow query");
        assert!(multi["duration_ms"].as_f64().expect("duration") >= 150.0);
        assert!(ev.iter().any(|e| e["class"] == "temp_file"
            && e["figures"]["size_bytes"].as_u64().is_some_and(|n| n > 0)));
        assert!(ev.iter().any(|e| e["class"] == "checkpoint"
            && e["figures"]["phase"] == "complete"
            && e["figures"]["buffers_written"].is_u64()));
        assert!(ev
            .iter()
            .any(|e| e["class"] == "autovacuum" && e["figures"]["table"] == "postgres.public.av"));
        for c in ["connection", "disconnection", "startup", "shutdown"] {
            assert!(class(c) >= 1, "phase {i}: no {c}");
        }
        // The prefix with %a carries the application name in stderr too.
        if extra.contains(&"application_name") {
            assert!(stderr.iter().any(|e| e["application_name"] == "app-a"));
        }
        if *verbosity == "verbose" {
            assert!(stderr
                .iter()
                .any(|e| e["location"].as_str().is_some_and(|l| l.contains(".c:"))));
        }
    }
}

/// Marker statements written by a session while the agent is started, killed and
/// stopped; every marker must reach the listener in exactly one event id.
#[test]
fn daemon_follows_rotations_across_restarts_and_kills_exactly_once() {
    const MARKERS: usize = 1200;
    let pg = PgCluster::start(&format!(
        "{LOG_CONF}log_destination = 'stderr'\nlog_directory = 'log'\nlog_rotation_size = '8kB'\n\
         log_line_prefix = '%m [%p] %q%a '\nlog_statement = 'all'\nlog_connections = off\nlog_disconnections = off\n"
    ));
    let listener = Listener::start(crate::harness::agent::TOKEN);
    let dir = tempfile::tempdir().expect("tmp");
    let toml = config(dir.path(), &pg, &listener.url(), 60).replace(
        "logs = false\n",
        "logs = true\nactivity = false\n[logs]\nstart_at = \"beginning\"\n",
    );
    let script = dir.path().join("markers.sql");
    let mut sql = String::new();
    for n in 0..MARKERS {
        sql.push_str(&format!(
            "select 'marker-{n:05}';\nselect pg_sleep(0.005);\n"
        ));
    }
    std::fs::write(&script, sql).expect("script");
    let start_load = || {
        pg.psql()
            .arg("-f")
            .arg(&script)
            .env("PGAPPNAME", "marker-load")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("psql")
    };
    let mut load = None;

    let markers = |l: &Listener| -> BTreeMap<String, BTreeSet<String>> {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for e in l.events_of("pg_log") {
            let msg = e["data"]["message"].as_str().unwrap_or_default();
            if let Some(at) = msg.find("'marker-") {
                let name = msg[at + 1..at + 13].to_string();
                m.entry(name)
                    .or_default()
                    .insert(e["id"].as_str().unwrap_or_default().to_string());
            }
        }
        m
    };
    let progress = |l: &Listener, more: usize| {
        let start = markers(l).len();
        wait_for("markers delivered", Duration::from_secs(60), || {
            (markers(l).len() >= (start + more).min(MARKERS)).then_some(())
        });
    };
    // kill -9, SIGTERM, kill -9, then let the last one finish.
    for (i, sig) in [libc::SIGKILL, libc::SIGTERM, libc::SIGKILL]
        .into_iter()
        .enumerate()
    {
        let mut agent = Agent::start(dir.path(), &toml, &[]);
        if load.is_none() {
            // The load starts once the agent follows the log: `start_at = "beginning"`
            // reads the current file from its start, not files rotated before the agent
            // first looked (with 8 kB rotation the first ones could be gone by then).
            agent.wait_log("source_state_changed", Duration::from_secs(30), |l| {
                l["child"] == "pg_log"
                    && l["state"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("following"))
            });
            load = Some(start_load());
        }
        progress(&listener, 150);
        agent.signal(sig);
        let st = agent
            .wait_exit(Duration::from_secs(15))
            .expect("agent exits");
        if sig == libc::SIGTERM {
            assert_eq!(st.code(), Some(0), "run {i}");
        }
    }
    let agent = Agent::start(dir.path(), &toml, &[]);
    assert!(load.expect("started").wait().expect("load").success());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while markers(&listener).len() < MARKERS {
        if std::time::Instant::now() > deadline {
            let m = markers(&listener);
            let missing: Vec<String> = (0..MARKERS)
                .map(|n| format!("marker-{n:05}"))
                .filter(|k| !m.contains_key(k))
                .take(10)
                .collect();
            let tail: Vec<String> = agent
                .stderr()
                .lines()
                .rev()
                .take(15)
                .map(str::to_string)
                .collect();
            panic!(
                "{} of {MARKERS} markers; missing {missing:?}\nstatus {}\nagent log (last first): {tail:#?}",
                m.len(),
                agent.status()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = markers(&listener);
    let doubled: Vec<_> = m.iter().filter(|(_, ids)| ids.len() != 1).take(5).collect();
    assert!(
        doubled.is_empty(),
        "markers under more than one event id: {doubled:?}"
    );
    for n in 0..MARKERS {
        assert!(m.contains_key(&format!("marker-{n:05}")), "marker {n} lost");
    }
    // Every marker event carries the application name and its file.
    let ev = listener.events_of("pg_log");
    let one = ev
        .iter()
        .find(|e| {
            e["data"]["message"]
                .as_str()
                .is_some_and(|s| s.contains("'marker-00007'"))
        })
        .expect("marker 7");
    assert_eq!(one["data"]["application_name"], "marker-load");
    assert_eq!(one["data"]["severity"], "LOG");
    assert!(one["data"]["file"]
        .as_str()
        .is_some_and(|f| f.ends_with(".log")));
    let rotated = files(&pg.data().join("log"), "log").len();
    assert!(
        rotated >= 5,
        "only {rotated} log files: the test did not rotate"
    );
    assert!(
        !agent.logs_named("log_rotation_detected").is_empty(),
        "{}",
        agent.stderr()
    );
}

pub fn check(config: &Path) -> (i32, String) {
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(config)
        .output()
        .expect("run check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `check` with the log source enabled against `pg` (and a listener that accepts).
pub fn check_logs(pg: &PgCluster) -> (i32, String) {
    let listener = Listener::start(crate::harness::agent::TOKEN);
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        config(dir.path(), pg, &listener.url(), 60).replace("logs = false\n", "logs = true\n"),
    )
    .expect("write");
    check(&path)
}

#[test]
fn check_finds_the_servers_log_and_says_when_the_prefix_does_not_fit() {
    let pg = PgCluster::start(&format!(
        "{LOG_CONF}log_destination = 'stderr'\nlog_directory = 'log'\nlog_line_prefix = '%m [%p] '\n"
    ));
    pg.sql("select 1");
    let listener = Listener::start(crate::harness::agent::TOKEN);
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("agent.toml");
    let base =
        config(dir.path(), &pg, &listener.url(), 60).replace("logs = false\n", "logs = true\n");
    std::fs::write(&path, &base).expect("write");
    let (code, out) = check(&path);
    assert_eq!(code, 0, "{out}");
    let log_file = files(&pg.data().join("log"), "log")
        .pop()
        .expect("a log file");
    assert!(
        out.contains(&format!(
            "ok    log       {} (stderr, prefix \"%m [%p] \") is readable",
            log_file.display()
        )),
        "{out}"
    );
    // One fix for what the prefix lacks, and the whole prefix that would stay with
    // stderr, with what it costs.
    assert!(
        out.contains(
            "warn  log       the stderr prefix \"%m [%p] \" lacks: no %a: log events cannot be correlated with requests\n      \
             fix: log_destination = 'stderr,csvlog' in postgresql.conf, then SELECT pg_reload_conf(): csvlog carries every field, quoted; [logs] format = \"auto\" reads it; \
             or, staying with stderr: log_line_prefix = '%m [%p] %a ' (%a is written by the client"
        ),
        "{out}"
    );
    assert!(
        !out.contains("lets clients write into the prefix"),
        "no client-written field in this prefix: {out}"
    );

    // The same file named in the config with a prefix it was not written with.
    std::fs::write(
        &path,
        format!(
            "{base}[logs]\npath = \"{}\"\nprefix = \"%t %u \"\n",
            log_file.display()
        ),
    )
    .expect("write");
    let (code, out) = check(&path);
    assert_eq!(code, 69, "{out}");
    assert!(
        out.contains("do not fit stderr log_line_prefix \"%t %u \""),
        "{out}"
    );
    assert!(out.contains("fix: set [logs] prefix"), "{out}");
}

#[test]
fn check_names_the_directory_a_user_may_not_enter_and_the_exact_fix() {
    use std::os::unix::process::CommandExt;
    // The log inside a 0700 data directory, read by a user that is neither the server's
    // nor in its group. Needs root to run `check` as that user.
    assert!(
        crate::harness::is_root(),
        "this test runs check as another user: run it as root"
    );
    let pg = PgCluster::start(&format!(
        "{LOG_CONF}log_destination = 'stderr'\nlog_directory = 'log'\n"
    ));
    let listener = Listener::start(crate::harness::agent::TOKEN);
    let dir = crate::harness::shared_tempdir("pgagent-it");
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        config(dir.path(), &pg, &listener.url(), 60).replace("logs = false\n", "logs = true\n"),
    )
    .expect("write");
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(&path)
        .uid(4242)
        .gid(4242)
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&out.stdout);
    let data = pg.data();
    assert_eq!(out.status.code(), Some(69), "{text}");
    assert!(
        text.contains(&format!(
            "FAIL  log       permission denied: user 4242 may not enter {} (directory nobody:nogroup 0700, and 4242 is not in group nogroup)",
            data.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "fix: sudo usermod -aG nogroup 4242 && sudo chmod g+rx {} (then restart the agent: a new group counts from the next login or start); for the files the server writes next: log_file_mode = 0640 in postgresql.conf, then SELECT pg_reload_conf(); a data directory may be 0750 (PostgreSQL accepts 0700 or 0750), or move the log out of it: log_directory = '/var/log/postgresql'",
            data.display()
        )),
        "{text}"
    );
    assert!(!text.contains("no log file found"), "{text}");
}

#[test]
fn check_says_what_to_do_without_the_logging_collector() {
    let pg = PgCluster::start("");
    let (code, out) = check_logs(&pg);
    assert_eq!(code, 69, "{out}");
    assert!(
        out.contains("FAIL  log       the server runs without logging_collector"),
        "{out}"
    );
    assert!(out.contains("fix: set [logs] path to that file"), "{out}");
}

#[test]
fn the_agents_own_statements_are_left_out_of_the_log_and_counted() {
    // Every statement logged: the agent's own samples would come back as log events.
    let mut pg = PgCluster::init(&format!(
        "{LOG_CONF}log_destination = 'csvlog'\nlog_directory = 'log'\nlog_min_duration_statement = 0\n"
    ));
    pg.start_server();
    pg.sql("create role mallory login");
    let listener = Listener::start(crate::harness::agent::TOKEN);
    let dir = crate::harness::shared_tempdir("pgagent-it");
    let toml = config(dir.path(), &pg, &listener.url(), 1).replace(
        "logs = false\n",
        "logs = true\n[logs]\nstart_at = \"beginning\"\n",
    );
    let agent = Agent::start(dir.path(), &toml, &[]);
    // A client that calls itself postgres-agent under another role is shipped.
    let out = pg
        .psql()
        .args(["-U", "mallory", "-c", "select 'pretender-marker'"])
        .env("PGAPPNAME", "postgres-agent")
        .output()
        .expect("psql");
    assert!(out.status.success());
    let pretender = wait_for("the pretender's statement", Duration::from_secs(30), || {
        listener.events_of("pg_log").into_iter().find(|e| {
            e["data"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("pretender-marker") && m.starts_with("duration:"))
        })
    });
    assert_eq!(pretender["data"]["user"], "mallory");
    // The agent's own samples (one a second) were read and left out, counted.
    let st = wait_for("own events counted", Duration::from_secs(30), || {
        let st = agent.status();
        (st["children"]["pg_log"]["detail"]["own_events_skipped_total"].as_u64() >= Some(3))
            .then_some(st)
    });
    let own: Vec<Value> = listener
        .events_of("pg_log")
        .into_iter()
        .filter(|e| {
            e["data"]["application_name"] == "postgres-agent" && e["data"]["user"] == "postgres"
        })
        .collect();
    assert!(
        own.is_empty(),
        "the agent's own statements shipped: {own:?}\n{st}"
    );
}

#[test]
fn check_warns_when_clients_can_write_into_the_stderr_prefix() {
    let pg = PgCluster::start(&format!(
        "{LOG_CONF}log_destination = 'stderr'\nlog_directory = 'log'\nlog_line_prefix = '%m [%p] %q%u@%d/%a '\n"
    ));
    // A line that reads two ways is counted in the message.
    let out = pg
        .psql()
        .args(["-c", "select 1"])
        .env("PGAPPNAME", "x PANIC:  y")
        .output()
        .expect("psql");
    assert!(out.status.success());
    let (code, out) = check_logs(&pg);
    assert_eq!(code, 0, "a warning, not a failure: {out}");
    assert!(
        out.contains("warn  log       the stderr log lets clients write into the prefix (%u, %d, %a come from the client"),
        "{out}"
    );
    assert!(
        out.contains("csvlog quotes every field and cannot be forged"),
        "{out}"
    );
    assert!(
        out.contains("fix: log_destination = 'stderr,csvlog' in postgresql.conf"),
        "{out}"
    );
    // This prefix lacks nothing: no second, contradicting prefix is recommended.
    assert!(!out.contains("log_line_prefix = '"), "{out}");
    let ambiguous = out
        .split("shipped flagged without the disputed fields (")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse::<u32>().ok());
    assert!(ambiguous >= Some(1), "the forged line counted: {out}");
}

/// A stderr log of `n` messages of 10 kB (`'big-00000'` …), and its size.
fn big_log(dir: &Path, n: usize) -> (PathBuf, u64) {
    let file = dir.join("big.log");
    let pad = "x".repeat(10_000);
    let mut text = String::with_capacity(n * 10_100);
    for n in 0..n {
        text.push_str(&format!(
            "2026-12-01 10:00:{:02}.{:03} UTC [{}] LOG:  statement: SELECT 'big-{n:05}' /* {pad} */\n",
            n / 1000,
            n % 1000,
            1000 + n % 7
        ));
    }
    std::fs::write(&file, &text).expect("log");
    (file, text.len() as u64)
}

/// The config lines that read [`big_log`] from its beginning.
fn big_log_source(file: &Path) -> String {
    format!(
        "logs = true\nactivity = false\n[logs]\npath = \"{}\"\nformat = \"stderr\"\nprefix = \"%m [%p] \"\nstart_at = \"beginning\"\n",
        file.display()
    )
}

/// An agent reading a [`big_log`] from its beginning, with its server, listener and
/// directory (all kept to the test's end).
struct OnBigLog {
    agent: Agent,
    listener: Listener,
    size: u64,
    _pg: PgCluster,
    _dir: tempfile::TempDir,
}

/// Starts a server, a listener answering `mode` and an agent on a fresh [`big_log`] of
/// [`BIG_LOG_MESSAGES`]; `listener_lines` replace the `retry_max_ms = 1000` line of the
/// listener's section (and may add sections after it).
fn start_on_big_log(mode: Mode, listener_lines: &str) -> OnBigLog {
    let pg = PgCluster::start("");
    let listener = Listener::start(crate::harness::agent::TOKEN);
    listener.set_mode(mode);
    let dir = tempfile::tempdir().expect("tmp");
    let (file, size) = big_log(dir.path(), BIG_LOG_MESSAGES);
    let toml = config(dir.path(), &pg, &listener.url(), 60)
        .replace("logs = false\n", &big_log_source(&file))
        .replace("retry_max_ms = 1000\n", listener_lines);
    OnBigLog {
        agent: Agent::start(dir.path(), &toml, &[]),
        listener,
        size,
        _pg: pg,
        _dir: dir,
    }
}

/// 3,000 messages of 10 kB: 30 MB behind when the agent starts.
const BIG_LOG_MESSAGES: usize = 3000;

/// Waits until the reader is at the end of a log of `size` bytes; the status then.
fn whole_file_read(agent: &Agent, size: u64) -> Value {
    wait_for("the whole file read", Duration::from_secs(60), || {
        let s = agent.status();
        (s["children"]["pg_log"]["detail"]["offset"].as_u64() == Some(size)).then_some(s)
    })
}

/// Waits until every message of [`big_log`] is at the listener, and checks each came
/// under one id.
fn every_big_message_once(listener: &Listener, n: usize) {
    let ids_of = |l: &Listener| -> BTreeMap<String, BTreeSet<String>> {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for e in l.events_of("pg_log") {
            let msg = e["data"]["message"].as_str().unwrap_or_default();
            if let Some(at) = msg.find("'big-") {
                m.entry(msg[at + 1..at + 10].to_string())
                    .or_default()
                    .insert(e["id"].as_str().unwrap_or_default().to_string());
            }
        }
        m
    };
    wait_for(
        "every message at the listener",
        Duration::from_secs(120),
        || (ids_of(listener).len() == n).then_some(()),
    );
    let m = ids_of(listener);
    assert!(
        m.values().all(|ids| ids.len() == 1),
        "a message under two ids"
    );
    assert!(m.contains_key("big-00000") && m.contains_key(&format!("big-{:05}", n - 1)));
}

/// A log far larger than the spool's cap, read while the listener refuses everything:
/// the reader stops once the spool holds 40 % of its cap (the file keeps the rest)
/// instead of filling the spool until it evicts what was read; when the listener
/// accepts again, reading resumes and every message arrives once, none evicted.
#[test]
fn a_log_larger_than_the_spool_cap_waits_for_delivery_instead_of_being_evicted() {
    const CAP: u64 = 4 << 20;
    // 30 MB of log against a 4 MiB spool.
    let run = start_on_big_log(
        Mode::Status(503),
        &format!(
            "retry_base_ms = 50\nretry_max_ms = 200\n[breaker]\nfail_max = 2\nreset_timeout_s = 1\n[buffer]\nmax_bytes = {CAP}\n"
        ),
    );
    let (agent, listener, size) = (&run.agent, &run.listener, run.size);
    let st = wait_for(
        "the reader waiting for the spool",
        Duration::from_secs(60),
        || {
            let s = agent.status();
            (s["children"]["pg_log"]["detail"]["waiting_for_spool"] == true).then_some(s)
        },
    );
    let log = &st["children"]["pg_log"]["detail"];
    let buffer = &st["children"]["buffer"]["detail"];
    assert_eq!(log["spool_waits_total"], 1, "{log}");
    assert!(log["offset"].as_u64() < Some(size / 4), "{log}");
    // About one batch (a 1 MiB read) past the 40 % at which it stopped.
    assert!(
        buffer["bytes"].as_u64() < Some(CAP * 4 / 10 + (2 << 20)),
        "{buffer}"
    );
    assert_eq!(agent.logs_named("log_reading_paused").len(), 1);
    // It stays stopped while nothing is delivered.
    std::thread::sleep(Duration::from_secs(2));
    let again = agent.status();
    assert_eq!(
        again["children"]["pg_log"]["detail"]["offset"],
        log["offset"]
    );
    assert_eq!(
        again["children"]["pg_log"]["detail"]["waiting_for_spool"],
        true
    );

    listener.set_mode(Mode::Ok);
    every_big_message_once(listener, BIG_LOG_MESSAGES);
    let st = whole_file_read(agent, size);
    assert_eq!(
        st["children"]["buffer"]["detail"]["evicted_total"], 0,
        "{st}"
    );
    assert!(agent.logs_named("buffer_eviction_complete").is_empty());
    assert!(!agent.logs_named("log_reading_resumed").is_empty());
    assert!(
        st["children"]["pg_log"]["detail"]["spool_waits_total"].as_u64() >= Some(1),
        "{st}"
    );
}

/// With two outputs, one of them away: the reader keeps pace with the one that takes
/// events (what the other has not taken is held up to the cap and evicted for it, as
/// for any outage), so the log reaches the working output whole.
#[test]
fn an_output_that_is_away_does_not_hold_the_log_back_from_the_other() {
    // Room on disk for what the listener has not taken yet (up to 40 % of the cap in
    // events; a 10 kB event takes most of a 16 kB page) besides the rows kept for the
    // other output: the cap evicts only those.
    const CAP: u64 = 16 << 20;
    // Nothing listens on port 1: the OTLP output fails throughout.
    let run = start_on_big_log(
        Mode::Ok,
        &format!(
            "retry_max_ms = 1000\n[otlp]\nendpoint = \"http://127.0.0.1:1\"\ntimeout_ms = 1000\nretry_max_ms = 1000\n[buffer]\nmax_bytes = {CAP}\n"
        ),
    );
    let (agent, listener, size) = (&run.agent, &run.listener, run.size);
    every_big_message_once(listener, BIG_LOG_MESSAGES);
    let st = whole_file_read(agent, size);
    // It may wait now and then for what the listener has not taken yet, never for the
    // rows kept for OTLP (those would never go: it would wait for good, and the file
    // would not be read whole): every pause ended.
    assert_eq!(
        st["children"]["pg_log"]["detail"]["waiting_for_spool"], false,
        "{st}"
    );
    wait_for(
        "a log_reading_resumed for every pause",
        Duration::from_secs(10),
        || {
            (agent.logs_named("log_reading_paused").len()
                == agent.logs_named("log_reading_resumed").len())
            .then_some(())
        },
    );
    // The OTLP output lost the oldest to the cap, reported.
    assert!(
        st["children"]["buffer"]["detail"]["evicted_total"].as_u64() > Some(0),
        "{st}"
    );
}

#[test]
fn a_large_log_read_from_its_beginning_shows_progress_in_status_and_ships_each_message_once() {
    let run = start_on_big_log(Mode::Ok, "retry_max_ms = 1000\n");
    let (agent, listener, size) = (&run.agent, &run.listener, run.size);
    // At the end of the file, with the pace it read at (over the last half minute).
    let detail = wait_for(
        "the reader at the end of the file",
        Duration::from_secs(120),
        || {
            let d = agent.status()["children"]["pg_log"]["detail"].clone();
            (d["offset"].as_u64() == Some(size) && d["read_bytes_per_s"].as_f64()? > 0.0)
                .then_some(d)
        },
    );
    assert_eq!(detail["bytes_behind"], 0, "{detail}");
    assert_eq!(detail["size"], size, "{detail}");
    assert_eq!(detail["bytes_read_total"], size, "{detail}");
    every_big_message_once(listener, BIG_LOG_MESSAGES);
    // Memory followed the reads (1 MiB at a time), not the 30 MB behind.
    let hwm_kb: u64 = std::fs::read_to_string(format!("/proc/{}/status", agent.pid()))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmHWM");
    assert!(
        hwm_kb < 64 * 1024,
        "peak RSS {hwm_kb} kB while catching up on 30 MB"
    );
}

/// A stderr log of `n` messages, each a numbered marker with a DETAIL line, so a file of
/// a few thousand messages spans several of `parse-log`'s reads (2,000 messages each).
fn numbered_log(path: &Path, n: usize) {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!(
            "2026-12-02 10:00:00.{:03} UTC [{}] alice@shop web LOG:  marker-{i}\n\
             2026-12-02 10:00:00.{:03} UTC [{}] alice@shop web DETAIL:  detail-{i}\n\t line two of {i}\n",
            i % 1000,
            1000 + i % 7,
            i % 1000,
            1000 + i % 7
        ));
    }
    std::fs::write(path, s).expect("write log");
}

#[test]
fn parse_log_writes_every_message_of_many_reads_once_in_file_order() {
    // parse-log reads on one thread and writes JSON on another: what crosses between
    // them must come out whole, once, in order, file after file.
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    numbered_log(&a, 9_001);
    numbered_log(&b, 2_500);
    let events = parse_log(
        &["--format", "stderr", "--prefix", "%m [%p] %u@%d %a "],
        &[a.clone(), b.clone()],
    );
    assert_eq!(events.len(), 11_501);
    let mut want = (0..9_001)
        .map(|i| ("a.log", i))
        .chain((0..2_500).map(|i| ("b.log", i)));
    let mut last_offset = None;
    for e in &events {
        let (file, i) = want.next().expect("no more messages expected");
        assert!(e["file"].as_str().expect("file").ends_with(file), "{e}");
        assert_eq!(e["message"], format!("marker-{i}"), "{e}");
        assert_eq!(e["detail"], format!("detail-{i}\n line two of {i}"), "{e}");
        assert_eq!(e["severity"], "LOG");
        assert_eq!(e["pid"], 1000 + i % 7);
        let offset = e["offset"].as_u64().expect("offset");
        if i > 0 {
            assert!(Some(offset) > last_offset, "offsets go forward: {e}");
        } else {
            assert_eq!(offset, 0, "{e}");
        }
        last_offset = Some(offset);
    }
}

#[test]
fn parse_log_stops_quietly_when_its_reader_goes_away() {
    // `parse-log big.log | head -1`: the writer's pipe closes after the first line; the
    // reader thread must stop too (not hang on a full queue), and exit 0 with no error.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("big.log");
    numbered_log(&log, 50_000);
    let mut child = Command::new(bin())
        .args(["parse-log", "-c", "/nonexistent/agent.toml"])
        .args(["--format", "stderr", "--prefix", "%m [%p] %u@%d %a "])
        .arg(&log)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("parse-log");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).expect("first line");
    let first: Value = serde_json::from_str(&first).expect("JSON");
    assert_eq!(first["message"], "marker-0");
    drop(stdout);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "nothing to say about a closed pipe"
    );
}
