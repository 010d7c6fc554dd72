//! Durable delivery: nothing is lost while the listener is down, across kill -9, or at
//! shutdown; a retried batch keeps its ids.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::harness::agent::{config, spool_ids, Agent, TOKEN};
use crate::harness::listener::{Listener, Mode};
use crate::harness::pg::PgCluster;
use crate::harness::{shared_tempdir, wait_for};

/// Every accepted event id, with the batch ids it arrived in.
fn delivered(listener: &Listener) -> BTreeMap<String, BTreeSet<String>> {
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (batch, e) in listener.accepted_events() {
        let id = e["id"].as_str().expect("id").to_string();
        m.entry(id).or_default().insert(batch);
    }
    m
}

#[test]
fn listener_down_then_up_delivers_every_event() {
    let pg = PgCluster::start("");
    let mut listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let _s = pg.session("app", "select pg_sleep(120)");
    // The breaker opens during the outage; a short reset keeps the test about delivery
    // (the breaker itself is tested in delivery_policy).
    let toml = config(dir.path(), &pg, &listener.url(), 1).replace(
        "retry_max_ms = 1000\n",
        "retry_max_ms = 1000\n[breaker]\nreset_timeout_s = 1\n",
    );
    let agent = Agent::start(dir.path(), &toml, &[]);
    wait_for("first delivery", Duration::from_secs(20), || {
        (!listener.events_of("pg_activity").is_empty()).then_some(())
    });

    // Down: connections refused. Events pile up in the spool.
    listener.stop();
    let spooled: BTreeSet<String> = wait_for(
        "events spooled during the outage",
        Duration::from_secs(30),
        || {
            let ids = agent.spool_ids();
            (ids.len() >= 8).then(|| ids.into_iter().collect())
        },
    );
    wait_for("failures logged", Duration::from_secs(10), || {
        (agent.logs_named("ship_failed").len() >= 2).then_some(())
    });
    // Up again on the same port, answering 503 for a while, then 200.
    listener.set_mode(Mode::Status(503));
    listener.restart();
    wait_for("a 503 answered", Duration::from_secs(10), || {
        listener
            .received()
            .iter()
            .any(|r| r.status == 503)
            .then_some(())
    });
    listener.set_mode(Mode::Ok);
    let got = wait_for(
        "every spooled event delivered",
        Duration::from_secs(30),
        || {
            let d = delivered(&listener);
            spooled.iter().all(|id| d.contains_key(id)).then_some(d)
        },
    );
    // A batch that was refused and sent again kept its batch id: every event arrived
    // under exactly one batch id.
    for (id, batches) in &got {
        assert_eq!(batches.len(), 1, "{id} arrived in batches {batches:?}");
    }
    // A 503'd request was retried with the same Idempotency-Key and then accepted.
    let refused: BTreeSet<String> = listener
        .received()
        .iter()
        .filter(|r| r.status == 503)
        .filter_map(|r| r.idempotency_key.clone())
        .collect();
    let accepted: BTreeSet<String> = listener
        .received()
        .iter()
        .filter(|r| r.status == 200)
        .filter_map(|r| r.idempotency_key.clone())
        .collect();
    assert!(!refused.is_empty());
    assert!(refused.is_subset(&accepted), "{refused:?} not all retried");
    assert_eq!(agent.logs_named("listener_recovered").len(), 1);
}

#[test]
fn kill_9_loses_nothing_that_was_spooled() {
    let pg = PgCluster::start("");
    let mut listener = Listener::start(TOKEN);
    listener.stop();
    let dir = shared_tempdir("pgagent-it");
    let _s = pg.session("app", "select pg_sleep(120)");
    let toml = config(dir.path(), &pg, &listener.url(), 1);
    let mut agent = Agent::start(dir.path(), &toml, &[]);
    let spooled: BTreeSet<String> = wait_for("events spooled", Duration::from_secs(30), || {
        let ids = agent.spool_ids();
        (ids.len() >= 5).then(|| ids.into_iter().collect())
    });
    agent.signal(libc::SIGKILL);
    agent.wait_exit(Duration::from_secs(5)).expect("killed");
    // Integrity of the spool after the kill.
    let conn = rusqlite::Connection::open(agent.state_dir.join("spool.db")).expect("open");
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(ok, "ok");
    drop(conn);
    let after_kill: BTreeSet<String> = spool_ids(&agent.state_dir).into_iter().collect();
    assert!(spooled.is_subset(&after_kill));

    listener.restart();
    let agent2 = Agent::start(dir.path(), &toml, &[]);
    wait_for(
        "every event from before the kill delivered",
        Duration::from_secs(30),
        || {
            let d = delivered(&listener);
            after_kill.iter().all(|id| d.contains_key(id)).then_some(())
        },
    );
    drop(agent2);
}

#[test]
fn sigterm_flushes_and_exits_zero_even_with_the_listener_down() {
    let pg = PgCluster::start("");
    let mut listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let _s = pg.session("app", "select pg_sleep(120)");
    let toml = config(dir.path(), &pg, &listener.url(), 1);

    // Listener up: SIGTERM leaves an empty spool and exits 0.
    let mut agent = Agent::start(dir.path(), &toml, &[]);
    wait_for("deliveries", Duration::from_secs(20), || {
        (listener.events_of("pg_activity").len() >= 2).then_some(())
    });
    agent.signal(libc::SIGTERM);
    let st = agent
        .wait_exit(Duration::from_secs(10))
        .expect("exits within the grace period");
    assert_eq!(st.code(), Some(0));
    assert!(agent
        .logs_named("shutdown_flushed")
        .iter()
        .any(|r| r["drained"] == true));
    assert_eq!(spool_ids(&agent.state_dir), Vec::<String>::new());

    // Listener down: exits 0 when the grace (5 s) runs out, events stay spooled.
    listener.stop();
    let mut agent = Agent::start(dir.path(), &toml, &[]);
    wait_for("events spooled", Duration::from_secs(20), || {
        (spool_ids(&agent.state_dir).len() >= 2).then_some(())
    });
    agent.signal(libc::SIGTERM);
    let st = agent.wait_exit(Duration::from_secs(30)).expect("exits");
    assert_eq!(st.code(), Some(0));
    // It gave up because the grace ran out, not because it got through.
    let flushed = agent.logs_named("shutdown_flushed");
    assert_eq!(flushed.len(), 1, "{}", agent.stderr());
    assert_eq!(flushed[0]["drained"], false);
    assert!(spool_ids(&agent.state_dir).len() >= 2);
}
