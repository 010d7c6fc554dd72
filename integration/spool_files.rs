//! The spool's file deleted under the running agent: noticed, copied back to its path,
//! reported, and nothing queued is lost (before, a restart found an empty spool).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::harness::agent::{config, Agent, TOKEN};
use crate::harness::listener::Listener;
use crate::harness::pg::PgCluster;
use crate::harness::{shared_tempdir, wait_for};

/// A short breaker reset: the listener's outage opens it, and the test should not wait
/// a minute for the probe.
fn short_breaker(toml: String) -> String {
    format!("{toml}[breaker]\nreset_timeout_s = 1\n")
}

/// A cluster, a listener that is down, and the agent's config for them (every second,
/// a short breaker): events queue up in the spool.
fn listener_down() -> (PgCluster, Listener, tempfile::TempDir, String) {
    let pg = PgCluster::start("");
    let mut listener = Listener::start(TOKEN);
    listener.stop();
    let dir = shared_tempdir("pgagent-it");
    let toml = short_breaker(config(dir.path(), &pg, &listener.url(), 1));
    (pg, listener, dir, toml)
}

/// The ids in the spool once there are at least five.
fn queued(agent: &Agent) -> BTreeSet<String> {
    wait_for("events in the spool", Duration::from_secs(30), || {
        let ids = agent.spool_ids();
        (ids.len() >= 5).then(|| ids.into_iter().collect())
    })
}

#[test]
fn a_deleted_spool_is_recreated_with_everything_it_held() {
    let (_pg, mut listener, dir, toml) = listener_down();
    let agent = Agent::start(dir.path(), &toml, &[]);
    // Events queue up while the listener is away.
    let queued = queued(&agent);
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

#[test]
fn a_spool_emptied_in_place_starts_again_with_what_is_in_memory_and_counts_the_rest() {
    let (_pg, mut listener, dir, toml) = listener_down();
    // A first run leaves events in the spool (on disk only: the next run's memory never
    // held them).
    let first = Agent::start(dir.path(), &toml, &[]);
    let old = queued(&first);
    drop(first);
    let old: BTreeSet<String> = crate::harness::agent::spool_ids(&dir.path().join("state"))
        .into_iter()
        .collect::<BTreeSet<_>>()
        .union(&old)
        .cloned()
        .collect();
    let agent = Agent::start(dir.path(), &toml, &[]);
    let before: BTreeSet<String> = wait_for("this run's events", Duration::from_secs(30), || {
        let ids: BTreeSet<String> = agent.spool_ids().into_iter().collect();
        (ids.len() >= old.len() + 3).then_some(ids)
    });
    // Emptied in place: same file, no contents (`: > spool.db`).
    let path = agent.state_dir.join("spool.db");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(0))
        .expect("truncate");
    let note = agent.wait_log("spool_file_replaced", Duration::from_secs(15), |_| true);
    let lost = note["events_lost"].as_u64().expect("events_lost");
    let carried = note["events_carried_over"].as_u64().expect("carried");
    // The first run's events were only in the file: gone, and counted.
    assert!(lost >= old.len() as u64, "{note}");
    assert!(carried + lost >= before.len() as u64, "{note}");
    let moved: String = note["foreign_file_moved_to"]
        .as_str()
        .expect("moved")
        .into();
    assert!(std::path::Path::new(&moved).exists(), "{moved}");
    // A new file, readable, holding what was carried over.
    let kept: BTreeSet<String> = agent.spool_ids().into_iter().collect();
    assert!(kept.len() as u64 >= carried, "{} < {carried}", kept.len());
    listener.restart();
    let report = wait_for("the loss reported", Duration::from_secs(30), || {
        listener
            .events_of("agent")
            .into_iter()
            .find(|e| e["data"]["event"] == "spool_file_replaced")
    });
    assert_eq!(report["data"]["events_lost"], lost, "{report}");
    wait_for(
        "what was carried over delivered",
        Duration::from_secs(30),
        || {
            let got: BTreeSet<String> = listener
                .accepted_events()
                .into_iter()
                .filter_map(|(_, e)| e["id"].as_str().map(str::to_string))
                .collect();
            kept.is_subset(&got).then_some(())
        },
    );
    let malformed: Vec<_> = agent
        .logs()
        .into_iter()
        .filter(|l| l.to_string().contains("malformed"))
        .collect();
    assert!(
        malformed.len() <= 2,
        "the agent kept failing on the emptied file: {malformed:?}"
    );
}

#[test]
fn a_spool_emptied_while_the_agent_was_down_is_set_aside_and_its_loss_counted() {
    let (_pg, mut listener, dir, toml) = listener_down();
    let first = Agent::start(dir.path(), &toml, &[]);
    // The status dump (every 10 s) has counted what waits.
    let status = first.state_dir.join("status.json");
    let depth = wait_for(
        "a status dump with events waiting",
        Duration::from_secs(60),
        || {
            let s: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&status).ok()?).ok()?;
            s["children"]["buffer"]["detail"]["depth"]
                .as_u64()
                .filter(|d| *d >= 5)
        },
    );
    let state = first.state_dir.clone();
    drop(first);
    // The dump and the file as the stop left them: what the dump counted is what is lost.
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&status).expect("status")).expect("json");
    let depth = s["children"]["buffer"]["detail"]["depth"]
        .as_u64()
        .unwrap_or(depth);
    std::fs::OpenOptions::new()
        .write(true)
        .open(state.join("spool.db"))
        .and_then(|f| f.set_len(0))
        .expect("truncate");
    let agent = Agent::start(dir.path(), &toml, &[]);
    let note = agent.wait_log("spool_file_replaced", Duration::from_secs(15), |_| true);
    assert_eq!(note["events_lost"], depth, "{note}");
    let moved: String = note["foreign_file_moved_to"]
        .as_str()
        .expect("moved")
        .into();
    assert!(moved.contains("spool.db.clobbered."), "{moved}");
    assert!(std::path::Path::new(&moved).exists());
    listener.restart();
    let report = wait_for("the loss reported", Duration::from_secs(30), || {
        listener
            .events_of("agent")
            .into_iter()
            .find(|e| e["data"]["event"] == "spool_file_replaced")
    });
    assert_eq!(report["data"]["events_lost"], depth, "{report}");
}

/// A small file system of its own (tmpfs), unmounted on drop.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(dir: &std::path::Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(dir).expect("mkdir");
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(ok.success(), "mount tmpfs on {}", dir.display());
        SmallFs(dir.to_path_buf())
    }

    /// Writes a file until the file system is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let p = self.0.join("filler");
        let mut f = std::fs::File::create(&p).expect("filler");
        let chunk = vec![0u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.write_all(&[0u8; 512]);
        p
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_stops_appends_keeps_acks_working_and_sends_nothing_twice() {
    // Mounting a file system needs root; CI runs as root (see .ci/run).
    if !crate::harness::is_root() {
        eprintln!("skipped: needs root to mount a small tmpfs");
        return;
    }
    let pg = PgCluster::start("");
    let mut listener = Listener::start(TOKEN);
    listener.stop();
    let dir = shared_tempdir("pgagent-it");
    let fs = SmallFs::mount(&dir.path().join("state"), "24m");
    let toml = short_breaker(config(dir.path(), &pg, &listener.url(), 1));
    let agent = Agent::start(dir.path(), &toml, &[]);
    let queued: BTreeSet<String> = wait_for("events in the spool", Duration::from_secs(30), || {
        let ids = agent.spool_ids();
        (ids.len() >= 10).then(|| ids.into_iter().collect())
    });
    assert!(
        agent.state_dir.join("spool.reserve").exists(),
        "the reserve is held"
    );
    let filler = fs.fill();
    agent.wait_log("spool_error", Duration::from_secs(30), |l| {
        l["error"].as_str().is_some_and(|e| e.contains("full"))
    });
    // The listener comes back while the disk is full: what was queued is delivered,
    // the spool records it (the reserve gives its room to the deletes), and no batch
    // the listener took is sent again.
    listener.restart();
    wait_for(
        "the queued events delivered",
        Duration::from_secs(60),
        || {
            let got: BTreeSet<String> = listener
                .accepted_events()
                .into_iter()
                .filter_map(|(_, e)| e["id"].as_str().map(str::to_string))
                .collect();
            queued.is_subset(&got).then_some(())
        },
    );
    let left: BTreeSet<String> = agent.spool_ids().into_iter().collect();
    assert!(
        queued.is_disjoint(&left),
        "delivered but still spooled: {:?}",
        queued.intersection(&left).collect::<Vec<_>>()
    );
    let mut taken: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for r in listener.received().iter().filter(|r| r.status == 200) {
        *taken
            .entry(r.idempotency_key.clone().unwrap_or_default())
            .or_default() += 1;
    }
    let twice: Vec<_> = taken.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "batches the listener took were sent again: {twice:?}"
    );
    // Space returns: the reserve is taken back and new events flow again.
    std::fs::remove_file(filler).expect("rm filler");
    let after = listener.accepted_events().len();
    wait_for(
        "new events after space returned",
        Duration::from_secs(60),
        || {
            (listener.accepted_events().len() > after + 5
                && agent.state_dir.join("spool.reserve").exists())
            .then_some(())
        },
    );
    drop(agent);
}
