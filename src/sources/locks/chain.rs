//! Blocking chains as plain graph code: who blocks whom, and the root blockers — the
//! sessions at the head of a chain that wait for nothing themselves (typically an idle
//! transaction holding a row lock).

use std::collections::{BTreeMap, BTreeSet};

/// `pid → pids blocking it`, for every backend waiting on a lock.
pub type Graph = BTreeMap<i32, Vec<i32>>;

/// The root blockers of `pid` (sorted) and the length of its longest chain to one of them
/// (1 when a root blocks it directly). Memoized, because a lock queue makes a dense graph
/// (each waiter is blocked by everyone ahead of it) whose paths are exponential in number.
/// A cycle (a deadlock the server has not broken yet) has no root: the session where the
/// walk closes the cycle is reported as the root instead, so that nothing is hidden.
pub fn roots(graph: &Graph, pid: i32) -> (Vec<i32>, usize) {
    if graph.get(&pid).is_none_or(|b| b.is_empty()) {
        return (vec![], 0);
    }
    let mut memo = BTreeMap::new();
    let mut stack = BTreeSet::new();
    let (r, d) = walk(graph, pid, &mut memo, &mut stack);
    (r.into_iter().collect(), d)
}

type Found = (BTreeSet<i32>, usize);

fn walk(
    graph: &Graph,
    pid: i32,
    memo: &mut BTreeMap<i32, Found>,
    stack: &mut BTreeSet<i32>,
) -> Found {
    if let Some(f) = memo.get(&pid) {
        return f.clone();
    }
    let blockers = graph.get(&pid).map(Vec::as_slice).unwrap_or(&[]);
    if blockers.is_empty() || stack.contains(&pid) {
        return (BTreeSet::from([pid]), 0);
    }
    stack.insert(pid);
    let mut found: Found = (BTreeSet::new(), 0);
    for b in blockers {
        let (r, d) = walk(graph, *b, memo, stack);
        found.0.extend(r);
        found.1 = found.1.max(d + 1);
    }
    stack.remove(&pid);
    memo.insert(pid, found.clone());
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(edges: &[(i32, &[i32])]) -> Graph {
        edges.iter().map(|(k, v)| (*k, v.to_vec())).collect()
    }

    #[test]
    fn chain_of_three_has_one_root() {
        // A=1 idle in transaction, B=2 waits on A, C=3 waits on B.
        let graph = g(&[(2, &[1]), (3, &[2])]);
        assert_eq!(roots(&graph, 2), (vec![1], 1));
        assert_eq!(roots(&graph, 3), (vec![1], 2));
    }

    #[test]
    fn several_blockers_and_shared_roots() {
        let graph = g(&[(3, &[1, 2]), (4, &[3]), (5, &[4, 1])]);
        assert_eq!(roots(&graph, 4), (vec![1, 2], 2));
        assert_eq!(roots(&graph, 5), (vec![1, 2], 3));
    }

    #[test]
    fn a_cycle_reports_its_members() {
        let graph = g(&[(1, &[2]), (2, &[1]), (3, &[1])]);
        let (r, _) = roots(&graph, 3);
        assert_eq!(r, vec![1]);
    }

    #[test]
    fn a_long_lock_queue_is_cheap() {
        // 200 waiters, each blocked by every session ahead of it.
        let graph: Graph = (1..=200).map(|p| (p, (0..p).collect())).collect();
        assert_eq!(roots(&graph, 200), (vec![0], 200));
    }

    #[test]
    fn a_backend_that_waits_for_nobody_has_no_roots() {
        assert_eq!(roots(&g(&[(1, &[])]), 1), (vec![], 0));
        assert_eq!(roots(&g(&[]), 7), (vec![], 0));
    }
}
