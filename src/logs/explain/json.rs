//! `auto_explain.log_format = json`: `{"Query Text": …, "Plan": {…}, …}`.

use serde_json::{Map, Value};

use super::{Budget, Buffers, Explained, Node, Plan, PlanFormat, Wal};

/// Reads a JSON plan (`body` starts at `{`).
pub fn parse(body: &str, cut: bool) -> Explained {
    let unread = |problem: &str, truncated: bool| {
        let mut plan = Plan::unread(PlanFormat::Json, body, problem);
        plan.truncated = truncated;
        Explained {
            plan,
            query_text: query_text_of_cut(body),
        }
    };
    let top = match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(top)) => top,
        Ok(_) => return unread("the JSON plan is not an object", cut),
        Err(e) if cut || e.classify() == serde_json::error::Category::Eof => {
            return unread("the plan was cut short", true)
        }
        Err(e) => return unread(&format!("the JSON plan does not parse: {e}"), false),
    };
    let mut top = top;
    let query_text = take_str(&mut top, "Query Text");
    let mut plan = Plan::new(PlanFormat::Json);
    plan.query_parameters = take_str(&mut top, "Query Parameters");
    plan.query_identifier = top.remove("Query Identifier").and_then(|v| v.as_i64());
    plan.settings = match top.remove("Settings") {
        Some(Value::Object(s)) => Some(s),
        _ => None,
    };
    let Some(Value::Object(p)) = top.remove("Plan") else {
        let mut plan = Plan::unread(PlanFormat::Json, body, "the JSON has no \"Plan\"");
        plan.truncated = cut;
        return Explained { plan, query_text };
    };
    let mut budget = Budget::default();
    budget.take(0);
    plan.root = Some(node(p, 0, &mut budget));
    plan.nodes_omitted = budget.omitted;
    plan.extra = top;
    Explained { plan, query_text }
}

/// `Query Text` of a JSON plan that was cut: it is the first key, so it is whole unless
/// the cut fell inside it.
fn query_text_of_cut(body: &str) -> Option<String> {
    const KEY: &str = "\"Query Text\": ";
    let at = body.find(KEY)? + KEY.len();
    serde_json::Deserializer::from_str(&body[at..])
        .into_iter::<String>()
        .next()?
        .ok()
}

/// Nodes below a JSON node.
fn descendants(m: &Map<String, Value>) -> usize {
    let mut count = 0;
    let mut stack = vec![m];
    while let Some(n) = stack.pop() {
        if let Some(Value::Array(kids)) = n.get("Plans") {
            for k in kids {
                if let Value::Object(k) = k {
                    count += 1;
                    stack.push(k);
                }
            }
        }
    }
    count
}

fn take_str(m: &mut Map<String, Value>, key: &str) -> Option<String> {
    match m.remove(key)? {
        Value::String(s) => Some(s),
        other => {
            m.insert(key.to_string(), other);
            None
        }
    }
}

fn take_f64(m: &mut Map<String, Value>, key: &str) -> Option<f64> {
    let v = m.get(key)?.as_f64()?;
    m.remove(key);
    Some(v)
}

const BUFFER_KEYS: [&str; 10] = [
    "Shared Hit Blocks",
    "Shared Read Blocks",
    "Shared Dirtied Blocks",
    "Shared Written Blocks",
    "Local Hit Blocks",
    "Local Read Blocks",
    "Local Dirtied Blocks",
    "Local Written Blocks",
    "Temp Read Blocks",
    "Temp Written Blocks",
];

fn buffers(m: &mut Map<String, Value>) -> Option<Buffers> {
    if !BUFFER_KEYS.iter().any(|k| m.contains_key(*k)) {
        return None;
    }
    let mut n = [0u64; 10];
    for (slot, key) in n.iter_mut().zip(BUFFER_KEYS) {
        *slot = take_f64(m, key).map_or(0, |v| v as u64);
    }
    Some(Buffers {
        shared_hit: n[0],
        shared_read: n[1],
        shared_dirtied: n[2],
        shared_written: n[3],
        local_hit: n[4],
        local_read: n[5],
        local_dirtied: n[6],
        local_written: n[7],
        temp_read: n[8],
        temp_written: n[9],
    })
}

fn wal(m: &mut Map<String, Value>) -> Option<Wal> {
    if !m.contains_key("WAL Records") {
        return None;
    }
    let mut get = |k| take_f64(m, k).map_or(0, |v| v as u64);
    Some(Wal {
        records: get("WAL Records"),
        fpi: get("WAL FPI"),
        bytes: get("WAL Bytes"),
    })
}

/// One node; its children kept while the budget allows.
fn node(mut m: Map<String, Value>, depth: usize, budget: &mut Budget) -> Node {
    let mut s = |k| take_str(&mut m, k);
    let node_type = s("Node Type").unwrap_or_default();
    let join_type = s("Join Type");
    let strategy = s("Strategy");
    // JSON says `Simple` for every aggregate that is not split; the text says nothing.
    let partial_mode = s("Partial Mode").filter(|m| m != "Simple");
    let operation = s("Operation");
    // What the text calls the scan's target, whatever kind of object it is.
    let relation = s("Relation Name")
        .or_else(|| s("Function Name"))
        .or_else(|| s("CTE Name"))
        .or_else(|| s("Tuplestore Name"))
        .or_else(|| s("Table Function Name"));
    let schema = s("Schema");
    let alias = s("Alias");
    let index = s("Index Name");
    // The text names a backward scan only.
    let scan_direction = s("Scan Direction").filter(|d| d == "Backward");
    let parent_relationship = s("Parent Relationship");
    let subplan_name = s("Subplan Name");
    let parallel_aware = m.remove("Parallel Aware").and_then(|v| v.as_bool()) == Some(true);
    // Always present in JSON, in the text only when true.
    for flag in ["Async Capable", "Disabled"] {
        if m.get(flag).and_then(Value::as_bool) == Some(false) {
            m.remove(flag);
        }
    }
    let children = match m.remove("Plans") {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    let mut n = Node {
        node_type,
        join_type,
        strategy,
        partial_mode,
        operation,
        relation,
        schema,
        alias,
        index,
        scan_direction,
        parent_relationship,
        subplan_name,
        parallel_aware,
        startup_cost: take_f64(&mut m, "Startup Cost"),
        total_cost: take_f64(&mut m, "Total Cost"),
        plan_rows: take_f64(&mut m, "Plan Rows"),
        plan_width: take_f64(&mut m, "Plan Width"),
        actual_startup_time_ms: take_f64(&mut m, "Actual Startup Time"),
        actual_total_time_ms: take_f64(&mut m, "Actual Total Time"),
        actual_rows: take_f64(&mut m, "Actual Rows"),
        actual_loops: take_f64(&mut m, "Actual Loops"),
        buffers: buffers(&mut m),
        wal: wal(&mut m),
        ..Node::default()
    };
    for c in children {
        if let Value::Object(c) = c {
            if budget.take(depth + 1) {
                n.plans.push(node(c, depth + 1, budget));
            } else {
                budget.omitted += descendants(&c);
            }
        }
    }
    n.details = m;
    n
}
