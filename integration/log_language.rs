//! Servers that write their log in another language. Debian's PostgreSQL 15 carries the
//! message catalogues; the builds the version matrix uses have none, so this module is
//! not in the matrix.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::agent::{config, Agent};
use crate::harness::listener::Listener;
use crate::harness::pg::PgCluster;
use crate::harness::wait_for;
use crate::logs::LOG_CONF;

/// Statements that each make the server write one error, by name.
const PROBES: [(&str, &str); 6] = [
    ("division", "select 1/0"),
    ("undefined_table", "select * from no_such_table"),
    ("unique", "insert into probe values (1)"),
    ("not_null", "insert into probe values (null)"),
    ("syntax", "selec 1"),
    ("undefined_column", "select no_such_column from probe"),
];

#[test]
fn a_translated_servers_messages_read_as_the_english_ones() {
    // German, Russian and C.UTF-8 made for this server alone (LOCPATH): no root, no
    // change to the machine; Debian's PostgreSQL 15 carries their catalogues.
    let locales = crate::harness::shared_tempdir("pgagent-locales");
    for (src, name) in [
        ("de_DE", "de_DE.utf8"),
        ("ru_RU", "ru_RU.utf8"),
        ("C", "C.utf8"),
    ] {
        let out = Command::new("localedef")
            .args(["-i", src, "-f", "UTF-8"])
            .arg(locales.path().join(name))
            .output()
            .expect("localedef (Debian package locales)");
        assert!(
            out.status.success() || out.status.code() == Some(1),
            "localedef {src}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // stderr without %e: no SQLSTATE to go by, only the text.
    let mut pg = PgCluster::init(&format!(
        "{LOG_CONF}log_destination = 'stderr'\nlog_directory = 'log'\nlc_messages = 'C.UTF-8'\n\
         log_connections = off\nlog_disconnections = off\n"
    ));
    pg.start_server_env(&[("LOCPATH", locales.path().as_os_str())]);
    // The server writes a database's messages in its encoding: a SQL_ASCII database
    // (initdb's default here) gets them transliterated (`>>t<<`, `delenie na nol'`).
    pg.sql("create database probe encoding 'UTF8' template template0 lc_collate 'C' lc_ctype 'C'");
    crate::harness::pg::run(
        pg.psql().args([
            "-d",
            "probe",
            "-c",
            "create table probe (id int primary key); insert into probe values (1)",
        ]),
        "create table probe",
    );
    let listener = Listener::start(crate::harness::agent::TOKEN);
    let dir = crate::harness::shared_tempdir("pgagent-it");
    let toml =
        config(dir.path(), &pg, &listener.url(), 60).replace("logs = false\n", "logs = true\n");
    let agent = Agent::start(dir.path(), &toml, &[]);
    agent.wait_log("log_file_opened", Duration::from_secs(20), |_| true);

    // What matters of an event, per language and probe.
    let mut seen: BTreeMap<(&str, &str), Value> = BTreeMap::new();
    for lang in ["C.UTF-8", "de_DE.UTF-8", "ru_RU.UTF-8"] {
        // For the sessions to come: a statement that fails to parse fails before a SET
        // in front of it would run.
        pg.sql(&format!("alter role postgres set lc_messages = '{lang}'"));
        for (probe, sql) in PROBES {
            let marker = format!("{probe}-{}", &lang[..2]);
            let mut session = pg.interactive_in("probe", "probe");
            session.send(&format!("{sql} /* {marker} */;"));
            let event = wait_for(
                &format!("{marker} shipped"),
                Duration::from_secs(30),
                || {
                    let found = listener.events_of("pg_log").into_iter().find(|e| {
                        e["data"]["statement"]
                            .as_str()
                            .is_some_and(|s| s.contains(&marker))
                    });
                    let stderr = agent.stderr();
                    assert!(!stderr.contains("panic"), "the agent panicked: {stderr}");
                    found
                },
            );
            drop(session);
            let d = &event["data"];
            seen.insert(
                (lang, probe),
                json!({
                    "severity": d["severity"], "class": d["class"], "subclass": d["subclass"],
                    "message_id": d["message_id"], "message_template": d["message_template"],
                    "figures": d["figures"], "message_language": d["message_language"],
                }),
            );
        }
    }
    for (probe, _) in PROBES {
        let english = &seen[&("C.UTF-8", probe)];
        assert_eq!(english["severity"], "ERROR", "{probe}: {english}");
        assert!(english["subclass"].is_string(), "{probe}: {english}");
        assert!(english["message_id"].is_string(), "{probe}: {english}");
        assert_eq!(english["message_language"], Value::Null, "{probe}");
        for (lang, code) in [("de_DE.UTF-8", "de"), ("ru_RU.UTF-8", "ru")] {
            let mut translated = seen[&(lang, probe)].clone();
            assert_eq!(translated["message_language"], code, "{probe} in {lang}");
            translated["message_language"] = Value::Null;
            assert_eq!(&translated, english, "{probe} in {lang}");
        }
    }
    assert_eq!(
        seen[&("de_DE.UTF-8", "unique")]["figures"],
        json!({"constraint": "probe_pkey", "key_columns": "id"})
    );
    assert_eq!(
        seen[&("ru_RU.UTF-8", "undefined_table")]["subclass"],
        "undefined_table"
    );
    // Languages the agent reads are no reason to warn.
    assert_eq!(
        agent.logs_named("log_messages_localized"),
        Vec::<Value>::new()
    );
}
