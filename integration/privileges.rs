//! A role without pg_monitor: the agent says what is wrong, once, in the log and in
//! status, instead of shipping `<insufficient privilege>` texts in silence or calling a
//! reachable database unreachable.

use std::time::Duration;

use crate::harness::agent::{config, Agent, TOKEN};
use crate::harness::listener::Listener;
use crate::harness::pg::PgCluster;
use crate::harness::{shared_tempdir, wait_for};
use crate::logs::LOG_CONF;

#[test]
fn a_role_without_pg_monitor_is_named_with_the_fix() {
    let pg = PgCluster::start(&format!(
        "{LOG_CONF}log_destination = 'stderr'\nlog_directory = 'log'\n"
    ));
    pg.sql("create role agent_np login");
    // Someone else's query: hidden from agent_np.
    let _busy = pg.session("busy-app", "select pg_sleep(60)");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let toml = config(dir.path(), &pg, &listener.url(), 1)
        .replace("user = \"postgres\"", "user = \"agent_np\"")
        .replace("logs = false\n", "logs = true\n");
    let agent = Agent::start(dir.path(), &toml, &[]);
    let st = wait_for("both states known", Duration::from_secs(30), || {
        let st = agent.status();
        let act = st["children"]["pg_activity"]["detail"]["source_state"]
            .as_str()?
            .to_string();
        let log = st["children"]["pg_log"]["detail"]["source_state"]
            .as_str()?
            .to_string();
        (act.contains("pg_read_all_stats") && log.starts_with("unavailable"))
            .then_some((act, log, st))
    });
    let (act, log, st) = st;
    assert!(act.contains("GRANT pg_monitor TO agent_np"), "{act}");
    assert!(
        log.contains("cannot see where the server writes its log")
            && log.contains("GRANT pg_monitor"),
        "the database is reachable; the privilege is missing: {log}\n{st}"
    );
    assert!(!log.contains("unreachable"), "{log}");
    // Said once, at warning level.
    let warned: Vec<_> = agent
        .logs_named("source_state_changed")
        .into_iter()
        .filter(|l| {
            l["level"] == "WARN"
                && l["state"]
                    .as_str()
                    .is_some_and(|s| s.contains("pg_read_all_stats"))
        })
        .collect();
    assert_eq!(warned.len(), 1, "{warned:?}");
}
