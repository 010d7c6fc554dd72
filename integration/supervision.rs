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

/// Sample times of the `system` collector, in seconds since the epoch, in order.
fn system_times(listener: &Listener) -> Vec<f64> {
    let mut t: Vec<f64> = listener
        .events_of("system")
        .iter()
        .filter_map(|e| e["collected_at"].as_str())
        .filter_map(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.timestamp_micros() as f64 / 1e6)
        .collect();
    t.sort_by(f64::total_cmp);
    t
}

/// The `system` collector went on over [from, to] while another child was down or
/// hung: it sampled inside the window (its 1 s interval leaves room for several), and no
/// tick of it was skipped. Its schedule's rules are the collector's unit tests; here only
/// what the real binary shows: one child's trouble does not stop another.
fn system_on_schedule(agent: &Agent, listener: &Listener, from: f64, to: f64) {
    let inside = system_times(listener)
        .into_iter()
        .filter(|x| *x > from && *x < to)
        .count();
    assert!(inside >= 2, "{inside} system samples in [{from}, {to}]");
    let skipped: Vec<Value> = agent
        .logs_named("collect_cycle_skipped")
        .into_iter()
        .filter(|r| r["child"] == "system")
        .collect();
    assert!(skipped.is_empty(), "{skipped:?}");
}

fn now_s() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

fn fault(dir: &std::path::Path, child: &str, what: &str) {
    std::fs::write(dir.join(child), what).expect("write fault");
}

/// A cluster with one busy session, a listener, and an agent (interval 1 s) that obeys
/// fault requests written into `faults`.
struct Faulty {
    agent: Agent,
    faults: std::path::PathBuf,
    listener: Listener,
    _session: crate::harness::pg::Session,
    _dir: tempfile::TempDir,
    _pg: PgCluster,
}

impl Faulty {
    fn start(edit: impl Fn(String) -> String) -> Faulty {
        let pg = PgCluster::start("");
        let listener = Listener::start(TOKEN);
        let dir = shared_tempdir("pgagent-it");
        let faults = dir.path().join("faults");
        std::fs::create_dir_all(&faults).expect("mkdir");
        let session = pg.session("app", "select pg_sleep(120)");
        let agent = Agent::start(
            dir.path(),
            &edit(config(dir.path(), &pg, &listener.url(), 1)),
            &[("POSTGRES_AGENT_FAULT_DIR", faults.to_str().expect("utf8"))],
        );
        wait_for("first samples", Duration::from_secs(20), || {
            (samples(&listener).len() >= 2).then_some(())
        });
        Faulty {
            agent,
            faults,
            listener,
            _session: session,
            _dir: dir,
            _pg: pg,
        }
    }
}

fn with_system(toml: String) -> String {
    toml.replace("system = false", "system = true")
}

#[test]
fn panicking_collector_is_restarted_while_the_others_keep_going() {
    let f = Faulty::start(with_system);
    let (agent, listener, faults) = (&f.agent, &f.listener, &f.faults);
    wait_for("system samples", Duration::from_secs(10), || {
        (system_times(listener).len() >= 2).then_some(())
    });

    let fault_at = now_s();
    fault(faults, "pg_activity", "panic");
    let down = agent.wait_log("child_down", Duration::from_secs(10), |r| {
        r["child"] == "pg_activity"
    });
    assert_eq!(down["reason"], "panicked");
    assert_eq!(down["restarts"], 1);
    assert_eq!(down["restart_in_ms"], 100);
    wait_for("generation 2", Duration::from_secs(5), || {
        child_started(agent, "pg_activity", 2)
    });
    // The buffer and shipper were never restarted, and the restart itself reached the
    // listener as an agent event.
    assert!(child_started(agent, "buffer", 2).is_none());
    assert!(child_started(agent, "shipper", 2).is_none());
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

    // The new incarnation produces again (its restart delay is the restart policy's,
    // unit-tested with an injected clock).
    let before = samples(listener).len();
    wait_for("samples after the restart", Duration::from_secs(30), || {
        (samples(listener).len() >= before + 3).then_some(())
    });
    // The other collector never noticed.
    let until = now_s();
    wait_for(
        "system samples past the restart",
        Duration::from_secs(5),
        || (system_times(listener).last().copied().unwrap_or(0.0) > until).then_some(()),
    );
    system_on_schedule(agent, listener, fault_at, until);
    assert!(child_started(agent, "system", 2).is_none());
    let panics = agent.logs_named("panic");
    assert_eq!(panics.len(), 1, "{panics:?}");
    assert!(panics[0]["message"]
        .as_str()
        .is_some_and(|m| m.contains("pg_activity was asked to panic")));
}

#[test]
fn hung_collector_is_detected_and_restarted() {
    let f = Faulty::start(with_system);
    let (agent, listener, faults) = (&f.agent, &f.listener, &f.faults);
    wait_for("system samples", Duration::from_secs(10), || {
        (system_times(listener).len() >= 2).then_some(())
    });
    let fault_at = now_s();
    fault(faults, "pg_activity", "hang");
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
        child_started(agent, "pg_activity", 2)
    });
    let before = samples(listener).len();
    wait_for(
        "samples from the new incarnation",
        Duration::from_secs(10),
        || (samples(listener).len() >= before + 2).then_some(()),
    );
    // While pg_activity's thread was blocked, the system collector kept its schedule
    // and the shipper kept delivering it; neither was restarted.
    let until = now_s();
    wait_for(
        "system samples past the restart",
        Duration::from_secs(5),
        || (system_times(listener).last().copied().unwrap_or(0.0) > until).then_some(()),
    );
    system_on_schedule(agent, listener, fault_at, until);
    assert!(child_started(agent, "shipper", 2).is_none());
    assert!(child_started(agent, "system", 2).is_none());
}

#[test]
fn stalled_collector_is_restarted_after_its_progress_deadline() {
    // 2 × connect 2 s (a free connection, a new one) + 2 × statement 1 s + 1 s = 7 s per
    // cycle; deadline = 2 × 1 s + 7 s.
    let f = Faulty::start(|t| {
        t.replace(
            "connect_timeout_ms = 2000",
            "connect_timeout_ms = 2000\nstatement_timeout_ms = 1000",
        )
    });
    let (agent, listener, faults) = (&f.agent, &f.listener, &f.faults);
    fault(faults, "pg_activity", "stall");
    let down = agent.wait_log("child_down", Duration::from_secs(20), |r| {
        r["child"] == "pg_activity"
    });
    let reason = down["reason"].as_str().expect("reason");
    assert!(
        reason.starts_with("hung: no progress for ") && reason.ends_with("s (deadline 9s)"),
        "{reason}"
    );
    // Taken down past its deadline, by the agent's own measure (the progress clock
    // starts at the last finished cycle, before the test wrote the fault, so the test's
    // clock would undercount).
    let idle: u64 = reason
        .trim_start_matches("hung: no progress for ")
        .split('s')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("seconds without progress");
    assert!(idle >= 9, "{reason}");
    // While stalled, ticks were skipped rather than piling up cycles.
    assert!(agent.logs_named("collect_cycle_skipped").len() >= 5);
    wait_for("generation 2", Duration::from_secs(5), || {
        child_started(agent, "pg_activity", 2)
    });
    let before = samples(listener).len();
    wait_for(
        "samples from the new incarnation",
        Duration::from_secs(10),
        || (samples(listener).len() >= before + 2).then_some(()),
    );
}

#[test]
fn a_child_that_keeps_stopping_is_marked_failed_and_the_agent_keeps_running() {
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    // The buffer is told to stop at every start (a spool that cannot be opened at all;
    // an unreadable one is moved aside instead, see the next test).
    let faults = dir.path().join("faults");
    std::fs::create_dir_all(&faults).expect("mkdir");
    std::fs::write(faults.join("buffer"), "stop").expect("fault");
    let agent = Agent::start(
        dir.path(),
        &config(dir.path(), &pg, &listener.url(), 1),
        &[("POSTGRES_AGENT_FAULT_DIR", faults.to_str().expect("utf8"))],
    );
    let downs = wait_for("six buffer exits", Duration::from_secs(20), || {
        let d: Vec<Value> = agent
            .logs_named("child_down")
            .into_iter()
            .filter(|r| r["child"] == "buffer")
            .collect();
        (d.len() >= 6).then_some(d)
    });
    let delays: Vec<u64> = downs
        .iter()
        .map(|r| r["restart_in_ms"].as_u64().expect("delay"))
        .collect();
    assert_eq!(delays[..6], [100, 200, 400, 800, 1600, 60_000]);
    assert!(downs.iter().all(|r| r["reason"] == "stopped"));
    assert_eq!(downs[5]["failed"], true);
    assert!(!agent.logs_named("spool_open_failed").is_empty());

    // The rest goes on: the collector keeps sampling and holds its events in memory.
    agent.signal(libc::SIGUSR1);
    let status = wait_for(
        "status with the failed buffer",
        Duration::from_secs(10),
        || {
            let s: Value =
                serde_json::from_slice(&std::fs::read(agent.state_dir.join("status.json")).ok()?)
                    .ok()?;
            let pending = s["children"]["pg_activity"]["detail"]["pending_events"].as_u64()?;
            (s["trigger"] == "sigusr1" && pending > 0).then_some(s)
        },
    );
    assert_eq!(status["children"]["buffer"]["state"], "failed");
    assert_eq!(status["children"]["buffer"]["restarts"], 6);
    assert_eq!(status["children"]["pg_activity"]["state"], "running");
    assert_eq!(
        status["children"]["pg_activity"]["detail"]["cycle_errors_total"],
        0
    );
    assert!(listener.events_of("pg_activity").is_empty());
}

#[test]
fn an_unreadable_spool_is_moved_aside_and_the_agent_ships_on() {
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("mkdir");
    std::fs::write(state.join("spool.db"), vec![0x5Au8; 16384]).expect("garbage spool");
    let agent = Agent::start(
        dir.path(),
        &config(dir.path(), &pg, &listener.url(), 1),
        &[],
    );
    let moved = agent.wait_log("spool_corrupt_moved_aside", Duration::from_secs(10), |_| {
        true
    });
    let aside = std::path::PathBuf::from(moved["moved_to"].as_str().expect("moved_to"));
    assert_eq!(std::fs::read(&aside).expect("kept"), vec![0x5Au8; 16384]);
    // Shipping goes on from the fresh spool, and the listener hears about it.
    wait_for("the agent event", Duration::from_secs(20), || {
        listener
            .events_of("agent")
            .into_iter()
            .find(|e| e["data"]["event"] == "spool_corrupt_moved_aside")
    });
    wait_for("activity shipped", Duration::from_secs(20), || {
        (!listener.events_of("pg_activity").is_empty()).then_some(())
    });
}
