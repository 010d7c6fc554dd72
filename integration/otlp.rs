//! The OTLP output against a receiver that decodes with the official definitions: what
//! a record carries (trace context, attributes, resource), and that each output
//! acknowledges on its own: an outage of one neither blocks nor loses the other's
//! events.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::harness::agent::{config, spool_ids, Agent, TOKEN};
use crate::harness::listener::Listener;
use crate::harness::otlp::Receiver;
use crate::harness::pg::PgCluster;
use crate::harness::{shared_tempdir, wait_for};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";
const UUID: &str = "7d1e4f2a-3b5c-4d6e-8f90-a1b2c3d4e5f6";

fn otlp_section(endpoint: &str) -> String {
    format!(
        "[otlp]\nendpoint = \"{endpoint}\"\nheaders = {{ authorization = \"Bearer otlp-secret\", \"X-Scope-OrgID\" = \"tenant-1\" }}\n\
         timeout_ms = 2000\nretry_max_ms = 1000\n[breaker]\nreset_timeout_s = 1\n"
    )
}

fn listener_ids(listener: &Listener) -> BTreeSet<String> {
    listener
        .accepted_events()
        .iter()
        .filter_map(|(_, e)| e["id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn both_outputs_get_every_event_and_an_otlp_outage_loses_nothing_nor_holds_the_listener() {
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let mut receiver = Receiver::start();
    let dir = shared_tempdir("pgagent-it");
    let _traced = pg.session(
        &format!("bitville-{UUID}"),
        &format!("select pg_sleep(120) /*traceparent='00-{TRACE}-{SPAN}-01'*/"),
    );
    let toml = config(dir.path(), &pg, &listener.url(), 1) + &otlp_section(&receiver.endpoint());
    let mut agent = Agent::start(dir.path(), &toml, &[]);

    // The traced session's activity row as a record: trace context, attributes,
    // resource, headers.
    let (record, resource) = wait_for("the traced row over OTLP", Duration::from_secs(30), || {
        receiver.accepted().into_iter().find(|(r, _)| {
            r["event_name"] == "pg_activity"
                && r["body"]["query"]
                    .as_str()
                    .is_some_and(|q| q.starts_with("select pg_sleep(120)"))
        })
    });
    assert_eq!(record["trace_id"], TRACE, "{record}");
    assert_eq!(record["span_id"], SPAN, "{record}");
    let a = &record["attributes"];
    assert_eq!(a["postgres_agent.kind"], "pg_activity");
    assert_eq!(a["postgres_agent.correlation_id"], UUID, "{a}");
    assert_eq!(a["db.namespace"], "postgres", "{a}");
    assert!(a["postgres_agent.event_id"].is_string(), "{a}");
    assert_eq!(
        record["body"]["application_name"],
        format!("bitville-{UUID}")
    );
    assert!(
        record["body"].get("backend_xid").is_none(),
        "nulls are left out of the body: {record}"
    );
    assert_eq!(resource["service.name"], "postgresql");
    assert_eq!(resource["host.name"], "it-host");
    assert_eq!(resource["postgres_agent.project"], "it-project");
    assert_eq!(resource["db.system.name"], "postgresql");
    let first = &receiver.requests()[0];
    assert_eq!(first["path"], "/v1/logs");
    assert_eq!(first["authorization"], "Bearer otlp-secret");
    assert_eq!(first["x_scope"], "tenant-1");
    assert_eq!(first["content_type"], "application/x-protobuf");
    assert_eq!(first["encoding"], "gzip");
    // The same event went to the listener under the same id.
    let id = a["postgres_agent.event_id"]
        .as_str()
        .expect("id")
        .to_string();
    wait_for(
        "the same event at the listener",
        Duration::from_secs(10),
        || listener_ids(&listener).contains(&id).then_some(()),
    );

    // The receiver goes down: the listener goes on getting new events, and the spool
    // keeps what the receiver has not had.
    receiver.stop();
    let before = listener_ids(&listener).len();
    wait_for(
        "the listener served during the outage",
        Duration::from_secs(30),
        || (listener_ids(&listener).len() >= before + 6).then_some(()),
    );
    let held = agent.spool_ids();
    assert!(
        held.iter().any(|h| listener_ids(&listener).contains(h)),
        "rows the listener has are kept for the receiver"
    );
    // Status says who waits for what, and why.
    wait_for("status showing the outage", Duration::from_secs(30), || {
        let status = agent.status();
        let pending = status["children"]["buffer"]["detail"]["pending_by_output"].clone();
        let error = status["children"]["shipper_otlp"]["last_error"].clone();
        (pending["otlp"].as_u64()? > pending["listener"].as_u64()?
            && error.as_str()?.contains("request failed"))
        .then_some(())
    });

    // Back, answering 503 for a while, then 200: everything arrives.
    receiver.set_mode("status:503");
    receiver.restart();
    wait_for("a 503 answered", Duration::from_secs(15), || {
        receiver
            .requests()
            .iter()
            .any(|r| r["status"] == 503)
            .then_some(())
    });
    receiver.set_mode("ok");
    wait_for("the receiver caught up", Duration::from_secs(60), || {
        let got: BTreeSet<String> = receiver.event_ids().into_iter().collect();
        listener_ids(&listener).is_subset(&got).then_some(())
    });

    // A clean stop flushes both; then each has exactly what the other has, and the
    // spool is empty.
    agent.signal(libc::SIGTERM);
    assert_eq!(
        agent
            .wait_exit(Duration::from_secs(30))
            .and_then(|s| s.code()),
        Some(0)
    );
    let to_listener = listener_ids(&listener);
    let to_otlp: BTreeSet<String> = receiver.event_ids().into_iter().collect();
    assert_eq!(to_listener, to_otlp);
    assert!(spool_ids(&dir.path().join("state")).is_empty());
    // No secret of the OTLP headers in the agent's log.
    assert!(!agent.stderr().contains("otlp-secret"));
}

#[test]
fn otlp_alone_quarantines_only_what_it_refuses_and_ships_the_rest() {
    let pg = PgCluster::start("");
    let mut receiver = Receiver::start();
    receiver.set_mode("reject-marked");
    let dir = shared_tempdir("pgagent-it");
    let _marked = pg.session("app", "select pg_sleep(120) -- REJECT-ME");
    let _plain = pg.session("app", "select pg_sleep(121)");
    // The listener off: an empty URL.
    let toml = config(dir.path(), &pg, "", 1) + &otlp_section(&receiver.endpoint());
    // `check` sends an empty export through the shipper's own request.
    let path = dir.path().join("check.toml");
    std::fs::write(&path, &toml).expect("write config");
    let (code, out) = check(&path);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "ok    otlp      {}/v1/logs accepted an empty export (HTTP 200)",
            receiver.endpoint()
        )),
        "{out}"
    );
    assert!(!out.contains("listener"), "the listener is off: {out}");
    let empty = receiver.requests();
    assert_eq!(empty.len(), 1);
    assert_eq!(empty[0]["authorization"], "Bearer otlp-secret");
    let agent = Agent::start(dir.path(), &toml, &[]);
    let quarantined = wait_for(
        "the marked rows quarantined",
        Duration::from_secs(40),
        || {
            let n = agent.status()["children"]["buffer"]["detail"]["quarantined"]
                .as_u64()
                .unwrap_or(0);
            (n >= 2).then_some(n)
        },
    );
    wait_for(
        "the plain session's rows over OTLP",
        Duration::from_secs(20),
        || {
            let n = receiver
                .accepted()
                .iter()
                .filter(|(r, _)| r["body"]["query"] == "select pg_sleep(121)")
                .count();
            (n >= 2).then_some(())
        },
    );
    // Every accepted record is unmarked; every quarantined row is marked and says who
    // refused it.
    assert!(receiver
        .accepted()
        .iter()
        .all(|(r, _)| !r.to_string().contains("REJECT-ME")));
    let conn = rusqlite::Connection::open_with_flags(
        dir.path().join("state/spool.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("spool");
    let rows: Vec<(String, String)> = conn
        .prepare("SELECT data, reason FROM quarantine")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert!(rows.len() as u64 >= quarantined);
    for (data, reason) in &rows {
        assert!(data.contains("REJECT-ME"), "{data}");
        assert_eq!(reason, "HTTP 400 from the OTLP receiver");
    }
    let status = agent.status();
    assert!(
        status["children"].get("shipper").is_none(),
        "no listener shipper: {status}"
    );
    let _: Value = status;

    // The receiver gone: `check` says so and fails.
    receiver.stop();
    let (code, out) = check(&path);
    assert_eq!(code, Some(69), "{out}");
    assert!(out.contains("FAIL  otlp      cannot reach"), "{out}");
    assert!(!out.contains("otlp-secret"), "{out}");
}

fn check(path: &std::path::Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(crate::harness::agent::bin())
        .args(["check", "-c"])
        .arg(path)
        .output()
        .expect("run check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_receiver_refusing_the_credentials_or_redirecting_holds_only_its_own_output() {
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let receiver = Receiver::start();
    receiver.set_mode("status:401");
    let dir = shared_tempdir("pgagent-it");
    let _s = pg.session("app", "select pg_sleep(120)");
    let toml = config(dir.path(), &pg, &listener.url(), 1) + &otlp_section(&receiver.endpoint());
    let agent = Agent::start(dir.path(), &toml, &[]);
    let refused = agent.wait_log(
        "output_credentials_refused",
        Duration::from_secs(30),
        |_| true,
    );
    assert_eq!(refused["status"], 401, "{refused}");
    assert_eq!(refused["child"], "shipper_otlp", "{refused}");
    assert!(
        refused["effect"]
            .as_str()
            .is_some_and(|e| e.starts_with("the OTLP receiver refuses the credentials (HTTP 401); nothing is sent until otlp.headers is fixed")),
        "{refused}"
    );
    assert!(agent.logs_named("listener_token_refused").is_empty());
    // The listener goes on taking everything while the receiver refuses.
    let before = listener_ids(&listener).len();
    wait_for(
        "the listener served meanwhile",
        Duration::from_secs(30),
        || (listener_ids(&listener).len() >= before + 6).then_some(()),
    );
    wait_for("status naming the refusal", Duration::from_secs(30), || {
        let s = agent.status();
        (s["children"]["shipper_otlp"]["detail"]["token_refused"] == "HTTP 401"
            && s["children"]["shipper"]["detail"]["token_refused"].is_null())
        .then_some(())
    });
    // A redirect is never followed: said, everything kept.
    receiver.set_mode("status:307");
    wait_for(
        "the redirect said in status",
        Duration::from_secs(30),
        || {
            let s = agent.status();
            s["children"]["shipper_otlp"]["last_error"]
            .as_str()
            .is_some_and(|e| {
                e == "OTLP receiver answered HTTP 307 redirecting to \"http://***@127.0.0.1:1/v1/logs\" (not followed): check otlp.endpoint (the events are kept)"
            })
            .then_some(())
        },
    );
    assert!(!agent.stderr().contains("hunter2"));
    // Accepted again: everything arrives.
    receiver.set_mode("ok");
    agent.wait_log(
        "output_credentials_accepted",
        Duration::from_secs(30),
        |_| true,
    );
    wait_for("the receiver caught up", Duration::from_secs(60), || {
        let got: BTreeSet<String> = receiver.event_ids().into_iter().collect();
        listener_ids(&listener).is_subset(&got).then_some(())
    });
    assert!(!agent.stderr().contains("otlp-secret"));
}
