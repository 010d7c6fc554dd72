//! The `pg_statements` source: exact deltas, resets, a baseline that survives restarts,
//! and a missing or broken extension that costs nothing but a clear warning.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::harness::agent::{config, Agent, TOKEN};
use crate::harness::listener::Listener;
use crate::harness::pg::PgCluster;
use crate::harness::{shared_tempdir, wait_for};

const PRELOAD: &str = "shared_preload_libraries = 'pg_stat_statements'\n";
const MARKER: &str = "select count(*) from marker_t where x = $1";

fn statements_config(dir: &std::path::Path, pg: &PgCluster, url: &str) -> String {
    config(dir, pg, url, 1)
        .replace("statements = false", "statements = true")
        .replace("[collection]\n", "[collection]\nactivity = false\n")
}

fn run_marker(pg: &PgCluster, n: usize) {
    let sql: Vec<String> = (1..=n)
        .map(|i| format!("select count(*) from marker_t where x = {i}"))
        .collect();
    pg.sql(&sql.join("; "));
}

fn summaries(l: &Listener) -> Vec<Value> {
    l.events_of("pg_statements")
        .into_iter()
        .filter(|e| e["data"]["type"] == "summary")
        .collect()
}

fn marker_events(l: &Listener) -> Vec<Value> {
    l.events_of("pg_statements")
        .into_iter()
        .filter(|e| e["data"]["type"] == "statement" && e["data"]["query"] == MARKER)
        .collect()
}

fn sum(events: &[Value], field: &str) -> i64 {
    events
        .iter()
        .map(|e| e["data"][field].as_i64().expect(field))
        .sum()
}

fn prepared(pg: &PgCluster) {
    pg.sql("create extension pg_stat_statements; create table marker_t (x int); insert into marker_t select generate_series(1, 10)");
    // Thirty more entries that stay quiet while the test runs.
    let quiet: Vec<String> = (0..30)
        .map(|i| format!("create table q{i} (a int); select * from q{i}"))
        .collect();
    pg.sql(&quiet.join("; "));
}

#[test]
fn a_statement_run_n_times_shows_calls_n_and_a_reset_never_goes_negative() {
    let pg = PgCluster::start(PRELOAD);
    prepared(&pg);
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let agent = Agent::start(
        dir.path(),
        &statements_config(dir.path(), &pg, &listener.url()),
        &[],
    );
    let first = wait_for("the baseline sample", Duration::from_secs(20), || {
        summaries(&listener).into_iter().next()
    });
    assert_eq!(first["data"]["available"], true);
    assert_eq!(first["data"]["baseline"], true);
    assert!(first["data"]["extension_version"].as_str().is_some());

    run_marker(&pg, 7);
    let got = wait_for("7 calls of the marker", Duration::from_secs(20), || {
        let e = marker_events(&listener);
        (sum(&e, "calls") >= 7).then_some(e)
    });
    // Two more samples: nothing more arrives for the marker.
    let n = summaries(&listener).len();
    wait_for("two more samples", Duration::from_secs(10), || {
        (summaries(&listener).len() >= n + 2).then_some(())
    });
    let all = marker_events(&listener);
    assert_eq!(all.len(), got.len());
    // The agent's fingerprint of the normalized text equals that of the statement as
    // the session ran it, with its constant: the join key to activity and log events.
    let ran = postgres_agent::fingerprint::fingerprint("select count(*) from marker_t where x = 7");
    assert!(ran.is_some());
    for e in &all {
        assert_eq!(
            e["data"]["query_fingerprint"].as_str(),
            ran.as_deref(),
            "{e}"
        );
    }
    // Quiet cycles read only the entries that changed (the agent's own few), not all.
    let quiet: Vec<(u64, u64)> = summaries(&listener)
        .iter()
        .skip(1)
        .map(|s| {
            (
                s["data"]["rows_read"].as_u64().unwrap_or(0),
                s["data"]["entries"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert!(
        quiet
            .iter()
            .any(|(read, entries)| *entries >= 60 && read * 5 < *entries),
        "(rows_read, entries) per sample: {quiet:?}"
    );
    assert_eq!(sum(&all, "calls"), 7);
    assert_eq!(sum(&all, "rows"), 7);
    for e in &all {
        let d = &e["data"];
        assert!(d["calls"].as_i64() > Some(0));
        assert_eq!(d["datname"], "postgres");
        assert_eq!(d["usename"], "postgres");
        assert_eq!(d["toplevel"], true);
        let mean =
            d["total_exec_time_ms"].as_f64().expect("total") / d["calls"].as_f64().expect("calls");
        assert!(
            (d["mean_exec_time_ms"].as_f64().expect("mean") - mean).abs() < 0.002,
            "{d}"
        );
        assert!(d["shared_blks_hit"].as_i64() >= Some(0));
    }

    // Reset mid-run: detected, flagged, and never a negative delta. From 1.9 on the
    // summary says so (stats_reset changed); before, the marker's counters went back.
    let has_info = first["data"]["extension_version"]
        .as_str()
        .and_then(|v| v.split_once('.'))
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .is_some_and(|v| v >= (1, 9));
    pg.sql("select pg_stat_statements_reset()");
    run_marker(&pg, 3);
    let after = wait_for("3 calls after the reset", Duration::from_secs(20), || {
        let e = marker_events(&listener);
        (sum(&e, "calls") >= 10).then_some(e)
    });
    assert_eq!(sum(&after, "calls"), 10);
    let last = after.last().expect("post-reset event");
    if has_info {
        assert!(
            summaries(&listener)
                .iter()
                .any(|s| s["data"]["reset_detected"] == true),
            "stats_reset change not flagged"
        );
        assert_eq!(last["data"]["counters_reset"], false);
    } else {
        assert_eq!(last["data"]["counters_reset"], true, "{last}");
    }
    for e in listener.events_of("pg_statements") {
        let d = &e["data"];
        if d["type"] != "statement" {
            continue;
        }
        for (k, v) in d.as_object().expect("object") {
            if let Some(x) = v.as_f64() {
                assert!(x >= 0.0, "negative {k} in {d}");
            }
        }
        let calls = d["calls"].as_i64().expect("calls");
        assert!((1..1000).contains(&calls), "huge delta: {d}");
    }
    drop(agent);
}

#[test]
fn the_baseline_survives_a_restart() {
    let pg = PgCluster::start(PRELOAD);
    prepared(&pg);
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let toml = statements_config(dir.path(), &pg, &listener.url());
    let mut agent = Agent::start(dir.path(), &toml, &[]);
    wait_for("the baseline", Duration::from_secs(20), || {
        summaries(&listener).into_iter().next()
    });
    agent.signal(libc::SIGTERM);
    assert_eq!(
        agent
            .wait_exit(Duration::from_secs(10))
            .and_then(|s| s.code()),
        Some(0)
    );
    let before = summaries(&listener).len();

    run_marker(&pg, 5);
    let _agent = Agent::start(dir.path(), &toml, &[]);
    let first = wait_for(
        "first sample after the restart",
        Duration::from_secs(20),
        || summaries(&listener).get(before).cloned(),
    );
    assert_eq!(first["data"]["baseline"], false, "{first}");
    let e = wait_for("the marker", Duration::from_secs(10), || {
        let e = marker_events(&listener);
        (!e.is_empty()).then_some(e)
    });
    assert_eq!(
        e[0]["collected_at"], first["collected_at"],
        "in the first sample"
    );
    assert_eq!(sum(&e, "calls"), 5);
}

#[test]
fn missing_extension_is_reported_with_its_fix_and_picked_up_later() {
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let agent = Agent::start(
        dir.path(),
        &statements_config(dir.path(), &pg, &listener.url()),
        &[],
    );
    let s = wait_for("an unavailable summary", Duration::from_secs(20), || {
        summaries(&listener).into_iter().next()
    });
    assert_eq!(s["data"]["available"], false);
    assert_eq!(
        s["data"]["reason"],
        "extension pg_stat_statements is not installed in database postgres"
    );
    assert!(s["data"]["fix"]
        .as_str()
        .is_some_and(|f| f.starts_with("CREATE EXTENSION pg_stat_statements;")));
    let w = agent.wait_log("source_state_changed", Duration::from_secs(5), |_| true);
    assert!(w["state"].as_str().is_some_and(
        |s| s.starts_with("unavailable: extension pg_stat_statements is not installed")
    ));

    // Installed, but the library is not preloaded: a different reason, a different fix.
    pg.sql("create extension pg_stat_statements");
    let s = wait_for("the preload problem", Duration::from_secs(20), || {
        summaries(&listener).into_iter().find(|s| {
            s["data"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("shared_preload_libraries"))
        })
    });
    assert_eq!(s["data"]["available"], false);
    assert!(s["data"]["fix"]
        .as_str()
        .is_some_and(|f| f.contains("shared_preload_libraries")));
    // No cycle of the source failed: an unavailable extension is not an error.
    assert!(agent.logs_named("collect_cycle_failed").is_empty());
    // One warning per change of state, not one per cycle.
    assert_eq!(agent.logs_named("source_state_changed").len(), 2);
}

#[test]
fn dropping_the_extension_mid_run_leaves_the_other_sources_on_schedule() {
    let pg = PgCluster::start(PRELOAD);
    prepared(&pg);
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let toml = statements_config(dir.path(), &pg, &listener.url())
        .replace("activity = false\n", "")
        .replace("system = false", "system = true");
    let agent = Agent::start(dir.path(), &toml, &[]);
    wait_for("statements available", Duration::from_secs(20), || {
        summaries(&listener)
            .into_iter()
            .find(|s| s["data"]["available"] == true)
    });
    pg.sql("drop extension pg_stat_statements");
    let gone = wait_for("statements unavailable", Duration::from_secs(20), || {
        summaries(&listener)
            .into_iter()
            .find(|s| s["data"]["available"] == false)
    });
    let gone_at = collected_at(&gone);
    // The other sources go on producing after the extension is gone: three more
    // samples each, every cycle of theirs successful, none skipped, nothing restarted.
    let after = |kind: &str| {
        listener
            .events_of(kind)
            .iter()
            .map(collected_at)
            .filter(|t| *t > gone_at)
            .collect::<BTreeSet<_>>()
            .len()
    };
    wait_for(
        "three more samples of each",
        Duration::from_secs(30),
        || (after("system") >= 3 && after("pg_activity") >= 3).then_some(()),
    );
    for name in [
        "collect_cycle_failed",
        "collect_cycle_skipped",
        "child_down",
    ] {
        let seen = agent.logs_named(name);
        assert!(seen.is_empty(), "{name}: {seen:?}");
    }
}

fn collected_at(e: &serde_json::Value) -> chrono::DateTime<chrono::Utc> {
    e["collected_at"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("collected_at")
}

#[test]
fn once_never_writes_the_daemons_baseline() {
    let pg = PgCluster::start(PRELOAD);
    prepared(&pg);
    let dir = shared_tempdir("pgagent-it");
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        statements_config(dir.path(), &pg, "http://127.0.0.1:9/x"),
    )
    .expect("write");
    for _ in 0..2 {
        let summary = crate::harness::agent::once(&path)
            .into_iter()
            .find(|e| e["data"]["type"] == "summary")
            .expect("summary");
        // No daemon's baseline in a spool, so each run only sets one.
        assert_eq!(summary["data"]["baseline"], true);
        assert_eq!(summary["data"]["available"], true);
    }
    // Nothing was spooled: no spool, so no baseline checkpoint either.
    assert!(!dir.path().join("state").join("spool.db").exists());
}

#[test]
fn an_extension_created_later_is_picked_up_without_a_restart() {
    let pg = PgCluster::start(PRELOAD);
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let agent = Agent::start(
        dir.path(),
        &statements_config(dir.path(), &pg, &listener.url()),
        &[],
    );
    wait_for("unavailable", Duration::from_secs(20), || {
        summaries(&listener)
            .into_iter()
            .find(|s| s["data"]["available"] == false)
    });
    pg.sql("create extension pg_stat_statements");
    let s = wait_for("available", Duration::from_secs(20), || {
        summaries(&listener)
            .into_iter()
            .find(|s| s["data"]["available"] == true)
    });
    assert_eq!(s["data"]["baseline"], true);
    let states: Vec<String> = agent
        .logs_named("source_state_changed")
        .iter()
        .filter_map(|r| r["state"].as_str().map(String::from))
        .collect();
    assert!(
        states[0].starts_with("unavailable: extension pg_stat_statements is not installed"),
        "{states:?}"
    );
    assert!(states[1].starts_with("baseline: "), "{states:?}");
    assert_eq!(
        agent.logs_named("child_down").len(),
        0,
        "no restart was needed"
    );
}

#[test]
fn kill_9_neither_loses_nor_repeats_an_interval() {
    let pg = PgCluster::start(PRELOAD);
    prepared(&pg);
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let toml = statements_config(dir.path(), &pg, &listener.url());
    let mut agent = Agent::start(dir.path(), &toml, &[]);
    wait_for("the baseline", Duration::from_secs(20), || {
        summaries(&listener).into_iter().next()
    });
    run_marker(&pg, 4);
    wait_for("4 calls", Duration::from_secs(20), || {
        (sum(&marker_events(&listener), "calls") >= 4).then_some(())
    });
    agent.signal(libc::SIGKILL);
    agent.wait_exit(Duration::from_secs(5)).expect("killed");
    run_marker(&pg, 3);
    let _agent = Agent::start(dir.path(), &toml, &[]);
    wait_for("7 calls in all", Duration::from_secs(20), || {
        (sum(&marker_events(&listener), "calls") >= 7).then_some(())
    });
    let n = summaries(&listener).len();
    wait_for("two more samples", Duration::from_secs(10), || {
        (summaries(&listener).len() >= n + 2).then_some(())
    });
    // Duplicated batches (sent, not yet acknowledged at the kill) carry the same event
    // ids: count each event once, as the listener would.
    let mut seen = BTreeSet::new();
    let unique: Vec<Value> = marker_events(&listener)
        .into_iter()
        .filter(|e| seen.insert(e["id"].as_str().unwrap_or_default().to_string()))
        .collect();
    assert_eq!(sum(&unique, "calls"), 7, "{unique:?}");
}

/// A cycle whose query texts and names cannot be read (after its deltas were taken
/// against the baseline) ships its counts without them: nothing is lost, the summary
/// and the source's state say why, and the text comes with a later delta.
#[test]
fn a_cycle_that_cannot_read_texts_or_names_still_ships_its_counts() {
    let pg = PgCluster::start(PRELOAD);
    prepared(&pg);
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("stmt-names");
    let faults = dir.path().join("faults");
    std::fs::create_dir_all(&faults).expect("faults dir");
    let agent = Agent::start(
        dir.path(),
        &statements_config(dir.path(), &pg, &listener.url()),
        &[("POSTGRES_AGENT_FAULT_DIR", faults.to_str().expect("utf8"))],
    );
    wait_for("the baseline", Duration::from_secs(30), || {
        summaries(&listener)
            .iter()
            .any(|s| s["data"]["baseline"] == true)
            .then_some(())
    });
    let fault = faults.join("pg_statements_names");
    std::fs::write(&fault, "fail").expect("fault");
    run_marker(&pg, 7);
    let queryid = pg.sql(&format!(
        "select queryid from pg_stat_statements where query = '{MARKER}'"
    ));
    assert!(!queryid.is_empty());
    let of_marker = || -> Vec<Value> {
        listener
            .events_of("pg_statements")
            .into_iter()
            .filter(|e| e["data"]["type"] == "statement" && e["data"]["queryid"] == queryid)
            .collect()
    };
    let first = wait_for("the marker's 7 calls", Duration::from_secs(30), || {
        let ev = of_marker();
        (sum(&ev, "calls") == 7).then_some(ev)
    });
    for e in &first {
        assert!(e["data"]["query"].is_null(), "{e}");
    }
    let said = summaries(&listener)
        .into_iter()
        .filter(|s| {
            s["data"]["names_error"]
                .as_str()
                .is_some_and(|m| m.contains("fault injection: texts and names unreadable"))
        })
        .count();
    assert!(said >= 1, "no summary said why");
    // Status (from the supervisor's pings) says so while it lasts.
    wait_for(
        "the degraded state in status",
        Duration::from_secs(30),
        || {
            let state =
                agent.status()["children"]["pg_statements"]["detail"]["source_state"].clone();
            state
                .to_string()
                .contains("could not be read")
                .then_some(())
        },
    );
    std::fs::remove_file(&fault).expect("remove fault");
    run_marker(&pg, 3);
    let all = wait_for("the marker's 10 calls", Duration::from_secs(30), || {
        let ev = of_marker();
        (sum(&ev, "calls") == 10).then_some(ev)
    });
    assert_eq!(all.last().expect("last")["data"]["query"], MARKER);
    // No more, no less: every call counted once.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(sum(&of_marker(), "calls"), 10);
}
