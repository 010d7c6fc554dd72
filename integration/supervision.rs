//! The supervisor restarts a child that panicked or hung, and the others go on.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::agent::{config, Agent, TOKEN};
use crate::harness::listener::Listener;
use crate::harness::pg::PgCluster;
use crate::harness::{shared_tempdir, wait_for};

/// Distinct sample times (`collected_at`) of pg_activity events received so far.
fn samples(listener: &Listener) -> BTreeSet<String> {
    listener
        .events_of("pg_activity")
        .iter()
        .filter_map(|e| e["collected_at"].as_str().map(String::from))
        .collect()
}

fn child_started(agent: &Agent, child: &str, generation: u64) -> Option<Value> {
    agent
        .logs_named("child_started")
        .into_iter()
        .find(|r| r["child"] == child && r["generation"] == generation)
}

fn fault(dir: &std::path::Path, child: &str, what: &str) {
    std::fs::write(dir.join(child), what).expect("write fault");
}

#[test]
fn panicking_collector_is_restarted_while_the_others_keep_going() {
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let faults = dir.path().join("faults");
    std::fs::create_dir_all(&faults).expect("mkdir");
    let _s = pg.session("app", "select pg_sleep(120)");
    let agent = Agent::start(
        dir.path(),
        &config(dir.path(), &pg, &listener.url(), 1),
        &[("POSTGRES_AGENT_FAULT_DIR", faults.to_str().expect("utf8"))],
    );
    wait_for("first samples", Duration::from_secs(20), || {
        (samples(&listener).len() >= 2).then_some(())
    });

    fault(&faults, "pg_activity", "panic");
    let down = agent.wait_log("child_down", Duration::from_secs(10), |r| {
        r["child"] == "pg_activity"
    });
    assert_eq!(down["reason"], "panicked");
    assert_eq!(down["restarts"], 1);
    assert_eq!(down["restart_in_ms"], 100);
    wait_for("generation 2", Duration::from_secs(5), || {
        child_started(&agent, "pg_activity", 2)
    });
    // The buffer and shipper were never restarted, and the restart itself reached the
    // listener as an agent event.
    assert!(child_started(&agent, "buffer", 2).is_none());
    assert!(child_started(&agent, "shipper", 2).is_none());
    let agent_ev = wait_for(
        "child_restarted agent event",
        Duration::from_secs(10),
        || {
            listener
                .events_of("agent")
                .into_iter()
                .find(|e| e["data"]["event"] == "child_restarted")
        },
    );
    assert_eq!(agent_ev["data"]["child"], "pg_activity");
    assert_eq!(agent_ev["data"]["reason"], "panicked");

    // The new incarnation produces on schedule: three more samples, one per second.
    let before = samples(&listener).len();
    let t = Instant::now();
    wait_for("samples after the restart", Duration::from_secs(10), || {
        (samples(&listener).len() >= before + 3).then_some(())
    });
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    let panics = agent.logs_named("panic");
    assert_eq!(panics.len(), 1, "{panics:?}");
    assert!(panics[0]["message"]
        .as_str()
        .is_some_and(|m| m.contains("pg_activity was asked to panic")));
}

#[test]
fn hung_collector_is_detected_and_restarted() {
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let faults = dir.path().join("faults");
    std::fs::create_dir_all(&faults).expect("mkdir");
    let _s = pg.session("app", "select pg_sleep(120)");
    let agent = Agent::start(
        dir.path(),
        &config(dir.path(), &pg, &listener.url(), 1),
        &[("POSTGRES_AGENT_FAULT_DIR", faults.to_str().expect("utf8"))],
    );
    wait_for("first samples", Duration::from_secs(20), || {
        (samples(&listener).len() >= 2).then_some(())
    });
    fault(&faults, "pg_activity", "hang");
    let t = Instant::now();
    let down = agent.wait_log("child_down", Duration::from_secs(15), |r| {
        r["child"] == "pg_activity"
    });
    assert_eq!(
        down["reason"],
        "hung: no answer to a health check within 5s"
    );
    // Detected by the ping deadline: not before 5 s, not much after.
    assert!(t.elapsed() >= Duration::from_secs(5), "{:?}", t.elapsed());
    wait_for("generation 2", Duration::from_secs(5), || {
        child_started(&agent, "pg_activity", 2)
    });
    let before = samples(&listener).len();
    wait_for(
        "samples from the new incarnation",
        Duration::from_secs(10),
        || (samples(&listener).len() >= before + 2).then_some(()),
    );
    // The shipper kept delivering while the collector hung: requests were answered
    // during the hang (agent events, or activity from before the hang).
    assert!(child_started(&agent, "shipper", 2).is_none());
}
