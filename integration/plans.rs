//! Plans from auto_explain: a slow request's statement arrives at the listener with the
//! plan the server ran, read from the log, under the request's id and the statement's
//! query id; the other log formats of the same run give the same plan.

use std::time::Duration;

use serde_json::Value;

use crate::harness::agent::{config, Agent, TOKEN};
use crate::harness::listener::Listener;
use crate::harness::pg::{major_version, run, PgCluster};
use crate::harness::{shared_tempdir, wait_for};
use crate::logs::{check, check_logs, files, parse_log, LOG_CONF};

const REQ: &str = "5a3c0d2e-5a8b-4c1f-9e2d-3b4a5c6d7e11";
const FORGER: &str = "6b4d1e3f-6a9c-4d2a-8f3e-4c5b6d7e8f22";
/// A client's dollar-quoted string with a non-ASCII tag, holding what looks like a plan's
/// top node: PostgreSQL reads it as a string, so must the agent.
const FORGED: &str = "select $é$\nSeq Scan on forged_table  (cost=0.00..1.00 rows=1 width=4)\n$é$ \
                      as forged, count(*) from small";
const QUERY: &str = "select b.grp, count(*) from big b join small s on s.id = b.grp \
                     where s.name like 'n1%' group by b.grp order by b.grp";

/// The server's `EXPLAIN (FORMAT JSON)` keys, and the agent's for the same things.
const SERVER: [&str; 5] = [
    "Node Type",
    "Plan Rows",
    "Actual Rows",
    "Actual Loops",
    "Plans",
];
const AGENT: [&str; 5] = [
    "node_type",
    "plan_rows",
    "actual_rows",
    "actual_loops",
    "plans",
];

/// Node type, estimated rows, actual rows and loops of every node, depth first, read
/// with `keys` (one of the two above).
fn tree(n: &Value, keys: [&str; 5]) -> Vec<(String, f64, f64, f64)> {
    let f = |k: &str| n[k].as_f64().unwrap_or(-1.0);
    let mut out = vec![(
        n[keys[0]].as_str().unwrap_or("").to_string(),
        f(keys[1]),
        f(keys[2]),
        f(keys[3]),
    )];
    for c in n[keys[4]].as_array().into_iter().flatten() {
        out.extend(tree(c, keys));
    }
    out
}

#[test]
fn a_slow_request_arrives_with_the_plan_explain_analyze_shows() {
    let major = major_version();
    let json = major >= 15;
    let dest = if json {
        "stderr,csvlog,jsonlog"
    } else {
        "stderr,csvlog"
    };
    // %Q (PostgreSQL 14+) puts the query id into the stderr prefix too.
    let (query_id_conf, q) = if major >= 14 {
        ("compute_query_id = on\n", "%Q ")
    } else {
        ("", "")
    };
    let pg = PgCluster::start(&format!(
        "shared_preload_libraries = 'auto_explain,pg_stat_statements'\n{query_id_conf}\
         logging_collector = on\nlog_destination = '{dest}'\nlog_directory = 'log'\n\
         log_filename = 'postgresql.log'\nlog_rotation_age = 0\nlog_rotation_size = 0\n\
         log_line_prefix = '%m [%p] %q%u@%d %a {q}'\nlc_messages = 'C'\nlog_timezone = 'UTC'\n\
         auto_explain.log_analyze = on\nauto_explain.log_buffers = on\n"
    ));
    pg.sql("create extension pg_stat_statements");
    pg.sql(
        "create table small (id int primary key, name text); \
         insert into small select g, 'n' || g from generate_series(1, 100) g; \
         create table big as select g as id, g % 100 as grp from generate_series(1, 20000) g; \
         analyze small; analyze big",
    );
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let toml = config(dir.path(), &pg, &listener.url(), 1).replace(
        "logs = false\n",
        "logs = true\nactivity = false\n[logs]\nformat = \"stderr\"\nstart_at = \"beginning\"\n",
    );
    let agent = Agent::start(dir.path(), &toml, &[]);

    // The request: its plans logged (only in its own session), as text and as JSON.
    run(
        pg.psql()
            .args(["-c", "set auto_explain.log_min_duration = 0", "-c", QUERY])
            .args(["-c", "set auto_explain.log_format = json", "-c", QUERY])
            .env("PGAPPNAME", format!("bitville-{REQ}")),
        "the request",
    );
    run(
        pg.psql()
            .args(["-c", "set auto_explain.log_min_duration = 0", "-c", FORGED])
            .env("PGAPPNAME", format!("bitville-{FORGER}")),
        "the forger",
    );
    // What the server says it ran, from another session (which logs no plan).
    let explained: Value =
        serde_json::from_str(&pg.sql(&format!("explain (analyze, format json) {QUERY}")))
            .expect("explain json");
    let expected = tree(&explained[0]["Plan"], SERVER);
    assert!(expected.len() >= 3, "{expected:?}");

    let plans = wait_for(
        "both plans at the listener",
        Duration::from_secs(30),
        || {
            let v: Vec<Value> = listener
                .events_of("pg_log")
                .into_iter()
                .map(|e| e["data"].clone())
                .filter(|d| d["correlation_id"] == REQ && d.get("plan").is_some())
                .collect();
            (v.len() >= 2).then_some(v)
        },
    );
    assert_eq!(plans.len(), 2, "{plans:#?}");
    let query_id = (major >= 14).then(|| {
        pg.sql("select queryid from pg_stat_statements where query like 'select b.grp, count(*)%'")
    });
    for (d, format) in plans.iter().zip(["text", "json"]) {
        let p = &d["plan"];
        assert_eq!(p["format"], format, "{d}");
        assert_eq!(d["class"], "slow_query");
        assert_eq!(d["statement"], QUERY);
        assert_eq!(
            d["query_fingerprint"].as_str(),
            postgres_agent::fingerprint::fingerprint(QUERY).as_deref()
        );
        match &query_id {
            Some(id) => assert_eq!(&d["query_id"].to_string(), id, "{d}"),
            None => assert_eq!(d["query_id"], Value::Null),
        }
        assert_eq!(p["analyzed"], true);
        assert_eq!(tree(&p["root"], AGENT), expected, "{format}: {p:#}");
        assert_eq!(p["nodes"], expected.len());
        let total = p["total_time_ms"].as_f64().expect("total time");
        assert!(total > 0.0 && total <= d["duration_ms"].as_f64().expect("duration"));
        assert!(p["root"]["buffers"]["shared_hit"].as_u64().is_some(), "{p}");
        assert!(p["slowest_node"]["node_id"].as_u64().is_some());
        // The scan of big reads all of it.
        let big = p["seq_scans"]
            .as_array()
            .expect("seq scans")
            .iter()
            .find(|s| s["relation"] == "big")
            .unwrap_or_else(|| panic!("no scan of big: {p}"));
        assert_eq!(
            big["actual_rows"].as_f64().unwrap_or(0.0)
                + big["rows_removed_by_filter"].as_f64().unwrap_or(0.0),
            20_000.0
        );
    }
    let forged = wait_for("the forger's plan", Duration::from_secs(30), || {
        listener
            .events_of("pg_log")
            .into_iter()
            .map(|e| e["data"].clone())
            .find(|d| d["correlation_id"] == FORGER && d.get("plan").is_some())
    });
    let p = &forged["plan"];
    assert_eq!(forged["statement"], FORGED, "{forged:#}");
    assert_eq!(
        forged["query_fingerprint"].as_str(),
        postgres_agent::fingerprint::fingerprint(FORGED).as_deref()
    );
    assert_eq!(p.get("ambiguous"), None, "{p:#}");
    assert_eq!(p["root"]["node_type"], "Aggregate", "{p:#}");
    assert_eq!(p["root"]["plans"][0]["relation"], "small", "{p:#}");
    assert!(!p.to_string().contains("forged_table"), "{p:#}");
    drop(agent);

    // csvlog (and jsonlog) of the same run: the same plans, to the byte.
    let log_dir = pg.data().join("log");
    let mut others = vec![("csvlog", "csv")];
    if json {
        others.push(("jsonlog", "json"));
    }
    for (format, ext) in others {
        let events = wait_for("plans in the other log", Duration::from_secs(10), || {
            let v: Vec<Value> = parse_log(&["--format", format], &files(&log_dir, ext))
                .into_iter()
                .filter(|d| d["correlation_id"] == REQ && d.get("plan").is_some())
                .collect();
            (v.len() == 2).then_some(v)
        });
        for (theirs, ours) in events.iter().zip(&plans) {
            for key in ["plan", "statement", "query_id", "duration_ms", "message"] {
                assert_eq!(theirs[key], ours[key], "{format}: {key}");
            }
        }
    }
}

#[test]
fn checks_fixes_share_one_preload_line_that_keeps_every_library() {
    // Statements and plans both wanted, neither loaded: the two fixes print the same
    // whole line, so pasting either keeps the other's library.
    let pg = PgCluster::start(&format!(
        "{LOG_CONF}log_destination = 'csvlog'\nlog_directory = 'log'\n"
    ));
    pg.sql("create extension pg_stat_statements");
    let listener = Listener::start(crate::harness::agent::TOKEN);
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        config(dir.path(), &pg, &listener.url(), 60)
            .replace("logs = false\n", "logs = true\n")
            .replace("statements = false", "statements = true"),
    )
    .expect("write");
    let (code, out) = crate::logs::check(&path);
    assert_eq!(code, 69, "{out}");
    let line = "shared_preload_libraries = 'pg_stat_statements,auto_explain'";
    assert_eq!(out.matches(line).count(), 2, "{out}");
    assert!(
        out.contains(&format!(
            "fix: in postgresql.conf: {line}, then restart the server"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "fix: in postgresql.conf, then restart the server:\n      {line}\n"
        )),
        "{out}"
    );
}

#[test]
fn check_says_whether_plans_are_logged_and_the_lines_that_turn_them_on() {
    let mut pg = PgCluster::start(&format!(
        "{LOG_CONF}log_destination = 'csvlog'\nlog_directory = 'log'\n"
    ));
    let (code, out) = check_logs(&pg);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "warn  plans     auto_explain is not loaded: slow statements arrive without their plan\n      \
             fix: in postgresql.conf, then restart the server:\n      shared_preload_libraries = 'auto_explain'\n      \
             auto_explain.log_min_duration = '1s'"
        ),
        "{out}"
    );
    for line in [
        "auto_explain.log_format = 'json'",
        "auto_explain.log_analyze = on",
        "auto_explain.log_timing = off",
        "auto_explain.sample_rate = 0.1",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    pg.stop_server();
    pg.append_conf(
        "shared_preload_libraries = 'auto_explain'\nauto_explain.log_min_duration = '250ms'\n\
         auto_explain.log_format = 'json'\nauto_explain.log_analyze = on\nauto_explain.log_timing = off\n",
    );
    pg.start_server();
    let (code, out) = check_logs(&pg);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "ok    plans     auto_explain logs the plans of statements slower than 250 ms (json, log_analyze on, log_timing off, sample_rate 1)"
        ),
        "{out}"
    );
    assert!(!out.contains("warn  plans     auto_explain"), "{out}");
    assert!(
        out.contains(
            "warn  plans     plans come from auto_explain only: a statement slow in aggregate"
        ) && out.contains("fix: [collection] statements = true and plans = true"),
        "{out}"
    );
    // With pg_plans on too: both, and a word on the agent's superuser role.
    let listener = Listener::start(TOKEN);
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        config(dir.path(), &pg, &listener.url(), 60)
            .replace("logs = false\n", "logs = true\n")
            .replace("statements = false", "statements = true")
            .replace("plans = false", "plans = true"),
    )
    .expect("write");
    let (_, out) = check(&path);
    assert!(
        out.contains("ok    plans     plans come from both: the agent's generic plans"),
        "{out}"
    );
    assert!(
        out.contains("postgres is a superuser: if applications or jobs run as postgres, their statements are not planned")
            && out.contains("fix: give the agent a role of its own"),
        "{out}"
    );
    // Text plans and analyze timing everything: both said.
    pg.append_conf("auto_explain.log_format = 'text'\nauto_explain.log_timing = on\n");
    pg.sql("select pg_reload_conf()");
    let out = wait_for("reloaded settings", Duration::from_secs(10), || {
        let (_, out) = check_logs(&pg);
        out.contains("(text, log_analyze on, log_timing on")
            .then_some(out)
    });
    assert!(
        out.contains("warn  plans     auto_explain.log_format = text: a plan whose statement")
            && out.contains("fix: auto_explain.log_format = 'json'")
            && out.contains("warn  plans     log_analyze with log_timing on and sample_rate 1"),
        "{out}"
    );
}
