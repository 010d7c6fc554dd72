//! The figures derived from a plan's tree: total time, the node with the most time of its
//! own, the worst row misestimate, the sequential scans.

use super::{Misestimate, Node, NodeRef, Plan, SeqScan, Slowest, MAX_SEQ_SCANS};

/// Fills the figures of a plan whose `root` is read.
pub fn derive(plan: &mut Plan) {
    let Some(root) = plan.root.as_ref() else {
        return;
    };
    let all = root.walk();
    plan.nodes = all.len();
    plan.analyzed = all.iter().any(|n| n.actual_loops.is_some());
    plan.total_time_ms = inclusive(root, 1.0);
    plan.slowest_node = slowest(root, plan.total_time_ms);
    plan.worst_misestimate =
        all.iter()
            .filter_map(|n| misestimate(n))
            .fold(None, |worst: Option<Misestimate>, m| match worst {
                Some(w) if w.factor >= m.factor => Some(w),
                _ => Some(m),
            });
    let mut scans: Vec<SeqScan> = all
        .iter()
        .filter(|n| n.node_type == "Seq Scan")
        .map(|n| SeqScan {
            node: node_ref(n),
            schema: n.schema.clone(),
            estimated_rows: n.plan_rows,
            actual_rows: n.total_rows(),
            rows_removed_by_filter: n
                .detail_number("Rows Removed by Filter")
                .and_then(|r| Some(r * n.actual_loops?)),
            loops: n.actual_loops,
        })
        .collect();
    plan.seq_scan_count = scans.len();
    let size = |s: &SeqScan| {
        s.actual_rows.unwrap_or(0.0)
            + s.rows_removed_by_filter.unwrap_or(0.0)
            + if s.actual_rows.is_none() {
                s.estimated_rows.unwrap_or(0.0)
            } else {
                0.0
            }
    };
    scans.sort_by(|a, b| size(b).total_cmp(&size(a)));
    scans.truncate(MAX_SEQ_SCANS);
    plan.seq_scans = scans;
}

fn node_ref(n: &Node) -> NodeRef {
    NodeRef {
        node_id: n.node_id,
        node_type: n.node_type.clone(),
        relation: n.relation.clone(),
        index: n.index.clone(),
    }
}

/// A node's time over all its loops, ms. Below a `Gather` the loops of the workers and
/// the leader ran side by side: their count (`divisor`) is taken out again.
fn inclusive(n: &Node, divisor: f64) -> Option<f64> {
    Some(n.actual_total_time_ms? * n.actual_loops? / divisor)
}

/// The processes a `Gather`'s children ran in: its workers and the leader.
fn divisor_below(n: &Node, divisor: f64) -> f64 {
    if n.node_type == "Gather" || n.node_type == "Gather Merge" {
        let workers = n
            .detail_number("Workers Launched")
            .or_else(|| n.detail_number("Workers Planned"))
            .unwrap_or(0.0);
        (workers + 1.0).max(1.0)
    } else {
        divisor
    }
}

fn slowest(root: &Node, total: Option<f64>) -> Option<Slowest> {
    let mut best: Option<Slowest> = None;
    let mut stack = vec![(root, 1.0)];
    while let Some((n, divisor)) = stack.pop() {
        let below = divisor_below(n, divisor);
        if let Some(own) = inclusive(n, divisor) {
            let children: f64 = n.plans.iter().filter_map(|c| inclusive(c, below)).sum();
            let self_time = (own - children).max(0.0);
            if best.as_ref().is_none_or(|b| self_time > b.self_time_ms) {
                best = Some(Slowest {
                    node: node_ref(n),
                    self_time_ms: round3(self_time),
                    share: total
                        .filter(|t| *t > 0.0)
                        .map(|t| round3((self_time / t).min(1.0))),
                });
            }
        }
        stack.extend(n.plans.iter().rev().map(|c| (c, below)));
    }
    best
}

fn misestimate(n: &Node) -> Option<Misestimate> {
    let loops = n.actual_loops?;
    if loops <= 0.0 {
        return None;
    }
    let (e, a) = (n.plan_rows?, n.actual_rows?);
    let (e1, a1) = (e.max(1.0), a.max(1.0));
    let factor = if a1 > e1 { a1 / e1 } else { e1 / a1 };
    Some(Misestimate {
        node: node_ref(n),
        estimated_rows: e,
        actual_rows: a,
        factor: round3(factor),
        direction: if a > e {
            "under"
        } else if a < e {
            "over"
        } else {
            "exact"
        },
    })
}

/// Three decimals: the server's own precision for times.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
