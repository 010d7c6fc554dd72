//! `auto_explain.log_format = text`:
//!
//! ```text
//! Query Text: select count(*) from t a join t b on a.id = b.id
//! Aggregate  (cost=38.80..38.81 rows=1 width=8) (actual time=0.440..0.442 rows=1 loops=1)
//!   Buffers: shared hit=12
//!   ->  Hash Join  (cost=19.89..38.52 rows=111 width=0) (actual time=… rows=112 loops=1)
//!         Hash Cond: (b.id = a.id)
//! ```
//!
//! The top node is the only node line at column 0 outside quotes and comments; children
//! are `->` lines, nested by their column; the lines between belong to the node above.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

use super::{number_or_text, Budget, Buffers, Explained, Node, Plan, PlanFormat, Wal};
use crate::sql::lex::quoted_ident_end;
use crate::sql::{self, Lexer};

/// `<description>  (cost=a..b rows=n width=w)` and the actuals after it.
static NODE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?P<desc>\S.*?)  \(cost=(?P<sc>[0-9.]+)\.\.(?P<tc>[0-9.]+) rows=(?P<rows>[0-9]+) width=(?P<w>[0-9]+)\)(?: \((?:actual (?:time=(?P<as>[0-9.]+)\.\.(?P<at>[0-9.]+) )?rows=(?P<ar>[0-9.]+) loops=(?P<al>[0-9]+)|(?P<never>never executed))\))?$",
    )
    .expect("node regex")
});

/// True when the first line of `body` is a plan node (a plan without `Query Text`).
pub fn looks_like_text(body: &str) -> bool {
    NODE.is_match(body.lines().next().unwrap_or(""))
}

/// Whether each line of `body` starts outside string literals, quoted identifiers and
/// comments, as PostgreSQL's scanner reads them. `backslash`: read `'…'` with backslash
/// escapes (`standard_conforming_strings = off`).
fn starts_in_code(body: &str, backslash: bool) -> Vec<bool> {
    let b = body.as_bytes();
    let lexer = if backslash {
        Lexer::new(body).backslash_quotes()
    } else {
        Lexer::new(body)
    };
    let mut out = vec![true];
    for t in lexer {
        // A newline between tokens starts a line in code; one inside a string, a quoted
        // name or a comment starts a line inside it.
        let between = t.kind == sql::Kind::Space;
        out.extend(memchr::memchr_iter(b'\n', &b[t.start..t.end]).map(|_| between));
    }
    out
}

/// The lines where the plan's top node may start: column 0, outside quotes, a node line.
fn top_candidates(lines: &[&str], in_code: &[bool], from: usize) -> Vec<usize> {
    (from..lines.len())
        .filter(|&i| in_code.get(i) == Some(&true) && NODE.is_match(lines[i]))
        .collect()
}

/// Reads a text plan.
pub fn parse(body: &str, cut: bool) -> Explained {
    let lines: Vec<&str> = body.split('\n').collect();
    let in_code = starts_in_code(body, false);
    let has_query = lines[0].starts_with("Query Text: ");
    let from = usize::from(has_query);
    let tops = top_candidates(&lines, &in_code, from);
    // Where the statement ends: the first line, outside quotes, that is the plan or its
    // parameters.
    let query_end = (from..lines.len())
        .find(|&i| {
            in_code.get(i) == Some(&true)
                && (lines[i].starts_with("Query Parameters: ") || tops.contains(&i))
        })
        .unwrap_or(lines.len());
    let query_text = has_query.then(|| {
        let mut q = lines[0]["Query Text: ".len()..].to_string();
        for l in &lines[1..query_end] {
            q.push('\n');
            q.push_str(l);
        }
        q
    });
    let unread = |problem: &str| {
        let mut plan = Plan::unread(PlanFormat::Text, body, problem);
        plan.truncated = cut;
        Explained {
            plan,
            query_text: query_text.clone(),
        }
    };
    if cut {
        return unread("the plan was cut short");
    }
    // A reading with backslash escapes (standard_conforming_strings = off) must find the
    // same top line, or the text is ambiguous.
    let other_reading = body
        .contains('\\')
        .then(|| top_candidates(&lines, &starts_in_code(body, true), from));
    let top = match tops.as_slice() {
        [] => return unread("no plan node found"),
        [one] if other_reading.as_ref().is_none_or(|o| o == &tops) => *one,
        _ => {
            let mut ex = unread("more than one line reads as the top plan node");
            ex.plan.ambiguous = true;
            return ex;
        }
    };
    let mut plan = Plan::new(PlanFormat::Text);
    if query_end < top && lines[query_end].starts_with("Query Parameters: ") {
        plan.query_parameters =
            Some(lines[query_end..top].join("\n")["Query Parameters: ".len()..].to_string());
    }
    let mut tree = Tree::default();
    tree.read(&lines[top..], &in_code[top..], &mut plan);
    plan.nodes_omitted = tree.budget.omitted;
    plan.root = tree.assemble();
    Explained { plan, query_text }
}

/// Nodes as read, children by index, before they are assembled into a tree.
#[derive(Default)]
struct Tree {
    nodes: Vec<Node>,
    children: Vec<Vec<usize>>,
    budget: Budget,
}

/// Where the lines after a node go.
enum Section {
    /// To the node on top of the stack.
    Node,
    /// To the trailer named (`JIT`).
    Trailer(String),
}

impl Tree {
    fn read(&mut self, lines: &[&str], in_code: &[bool], plan: &mut Plan) {
        // (node index, column of its `->`; the top node's is -1)
        let mut stack: Vec<(usize, isize)> = Vec::new();
        // A `SubPlan 1` / `InitPlan 2` / `CTE x` line names the next child at its column.
        let mut pending: Option<(String, &'static str, usize)> = None;
        // Below a node left out: the column its subtree is indented past.
        let mut skipping: Option<usize> = None;
        let mut last_detail: Option<(usize, String)> = None;
        let mut section = Section::Node;
        let mut timed = false;
        for (i, line) in lines.iter().enumerate() {
            if i > 0 && in_code.get(i) != Some(&true) {
                // A newline inside a quoted value: the line continues the last detail.
                if let Some((n, key)) = &last_detail {
                    if let Some(Value::String(s)) = self.nodes[*n].details.get_mut(key) {
                        s.push('\n');
                        s.push_str(line);
                    }
                }
                continue;
            }
            let content = line.trim_start_matches(' ');
            let indent = line.len() - content.len();
            if content.is_empty() {
                continue;
            }
            if let Some(col) = skipping {
                if indent > col && i > 0 {
                    if content.starts_with("->  ") {
                        self.budget.omitted += 1;
                    }
                    continue;
                }
                skipping = None;
            }
            if i == 0 || content.starts_with("->  ") {
                let (col, desc_line) = if i == 0 {
                    (-1, content)
                } else {
                    (indent as isize, &content[4..])
                };
                let Some(mut node) = node_line(desc_line) else {
                    continue;
                };
                section = Section::Node;
                while stack.last().is_some_and(|(_, c)| *c >= col) {
                    stack.pop();
                }
                if !self.budget.take(stack.len()) {
                    skipping = Some(indent);
                    continue;
                }
                if let Some((name, rel, at)) = pending.take() {
                    if at + 2 == indent {
                        node.subplan_name = Some(name);
                        node.parent_relationship = Some(rel.to_string());
                    }
                }
                timed |= node.actual_total_time_ms.is_some();
                let idx = self.nodes.len();
                self.nodes.push(node);
                self.children.push(Vec::new());
                if let Some((parent, _)) = stack.last() {
                    self.children[*parent].push(idx);
                }
                stack.push((idx, col));
                last_detail = None;
                continue;
            }
            if indent == 0 {
                last_detail = None;
                section = trailer(content, plan);
                continue;
            }
            if let Section::Trailer(name) = &section {
                let (k, v) = content.split_once(": ").unwrap_or((content, ""));
                if let Some(Value::Object(o)) = plan.extra.get_mut(name) {
                    o.insert(k.to_string(), number_or_text(v));
                }
                continue;
            }
            let Some(&(n, _)) = stack.last() else {
                continue;
            };
            if let Some(rel) = subplan_header(content) {
                pending = Some((content.to_string(), rel, indent));
                last_detail = None;
                continue;
            }
            last_detail = self.detail(n, content);
        }
        // A node never executed has no times even where the others have.
        if timed {
            for n in &mut self.nodes {
                if n.actual_loops == Some(0.0) {
                    n.actual_startup_time_ms.get_or_insert(0.0);
                    n.actual_total_time_ms.get_or_insert(0.0);
                }
            }
        }
        // The text leaves out zero buffer and WAL lines that JSON always has.
        if self.nodes.iter().any(|n| n.buffers.is_some()) {
            for n in &mut self.nodes {
                n.buffers.get_or_insert_with(Buffers::default);
            }
        }
        if self.nodes.iter().any(|n| n.wal.is_some()) {
            for n in &mut self.nodes {
                n.wal.get_or_insert_with(Wal::default);
            }
        }
    }

    /// One `Key: value` line of node `n`; returns where a continuation would go.
    fn detail(&mut self, n: usize, content: &str) -> Option<(usize, String)> {
        let node = &mut self.nodes[n];
        let Some((key, value)) = content.split_once(": ") else {
            // `JIT:`-like headers inside a node, or a bare word: kept as a flag.
            let key = content.trim_end_matches(':').to_string();
            node.details.insert(key, Value::Bool(true));
            return None;
        };
        match key {
            "Buffers" => {
                node.buffers = Some(buffers(value, node.buffers.unwrap_or_default()));
                None
            }
            "WAL" => {
                node.wal = Some(wal(value));
                None
            }
            _ => {
                let v = number_or_text(value.trim_start());
                match node.details.get_mut(key) {
                    Some(Value::String(s)) => {
                        s.push('\n');
                        s.push_str(value);
                    }
                    Some(_) => {}
                    None => {
                        node.details.insert(key.to_string(), v);
                    }
                }
                Some((n, key.to_string()))
            }
        }
    }

    /// The tree from the flat list (node 0 is the top).
    fn assemble(mut self) -> Option<Node> {
        if self.nodes.is_empty() {
            return None;
        }
        // Children always come after their parent: build from the end.
        let mut built: Vec<Option<Node>> = self.nodes.drain(..).map(Some).collect();
        for idx in (0..built.len()).rev() {
            let kids: Vec<Node> = self.children[idx]
                .iter()
                .filter_map(|&c| built[c].take())
                .collect();
            if let Some(n) = built[idx].as_mut() {
                n.plans = kids;
            }
        }
        built[0].take()
    }
}

/// `SubPlan 1`, `InitPlan 1 (returns $0)`, `InitPlan 2`, `CTE x`: the relationship it
/// gives the child below.
fn subplan_header(content: &str) -> Option<&'static str> {
    let numbered = |p: &str| {
        content
            .strip_prefix(p)
            .and_then(|r| r.split(' ').next())
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
    };
    if numbered("SubPlan ") {
        Some("SubPlan")
    } else if numbered("InitPlan ") || content.starts_with("CTE ") {
        Some("InitPlan")
    } else {
        None
    }
}

/// A line at column 0 after the tree: `Settings: …`, `Query Identifier: …`, `JIT:`,
/// `Trigger …: time=… calls=…`.
fn trailer(content: &str, plan: &mut Plan) -> Section {
    let (key, value) = content.split_once(": ").unwrap_or((content, ""));
    match key {
        "Settings" => {
            plan.settings = Some(settings(value));
            Section::Node
        }
        "Query Identifier" => {
            plan.query_identifier = value.parse().ok();
            Section::Node
        }
        _ if content.ends_with(':') && value.is_empty() => {
            let name = content.trim_end_matches(':').to_string();
            plan.extra.insert(name.clone(), Value::Object(Map::new()));
            Section::Trailer(name)
        }
        _ if key.starts_with("Trigger ") => {
            let list = plan
                .extra
                .entry("Triggers")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(a) = list {
                a.push(Value::String(content.to_string()));
            }
            Section::Node
        }
        _ => {
            plan.extra.insert(key.to_string(), number_or_text(value));
            Section::Node
        }
    }
}

/// `a = '1', b = 'x'` (values are not escaped by the server: best effort).
fn settings(value: &str) -> Map<String, Value> {
    let mut m = Map::new();
    for part in value.split("', ") {
        if let Some((k, v)) = part.split_once(" = '") {
            m.insert(
                k.to_string(),
                Value::String(v.trim_end_matches('\'').into()),
            );
        }
    }
    m
}

/// `shared hit=12 read=3 dirtied=1 written=2, local hit=1, temp read=5 written=5`.
fn buffers(value: &str, mut b: Buffers) -> Buffers {
    for group in value.split(", ") {
        let mut words = group.split(' ');
        let kind = words.next().unwrap_or("");
        for w in words {
            let Some((k, n)) = w.split_once('=') else {
                continue;
            };
            let n: u64 = n.parse().unwrap_or(0);
            let slot = match (kind, k) {
                ("shared", "hit") => &mut b.shared_hit,
                ("shared", "read") => &mut b.shared_read,
                ("shared", "dirtied") => &mut b.shared_dirtied,
                ("shared", "written") => &mut b.shared_written,
                ("local", "hit") => &mut b.local_hit,
                ("local", "read") => &mut b.local_read,
                ("local", "dirtied") => &mut b.local_dirtied,
                ("local", "written") => &mut b.local_written,
                ("temp", "read") => &mut b.temp_read,
                ("temp", "written") => &mut b.temp_written,
                _ => continue,
            };
            *slot = n;
        }
    }
    b
}

/// `records=2 fpi=0 bytes=150`.
fn wal(value: &str) -> Wal {
    let mut w = Wal::default();
    for kv in value.split(' ') {
        if let Some((k, n)) = kv.split_once('=') {
            let n = n.parse().unwrap_or(0);
            match k {
                "records" => w.records = n,
                "fpi" => w.fpi = n,
                "bytes" => w.bytes = n,
                _ => {}
            }
        }
    }
    w
}

/// A node line (without its `->  `) as a node with its estimates and actuals.
fn node_line(line: &str) -> Option<Node> {
    let c = NODE.captures(line)?;
    let f = |k: &str| c.name(k).and_then(|m| m.as_str().parse::<f64>().ok());
    let mut n = describe(c.name("desc")?.as_str());
    n.startup_cost = f("sc");
    n.total_cost = f("tc");
    n.plan_rows = f("rows");
    n.plan_width = f("w");
    if c.name("never").is_some() {
        n.actual_rows = Some(0.0);
        n.actual_loops = Some(0.0);
    } else {
        n.actual_startup_time_ms = f("as");
        n.actual_total_time_ms = f("at");
        n.actual_rows = f("ar");
        n.actual_loops = f("al");
    }
    Some(n)
}

/// Words of a description, quoted identifiers kept whole.
fn words(s: &str) -> Vec<&str> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b' ' {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i] != b' ' {
            if b[i] == b'"' {
                i = quoted_ident_end(b, i);
            } else {
                i += 1;
            }
        }
        out.push(&s[start..i.min(b.len())]);
    }
    out
}

/// `"a ""b"""` → `a "b"`; unquoted as is.
fn unquote(s: &str) -> String {
    match s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => s.to_string(),
    }
}

/// `schema.rel` → (schema, rel), the dot outside quotes.
fn qualified(s: &str) -> (Option<String>, String) {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => i = quoted_ident_end(b, i),
            b'.' => return (Some(unquote(&s[..i])), unquote(&s[i + 1..])),
            _ => i += 1,
        }
    }
    (None, unquote(s))
}

/// The text's node description in JSON's terms: `Parallel Index Scan Backward using i on
/// public.t x` → node type `Index Scan`, parallel aware, backward, index, schema,
/// relation, alias.
fn describe(desc: &str) -> Node {
    let mut n = Node::default();
    let mut d = desc;
    if let Some(r) = d.strip_prefix("Parallel ") {
        n.parallel_aware = true;
        d = r;
    }
    if let Some(r) = d.strip_prefix("Async ") {
        n.details.insert("Async Capable".into(), Value::Bool(true));
        d = r;
    }
    for mode in ["Partial", "Finalize"] {
        if let Some(r) = d.strip_prefix(mode).and_then(|r| r.strip_prefix(' ')) {
            n.partial_mode = Some(mode.into());
            d = r;
        }
    }
    let w = words(d);
    let on = w.iter().position(|x| *x == "on");
    let using = w.iter().position(|x| *x == "using");
    let head_end = using.or(on).unwrap_or(w.len());
    let mut head: Vec<&str> = w[..head_end].to_vec();
    if head.last() == Some(&"Backward") && head.len() > 1 {
        head.pop();
        n.scan_direction = Some("Backward".into());
    }
    if let Some(u) = using {
        n.index = w.get(u + 1).map(|s| unquote(s));
    }
    // `Custom Scan (Provider)`
    if head.first() == Some(&"Custom") && head.len() > 2 {
        let provider = head[2..].join(" ");
        n.details.insert(
            "Custom Plan Provider".into(),
            provider.trim_matches(|c| c == '(' || c == ')').into(),
        );
        head.truncate(2);
    }
    let head = head.join(" ");
    if let Some(o) = on {
        let target = w.get(o + 1).copied();
        let alias = w.get(o + 2).map(|s| unquote(s));
        match (head.as_str(), target) {
            ("Bitmap Index Scan", Some(t)) => n.index = Some(unquote(t)),
            ("Subquery Scan" | "Values Scan", Some(t)) => n.alias = Some(unquote(t)),
            (_, Some(t)) => {
                let (schema, rel) = qualified(t);
                n.alias = alias.or_else(|| Some(rel.clone()));
                n.schema = schema;
                n.relation = Some(rel);
            }
            _ => {}
        }
    }
    let (node_type, join_type, strategy, operation) = kind(&head);
    n.node_type = node_type;
    n.join_type = join_type;
    n.strategy = strategy;
    if let Some(op) = operation {
        n.operation = Some(op);
    }
    if let Some(cmd) = head
        .strip_prefix("HashSetOp ")
        .or_else(|| head.strip_prefix("SetOp "))
    {
        n.details.insert("Command".into(), cmd.into());
    }
    n
}

type Kind = (String, Option<String>, Option<String>, Option<String>);

/// Node type, join type, strategy, operation of a description's head words.
fn kind(head: &str) -> Kind {
    let s = |x: &str| Some(x.to_string());
    match head {
        "Aggregate" => ("Aggregate".into(), None, s("Plain"), None),
        "GroupAggregate" => ("Aggregate".into(), None, s("Sorted"), None),
        "HashAggregate" => ("Aggregate".into(), None, s("Hashed"), None),
        "MixedAggregate" => ("Aggregate".into(), None, s("Mixed"), None),
        "Insert" | "Update" | "Delete" | "Merge" => ("ModifyTable".into(), None, None, s(head)),
        "Nested Loop" => ("Nested Loop".into(), s("Inner"), None, None),
        _ if head.starts_with("HashSetOp ") => ("SetOp".into(), None, s("Hashed"), None),
        _ if head.starts_with("SetOp ") => ("SetOp".into(), None, s("Sorted"), None),
        _ => {
            if let Some(j) = head.strip_suffix(" Join") {
                for base in ["Nested Loop", "Hash", "Merge"] {
                    if let Some(t) = j.strip_prefix(base) {
                        let t = t.trim();
                        let node = if base == "Nested Loop" {
                            base.to_string()
                        } else {
                            format!("{base} Join")
                        };
                        return (node, s(if t.is_empty() { "Inner" } else { t }), None, None);
                    }
                }
            }
            (head.to_string(), None, None, None)
        }
    }
}
