//! What the shipper does with each kind of answer, against a real listener: the circuit
//! breaker, Retry-After, a refused token, a batch with one event the listener refuses.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::harness::agent::{config, Agent, TOKEN};
use crate::harness::listener::{Listener, Mode, REJECT_MARK};
use crate::harness::pg::PgCluster;
use crate::harness::{shared_tempdir, wait_for};

fn requests(
    l: &Listener,
    agent: &Agent,
    n: usize,
    within: Duration,
) -> Vec<crate::harness::listener::Received> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let r = l.received();
        if r.len() >= n {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} requests within {within:?}; the agent said:\n{}",
            r.len(),
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn accepted_ids(l: &Listener) -> BTreeSet<String> {
    l.accepted_events()
        .into_iter()
        .filter_map(|(_, e)| e["id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn breaker_opens_after_fail_max_then_one_probe_per_reset_period() {
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    listener.set_mode(Mode::Status(500));
    let dir = shared_tempdir("pgagent-it");
    let toml = config(dir.path(), &pg, &listener.url(), 1).replace(
        "retry_max_ms = 1000\n",
        "retry_base_ms = 50\nretry_max_ms = 100\n[breaker]\nfail_max = 3\nreset_timeout_s = 2\n",
    );
    let agent = Agent::start(dir.path(), &toml, &[]);
    let r = requests(&listener, &agent, 5, Duration::from_secs(20));
    let gap = |i: usize| r[i].at - r[i - 1].at;
    // fail_max requests close together, then nothing until the probe a full reset
    // period after the third failure, whose failure re-opens it for another period.
    assert!(
        gap(1) < Duration::from_secs(1) && gap(2) < Duration::from_secs(1),
        "{:?} {:?}",
        gap(1),
        gap(2)
    );
    assert!(
        gap(3) >= Duration::from_secs(2),
        "first probe after {:?}",
        gap(3)
    );
    assert!(
        gap(4) >= Duration::from_secs(2),
        "second probe after {:?}",
        gap(4)
    );
    assert!(r.iter().take(5).all(|x| x.status == 500));
    // The same batch every time: same Idempotency-Key.
    assert!(r
        .iter()
        .take(5)
        .all(|x| x.idempotency_key == r[0].idempotency_key));
    let s = agent.status();
    let b = &s["children"]["shipper"]["detail"]["breaker"];
    assert_eq!(b["state"], "open", "{s}");
    assert!(b["open_since"].is_string(), "{s}");
    assert!(
        b["next_probe_in_s"].as_f64().is_some_and(|x| x <= 2.0),
        "{s}"
    );
    assert_eq!(agent.logs_named("circuit_open_buffering").len(), 1);

    // The listener recovers: the next probe succeeds, the breaker closes, the first
    // (refused) batch and everything after it arrive.
    listener.set_mode(Mode::Ok);
    let first: Vec<String> = r[0].event_ids();
    assert!(!first.is_empty(), "the refused batch carried events");
    wait_for("the first batch delivered", Duration::from_secs(10), || {
        let got = accepted_ids(&listener);
        first.iter().all(|id| got.contains(id)).then_some(())
    });
    wait_for("breaker closed in status", Duration::from_secs(10), || {
        let s = agent.status();
        (s["children"]["shipper"]["detail"]["breaker"]["state"] == "closed").then_some(())
    });
    assert_eq!(agent.logs_named("circuit_closed").len(), 1);
}

#[test]
fn retry_after_is_honoured() {
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    listener.set_mode(Mode::RetryAfter(429, 3));
    let dir = shared_tempdir("pgagent-it");
    let toml = config(dir.path(), &pg, &listener.url(), 1).replace(
        "retry_max_ms = 1000\n",
        "retry_base_ms = 50\nretry_max_ms = 100\n",
    );
    let agent = Agent::start(dir.path(), &toml, &[]);
    let r = requests(&listener, &agent, 1, Duration::from_secs(20));
    listener.set_mode(Mode::Ok);
    let r2 = requests(&listener, &agent, 2, Duration::from_secs(20));
    assert_eq!(r[0].status, 429);
    let gap = r2[1].at - r2[0].at;
    assert!(
        gap >= Duration::from_secs(3),
        "retried after {gap:?}, Retry-After was 3 s"
    );
    assert_eq!(r2[1].idempotency_key, r2[0].idempotency_key);
    assert_eq!(r2[1].status, 200);
}

#[test]
fn refused_token_keeps_everything_until_the_config_is_fixed_and_reloaded() {
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let good = config(dir.path(), &pg, &listener.url(), 1);
    let bad = good.replace(TOKEN, "wrong-token");
    let agent = Agent::start(dir.path(), &bad, &[]);
    let r = requests(&listener, &agent, 1, Duration::from_secs(20));
    assert_eq!(r[0].status, 401);
    agent.wait_log("listener_token_refused", Duration::from_secs(5), |_| true);
    // No more requests (the probe would come after breaker.reset_timeout_s = 60 s) while
    // events pile up in the spool.
    let spooled = wait_for("events spooled", Duration::from_secs(20), || {
        let ids = agent.spool_ids();
        (ids.len() >= 10).then_some(ids)
    });
    assert_eq!(
        listener.received().len(),
        1,
        "the agent kept sending with a refused token"
    );
    let s = agent.status();
    assert_eq!(
        s["children"]["shipper"]["detail"]["token_refused"], "HTTP 401",
        "{s}"
    );
    assert!(s["children"]["shipper"]["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("refuses the token")));
    assert!(!s.to_string().contains("wrong-token"));

    std::fs::write(&agent.config_path, &good).expect("fix the token");
    agent.signal(libc::SIGHUP);
    wait_for(
        "every event spooled before the fix delivered",
        Duration::from_secs(20),
        || {
            let got = accepted_ids(&listener);
            spooled.iter().all(|id| got.contains(id)).then_some(())
        },
    );
}

#[test]
fn one_event_the_listener_refuses_is_quarantined_and_the_rest_arrive() {
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    listener.set_mode(Mode::RejectMarked);
    let dir = shared_tempdir("pgagent-it");
    let toml = config(dir.path(), &pg, &listener.url(), 1);
    let mut marked = pg.interactive(REJECT_MARK);
    marked.send("select 1;");
    let agent = Agent::start(dir.path(), &toml, &[]);
    // Two cycles with the marked session in them, then it goes away.
    let refused = |l: &Listener| -> BTreeSet<String> {
        l.received()
            .iter()
            .filter(|r| r.status == 400 && r.event_ids().len() == 1)
            .flat_map(|r| r.event_ids())
            .collect()
    };
    wait_for("two single refused events", Duration::from_secs(30), || {
        (refused(&listener).len() >= 2).then_some(())
    });
    drop(marked);
    let all_unmarked = |l: &Listener| -> BTreeSet<String> {
        l.received()
            .iter()
            .filter_map(|r| r.body.as_ref().ok())
            .flat_map(|b| b["events"].as_array().cloned().unwrap_or_default())
            .filter(|e| !e.to_string().contains(REJECT_MARK))
            .filter_map(|e| e["id"].as_str().map(str::to_string))
            .collect()
    };
    // Every event that is not marked, including those that shared a batch with a
    // marked one, is accepted.
    wait_for(
        "every unmarked event accepted",
        Duration::from_secs(30),
        || {
            let got = accepted_ids(&listener);
            let want = all_unmarked(&listener);
            (!want.is_empty() && want.iter().all(|id| got.contains(id))).then_some(())
        },
    );
    let accepted: Vec<Value> = listener
        .accepted_events()
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    assert!(!accepted.is_empty());
    assert!(accepted
        .iter()
        .all(|e| !e.to_string().contains(REJECT_MARK)));
    // Quarantined: exactly the events the listener refused one by one.
    let path = agent.state_dir.join("spool.db");
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open spool");
    let quarantined: BTreeSet<String> = conn
        .prepare("SELECT id FROM quarantine")
        .expect("prepare")
        .query_map([], |r| r.get::<_, String>(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(quarantined, refused(&listener));
    // Status shows the count (from the supervisor's last ping, up to a second old).
    wait_for(
        "quarantine count in status",
        Duration::from_secs(10),
        || {
            let s = agent.status();
            (s["children"]["buffer"]["detail"]["quarantined"].as_u64()
                == Some(quarantined.len() as u64))
            .then_some(())
        },
    );
}

/// The listener is down while sessions produce activity events faster than the small
/// spool cap holds: the spool stays within its cap, the oldest events are evicted and
/// every eviction is reported, and shipping resumes after the listener returns. (The log
/// source does not fill the spool this way: it waits, see `logs.rs`.)
#[test]
fn outage_with_a_small_cap_evicts_the_oldest_and_reports_the_loss() {
    const SESSIONS: usize = 20;
    const CAP: u64 = 1 << 20;
    let pg = PgCluster::start("");
    let mut listener = Listener::start(TOKEN);
    listener.stop();
    let dir = shared_tempdir("pgagent-it");
    let toml = config(dir.path(), &pg, &listener.url(), 1).replace(
        "retry_max_ms = 1000\n",
        &format!(
            "retry_base_ms = 50\nretry_max_ms = 200\n[breaker]\nfail_max = 2\nreset_timeout_s = 2\n[buffer]\nmax_bytes = {CAP}\n"
        ),
    );
    // Sessions busy with a long statement: every activity cycle (1 s) makes an event of
    // a few kB for each.
    let pad = "x".repeat(4000);
    let mut sleepers: Vec<std::process::Child> = (0..SESSIONS)
        .map(|_| {
            pg.psql()
                .arg("-c")
                .arg(format!("select pg_sleep(600) /* {pad} */"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("psql")
        })
        .collect();
    let agent = Agent::start(dir.path(), &toml, &[]);
    let st = wait_for("the spool evicted", Duration::from_secs(120), || {
        let s = agent.status();
        (s["children"]["buffer"]["detail"]["evicted_total"].as_u64() > Some(0)).then_some(s)
    });
    let file_bytes = st["children"]["buffer"]["detail"]["file_bytes"]
        .as_u64()
        .expect("file_bytes");
    assert!(
        file_bytes <= CAP + CAP / 4,
        "spool is {file_bytes} bytes on disk, cap {CAP}"
    );
    assert!(!agent.logs_named("buffer_eviction_complete").is_empty());
    for s in &mut sleepers {
        let _ = s.kill();
        let _ = s.wait();
    }

    // The listener returns: shipping resumes by itself (at the next probe; the
    // probe's timing is the breaker's, unit-tested with an injected clock).
    listener.restart();
    wait_for("first accepted batch", Duration::from_secs(30), || {
        listener.received().into_iter().find(|r| r.status == 200)
    });
    // Every eviction is reported: the reports' counts add up to the spool's.
    let reports = wait_for("every eviction reported", Duration::from_secs(60), || {
        let evicted = agent.status()["children"]["buffer"]["detail"]["evicted_total"].as_u64()?;
        let reports: Vec<Value> = listener
            .accepted_events()
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| e["kind"] == "agent" && e["data"]["event"] == "events_evicted")
            .collect();
        let reported: u64 = reports
            .iter()
            .map(|r| r["data"]["evicted"].as_u64().unwrap_or(0))
            .sum();
        (reported == evicted && evicted > 0).then_some(reports)
    });
    for r in &reports {
        let by_kind: u64 = r["data"]["by_kind"]
            .as_object()
            .expect("by_kind")
            .values()
            .filter_map(Value::as_u64)
            .sum();
        assert_eq!(by_kind, r["data"]["evicted"].as_u64().unwrap_or(0), "{r}");
    }
    // And the evicted ones are the oldest: nothing delivered is older than the newest
    // event evicted.
    let time = |v: &Value| {
        v.as_str()
            .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
    };
    let newest_evicted = reports
        .iter()
        .filter_map(|r| time(&r["data"]["newest_collected_at"]))
        .max()
        .expect("a time range in the reports");
    let oldest_delivered = listener
        .accepted_events()
        .into_iter()
        .filter(|(_, e)| e["kind"] == "pg_activity")
        .filter_map(|(_, e)| time(&e["collected_at"]))
        .min()
        .expect("activity delivered");
    assert!(
        oldest_delivered >= newest_evicted,
        "delivered {oldest_delivered} is older than evicted {newest_evicted}"
    );
}

/// `kill -9` at 30 random moments while log events flow, one of them between the
/// listener's 2xx and the spool's delete: afterwards every event is at the listener,
/// an event delivered twice was re-sent in the same batch (same batch_id, same id), and
/// the spool passes SQLite's integrity check.
#[test]
fn kill_9_at_30_random_moments_loses_nothing_and_duplicates_only_unacked_batches() {
    const MARKERS: usize = 1500;
    let pg = PgCluster::start(
        "logging_collector = on\nlog_destination = 'stderr'\nlog_directory = 'log'\n\
         log_line_prefix = '%m [%p] %q%a '\nlog_statement = 'all'\nlc_messages = 'C'\n",
    );
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let faults = dir.path().join("faults");
    std::fs::create_dir_all(&faults).expect("fault dir");
    let toml = config(dir.path(), &pg, &listener.url(), 60)
        .replace(
            "logs = false\n",
            "logs = true\nactivity = false\n[logs]\nstart_at = \"beginning\"\n",
        )
        .replace(
            "retry_max_ms = 1000\n",
            "retry_base_ms = 50\nretry_max_ms = 200\nbatch_max_events = 50\n",
        );
    let env = [("POSTGRES_AGENT_FAULT_DIR", faults.to_str().expect("utf8"))];
    let script = dir.path().join("markers.sql");
    let sql: String = (0..MARKERS)
        .map(|n| format!("select 'marker-{n:05}';\nselect pg_sleep(0.004);\n"))
        .collect();
    std::fs::write(&script, sql).expect("script");
    let mut load = pg
        .psql()
        .arg("-f")
        .arg(&script)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("psql");
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    for i in 0..30 {
        let mut agent = Agent::start(dir.path(), &toml, &env);
        if i == 10 {
            // This one dies between a 2xx and the delete.
            std::fs::write(faults.join("shipper_after_2xx"), "kill").expect("fault");
            let st = agent
                .wait_exit(Duration::from_secs(20))
                .expect("killed by the fault");
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&st),
                Some(libc::SIGKILL)
            );
            continue;
        }
        std::thread::sleep(Duration::from_millis(rng.u64(50..400)));
        agent.signal(libc::SIGKILL);
        agent.wait_exit(Duration::from_secs(10)).expect("exits");
    }
    let _agent = Agent::start(dir.path(), &toml, &[]);
    assert!(load.wait().expect("load").success());
    let markers = |l: &Listener| -> std::collections::BTreeMap<String, BTreeSet<(String, String)>> {
        let mut m: std::collections::BTreeMap<String, BTreeSet<(String, String)>> =
            Default::default();
        for (batch, e) in l.accepted_events() {
            let msg = e["data"]["message"].as_str().unwrap_or_default();
            if let Some(at) = msg.find("'marker-") {
                m.entry(msg[at + 1..at + 13].to_string())
                    .or_default()
                    .insert((
                        batch.split('.').next().unwrap_or_default().to_string(),
                        e["id"].as_str().unwrap_or_default().to_string(),
                    ));
            }
        }
        m
    };
    wait_for(
        &format!("every marker (seed {seed})"),
        Duration::from_secs(90),
        || (markers(&listener).len() == MARKERS).then_some(()),
    );
    let m = markers(&listener);
    for n in 0..MARKERS {
        let name = format!("marker-{n:05}");
        let got = m
            .get(&name)
            .unwrap_or_else(|| panic!("{name} lost (seed {seed})"));
        // Delivered once, or re-sent in the same batch under the same id.
        assert_eq!(got.len(), 1, "{name} delivered as {got:?} (seed {seed})");
    }
    // At least one batch really was delivered twice (the crash after the 2xx).
    let mut seen = BTreeSet::new();
    let dup_batches = listener
        .received()
        .iter()
        .filter(|r| r.status == 200)
        .filter_map(|r| r.idempotency_key.clone())
        .filter(|k| !seen.insert(k.clone()))
        .count();
    assert!(
        dup_batches >= 1,
        "no batch was re-sent after the crash between 2xx and delete"
    );
    let conn = rusqlite::Connection::open_with_flags(
        dir.path().join("state/spool.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open spool");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok");
}
