//! Database health: databases, tables, vacuum progress, the xmin horizon, the server's
//! background statistics and settings, against a real cluster (autovacuum off, so the
//! counters move only with what the test does).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::harness::agent::{config, Agent, TOKEN};
use crate::harness::listener::Listener;
use crate::harness::pg::{major_version, PgCluster};
use crate::harness::{shared_tempdir, wait_for};

const VACUUMER: &str = "7d1e2c3b-4a5f-4e6d-8c7b-9a0b1c2d3e01";
const HOLDER: &str = "7d1e2c3b-4a5f-4e6d-8c7b-9a0b1c2d3e02";

/// A cluster with autovacuum off and room for prepared transactions.
fn cluster() -> PgCluster {
    PgCluster::start("autovacuum = off\nmax_prepared_transactions = 5\n")
}

/// The agent with only the named health sources on, each every second.
fn agent_with(
    pg: &PgCluster,
    sources: &[&str],
    extra: &str,
) -> (Listener, tempfile::TempDir, Agent) {
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let mut toml = config(dir.path(), pg, &listener.url(), 1).replace(
        "[collection]\n",
        &format!("[collection]\nactivity = false\n{extra}"),
    );
    for s in sources {
        toml = toml.replace(
            &format!("\n{s} = false\n"),
            &format!("\n{s} = true\n{s}_interval_s = 1\n"),
        );
    }
    let agent = Agent::start(dir.path(), &toml, &[]);
    (listener, dir, agent)
}

fn data_of(l: &Listener, kind: &str) -> Vec<Value> {
    l.events_of(kind)
        .into_iter()
        .map(|e| e["data"].clone())
        .collect()
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// The `pg_tables` events of table `name` in database `db`.
fn table_events(l: &Listener, db: &str, name: &str) -> Vec<Value> {
    data_of(l, "pg_tables")
        .into_iter()
        .filter(|d| d["record"] == "table" && d["datname"] == db && d["relation"] == name)
        .collect()
}

#[test]
fn inserted_rows_show_as_exact_deltas_of_the_table_and_its_database_and_quiet_tables_are_not_shipped(
) {
    let pg = cluster();
    pg.sql("CREATE DATABASE shop");
    let shop = |sql: &str| {
        crate::harness::pg::run(pg.psql().args(["-d", "shop", "-c", sql]), sql);
    };
    shop("CREATE TABLE orders (id int PRIMARY KEY, note text); CREATE TABLE quiet (id int)");
    let (l, _dir, _agent) = agent_with(&pg, &["databases", "tables"], "");
    // The first pass ships every table, quiet ones too.
    wait_for("the first pass", Duration::from_secs(30), || {
        (!table_events(&l, "shop", "quiet").is_empty()
            && !table_events(&l, "shop", "orders").is_empty())
        .then_some(())
    });
    let first = &table_events(&l, "shop", "orders")[0];
    assert_eq!(first["first"], true, "{first}");
    assert_eq!(first["schema"], "public");
    assert_eq!(first["indexes"][0]["index"], "orders_pkey");
    assert_eq!(first["indexes"][0]["primary"], true);
    assert_eq!(first["indexes"][0]["unused"], true);
    // The database's baseline is there before the rows go in.
    wait_for("a database reading", Duration::from_secs(10), || {
        data_of(&l, "pg_databases")
            .iter()
            .any(|d| d["datname"] == "shop")
            .then_some(())
    });
    shop("INSERT INTO orders SELECT g, 'n' FROM generate_series(1, 137) g");
    shop("UPDATE orders SET note = 'm' WHERE id <= 11");
    shop("DELETE FROM orders WHERE id <= 3");
    let sum = |events: &[Value], key: &str| -> i64 {
        events.iter().map(|e| int(&e["deltas"][key])).sum()
    };
    wait_for(
        "the inserts in the table's deltas",
        Duration::from_secs(30),
        || {
            let t = table_events(&l, "shop", "orders");
            (sum(&t, "n_tup_ins") == 137 && sum(&t, "n_tup_upd") == 11 && sum(&t, "n_tup_del") == 3)
                .then_some(())
        },
    );
    wait_for(
        "the inserts in the database's deltas",
        Duration::from_secs(30),
        || {
            let d: Vec<Value> = data_of(&l, "pg_databases")
                .into_iter()
                .filter(|d| d["datname"] == "shop")
                .collect();
            (sum(&d, "tup_inserted") >= 137 && sum(&d, "tup_deleted") >= 3).then_some(())
        },
    );
    // Exactly, once everything is shipped: no other table counted anything.
    let t = table_events(&l, "shop", "orders");
    assert_eq!(sum(&t, "n_tup_ins"), 137);
    let last = t.last().expect("events");
    assert_eq!(int(&last["stats"]["n_live_tup"]), 134, "{last}");
    // The quiet table was shipped once (first pass) and then counted as unchanged.
    assert_eq!(table_events(&l, "shop", "quiet").len(), 1);
    wait_for(
        "a pass with nothing changed",
        Duration::from_secs(30),
        || {
            data_of(&l, "pg_tables")
                .iter()
                .any(|d| {
                    d["record"] == "database"
                        && d["datname"] == "shop"
                        && d["tables_unchanged"] == 2
                        && d["tables_shipped"] == 0
                        && d["tables_total"] == 2
                })
                .then_some(())
        },
    );
    // Every database the role may connect to was visited; the pass says so.
    let pass = data_of(&l, "pg_tables")
        .into_iter()
        .find(|d| d["record"] == "pass")
        .expect("a pass summary");
    assert_eq!(pass["databases_total"], 2, "{pass}");
    assert_eq!(pass["databases_read"], 2, "{pass}");
    // The freeze age is there against its limit; the size is measured at the first
    // reading and then every 10 minutes only (it walks every file).
    let shop_readings: Vec<Value> = data_of(&l, "pg_databases")
        .into_iter()
        .filter(|d| d["datname"] == "shop")
        .collect();
    assert!(
        int(&shop_readings[0]["size_bytes"]) > 1_000_000,
        "{}",
        shop_readings[0]
    );
    assert!(shop_readings.len() >= 2);
    assert!(shop_readings[1..]
        .iter()
        .all(|d| d.get("size_bytes").is_none()));
    let d = shop_readings[0].clone();
    assert_eq!(d["xid_freeze_max_age"], 200_000_000);
    assert!(d["xid_age"].as_i64().is_some(), "{d}");
    // A reset of the statistics is told apart from traffic: no negative deltas.
    shop("SELECT pg_stat_reset()");
    wait_for("the reset seen", Duration::from_secs(30), || {
        let db = data_of(&l, "pg_databases")
            .iter()
            .any(|d| d["datname"] == "shop" && d["reset"] == true);
        let table = table_events(&l, "shop", "orders")
            .iter()
            .any(|t| t["reset"] == true && t.get("deltas").is_none());
        (db && table).then_some(())
    });
    assert!(table_events(&l, "shop", "orders")
        .iter()
        .all(|t| t["deltas"]["n_tup_ins"].as_i64().is_none_or(|n| n >= 0)));
}

#[test]
fn the_cap_on_tables_per_database_counts_what_it_left_out() {
    let pg = cluster();
    pg.sql("CREATE TABLE busy (id int); CREATE TABLE idle1 (id int); CREATE TABLE idle2 (id int)");
    pg.sql("INSERT INTO busy SELECT generate_series(1, 50)");
    let (l, _dir, _agent) = agent_with(&pg, &["tables"], "tables_max_relations = 1\n");
    let summary = wait_for("a database summary", Duration::from_secs(30), || {
        data_of(&l, "pg_tables")
            .into_iter()
            .find(|d| d["record"] == "database" && d["datname"] == "postgres")
    });
    assert_eq!(summary["tables_total"], 3, "{summary}");
    assert_eq!(summary["tables_read"], 1, "{summary}");
    assert_eq!(summary["tables_left_out"], 2, "{summary}");
    // The most active one is the one read.
    assert_eq!(table_events(&l, "postgres", "busy").len(), 1);
    assert!(table_events(&l, "postgres", "idle1").is_empty());
}

#[test]
fn a_manual_vacuum_shows_in_progress_with_its_request_and_then_in_the_counts() {
    // In a database other than the agent's: the table is named through a short
    // connection to it.
    let pg = cluster();
    pg.sql("CREATE DATABASE shop");
    let shop = |sql: &str| {
        crate::harness::pg::run(pg.psql().args(["-d", "shop", "-c", sql]), sql);
    };
    shop("CREATE TABLE big (id int, pad text)");
    shop("INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 60000) g");
    shop("DELETE FROM big WHERE id % 2 = 0");
    let (l, _dir, _agent) = agent_with(&pg, &["vacuum_progress", "tables"], "");
    wait_for("the first pass", Duration::from_secs(30), || {
        (!table_events(&l, "shop", "big").is_empty()).then_some(())
    });
    // Slowed down so that it runs for a few seconds: about 1,700 pages, a pause of at
    // least 2 ms after each.
    let mut vacuum = pg.interactive_in("shop", &format!("bitville-{VACUUMER}"));
    vacuum.send("SET vacuum_cost_delay = '2ms';");
    vacuum.send("SET vacuum_cost_limit = 1;");
    vacuum.send("VACUUM big;");
    let seen = wait_for("the vacuum in progress", Duration::from_secs(60), || {
        data_of(&l, "pg_vacuum_progress")
            .into_iter()
            .find(|d| d["command"] == "vacuum" && d["correlation_id"] == VACUUMER)
    });
    assert_eq!(seen["relation"], "big", "{seen}");
    assert_eq!(seen["autovacuum"], false);
    assert_eq!(seen["datname"], "shop");
    assert!(seen["phase"].as_str().is_some(), "{seen}");
    assert!(
        seen["progress"].as_object().is_some_and(|p| !p.is_empty()),
        "{seen}"
    );
    wait_for(
        "the vacuum in the table's counts",
        Duration::from_secs(30),
        || {
            table_events(&l, "shop", "big")
                .iter()
                .any(|t| t["deltas"]["vacuum_count"] == 1 && t["stats"]["last_vacuum"].is_string())
                .then_some(())
        },
    );
}

#[test]
fn a_prepared_transaction_and_an_idle_transaction_are_named_as_the_horizon_holders() {
    let pg = cluster();
    pg.sql("CREATE TABLE h (id int)");
    pg.sql("BEGIN; INSERT INTO h VALUES (1); PREPARE TRANSACTION 'held-by-test'");
    let mut idle = pg.interactive(&format!("bitville-{HOLDER}"));
    idle.send("BEGIN; INSERT INTO h VALUES (2);");
    let (l, _dir, _agent) = agent_with(&pg, &["horizon"], "");
    let both = wait_for("both holders", Duration::from_secs(30), || {
        data_of(&l, "pg_xmin_horizon").into_iter().find(|d| {
            d["prepared"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["gid"] == "held-by-test"))
                && d["sessions"].as_array().is_some_and(|s| {
                    s.iter().any(|s| {
                        s["correlation_id"] == HOLDER && s["state"] == "idle in transaction"
                    })
                })
        })
    });
    // The prepared transaction took its id first: it is the oldest.
    assert_eq!(both["oldest"]["holder"], "prepared_transaction", "{both}");
    assert_eq!(both["oldest"]["name"], "held-by-test");
    assert_eq!(both["prepared_total"], 1);
    pg.sql("ROLLBACK PREPARED 'held-by-test'");
    let after = wait_for("the session as the oldest", Duration::from_secs(30), || {
        data_of(&l, "pg_xmin_horizon")
            .into_iter()
            .rev()
            .find(|d| d["prepared_total"] == 0 && d["oldest"]["holder"] == "session")
    });
    assert_eq!(after["oldest"]["correlation_id"], HOLDER, "{after}");
    drop(idle);
}

#[test]
fn a_checkpoint_and_a_changed_setting_show_up() {
    let pg = cluster();
    let (l, _dir, _agent) = agent_with(&pg, &["server_stats", "settings"], "");
    let first = wait_for("the first settings", Duration::from_secs(30), || {
        data_of(&l, "pg_settings").into_iter().next()
    });
    assert_eq!(first["first"], true);
    assert!(
        first["settings"].as_array().is_some_and(|s| s
            .iter()
            .any(|s| s["name"] == "autovacuum" && s["setting"] == "off")),
        "{first}"
    );
    // Our own session settings (the agent's statement_timeout) are not the server's.
    assert!(!first["settings"]
        .as_array()
        .expect("list")
        .iter()
        .any(|s| s["source"] == "client"));
    wait_for(
        "a second checkpointer reading",
        Duration::from_secs(30),
        || {
            data_of(&l, "pg_server_stats")
                .iter()
                .any(|d| d["checkpointer"]["deltas"].is_object())
                .then_some(())
        },
    );
    pg.sql("CHECKPOINT");
    wait_for(
        "the checkpoint in the deltas",
        Duration::from_secs(30),
        || {
            let n: i64 = data_of(&l, "pg_server_stats")
                .iter()
                .map(|d| int(&d["checkpointer"]["deltas"]["num_requested"]))
                .sum();
            (n == 1).then_some(())
        },
    );
    let stats = data_of(&l, "pg_server_stats").pop().expect("stats");
    // Which cluster it is, as the server says.
    let id = &stats["identity"];
    assert_eq!(
        id["system_identifier"],
        pg.sql("SELECT system_identifier::text FROM pg_control_system()")
            .as_str(),
        "{id}"
    );
    assert_eq!(
        (&id["role"], &id["timeline"]),
        (&"primary".into(), &1.into()),
        "{id}"
    );
    assert_eq!(
        id["version_num"].as_i64(),
        pg.sql("SHOW server_version_num").parse::<i64>().ok(),
        "{id}"
    );
    assert_eq!(id["version"], pg.sql("SHOW server_version").as_str());
    if major_version() >= 14 {
        assert!(
            stats["wal"]["stats"]["wal_records"].as_i64().is_some(),
            "{stats}"
        );
    }
    if major_version() >= 16 {
        assert!(stats["io"].is_array(), "{stats}");
    }
    pg.sql("ALTER SYSTEM SET work_mem = '7MB'");
    pg.sql("ALTER SYSTEM SET shared_buffers = '24MB'");
    pg.sql("SELECT pg_reload_conf()");
    let changed = wait_for("the change", Duration::from_secs(30), || {
        data_of(&l, "pg_settings").into_iter().find(|d| {
            d["changed"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["name"] == "work_mem"))
        })
    });
    let work_mem = changed["changed"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "work_mem"))
        .expect("work_mem");
    assert_eq!(work_mem["from"], Value::Null, "{changed}");
    assert_eq!(work_mem["to"], "7168");
    assert_eq!(work_mem["pending_restart"], false);
    assert!(
        changed["pending_restart"]
            .as_array()
            .is_some_and(|p| p.iter().any(|n| n == "shared_buffers")),
        "{changed}"
    );
    // Only when something changed: the next readings ship nothing.
    let n = data_of(&l, "pg_settings").len();
    let m = data_of(&l, "pg_server_stats").len();
    wait_for("more server readings", Duration::from_secs(20), || {
        (data_of(&l, "pg_server_stats").len() >= m + 3).then_some(())
    });
    assert_eq!(data_of(&l, "pg_settings").len(), n);
}

#[test]
fn every_source_shares_the_pool_and_the_agent_never_holds_more() {
    let pg = cluster();
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let toml = config(dir.path(), &pg, &listener.url(), 1)
        .replace("sample_interval_ms = 0", "sample_interval_ms = 100")
        .replace(
            "connect_timeout_ms = 2000",
            "connect_timeout_ms = 2000\npool_max_size = 2",
        )
        .replace(" = false\n", " = true\n")
        .replace("logs = true\n", "logs = false\n")
        .replace(
            "tables = true\n",
            "tables = true\ntables_interval_s = 1\nsettings_interval_s = 1\n",
        );
    let _agent = Agent::start(dir.path(), &toml, &[]);
    let mut most = 0;
    // Every source runs (statements fails each cycle without the extension, locks and
    // activity have nobody to report): the health sources are the ones that ship.
    let kinds = [
        "pg_databases",
        "pg_tables",
        "pg_xmin_horizon",
        "pg_replication",
        "pg_server_stats",
        "pg_settings",
    ];
    wait_for("every source shipping", Duration::from_secs(60), || {
        let n: i64 = pg
            .sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'postgres-agent'")
            .parse()
            .unwrap_or(0);
        most = most.max(n);
        kinds
            .iter()
            .all(|k| !listener.events_of(k).is_empty())
            .then_some(())
    });
    assert!(
        most <= 2,
        "{most} agent connections at once with pool_max_size = 2"
    );
    assert!(most >= 1);
}

/// The standby `name` as the primary's `pg_replication` event lists it.
fn standby_in<'a>(d: &'a Value, name: &str) -> Option<&'a Value> {
    d["standbys"]
        .as_array()?
        .iter()
        .find(|s| s["application_name"] == name)
}

/// The slot `name` in a `pg_replication` event.
fn slot_in<'a>(d: &'a Value, name: &str) -> Option<&'a Value> {
    d["slots"]
        .as_array()?
        .iter()
        .find(|s| s["slot_name"] == name)
}

#[test]
fn a_paused_standby_shows_lag_until_it_catches_up_and_an_unread_slot_retains_wal() {
    let primary = cluster();
    let standby = PgCluster::standby_of(&primary, "standby1");
    wait_for("the standby streaming", Duration::from_secs(60), || {
        (primary.sql("SELECT count(*) FROM pg_stat_replication WHERE application_name = 'standby1' AND state = 'streaming'") == "1")
            .then_some(())
    });
    primary.sql("SELECT pg_create_physical_replication_slot('nobody_reads', true)");
    let (l, _dir, _agent) = agent_with(&primary, &["replication"], "");
    let before = wait_for("the slot and the standby", Duration::from_secs(30), || {
        data_of(&l, "pg_replication")
            .into_iter()
            .find(|d| standby_in(d, "standby1").is_some() && slot_in(d, "nobody_reads").is_some())
    });
    assert_eq!(before["role"], "primary");
    let retained0 = int(&slot_in(&before, "nobody_reads").expect("slot")["retained_bytes"]);
    assert_eq!(
        slot_in(&before, "nobody_reads").expect("slot")["active"],
        false
    );

    // Replay paused on the standby: WAL still arrives, replay stands still.
    standby.sql("SELECT pg_wal_replay_pause()");
    primary.sql(
        "CREATE TABLE w AS SELECT g, repeat('w', 100) AS pad FROM generate_series(1, 20000) g",
    );
    let lagging = wait_for("replay lag in bytes", Duration::from_secs(30), || {
        data_of(&l, "pg_replication").into_iter().find(|d| {
            standby_in(d, "standby1").is_some_and(|s| int(&s["replay_lag_bytes"]) > 1_000_000)
        })
    });
    let s = standby_in(&lagging, "standby1").expect("standby");
    assert_eq!(s["state"], "streaming", "{s}");
    assert_eq!(s["sync_state"], "async");
    // The slot nobody reads keeps all of it.
    wait_for(
        "the slot retaining the new WAL",
        Duration::from_secs(30),
        || {
            data_of(&l, "pg_replication")
                .iter()
                .any(|d| {
                    slot_in(d, "nobody_reads")
                        .is_some_and(|s| int(&s["retained_bytes"]) > retained0 + 1_000_000)
                })
                .then_some(())
        },
    );
    // The standby's own view, through `once`.
    let dir = shared_tempdir("pgagent-it");
    let path = dir.path().join("standby.toml");
    std::fs::write(
        &path,
        config(dir.path(), &standby, "http://127.0.0.1:9/", 1)
            .replace("\nreplication = false\n", "\nreplication = true\n")
            .replace("[collection]\n", "[collection]\nactivity = false\n"),
    )
    .expect("config");
    let seen = crate::harness::agent::once(&path);
    let here = seen
        .iter()
        .find(|e| e["kind"] == "pg_replication")
        .map(|e| &e["data"])
        .expect("a pg_replication event from the standby");
    assert_eq!(here["role"], "standby", "{here}");
    assert_eq!(here["replay"]["paused"], true, "{here}");
    assert!(
        int(&here["replay"]["replay_lag_bytes"]) > 1_000_000,
        "{here}"
    );
    assert_eq!(here["receiver"]["status"], "streaming", "{here}");

    standby.sql("SELECT pg_wal_replay_resume()");
    wait_for("the standby caught up", Duration::from_secs(60), || {
        data_of(&l, "pg_replication")
            .iter()
            .rev()
            .take(1)
            .any(|d| {
                standby_in(d, "standby1")
                    .is_some_and(|s| s["replay_lag_bytes"] == 0 && s["flush_lag_bytes"] == 0)
            })
            .then_some(())
    });
}

#[test]
fn check_names_what_the_health_sources_lack_with_the_fix() {
    let pg = cluster();
    pg.sql("CREATE ROLE agent_np LOGIN");
    pg.sql("CREATE DATABASE closed");
    pg.sql("REVOKE CONNECT ON DATABASE closed FROM PUBLIC");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let path = dir.path().join("agent.toml");
    let run = |user: &str| -> String {
        std::fs::write(
            &path,
            config(dir.path(), &pg, &listener.url(), 60)
                .replace("user = \"postgres\"", &format!("user = \"{user}\""))
                .replace("\ntables = false\n", "\ntables = true\n")
                .replace("\ndatabases = false\n", "\ndatabases = true\n"),
        )
        .expect("config");
        let out = std::process::Command::new(crate::harness::agent::bin())
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .expect("check");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = run("agent_np");
    assert!(out.contains("lacks pg_read_all_stats"), "{out}");
    assert!(out.contains("GRANT pg_monitor TO agent_np;"), "{out}");
    assert!(
        out.contains("cannot connect to 1 of 2 databases: closed"),
        "{out}"
    );
    assert!(
        out.contains("GRANT CONNECT ON DATABASE closed TO agent_np;"),
        "{out}"
    );
    assert!(out.contains("track_io_timing is off"), "{out}");
    // With the fixes applied, the warnings are gone.
    pg.sql("GRANT pg_monitor TO agent_np");
    pg.sql("GRANT CONNECT ON DATABASE closed TO agent_np");
    pg.sql("ALTER SYSTEM SET track_io_timing = on");
    pg.sql("SELECT pg_reload_conf()");
    let out = run("agent_np");
    assert!(
        out.contains("the tables pass can read 2 of 2 databases"),
        "{out}"
    );
    assert!(!out.contains("track_io_timing is off"), "{out}");
    assert!(!out.contains("pg_read_all_stats"), "{out}");
}

#[test]
fn a_database_the_role_may_not_connect_to_is_named_in_the_pass_and_in_status() {
    let pg = cluster();
    pg.sql("CREATE ROLE agent_m LOGIN; GRANT pg_monitor TO agent_m");
    pg.sql("CREATE DATABASE closed");
    pg.sql("REVOKE CONNECT ON DATABASE closed FROM PUBLIC");
    pg.sql("CREATE TABLE seen (id int)");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let toml = config(dir.path(), &pg, &listener.url(), 1)
        .replace("user = \"postgres\"", "user = \"agent_m\"")
        .replace(
            "\ntables = false\n",
            "\ntables = true\ntables_interval_s = 1\n",
        )
        .replace("[collection]\n", "[collection]\nactivity = false\n");
    let agent = Agent::start(dir.path(), &toml, &[]);
    let pass = wait_for("a pass", Duration::from_secs(30), || {
        data_of(&listener, "pg_tables")
            .into_iter()
            .find(|d| d["record"] == "pass")
    });
    assert_eq!(
        pass["databases_without_connect"],
        serde_json::json!(["closed"]),
        "{pass}"
    );
    assert_eq!(pass["databases_read"], 1, "{pass}");
    assert_eq!(table_events(&listener, "postgres", "seen").len(), 1);
    let state = wait_for("the state in status", Duration::from_secs(30), || {
        agent.status()["children"]["pg_tables"]["detail"]["source_state"]
            .as_str()
            .map(str::to_string)
    });
    assert!(state.starts_with("degraded"), "{state}");
    assert!(
        state.contains("GRANT CONNECT ON DATABASE \"closed\" TO agent_m;"),
        "{state}"
    );
}

#[test]
fn names_that_are_not_utf8_are_read_lossily_and_blind_no_pass() {
    // A SQL_ASCII database keeps the bytes a client sent: a table named in Latin-1.
    let pg = cluster();
    pg.sql(
        "CREATE DATABASE rawdb ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'",
    );
    let mut raw = pg.interactive_in("rawdb", "raw");
    raw.send_bytes(b"CREATE TABLE \"caf\xe9\" (id int); INSERT INTO \"caf\xe9\" VALUES (1);");
    raw.send_bytes(b"CREATE TABLE plain (id int);");
    wait_for("the tables", Duration::from_secs(10), || {
        (pg.sql("SELECT count(*) FROM pg_database WHERE datname = 'rawdb'") == "1"
            && crate::harness::pg::run(
                pg.psql().args([
                    "-d",
                    "rawdb",
                    "-c",
                    "SELECT count(*) FROM pg_class WHERE relname = 'plain'",
                ]),
                "count",
            )
            .stdout
            .starts_with(b"1"))
        .then_some(())
    });
    let (l, _dir, _agent) = agent_with(&pg, &["tables", "databases", "vacuum_progress"], "");
    let summary = wait_for("rawdb's summary", Duration::from_secs(30), || {
        data_of(&l, "pg_tables")
            .into_iter()
            .find(|d| d["record"] == "database" && d["datname"] == "rawdb")
    });
    assert_eq!(summary["tables_read"], 2, "{summary}");
    assert!(summary.get("error").is_none(), "{summary}");
    let names: Vec<String> = data_of(&l, "pg_tables")
        .iter()
        .filter(|d| d["record"] == "table" && d["datname"] == "rawdb")
        .filter_map(|d| d["relation"].as_str().map(str::to_string))
        .collect();
    assert!(names.contains(&"caf\u{fffd}".to_string()), "{names:?}");
    assert!(names.contains(&"plain".to_string()), "{names:?}");
    drop(raw);
}

#[test]
fn a_first_pass_larger_than_the_backlog_ships_every_table_exactly_once() {
    let pg = cluster();
    // Four databases of 200 tables with 3 indexes each: a first pass of about 2 MB of
    // events, against a collector backlog cut to 512 KB for the test (the agent's is
    // larger, and a large cluster overflowed it the same way).
    let dbs = ["d1", "d2", "d3", "d4"];
    for d in dbs {
        pg.sql(&format!("CREATE DATABASE {d}"));
        crate::harness::pg::run(
            pg.psql().args([
                "-d",
                d,
                "-c",
                "DO $$ BEGIN FOR i IN 1..200 LOOP \
                   EXECUTE format('CREATE TABLE t%s (a int PRIMARY KEY, b int, c int)', i); \
                   EXECUTE format('CREATE INDEX ON t%s (b)', i); \
                   EXECUTE format('CREATE INDEX ON t%s (c)', i); \
                 END LOOP; END $$",
            ]),
            "200 tables",
        );
    }
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let faults = dir.path().join("faults");
    std::fs::create_dir_all(&faults).expect("mkdir");
    std::fs::write(faults.join("backlog_bytes"), "524288").expect("write");
    let toml = config(dir.path(), &pg, &listener.url(), 1)
        .replace("[collection]\n", "[collection]\nactivity = false\n")
        .replace(
            "\ntables = false\n",
            "\ntables = true\ntables_interval_s = 1\n",
        );
    let agent = Agent::start(
        dir.path(),
        &toml,
        &[("POSTGRES_AGENT_FAULT_DIR", faults.to_str().expect("utf8"))],
    );
    let tables = || {
        data_of(&listener, "pg_tables")
            .into_iter()
            .filter(|d| {
                d["record"] == "table" && dbs.contains(&d["datname"].as_str().unwrap_or(""))
            })
            .collect::<Vec<_>>()
    };
    wait_for(
        "the first pass's summaries",
        Duration::from_secs(120),
        || {
            let summaries = data_of(&listener, "pg_tables")
                .into_iter()
                .filter(|d| {
                    d["record"] == "database" && dbs.contains(&d["datname"].as_str().unwrap_or(""))
                })
                .count();
            (summaries >= dbs.len()).then_some(())
        },
    );
    // Every table once: the first pass ships them all, the next ones nothing (quiet).
    wait_for("every table shipped", Duration::from_secs(60), || {
        (tables().len() >= 800).then_some(())
    });
    let mut seen = std::collections::HashMap::new();
    for t in tables() {
        *seen
            .entry(format!("{}.{}", t["datname"], t["relation"]))
            .or_insert(0) += 1;
        assert_eq!(t["indexes"].as_array().map(Vec::len), Some(3), "{t}");
    }
    assert_eq!(seen.len(), 800);
    assert!(seen.values().all(|&n| n == 1), "shipped twice: {seen:?}");
    let dropped: Vec<Value> = listener
        .events_of("agent")
        .into_iter()
        .filter(|e| e["data"]["event"] == "events_dropped")
        .collect();
    assert!(dropped.is_empty(), "{dropped:?}");
    let dropped_total = wait_for(
        "the collector's figures in status",
        Duration::from_secs(30),
        || agent.status()["children"]["pg_tables"]["detail"]["dropped_events_total"].as_u64(),
    );
    assert_eq!(dropped_total, 0);
}

#[test]
fn a_promoted_standby_is_one_role_changed_and_every_baseline_restarts_with_it() {
    let primary = cluster();
    let standby = PgCluster::standby_of(&primary, "standby1");
    wait_for("the standby streaming", Duration::from_secs(60), || {
        (primary.sql("SELECT count(*) FROM pg_stat_replication WHERE application_name = 'standby1' AND state = 'streaming'") == "1")
            .then_some(())
    });
    let (l, _dir, _agent) = agent_with(&standby, &["databases", "server_stats"], "");
    // Deltas flowing on the standby.
    wait_for(
        "the standby's database deltas",
        Duration::from_secs(30),
        || {
            data_of(&l, "pg_databases")
                .iter()
                .any(|d| d["deltas"].is_object())
                .then_some(())
        },
    );
    let before = data_of(&l, "pg_server_stats").pop().expect("stats")["identity"].clone();
    assert_eq!(before["role"], "standby", "{before}");

    standby.sql("SELECT pg_promote()");
    let role_changed = |l: &Listener| -> Vec<Value> {
        l.events_of("agent")
            .into_iter()
            .filter(|e| e["data"]["event"] == "role_changed")
            .collect()
    };
    let changed = wait_for("role_changed", Duration::from_secs(60), || {
        role_changed(&l).into_iter().next()
    });
    let d = &changed["data"];
    assert_eq!(d["server"], "it-host", "{d}");
    assert_eq!(changed["server"], "it-host", "{changed}");
    assert_eq!(d["before"], before, "{d}");
    assert_eq!(d["after"]["role"], "primary", "{d}");
    assert_eq!(
        d["after"]["system_identifier"], before["system_identifier"],
        "{d}"
    );
    assert_eq!(
        int(&d["after"]["timeline"]),
        int(&before["timeline"]) + 1,
        "{d}"
    );

    // Each source starts a new baseline after the change: a reading whose every row is a
    // first one (a reading that began before the change was seen may still compare).
    let at = changed["collected_at"].as_str().expect("time").to_string();
    for kind in ["pg_databases", "pg_server_stats"] {
        wait_for(
            &format!("{kind}'s new baseline"),
            Duration::from_secs(30),
            || {
                let mut by_time: BTreeMap<String, Vec<Value>> = BTreeMap::new();
                for e in l.events_of(kind) {
                    let t = e["collected_at"].as_str().unwrap_or_default().to_string();
                    if t >= at {
                        by_time.entry(t).or_default().push(e["data"].clone());
                    }
                }
                by_time
                    .values()
                    .any(|rows| {
                        rows.iter().all(|d| {
                            if kind == "pg_databases" {
                                d["first"] == true
                            } else {
                                d["checkpointer"]["first"] == true && d["bgwriter"]["first"] == true
                            }
                        })
                    })
                    .then_some(())
            },
        );
    }
    // Still one change, however many cycles later.
    let n = data_of(&l, "pg_server_stats").len();
    wait_for("three more cycles", Duration::from_secs(30), || {
        (data_of(&l, "pg_server_stats").len() >= n + 3).then_some(())
    });
    assert_eq!(role_changed(&l).len(), 1);
}

#[test]
fn another_cluster_at_the_same_address_is_a_role_changed_and_no_delta_crosses_it() {
    let mut first = cluster();
    let (l, _dir, _agent) = agent_with(&first, &["databases", "server_stats"], "");
    wait_for(
        "the first cluster's deltas",
        Duration::from_secs(30),
        || {
            data_of(&l, "pg_databases")
                .iter()
                .any(|d| d["deltas"].is_object())
                .then_some(())
        },
    );
    let old_id = first.sql("SELECT system_identifier::text FROM pg_control_system()");
    // A cluster of its own (another initdb) takes the first one's socket.
    first.stop_server();
    let mut second = PgCluster::init(&format!(
        "unix_socket_directories = '{}'\n",
        first.socket_dir().display()
    ));
    second.start_server();
    let changed = wait_for("role_changed", Duration::from_secs(60), || {
        l.events_of("agent")
            .into_iter()
            .find(|e| e["data"]["event"] == "role_changed")
    });
    let d = &changed["data"];
    assert_eq!(d["before"]["system_identifier"], old_id.as_str(), "{d}");
    let new_id = first.sql("SELECT system_identifier::text FROM pg_control_system()");
    assert_ne!(new_id, old_id);
    assert_eq!(d["after"]["system_identifier"], new_id.as_str(), "{d}");
    assert_eq!(
        (&d["before"]["role"], &d["after"]["role"]),
        (&"primary".into(), &"primary".into())
    );
    // The same database OIDs in both clusters (initdb gives `postgres` the same one):
    // each one's first reading after the change is a first one (not a comparison with
    // the old cluster's counters, which would be a reset or a false delta), and the
    // next ones compare with the new cluster's.
    let at = changed["collected_at"].as_str().expect("time").to_string();
    let after = |l: &Listener| -> Vec<Value> {
        l.events_of("pg_databases")
            .into_iter()
            .filter(|e| e["collected_at"].as_str().is_some_and(|t| t >= at.as_str()))
            .collect()
    };
    wait_for(
        "a delta of the new cluster",
        Duration::from_secs(30),
        || {
            after(&l)
                .iter()
                .any(|e| e["data"]["datname"] == "postgres" && e["data"]["deltas"].is_object())
                .then_some(())
        },
    );
    let mut seen = std::collections::HashSet::new();
    for e in after(&l) {
        let d = &e["data"];
        if seen.insert(d["datid"].clone()) {
            assert_eq!(d["first"], true, "{d}");
        } else if let Some(deltas) = d["deltas"].as_object() {
            for (k, v) in deltas {
                assert!(v.as_f64().unwrap_or(0.0) >= 0.0, "{k}: {d}");
            }
        }
    }
    drop(second);
}

#[test]
fn a_cluster_replaced_while_the_agent_was_down_is_one_role_changed_at_its_start() {
    let mut first = cluster();
    let (l, dir, mut agent) = agent_with(&first, &["server_stats"], "");
    wait_for("the first identity", Duration::from_secs(30), || {
        (!data_of(&l, "pg_server_stats").is_empty()).then_some(())
    });
    let old_id = first.sql("SELECT system_identifier::text FROM pg_control_system()");
    agent.signal(libc::SIGTERM);
    agent
        .wait_exit(Duration::from_secs(30))
        .expect("agent exit");
    // While the agent is down, another cluster takes the first one's socket.
    first.stop_server();
    let mut second = PgCluster::init(&format!(
        "unix_socket_directories = '{}'\n",
        first.socket_dir().display()
    ));
    second.start_server();
    let new_id = first.sql("SELECT system_identifier::text FROM pg_control_system()");
    assert_ne!(new_id, old_id);
    let role_changed = |l: &Listener| -> Vec<Value> {
        l.events_of("agent")
            .into_iter()
            .filter(|e| e["data"]["event"] == "role_changed")
            .collect()
    };
    let toml = std::fs::read_to_string(dir.path().join("agent.toml")).expect("config");
    let mut agent = Agent::start(dir.path(), &toml, &[]);
    let changed = wait_for("role_changed at start", Duration::from_secs(60), || {
        role_changed(&l).into_iter().next()
    });
    let d = &changed["data"];
    assert_eq!(d["before"]["system_identifier"], old_id.as_str(), "{d}");
    assert_eq!(d["after"]["system_identifier"], new_id.as_str(), "{d}");
    // Stored with its report: the next start against the same cluster says nothing.
    let shipped = data_of(&l, "pg_server_stats").len();
    agent.signal(libc::SIGTERM);
    agent
        .wait_exit(Duration::from_secs(30))
        .expect("agent exit");
    let _agent = Agent::start(dir.path(), &toml, &[]);
    wait_for(
        "server stats after the restart",
        Duration::from_secs(60),
        || (data_of(&l, "pg_server_stats").len() >= shipped + 2).then_some(()),
    );
    assert_eq!(role_changed(&l).len(), 1, "{:?}", role_changed(&l));
    drop(second);
}
