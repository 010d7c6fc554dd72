//! SIGHUP reloads (and keeps the old config when the new one is broken); SIGUSR1 writes
//! the status dump.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::harness::agent::{config, Agent, TOKEN};
use crate::harness::listener::Listener;
use crate::harness::pg::PgCluster;
use crate::harness::{shared_tempdir, wait_for};

/// Distinct pg_activity sample times after `after`, in order.
fn sample_times(listener: &Listener, after: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let set: BTreeSet<DateTime<Utc>> = listener
        .events_of("pg_activity")
        .iter()
        .filter_map(|e| e["collected_at"].as_str())
        .filter_map(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .filter(|t| *t > after)
        .collect();
    set.into_iter().collect()
}

fn gaps(times: &[DateTime<Utc>]) -> Vec<f64> {
    times
        .windows(2)
        .map(|w| (w[1] - w[0]).num_milliseconds() as f64 / 1000.0)
        .collect()
}

#[test]
fn sighup_applies_a_new_interval_and_keeps_the_old_config_when_broken() {
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let _s = pg.session("app", "select pg_sleep(120)");
    let toml = config(dir.path(), &pg, &listener.url(), 1);
    let agent = Agent::start(dir.path(), &toml, &[]);
    let start = Utc::now();
    wait_for("1 s samples", Duration::from_secs(20), || {
        (sample_times(&listener, start).len() >= 3).then_some(())
    });

    std::fs::write(
        &agent.config_path,
        toml.replace("interval_s = 1", "interval_s = 3"),
    )
    .expect("rewrite");
    agent.signal(libc::SIGHUP);
    let applied = agent.wait_log("reload_applied", Duration::from_secs(10), |_| true);
    // Only the collector's settings changed: only it was restarted.
    assert_eq!(applied["restarted"], "pg_activity");
    let reloaded = Utc::now();
    let times = wait_for(
        "4 samples at the new interval",
        Duration::from_secs(30),
        || {
            let t = sample_times(&listener, reloaded);
            (t.len() >= 4).then_some(t)
        },
    );
    for g in gaps(&times) {
        assert!(
            (2.5..=3.5).contains(&g),
            "gap {g}s after reload to 3s: {times:?}"
        );
    }

    // A broken file: rejected with the key named, the agent keeps the 3 s interval.
    std::fs::write(
        &agent.config_path,
        toml.replace("interval_s = 1", "interval_s = 0"),
    )
    .expect("rewrite");
    agent.signal(libc::SIGHUP);
    let rejected = agent.wait_log("reload_rejected", Duration::from_secs(10), |_| true);
    assert!(
        rejected["error"]
            .as_str()
            .is_some_and(|e| e.contains("collection.interval_s")),
        "{rejected}"
    );
    let after = Utc::now();
    let times = wait_for(
        "samples after the rejected reload",
        Duration::from_secs(30),
        || {
            let t = sample_times(&listener, after);
            (t.len() >= 3).then_some(t)
        },
    );
    for g in gaps(&times) {
        assert!(
            (2.5..=3.5).contains(&g),
            "gap {g}s after rejected reload: {times:?}"
        );
    }
    assert_eq!(agent.logs_named("reload_applied").len(), 1);
    // `status` shows the running agent (which recorded the rejection), and the file's
    // problem as a line of it, not as its end.
    let dump = agent.status();
    assert_eq!(dump["last_reload"]["applied"], false);
    let out = std::process::Command::new(crate::harness::agent::bin())
        .args(["status", "-c"])
        .arg(&agent.config_path)
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("(pid {})", agent.pid())), "{text}");
    assert!(
        text.contains(&format!(
            "config    {} cannot be loaded now; the running agent keeps the configuration it last accepted",
            agent.config_path.display()
        )) && text.contains("collection.interval_s"),
        "{text}"
    );
    // A state directory the agent cannot use: rejected as `check` would, before the
    // spool is stopped.
    let state = agent.state_dir.display().to_string();
    std::fs::write(
        &agent.config_path,
        toml.replace("interval_s = 1", "interval_s = 3")
            .replace(&state, "/dev/null/state"),
    )
    .expect("rewrite");
    agent.signal(libc::SIGHUP);
    let rejected = wait_for("the second rejection", Duration::from_secs(10), || {
        agent.logs_named("reload_rejected").get(1).cloned()
    });
    assert!(
        rejected["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("agent.state_dir: cannot write in /dev/null/state")),
        "{rejected}"
    );
    assert_eq!(agent.logs_named("reload_applied").len(), 1);
    assert!(
        agent.logs_named("spool_open_failed").is_empty(),
        "{}",
        agent.stderr()
    );
    agent.signal(libc::SIGUSR1);
    let status = wait_for(
        "status with the rejected reload",
        Duration::from_secs(10),
        || {
            let s: serde_json::Value =
                serde_json::from_slice(&std::fs::read(agent.state_dir.join("status.json")).ok()?)
                    .ok()?;
            (s["trigger"] == "sigusr1").then_some(s)
        },
    );
    assert_eq!(status["last_reload"]["applied"], false);
}

#[test]
fn sigusr1_writes_status_json_without_secrets() {
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let toml = config(dir.path(), &pg, &listener.url(), 1);
    let agent = Agent::start(dir.path(), &toml, &[]);
    // Three samples a second apart: the supervisor has pinged every child by then.
    let start = Utc::now() - chrono::Duration::seconds(1);
    wait_for("three samples", Duration::from_secs(20), || {
        (sample_times(&listener, start).len() >= 3).then_some(())
    });
    let path = agent.state_dir.join("status.json");
    let before = Utc::now();
    agent.signal(libc::SIGUSR1);
    let s = wait_for("status.json from SIGUSR1", Duration::from_secs(10), || {
        let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        let written: DateTime<Utc> = s["written_at"].as_str()?.parse().ok()?;
        (s["trigger"] == "sigusr1" && written >= before).then_some(s)
    });
    assert_eq!(s["pid"], agent.pid());
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    for child in ["buffer", "shipper", "pg_activity"] {
        assert_eq!(s["children"][child]["state"], "running", "{child}: {s}");
        assert_eq!(s["children"][child]["restarts"], 0);
    }
    assert!(s["children"]["pg_activity"]["detail"]["cycles_total"].as_u64() >= Some(1));
    assert_eq!(s["children"]["shipper"]["detail"]["last_http_status"], 200);
    assert!(s["children"]["buffer"]["detail"]["depth"].is_u64());
    // The log drain is asynchronous: the line may follow the file by a moment.
    wait_for("status_dump logged", Duration::from_secs(10), || {
        (!agent.logs_named("status_dump").is_empty()).then_some(())
    });
    let dumped = agent.logs_named("status_dump");
    assert_eq!(dumped.len(), 1);
    // An object in the JSON log, not a string holding JSON.
    assert_eq!(dumped[0]["status"]["pid"], agent.pid(), "{}", dumped[0]);
    assert_eq!(
        dumped[0]["status"]["children"]["shipper"]["state"],
        "running"
    );

    // `status` prints it for a person.
    let out = std::process::Command::new(crate::harness::agent::bin())
        .args(["status", "-c"])
        .arg(&agent.config_path)
        .output()
        .expect("status");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("(pid {})", agent.pid())), "{text}");
    assert!(
        text.lines().any(|l| {
            let mut cols = l.split_whitespace();
            cols.next() == Some("pg_activity") && cols.next() == Some("running")
        }),
        "{text}"
    );
    assert!(
        text.contains("delivery: breaker closed, last HTTP 200"),
        "{text}"
    );
    assert!(text.contains("spool:    "), "{text}");

    // The token appears nowhere: not in status.json, not in the log, not in `status`.
    let status_text = std::fs::read_to_string(&path).expect("read");
    for (what, text) in [
        ("status.json", status_text),
        ("log", agent.stderr()),
        ("status", text.into_owned()),
    ] {
        assert!(!text.contains(TOKEN), "token leaked into {what}");
    }
}

#[test]
fn systemd_is_notified_of_ready_reload_watchdog_and_stop() {
    use std::os::unix::net::UnixDatagram;
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let toml = config(dir.path(), &pg, &listener.url(), 1);
    let mut agent = Agent::start(
        dir.path(),
        &toml,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().expect("utf8")),
            ("WATCHDOG_USEC", "1000000"),
            ("WATCHDOG_PID", "self"),
        ],
    );
    let mut seen: Vec<String> = Vec::new();
    let recv_until = |what: &str, pred: &dyn Fn(&str) -> bool, seen: &mut Vec<String>| {
        wait_for(what, Duration::from_secs(10), || {
            let mut buf = [0u8; 4096];
            if let Ok(n) = sock.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            seen.iter().position(|m| pred(m)).map(|i| seen.remove(i))
        })
    };
    let ready = recv_until("READY=1", &|m| m.contains("READY=1"), &mut seen);
    assert!(ready.contains("STATUS=running"), "{ready}");
    // WATCHDOG_USEC=1 s: it keeps petting (every half second: `Systemd`'s unit
    // test; the timing is not asserted here, a loaded machine would break it).
    for _ in 0..4 {
        recv_until("WATCHDOG=1", &|m| m.trim() == "WATCHDOG=1", &mut seen);
    }

    agent.signal(libc::SIGHUP);
    let reloading = recv_until("RELOADING=1", &|m| m.contains("RELOADING=1"), &mut seen);
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    recv_until(
        "READY=1 after reload",
        &|m| m.contains("READY=1"),
        &mut seen,
    );

    agent.signal(libc::SIGTERM);
    recv_until("STOPPING=1", &|m| m.contains("STOPPING=1"), &mut seen);
    assert_eq!(
        agent
            .wait_exit(Duration::from_secs(10))
            .and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn a_second_sigterm_cuts_the_shutdown_short_with_its_own_exit_code_and_a_flushed_log() {
    let pg = PgCluster::start("");
    let mut listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    // A long grace period: the final flush is still waiting when the second signal comes.
    let toml = config(dir.path(), &pg, &listener.url(), 1)
        .replace("shutdown_grace_s = 5", "shutdown_grace_s = 120");
    let mut agent = Agent::start(dir.path(), &toml, &[]);
    listener.wait_first_request();
    // The listener goes away, events wait in the spool: the final flush cannot finish.
    listener.stop();
    wait_for(
        "events waiting in the spool",
        Duration::from_secs(30),
        || (!agent.spool_ids().is_empty()).then_some(()),
    );
    agent.signal(libc::SIGTERM);
    agent.wait_log("shutdown_started", Duration::from_secs(10), |_| true);
    // A reload during the final flush is refused: it would restart children mid-flush.
    std::fs::write(
        &agent.config_path,
        toml.replace("interval_s = 1", "interval_s = 3"),
    )
    .expect("rewrite");
    agent.signal(libc::SIGHUP);
    let refused = agent.wait_log("reload_rejected", Duration::from_secs(10), |_| true);
    assert_eq!(refused["error"], "the agent is stopping", "{refused}");
    assert!(
        agent.logs_named("reload_applied").is_empty(),
        "{}",
        agent.stderr()
    );
    agent.signal(libc::SIGTERM);
    let code = agent
        .wait_exit(Duration::from_secs(30))
        .and_then(|s| s.code());
    assert_eq!(code, Some(143), "{}", agent.stderr());
    // The log was flushed on the way out: the reason is its last word.
    let cut = agent.logs_named("shutdown_cut_short");
    assert_eq!(cut.len(), 1, "{}", agent.stderr());
    assert_eq!(cut[0]["exit_code"], 143);
    assert!(
        agent.logs_named("agent_stopped").is_empty(),
        "{}",
        agent.stderr()
    );
}
