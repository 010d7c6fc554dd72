//! The language of the server's messages, judged by what its log shows. Debian's
//! PostgreSQL 15 carries the message catalogues; the builds the version matrix uses have
//! none, so this module is not in the matrix.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::agent::{config, Agent};
use crate::harness::listener::Listener;
use crate::harness::pg::PgCluster;
use crate::harness::wait_for;
use crate::logs::LOG_CONF;

#[test]
fn translated_messages_are_judged_by_what_the_server_writes_not_by_lc_messages() {
    // German and C.UTF-8 made for this server alone (LOCPATH): no root, no change to
    // the machine; Debian's PostgreSQL 15 carries the German catalogue.
    let locales = crate::harness::shared_tempdir("pgagent-locales");
    for (src, name) in [("de_DE", "de_DE.utf8"), ("C", "C.utf8")] {
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
    // The Debian container default: English messages under a name that is not "C".
    let mut pg = PgCluster::init(&format!(
        "{LOG_CONF}log_destination = 'stderr'\nlog_directory = 'log'\nlc_messages = 'C.UTF-8'\n\
         log_connections = off\nlog_disconnections = off\n"
    ));
    pg.start_server_env(&[("LOCPATH", locales.path().as_os_str())]);
    let listener = Listener::start(crate::harness::agent::TOKEN);
    let run = |sql: &str, marker: &str| {
        let dir = crate::harness::shared_tempdir("pgagent-it");
        let toml =
            config(dir.path(), &pg, &listener.url(), 60).replace("logs = false\n", "logs = true\n");
        let agent = Agent::start(dir.path(), &toml, &[]);
        agent.wait_log("log_file_opened", Duration::from_secs(20), |_| true);
        for i in 0..25 {
            pg.try_sql(&format!("{sql} select 1/0 as \"{marker}-{i}\""));
        }
        // Each error is one event, its statement line (labelled in the server's
        // language) included.
        wait_for("the 25 errors shipped", Duration::from_secs(30), || {
            let n = listener
                .events_of("pg_log")
                .iter()
                .filter(|e| e.to_string().contains(marker))
                .count();
            (n == 25).then_some(())
        });
        agent.logs_named("log_messages_localized")
    };
    assert_eq!(run("", "english"), Vec::<Value>::new());
    let warned = run("set lc_messages = 'de_DE.UTF-8';", "deutsch");
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0]["label"], "FEHLER");
    assert_eq!(warned[0]["lc_messages"], "C.UTF-8");
}
