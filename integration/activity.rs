//! The pg_activity source end to end: what a tagged session looks like at the listener.

use std::time::Duration;

use serde_json::Value;

use crate::harness::agent::{config, Agent, TOKEN};
use crate::harness::listener::Listener;
use crate::harness::pg::PgCluster;
use crate::harness::{shared_tempdir, wait_for};

const UUID: &str = "0f1c2b7e-0d3a-4c55-9a8e-1b2c3d4e5f60";

#[test]
fn tagged_session_reaches_the_listener_with_its_correlation_id() {
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let _session = pg.session(&format!("bitville-{UUID}"), "select pg_sleep(60)");
    let agent = Agent::start(
        dir.path(),
        &config(dir.path(), &pg, &listener.url(), 1),
        &[],
    );

    let ev = wait_for(
        "the tagged session's event",
        Duration::from_secs(30),
        || {
            listener
                .events_of("pg_activity")
                .into_iter()
                // The session is visible (tagged, query still empty) a moment before
                // psql sends its statement; wait for a sample of it running.
                .find(|e| e["data"]["correlation_id"] == UUID && e["data"]["state"] == "active")
        },
    );
    let d = &ev["data"];
    assert_eq!(d["application_name"], format!("bitville-{UUID}"));
    assert_eq!(d["correlation_source"], "application_name");
    assert_eq!(d["query"], "select pg_sleep(60)");
    assert_eq!(d["state"], "active");
    assert_eq!(d["wait_event"], "PgSleep");
    assert_eq!(d["usename"], "postgres");
    assert_eq!(d["datname"], "postgres");
    assert_eq!(d["query_truncated"], false);
    assert_eq!(
        d["query_fingerprint"].as_str(),
        postgres_agent::fingerprint::fingerprint("SELECT pg_sleep($1)").as_deref()
    );
    assert_eq!(ev["project"], "it-project");
    let id = ev["id"].as_str().expect("id");
    assert!(
        id.starts_with("pg_activity:it-host:") && id.ends_with(&format!(":{}", d["pid"])),
        "{id}"
    );

    // Envelope contract on every request.
    for r in listener.received() {
        assert_eq!(r.path, "/ingest/postgres");
        assert_eq!(r.auth.as_deref(), Some(&*format!("Bearer {TOKEN}")));
        assert_eq!(r.encoding.as_deref(), Some("gzip"));
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        let body = r.body.as_ref().expect("body decodes");
        assert_eq!(r.idempotency_key.as_deref(), body["batch_id"].as_str());
        assert_eq!(body["project"], "it-project");
        assert_eq!(body["agent"]["host"], "it-host");
        assert_eq!(body["agent"]["version"], env!("CARGO_PKG_VERSION"));
        assert!(body["sent_at"].as_str().is_some());
        for e in body["events"].as_array().expect("events") {
            for k in ["id", "kind", "collected_at", "data"] {
                assert!(!e[k].is_null(), "event without {k}: {e}");
            }
            assert_eq!(e["project"], "it-project");
            // The server it is about (the single-server form: named after the host);
            // the agent's own events name none.
            let server = if e["kind"] == "agent" {
                Value::Null
            } else {
                Value::from("it-host")
            };
            assert_eq!(e["server"], server, "{e}");
        }
    }

    // The agent never reports its own sessions.
    let own: Vec<Value> = listener
        .events_of("pg_activity")
        .into_iter()
        .filter(|e| e["data"]["application_name"] == "postgres-agent")
        .collect();
    assert!(own.is_empty(), "agent's own backend reported: {own:?}");
    // One pooled connection for the one collector, whatever the cycle count.
    let settings =
        pg.sql("select count(*) from pg_stat_activity where application_name = 'postgres-agent'");
    assert_eq!(settings, "1");
    drop(agent);
}

#[test]
fn agent_sessions_are_read_only_with_timeouts() {
    // The startup options are what every pooled connection gets; check them as the
    // server sees them, by connecting with the same options through psql.
    let pg = PgCluster::start("");
    let cfg = postgres_agent::config::parse_str(
        "[agent]\nproject_id='p'\n[database]\nstatement_timeout_ms=2500\nlock_timeout_ms=700\n",
    )
    .expect("valid");
    let opts = postgres_agent::db::session_options(&cfg.database);
    let out = pg
        .psql()
        .env("PGOPTIONS", &opts)
        .args([
            "-c",
            "select current_setting('statement_timeout'), current_setting('lock_timeout'), \
             current_setting('idle_in_transaction_session_timeout'), \
             current_setting('default_transaction_read_only')",
        ])
        .output()
        .expect("psql");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "2500ms|700ms|2500ms|on"
    );
}

#[test]
fn unreachable_database_fails_fast_and_recovers_when_it_returns() {
    let mut pg = PgCluster::start("");
    pg.stop_server();
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let agent = Agent::start(
        dir.path(),
        &config(dir.path(), &pg, &listener.url(), 1),
        &[],
    );
    // Every interval a cycle fails quickly (no server socket) and none is skipped.
    wait_for("three failed cycles", Duration::from_secs(20), || {
        (agent.logs_named("collect_cycle_failed").len() >= 3).then_some(())
    });
    assert!(agent.logs_named("collect_cycle_skipped").is_empty());
    let failed = &agent.logs_named("collect_cycle_failed")[0];
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("database unreachable")),
        "{failed}"
    );
    pg.start_server();
    let _s = pg.session("app", "select pg_sleep(60)");
    wait_for(
        "activity after the database returned",
        Duration::from_secs(30),
        || {
            listener
                .events_of("pg_activity")
                .into_iter()
                .find(|e| e["data"]["query"] == "select pg_sleep(60)")
        },
    );
    assert!(agent.logs_named("panic").is_empty());
}

#[test]
fn a_traceparent_in_the_query_ships_its_trace_and_span() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let sql =
        format!("select pg_sleep(60) /*controller='orders',traceparent='00-{TRACE}-{SPAN}-01'*/");
    let _traced = pg.session("web", &sql);
    // A forged one next to it: no trace, no correlation.
    let _forged = pg.session(
        "web",
        "select pg_sleep(60) /*traceparent='00-nothex-nothex-01'*/",
    );
    let agent = Agent::start(
        dir.path(),
        &config(dir.path(), &pg, &listener.url(), 1),
        &[],
    );
    let sleeping = |e: &Value| {
        e["data"]["state"] == "active"
            && e["data"]["query"]
                .as_str()
                .is_some_and(|q| q.starts_with("select pg_sleep(60)"))
    };
    let (traced, forged) = wait_for("both sleeping sessions", Duration::from_secs(30), || {
        let events = listener.events_of("pg_activity");
        let traced = events
            .iter()
            .find(|e| {
                sleeping(e)
                    && e["data"]["query"]
                        .as_str()
                        .is_some_and(|q| q.contains(TRACE))
            })?
            .clone();
        let forged = events
            .iter()
            .find(|e| {
                sleeping(e)
                    && e["data"]["query"]
                        .as_str()
                        .is_some_and(|q| q.contains("nothex"))
            })?
            .clone();
        Some((traced, forged))
    });
    let d = &traced["data"];
    assert_eq!(d["trace_id"], TRACE, "{d}");
    assert_eq!(d["span_id"], SPAN, "{d}");
    assert_eq!(d["correlation_id"], TRACE);
    assert_eq!(d["correlation_source"], "traceparent");
    let f = &forged["data"];
    assert!(
        f.get("trace_id").is_none() && f.get("span_id").is_none(),
        "{f}"
    );
    assert_eq!(f["correlation_id"], Value::Null, "{f}");
    drop(agent);
}

#[test]
fn collection_redact_takes_literals_out_of_session_texts_but_not_their_identity() {
    const REQ: &str = "0b7e6c84-5a2f-4d43-9a4e-2b1f0f6e7a77";
    const SQL: &str = "select 'hunter2' as pw, pg_sleep(60)";
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let _s = pg.session(&format!("bitville-{REQ}"), SQL);
    let toml = config(dir.path(), &pg, &listener.url(), 1)
        .replace("sample_interval_ms = 0", "sample_interval_ms = 500")
        .replace(
            "[collection]\n",
            "[collection]\nredact = \"literals\"\nactivity_interval_s = 1\n",
        );
    let agent = Agent::start(dir.path(), &toml, &[]);
    let (activity, summary) = wait_for("activity and summary", Duration::from_secs(30), || {
        // Once the session runs its statement: a sample taken while it was still
        // starting (PostgreSQL 18 shows such a backend, with its name) has no query yet.
        let of = |kind: &str| {
            listener.events_of(kind).into_iter().find(|e| {
                e["data"]["correlation_id"] == REQ
                    && e["data"]["query"].as_str().is_some_and(|q| !q.is_empty())
            })
        };
        Some((of("pg_activity")?, of("pg_activity_summary")?))
    });
    let fingerprint = postgres_agent::fingerprint::fingerprint(SQL);
    for e in [&activity, &summary] {
        assert_eq!(e["data"]["query"], "select ? as pw, pg_sleep(?)", "{e}");
        assert_eq!(
            e["data"]["query_fingerprint"].as_str(),
            fingerprint.as_deref()
        );
    }
    let all = serde_json::to_string(&listener.accepted_events()).expect("json");
    assert!(!all.contains("hunter2"));
    drop(agent);
}
