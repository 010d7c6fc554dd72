//! Session sampling: where a request's database time went, per window.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::agent::{config, Agent, TOKEN};
use crate::harness::listener::Listener;
use crate::harness::pg::{major_version, PgCluster};
use crate::harness::{shared_tempdir, wait_for};

const REQ: &str = "5a3c0d2e-5a8b-4c1f-9e2d-3b4a5c6d7e01";
const HOLDER: &str = "5a3c0d2e-5a8b-4c1f-9e2d-3b4a5c6d7e02";
const WAITER: &str = "5a3c0d2e-5a8b-4c1f-9e2d-3b4a5c6d7e03";
/// A session active through the whole test: every window has a summary, so a window
/// after the workload shows that the workload's windows are all shipped.
const BEAT: &str = "5a3c0d2e-5a8b-4c1f-9e2d-3b4a5c6d7e04";
/// Sampling interval of these tests, seconds.
const EVERY: f64 = 0.5;

/// Samples every 500 ms, windows of 2 s; only the sampler reads the database.
fn sampling_config(dir: &std::path::Path, pg: &PgCluster, url: &str) -> String {
    config(dir, pg, url, 1)
        .replace("sample_interval_ms = 0", "sample_interval_ms = 500")
        .replace(
            "[collection]\n",
            "[collection]\nactivity = false\nactivity_interval_s = 2\n",
        )
}

/// The listener, the state directory, the heartbeat session and the agent, sampling and
/// shipping.
fn sampling(
    pg: &PgCluster,
) -> (
    Listener,
    tempfile::TempDir,
    crate::harness::pg::Session,
    Agent,
) {
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let beat = pg.session(&format!("bitville-{BEAT}"), "select pg_sleep(120)");
    let agent = Agent::start(
        dir.path(),
        &sampling_config(dir.path(), pg, &listener.url()),
        &[],
    );
    listener.wait_first_request();
    (listener, dir, beat, agent)
}

/// The summaries of request `id`, by state and wait, over every window so far.
fn summaries_of(l: &Listener, id: &str) -> Vec<Value> {
    l.events_of("pg_activity_summary")
        .into_iter()
        .filter(|e| e["data"]["correlation_id"] == id)
        .collect()
}

/// Waits until a window that began after `after` was shipped (the heartbeat's): every
/// window before it was shipped earlier.
fn windows_closed_until(l: &Listener, after: chrono::DateTime<chrono::Utc>) {
    wait_for(
        "a window after the workload",
        Duration::from_secs(30),
        || {
            l.events_of("pg_activity_summary")
                .iter()
                .filter_map(|e| e["data"]["window_start"].as_str())
                .filter_map(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
                .any(|t| t > after)
                .then_some(())
        },
    );
}

fn seconds(events: &[Value], pred: impl Fn(&Value) -> bool) -> f64 {
    events
        .iter()
        .filter(|e| pred(&e["data"]))
        .map(|e| e["data"]["seconds"].as_f64().expect("seconds"))
        .sum()
}

#[test]
fn a_three_second_request_is_summarized_under_its_id() {
    let pg = PgCluster::start("shared_preload_libraries = 'pg_stat_statements'\n");
    pg.sql("create extension pg_stat_statements");
    let (listener, _dir, _beat, agent) = sampling(&pg);
    let started = Instant::now();
    let session = pg.session(&format!("bitville-{REQ}"), "select pg_sleep(3)");
    assert!(session.wait());
    let ran = started.elapsed().as_secs_f64();
    windows_closed_until(&listener, chrono::Utc::now());
    let events = summaries_of(&listener, REQ);
    let active = seconds(&events, |d| d["state"] == "active");
    // The statement ran 3 s (the psql round trip around it is at most `ran`): within one
    // sample of the truth.
    assert!(
        (3.0 - EVERY..=ran + EVERY).contains(&active),
        "{active} s sampled for a 3 s statement (psql took {ran:.2} s): {events:#?}"
    );
    let d = &events[0]["data"];
    assert_eq!(d["datname"], "postgres");
    assert_eq!(d["wait_event"], "PgSleep");
    assert_eq!(d["backend_type"], "client backend");
    assert_eq!(
        d["query_fingerprint"].as_str(),
        postgres_agent::fingerprint::fingerprint("select pg_sleep($1)").as_deref()
    );
    // The text once per statement per window, with a key whose session ran it (here the
    // heartbeat's `select pg_sleep(120)` may be the one: same statement).
    let all = listener.events_of("pg_activity_summary");
    for w in events.iter().map(|e| &e["data"]["window_start"]) {
        let texts: Vec<&str> = all
            .iter()
            .filter(|e| {
                &e["data"]["window_start"] == w
                    && e["data"]["query_fingerprint"] == d["query_fingerprint"]
            })
            .filter_map(|e| e["data"]["query"].as_str())
            .collect();
        assert_eq!(texts.len(), 1, "window {w}: {texts:?}");
        assert!(
            ["select pg_sleep(3)", "select pg_sleep(120)"].contains(&texts[0]),
            "{texts:?}"
        );
    }
    if major_version() >= 14 {
        let queryid =
            pg.sql("select queryid from pg_stat_statements where query = 'select pg_sleep($1)'");
        assert_eq!(d["query_id"].to_string(), queryid, "{d}");
    } else {
        assert_eq!(d["query_id"], Value::Null);
    }
    // Deterministic ids: window start and key.
    let ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    let unique: std::collections::BTreeSet<&&str> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
    drop(agent);
}

#[test]
fn a_lock_wait_is_summarized_with_the_holders_request() {
    let pg = PgCluster::start("");
    pg.sql("create table t (id int primary key, v int); insert into t values (1, 0)");
    let (listener, _dir, _beat, agent) = sampling(&pg);

    let mut holder = pg.interactive(&format!("bitville-{HOLDER}"));
    holder.send("begin; select * from t where id = 1 for update;");
    wait_for(
        "the holder idle in transaction",
        Duration::from_secs(10),
        || {
            (pg.sql(&format!(
                "select state from pg_stat_activity where application_name = 'bitville-{HOLDER}'"
            )) == "idle in transaction")
                .then_some(())
        },
    );
    let holder_pid: i64 = pg
        .sql(&format!(
            "select pid from pg_stat_activity where application_name = 'bitville-{HOLDER}'"
        ))
        .parse()
        .expect("pid");
    let waiter = pg.session(
        &format!("bitville-{WAITER}"),
        "update t set v = v + 1 where id = 1",
    );
    wait_for("the waiter waiting", Duration::from_secs(10), || {
        (pg.sql("select count(*) from pg_stat_activity where wait_event_type = 'Lock'") == "1")
            .then_some(())
    });
    let waiting_since = Instant::now();
    // The workload: the holder keeps its lock for two seconds, then commits.
    std::thread::sleep(Duration::from_secs(2));
    holder.send("commit;");
    assert!(waiter.wait());
    let waited = waiting_since.elapsed().as_secs_f64();
    windows_closed_until(&listener, chrono::Utc::now());
    let events = summaries_of(&listener, WAITER);
    let lock = seconds(&events, |d| d["wait_event_type"] == "Lock");
    assert!(
        (2.0 - EVERY..=waited + 2.0 * EVERY).contains(&lock),
        "{lock} s of Lock sampled for a {waited:.2} s wait: {events:#?}"
    );
    let blocked: Vec<&Value> = events
        .iter()
        .filter(|e| e["data"]["wait_event_type"] == "Lock")
        .collect();
    for e in &blocked {
        assert_eq!(
            e["data"]["blockers"],
            serde_json::json!([{"pid": holder_pid, "correlation_id": HOLDER}]),
            "{e}"
        );
    }
    // The holder was sampled too, idle in transaction: it holds the lock.
    let holding = summaries_of(&listener, HOLDER);
    assert!(
        holding
            .iter()
            .any(|e| e["data"]["state"] == "idle in transaction"),
        "{holding:#?}"
    );
    drop(agent);
}

/// Sampling every 500 ms into 60 s windows: a stop always falls inside a window.
fn long_windows(dir: &std::path::Path, pg: &PgCluster, url: &str) -> String {
    sampling_config(dir, pg, url).replace("activity_interval_s = 2", "activity_interval_s = 60")
}

#[test]
fn sigterm_ships_the_open_window_and_a_restart_does_not_overwrite_it() {
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let toml = long_windows(dir.path(), &pg, &listener.url());
    let mut runs = Vec::new();
    for (run, id) in [(1, REQ), (2, WAITER)] {
        let mut agent = Agent::start(dir.path(), &toml, &[]);
        agent.wait_log("collect_cycle_done", Duration::from_secs(30), |l| {
            l["child"] == "pg_activity_summary"
        });
        // The 2 s statement and the stop must fall in one (minute) window: a window that
        // closes on its own before the stop is shipped whole, not partial.
        wait_for(
            "room before the minute turns",
            Duration::from_secs(15),
            || (chrono::Timelike::second(&chrono::Utc::now()) < 50).then_some(()),
        );
        let session = pg.session(&format!("bitville-{id}"), "select pg_sleep(2)");
        assert!(session.wait());
        agent.signal(libc::SIGTERM);
        let status = agent.wait_exit(Duration::from_secs(30)).expect("exit");
        assert_eq!(status.code(), Some(0), "run {run}: {}", agent.stderr());
        let spooled = agent.logs_named("shutdown_work_in_progress_spooled");
        assert_eq!(spooled.len(), 1, "run {run}: {}", agent.stderr());
        let events = summaries_of(&listener, id);
        assert!(!events.is_empty(), "run {run}: nothing for {id}");
        for e in &events {
            assert_eq!(e["data"]["partial"], true, "{e}");
            let id = e["id"].as_str().expect("id");
            assert!(id.contains(":until:"), "{id}");
            let end: chrono::DateTime<chrono::Utc> = e["data"]["window_end"]
                .as_str()
                .expect("end")
                .parse()
                .expect("time");
            let start: chrono::DateTime<chrono::Utc> = e["data"]["window_start"]
                .as_str()
                .expect("start")
                .parse()
                .expect("time");
            assert!(end > start && end <= start + chrono::Duration::seconds(60));
        }
        let active = seconds(&events, |d| d["state"] == "active");
        assert!(
            (2.0 - EVERY..=2.0 + 2.0 * EVERY).contains(&active),
            "run {run}: {active} s sampled for a 2 s statement: {events:#?}"
        );
        runs.push(events);
    }
    // Two runs, each its own events, none taken for a copy of another.
    let all = listener.events_of("pg_activity_summary");
    let ids: std::collections::BTreeSet<&str> =
        all.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), all.len(), "{ids:?}");
    assert!(runs.iter().all(|r| !r.is_empty()));
}
