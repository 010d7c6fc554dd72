//! Plans the agent asks for (`pg_plans`): the statements with the most time get a
//! generic plan in their database; dropping the index one of them uses gives exactly one
//! `plan_changed` naming the index scan that became a sequential scan, creating it again
//! another; a data-modifying statement is planned as the query that finds its rows, an
//! insert of values not at all, and nothing is written.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::harness::agent::{config, Agent, TOKEN};
use crate::harness::listener::Listener;
use crate::harness::pg::{bin_of, run, PgCluster};
use crate::harness::{shared_tempdir, wait_for};

const PRELOAD: &str = "shared_preload_libraries = 'pg_stat_statements'\n";
const WORKLOAD: &str = "select * from orders where customer = 7; \
     select c.name, sum(o.total) from orders o join customers c on c.id = o.customer where c.id = 5 group by c.name; \
     select count(*) from customers where name like 'c1%'; \
     update customers set name = name where id = 3; \
     insert into audit values (1)";
const UPDATE: &str = "update customers set name = name where id = $1";
const BY_CUSTOMER: &str = "select * from orders where customer = $1";

fn plans(l: &Listener, record: &str, queryid: i64) -> Vec<Value> {
    l.events_of("pg_plans")
        .into_iter()
        .filter(|e| e["data"]["record"] == record && e["data"]["query_id"] == queryid)
        .collect()
}

fn shape(e: &Value, key: &str) -> String {
    e["data"][key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join("\n")
}

fn tables(pg: &PgCluster) {
    pg.sql(
        "create extension pg_stat_statements; \
         create table customers (id int primary key, name text); \
         insert into customers select g, 'c' || g from generate_series(1, 1000) g; \
         create table orders (id int primary key, customer int, total numeric); \
         insert into orders select g, g % 1000, g from generate_series(1, 20000) g; \
         create index orders_customer on orders (customer); \
         create table audit (a int); analyze customers; analyze orders",
    );
}

/// Sets the flag when dropped: a workload thread stops however its scope ends (a
/// failed wait must not leave it running: the scope would wait for it forever).
struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The agent on a 1 s interval with pg_statements and pg_plans on, connecting as the
/// role `agent` (created here with `grants`): the workload runs as postgres, and the
/// agent's role's own statements are its monitoring queries, which it does not plan.
fn plans_config(
    dir: &std::path::Path,
    pg: &PgCluster,
    listener: &Listener,
    grants: &str,
) -> String {
    pg.sql(&format!("create role agent login {grants}"));
    config(dir, pg, &listener.url(), 1)
        .replace("user = \"postgres\"", "user = \"agent\"")
        .replace("statements = false", "statements = true")
        .replace("plans = false", "plans = true")
        .replace("[collection]\n", "[collection]\nactivity = false\n")
}

fn summaries(l: &Listener) -> Vec<Value> {
    l.events_of("pg_plans")
        .into_iter()
        .filter(|e| e["data"]["record"] == "summary")
        .collect()
}

/// `steady`: planning cycles of an unchanged workload after the index is back, in which
/// no plan may change.
fn a_dropped_index_is_one_plan_change(pg: PgCluster, steady: usize) {
    tables(&pg);
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("plans-agent");
    let toml = plans_config(dir.path(), &pg, &listener, "superuser");
    let agent = Agent::start(dir.path(), &toml, &[]);
    let stop = AtomicBool::new(false);
    let queryid = std::thread::scope(|s| {
        let _stop = Stop(&stop);
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                pg.sql(WORKLOAD);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let queryid: i64 = wait_for(
            "the statement in pg_stat_statements",
            Duration::from_secs(30),
            || {
                pg.sql(&format!(
                    "select queryid from pg_stat_statements where query = '{BY_CUSTOMER}'"
                ))
                .parse()
                .ok()
            },
        );
        let first = wait_for("its plan", Duration::from_secs(60), || {
            plans(&listener, "plan", queryid).into_iter().next()
        });
        let d = &first["data"];
        assert_eq!(d["source"], "agent", "{first}");
        assert_eq!(d["generic"], true);
        assert_eq!(d["database"], "postgres");
        assert_eq!(d["as_user"], true, "a superuser may be any role");
        assert!(
            shape(&first, "shape").contains("using orders_customer"),
            "{first}"
        );
        assert_eq!(d["plan"]["format"], "json");
        assert_eq!(d["shape_hash"].as_str().map(str::len), Some(16));
        // The three reading statements and the update are planned; the insert of
        // values has no plan to ask for.
        wait_for(
            "the statements planned, the insert refused",
            Duration::from_secs(60),
            || {
                let events = listener.events_of("pg_plans");
                let planned: std::collections::BTreeSet<i64> = events
                    .iter()
                    .filter(|e| e["data"]["record"] == "plan")
                    .filter_map(|e| e["data"]["query_id"].as_i64())
                    .collect();
                let refused = events.iter().any(|e| {
                    e["data"]["record"] == "summary"
                        && e["data"]["refused"]
                            .as_object()
                            .is_some_and(|r| r.keys().any(|k| k.starts_with("INSERT … VALUES")))
                });
                (planned.len() >= 4 && refused).then_some(())
            },
        );
        // The update as the query that finds its rows: its primary key's index scan.
        let update: i64 = pg
            .sql(&format!(
                "select queryid from pg_stat_statements where query = '{UPDATE}'"
            ))
            .parse()
            .expect("the update's query id");
        let u = plans(&listener, "plan", update)
            .into_iter()
            .next()
            .expect("a plan of the update");
        assert_eq!(u["data"]["planned_as"], "select", "{u}");
        assert_eq!(u["data"]["statement_kind"], "update", "{u}");
        assert!(
            shape(&u, "shape").contains("on customers using customers_pkey"),
            "{u}"
        );

        pg.sql("drop index orders_customer");
        let changed = wait_for(
            "a plan change after the index is dropped",
            Duration::from_secs(60),
            || plans(&listener, "plan_changed", queryid).into_iter().next(),
        );
        let removed = changed["data"]["removed"].to_string();
        let added = changed["data"]["added"].to_string();
        assert!(removed.contains("using orders_customer"), "{changed}");
        assert!(added.contains("Seq Scan on orders"), "{changed}");
        assert_eq!(
            changed["data"]["old_shape_hash"],
            first["data"]["shape_hash"]
        );
        assert!(changed["data"]["mean_ms_before"].is_number(), "{changed}");
        assert_eq!(
            changed["data"]["in_between"],
            serde_json::json!({"indexes_dropped": ["orders.orders_customer"]}),
            "{changed}"
        );

        // Its effect, from a pg_statements cycle entirely after the change: slower.
        let effect = wait_for("the change's effect", Duration::from_secs(60), || {
            plans(&listener, "plan_change_effect", queryid)
                .into_iter()
                .next()
        });
        let d = &effect["data"];
        assert_eq!(d["old_shape_hash"], first["data"]["shape_hash"], "{effect}");
        assert_eq!(
            d["new_shape_hash"], changed["data"]["new_shape_hash"],
            "{effect}"
        );
        assert!(
            d["ratio"].as_f64() > Some(1.0),
            "a seq scan of 20000 rows for 20: {effect}"
        );
        assert!(d["calls"].as_f64() > Some(0.0), "{effect}");

        pg.sql("create index orders_customer on orders (customer)");
        let back = wait_for(
            "a second plan change once the index is back",
            Duration::from_secs(60),
            || {
                plans(&listener, "plan_changed", queryid)
                    .into_iter()
                    .find(|e| shape(e, "new_shape").contains("using orders_customer"))
            },
        );
        assert_eq!(
            back["data"]["in_between"],
            serde_json::json!({"indexes_added": ["orders.orders_customer"]}),
            "{back}"
        );
        // Steady from here: `steady` more planning cycles with statements planned.
        let planned_cycles = || {
            listener
                .events_of("pg_plans")
                .into_iter()
                .filter(|e| {
                    e["data"]["record"] == "summary" && e["data"]["planned"].as_u64() > Some(0)
                })
                .count()
        };
        let now = planned_cycles();
        wait_for(
            "the steady planning cycles",
            Duration::from_secs(120),
            || (planned_cycles() >= now + steady).then_some(()),
        );
        queryid
    });
    assert_eq!(plans(&listener, "plan_changed", queryid).len(), 2);
    let effects = plans(&listener, "plan_change_effect", queryid);
    assert_eq!(effects.len(), 2, "one per change: {effects:#?}");
    assert!(
        effects[1]["data"]["ratio"].as_f64() < Some(1.0),
        "faster with the index back: {:#}",
        effects[1]
    );
    assert_eq!(
        plans(&listener, "plan", queryid).len(),
        3,
        "with, without, with the index"
    );
    assert_eq!(pg.sql("select count(*) from orders"), "20000");
    drop(agent);
}

#[test]
fn a_dropped_index_is_one_plan_change_prepared_before_16() {
    a_dropped_index_is_one_plan_change(PgCluster::start_with(&bin_of(15), PRELOAD), 30);
}

#[test]
fn a_dropped_index_is_one_plan_change_with_generic_plan_explain_on_17() {
    a_dropped_index_is_one_plan_change(PgCluster::start_with(&bin_of(17), PRELOAD), 5);
}

/// The agent plans as a role that may read the tables but is no superuser. A session
/// holding EXCLUSIVE on `orders` lets only AccessShareLock through: the agent goes on
/// planning its statements, so it takes nothing stronger. A partition held ACCESS
/// EXCLUSIVE that the workload never touches (its constant prunes it) but a generic plan
/// must open: the agent gives up at its lock_timeout, counts it, and plans again once it
/// is released. Nothing is written, and the agent's role never runs a statement of the
/// workload (pg_stat_statements).
#[test]
fn planning_takes_no_lock_stronger_than_access_share_and_gives_up_on_a_locked_table() {
    let pg = PgCluster::start_with(&bin_of(15), PRELOAD);
    tables(&pg);
    pg.sql(
        "create table parted (k int, v int) partition by list (k); \
         create table parted_1 partition of parted for values in (1); \
         create table parted_2 partition of parted for values in (2); \
         insert into parted select 1 + g % 2, g from generate_series(1, 1000) g; analyze parted",
    );
    let counts = || {
        pg.sql(
            "select string_agg(relname || '=' || (n_tup_ins + n_tup_upd + n_tup_del + n_tup_hot_upd), ',' order by relname) \
             from pg_stat_user_tables where relname in ('orders', 'customers', 'parted_1', 'parted_2')",
        )
    };
    let before = wait_for("the loads counted", Duration::from_secs(30), || {
        let c = counts();
        c.contains("orders=20000").then_some(c)
    });
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("plans-locks");
    let toml = plans_config(
        dir.path(),
        &pg,
        &listener,
        "in role pg_monitor, pg_read_all_data",
    );
    let agent = Agent::start(dir.path(), &toml, &[]);
    let stop = AtomicBool::new(false);
    let by_customer = std::thread::scope(|s| {
        let _stop = Stop(&stop);
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                pg.sql("select * from orders where customer = 7; select count(*) from parted where k = 1");
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let id = |text: &str| -> i64 {
            wait_for(
                "the statement in pg_stat_statements",
                Duration::from_secs(30),
                || {
                    pg.sql(&format!("select queryid from pg_stat_statements where query = '{text}' and userid = 'postgres'::regrole"))
                    .parse()
                    .ok()
                },
            )
        };
        let by_customer = id(BY_CUSTOMER);
        let parted = id("select count(*) from parted where k = $1");
        let first = wait_for("a plan", Duration::from_secs(60), || {
            plans(&listener, "plan", by_customer).into_iter().next()
        });
        assert_eq!(
            first["data"]["as_user"], false,
            "agent may not become postgres: {first}"
        );
        wait_for(
            "the partitioned statement planned",
            Duration::from_secs(60),
            || plans(&listener, "plan", parted).into_iter().next(),
        );

        let mut holder = pg.interactive("holder");
        holder.send("begin; lock table orders in exclusive mode;");
        let held = |mode: &str| {
            wait_for("the lock held", Duration::from_secs(30), || {
                (pg.sql(&format!(
                    "select count(*) from pg_locks l join pg_stat_activity a using (pid) \
                     where a.application_name = 'holder' and l.locktype = 'relation' and l.mode = '{mode}' and l.granted"
                )) == "1")
                    .then_some(())
            })
        };
        held("ExclusiveLock");
        let n = summaries(&listener).len();
        let during = wait_for(
            "three planning cycles under the EXCLUSIVE lock",
            Duration::from_secs(60),
            || {
                let s = summaries(&listener);
                (s.len() >= n + 4).then(|| s[n + 1..].to_vec())
            },
        );
        for s in &during {
            assert_eq!(s["data"]["locked"], 0, "{s}");
            assert!(s["data"]["planned"].as_u64() >= Some(2), "{s}");
        }

        holder.send("commit; begin; lock table parted_2 in access exclusive mode;");
        held("AccessExclusiveLock");
        let locked = wait_for(
            "a plan given up on at the lock",
            Duration::from_secs(60),
            || {
                summaries(&listener)
                    .into_iter()
                    .find(|s| s["data"]["locked"].as_u64() > Some(0))
            },
        );
        assert!(
            locked["data"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("lock timeout")),
            "{locked}"
        );
        holder.send("commit;");
        // Tried again once released: a cycle where no statement failed, was locked out
        // or waits for its next try (the one on the partitions had).
        let after = summaries(&listener).len();
        wait_for(
            "planned again after the release",
            Duration::from_secs(60),
            || {
                summaries(&listener).into_iter().skip(after).find(|s| {
                    s["data"]["locked"] == 0
                        && s["data"]["failed"] == 0
                        && s["data"]["backing_off"] == 0
                        && s["data"]["planned"].as_u64() >= Some(2)
                })
            },
        );
        by_customer
    });
    drop(agent);
    assert_eq!(counts(), before, "the agent wrote nothing");
    // The agent's role planned the workload's statements, never ran them.
    let ran = pg.sql(
        "select count(*) from pg_stat_statements where userid = 'agent'::regrole \
         and (query ilike 'select%orders%' or query ilike 'select%parted%')",
    );
    assert_eq!(ran, "0");
    let planned = pg.sql(
        "select count(*) from pg_stat_statements where userid = 'agent'::regrole and query ilike 'explain%'",
    );
    assert_ne!(planned, "0");
    assert!(!plans(&listener, "plan", by_customer).is_empty());
}

/// A pgbench script of 18 distinct reading statements over pgbench's tables: lookups,
/// joins and an aggregate, each written six ways.
fn bench_script() -> String {
    let mut script = String::from("\\set aid random(1, 100000)\n\\set bid random(1, 1)\n");
    let mut more = String::new();
    for _ in 0..6 {
        more.push_str(" and aid > 0");
        let joined = more.replace("aid", "a.aid");
        let tellers = more.replace("aid", "t.tid");
        script.push_str(&format!(
            "select abalance from pgbench_accounts where aid = :aid{more};\n\
             select a.aid, b.bbalance from pgbench_accounts a join pgbench_branches b using (bid) where a.aid = :aid{joined};\n\
             select t.tid, count(*) from pgbench_tellers t join pgbench_branches b using (bid) where b.bid = :bid{tellers} group by t.tid;\n"
        ));
    }
    script
}

/// Every supported version (15 and 17 also in the tests above; `PREPARE` and `EXPLAIN
/// EXECUTE` before 16, `EXPLAIN (GENERIC_PLAN)` from 16): under pgbench -M prepared
/// (its TPC-B-like transaction and 18 reading statements with joins) and psql's simple
/// statements, the workload's reading statements are planned, and within two cycles of
/// the top 20 being full at least 18 of them have a plan (the only ones refused:
/// INSERT … VALUES). From 14, where a session shows its query id, a statement seen
/// running long is planned while it runs.
#[test]
fn every_version_plans_nine_tenths_of_its_top_twenty() {
    const READING: [&str; 4] = [
        BY_CUSTOMER,
        UPDATE,
        "select c.name, sum(o.total) from orders o join customers c on c.id = o.customer where c.id = $1 group by c.name",
        "select count(*) from customers where name like $1",
    ];
    const LONG: &str = "select pg_sleep(6), count(*) from orders where customer = 11 and total > 0";
    for major in 12..=18 {
        let pg = PgCluster::start_with(&bin_of(major), PRELOAD);
        tables(&pg);
        run(
            pg.pgbench().args(["-i", "-s", "1", "-q", "postgres"]),
            "pgbench -i",
        );
        let listener = Listener::start(TOKEN);
        let dir = shared_tempdir("plans-versions");
        let script = dir.path().join("reads.sql");
        std::fs::write(&script, bench_script()).expect("write the script");
        let toml = plans_config(dir.path(), &pg, &listener, "superuser")
            .replace("sample_interval_ms = 0", "sample_interval_ms = 500");
        let agent = Agent::start(dir.path(), &toml, &[]);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let _stop = Stop(&stop);
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    pg.sql(WORKLOAD);
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
            for text in READING {
                let id: i64 = wait_for(
                    &format!("{major}: {text} in pg_stat_statements"),
                    Duration::from_secs(30),
                    || {
                        pg.sql(&format!(
                            "select queryid from pg_stat_statements where query = '{text}'"
                        ))
                        .parse()
                        .ok()
                    },
                );
                let plan = wait_for(
                    &format!("{major}: a plan of {text}"),
                    Duration::from_secs(60),
                    || plans(&listener, "plan", id).into_iter().next(),
                );
                assert_eq!(plan["data"]["generic"], true, "{major}: {plan}");
                assert!(
                    shape(&plan, "shape").contains(" on "),
                    "{major}: a plan that reads a table: {plan}"
                );
            }
            // Then pgbench besides: its statements take the top.
            let n = summaries(&listener).len();
            let _bench = pg.pgbench_session(&[
                "-n",
                "-M",
                "prepared",
                "-c",
                "2",
                "-T",
                "600",
                "-R",
                "200",
                "-b",
                "tpcb-like",
                "-f",
                script.to_str().expect("utf8"),
            ]);
            let full = wait_for(
                &format!("{major}: two cycles with a full top 20"),
                Duration::from_secs(60),
                || {
                    let full: Vec<Value> = summaries(&listener)
                        .into_iter()
                        .skip(n)
                        .map(|e| e["data"].clone())
                        .filter(|d| d["candidates"] == 20)
                        .take(2)
                        .collect();
                    (full.len() == 2).then_some(full)
                },
            );
            let best = full
                .iter()
                .max_by_key(|d| d["planned"].as_u64())
                .expect("two summaries");
            assert!(best["planned"].as_u64() >= Some(18), "{major}: {full:#?}");
            for d in &full {
                assert_eq!(
                    (&d["failed"], &d["locked"]),
                    (&0.into(), &0.into()),
                    "{major}: {d:#}"
                );
                let refused = d["refused"].as_object().expect("refused");
                assert!(
                    refused.keys().all(|k| k.starts_with("INSERT … VALUES")),
                    "{major}: {d:#}"
                );
                let refused: u64 = refused.values().filter_map(Value::as_u64).sum();
                let accounted = d["planned"].as_u64().unwrap_or(0)
                    + refused
                    + d["backing_off"].as_u64().unwrap_or(0)
                    + d["deferred"].as_u64().unwrap_or(0);
                assert_eq!(accounted, 20, "{major}: {d:#}");
            }
            if major >= 14 {
                let long = pg.session("long", LONG);
                let id: i64 = wait_for(
                    &format!("{major}: the long statement in pg_stat_statements"),
                    Duration::from_secs(30),
                    || {
                        pg.sql("select queryid from pg_stat_statements where query like 'select pg_sleep($1), count(*) from orders%'")
                            .parse()
                            .ok()
                    },
                );
                let plan = wait_for(
                    &format!("{major}: a plan of the statement seen running"),
                    Duration::from_secs(60),
                    || plans(&listener, "plan", id).into_iter().next(),
                );
                assert!(
                    plan["data"]["seen_running_s"].as_f64() >= Some(1.0),
                    "{major}: planned because it ran long: {plan}"
                );
                assert!(shape(&plan, "shape").contains("on orders"), "{plan}");
                assert!(long.wait(), "{major}: the long statement ran");
            }
        });
        drop(agent);
        // The agent's own monitoring queries (its role's) are never planned.
        let own: Vec<i64> = pg
            .sql("select string_agg(queryid::text, ',') from pg_stat_statements where userid = 'agent'::regrole")
            .split(',')
            .filter_map(|q| q.parse().ok())
            .collect();
        assert!(own.len() > 5, "{major}: {own:?}");
        for q in own {
            assert_eq!(plans(&listener, "plan", q), Vec::<Value>::new(), "{major}");
        }
    }
}

/// An auto_explain plan of a statement the agent planned is linked to its generic
/// plan: the log event carries both shape hashes and whether they match (text and
/// JSON plans alike), pg_plans counts the plans read, and when the generic plan changes
/// (planner settings changed for the database) the change names the settings and says
/// how often the server ran the old shape.
#[test]
fn an_auto_explain_plan_is_linked_to_the_generic_plan() {
    let pg = PgCluster::start(
        "shared_preload_libraries = 'auto_explain,pg_stat_statements'\n\
         logging_collector = on\nlog_destination = 'stderr'\nlog_directory = 'log'\n\
         log_filename = 'postgresql.log'\nlog_rotation_age = 0\nlog_rotation_size = 0\n\
         log_line_prefix = '%m [%p] %q%u@%d %a %Q '\nlc_messages = 'C'\nlog_timezone = 'UTC'\n",
    );
    tables(&pg);
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("plans-linked");
    let toml = plans_config(dir.path(), &pg, &listener, "superuser").replace(
        "logs = false\n",
        "logs = true\n[logs]\nformat = \"stderr\"\nstart_at = \"beginning\"\n",
    );
    let agent = Agent::start(dir.path(), &toml, &[]);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let _stop = Stop(&stop);
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                pg.sql(WORKLOAD);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let queryid: i64 = wait_for(
            "the statement in pg_stat_statements",
            Duration::from_secs(30),
            || {
                pg.sql(&format!(
                    "select queryid from pg_stat_statements where query = '{BY_CUSTOMER}'"
                ))
                .parse()
                .ok()
            },
        );
        let generic = wait_for("its generic plan", Duration::from_secs(60), || {
            plans(&listener, "plan", queryid).into_iter().next()
        });
        let hash = generic["data"]["shape_hash"].clone();
        // Three runs logged by auto_explain: two as text, one as JSON.
        run(
            pg.psql()
                .args(["-c", "set auto_explain.log_min_duration = 0"])
                .args(["-c", "select * from orders where customer = 7"])
                .args(["-c", "select * from orders where customer = 8"])
                .args(["-c", "set auto_explain.log_format = json"])
                .args(["-c", "select * from orders where customer = 9"]),
            "the logged runs",
        );
        let logged = wait_for("the three plans in pg_log", Duration::from_secs(30), || {
            let v: Vec<Value> = listener
                .events_of("pg_log")
                .into_iter()
                .map(|e| e["data"].clone())
                .filter(|d| d["query_id"] == queryid && d.get("plan").is_some())
                .collect();
            (v.len() >= 3).then_some(v)
        });
        assert_eq!(logged.len(), 3, "{logged:#?}");
        let formats: Vec<&Value> = logged.iter().map(|d| &d["plan"]["format"]).collect();
        assert_eq!(formats, ["text", "text", "json"]);
        for d in &logged {
            let p = &d["plan"];
            assert_eq!(p["shape_hash"], hash, "the generic plan's shape: {d:#}");
            assert_eq!(p["generic_shape_hash"], hash, "{d:#}");
            assert_eq!(p["matches_generic"], true, "{d:#}");
        }
        let counted = wait_for("the logged plans counted", Duration::from_secs(30), || {
            let (mut read, mut matching) = (0, 0);
            for s in summaries(&listener) {
                read += s["data"]["log_plans"]["read"].as_u64().unwrap_or(0);
                matching += s["data"]["log_plans"]["matching_generic"]
                    .as_u64()
                    .unwrap_or(0);
            }
            (read >= 3).then_some((read, matching))
        });
        assert_eq!(counted, (3, 3));

        // The index made unusable for the database's new sessions (the agent's
        // included): a plan change that names the settings.
        pg.sql("alter database postgres set enable_indexscan = off");
        pg.sql("alter database postgres set enable_bitmapscan = off");
        let changed = wait_for("the plan change", Duration::from_secs(60), || {
            plans(&listener, "plan_changed", queryid).into_iter().next()
        });
        assert_eq!(
            changed["data"]["in_between"],
            serde_json::json!({"settings": [
                {"name": "enable_bitmapscan", "from": null, "to": "off"},
                {"name": "enable_indexscan", "from": null, "to": "off"},
            ]}),
            "{changed:#}"
        );
        assert!(
            shape(&changed, "new_shape").contains("Seq Scan on orders"),
            "{changed:#}"
        );
        let runs: Vec<(Value, Value, Value)> = changed["data"]["logged"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| (l["shape_hash"].clone(), l["is"].clone(), l["runs"].clone()))
            .collect();
        assert_eq!(
            runs,
            vec![(hash.clone(), "old".into(), 3.into())],
            "{changed:#}"
        );
    });
    drop(agent);
}

/// A `SQL_ASCII` database where a statement's text is not UTF-8: pg_stat_statements
/// cannot give the texts in the agent's database at all, so they are read in that one;
/// the statement that is not UTF-8 is refused with why, and every other statement, in
/// both databases, is planned.
#[test]
fn a_text_that_is_not_utf8_is_refused_and_every_other_statement_planned() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let pg = PgCluster::start_with(&bin_of(15), PRELOAD);
    tables(&pg);
    pg.sql(
        "create database latin encoding 'SQL_ASCII' template template0 lc_collate 'C' lc_ctype 'C'",
    );
    let in_latin = |sql: &[u8]| {
        run(
            pg.psql()
                .args(["-d", "latin", "-c"])
                .arg(OsStr::from_bytes(sql)),
            "a statement in latin",
        );
    };
    in_latin(b"create extension pg_stat_statements");
    in_latin(b"create table \"caf\xe9\" (a int); create table plain (a int)");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("plans-latin");
    let toml = plans_config(dir.path(), &pg, &listener, "superuser");
    let agent = Agent::start(dir.path(), &toml, &[]);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let _stop = Stop(&stop);
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                pg.sql(WORKLOAD);
                in_latin(b"select * from \"caf\xe9\" where a = 1; select count(*) from plain where a = 1");
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let planned_in = |database: &str, text: &str| {
            wait_for(
                &format!("a plan of {text} in {database}"),
                Duration::from_secs(60),
                || {
                    listener.events_of("pg_plans").into_iter().find(|e| {
                        e["data"]["record"] == "plan"
                            && e["data"]["database"] == database
                            && e["data"]["plan"]["root"].to_string().contains(text)
                    })
                },
            )
        };
        planned_in("postgres", "orders");
        planned_in("latin", "plain");
        let refused = wait_for("the text refused", Duration::from_secs(60), || {
            summaries(&listener).into_iter().find(|s| {
                s["data"]["refused"]
                    .as_object()
                    .is_some_and(|r| r.keys().any(|k| k.contains("not UTF-8")))
            })
        });
        assert_eq!(refused["data"]["failed"], 0, "{refused:#}");
    });
    drop(agent);
    for s in summaries(&listener) {
        assert_eq!(s["data"]["failed"], 0, "{s:#}");
        assert_eq!(s["data"].get("last_error"), None, "{s:#}");
    }
}

/// A budget too small for the top 20: each cycle plans what fits and counts the rest as
/// deferred, and the statements take turns, so every one of them is planned within a
/// few cycles.
#[test]
fn a_small_budget_defers_statements_and_each_takes_its_turn() {
    let pg = PgCluster::start_with(&bin_of(15), PRELOAD);
    tables(&pg);
    run(
        pg.pgbench().args(["-i", "-s", "1", "-q", "postgres"]),
        "pgbench -i",
    );
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("plans-budget");
    let script = dir.path().join("reads.sql");
    std::fs::write(&script, bench_script()).expect("write the script");
    let toml = plans_config(dir.path(), &pg, &listener, "superuser")
        .replace("[collection]\n", "[collection]\nplans_budget_ms = 10\n");
    let agent = Agent::start(dir.path(), &toml, &[]);
    let _bench = pg.pgbench_session(&[
        "-n",
        "-M",
        "prepared",
        "-c",
        "1",
        "-T",
        "600",
        "-R",
        "100",
        "-f",
        script.to_str().expect("utf8"),
    ]);
    let deferring = wait_for("a cycle out of budget", Duration::from_secs(60), || {
        summaries(&listener)
            .into_iter()
            .map(|e| e["data"].clone())
            .find(|d| d["candidates"] == 18 && d["deferred"].as_u64() > Some(0))
    });
    assert!(deferring["planned"].as_u64() < Some(18), "{deferring:#}");
    assert_eq!(deferring["budget_ms"], 10.0);
    // Every one of the 18 statements planned in turn.
    let ids: Vec<i64> = pg
        .sql("select string_agg(queryid::text, ',') from pg_stat_statements where query like 'select%pgbench_%'")
        .split(',')
        .filter_map(|q| q.parse().ok())
        .collect();
    assert_eq!(ids.len(), 18, "{ids:?}");
    wait_for("each statement planned", Duration::from_secs(120), || {
        ids.iter()
            .all(|q| !plans(&listener, "plan", *q).is_empty())
            .then_some(())
    });
    for s in summaries(&listener) {
        let d = &s["data"];
        let refused: u64 = d["refused"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(_, n)| n.as_u64())
            .sum();
        let accounted: u64 = ["planned", "backing_off", "deferred", "failed", "locked"]
            .iter()
            .filter_map(|k| d[*k].as_u64())
            .sum::<u64>()
            + refused;
        assert_eq!(Some(accounted), d["candidates"].as_u64(), "{d:#}");
    }
    drop(agent);
}
