//! A `SQL_ASCII` database passes bytes through unconverted: one session there whose query
//! text is not UTF-8 must not blind any source (pg_activity failed every cycle with
//! "error deserializing column", pg_locks during exactly the pile-up it exists for,
//! pg_statements with "invalid byte sequence" and a reset baseline each time).

use std::time::Duration;

use serde_json::Value;

use crate::harness::agent::{config, once, Agent, TOKEN};
use crate::harness::listener::Listener;
use crate::harness::pg::{run, PgCluster};
use crate::harness::{shared_tempdir, wait_for};

#[test]
fn text_that_is_not_utf8_is_read_lossily_and_flagged_by_every_source() {
    let pg = PgCluster::start("shared_preload_libraries = 'pg_stat_statements'\n");
    pg.sql("create extension pg_stat_statements");
    pg.sql(
        "CREATE DATABASE rawdb ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'",
    );
    let raw = |sql: &str| {
        run(pg.psql().args(["-d", "rawdb", "-c", sql]), sql);
    };
    raw("create table t (x int); insert into t values (1)");
    // Idle, its last statement not UTF-8.
    let mut idle = pg.interactive_in("rawdb", "raw-idle");
    idle.send_bytes(b"/* c\xff */ SELECT 42;");
    // A lock holder and a waiter, both with such text.
    let mut holder = pg.interactive_in("rawdb", "raw-holder");
    holder.send_bytes(b"BEGIN; /* hold\xfe */ LOCK TABLE t IN ACCESS EXCLUSIVE MODE;");
    let state = |app: &str| {
        pg.sql(&format!(
            "select coalesce(max(state || ':' || coalesce(wait_event_type, '')), '') from pg_stat_activity where application_name = '{app}'"
        ))
    };
    wait_for(
        "the holder idle in transaction",
        Duration::from_secs(10),
        || (state("raw-holder") == "idle in transaction:Client").then_some(()),
    );
    let mut waiter = pg.interactive_in("rawdb", "raw-waiter");
    waiter.send_bytes(b"/* wait\xfd */ SELECT count(*) FROM t;");
    wait_for("the waiter blocked", Duration::from_secs(10), || {
        (state("raw-waiter") == "active:Lock").then_some(())
    });
    wait_for("the idle session's text", Duration::from_secs(10), || {
        (state("raw-idle") == "idle:Client").then_some(())
    });

    let dir = shared_tempdir("pgagent-it");
    let toml = config(dir.path(), &pg, "http://127.0.0.1:9/ingest", 60)
        .replace("statements = false", "statements = true")
        .replace("locks = false", "locks = true");
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, toml).expect("write config");
    let events = once(&path);
    let of = |kind: &str| -> Vec<&Value> { events.iter().filter(|e| e["kind"] == kind).collect() };

    let activity = of("pg_activity");
    let by_app = |app: &str| {
        activity
            .iter()
            .find(|e| e["data"]["application_name"] == app)
            .unwrap_or_else(|| panic!("{app} missing from pg_activity: {activity:?}"))
    };
    let idle_ev = by_app("raw-idle");
    assert_eq!(idle_ev["data"]["query"], "/* c\u{fffd} */ SELECT 42;");
    assert_eq!(idle_ev["data"]["not_utf8"], true);
    assert_eq!(idle_ev["data"]["datname"], "rawdb");
    // The other sessions are all there, the agent's own excepted.
    assert!(activity.len() >= 3, "{activity:?}");

    let locks = of("pg_locks");
    assert_eq!(locks.len(), 1, "{locks:?}");
    let l = &locks[0]["data"];
    assert_eq!(
        l["blocked"]["query"],
        "/* wait\u{fffd} */ SELECT count(*) FROM t;"
    );
    assert_eq!(l["blocked"]["not_utf8"], true);
    assert_eq!(l["blocking"][0]["application_name"], "raw-holder");
    assert_eq!(
        l["blocking"][0]["query"],
        "/* hold\u{fffd} */ LOCK TABLE t IN ACCESS EXCLUSIVE MODE;"
    );

    // pg_statements reads texts for new queryids: run by the daemon, a statement from
    // rawdb called again after the baseline arrives with its text, not a failed cycle.
    assert_eq!(of("pg_statements").len(), 1, "the baseline summary");
    let listener = Listener::start(TOKEN);
    let toml = config(dir.path(), &pg, &listener.url(), 1)
        .replace("statements = false", "statements = true")
        .replace("[collection]\n", "[collection]\nactivity = false\n");
    let agent = Agent::start(dir.path(), &toml, &[]);
    wait_for("the statements baseline", Duration::from_secs(30), || {
        (!listener.events_of("pg_statements").is_empty()).then_some(())
    });
    // A statement new since the baseline whose normalized text keeps the bytes: a
    // table name (identifiers are not normalized, and a new table is a new queryid).
    idle.send_bytes(b"CREATE TABLE \"t\xff\" (x int); SELECT x FROM \"t\xff\";");
    let ev = wait_for(
        "the rawdb statement with its text",
        Duration::from_secs(30),
        || {
            listener.events_of("pg_statements").into_iter().find(|e| {
                e["data"]["query"]
                    .as_str()
                    .is_some_and(|q| q.starts_with("SELECT x FROM \"t\u{fffd}\""))
            })
        },
    );
    assert_eq!(ev["data"]["calls"], 1, "{ev}");
    let st = agent.status();
    assert_eq!(st["children"]["pg_statements"]["restarts"], 0, "{st}");
    drop((idle, holder, waiter));
}

/// One statement whose text is not UTF-8, written in a `SQL_ASCII` database, fails
/// `pg_stat_statements(true)` as a whole when the agent reads it from a UTF8 database
/// (every entry's text is converted). Names never depend on texts; the texts are read in
/// a `SQL_ASCII` database with the extension, where nothing is converted, and until
/// there is one the summary says so and how to fix it.
#[test]
fn a_text_a_utf8_database_cannot_hold_blinds_no_other_statement() {
    use std::os::unix::ffi::OsStrExt;
    let pg = PgCluster::start("shared_preload_libraries = 'pg_stat_statements'\n");
    pg.sql("CREATE DATABASE utf8db ENCODING 'UTF8' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'");
    pg.sql("CREATE DATABASE sqlascii ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'");
    let in_db = |db: &str, sql: &[u8]| {
        run(
            pg.psql()
                .args(["-d", db, "-c"])
                .arg(std::ffi::OsStr::from_bytes(sql))
                .env("PGCLIENTENCODING", "SQL_ASCII"),
            "a statement",
        );
    };
    in_db(
        "utf8db",
        b"create extension pg_stat_statements; create table marker_t (x int)",
    );
    in_db("sqlascii", b"create table t (x int)");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let toml = config(dir.path(), &pg, &listener.url(), 1)
        .replace("dbname = \"postgres\"", "dbname = \"utf8db\"")
        .replace("statements = false", "statements = true")
        .replace("[collection]\n", "[collection]\nactivity = false\n");
    let _agent = Agent::start(dir.path(), &toml, &[]);
    wait_for("the statements baseline", Duration::from_secs(30), || {
        (!listener.events_of("pg_statements").is_empty()).then_some(())
    });
    let statement = |prefix: &'static str| {
        let listener = &listener;
        move || {
            listener.events_of("pg_statements").into_iter().find(|e| {
                e["data"]["query"]
                    .as_str()
                    .is_some_and(|q| q.starts_with(prefix))
            })
        }
    };

    // Without the extension in the SQL_ASCII database: names arrive, texts cannot.
    in_db("sqlascii", b"select x as \"\xff\" from t");
    in_db("utf8db", b"select count(*) from marker_t where x = 1");
    let marker = wait_for("the marker's counts", Duration::from_secs(30), || {
        listener.events_of("pg_statements").into_iter().find(|e| {
            e["data"]["datname"] == "utf8db"
                && e["data"]["calls"] == 1
                && e["data"]["query"].is_null()
        })
    });
    assert_eq!(marker["data"]["usename"], "postgres", "{marker}");
    let summary = wait_for("a summary saying why", Duration::from_secs(30), || {
        listener.events_of("pg_statements").into_iter().find(|e| {
            e["data"]["names_error"].as_str().is_some_and(|m| {
                m.contains("CREATE EXTENSION pg_stat_statements; in")
                    && m.contains("SQL_ASCII database")
                    && m.contains("sqlascii")
            })
        })
    });
    assert!(
        summary["data"]["names_error"]
            .as_str()
            .unwrap_or("")
            .contains("(22021)"),
        "{summary}"
    );

    // With it: every text, the one that is not UTF-8 lossily and flagged.
    in_db("sqlascii", b"create extension pg_stat_statements");
    in_db("utf8db", b"select count(*) from marker_t where x = 2");
    let good = wait_for(
        "the marker's text",
        Duration::from_secs(30),
        statement("select count(*) from marker_t where x = $1"),
    );
    assert_eq!(good["data"]["datname"], "utf8db");
    assert_eq!(good["data"].get("not_utf8"), None, "{good}");
    in_db("sqlascii", b"select x as \"\xff\" from t");
    let bad = wait_for(
        "the SQL_ASCII statement's text",
        Duration::from_secs(30),
        statement("select x as \"\u{fffd}\" from t"),
    );
    assert_eq!(bad["data"]["not_utf8"], true, "{bad}");
    assert_eq!(bad["data"]["datname"], "sqlascii");
}
