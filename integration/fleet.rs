//! One agent, several servers (`[[servers]]`): each server's events under its name and
//! project, a server whose every process is stopped delays no other, and a reload adds
//! and removes servers without restarting the others.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::harness::agent::{Agent, TOKEN};
use crate::harness::listener::Listener;
use crate::harness::pg::{bin_of, PgCluster};
use crate::harness::prometheus::{free_port, get, sample};
use crate::harness::{shared_tempdir, wait_for};

/// The agent's config: shared `[database]` and `[collection]` defaults, then one
/// `[[servers]]` entry per (name, cluster, extra lines of the entry).
fn fleet_config(dir: &Path, listener: &Listener, servers: &[(&str, &PgCluster, &str)]) -> String {
    let mut toml = format!(
        "[agent]\nproject_id = \"it-project\"\nhostname = \"it-host\"\nstate_dir = \"{}\"\nshutdown_grace_s = 5\n\
         [database]\nuser = \"postgres\"\ndbname = \"postgres\"\nconnect_timeout_ms = 1000\nstatement_timeout_ms = 1000\n\
         [collection]\ninterval_s = 1\nsample_interval_ms = 0\n\
         databases = false\ntables = false\nvacuum_progress = false\nhorizon = false\nreplication = false\nserver_stats = false\nsettings = false\nplans = false\n\
         statements = false\nlocks = false\nsystem = false\nlogs = false\n\
         [listener]\nurl = \"{}\"\ntoken = \"{TOKEN}\"\ntimeout_ms = 2000\nretry_max_ms = 1000\n",
        dir.join("state").display(),
        listener.url(),
    );
    for (name, pg, extra) in servers {
        toml.push_str(&format!(
            "[[servers]]\nname = \"{name}\"\n{extra}[servers.database]\nhost = \"{}\"\nport = {}\n",
            pg.socket_dir().display(),
            pg.port,
        ));
    }
    toml
}

/// The `pg_activity` sample times received from `server`.
fn samples_of(listener: &Listener, server: &str) -> BTreeSet<String> {
    listener
        .events_of("pg_activity")
        .iter()
        .filter(|e| e["server"] == server)
        .filter_map(|e| e["collected_at"].as_str().map(String::from))
        .collect()
}

/// Every process of a cluster: its postmaster (first line of `postmaster.pid`) and the
/// postmaster's children.
fn cluster_pids(pg: &PgCluster) -> Vec<i32> {
    let pidfile =
        std::fs::read_to_string(pg.data().join("postmaster.pid")).expect("postmaster.pid");
    let postmaster: i32 = pidfile
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("pid");
    let mut pids = vec![postmaster];
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After the command's closing parenthesis: state, then the parent's pid.
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1)?.parse::<i32>().ok());
        if ppid == Some(postmaster) {
            pids.push(pid);
        }
    }
    pids
}

fn signal_all(pids: &[i32], sig: i32) {
    for &pid in pids {
        // SAFETY: kill(2) on processes of a cluster this test started.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Children named in a status dump.
fn children(status: &Value) -> BTreeSet<String> {
    status["children"]
        .as_object()
        .map(|c| c.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn each_server_ships_under_its_name_and_project_and_a_stopped_one_delays_no_other() {
    let dir = shared_tempdir("fleet");
    let alpha = PgCluster::start("");
    let beta = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let mut toml = fleet_config(
        dir.path(),
        &listener,
        &[
            ("alpha", &alpha, ""),
            ("beta", &beta, "project_id = \"beta-project\"\n"),
        ],
    );
    let mport = free_port();
    toml.push_str(&format!("[metrics]\nlisten = \"127.0.0.1:{mport}\"\n"));
    let mut agent = Agent::start(dir.path(), &toml, &[]);

    wait_for("both servers' samples", Duration::from_secs(60), || {
        (samples_of(&listener, "alpha").len() >= 2 && samples_of(&listener, "beta").len() >= 2)
            .then_some(())
    });
    let events = listener.events_of("pg_activity");
    for e in &events {
        let project = match e["server"].as_str() {
            Some("alpha") => "it-project",
            Some("beta") => "beta-project",
            other => panic!("an event of server {other:?}: {e}"),
        };
        assert_eq!(e["project"], project, "{e}");
    }
    // Both servers sample at the same instants: their events' ids still differ.
    let ids: BTreeSet<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), events.len(), "every event's id is its own");
    let status = agent.status();
    let names = children(&status);
    for child in ["buffer", "shipper", "alpha/pg_activity", "beta/pg_activity"] {
        assert!(names.contains(child), "{child} in {names:?}");
        assert_eq!(status["children"][child]["state"], "running", "{child}");
    }
    assert!(!names.contains("pg_activity"), "{names:?}");
    // The agent's own families: a series per server, labelled with its name.
    let page = wait_for("the metrics page", Duration::from_secs(30), || {
        get(mport, "/metrics").map(|(_, page)| page)
    });
    for server in ["alpha", "beta"] {
        let up = format!("postgres_agent_child_up{{child=\"pg_activity\",server=\"{server}\"}}");
        assert_eq!(sample(&page, &up), Some(1.0), "{up} in:\n{page}");
        let cycles = format!(
            "postgres_agent_source_cycles_total{{server=\"{server}\",source=\"pg_activity\"}}"
        );
        assert!(
            sample(&page, &cycles).is_some_and(|n| n >= 1.0),
            "{cycles} in:\n{page}"
        );
    }
    assert_eq!(
        sample(
            &page,
            "postgres_agent_child_up{child=\"buffer\",server=\"\"}"
        ),
        Some(1.0)
    );
    // The database's families: every server's series in one family each, told apart
    // by the server's name.
    let page = wait_for("both servers' pg_up", Duration::from_secs(30), || {
        let (_, page) = get(mport, "/metrics")?;
        ["alpha", "beta"]
            .iter()
            .all(|s| sample(&page, &format!("pg_up{{server=\"{s}\"}}")) == Some(1.0))
            .then_some(page)
    });
    let types: Vec<&str> = page.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let distinct: BTreeSet<&str> = types
        .iter()
        .map(|l| l.split(' ').nth(2).unwrap_or_default())
        .collect();
    assert_eq!(types.len(), distinct.len(), "a family named twice:\n{page}");
    for s in ["alpha", "beta"] {
        let series = format!(
            "pg_stat_activity_count{{datname=\"postgres\",server=\"{s}\",state=\"active\"}}"
        );
        assert!(
            page.lines().any(|l| l.starts_with(&series)),
            "{series} in:\n{page}"
        );
    }

    // Every process of beta stops: its queries and connections hang. Alpha's cycles go
    // on, one per second, while beta's are stuck.
    let pids = cluster_pids(&beta);
    signal_all(&pids, libc::SIGSTOP);
    let stuck = samples_of(&listener, "beta").len();
    let alpha_before = samples_of(&listener, "alpha").len();
    wait_for(
        "alpha sampling on while beta is stopped",
        Duration::from_secs(60),
        || (samples_of(&listener, "alpha").len() >= alpha_before + 5).then_some(()),
    );
    let beta_meanwhile = samples_of(&listener, "beta").len();
    signal_all(&pids, libc::SIGCONT);
    // Alpha kept its schedule: no tick of it found its previous cycle still running.
    let skipped: Vec<Value> = agent
        .logs_named("collect_cycle_skipped")
        .into_iter()
        .filter(|r| r["child"] == "alpha/pg_activity")
        .collect();
    assert!(skipped.is_empty(), "{skipped:?}");
    // At most a sample beta read as it was stopped.
    assert!(
        beta_meanwhile <= stuck + 1,
        "beta: {stuck} then {beta_meanwhile}"
    );
    wait_for("beta sampling again", Duration::from_secs(60), || {
        (samples_of(&listener, "beta").len() >= beta_meanwhile + 2).then_some(())
    });

    // A reload removes beta and adds gamma (the same cluster under another name): alpha's
    // collector goes on, not restarted.
    let toml = fleet_config(
        dir.path(),
        &listener,
        &[("alpha", &alpha, ""), ("gamma", &beta, "")],
    );
    std::fs::write(dir.path().join("agent.toml"), &toml).expect("config");
    agent.signal(libc::SIGHUP);
    let applied = agent.wait_log("reload_applied", Duration::from_secs(30), |_| true);
    // The shipper, too: beta's project is no longer one of the events' projects.
    assert_eq!(
        applied["restarted"], "shipper,gamma/pg_activity",
        "{applied}"
    );
    wait_for("gamma's samples", Duration::from_secs(60), || {
        (samples_of(&listener, "gamma").len() >= 2).then_some(())
    });
    let status = agent.status();
    let names = children(&status);
    assert!(names.contains("gamma/pg_activity"), "{names:?}");
    // A removed server's children leave status with it.
    assert!(!names.contains("beta/pg_activity"), "{names:?}");
    assert_eq!(status["children"]["alpha/pg_activity"]["state"], "running");
    let restarts: Vec<Value> = agent
        .logs_named("child_started")
        .into_iter()
        .filter(|r| r["child"] == "alpha/pg_activity")
        .collect();
    assert_eq!(restarts.len(), 1, "alpha started once: {restarts:?}");
    let beta_after = samples_of(&listener, "beta").len();
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(30)).expect("exit");
    // Nothing of beta after it was removed but what was in flight.
    assert!(samples_of(&listener, "beta").len() <= beta_after);
}

#[test]
fn check_and_once_go_through_every_server_under_its_name() {
    let dir = shared_tempdir("fleet-check");
    let alpha = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let gone = dir.path().join("no-server-here");
    std::fs::create_dir_all(&gone).expect("dir");
    let mut toml = fleet_config(dir.path(), &listener, &[("alpha", &alpha, "")]);
    toml.push_str(&format!(
        "[[servers]]\nname = \"gone\"\n[servers.database]\nhost = \"{}\"\nport = 5999\n",
        gone.display()
    ));
    toml.push_str("[[servers]]\nname = \"far\"\n[servers.database]\nhost = \"192.0.2.7\"\n");
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, &toml).expect("config");

    let out = std::process::Command::new(crate::harness::agent::bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(69), "{text}");
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{text}"))
            .to_string()
    };
    line("ok    alpha/database");
    assert!(
        line("ok    alpha/server ")
            .ends_with("is on this host: everything over SQL (system and logs are off)"),
        "{text}"
    );
    line("FAIL  gone/database");
    // Its fix names the keys under the server's entry.
    let fix = text
        .lines()
        .skip_while(|l| !l.starts_with("FAIL  gone/database"))
        .nth(1)
        .unwrap_or_default();
    assert!(fix.contains("servers.gone.database.host"), "{fix}");
    assert!(
        line("ok    far/server").contains(
            "192.0.2.7:5432 is another host's: everything over SQL, no host metrics, no log"
        ),
        "{text}"
    );
    line("FAIL  far/database");

    // `once`: each server's events under its name, the failures named after theirs.
    let out = std::process::Command::new(crate::harness::agent::bin())
        .args(["once", "-c"])
        .arg(&path)
        .output()
        .expect("once");
    assert_eq!(out.status.code(), Some(69));
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let servers: BTreeSet<&str> = events.iter().filter_map(|e| e["server"].as_str()).collect();
    assert_eq!(servers, BTreeSet::from(["alpha"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("postgres-agent: gone/pg_activity: "), "{err}");
    assert!(err.contains("postgres-agent: far/pg_activity: "), "{err}");
}

/// The deltas of `pg_databases` events of `server`: none may be negative.
fn negative_deltas(listener: &Listener, server: &str) -> Vec<Value> {
    listener
        .events_of("pg_databases")
        .into_iter()
        .filter(|e| e["server"] == server)
        .filter(|e| {
            e["data"]["deltas"]
                .as_object()
                .is_some_and(|d| d.values().any(|v| v.as_f64().is_some_and(|x| x < 0.0)))
        })
        .collect()
}

#[test]
fn one_agent_watches_several_versions_and_a_failover_pair_each_under_its_name() {
    let dir = shared_tempdir("fleet-versions");
    let v12 = PgCluster::start_with(&bin_of(12), "");
    let v18 = PgCluster::start_with(&bin_of(18), "");
    let primary = PgCluster::start("");
    let standby = PgCluster::standby_of(&primary, "standby1");
    wait_for("the standby streaming", Duration::from_secs(60), || {
        (primary.sql(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'standby1' AND state = 'streaming'",
        ) == "1")
            .then_some(())
    });
    let listener = Listener::start(TOKEN);
    let toml = fleet_config(
        dir.path(),
        &listener,
        &[
            ("v12", &v12, ""),
            ("v18", &v18, ""),
            ("primary", &primary, ""),
            ("standby", &standby, ""),
        ],
    )
    .replace(
        "databases = false\n",
        "databases_interval_s = 1\nserver_stats_interval_s = 1\n",
    )
    .replace("server_stats = false\n", "");
    let _agent = Agent::start(dir.path(), &toml, &[]);

    // Each server's identity, its version's: four clusters, one name each.
    let identities = wait_for("every server's identity", Duration::from_secs(60), || {
        let mut by: std::collections::BTreeMap<String, Value> = Default::default();
        for e in listener.events_of("pg_server_stats") {
            if let Some(s) = e["server"].as_str() {
                by.insert(s.to_string(), e["data"]["identity"].clone());
            }
        }
        (by.len() == 4).then_some(by)
    });
    assert!(identities["v12"]["version"]
        .as_str()
        .is_some_and(|v| v.starts_with("12.")));
    assert!(identities["v18"]["version"]
        .as_str()
        .is_some_and(|v| v.starts_with("18.")));
    assert_eq!(identities["primary"]["role"], "primary");
    assert_eq!(identities["standby"]["role"], "standby");
    assert_eq!(
        identities["primary"]["system_identifier"],
        identities["standby"]["system_identifier"]
    );
    assert_ne!(
        identities["v12"]["system_identifier"],
        identities["v18"]["system_identifier"]
    );

    // A statement run on one server is seen under that server only.
    let _marker = v18.session("marker_app", "SELECT pg_sleep(30) /* fleet-marker-v18 */");
    let seen = wait_for("the marker statement", Duration::from_secs(60), || {
        let with: Vec<Value> = listener
            .events_of("pg_activity")
            .into_iter()
            .filter(|e| e.to_string().contains("fleet-marker-v18"))
            .collect();
        (!with.is_empty()).then_some(with)
    });
    assert!(seen.iter().all(|e| e["server"] == "v18"), "{seen:?}");

    // Failover: the standby is promoted and the old primary stops.
    standby.sql("SELECT pg_promote()");
    let mut primary = primary;
    primary.stop_server();
    let role_changed = |l: &Listener| -> Vec<Value> {
        l.events_of("agent")
            .into_iter()
            .filter(|e| e["data"]["event"] == "role_changed")
            .collect()
    };
    let changed = wait_for("role_changed", Duration::from_secs(60), || {
        role_changed(&listener).into_iter().next()
    });
    assert_eq!(changed["server"], "standby", "{changed}");
    assert_eq!(changed["data"]["after"]["role"], "primary");
    // Deltas of the promoted server go on, none negative, none across the change.
    let at = changed["collected_at"].as_str().expect("time").to_string();
    wait_for(
        "the promoted server's deltas",
        Duration::from_secs(60),
        || {
            listener
                .events_of("pg_databases")
                .iter()
                .any(|e| {
                    e["server"] == "standby"
                        && e["collected_at"].as_str().is_some_and(|t| t > at.as_str())
                        && e["data"]["deltas"].is_object()
                })
                .then_some(())
        },
    );
    assert_eq!(
        role_changed(&listener).len(),
        1,
        "{:?}",
        role_changed(&listener)
    );
    for server in ["v12", "v18", "primary", "standby"] {
        let bad = negative_deltas(&listener, server);
        assert!(bad.is_empty(), "{server}: {bad:?}");
    }
    // Every event once.
    let ids: Vec<String> = listener
        .accepted_events()
        .into_iter()
        .filter_map(|(_, e)| e["id"].as_str().map(String::from))
        .collect();
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "an event id twice");
}

/// A `[[custom]]` query runs on every server, its rows under each server's name, its
/// child `<server>/pg_custom.<name>` in status.
#[test]
fn a_custom_query_runs_on_every_server_under_its_name() {
    let a = PgCluster::start("");
    let b = PgCluster::start("");
    a.sql("create table t (x int); insert into t values (1)");
    b.sql("create table t (x int); insert into t values (1), (2)");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("fleet-custom");
    let toml = fleet_config(
        dir.path(),
        &listener,
        &[("alpha", &a, ""), ("beta", &b, "")],
    )
        + "[[custom]]\nname = \"rows\"\nquery = \"select count(*) as n from t\"\ninterval_s = 1\n";
    let agent = Agent::start(dir.path(), &toml, &[]);
    let by_server = wait_for("a row from each server", Duration::from_secs(30), || {
        let m: std::collections::BTreeMap<String, Value> = listener
            .events_of("pg_custom")
            .into_iter()
            .filter(|e| e["data"]["record"] == "row")
            .map(|e| {
                (
                    e["server"].as_str().unwrap_or("").to_string(),
                    e["data"]["columns"]["n"].clone(),
                )
            })
            .collect();
        (m.len() == 2).then_some(m)
    });
    assert_eq!(by_server["alpha"], 1);
    assert_eq!(by_server["beta"], 2);
    let status = agent.status();
    for child in ["alpha/pg_custom.rows", "beta/pg_custom.rows"] {
        assert!(status["children"].get(child).is_some(), "{child}: {status}");
    }
    drop(agent);
}
