//! Plans as real servers wrote them (`fixtures/`: the same statements on PostgreSQL 12,
//! 15 — stderr, csvlog and jsonlog — and 18, with `auto_explain.log_analyze` and
//! `log_buffers`; see `fixtures/README.md`), read through the whole log pipeline.

use regex::Regex;
use serde_json::{json, Value};

use super::*;
use crate::logs::{Flush, Format, LogParser, Shaper};

const PREFIX: &str = "%m [%p] %q%u@%d ";

fn shaper(redact: Redact) -> Shaper {
    Shaper::new(
        Regex::new(r"^app-(?P<id>[0-9a-f-]{36})$").expect("re"),
        redact,
    )
}

/// The `data` of every event of `log` that carries a plan.
fn plans_of(log: &[u8], format: Format, redact: Redact) -> Vec<Value> {
    let mut p = LogParser::new(format, PREFIX);
    let mut records = Vec::new();
    p.parse(log, 0, Flush::Force, &mut records, usize::MAX);
    let sh = shaper(redact);
    records
        .iter()
        .map(|r| serde_json::to_value(sh.data(r, "f", format)).expect("json"))
        .filter(|d| d.get("plan").is_some())
        .collect()
}

fn fixture(name: &str) -> &'static [u8] {
    match name {
        "pg12.log" => include_bytes!("fixtures/pg12.log"),
        "pg15.log" => include_bytes!("fixtures/pg15.log"),
        "pg15.csv" => include_bytes!("fixtures/pg15.csv"),
        "pg15.json" => include_bytes!("fixtures/pg15.json"),
        "pg18.log" => include_bytes!("fixtures/pg18.log"),
        _ => panic!("no fixture {name}"),
    }
}

fn pg15() -> Vec<Value> {
    plans_of(fixture("pg15.log"), Format::Stderr, Redact::None)
}

/// The plans in the order `fixtures/README.md` lists the statements.
const INSERT: usize = 0;
const JOIN_TEXT: usize = 2;
const FORGED_TEXT: usize = 3;
const PARALLEL: usize = 4;
const NESTED: usize = 5;
const JOIN_JSON: usize = 7;
const FORGED_JSON: usize = 8;
const JOIN_UNTIMED_JSON: usize = 9;
const JOIN_UNTIMED_TEXT: usize = 10;
const NOT_ANALYZED: usize = 11;

/// What the tree says, without what may differ between two runs (times, buffers) and
/// without the format's own `details`.
fn shape(n: &Value) -> Value {
    let keep = [
        "node_type",
        "join_type",
        "strategy",
        "partial_mode",
        "operation",
        "relation",
        "schema",
        "alias",
        "index",
        "scan_direction",
        "subplan_name",
        "parallel_aware",
        "startup_cost",
        "total_cost",
        "plan_rows",
        "plan_width",
        "actual_rows",
        "actual_loops",
    ];
    let mut out = serde_json::Map::new();
    for k in keep {
        if let Some(v) = n.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    let kids: Vec<Value> = n["plans"]
        .as_array()
        .map(|a| a.iter().map(shape).collect())
        .unwrap_or_default();
    out.insert("plans".into(), kids.into());
    Value::Object(out)
}

#[test]
fn every_plan_of_every_server_and_format_is_read() {
    for (name, format) in [
        ("pg12.log", Format::Stderr),
        ("pg15.log", Format::Stderr),
        ("pg15.csv", Format::Csv),
        ("pg15.json", Format::Json),
        ("pg18.log", Format::Stderr),
    ] {
        let plans = plans_of(fixture(name), format, Redact::None);
        assert_eq!(plans.len(), 12, "{name}");
        for (i, d) in plans.iter().enumerate() {
            let p = &d["plan"];
            assert!(p["root"].is_object(), "{name} #{i}: {p}");
            assert!(
                p.get("problem").is_none() && p.get("text").is_none(),
                "{name} #{i}"
            );
            assert_eq!(d["class"], "slow_query", "{name} #{i}");
            assert!(d["message"].as_str().expect("msg").ends_with(" ms  plan:"));
            assert!(d["statement"].is_string(), "{name} #{i}");
        }
        let insert = &plans[INSERT]["plan"]["root"];
        assert_eq!(insert["node_type"], "ModifyTable", "{name}");
        assert_eq!(insert["operation"], "Insert", "{name}");
        assert_eq!(insert["relation"], "t", "{name}");
        assert_eq!(insert["plans"][0]["node_type"], "Function Scan", "{name}");
        assert_eq!(insert["plans"][0]["relation"], "generate_series", "{name}");
        assert_eq!(insert["plans"][0]["alias"], "g", "{name}");
        assert_eq!(insert["plans"][0]["actual_rows"], 1000.0, "{name}");
        // Text and JSON of the same statement: the same tree.
        for (text, js) in [(JOIN_TEXT, JOIN_JSON), (FORGED_TEXT, FORGED_JSON)] {
            assert_eq!(
                shape(&plans[text]["plan"]["root"]),
                shape(&plans[js]["plan"]["root"]),
                "{name}: text #{text} vs json #{js}"
            );
            assert_eq!(plans[text]["statement"], plans[js]["statement"], "{name}");
            assert_eq!(plans[js]["plan"]["format"], "json");
            assert_eq!(plans[text]["plan"]["format"], "text");
        }
        assert_eq!(
            shape(&plans[JOIN_UNTIMED_TEXT]["plan"]["root"]),
            shape(&plans[JOIN_UNTIMED_JSON]["plan"]["root"]),
            "{name}"
        );
    }
}

#[test]
fn the_three_destinations_give_the_same_plan() {
    let stderr = plans_of(fixture("pg15.log"), Format::Stderr, Redact::Literals);
    let csv = plans_of(fixture("pg15.csv"), Format::Csv, Redact::Literals);
    let json = plans_of(fixture("pg15.json"), Format::Json, Redact::Literals);
    for i in 0..stderr.len() {
        for other in [&csv[i], &json[i]] {
            for key in [
                "plan",
                "statement",
                "message",
                "duration_ms",
                "query_fingerprint",
            ] {
                assert_eq!(stderr[i][key], other[key], "#{i} {key}");
            }
        }
    }
}

#[test]
fn a_join_plan_is_read_node_by_node() {
    let d = &pg15()[JOIN_TEXT];
    assert_eq!(
        d["statement"],
        "select count(*) from t a join t b on a.id = b.id where a.name like 'n1%';"
    );
    assert_eq!(d["duration_ms"], 0.518);
    let p = &d["plan"];
    assert_eq!(p["analyzed"], true);
    assert_eq!(p["nodes"], 5);
    assert_eq!(p["total_time_ms"], 0.513);
    let root = &p["root"];
    assert_eq!(root["node_id"], 1);
    assert_eq!(root["node_type"], "Aggregate");
    assert_eq!(root["strategy"], "Plain");
    assert_eq!(root["startup_cost"], 38.8);
    assert_eq!(root["plan_rows"], 1.0);
    assert_eq!(root["actual_startup_time_ms"], 0.511);
    assert_eq!(root["buffers"]["shared_hit"], 12);
    let join = &root["plans"][0];
    assert_eq!(join["node_type"], "Hash Join");
    assert_eq!(join["join_type"], "Inner");
    assert_eq!(join["details"]["Hash Cond"], "(b.id = a.id)");
    let scan = &join["plans"][1]["plans"][0];
    assert_eq!(scan["node_id"], 5);
    assert_eq!(scan["node_type"], "Seq Scan");
    assert_eq!(scan["relation"], "t");
    assert_eq!(scan["alias"], "a");
    assert_eq!(scan["plan_rows"], 111.0);
    assert_eq!(scan["actual_rows"], 112.0);
    assert_eq!(scan["details"]["Filter"], "(name ~~ 'n1%'::text)");
    assert_eq!(scan["details"]["Rows Removed by Filter"], 888);
    assert_eq!(
        join["plans"][1]["details"]["Buckets"],
        "1024  Batches: 1  Memory Usage: 12kB"
    );
    // Two sequential scans of t: 1000 rows read whole, 112 kept of 1000.
    assert_eq!(p["seq_scan_count"], 2);
    assert_eq!(p["seq_scans"][0]["node_id"], 3);
    assert_eq!(p["seq_scans"][0]["actual_rows"], 1000.0);
    assert_eq!(p["seq_scans"][1]["node_id"], 5);
    assert_eq!(p["seq_scans"][1]["rows_removed_by_filter"], 888.0);
}

#[test]
fn a_forged_plan_line_in_a_string_is_not_a_node() {
    for i in [FORGED_TEXT, FORGED_JSON] {
        let d = &pg15()[i];
        assert!(d["statement"]
            .as_str()
            .expect("statement")
            .contains("\nSeq Scan on fake  (cost=0.00..1.00 rows=1 width=1)' as forged"));
        let p = &d["plan"];
        assert!(p.get("ambiguous").is_none());
        assert!(!p["root"].to_string().contains("fake"), "{p}");
        let root = &p["root"];
        assert_eq!(root["node_type"], "Index Only Scan");
        assert_eq!(root["index"], "t_pkey");
        let sub = &root["plans"][0];
        assert_eq!(sub["subplan_name"], "SubPlan 1");
        assert_eq!(sub["parent_relationship"], "SubPlan");
        // The node with the most time of its own: the scan of big, run twice.
        let seq = &sub["plans"][0];
        assert_eq!(p["slowest_node"]["node_id"], seq["node_id"]);
        assert_eq!(p["slowest_node"]["relation"], "big");
        assert_eq!(p["seq_scans"][0]["actual_rows"], 2000.0);
        assert_eq!(p["seq_scans"][0]["rows_removed_by_filter"], 198_000.0);
        assert_eq!(p["seq_scans"][0]["loops"], 2.0);
    }
    let text = &pg15()[FORGED_TEXT]["plan"];
    // 10.211 ms × 2 loops, nothing below it.
    assert_eq!(text["slowest_node"]["self_time_ms"], 20.422);
}

#[test]
fn parallel_workers_time_is_counted_once() {
    let p = &pg15()[PARALLEL]["plan"];
    let gather = &p["root"]["plans"][0]["plans"][0];
    assert_eq!(gather["node_type"], "Gather Merge");
    assert_eq!(gather["details"]["Workers Launched"], 2);
    let agg = &gather["plans"][0]["plans"][0];
    assert_eq!(agg["node_type"], "Aggregate");
    assert_eq!(agg["strategy"], "Hashed");
    assert_eq!(agg["partial_mode"], "Partial");
    assert_eq!(agg["plans"][0]["parallel_aware"], true);
    assert_eq!(agg["plans"][0]["node_type"], "Seq Scan");
    // 13.694 ms (three processes side by side) less 3.291 ms of its scan.
    assert_eq!(
        p["slowest_node"],
        json!({"node_id": 5, "node_type": "Aggregate", "self_time_ms": 10.403, "share": 0.443})
    );
    assert_eq!(p["root"]["plans"][0]["partial_mode"], "Finalize");
    assert_eq!(p["root"]["plans"][0]["strategy"], "Sorted");
    // The worst estimate: the finalize step expected 100 groups, the limit took 3.
    assert_eq!(p["worst_misestimate"]["node_id"], 2);
    assert_eq!(p["worst_misestimate"]["factor"], 33.333);
    assert_eq!(p["worst_misestimate"]["direction"], "over");
}

#[test]
fn nested_untimed_and_unanalyzed_plans() {
    let all = pg15();
    assert_eq!(
        all[NESTED]["statement"],
        " select count(*) from big where grp = n "
    );
    let untimed = &all[JOIN_UNTIMED_TEXT]["plan"];
    assert_eq!(untimed["analyzed"], true);
    assert!(untimed.get("total_time_ms").is_none() && untimed.get("slowest_node").is_none());
    assert_eq!(untimed["worst_misestimate"]["actual_rows"], 112.0);
    assert_eq!(untimed["worst_misestimate"]["estimated_rows"], 111.0);
    let plain = &all[NOT_ANALYZED]["plan"];
    assert_eq!(plain["analyzed"], false);
    assert!(plain.get("worst_misestimate").is_none());
    assert!(plain["root"].get("actual_rows").is_none());
    let scans: Vec<(&Value, &Value)> = plain["seq_scans"]
        .as_array()
        .expect("scans")
        .iter()
        .map(|s| (&s["relation"], &s["estimated_rows"]))
        .collect();
    assert_eq!(
        scans,
        vec![
            (&json!("t"), &json!(1000.0)),
            (&json!("big"), &json!(933.0))
        ]
    );
}

#[test]
fn postgres_18_fractional_rows_and_never_executed_nodes() {
    let plans = plans_of(fixture("pg18.log"), Format::Stderr, Redact::None);
    let scan = &plans[FORGED_TEXT]["plan"]["root"]["plans"][0]["plans"][0];
    assert_eq!(scan["actual_rows"], 1000.0);
    let body = "Query Text: select 1\n\
        Nested Loop  (cost=0.28..2969.97 rows=1 width=8) (actual time=0.004..0.005 rows=0 loops=1)\n  \
        ->  Index Scan using t_pkey on public.t  (cost=0.28..8.29 rows=1 width=8) (actual time=0.004..0.004 rows=0 loops=1)\n  \
        ->  Gather  (cost=0.00..2961.67 rows=1 width=4) (never executed)\n        \
              Workers Planned: 2\n        \
              Workers Launched: 0\n        \
              ->  Parallel Seq Scan on public.big  (cost=0.00..2961.67 rows=1 width=4) (never executed)";
    let p = explain(body, false).plan;
    let root = p.root.as_ref().expect("root");
    assert_eq!(root.join_type.as_deref(), Some("Inner"));
    assert_eq!(root.plans[0].schema.as_deref(), Some("public"));
    let gather = &root.plans[1];
    assert_eq!(gather.actual_loops, Some(0.0));
    assert_eq!(gather.actual_total_time_ms, Some(0.0));
    assert_eq!(gather.plans[0].actual_rows, Some(0.0));
    // A node that never ran is no misestimate.
    assert_eq!(
        p.worst_misestimate.as_ref().map(|m| m.node.node_id),
        Some(1)
    );
}

#[test]
fn text_that_reads_two_ways_is_shipped_as_text() {
    // Two top nodes outside quotes.
    let two = "Query Text: select 1\n\
        Result  (cost=0.00..0.01 rows=1 width=4)\n\
        Result  (cost=0.00..0.01 rows=1 width=4)";
    let p = explain(two, false).plan;
    assert!(p.ambiguous && p.root.is_none());
    assert_eq!(p.text.as_deref(), Some(two));
    // With standard_conforming_strings = off, 'a\' does not end the string: the forged
    // line is inside it there and the real one is not. The readings disagree.
    let sneaky = "Query Text: select 'a\\'\n\
        Seq Scan on fake  (cost=0.00..1.00 rows=1 width=1)\n\
        ' as x\n\
        Result  (cost=0.00..0.01 rows=1 width=32)";
    let p = explain(sneaky, false).plan;
    assert!(p.ambiguous && p.root.is_none(), "{p:?}");
    // A backslash that changes nothing is no ambiguity.
    let fine = "Query Text: select 'C:\\temp'\nResult  (cost=0.00..0.01 rows=1 width=32)";
    let e = explain(fine, false);
    assert_eq!(e.plan.root.expect("root").node_type, "Result");
    assert_eq!(e.query_text.as_deref(), Some("select 'C:\\temp'"));
}

#[test]
fn a_plan_cut_short_is_kept_as_text_and_flagged() {
    let log = fixture("pg15.log");
    let text = std::str::from_utf8(log).expect("utf8");
    // The JSON join plan, cut in the middle by the reader.
    let at = text.find("\t{\n\t  \"Query Text\"").expect("json plan");
    let body: String = text[at..at + 900]
        .lines()
        .map(|l| l.strip_prefix('\t').unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let e = explain(&format!("{body}…"), true);
    assert!(e.plan.truncated && e.plan.root.is_none());
    assert_eq!(e.plan.format, PlanFormat::Json);
    assert!(e
        .plan
        .text
        .as_deref()
        .expect("text")
        .starts_with("{\n  \"Query Text\""));
    assert_eq!(
        e.query_text.as_deref(),
        Some("select count(*) from t a join t b on a.id = b.id where a.name like 'n1%';")
    );
    // Cut without the reader knowing: the JSON ends early.
    let e = explain(&body, false);
    assert!(e.plan.truncated && e.plan.root.is_none());
    // JSON that is whole but not a plan.
    let e = explain("{\"Query Text\": \"select 1\", \"Plan\": 5}", false);
    assert!(!e.plan.truncated && e.plan.root.is_none());
    assert_eq!(e.plan.problem.as_deref(), Some("the JSON has no \"Plan\""));
    // A text plan cut: statement kept, tree not guessed.
    let e = explain(
        "Query Text: select 1\nAggregate  (cost=38.80..38.81 rows=1 width=8)\n  ->  Hash Jo…",
        true,
    );
    assert!(e.plan.truncated && e.plan.root.is_none());
    assert_eq!(e.query_text.as_deref(), Some("select 1"));
    // YAML or XML: kept as text.
    let e = explain(
        "Query Text: \"select 1\"\nPlan: \n  Node Type: \"Result\"",
        false,
    );
    assert!(e.plan.root.is_none() && e.plan.text.is_some());
}

#[test]
fn node_and_depth_caps_count_what_they_leave_out() {
    let child = json!({"Node Type": "Seq Scan", "Relation Name": "p", "Plan Rows": 1});
    let wide = json!({"Query Text": "select", "Plan": {
        "Node Type": "Append", "Plans": vec![child; MAX_NODES + 500]}});
    let p = explain(&wide.to_string(), false).plan;
    assert_eq!(p.nodes, MAX_NODES);
    assert_eq!(p.nodes_omitted, 501);
    assert_eq!(p.seq_scan_count, MAX_NODES - 1);
    assert_eq!(p.seq_scans.len(), MAX_SEQ_SCANS);
    // A text plan deeper than MAX_DEPTH.
    let mut body = String::from("Query Text: x\nResult  (cost=0.00..0.01 rows=1 width=4)\n");
    for d in 0..MAX_DEPTH + 10 {
        body.push_str(&" ".repeat(2 + 6 * d));
        body.push_str("->  Result  (cost=0.00..0.01 rows=1 width=4)\n");
        body.push_str(&" ".repeat(8 + 6 * d));
        body.push_str("Output: 1\n");
    }
    let p = explain(&body, false).plan;
    assert_eq!(p.nodes, MAX_DEPTH + 1);
    assert_eq!(p.nodes_omitted, 10);
    let mut n = p.root.as_ref().expect("root");
    let mut depth = 0;
    while let Some(c) = n.plans.first() {
        assert_eq!(c.details.get("Output"), Some(&json!(1)));
        n = c;
        depth += 1;
    }
    assert_eq!(depth, MAX_DEPTH);
}

#[test]
fn redaction_reaches_parameters_conditions_and_unread_text() {
    let body = "Query Text: select * from t where id = $1 and name <> $2\n\
        Query Parameters: $1 = '1', $2 = 'hunter2'\n\
        Index Scan using t_pkey on t  (cost=0.28..8.29 rows=1 width=8) (actual time=0.009..0.009 rows=1 loops=1)\n  \
          Index Cond: (id = 1)\n  \
          Filter: (name <> 'hunter2'::text)";
    let mut e = explain(body, false);
    assert_eq!(
        e.query_text.as_deref(),
        Some("select * from t where id = $1 and name <> $2")
    );
    e.plan.redact(Redact::None);
    assert_eq!(
        e.plan.query_parameters.as_deref(),
        Some("$1 = '1', $2 = 'hunter2'")
    );
    for mode in [Redact::Parameters, Redact::Literals] {
        let mut p = explain(body, false).plan;
        p.redact(mode);
        let s = serde_json::to_string(&p).expect("json");
        assert!(!s.contains("hunter2"), "{mode:?}: {s}");
        assert_eq!(p.query_parameters.as_deref(), Some("$1 = ?, $2 = ?"));
        let root = p.root.expect("root");
        assert_eq!(root.details["Filter"], "(name <> ?::text)");
        assert_eq!(root.details["Index Cond"], "(id = ?)");
        assert_eq!(root.plan_rows, Some(1.0), "figures stay");
    }
    let mut cut = explain(body, true).plan;
    cut.redact(Redact::Literals);
    assert!(!cut.text.expect("text").contains("hunter2"));
    // Through the shaper: the statement too.
    let log = format!(
        "2026-12-01 20:45:14.007 UTC [1] u@d LOG:  duration: 0.011 ms  plan:\n\t{}\n",
        body.replace('\n', "\n\t")
    );
    let d = &plans_of(log.as_bytes(), Format::Stderr, Redact::Literals)[0];
    assert!(!d.to_string().contains("hunter2"), "{d}");
    assert_eq!(
        d["statement"],
        "select * from t where id = $1 and name <> $2"
    );
    assert!(d["query_fingerprint"].is_string());
}

#[test]
fn a_plan_larger_than_other_messages_arrives_whole_up_to_its_cap() {
    let node = "\t  ->  Seq Scan on t  (cost=0.00..16.00 rows=1000 width=4) (actual time=0.015..0.089 rows=1000 loops=1)\n";
    let head = "2026-12-01 20:45:14.007 UTC [1] u@d LOG:  duration: 1.0 ms  plan:\n\tQuery Text: select\n\tAppend  (cost=0.00..1.00 rows=1 width=4) (actual time=0.015..0.089 rows=1000 loops=1)\n";
    let big = |n: usize| format!("{head}{}", node.repeat(n));
    let whole = big(200_000 / node.len());
    assert!(whole.len() > crate::logs::record::MAX_FIELD_BYTES * 2);
    let d = &plans_of(whole.as_bytes(), Format::Stderr, Redact::None)[0];
    assert_eq!(d["plan"]["nodes"], 200_000 / node.len() + 1);
    assert!(d.get("truncated").is_none());
    let cut = big(MAX_PLAN_BYTES / node.len() + 1000);
    let d = &plans_of(cut.as_bytes(), Format::Stderr, Redact::None)[0];
    assert_eq!(d["truncated"], true, "{}", &d.to_string()[..300]);
    assert_eq!(d["plan"]["truncated"], true);
    assert_eq!(d["statement"], "select");
    let t = d["plan"]["text"].as_str().expect("text");
    assert!(t.len() <= MAX_PLAN_BYTES + 4 && t.len() > MAX_PLAN_BYTES - 1000);
    // Other messages keep the ordinary cap.
    let other = format!(
        "2026-12-01 20:45:14.007 UTC [1] u@d LOG:  statement: select\n{}",
        "\tx\n".repeat(40_000)
    );
    let mut p = LogParser::new(Format::Stderr, PREFIX);
    let mut out = Vec::new();
    p.parse(other.as_bytes(), 0, Flush::Force, &mut out, 10);
    assert!(out[0].truncated);
    assert!(out[0].message.len() <= crate::logs::record::MAX_FIELD_BYTES + 4);
}
