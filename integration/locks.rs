//! The `pg_locks` source: a real blocking chain, its root blocker and correlation ids.

use std::time::Duration;

use serde_json::Value;

use crate::harness::agent::{config, Agent, TOKEN};
use crate::harness::listener::Listener;
use crate::harness::pg::PgCluster;
use crate::harness::{shared_tempdir, wait_for};

const A: &str = "0000000a-0000-4000-8000-00000000000a";
const B: &str = "0000000b-0000-4000-8000-00000000000b";
const C: &str = "0000000c-0000-4000-8000-00000000000c";

fn pid_of(pg: &PgCluster, app: &str) -> i64 {
    pg.sql(&format!(
        "select pid from pg_stat_activity where application_name = 'bitville-{app}'"
    ))
    .parse()
    .expect("pid")
}

#[test]
fn blocking_chain_reports_each_waiter_and_the_idle_root_blocker() {
    // The server computes query ids from 14 on when asked to (or when
    // pg_stat_statements is loaded).
    let with_ids = crate::harness::pg::major_version() >= 14;
    let pg = PgCluster::start(if with_ids {
        "compute_query_id = on"
    } else {
        ""
    });
    pg.sql("create table t (id int primary key, v int); insert into t values (1, 0)");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");

    // A holds the row lock and goes idle in transaction; B waits on A; C waits on B.
    let mut a = pg.interactive(&format!("bitville-{A}"));
    a.send("begin; select * from t where id = 1 for update;");
    wait_for("A idle in transaction", Duration::from_secs(10), || {
        (pg.sql(&format!(
            "select state from pg_stat_activity where application_name = 'bitville-{A}'"
        )) == "idle in transaction")
            .then_some(())
    });
    let _b = pg.session(
        &format!("bitville-{B}"),
        "update t set v = v + 1 where id = 1",
    );
    wait_for("B waiting", Duration::from_secs(10), || {
        (pg.sql("select count(*) from pg_stat_activity where wait_event_type = 'Lock'") == "1")
            .then_some(())
    });
    let _c = pg.session(
        &format!("bitville-{C}"),
        "update t set v = v + 10 where id = 1",
    );
    wait_for("C waiting", Duration::from_secs(10), || {
        (pg.sql("select count(*) from pg_stat_activity where wait_event_type = 'Lock'") == "2")
            .then_some(())
    });
    let (pa, pb, pc) = (pid_of(&pg, A), pid_of(&pg, B), pid_of(&pg, C));
    let server_query_id = |pid: i64| -> Value {
        if !with_ids {
            return Value::Null;
        }
        let id = pg.sql(&format!(
            "select query_id from pg_stat_activity where pid = {pid}"
        ));
        Value::from(id.parse::<i64>().expect("a query id"))
    };
    let (qb, qc) = (server_query_id(pb), server_query_id(pc));

    let toml = config(dir.path(), &pg, &listener.url(), 60)
        .replace(
            "locks = false",
            "locks = true\nlocks_blocking_interval_s = 1",
        )
        .replace("[collection]\n", "[collection]\nactivity = false\n");
    let agent = Agent::start(dir.path(), &toml, &[]);
    let events = wait_for("two samples of the chain", Duration::from_secs(20), || {
        let e = listener.events_of("pg_locks");
        let samples: std::collections::BTreeSet<&str> = e
            .iter()
            .filter_map(|e| e["collected_at"].as_str())
            .collect();
        (samples.len() >= 2).then(|| e.clone())
    });
    // The base interval is 60 s: a second sample within 20 s means the fast interval
    // took over while blocking was seen.
    let first_sample = events[0]["collected_at"].clone();
    let first: Vec<&Value> = events
        .iter()
        .filter(|e| e["collected_at"] == first_sample)
        .collect();
    assert_eq!(first.len(), 2, "one event per waiter: {first:?}");
    let by_pid = |pid: i64| -> &Value {
        first
            .iter()
            .find(|e| e["data"]["blocked"]["pid"] == pid)
            .map(|e| &e["data"])
            .expect("event for pid")
    };
    let (eb, ec) = (by_pid(pb), by_pid(pc));

    assert_eq!(eb["blocked"]["correlation_id"], B);
    assert_eq!(
        eb["blocked"]["query"],
        "update t set v = v + 1 where id = 1"
    );
    assert_eq!(eb["blocked"]["wait_event_type"], "Lock");
    // The server's query id where it gives one (the join key to pg_stat_statements),
    // and the agent's fingerprint everywhere.
    assert_eq!(eb["blocked"]["query_id"], qb, "{eb}");
    assert_eq!(ec["blocked"]["query_id"], qc, "{ec}");
    assert_eq!(
        eb["blocked"]["query_fingerprint"].as_str(),
        postgres_agent::fingerprint::fingerprint("update t set v = v + $1 where id = $2")
            .as_deref()
    );
    assert_eq!(eb["lock"]["locktype"], "transactionid");
    assert_eq!(eb["lock"]["mode"], "ShareLock");
    assert_eq!(eb["blocking_pids"], serde_json::json!([pa]));
    assert_eq!(eb["blocking"][0]["correlation_id"], A);
    assert_eq!(eb["chain_depth"], 1);
    assert!(eb["wait_s"].as_f64() > Some(0.0));

    assert_eq!(ec["blocked"]["correlation_id"], C);
    assert_eq!(ec["lock"]["locktype"], "tuple");
    assert_eq!(ec["lock"]["mode"], "ExclusiveLock");
    assert_eq!(ec["lock"]["relation"], "t");
    assert_eq!(ec["blocking_pids"], serde_json::json!([pb]));
    assert_eq!(ec["blocking"][0]["correlation_id"], B);
    assert_eq!(ec["chain_depth"], 2);

    for e in [eb, ec] {
        let roots = e["root_blockers"].as_array().expect("roots");
        assert_eq!(roots.len(), 1, "{e}");
        let root = &roots[0];
        assert_eq!(root["pid"], pa);
        assert_eq!(root["correlation_id"], A);
        assert_eq!(root["application_name"], format!("bitville-{A}"));
        assert_eq!(root["state"], "idle in transaction");
        assert_eq!(root["query"], "select * from t where id = 1 for update;");
        assert!(root["xact_age_s"].as_f64() > Some(0.0));
    }

    // When the root commits, the chain clears and the source goes quiet.
    a.send("commit;");
    wait_for("no waiters", Duration::from_secs(10), || {
        (pg.sql("select count(*) from pg_stat_activity where wait_event_type = 'Lock'") == "0")
            .then_some(())
    });
    drop(agent);
}
