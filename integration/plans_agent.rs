//! Plans the agent asks for (`pg_plans`): the statements with the most time get a
//! generic plan in their database; dropping the index one of them uses gives exactly one
//! `plan_changed` naming the index scan that became a sequential scan, creating it again
//! another; a data-modifying statement is never planned, and nothing is written.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::harness::agent::{config, Agent, TOKEN};
use crate::harness::listener::Listener;
use crate::harness::pg::{bin_of, PgCluster};
use crate::harness::{shared_tempdir, wait_for};

const PRELOAD: &str = "shared_preload_libraries = 'pg_stat_statements'\n";
const WORKLOAD: &str = "select * from orders where customer = 7; \
     select c.name, sum(o.total) from orders o join customers c on c.id = o.customer where c.id = 5 group by c.name; \
     select count(*) from customers where name like 'c1%'; \
     insert into audit values (1)";
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

fn a_dropped_index_is_one_plan_change(pg: PgCluster) {
    pg.sql(
        "create extension pg_stat_statements; \
         create table customers (id int primary key, name text); \
         insert into customers select g, 'c' || g from generate_series(1, 1000) g; \
         create table orders (id int primary key, customer int, total numeric); \
         insert into orders select g, g % 1000, g from generate_series(1, 20000) g; \
         create index orders_customer on orders (customer); \
         create table audit (a int); analyze customers; analyze orders",
    );
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("plans-agent");
    let toml = config(dir.path(), &pg, &listener.url(), 1)
        .replace("statements = false", "statements = true")
        .replace("plans = false", "plans = true")
        .replace("[collection]\n", "[collection]\nactivity = false\n");
    let agent = Agent::start(dir.path(), &toml, &[]);
    let stop = AtomicBool::new(false);
    let queryid = std::thread::scope(|s| {
        // Stops the workload however the scope ends: a failed wait must not leave it
        // running (the scope would wait for it forever).
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
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
        // The insert is refused for what planning it would lock; the three reading
        // statements are planned.
        wait_for(
            "the reading statements planned, the insert refused",
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
                        && e["data"]["refused"].as_object().is_some_and(|r| {
                            r.keys()
                                .any(|k| k.starts_with("a data-modifying statement"))
                        })
                });
                (planned.len() >= 3 && refused).then_some(())
            },
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

        pg.sql("create index orders_customer on orders (customer)");
        wait_for(
            "a second plan change once the index is back",
            Duration::from_secs(60),
            || {
                plans(&listener, "plan_changed", queryid)
                    .into_iter()
                    .find(|e| shape(e, "new_shape").contains("using orders_customer"))
            },
        );
        // Steady from here: five more planning cycles with the statement planned in each.
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
        wait_for("five more planning cycles", Duration::from_secs(60), || {
            (planned_cycles() >= now + 5).then_some(())
        });
        queryid
    });
    assert_eq!(plans(&listener, "plan_changed", queryid).len(), 2);
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
    a_dropped_index_is_one_plan_change(PgCluster::start_with(&bin_of(15), PRELOAD));
}

#[test]
fn a_dropped_index_is_one_plan_change_with_generic_plan_explain_on_17() {
    a_dropped_index_is_one_plan_change(PgCluster::start_with(&bin_of(17), PRELOAD));
}
