//! The oracle for `[metrics] database`: the real postgres_exporter (Debian's
//! `prometheus-postgres-exporter`) and the agent watch the same server (with a
//! streaming standby) under load, a real Prometheus scrapes both, and every series the exporter has must be in the
//! agent's page with the same type and value.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::harness::agent::{config, Agent};
use crate::harness::pg::{psql_path, run, PgCluster};
use crate::harness::prometheus::{encode, free_port, get, Prometheus};
use crate::harness::{shared_tempdir, wait_for};

const EXPORTER: &str = "/usr/bin/prometheus-postgres-exporter";

/// The optional queries dashboards take from the exporter's example `queries.yaml`
/// (tables, table I/O, postmaster start, replication lag), written for this test.
const QUERIES: &str = r#"pg_replication:
  query: "SELECT CASE WHEN NOT pg_is_in_recovery() THEN 0 ELSE GREATEST(0, EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp()))) END AS lag"
  master: true
  metrics:
    - lag:
        usage: "GAUGE"
        description: "Replication lag behind master in seconds"
pg_postmaster:
  query: "SELECT pg_postmaster_start_time AS start_time_seconds FROM pg_postmaster_start_time()"
  master: true
  metrics:
    - start_time_seconds:
        usage: "GAUGE"
        description: "Time at which postmaster started"
pg_stat_user_tables:
  query: "SELECT current_database() datname, schemaname, relname, seq_scan, seq_tup_read, idx_scan, idx_tup_fetch, n_tup_ins, n_tup_upd, n_tup_del, n_tup_hot_upd, n_live_tup, n_dead_tup, n_mod_since_analyze, COALESCE(last_vacuum, '1970-01-01Z') AS last_vacuum, COALESCE(last_autovacuum, '1970-01-01Z') AS last_autovacuum, COALESCE(last_analyze, '1970-01-01Z') AS last_analyze, COALESCE(last_autoanalyze, '1970-01-01Z') AS last_autoanalyze, vacuum_count, autovacuum_count, analyze_count, autoanalyze_count FROM pg_stat_user_tables"
  metrics:
    - datname: {usage: "LABEL", description: "Name of current database"}
    - schemaname: {usage: "LABEL", description: "Name of the schema that this table is in"}
    - relname: {usage: "LABEL", description: "Name of this table"}
    - seq_scan: {usage: "COUNTER", description: "Number of sequential scans initiated on this table"}
    - seq_tup_read: {usage: "COUNTER", description: "Number of live rows fetched by sequential scans"}
    - idx_scan: {usage: "COUNTER", description: "Number of index scans initiated on this table"}
    - idx_tup_fetch: {usage: "COUNTER", description: "Number of live rows fetched by index scans"}
    - n_tup_ins: {usage: "COUNTER", description: "Number of rows inserted"}
    - n_tup_upd: {usage: "COUNTER", description: "Number of rows updated"}
    - n_tup_del: {usage: "COUNTER", description: "Number of rows deleted"}
    - n_tup_hot_upd: {usage: "COUNTER", description: "Number of rows HOT updated"}
    - n_live_tup: {usage: "GAUGE", description: "Estimated number of live rows"}
    - n_dead_tup: {usage: "GAUGE", description: "Estimated number of dead rows"}
    - n_mod_since_analyze: {usage: "GAUGE", description: "Estimated number of rows changed since last analyze"}
    - last_vacuum: {usage: "GAUGE", description: "Last time at which this table was manually vacuumed"}
    - last_autovacuum: {usage: "GAUGE", description: "Last time at which this table was vacuumed by autovacuum"}
    - last_analyze: {usage: "GAUGE", description: "Last time at which this table was manually analyzed"}
    - last_autoanalyze: {usage: "GAUGE", description: "Last time at which this table was analyzed by autovacuum"}
    - vacuum_count: {usage: "COUNTER", description: "Number of times this table has been manually vacuumed"}
    - autovacuum_count: {usage: "COUNTER", description: "Number of times this table has been vacuumed by autovacuum"}
    - analyze_count: {usage: "COUNTER", description: "Number of times this table has been manually analyzed"}
    - autoanalyze_count: {usage: "COUNTER", description: "Number of times this table has been analyzed by autovacuum"}
pg_statio_user_tables:
  query: "SELECT current_database() datname, schemaname, relname, heap_blks_read, heap_blks_hit, idx_blks_read, idx_blks_hit, toast_blks_read, toast_blks_hit, tidx_blks_read, tidx_blks_hit FROM pg_statio_user_tables"
  metrics:
    - datname: {usage: "LABEL", description: "Name of current database"}
    - schemaname: {usage: "LABEL", description: "Name of the schema that this table is in"}
    - relname: {usage: "LABEL", description: "Name of this table"}
    - heap_blks_read: {usage: "COUNTER", description: "Number of disk blocks read from this table"}
    - heap_blks_hit: {usage: "COUNTER", description: "Number of buffer hits in this table"}
    - idx_blks_read: {usage: "COUNTER", description: "Number of disk blocks read from all indexes on this table"}
    - idx_blks_hit: {usage: "COUNTER", description: "Number of buffer hits in all indexes on this table"}
    - toast_blks_read: {usage: "COUNTER", description: "Number of disk blocks read from this table's TOAST table"}
    - toast_blks_hit: {usage: "COUNTER", description: "Number of buffer hits in this table's TOAST table"}
    - tidx_blks_read: {usage: "COUNTER", description: "Number of disk blocks read from this table's TOAST table indexes"}
    - tidx_blks_hit: {usage: "COUNTER", description: "Number of buffer hits in this table's TOAST table indexes"}
"#;

/// The exporter's families about itself, not the database: the agent has its own.
const EXPORTER_ONLY: &[&str] = &["pg_exporter_user_queries_load_error"];

/// Load on the test's tables, run by pgbench.
const LOAD: &str = "\\set id random(1, 1000)
UPDATE accounts SET balance = balance + 1 WHERE id = :id;
INSERT INTO audit(what) VALUES ('x');
SELECT balance FROM accounts WHERE id = :id;
SELECT count(*) FROM lonely;
";

/// The real exporter; killed on drop.
struct Exporter {
    child: Child,
    port: u16,
}

impl Exporter {
    fn start(dir: &Path, pg: &PgCluster) -> Exporter {
        let queries = dir.join("queries.yaml");
        std::fs::write(&queries, QUERIES).expect("queries.yaml");
        let port = free_port();
        let log = std::fs::File::create(dir.join("exporter.log")).expect("exporter.log");
        let child = Command::new(EXPORTER)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--extend.query-path={}", queries.display()))
            .env(
                "DATA_SOURCE_NAME",
                format!(
                    "host={} port={} user=postgres dbname=postgres sslmode=disable",
                    pg.socket_dir().display(),
                    pg.port
                ),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run prometheus-postgres-exporter");
        Exporter { child, port }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A series: its name and labels (without Prometheus's `job` and `instance`).
type Key = (String, BTreeMap<String, String>);

fn series(prom: &Prometheus, job: &str) -> BTreeMap<Key, f64> {
    let all = prom
        .query(&format!("{{job=\"{job}\",__name__=~\"pg_.+\"}}"))
        .unwrap_or_default();
    all.into_iter()
        .map(|(m, v)| {
            let mut labels: BTreeMap<String, String> = m
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let name = labels.remove("__name__").unwrap_or_default();
            labels.remove("job");
            labels.remove("instance");
            ((name, labels), v)
        })
        .collect()
}

/// Each family's type as Prometheus learnt it from `job`'s page.
fn types(prom: &Prometheus, job: &str) -> BTreeMap<String, String> {
    let data = prom
        .api(&format!(
            "/api/v1/targets/metadata?match_target={}",
            encode(&format!("{{job=\"{job}\"}}"))
        ))
        .unwrap_or_default();
    data.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| {
                    Some((
                        m["metric"].as_str()?.to_string(),
                        m["type"].as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How far the agent's value may be from the exporter's: 0 where the load's end
/// fixed the value, else what the two readings' moments and the watchers' own
/// queries can move it by.
fn allowed(name: &str, exporter: f64) -> Option<f64> {
    let moved_by_watching = [
        "pg_stat_database_xact_commit",
        "pg_stat_database_xact_rollback",
        "pg_stat_database_blks_hit",
        "pg_stat_database_blks_read",
        "pg_stat_database_tup_returned",
        "pg_stat_database_tup_fetched",
        "pg_stat_database_session_time",
        "pg_stat_database_active_time",
        "pg_stat_database_idle_in_transaction_time",
        "pg_stat_database_sessions",
        "pg_stat_database_blk_read_time",
        "pg_stat_database_blk_write_time",
        "pg_stat_bgwriter_buffers_alloc_total",
        "pg_stat_bgwriter_buffers_backend_total",
        "pg_stat_bgwriter_buffers_clean_total",
    ];
    // The exporter's own figures; and a setting its driver (lib/pq) sets on its own
    // session, where the agent shows the server's value.
    if name.starts_with("pg_exporter_")
        || name.starts_with("pg_scrape_collector_")
        || name == "pg_settings_extra_float_digits"
    {
        return None;
    }
    Some(match name {
        n if moved_by_watching.contains(&n) => exporter.abs() * 0.1 + 100_000.0,
        "pg_stat_activity_count" | "pg_stat_database_numbackends" => 8.0,
        "pg_locks_count" => 30.0,
        "pg_stat_activity_max_tx_duration" => 10.0,
        "pg_database_size_bytes" => 16.0 * 1024.0 * 1024.0,
        "pg_replication_slots_pg_wal_lsn_diff"
        | "pg_stat_replication_pg_current_wal_lsn_bytes"
        | "pg_stat_replication_pg_wal_lsn_diff" => 4.0 * 1024.0 * 1024.0,
        // The standby replies every wal_receiver_status_interval (10 s).
        "pg_stat_replication_reply_time" => 15.0,
        _ => 0.0,
    })
}

fn agent_ages(port: u16) -> Option<BTreeMap<String, f64>> {
    let (status, text) = get(port, "/metrics")?;
    (status == 200).then_some(())?;
    Some(
        text.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("postgres_agent_reading_age_seconds{reading=\"")?;
                let (name, v) = rest.split_once("\"} ")?;
                Some((name.to_string(), v.parse().ok()?))
            })
            .collect(),
    )
}

fn pgbench() -> PathBuf {
    psql_path().with_file_name("pgbench")
}

#[test]
fn the_agent_serves_every_series_postgres_exporter_serves_with_its_type_and_value() {
    if !Path::new(EXPORTER).exists() {
        eprintln!(
            "SKIPPED: {EXPORTER} is not installed (Debian package prometheus-postgres-exporter; .ci/run installs it)"
        );
        return;
    }
    let pg = PgCluster::start("autovacuum = off\n");
    pg.sql(
        "CREATE TABLE accounts(id int PRIMARY KEY, balance int NOT NULL, note text);
         INSERT INTO accounts SELECT g, 0, repeat('n', g % 50) FROM generate_series(1, 1000) g;
         CREATE TABLE audit(at timestamptz NOT NULL DEFAULT now(), what text);
         CREATE TABLE lonely(x int);
         SELECT pg_create_physical_replication_slot('oracle_slot', true);",
    );
    pg.sql("VACUUM ANALYZE accounts");
    let _standby = PgCluster::standby_of(&pg, "standby1");
    wait_for("the standby streaming", Duration::from_secs(60), || {
        (pg.sql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == "1")
            .then_some(())
    });
    let dir = shared_tempdir("exporter");
    let mport = free_port();
    let toml = config(dir.path(), &pg, "http://127.0.0.1:9/ingest", 1)
        .replace("databases = false\n", "databases = true\n")
        .replace("tables = false\n", "tables = true\ntables_interval_s = 1\n")
        .replace("replication = false\n", "replication = true\n")
        .replace("server_stats = false\n", "server_stats = true\n")
        .replace(
            "settings = false\n",
            "settings = true\nsettings_interval_s = 1\n",
        )
        .replace(
            "locks = false\n",
            "locks = true\nlocks_blocking_interval_s = 1\n",
        )
        + &format!("[metrics]\nlisten = \"127.0.0.1:{mport}\"\n");
    let agent = Agent::start(dir.path(), &toml, &[]);
    let exporter = Exporter::start(dir.path(), &pg);
    let prom = Prometheus::start_jobs(dir.path(), &[("agent", mport), ("exporter", exporter.port)]);
    prom.wait_value("up{job=\"exporter\"}", 1.0);
    prom.wait_value("up{job=\"agent\"}", 1.0);

    // Load while both watch, then quiet: pgbench's sessions end, their statistics are
    // flushed, and what they did is fixed.
    let script = dir.path().join("load.sql");
    std::fs::write(&script, LOAD).expect("load.sql");
    run(
        Command::new(pgbench())
            .args(["-n", "-T", "3", "-c", "2", "-f"])
            .arg(&script)
            .args(["-h", pg.socket_dir().to_str().expect("utf8")])
            .args(["-p", &pg.port.to_string(), "-U", "postgres", "postgres"]),
        "pgbench",
    );
    // Every insert is a row of audit; the statistics have them all once the server has
    // taken in what the sessions sent (at their exit on 15+, a moment later before).
    let inserted: f64 = pg.sql("SELECT count(*) FROM audit").parse().expect("count");
    assert!(inserted > 0.0, "the load inserted nothing");
    wait_for(
        "the statistics of the load",
        Duration::from_secs(60),
        || {
            let n: f64 = pg
                .sql("SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'audit'")
                .parse()
                .ok()?;
            (n == inserted).then_some(())
        },
    );
    let stopped = Instant::now();

    // Every reading of the agent's page taken after the load ended (the sizes are
    // measured every 10 minutes: older), then a scrape of each after that.
    let wanted = [
        "up",
        "databases",
        "server_stats",
        "settings",
        "sessions",
        "locks",
        "tables",
        "replication",
    ];
    wait_for(
        "the agent's readings after the load",
        Duration::from_secs(60),
        || {
            let ages = agent_ages(mport)?;
            let since = stopped.elapsed().as_secs_f64();
            wanted
                .iter()
                .all(|w| ages.get(*w).is_some_and(|a| *a < since))
                .then_some(())
        },
    );
    let fresh = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    for job in ["agent", "exporter"] {
        wait_for(
            &format!("a scrape of {job} after the readings"),
            Duration::from_secs(60),
            || {
                (prom.value(&format!("timestamp(pg_up{{job=\"{job}\"}})"))? > fresh + 0.5)
                    .then_some(())
            },
        );
    }

    let theirs = series(&prom, "exporter");
    let ours = series(&prom, "agent");
    let (their_types, our_types) = (types(&prom, "exporter"), types(&prom, "agent"));
    assert!(
        theirs.len() > 300,
        "the exporter serves {} series",
        theirs.len()
    );

    let mut missing = Vec::new();
    let mut mistyped = BTreeSet::new();
    let mut differ = Vec::new();
    for ((name, labels), e) in &theirs {
        if EXPORTER_ONLY.contains(&name.as_str()) {
            continue;
        }
        let Some(a) = ours.get(&(name.clone(), labels.clone())) else {
            missing.push(format!("{name}{labels:?}"));
            continue;
        };
        if their_types.get(name) != our_types.get(name) {
            mistyped.insert(format!(
                "{name}: exporter {:?}, agent {:?}",
                their_types.get(name),
                our_types.get(name)
            ));
        }
        let Some(tolerance) = allowed(name, *e) else {
            continue;
        };
        let same = (e.is_nan() && a.is_nan()) || (e - a).abs() <= tolerance;
        if !same {
            differ.push(format!(
                "{name}{labels:?}: exporter {e}, agent {a} (±{tolerance})"
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "{} series missing from the agent:\n{}",
        missing.len(),
        missing.join("\n")
    );
    assert!(
        mistyped.is_empty(),
        "types differ:\n{}",
        mistyped.into_iter().collect::<Vec<_>>().join("\n")
    );
    assert!(differ.is_empty(), "values differ:\n{}", differ.join("\n"));

    // The agent reads the load's tables exactly: the counts are the server's.
    let ins = |job: &str| {
        prom.value(&format!(
            "pg_stat_user_tables_n_tup_ins{{job=\"{job}\",relname=\"audit\"}}"
        ))
    };
    assert_eq!(ins("agent"), Some(inserted));
    assert_eq!(ins("exporter"), Some(inserted));
    drop(agent);
}

/// The series of `family` on a page: labels text and value.
fn samples<'a>(page: &'a str, family: &str) -> Vec<(&'a str, f64)> {
    page.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(family)?.strip_prefix('{')?;
            let (labels, v) = rest.rsplit_once("} ")?;
            Some((labels, v.parse().ok()?))
        })
        .collect()
}

#[test]
fn the_page_shows_every_databases_tables_the_top_statements_and_pg_up_0_while_the_server_is_down() {
    let mut pg = PgCluster::start("shared_preload_libraries = 'pg_stat_statements'\n");
    pg.sql("CREATE EXTENSION pg_stat_statements");
    pg.sql("CREATE DATABASE shop");
    run(
        pg.psql().args([
            "-c",
            "\\c shop",
            "-c",
            "CREATE TABLE orders(id int); INSERT INTO orders VALUES (1), (2), (3); \
             CREATE INDEX orders_id ON orders (id)",
        ]),
        "a table in shop",
    );
    // An index scanned exactly 4 times (one session: its statistics are flushed when it
    // ends).
    run(
        pg.psql().args([
            "-c",
            "\\c shop",
            "-c",
            "SET enable_seqscan = off",
            "-c",
            "SELECT id FROM orders WHERE id = 1",
            "-c",
            "SELECT id FROM orders WHERE id = 2",
            "-c",
            "SELECT id FROM orders WHERE id = 3",
            "-c",
            "SELECT id FROM orders WHERE id = 1",
        ]),
        "4 index scans",
    );
    // A SQL_ASCII database keeps the bytes a client sent: a table named in Latin-1.
    pg.sql(
        "CREATE DATABASE rawdb ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'",
    );
    let mut raw = pg.interactive_in("rawdb", "raw");
    raw.send_bytes(b"CREATE TABLE \"caf\xe9\" (id int);");
    // A session left idle under its application name.
    let mut idle = pg.interactive("idle_marker");
    idle.send("SELECT 1;");
    let dir = shared_tempdir("dbmetrics");
    let mport = free_port();
    let toml = config(dir.path(), &pg, "http://127.0.0.1:9/ingest", 1)
        .replace("tables = false\n", "tables = true\ntables_interval_s = 1\n")
        .replace("statements = false\n", "statements = true\n")
        + &format!("[metrics]\nlisten = \"127.0.0.1:{mport}\"\nstatements_limit = 2\n");
    let agent = Agent::start(dir.path(), &toml, &[]);

    // The slowest statement, run 7 times: on the page with exactly its 7 calls, among
    // at most `statements_limit` statements.
    for _ in 0..7 {
        pg.sql("SELECT pg_sleep(0.05) AS marker_sleep");
    }
    let queryid = pg.sql(
        "SELECT queryid FROM pg_stat_statements WHERE query LIKE '%marker_sleep%' AND calls = 7",
    );
    assert!(!queryid.is_empty(), "the marker in pg_stat_statements");
    let series = format!("datname=\"postgres\",queryid=\"{queryid}\",user=\"postgres\"");
    let page = wait_for(
        "the marker's 7 calls on the page",
        Duration::from_secs(60),
        || {
            let (_, page) = get(mport, "/metrics")?;
            let calls = samples(&page, "pg_stat_statements_calls_total");
            calls
                .iter()
                .any(|(l, v)| *l == series && *v == 7.0)
                .then_some(page)
        },
    );
    assert_eq!(samples(&page, "pg_stat_statements_calls_total").len(), 2);
    let seconds = samples(&page, "pg_stat_statements_seconds_total");
    let (_, s) = seconds
        .iter()
        .find(|(l, _)| *l == series)
        .expect("its seconds");
    assert!((0.35..10.0).contains(s), "7 × 50 ms of sleep: {s} s");

    // Tables of every database the pass reads, told apart by `datname`.
    let orders = "datname=\"shop\",relname=\"orders\",schemaname=\"public\"";
    let page = wait_for("shop's table on the page", Duration::from_secs(60), || {
        let (_, page) = get(mport, "/metrics")?;
        samples(&page, "pg_stat_user_tables_n_tup_ins")
            .iter()
            .any(|(l, v)| l.starts_with(orders) && *v == 3.0)
            .then_some(page)
    });
    let age = |page: &str| {
        samples(page, "postgres_agent_reading_age_seconds")
            .into_iter()
            .find(|(l, _)| *l == "reading=\"tables\"")
            .map(|(_, v)| v)
    };
    assert!(age(&page).is_some(), "the tables' age");
    assert!(page.lines().any(|l| l == "pg_up 1"));

    // Its index, with pg_stat_user_indexes' and pg_statio_user_indexes' values.
    let index =
        "datname=\"shop\",relname=\"orders\",schemaname=\"public\",indexrelname=\"orders_id\"";
    let page = wait_for("the index's 4 scans", Duration::from_secs(60), || {
        let (_, page) = get(mport, "/metrics")?;
        samples(&page, "pg_stat_user_indexes_idx_scans_total")
            .contains(&(index, 4.0))
            .then_some(page)
    });
    let server = run(
        pg.psql().args([
            "-d",
            "shop",
            "-Atc",
            "SELECT idx_tup_read, idx_tup_fetch, idx_blks_read, idx_blks_hit \
             FROM pg_stat_user_indexes JOIN pg_statio_user_indexes USING (indexrelid) \
             WHERE indexrelid = 'orders_id'::regclass",
        ]),
        "the index's statistics",
    );
    let server: Vec<f64> = String::from_utf8_lossy(&server.stdout)
        .trim()
        .split('|')
        .map(|v| v.parse().expect("a number"))
        .collect();
    let on_page: Vec<f64> = [
        "pg_stat_user_indexes_idx_tup_reads_total",
        "pg_stat_user_indexes_idx_tup_fetches_total",
        "pg_statio_user_indexes_idx_blks_read_total",
        "pg_statio_user_indexes_idx_blks_hit_total",
    ]
    .iter()
    .map(|f| {
        let all = samples(&page, f);
        assert_eq!(all.len(), 1, "{f}: one index in the cluster: {all:?}");
        assert_eq!(all[0].0, index, "{f}");
        all[0].1
    })
    .collect();
    assert_eq!(on_page, server);
    assert!(
        server[3] > 0.0,
        "the scans hit the index's blocks: {server:?}"
    );

    // A table whose name is not UTF-8, shown with U+FFFD.
    wait_for("rawdb's table on the page", Duration::from_secs(60), || {
        let (_, page) = get(mport, "/metrics")?;
        samples(&page, "pg_stat_user_tables_seq_scan")
            .iter()
            .any(|(l, _)| l.starts_with("datname=\"rawdb\",relname=\"caf\u{fffd}\","))
            .then_some(())
    });
    drop(raw);
    // `status` says what the page holds.
    let status = agent.status();
    let said = status["metrics"].as_str().unwrap_or_default();
    let want = format!("serving http://127.0.0.1:{mport}/metrics; the database's metrics from ");
    assert!(said.starts_with(&want), "{said}");
    assert!(
        said.contains(" readings (tables 2, indexes 1, statements 2); the oldest ("),
        "{said}"
    );

    // The idle session in the idle time histogram under its application name.
    let idle_series = "application_name=\"idle_marker\"";
    let page = wait_for("the idle session", Duration::from_secs(60), || {
        let (_, page) = get(mport, "/metrics")?;
        samples(&page, "pg_process_idle_seconds_count")
            .contains(&(idle_series, 1.0))
            .then_some(page)
    });
    assert!(page.contains("# TYPE pg_process_idle_seconds histogram\n"));
    let inf = "application_name=\"idle_marker\",le=\"+Inf\"";
    assert!(samples(&page, "pg_process_idle_seconds_bucket").contains(&(inf, 1.0)));
    let sum = samples(&page, "pg_process_idle_seconds_sum");
    assert!(
        sum.iter().any(|(l, v)| *l == idle_series && *v >= 0.0),
        "{sum:?}"
    );
    drop(idle);

    // The server goes away: pg_up says so, the last readings stay, older.
    pg.stop_server();
    let page = wait_for("pg_up 0", Duration::from_secs(60), || {
        let (_, page) = get(mport, "/metrics")?;
        page.lines().any(|l| l == "pg_up 0").then_some(page)
    });
    assert!(samples(&page, "pg_stat_user_tables_n_tup_ins")
        .iter()
        .any(|(l, v)| l.starts_with(orders) && *v == 3.0));
    // While the server is down the reading is not renewed: its age only grows.
    let down = age(&page).expect("the tables' age");
    wait_for("the tables' reading aging", Duration::from_secs(60), || {
        let (_, page) = get(mport, "/metrics")?;
        let now = age(&page)?;
        assert!(
            samples(&page, "pg_stat_user_tables_n_tup_ins")
                .iter()
                .any(|(l, v)| l.starts_with(orders) && *v == 3.0),
            "the last reading stays on the page"
        );
        (now >= down + 1.0).then_some(())
    });
    pg.start_server();
    wait_for("pg_up 1 again", Duration::from_secs(60), || {
        let (_, page) = get(mport, "/metrics")?;
        page.lines().any(|l| l == "pg_up 1").then_some(())
    });
}

#[test]
fn a_reload_turns_the_database_metrics_off_and_on_without_a_restart() {
    let pg = PgCluster::start("");
    pg.sql("CREATE TABLE t(id int); INSERT INTO t VALUES (1), (2)");
    let dir = shared_tempdir("dbmetrics-reload");
    let mport = free_port();
    let base = config(dir.path(), &pg, "http://127.0.0.1:9/ingest", 1)
        .replace("tables = false\n", "tables = true\ntables_interval_s = 1\n");
    let with = |on: bool| {
        base.clone() + &format!("[metrics]\nlisten = \"127.0.0.1:{mport}\"\ndatabase = {on}\n")
    };
    let agent = Agent::start(dir.path(), &with(true), &[]);
    let has = |family: &str| {
        get(mport, "/metrics").is_some_and(|(_, page)| page.lines().any(|l| l.starts_with(family)))
    };
    let table = "pg_stat_user_tables_n_tup_ins{datname=\"postgres\",relname=\"t\"";
    wait_for("the table on the page", Duration::from_secs(60), || {
        has(table).then_some(())
    });
    let pid = agent.pid();

    std::fs::write(&agent.config_path, with(false)).expect("rewrite");
    agent.signal(libc::SIGHUP);
    wait_for(
        "the database's families gone",
        Duration::from_secs(60),
        || {
            let (_, page) = get(mport, "/metrics")?;
            (!page.lines().any(|l| l.starts_with("pg_")) && page.contains("postgres_agent_info"))
                .then_some(())
        },
    );

    std::fs::write(&agent.config_path, with(true)).expect("rewrite");
    agent.signal(libc::SIGHUP);
    // Back without a restart, the table too (read again though it did not change).
    wait_for(
        "the table back on the page",
        Duration::from_secs(60),
        || has(table).then_some(()),
    );
    assert!(has("pg_up 1"));
    assert_eq!(agent.pid(), pid);
    let restarts: Vec<Value> = agent.logs_named("agent_started");
    assert_eq!(restarts.len(), 1);
}

#[test]
fn the_page_shows_wal_files_a_vacuum_in_progress_and_a_standbys_wal_receiver() {
    let primary = PgCluster::start("");
    primary.sql("SELECT pg_create_physical_replication_slot('standby_slot')");
    let mut standby = PgCluster::standby_of(&primary, "standby1");
    standby.append_conf("primary_slot_name = 'standby_slot'\n");
    standby.stop_server_mode("fast");
    standby.start_server();
    wait_for(
        "the standby streaming through its slot",
        Duration::from_secs(60),
        || {
            (primary.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'standby_slot' AND active") == "1")
            .then_some(())
        },
    );
    primary.sql(
        "CREATE TABLE big(id int, pad text) WITH (autovacuum_enabled = off);
         INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 200000) g;
         DELETE FROM big WHERE id % 2 = 0",
    );
    let dir = shared_tempdir("dbmetrics-wal");
    let (mport, sport) = (free_port(), free_port());
    let toml = |pg: &PgCluster, d: &Path, port: u16| {
        config(d, pg, "http://127.0.0.1:9/ingest", 1)
            .replace("vacuum_progress = false\n", "vacuum_progress = true\n")
            .replace("replication = false\n", "replication = true\n")
            .replace("server_stats = false\n", "server_stats = true\n")
            + &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n")
    };
    let sdir = dir.path().join("standby");
    std::fs::create_dir_all(&sdir).expect("dir");
    let _on_primary = Agent::start(dir.path(), &toml(&primary, dir.path(), mport), &[]);
    let _on_standby = Agent::start(&sdir, &toml(&standby, &sdir, sport), &[]);

    // A slow VACUUM, seen while it runs.
    let mut vacuum = primary
        .psql()
        .args(["-c", "VACUUM big"])
        .env("PGAPPNAME", "slow-vacuum")
        .env(
            "PGOPTIONS",
            "-c vacuum_cost_delay=100 -c vacuum_cost_limit=1",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("psql");
    let pages: f64 = primary
        .sql("SELECT pg_relation_size('big') / current_setting('block_size')::int")
        .parse()
        .expect("pages");
    let page = wait_for("the vacuum on the page", Duration::from_secs(60), || {
        let (_, page) = get(mport, "/metrics")?;
        page.lines()
            .any(|l| l == "pg_stat_progress_vacuum_phase{datname=\"postgres\",phase=\"scanning heap\",relname=\"big\"} 1")
            .then_some(page)
    });
    assert!(
        page.lines().any(|l| l
            == format!(
                "pg_stat_progress_vacuum_heap_blks{{datname=\"postgres\",relname=\"big\"}} {pages}"
            )),
        "{pages} pages"
    );
    primary.sql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'slow-vacuum'");
    let _ = vacuum.wait();

    // The WAL files, as the server lists them.
    wait_for(
        "pg_wal_segments as the server counts them",
        Duration::from_secs(60),
        || {
            let n =
                primary.sql("SELECT count(*) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'");
            let (_, page) = get(mport, "/metrics")?;
            page.lines()
                .any(|l| l == format!("pg_wal_segments {n}"))
                .then_some(())
        },
    );

    // The standby's receiver, streaming (2) from the primary's socket directory.
    let host = primary.socket_dir().display().to_string();
    wait_for(
        "the standby's WAL receiver on its page",
        Duration::from_secs(60),
        || {
            let (_, page) = get(sport, "/metrics")?;
            page.lines()
            .any(|l| {
                l == format!("pg_stat_wal_receiver_status{{slot_name=\"standby_slot\",upstream_host=\"{host}\"}} 2")
            })
            .then_some(())
        },
    );
}
