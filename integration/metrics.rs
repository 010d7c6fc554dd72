//! The Prometheus endpoint (`[metrics] listen`), scraped by a real Prometheus.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::agent::{bin, config, Agent, TOKEN};
use crate::harness::listener::{Listener, Mode};
use crate::harness::pg::PgCluster;
use crate::harness::prometheus::{free_port, get, http, sample, Prometheus};
use crate::harness::{shared_tempdir, wait_for};

#[test]
fn prometheus_sees_the_breaker_open_during_an_outage_and_closed_after_it() {
    let pg = PgCluster::start("");
    let dir = shared_tempdir("metrics");
    let listener = Listener::start(TOKEN);
    listener.set_mode(Mode::Status(503));
    let mport = free_port();
    let toml = config(dir.path(), &pg, &listener.url(), 1).replace(
        "system = false\n",
        "system = true\n",
    ) + &format!("[metrics]\nlisten = \"127.0.0.1:{mport}\"\ndatabase = false\n[breaker]\nfail_max = 2\nreset_timeout_s = 2\n");
    let agent = Agent::start(dir.path(), &toml, &[]);
    agent.wait_log("metrics_listening", Duration::from_secs(30), |r| {
        r["addr"] == format!("127.0.0.1:{mport}")
    });

    // The agent's own page passes promtool's checks (format and naming conventions;
    // the database's families keep postgres_exporter's names, which predate them).
    let (status, text) = get(mport, "/metrics").expect("scrape");
    assert_eq!(status, 200, "{text}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing a client wrote, and no secret.
    assert!(!text.contains(TOKEN));
    assert!(!text.contains(pg.socket_dir().to_str().expect("utf8")));

    let prom = Prometheus::start(dir.path(), mport);
    prom.wait_value("up{job=\"agent\"}", 1.0);
    // The outage: 503s open the breaker, and Prometheus sees it.
    prom.wait_value("postgres_agent_shipper_breaker_state{state=\"open\"}", 1.0);
    assert_eq!(
        prom.value("postgres_agent_shipper_breaker_state{state=\"closed\"}"),
        Some(0.0)
    );
    assert!(prom.value("postgres_agent_spool_events").unwrap_or(0.0) > 0.0);
    assert_eq!(
        prom.value("postgres_agent_shipper_batches_total{outcome=\"sent\"}"),
        Some(0.0)
    );

    // The listener is back: the probe closes the breaker, batches go out, the spool
    // drains, and Prometheus sees all of it.
    listener.set_mode(Mode::Ok);
    prom.wait_value(
        "postgres_agent_shipper_breaker_state{state=\"closed\"}",
        1.0,
    );
    wait_for(
        "a sent batch in prometheus",
        Duration::from_secs(60),
        || {
            (prom.value("postgres_agent_shipper_batches_total{outcome=\"sent\"}")? > 0.0)
                .then_some(())
        },
    );
    wait_for(
        "system cycles in prometheus",
        Duration::from_secs(60),
        || {
            (prom.value("postgres_agent_source_cycles_total{source=\"system\"}")? >= 2.0)
                .then_some(())
        },
    );
    wait_for(
        "cycle durations in prometheus",
        Duration::from_secs(60),
        || {
            (prom.value(
                "postgres_agent_source_cycle_duration_seconds_count{source=\"pg_activity\"}",
            )? >= 2.0)
                .then_some(())
        },
    );
    // Its own figures agree with the agent's status at the same moment.
    let (_, text) = get(mport, "/metrics").expect("scrape");
    let status = agent.status();
    let sent = status["children"]["shipper"]["detail"]["events_sent_total"]
        .as_f64()
        .expect("events_sent_total");
    let scraped = sample(
        &text,
        "postgres_agent_shipper_events_sent_total{output=\"listener\"}",
    )
    .expect("sample");
    assert!(
        scraped <= sent && scraped > 0.0,
        "{scraped} vs status {sent}"
    );
    assert_eq!(
        status["metrics"],
        format!("serving http://127.0.0.1:{mport}/metrics")
    );
}

#[test]
fn the_endpoint_answers_only_get_of_its_paths_and_survives_garbage() {
    let pg = PgCluster::start("");
    let dir = shared_tempdir("metrics-http");
    let listener = Listener::start(TOKEN);
    let mport = free_port();
    let toml = config(dir.path(), &pg, &listener.url(), 1)
        + &format!("[metrics]\nlisten = \"127.0.0.1:{mport}\"\n");
    let agent = Agent::start(dir.path(), &toml, &[]);
    agent.wait_log("metrics_listening", Duration::from_secs(30), |_| true);
    assert_eq!(get(mport, "/").map(|r| r.0), Some(200));
    assert_eq!(get(mport, "/nope").map(|r| r.0), Some(404));
    assert_eq!(
        http(mport, "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n").map(|r| r.0),
        Some(405)
    );
    assert_eq!(
        http(mport, "\u{1}\u{2} garbage\r\n\r\n").map(|r| r.0),
        Some(400)
    );
    // A head too large is refused, a silent client is dropped, neither stops the next
    // scrape.
    let big = format!(
        "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(64 << 10)
    );
    let refused = http(mport, &big).map(|r| r.0);
    assert!(matches!(refused, Some(400 | 431) | None), "{refused:?}");
    let silent: Vec<TcpStream> = (0..20)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", mport)).ok())
        .collect();
    wait_for(
        "a scrape while idle clients hold connections",
        Duration::from_secs(30),
        || get(mport, "/metrics").filter(|r| r.0 == 200).map(|_| ()),
    );
    drop(silent);
    let head = http(mport, "HEAD /metrics HTTP/1.0\r\n\r\n").expect("head");
    assert_eq!(head, (200, String::new()));
}

#[test]
fn a_taken_port_is_said_once_the_agent_ships_on_and_takes_the_port_when_freed() {
    let pg = PgCluster::start("");
    let dir = shared_tempdir("metrics-taken");
    let listener = Listener::start(TOKEN);
    let blocker = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mport = blocker.local_addr().expect("addr").port();
    let toml = config(dir.path(), &pg, &listener.url(), 1)
        + &format!("[metrics]\nlisten = \"127.0.0.1:{mport}\"\n");
    let agent = Agent::start(dir.path(), &toml, &[]);
    let failed = agent.wait_log("metrics_listen_failed", Duration::from_secs(30), |_| true);
    let error = failed["error"].as_str().expect("error").to_string();
    assert!(
        error.contains(&format!("127.0.0.1:{mport}")) && error.contains("metrics.listen"),
        "{error}"
    );
    assert!(error.to_lowercase().contains("in use"), "{error}");
    // The rest of the agent works: events reach the listener.
    wait_for("events at the listener", Duration::from_secs(30), || {
        (!listener.events_of("pg_activity").is_empty()).then_some(())
    });
    assert_eq!(agent.status()["metrics"], error.as_str());
    drop(blocker);
    agent.wait_log("metrics_recovered", Duration::from_secs(60), |_| true);
    assert_eq!(get(mport, "/metrics").map(|r| r.0), Some(200));
    // Said once while it lasted, however many retries.
    assert_eq!(agent.logs_named("metrics_listen_failed").len(), 1);
}

#[test]
fn a_bad_listen_address_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (value, want) in [
        ("localhost:9188", "expected an IP address and port"),
        ("127.0.0.1", "expected an IP address and port"),
        ("127.0.0.1:0", "port 0"),
    ] {
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            format!("[agent]\nproject_id = \"p\"\nstate_dir = \"/tmp/x\"\n[metrics]\nlisten = \"{value}\"\n"),
        )
        .expect("write");
        let out = Command::new(bin())
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{value}: {err}");
        assert!(
            err.contains("metrics.listen") && err.contains(want),
            "{value}: {err}"
        );
    }
}

/// `check` output for `[metrics] listen`: free, held by the agent, held by another.
fn check_metrics_line(config: &Path) -> (i32, String) {
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(config)
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines().skip_while(|l| !l.contains("metrics "));
    let mut line = lines.next().unwrap_or_default().to_string();
    for fix in lines.take_while(|l| l.starts_with("      fix:")) {
        line = format!("{line}\n{fix}");
    }
    (out.status.code().unwrap_or(-1), line)
}

#[test]
fn check_says_whether_the_metrics_port_is_free_the_agents_or_taken() {
    let pg = PgCluster::start("");
    let dir = shared_tempdir("metrics-check");
    let listener = Listener::start(TOKEN);
    let mport = free_port();
    let toml = config(dir.path(), &pg, &listener.url(), 1)
        + &format!("[metrics]\nlisten = \"127.0.0.1:{mport}\"\n");
    let path = dir.path().join("check.toml");
    std::fs::write(&path, &toml).expect("write");
    let (code, line) = check_metrics_line(&path);
    assert_eq!(
        line,
        format!("ok    metrics   127.0.0.1:{mport} is free: the agent will serve http://127.0.0.1:{mport}/metrics")
    );
    assert_eq!(code, 0);
    // The database's page: what the sources turned off leave out (only activity is on).
    let said = |path: &Path| {
        let out = Command::new(bin())
            .args(["check", "-c"])
            .arg(path)
            .output()
            .expect("check");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(" dbmetrics "))
            .map(str::to_string)
            .collect::<Vec<String>>()
    };
    let lacking: Vec<String> = said(&path)
        .iter()
        .map(|l| {
            let key = l.rsplit("[collection] ").next().unwrap_or_default();
            assert!(
                l.starts_with("warn  dbmetrics the database's metrics lack "),
                "{l}"
            );
            key.to_string()
        })
        .collect();
    assert_eq!(
        lacking,
        [
            "locks is off",
            "statements is off",
            "databases is off",
            "tables is off",
            "server_stats is off",
            "settings is off",
            "replication is off",
            "vacuum_progress is off"
        ]
    );
    let off = dir.path().join("off.toml");
    std::fs::write(&off, toml.clone() + "database = false\n").expect("write");
    assert_eq!(
        said(&off),
        ["ok    dbmetrics off ([metrics] database = false): the page serves the agent's own figures"]
    );
    let all = dir.path().join("all.toml");
    let every = toml
        .replace(" = false\n", " = true\n")
        .replace("logs = true", "logs = false");
    std::fs::write(&all, every).expect("write");
    assert_eq!(
        said(&all),
        ["ok    dbmetrics the database's metrics are served under postgres_exporter's names from every source's latest reading"]
    );

    let agent = Agent::start(dir.path(), &toml, &[]);
    agent.wait_log("metrics_listening", Duration::from_secs(30), |_| true);
    let (code, line) = check_metrics_line(&path);
    assert_eq!(
        line,
        format!("ok    metrics   http://127.0.0.1:{mport}/metrics is served by a running agent")
    );
    assert_eq!(code, 0);
    drop(agent);

    let blocker = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = blocker.local_addr().expect("addr").port();
    std::fs::write(
        &path,
        toml.replace(&format!(":{mport}\""), &format!(":{taken}\"")),
    )
    .expect("write");
    let (code, line) = check_metrics_line(&path);
    assert_eq!(
        line,
        format!("FAIL  metrics   127.0.0.1:{taken} is in use by another program\n      fix: set metrics.listen to a free port, or stop what holds it (ss -ltnp 'sport = :{taken}')")
    );
    assert_eq!(code, 69);
}

#[test]
fn every_scrape_succeeds_while_silent_and_trickling_clients_hold_connections() {
    let pg = PgCluster::start("");
    let dir = shared_tempdir("metrics-http");
    let listener = Listener::start(TOKEN);
    let mport = free_port();
    let toml = config(dir.path(), &pg, &listener.url(), 1)
        + &format!("[metrics]\nlisten = \"127.0.0.1:{mport}\"\n");
    let agent = Agent::start(dir.path(), &toml, &[]);
    agent.wait_log("metrics_listening", Duration::from_secs(30), |_| true);
    let connect = move || TcpStream::connect(("127.0.0.1", mport)).expect("connect");
    // Sixteen clients that connect and say nothing.
    let _silent: Vec<TcpStream> = (0..16).map(|_| connect()).collect();
    // Sixty-four that send one byte of a request head a second, never finishing it, and
    // connect again when the server gives up on them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rounds = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let trickler = {
        let (stop, rounds) = (stop.clone(), rounds.clone());
        std::thread::spawn(move || {
            let head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ";
            let mut clients: Vec<(TcpStream, usize)> = (0..64).map(|_| (connect(), 0)).collect();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (sock, sent) in clients.iter_mut() {
                    let byte = [head.get(*sent).copied().unwrap_or(b'a')];
                    if sock.write_all(&byte).is_err() {
                        *sock = connect();
                        *sent = 0;
                    } else {
                        *sent += 1;
                    }
                }
                rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // One byte a second is the attack's own pace.
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    // Scrapes one after another for eight rounds of the trickle (past the server's 5 s
    // limit on a head, so through its closing and the clients' coming back): each one
    // answers, first time.
    let mut scrapes = 0;
    while rounds.load(std::sync::atomic::Ordering::Relaxed) < 8 {
        let r = get(mport, "/metrics");
        assert_eq!(
            r.as_ref().map(|r| r.0),
            Some(200),
            "scrape {scrapes}: {r:?}"
        );
        assert!(r.is_some_and(|r| r.1.contains("postgres_agent_child_up")));
        scrapes += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    trickler.join().expect("trickler");
    assert!(scrapes > 8, "{scrapes} scrapes");
}

/// The samples of `family` on a page, by their label text.
fn page_samples(page: &str, family: &str) -> std::collections::BTreeMap<String, f64> {
    page.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(family)?;
            let (labels, v) = match rest.strip_prefix('{') {
                Some(r) => r.rsplit_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            Some((labels.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[test]
fn log_insights_on_the_page_count_exactly_the_messages_shipped() {
    let mut pg = PgCluster::init(&format!(
        "{}log_destination = 'csvlog'\nlog_directory = 'log'\nautovacuum = off\n",
        crate::logs::LOG_CONF
    ));
    pg.start_server();
    pg.sql("CREATE TABLE queue(id int)");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("insights");
    let mport = free_port();
    let toml = config(dir.path(), &pg, &listener.url(), 1)
        .replace("sample_interval_ms = 0\n", "sample_interval_ms = 1000\n")
        .replace(
            "locks = false\n",
            "locks = true\nlocks_blocking_interval_s = 1\n",
        )
        .replace(
            "logs = false\n",
            "logs = true\n[logs]\nstart_at = \"beginning\"\n",
        )
        + &format!("[metrics]\nlisten = \"127.0.0.1:{mport}\"\n");
    let _agent = Agent::start(dir.path(), &toml, &[]);

    // Three slow statements, an error, a lock wait that ends, a checkpoint.
    for _ in 0..3 {
        pg.sql("SELECT pg_sleep(0.2)");
    }
    assert!(!pg.try_sql("SELECT 1/0"));
    let holder = pg.session("holder", "BEGIN; LOCK queue; SELECT pg_sleep(1.5); COMMIT;");
    wait_for("the lock held", Duration::from_secs(30), || {
        (pg.sql("SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND relation = 'queue'::regclass") == "1").then_some(())
    });
    pg.sql("BEGIN; LOCK queue; COMMIT;");
    assert!(holder.wait());
    pg.sql("CHECKPOINT");

    let shipped = |class: &str| {
        listener
            .events_of("pg_log")
            .into_iter()
            .filter(|e| e["data"]["class"] == class)
            .collect::<Vec<_>>()
    };
    wait_for(
        "the checkpoint and the lock shipped",
        Duration::from_secs(60),
        || {
            let done = shipped("checkpoint")
                .iter()
                .any(|e| e["data"]["figures"]["phase"] == "complete")
                && !shipped("lock_acquired").is_empty()
                && shipped("slow_query").len() >= 3;
            done.then_some(())
        },
    );
    // Every (class, severity) on the page is what was shipped, once everything read is.
    let (page, events) = wait_for(
        "the page agrees with the events",
        Duration::from_secs(60),
        || {
            let (_, page) = get(mport, "/metrics")?;
            let events = listener.events_of("pg_log");
            let mut want = std::collections::BTreeMap::new();
            for e in &events {
                let sev = e["data"]["severity"].as_str().unwrap_or("none").to_string();
                let class = e["data"]["class"].as_str().unwrap_or_default().to_string();
                *want
                    .entry(format!("class=\"{class}\",error_severity=\"{sev}\""))
                    .or_insert(0.0) += 1.0;
            }
            (page_samples(&page, "postgres_agent_log_messages_total") == want)
                .then_some((page, events))
        },
    );
    let count = |class: &str| {
        events
            .iter()
            .filter(|e| e["data"]["class"] == class)
            .count() as f64
    };
    assert_eq!(
        page_samples(
            &page,
            "postgres_agent_log_slow_query_duration_seconds_count"
        )
        .get(""),
        Some(&count("slow_query"))
    );
    assert!(count("slow_query") >= 3.0);
    let below = page_samples(
        &page,
        "postgres_agent_log_slow_query_duration_seconds_bucket",
    );
    assert_eq!(
        below.get("le=\"0.1\""),
        Some(&0.0),
        "every logged statement took 150 ms or more"
    );
    assert_eq!(
        page_samples(&page, "postgres_agent_log_lock_wait_seconds_count").get(""),
        Some(&count("lock_acquired"))
    );
    let waited = page_samples(&page, "postgres_agent_log_lock_wait_seconds_sum")[""];
    assert!((0.5..30.0).contains(&waited), "waited {waited} s");
    let completes = events
        .iter()
        .filter(|e| {
            e["data"]["class"] == "checkpoint" && e["data"]["figures"]["phase"] == "complete"
        })
        .count() as f64;
    assert_eq!(
        page_samples(
            &page,
            "postgres_agent_log_checkpoint_duration_seconds_count"
        )
        .get(""),
        Some(&completes)
    );
    // The sampler saw the waiting session waiting for a lock.
    let time = page_samples(&page, "postgres_agent_session_seconds_total");
    assert!(
        time.get("state=\"active\",wait_event_type=\"Lock\"")
            .is_some_and(|s| *s >= 1.0),
        "{time:?}"
    );
}
