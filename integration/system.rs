//! The `system` source: host figures that match /proc, and the server's own processes.

use std::time::Duration;

use serde_json::Value;

use crate::harness::agent::{config, Agent, TOKEN};
use crate::harness::listener::Listener;
use crate::harness::pg::PgCluster;
use crate::harness::{shared_tempdir, wait_for};

fn only_system(toml: &str) -> String {
    toml.replace("system = false", "system = true")
        .replace("[collection]\n", "[collection]\nactivity = false\n")
}

fn postmaster_pid(pg: &PgCluster) -> i64 {
    let text = std::fs::read_to_string(pg.data().join("postmaster.pid")).expect("postmaster.pid");
    text.lines()
        .next()
        .expect("pid line")
        .trim()
        .parse()
        .expect("pid")
}

fn meminfo_total() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    let kb: u64 = text
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("MemTotal");
    kb * 1024
}

#[test]
fn once_reports_the_host_and_the_servers_processes() {
    let pg = PgCluster::start("");
    let dir = shared_tempdir("pgagent-it");
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        only_system(&config(dir.path(), &pg, "http://127.0.0.1:9/x", 1)),
    )
    .expect("write");
    let events = crate::harness::agent::once(&path);
    assert_eq!(events.len(), 1);
    let d = &events[0]["data"];
    assert_eq!(events[0]["kind"], "system");
    assert_eq!(d["baseline"], true);
    assert!(d["cpu"]["percent"].is_null());
    assert_eq!(
        d["cpu"]["cores"],
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    assert_eq!(d["memory"]["total"], meminfo_total());
    assert_eq!(d["postgres"]["postmaster_pid"], postmaster_pid(&pg));
    // postmaster + checkpointer, bgwriter, walwriter, autovacuum launcher, logical
    // replication launcher (PG15), and the backend serving the discovery connection may
    // already be gone: at least the six.
    assert!(d["postgres"]["processes"].as_u64() >= Some(6), "{d}");
    assert!(d["postgres"]["rss_bytes"].as_u64() > Some(0));
    assert_eq!(d["filesystem"]["path"], pg.data().display().to_string());
    assert!(d["filesystem"]["total_bytes"].as_u64() > Some(0));
    assert!(d["disks"].as_array().is_some_and(|a| a
        .iter()
        .all(|x| !x["name"].as_str().unwrap_or("loop").starts_with("loop"))));
    assert!(d["notes"].as_array().is_some_and(|a| a.is_empty()), "{d}");
}

#[test]
fn rates_follow_the_counters_over_the_elapsed_time() {
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let _agent = Agent::start(
        dir.path(),
        &only_system(&config(dir.path(), &pg, &listener.url(), 1)),
        &[],
    );
    let events = wait_for("three system samples", Duration::from_secs(20), || {
        let e = listener.events_of("system");
        (e.len() >= 3).then_some(e)
    });
    let (a, b) = (&events[1]["data"], &events[2]["data"]);
    assert_eq!(events[0]["data"]["baseline"], true);
    assert_eq!(b["baseline"], false);
    let secs = b["elapsed_s"].as_f64().expect("elapsed");
    assert!((0.5..2.0).contains(&secs), "{secs}");
    let p = &b["cpu"]["percent"];
    let sum: f64 = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ]
    .iter()
    .map(|k| p[k].as_f64().expect("pct"))
    .sum();
    assert!((sum - 100.0).abs() < 0.1, "{p}");
    // Loopback carries the agent's own HTTP traffic: its rate is its counter's delta over
    // the elapsed time, exactly (to the two decimals shipped).
    let lo = |d: &Value| {
        d["network"]
            .as_array()
            .and_then(|n| n.iter().find(|i| i["name"] == "lo").cloned())
            .expect("lo")
    };
    let (la, lb) = (lo(a), lo(b));
    let delta =
        lb["tx_bytes_total"].as_u64().expect("tx") - la["tx_bytes_total"].as_u64().expect("tx");
    assert!(delta > 0);
    let expected = (delta as f64 / secs * 100.0).round() / 100.0;
    let got = lb["tx_bytes_per_s"].as_f64().expect("rate");
    // elapsed_s is rounded to the millisecond in the event; allow for that rounding.
    assert!(
        (got - expected).abs() <= expected * 0.002 + 0.01,
        "{got} vs {expected}"
    );
    assert!(b["postgres"]["cpu_pct"].as_f64().is_some());
}
