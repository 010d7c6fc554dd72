//! A plan's shape: what the planner chose — node types, join and aggregate strategies,
//! the relations and indexes, and how the nodes nest (the join order) — without what
//! changes from one run to the next (costs, row estimates, widths, actual times, aliases,
//! schemas, filters with their parameters). Two plans with the same shape are the same
//! plan to a DBA; a different shape is a plan change.

use super::Node;

/// A plan's shape: one line per node, depth first, and their hash.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shape {
    /// FNV-1a of the lines, 16 hex digits.
    pub hash: String,
    /// `Hash Join Inner`, `  Seq Scan on orders`, `  Index Scan on users using users_pkey`:
    /// two spaces of indent per level.
    pub nodes: Vec<String>,
}

/// The shape of the plan under `root`.
pub fn shape(root: &Node) -> Shape {
    let mut nodes = Vec::new();
    let mut stack = vec![(root, 0usize)];
    while let Some((n, depth)) = stack.pop() {
        nodes.push(format!("{}{}", "  ".repeat(depth), describe(n)));
        stack.extend(n.plans.iter().rev().map(|c| (c, depth + 1)));
    }
    Shape {
        hash: hash(&nodes),
        nodes,
    }
}

/// One node, as the shape has it.
fn describe(n: &Node) -> String {
    let mut s = String::new();
    if n.parallel_aware {
        s.push_str("Parallel ");
    }
    s.push_str(&n.node_type);
    for part in [&n.join_type, &n.strategy, &n.partial_mode, &n.operation]
        .into_iter()
        .flatten()
    {
        s.push(' ');
        s.push_str(part);
    }
    if let Some(r) = &n.relation {
        s.push_str(" on ");
        s.push_str(r);
    }
    if let Some(i) = &n.index {
        s.push_str(" using ");
        s.push_str(i);
    }
    if let Some(d) = &n.scan_direction {
        if d != "Forward" {
            s.push(' ');
            s.push_str(d);
        }
    }
    if let Some(p) = &n.subplan_name {
        s.push_str(" (");
        s.push_str(p);
        s.push(')');
    }
    s
}

fn hash(lines: &[String]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for line in lines {
        for b in line.bytes().chain(std::iter::once(b'\n')) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The nodes of `old` that `new` no longer has and those it has that `old` had not
/// (each node without its indent, counted: two scans of one table are two).
pub fn differences(old: &[String], new: &[String]) -> (Vec<String>, Vec<String>) {
    let trimmed =
        |v: &[String]| -> Vec<String> { v.iter().map(|l| l.trim_start().to_string()).collect() };
    let (mut old, mut new) = (trimmed(old), trimmed(new));
    let mut removed = Vec::new();
    for line in old.drain(..) {
        match new.iter().position(|l| *l == line) {
            Some(i) => {
                new.remove(i);
            }
            None => removed.push(line),
        }
    }
    (removed, new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(kind: &str, relation: Option<&str>, index: Option<&str>, plans: Vec<Node>) -> Node {
        Node {
            node_type: kind.into(),
            relation: relation.map(Into::into),
            index: index.map(Into::into),
            plans,
            ..Node::default()
        }
    }

    #[test]
    fn costs_estimates_and_aliases_are_not_part_of_the_shape() {
        let a = node("Index Scan", Some("t"), Some("t_v"), vec![]);
        let mut b = a.clone();
        b.total_cost = Some(99.0);
        b.plan_rows = Some(1e6);
        b.alias = Some("x".into());
        b.schema = Some("public".into());
        b.actual_total_time_ms = Some(3.0);
        assert_eq!(shape(&a), shape(&b));
        let c = node("Seq Scan", Some("t"), None, vec![]);
        assert_ne!(shape(&a).hash, shape(&c).hash);
        assert_eq!(shape(&a).hash.len(), 16);
    }

    #[test]
    fn join_order_and_nesting_are() {
        let t = node("Seq Scan", Some("t"), None, vec![]);
        let u = node("Seq Scan", Some("u"), None, vec![]);
        let mut tu = node("Hash Join", None, None, vec![t.clone(), u.clone()]);
        tu.join_type = Some("Inner".into());
        let mut ut = tu.clone();
        ut.plans = vec![u, t];
        let (a, b) = (shape(&tu), shape(&ut));
        assert_ne!(a.hash, b.hash);
        assert_eq!(
            a.nodes,
            vec!["Hash Join Inner", "  Seq Scan on t", "  Seq Scan on u"]
        );
    }

    #[test]
    fn differences_name_the_nodes_that_came_and_went() {
        let old = vec![
            "Aggregate".to_string(),
            "  Index Scan on t using t_v".to_string(),
        ];
        let new = vec!["Aggregate".to_string(), "  Seq Scan on t".to_string()];
        assert_eq!(
            differences(&old, &new),
            (
                vec!["Index Scan on t using t_v".to_string()],
                vec!["Seq Scan on t".to_string()]
            )
        );
        assert_eq!(differences(&old, &old), (vec![], vec![]));
    }
}
