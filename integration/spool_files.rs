//! The spool's file deleted under the running agent: noticed, copied back to its path,
//! reported, and nothing queued is lost (before, a restart found an empty spool).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::harness::agent::{config, Agent, TOKEN};
use crate::harness::listener::Listener;
use crate::harness::pg::PgCluster;
use crate::harness::{shared_tempdir, wait_for};

#[test]
fn a_deleted_spool_is_recreated_with_everything_it_held() {
    let pg = PgCluster::start("");
    let mut listener = Listener::start(TOKEN);
    listener.stop();
    let dir = shared_tempdir("pgagent-it");
    let agent = Agent::start(
        dir.path(),
        &config(dir.path(), &pg, &listener.url(), 1),
        &[],
    );
    // Events queue up while the listener is away.
    let queued: BTreeSet<String> = wait_for("events in the spool", Duration::from_secs(30), || {
        let ids = agent.spool_ids();
        (ids.len() >= 5).then(|| ids.into_iter().collect())
    });
    for f in ["spool.db", "spool.db-wal", "spool.db-shm"] {
        let _ = std::fs::remove_file(agent.state_dir.join(f));
    }
    let note = agent.wait_log("spool_file_replaced", Duration::from_secs(15), |_| true);
    assert!(
        note["events_carried_over"].as_u64() >= Some(queued.len() as u64),
        "{note}"
    );
    // On disk again, with what was queued before the deletion.
    let on_disk: BTreeSet<String> = agent.spool_ids().into_iter().collect();
    assert!(
        queued.is_subset(&on_disk),
        "lost: {:?}",
        queued.difference(&on_disk).collect::<Vec<_>>()
    );
    // Delivered once the listener is back, with the report.
    listener.restart();
    wait_for("everything delivered", Duration::from_secs(30), || {
        let got: BTreeSet<String> = listener
            .accepted_events()
            .into_iter()
            .filter_map(|(_, e)| e["id"].as_str().map(str::to_string))
            .collect();
        (queued.is_subset(&got)
            && listener
                .events_of("agent")
                .iter()
                .any(|e| e["data"]["event"] == "spool_file_replaced"))
        .then_some(())
    });
}
