//! The shipped dashboards and alert rules: every PromQL expression parses (promtool) and
//! returns series from a real Prometheus scraping the agent while a server with a
//! standby does what the panels show; the alert rules pass promtool's checks and their
//! unit tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::agent::{config, Agent, TOKEN};
use crate::harness::listener::Listener;
use crate::harness::pg::{psql_path, run, PgCluster};
use crate::harness::prometheus::{free_port, Prometheus};
use crate::harness::{shared_tempdir, wait_for};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every Prometheus target of a dashboard: (panel title, expression).
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let ds = if t["datasource"].is_object() {
                &t["datasource"]
            } else {
                &p["datasource"]
            };
            if ds["type"] != "prometheus" {
                continue;
            }
            let expr = t["expr"].as_str().unwrap_or_default();
            out.push((
                p["title"].as_str().unwrap_or_default().to_string(),
                expr.to_string(),
            ));
        }
    }
    out
}

/// Grafana's variables as a test query has them: every agent, a 30 s rate window.
fn substituted(expr: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("$__interval", "30s")
        .replace("$instance", ".+")
}

fn promtool(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian package `prometheus`; .ci/run installs it)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_shipped_alert_rules_pass_promtools_checks_and_their_unit_tests() {
    let dir = repo().join("prometheus");
    let (ok, out) = promtool(&["check", "rules", "postgres-agent.rules.yml"], &dir);
    assert!(ok, "{out}");
    let (ok, out) = promtool(&["test", "rules", "postgres-agent.rules.test.yml"], &dir);
    assert!(ok, "{out}");
    // Every alert of the rules file has a unit test.
    let rules = std::fs::read_to_string(dir.join("postgres-agent.rules.yml")).expect("rules");
    let tests = std::fs::read_to_string(dir.join("postgres-agent.rules.test.yml")).expect("tests");
    for name in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "no unit test for {name}"
        );
    }
}

#[test]
fn every_dashboard_expression_parses_and_returns_series_from_the_agent() {
    let mut dashboards = Vec::new();
    for e in std::fs::read_dir(repo().join("dashboards")).expect("dashboards/") {
        let path = e.expect("entry").path();
        if path.extension().is_some_and(|x| x == "json") {
            let text = std::fs::read_to_string(&path).expect("read dashboard");
            let d: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            dashboards.push((path, d));
        }
    }
    assert!(!dashboards.is_empty());
    let exprs: Vec<(String, String)> = dashboards
        .iter()
        .flat_map(|(path, d)| {
            let name = path.file_name().map(|n| n.to_string_lossy().to_string());
            expressions(d)
                .into_iter()
                .map(move |(t, e)| (format!("{}: {t}", name.clone().unwrap_or_default()), e))
        })
        .collect();
    assert!(exprs.len() >= 30, "{} expressions", exprs.len());

    // They parse: promtool checks them as recording rules.
    let dir = shared_tempdir("dashboards");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, e)) in exprs.iter().enumerate() {
        rules += &format!(
            "      - record: dashboard:expr_{i}\n        expr: {}\n",
            serde_json::to_string(&substituted(e)).expect("json string")
        );
    }
    std::fs::write(dir.path().join("dashboard.rules.yml"), &rules).expect("write rules");
    let (ok, out) = promtool(&["check", "rules", "dashboard.rules.yml"], dir.path());
    assert!(ok, "{out}\n{rules}");

    // A server with a standby, doing what the panels show.
    let primary = PgCluster::start(&format!(
        "{}log_destination = 'csvlog'\nlog_directory = 'log'\n\
         shared_preload_libraries = 'pg_stat_statements'\n",
        crate::logs::LOG_CONF
    ));
    primary.sql("CREATE EXTENSION pg_stat_statements");
    let _standby = PgCluster::standby_of(&primary, "standby1");
    wait_for("the standby streaming", Duration::from_secs(60), || {
        (primary.sql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == "1")
            .then_some(())
    });
    let listener = Listener::start(TOKEN);
    let mport = free_port();
    let toml = config(dir.path(), &primary, &listener.url(), 1)
        .replace("sample_interval_ms = 0\n", "sample_interval_ms = 1000\n")
        .replace("databases = false\n", "databases = true\n")
        .replace("tables = false\n", "tables = true\ntables_interval_s = 1\n")
        .replace("replication = false\n", "replication = true\n")
        .replace("server_stats = false\n", "server_stats = true\n")
        .replace(
            "settings = false\n",
            "settings = true\nsettings_interval_s = 1\n",
        )
        .replace("statements = false\n", "statements = true\n")
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
    let prom = Prometheus::start(dir.path(), mport);
    prom.wait_value("up{job=\"agent\"}", 1.0);

    workload(&primary);

    // Each expression returns series before the deadline (rates need two scrapes of a
    // change; autovacuum comes on its own schedule).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut empty: Vec<&(String, String)> = exprs.iter().collect();
    while !empty.is_empty() && Instant::now() < deadline {
        empty.retain(|(_, e)| {
            prom.query(&substituted(e))
                .is_none_or(|series| series.is_empty())
        });
        if !empty.is_empty() {
            // The poll's interval (Prometheus scrapes once a second).
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let listed: Vec<String> = empty.iter().map(|(t, e)| format!("{t}: {e}")).collect();
    assert!(
        listed.is_empty(),
        "expressions without series:\n{}",
        listed.join("\n")
    );
}

/// Statements slow and fast, an error, a deadlock, a failed login, a lock wait that
/// ends, a checkpoint, writes that wake autovacuum.
fn workload(pg: &PgCluster) {
    pg.sql("CREATE TABLE queue(id int PRIMARY KEY, n int); INSERT INTO queue SELECT g, 0 FROM generate_series(1, 2000) g");
    let pgbench = psql_path().with_file_name("pgbench");
    let script = shared_tempdir("load");
    let file = script.path().join("load.sql");
    std::fs::write(
        &file,
        "\\set id random(1, 2000)\nUPDATE queue SET n = n + 1 WHERE id = :id;\nSELECT n FROM queue WHERE id = :id;\n",
    )
    .expect("load.sql");
    run(
        Command::new(&pgbench)
            .args(["-n", "-T", "3", "-c", "2", "-f"])
            .arg(&file)
            .args(["-h", pg.socket_dir().to_str().expect("utf8")])
            .args(["-p", &pg.port.to_string(), "-U", "postgres", "postgres"]),
        "pgbench",
    );
    pg.sql("SELECT pg_sleep(0.3)");
    assert!(!pg.try_sql("SELECT 1/0"));
    assert!(!pg
        .psql()
        .args(["-U", "nobody_here", "-c", "SELECT 1"])
        .output()
        .expect("psql")
        .status
        .success());
    // A deadlock: each session holds one row and asks for the other's.
    let a = pg.session(
        "deadlock-a",
        "BEGIN; UPDATE queue SET n = n WHERE id = 1; SELECT pg_sleep(0.5); UPDATE queue SET n = n WHERE id = 2; COMMIT;",
    );
    let b = pg.session(
        "deadlock-b",
        "BEGIN; UPDATE queue SET n = n WHERE id = 2; SELECT pg_sleep(0.5); UPDATE queue SET n = n WHERE id = 1; COMMIT;",
    );
    let (a, b) = (a.wait(), b.wait());
    assert!(a != b, "one of the two is the deadlock's victim");
    // A lock wait that ends, while the sampler looks.
    let holder = pg.session("holder", "BEGIN; LOCK queue; SELECT pg_sleep(2); COMMIT;");
    wait_for("the lock held", Duration::from_secs(30), || {
        (pg.sql("SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND relation = 'queue'::regclass") == "1").then_some(())
    });
    pg.sql("BEGIN; LOCK queue; COMMIT;");
    assert!(holder.wait());
    pg.sql("CHECKPOINT");
}
