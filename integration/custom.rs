//! User-defined SQL (`[[custom]]`): each query a source of its own, run read-only under
//! its timeout in the databases it names, its rows shipped typed and capped on the
//! server, counters as deltas; a query that could write refused at load.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::harness::agent::{bin, config, Agent, TOKEN};
use crate::harness::listener::Listener;
use crate::harness::pg::PgCluster;
use crate::harness::{shared_tempdir, wait_for};

/// The `data` of the `pg_custom` events of query `name` with `record`.
fn records(l: &Listener, name: &str, record: &str) -> Vec<Value> {
    l.events_of("pg_custom")
        .into_iter()
        .map(|e| {
            let mut d = e["data"].clone();
            d["at"] = e["collected_at"].clone();
            d
        })
        .filter(|d| d["name"] == name && d["record"] == record)
        .collect()
}

fn entry(name: &str, body: &str) -> String {
    format!("[[custom]]\nname = \"{name}\"\n{body}\n")
}

#[test]
fn a_query_that_could_write_is_refused_at_load_with_its_key_and_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    let mut text =
        String::from("[agent]\nproject_id = \"p\"\n[listener]\nurl = \"http://127.0.0.1:9/x\"\n");
    for (name, query) in [
        ("ins", "insert into t values (1)"),
        ("del", "delete from t returning *"),
        ("two", "select 1; select 2"),
        ("lock", "select * from t for update"),
    ] {
        text.push_str(&entry(name, &format!("query = \"{query}\"")));
    }
    std::fs::write(&path, text).expect("write");
    for cmd in ["run", "check", "once"] {
        let out = Command::new(bin())
            .args([cmd, "-c"])
            .arg(&path)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{cmd}: {err}");
        for line in [
            "custom.ins.query: refused: INSERT: only a query that reads may run",
            "custom.del.query: refused: DELETE: only a query that reads may run",
            "custom.two.query: refused: more than one statement",
            "custom.lock.query: refused: a locking clause (FOR UPDATE/SHARE)",
        ] {
            assert!(err.contains(line), "{cmd}: {line}\n{err}");
        }
    }
}

#[test]
fn custom_queries_run_in_their_databases_capped_timed_out_and_counted() {
    let pg = PgCluster::start("");
    for (db, n) in [("db1", 3), ("db2", 5)] {
        pg.sql(&format!("create database {db}"));
        crate::harness::pg::run(
            pg.psql().args([
                "-d",
                db,
                "-c",
                &format!("create table t (id int); insert into t select generate_series(1, {n})"),
            ]),
            "the table",
        );
    }
    pg.sql("create table hits (k text, n bigint); insert into hits values ('a', 10), ('b', 20)");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("custom");
    let customs = [
        entry(
            "per_db",
            "query = \"select current_database()::text as db, count(*) as n from t\"\ndatabases = [\"db1\", \"db2\"]\ninterval_s = 1",
        ),
        entry(
            "everywhere",
            "query = \"select current_database()::text as db\"\ndatabases = \"*\"\ninterval_s = 1",
        ),
        entry("newer", "query = \"select 1 as one\"\nmin_server_version = 990000\ninterval_s = 1"),
        entry(
            "big",
            "query = \"select g, 'row ' || g as label from generate_series(1, 1000000) g\"\nmax_rows = 100\ninterval_s = 1",
        ),
        entry("slow", "query = \"select pg_sleep(10) as slept\"\ntimeout_ms = 1000\ninterval_s = 1"),
        entry(
            "hits",
            "query = \"select k, n, n * 1.5 as f, now() as at, null::int as nothing from hits order by k\"\nlabels = [\"k\"]\ncounters = [\"n\"]\ngauges = [\"f\"]\ninterval_s = 1",
        ),
    ]
    .concat();
    let mport = crate::harness::prometheus::free_port();
    let toml = config(dir.path(), &pg, &listener.url(), 1)
        + &format!("[metrics]\nlisten = \"127.0.0.1:{mport}\"\n")
        + &customs;
    let agent = Agent::start(dir.path(), &toml, &[]);

    // One row per database, under its name, with its own count.
    let per_db = wait_for("a row from each database", Duration::from_secs(30), || {
        let rows = records(&listener, "per_db", "row");
        let by_db: BTreeMap<String, Value> = rows
            .iter()
            .map(|d| {
                (
                    d["database"].as_str().unwrap_or("").to_string(),
                    d["columns"].clone(),
                )
            })
            .collect();
        (by_db.len() == 2).then_some(by_db)
    });
    assert_eq!(per_db["db1"], serde_json::json!({"db": "db1", "n": 3}));
    assert_eq!(per_db["db2"], serde_json::json!({"db": "db2", "n": 5}));
    // "*": every database the role may connect to (not the templates).
    let everywhere = wait_for("a row from every database", Duration::from_secs(30), || {
        let mut dbs: Vec<String> = records(&listener, "everywhere", "row")
            .iter()
            .filter_map(|d| d["columns"]["db"].as_str().map(str::to_string))
            .collect();
        dbs.sort();
        dbs.dedup();
        (dbs.len() >= 3).then_some(dbs)
    });
    assert_eq!(everywhere, ["db1", "db2", "postgres"]);

    // A million rows on the server: exactly max_rows shipped, the run says more were left.
    let big = wait_for("the big query's run", Duration::from_secs(30), || {
        records(&listener, "big", "run").into_iter().next()
    });
    assert_eq!(
        (&big["rows"], &big["truncated"]),
        (&100.into(), &true.into()),
        "{big}"
    );
    let at = big["at"].clone();
    let rows: Vec<Value> = records(&listener, "big", "row")
        .into_iter()
        .filter(|d| d["at"] == at)
        .collect();
    assert_eq!(rows.len(), 100);
    // The million rows stayed on the server: the agent's peak memory after a few runs
    // of it is its usual few tens of MB (the rows as events would be over 100 MB).
    wait_for(
        "three runs of the big query",
        Duration::from_secs(30),
        || (records(&listener, "big", "run").len() >= 3).then_some(()),
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("status");
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmHWM");
    assert!(peak_kb < 64 * 1024, "peak RSS {peak_kb} kB");
    assert_eq!(
        rows[99]["columns"],
        serde_json::json!({"g": 100, "label": "row 100"})
    );

    // The slow one: cancelled at its timeout, counted, and then waiting longer each time.
    let slow = wait_for("three timed-out runs", Duration::from_secs(60), || {
        let v = records(&listener, "slow", "run");
        (v.len() >= 3).then_some(v)
    });
    for (d, wait) in slow.iter().zip([1, 2, 4]) {
        assert_eq!(d["timed_out"], true, "{d}");
        assert!(
            d["error"]
                .as_str()
                .is_some_and(|e| e.contains("statement timeout")),
            "{d}"
        );
        assert_eq!(d["backoff_cycles"], wait, "{d}");
    }
    // Meanwhile the others kept their 1 s cadence (their runs' timestamps).
    let times: Vec<DateTime<Utc>> = records(&listener, "per_db", "run")
        .iter()
        .filter(|d| d["database"] == "db1")
        .filter_map(|d| d["at"].as_str()?.parse().ok())
        .collect();
    let mut gaps: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).num_milliseconds() as f64 / 1000.0)
        .collect();
    gaps.sort_by(f64::total_cmp);
    assert!(gaps.len() >= 5, "{gaps:?}");
    assert!(gaps[gaps.len() / 2] < 1.5, "median gap: {gaps:?}");

    // Counters: the delta after a known number of increments, per label.
    let first = wait_for("the counters seen twice", Duration::from_secs(30), || {
        records(&listener, "hits", "row")
            .into_iter()
            .find(|d| d["columns"]["k"] == "a" && d.get("deltas").is_some())
    });
    assert_eq!(first["deltas"], serde_json::json!({"n": 0.0}), "{first}");
    assert_eq!(first["columns"]["f"], 15.0);
    assert_eq!(first["columns"]["nothing"], Value::Null);
    assert!(
        first["columns"]["at"]
            .as_str()
            .is_some_and(|t| t.parse::<DateTime<Utc>>().is_ok()),
        "{first}"
    );
    let seen = records(&listener, "hits", "row").len();
    for _ in 0..7 {
        pg.sql("update hits set n = n + 1 where k = 'a'");
    }
    pg.sql("update hits set n = 5 where k = 'b'");
    let (a, b) = wait_for("the increments counted", Duration::from_secs(30), || {
        let later: Vec<Value> = records(&listener, "hits", "row")
            .into_iter()
            .skip(seen)
            .collect();
        let a = later
            .iter()
            .find(|d| d["columns"]["k"] == "a" && d["columns"]["n"] == 17)?;
        let b = later
            .iter()
            .find(|d| d["columns"]["k"] == "b" && d["columns"]["n"] == 5)?;
        Some((a.clone(), b.clone()))
    });
    assert_eq!(a["deltas"], serde_json::json!({"n": 7.0}), "{a}");
    assert_eq!(
        b["deltas"],
        serde_json::json!({"n": 5.0}),
        "a reset counts from zero: {b}"
    );
    assert_eq!(b["reset"], serde_json::json!(["n"]), "{b}");
    // The gauge and the counter on the metrics page, one series per row.
    let page = wait_for("the custom metrics", Duration::from_secs(30), || {
        let (_, body) = crate::harness::prometheus::get(mport, "/metrics")?;
        let n = crate::harness::prometheus::sample(
            &body,
            "pg_custom_hits_n{k=\"a\",datname=\"postgres\"}",
        )?;
        (n == 17.0).then_some(body)
    });
    assert!(page.contains("# TYPE pg_custom_hits_n counter"), "{page}");
    assert!(page.contains("# TYPE pg_custom_hits_f gauge"), "{page}");
    assert_eq!(
        crate::harness::prometheus::sample(&page, "pg_custom_hits_f{k=\"b\",datname=\"postgres\"}"),
        Some(7.5)
    );
    assert_eq!(page.matches("pg_custom_hits_n{").count(), 2, "{page}");
    // The failing query is a problem on the page; the others are not.
    let page = wait_for("the problem on the page", Duration::from_secs(30), || {
        let (_, body) = crate::harness::prometheus::get(mport, "/metrics")?;
        let slow = crate::harness::prometheus::sample(
            &body,
            "postgres_agent_source_problem{source=\"pg_custom.slow\"}",
        )?;
        (slow == 1.0).then_some(body)
    });
    assert_eq!(
        crate::harness::prometheus::sample(
            &page,
            "postgres_agent_source_problem{source=\"pg_custom.per_db\"}"
        ),
        Some(0.0),
        "{page}"
    );

    // The gated one never ran; status says why in one line.
    assert!(records(&listener, "newer", "run").is_empty());
    let state = wait_for("the gate in status", Duration::from_secs(30), || {
        agent.status()["children"]["pg_custom.newer"]["detail"]["source_state"]
            .as_str()
            .map(str::to_string)
    });
    assert!(
        state.contains("skipped: the server is 15") && state.contains("min_server_version 990000"),
        "{state}"
    );
    let slow = agent.status()["children"]["pg_custom.slow"]["detail"]["source_state"].clone();
    assert!(
        slow.as_str()
            .is_some_and(|s| s.starts_with("degraded") && s.contains("timed out")),
        "{slow}"
    );
    drop(agent);
}

#[test]
fn check_dry_runs_every_query_in_each_database_with_a_fix_for_each_problem() {
    let pg = PgCluster::start("");
    pg.sql("create database other");
    pg.sql("create table t (id int); insert into t values (1), (2)");
    let listener = Listener::start(TOKEN);
    let dir = tempfile::tempdir().expect("tmp");
    let customs = [
        entry(
            "fine",
            "query = \"select count(*) as n from t\"\ngauges = [\"n\"]",
        ),
        entry(
            "both",
            "query = \"select count(*) as n from t\"\ndatabases = [\"postgres\", \"other\"]",
        ),
        entry("slow", "query = \"select pg_sleep(5)\"\ntimeout_ms = 1000"),
        entry(
            "many",
            "query = \"select generate_series(1, 50) as g\"\nmax_rows = 10",
        ),
        entry(
            "cols",
            "query = \"select 'x'::text as word\"\nlabels = [\"missing\"]\ngauges = [\"word\"]",
        ),
        entry("later", "query = \"select 1\"\nmin_server_version = 990000"),
    ]
    .concat();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        config(dir.path(), &pg, &listener.url(), 60) + &customs,
    )
    .expect("write");
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(0), "{text}");
    for line in [
        "ok    custom    fine in postgres: ran read-only in ",
        "ok    custom    both in postgres: ran read-only in ",
        "FAIL  custom    both in other: ",
        "fix: fix the query for other (run it in psql as postgres), or leave other out of databases",
        "FAIL  custom    slow in postgres: ",
        "fix: it takes longer than timeout_ms = 1000: make it cheaper",
        "ok    custom    many in postgres: ran read-only in ",
        "warn  custom    many in postgres: more rows than max_rows = 10",
        "FAIL  custom    cols: labels names missing, which the query does not return (it returns word)",
        "warn  custom    cols in postgres: word is not a number",
        "fix: cast it in the query: word::float8",
        "ok    custom    later: skipped: the server is 15",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
    assert!(
        text.contains("plan cost ") && text.contains(", 1 rows now"),
        "{text}"
    );
    assert!(
        text.contains("many in postgres: ran read-only") && text.contains(", 10 rows now"),
        "{text}"
    );
}

/// The `[[custom]]` entries shipped commented out in conf/agent.toml, uncommented.
fn shipped_examples() -> String {
    let conf = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/agent.toml"))
        .expect("conf/agent.toml");
    let keys = [
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
    conf.lines()
        .skip_while(|l| *l != "# [[custom]]")
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| {
            *l == "[[custom]]" || l.split_once(" = ").is_some_and(|(k, _)| keys.contains(&k))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The examples conf/agent.toml ships run as they are: each passes `check` on a real
/// server (the I/O one skipped before 16), and the agent ships their rows.
#[test]
fn the_shipped_examples_run() {
    let pg = PgCluster::start("");
    pg.sql("create table t (id int); insert into t select generate_series(1, 10); delete from t where id <= 4; analyze t");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("custom-examples");
    let examples = shipped_examples();
    assert_eq!(examples.matches("[[custom]]").count(), 4, "{examples}");
    let toml = config(dir.path(), &pg, &listener.url(), 1) + &examples;
    let path = dir.path().join("check.toml");
    std::fs::write(&path, &toml).expect("write");
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("check");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    for name in [
        "dead_tuples in postgres",
        "open_transactions in postgres",
        "slot_retained in postgres",
    ] {
        assert!(
            text.contains(&format!("ok    custom    {name}: ran read-only")),
            "{name}\n{text}"
        );
    }
    assert!(
        text.contains("ok    custom    io: skipped: the server is 15"),
        "{text}"
    );
    assert!(
        !text.contains("FAIL  custom") && !text.contains("warn  custom"),
        "{text}"
    );
    // `once` runs them too, among the other sources.
    let events = crate::harness::agent::once(&path);
    let once_row = events
        .iter()
        .find(|e| {
            e["kind"] == "pg_custom"
                && e["data"]["name"] == "dead_tuples"
                && e["data"]["columns"]["tbl"] == "public.t"
        })
        .unwrap_or_else(|| panic!("no dead_tuples row from once: {events:?}"));
    assert_eq!(once_row["data"]["columns"]["dead"], 4, "{once_row}");
    let agent = Agent::start(dir.path(), &toml, &[]);
    let row = wait_for("a dead_tuples row", Duration::from_secs(30), || {
        records(&listener, "dead_tuples", "row")
            .into_iter()
            .find(|d| d["columns"]["tbl"] == "public.t")
    });
    assert_eq!(row["columns"]["dead"], 4, "{row}");
    assert_eq!(row["columns"]["live"], 6, "{row}");
    assert_eq!(row["columns"]["dead_pct"], 40.0, "{row}");
    drop(agent);
}

/// Three databases on every version 12–18: a query gated to 15+ runs only there, a
/// per-database query returns each database's rows under its name.
#[test]
fn every_version_gates_and_runs_per_database() {
    for major in 12..=18 {
        let pg = PgCluster::start_with(&crate::harness::pg::bin_of(major), "");
        for db in ["one", "two"] {
            pg.sql(&format!("create database {db}"));
        }
        let listener = Listener::start(TOKEN);
        let dir = shared_tempdir("custom-versions");
        let customs = [
            entry(
                "whoami",
                "query = \"select current_database()::text as db, current_setting('server_version_num')::int as v\"\ndatabases = \"*\"\ninterval_s = 1",
            ),
            entry(
                "since15",
                "query = \"select 1 as one\"\nmin_server_version = 150000\ninterval_s = 1",
            ),
        ]
        .concat();
        let toml = config(dir.path(), &pg, &listener.url(), 1) + &customs;
        let agent = Agent::start(dir.path(), &toml, &[]);
        let dbs = wait_for(
            &format!("{major}: a row from each database"),
            Duration::from_secs(30),
            || {
                let rows = records(&listener, "whoami", "row");
                let mut dbs: Vec<(String, String)> = rows
                    .iter()
                    .map(|d| {
                        (
                            d["database"].as_str().unwrap_or("").to_string(),
                            d["columns"]["db"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect();
                dbs.sort();
                dbs.dedup();
                (dbs.len() >= 3).then_some(dbs)
            },
        );
        let names = |s: &str| (s.to_string(), s.to_string());
        assert_eq!(
            dbs,
            [names("one"), names("postgres"), names("two")],
            "{major}"
        );
        let v = records(&listener, "whoami", "row")[0]["columns"]["v"]
            .as_i64()
            .unwrap_or(0);
        assert_eq!(v / 10_000, i64::from(major), "{major}");
        // Two more cycles of the per-database query: the gated one has had its chances.
        let n = records(&listener, "whoami", "run").len();
        wait_for(
            &format!("{major}: more cycles"),
            Duration::from_secs(30),
            || (records(&listener, "whoami", "run").len() >= n + 6).then_some(()),
        );
        let ran = records(&listener, "since15", "run");
        if major >= 15 {
            assert!(!ran.is_empty(), "{major}");
            assert_eq!(records(&listener, "since15", "row")[0]["columns"]["one"], 1);
        } else {
            assert_eq!(ran, Vec::<Value>::new(), "{major}: gated");
        }
        drop(agent);
    }
}

/// A `SQL_ASCII` database whose text is not UTF-8: the value arrives read lossily and
/// flagged, and the rest of the row as it is.
#[test]
fn text_that_is_not_utf8_arrives_lossily_and_flagged() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let pg = PgCluster::start("");
    pg.sql(
        "create database latin encoding 'SQL_ASCII' template template0 lc_collate 'C' lc_ctype 'C'",
    );
    crate::harness::pg::run(
        pg.psql()
            .args(["-d", "latin", "-c"])
            .arg(OsStr::from_bytes(b"create table \"caf\xe9\" (a int)")),
        "the table",
    );
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("custom-latin");
    let toml = config(dir.path(), &pg, &listener.url(), 1)
        + &entry(
            "names",
            "query = \"select relname::text as name, 42 as n from pg_class where relname like 'caf%'\"\ndatabases = [\"latin\"]\ninterval_s = 1",
        );
    let agent = Agent::start(dir.path(), &toml, &[]);
    let row = wait_for("the row", Duration::from_secs(30), || {
        records(&listener, "names", "row").into_iter().next()
    });
    assert_eq!(
        row["columns"],
        serde_json::json!({"name": "caf\u{fffd}", "n": 42}),
        "{row}"
    );
    assert_eq!(row["not_utf8"], serde_json::json!(["name"]), "{row}");
    drop(agent);
}

/// A reload adds, changes and removes queries: only the changed one's child restarts,
/// the new one starts, the removed one stops; a query that could write is refused and
/// the running ones go on.
#[test]
fn a_reload_adds_changes_and_removes_queries_one_child_each() {
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("custom-reload");
    let base = config(dir.path(), &pg, &listener.url(), 1);
    let kept = entry("kept", "query = \"select 1 as one\"\ninterval_s = 1");
    let changed = entry("changed", "query = \"select 1 as v\"\ninterval_s = 1");
    let agent = Agent::start(dir.path(), &(base.clone() + &kept + &changed), &[]);
    wait_for("both running", Duration::from_secs(30), || {
        (!records(&listener, "kept", "row").is_empty()
            && !records(&listener, "changed", "row").is_empty())
        .then_some(())
    });
    let added = entry("added", "query = \"select 3 as three\"\ninterval_s = 1");
    let changed2 = entry("changed", "query = \"select 2 as v\"\ninterval_s = 1");
    std::fs::write(
        &agent.config_path,
        base.clone() + &kept + &changed2 + &added,
    )
    .expect("rewrite");
    agent.signal(libc::SIGHUP);
    let applied = agent.wait_log("reload_applied", Duration::from_secs(10), |_| true);
    let restarted = applied["restarted"].as_str().unwrap_or("").to_string();
    assert!(restarted.contains("pg_custom.changed"), "{applied}");
    assert!(!restarted.contains("pg_custom.kept"), "{applied}");
    wait_for(
        "the change and the new one",
        Duration::from_secs(30),
        || {
            let v2 = records(&listener, "changed", "row")
                .iter()
                .any(|d| d["columns"]["v"] == 2);
            (v2 && !records(&listener, "added", "row").is_empty()).then_some(())
        },
    );
    // Removed: its child stops, no more rows.
    std::fs::write(&agent.config_path, base.clone() + &kept).expect("rewrite");
    agent.signal(libc::SIGHUP);
    wait_for("the second reload applied", Duration::from_secs(10), || {
        (agent.logs_named("reload_applied").len() == 2).then_some(())
    });
    let status = agent.status();
    assert_eq!(
        status["children"]["pg_custom.added"]["state"], "stopped",
        "{status}"
    );
    assert_ne!(
        status["children"]["pg_custom.kept"]["state"], "stopped",
        "{status}"
    );
    // Refused: the agent keeps what it runs.
    std::fs::write(
        &agent.config_path,
        base + &kept + &entry("bad", "query = \"delete from t\""),
    )
    .expect("rewrite");
    agent.signal(libc::SIGHUP);
    let rejected = agent.wait_log("reload_rejected", Duration::from_secs(10), |_| true);
    assert!(
        rejected["error"]
            .as_str()
            .is_some_and(|e| e.contains("custom.bad.query: refused: DELETE")),
        "{rejected}"
    );
    let n = records(&listener, "kept", "row").len();
    wait_for("kept goes on", Duration::from_secs(30), || {
        (records(&listener, "kept", "row").len() >= n + 2).then_some(())
    });
    drop(agent);
}

/// A counter's last values are kept in the spool with the events: after a restart, the
/// first run's delta covers what happened while the agent was down.
#[test]
fn counter_deltas_continue_across_a_restart() {
    let pg = PgCluster::start("");
    pg.sql("create table hits (k text, n bigint); insert into hits values ('a', 10)");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("custom-restart");
    let toml = config(dir.path(), &pg, &listener.url(), 1)
        + &entry(
            "hits",
            "query = \"select k, n from hits\"\nlabels = [\"k\"]\ncounters = [\"n\"]\ninterval_s = 1",
        );
    let agent = Agent::start(dir.path(), &toml, &[]);
    wait_for("a delta", Duration::from_secs(30), || {
        records(&listener, "hits", "row")
            .into_iter()
            .find(|d| d.get("deltas").is_some())
    });
    drop(agent);
    let before = records(&listener, "hits", "row").len();
    pg.sql("update hits set n = n + 5");
    let agent = Agent::start(dir.path(), &toml, &[]);
    let first = wait_for(
        "the first row after the restart",
        Duration::from_secs(30),
        || {
            // Rows the first run shipped without seeing an acknowledgement may come again.
            records(&listener, "hits", "row")
                .into_iter()
                .skip(before)
                .find(|d| d["columns"]["n"] == 15)
        },
    );
    assert_eq!(first["columns"]["n"], 15, "{first}");
    assert_eq!(first["deltas"], serde_json::json!({"n": 5.0}), "{first}");
    drop(agent);
}
