//! SQL text read as the server reads it, end to end against a real server: a password in
//! any spelling PostgreSQL accepts never leaves in any source, and a request id inside a
//! string constant never becomes the correlation of the statement that holds it.

use std::time::Duration;

use serde_json::Value;

use crate::harness::agent::{config, Agent, TOKEN};
use crate::harness::listener::Listener;
use crate::harness::pg::{run, PgCluster};
use crate::harness::{shared_tempdir, wait_for};

/// Statements with a password, and how the log must show them.
const PASSWORDS: [(&str, &str); 8] = [
    (
        "alter role r password /* c */ 'sekrit-a'",
        "alter role r password /* c */ '***'",
    ),
    (
        "alter role r password U&'sekrit-b'",
        "alter role r password '***'",
    ),
    (
        "alter role r password $é$sekrit-c$é$",
        "alter role r password '***'",
    ),
    (
        "alter role r password 'sekrit-d'\n'sekrit-e'",
        "alter role r password '***'",
    ),
    (
        "alter role r password--c\n'sekrit-f'",
        "alter role r password--c\n'***'",
    ),
    (
        "alter role r password E'sekrit-\\'g'",
        "alter role r password '***'",
    ),
    (
        "alter user mapping for current_user server s options (add \"password\" 'sekrit-h')",
        "alter user mapping for current_user server s options (add \"password\" '***')",
    ),
    (
        "alter user mapping for current_user server s options (set password $$sekrit-i$$)",
        "alter user mapping for current_user server s options (set password '***')",
    ),
];

const FORGED: &str = "select 'form input /*request_id=''attacker'' */' as n, pg_sleep(3) \
                      /*request_id='real-1'*/";

#[test]
fn passwords_in_any_spelling_never_leave_and_a_request_id_in_a_string_is_no_request() {
    let pg = PgCluster::start(
        "shared_preload_libraries = 'pg_stat_statements'\nlogging_collector = on\n\
         log_destination = 'stderr'\nlog_directory = 'log'\nlog_filename = 'postgresql.log'\n\
         log_rotation_age = 0\nlog_rotation_size = 0\nlog_line_prefix = '%m [%p] %q%u@%d %a '\n\
         lc_messages = 'C'\nlog_min_duration_statement = 0\npg_stat_statements.track_utility = on\n",
    );
    pg.sql(
        "create extension pg_stat_statements; create role r; create foreign data wrapper w; \
         create server s foreign data wrapper w; create user mapping for current_user server s",
    );
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let toml = config(dir.path(), &pg, &listener.url(), 1)
        .replace("statements = false", "statements = true")
        .replace(
            "logs = false\n",
            "logs = true\n[logs]\nformat = \"stderr\"\nstart_at = \"beginning\"\n",
        );
    let _agent = Agent::start(dir.path(), &toml, &[]);
    // The statements run after the statements baseline, so that they arrive as deltas
    // (a statement already in the baseline sample is not shipped until it runs again).
    wait_for("the statements baseline", Duration::from_secs(30), || {
        (!listener.events_of("pg_statements").is_empty()).then_some(())
    });

    for (sql, _) in PASSWORDS {
        pg.sql(sql);
    }
    // The forged request runs long enough for the activity source to see it.
    run(pg.psql().args(["-c", FORGED]), "the forged request");

    // Every statement arrives from the log, masked as the server read it.
    let logged = wait_for("the statements in the log", Duration::from_secs(30), || {
        let statements: Vec<String> = listener
            .events_of("pg_log")
            .iter()
            .filter_map(|e| e["data"]["statement"].as_str().map(str::to_string))
            .collect();
        let masked = PASSWORDS
            .iter()
            .all(|(_, want)| statements.iter().any(|s| s == want));
        let forged = listener.events_of("pg_log").into_iter().find(|e| {
            e["data"]["statement"]
                .as_str()
                .is_some_and(|m| m.contains("form input"))
        });
        forged.filter(|_| masked)
    });
    assert_eq!(logged["data"]["correlation_id"], "real-1", "{logged:#}");
    assert_eq!(logged["data"]["correlation_source"], "query_comment");
    // The activity source saw the request running, under its real id.
    let seen = listener
        .events_of("pg_activity")
        .into_iter()
        .filter(|e| {
            e["data"]["query"]
                .as_str()
                .is_some_and(|q| q.contains("form input"))
        })
        .collect::<Vec<Value>>();
    assert!(
        !seen.is_empty(),
        "the activity source never saw the request"
    );
    for e in &seen {
        assert_eq!(e["data"]["correlation_id"], "real-1", "{e:#}");
    }
    // pg_stat_statements has had a cycle after the statements (its texts are checked with
    // everything else below).
    let after = listener.events_of("pg_statements").len();
    wait_for("another statements cycle", Duration::from_secs(30), || {
        (listener.events_of("pg_statements").len() > after).then_some(())
    });
    assert!(listener
        .events_of("pg_statements")
        .iter()
        .any(|e| e["data"]["query"]
            .as_str()
            .is_some_and(|q| q.starts_with("alter role r password"))));
    for (kind, e) in listener.accepted_events() {
        let text = e.to_string();
        assert!(
            !text.contains("sekrit"),
            "{kind}: a password shipped: {e:#}"
        );
        assert!(!text.contains("\"attacker\""), "{kind}: a forged id: {e:#}");
    }
}
