use super::*;

fn names(cols: &[Column]) -> Vec<&str> {
    cols.iter().map(|c| c.name.as_str()).collect()
}

fn have(cols: &[&str]) -> Vec<String> {
    cols.iter().map(|s| s.to_string()).collect()
}

#[test]
fn renamed_columns_map_to_one_name() {
    // 1.7 (PG 12)
    let old = columns(&have(&[
        "calls",
        "rows",
        "total_time",
        "min_time",
        "blk_read_time",
    ]));
    assert_eq!(
        names(&old),
        vec![
            "calls",
            "rows",
            "total_exec_time_ms",
            "min_exec_time_ms",
            "shared_blk_read_time_ms"
        ]
    );
    assert_eq!(old[2].expr, "s.total_time::float8");
    // 1.11 (PG 17)
    let new = columns(&have(&[
        "calls",
        "total_exec_time",
        "shared_blk_read_time",
        "blk_read_time",
    ]));
    assert_eq!(new[2].expr, "s.shared_blk_read_time::float8");
}

fn cols() -> Vec<Column> {
    columns(&have(&[
        "calls",
        "rows",
        "total_exec_time",
        "max_exec_time",
    ]))
}

/// An entry of role 10 in database 5 (shared with the tracker's tests).
pub(crate) fn key(q: i64) -> Key {
    Key {
        userid: 10,
        dbid: 5,
        queryid: q,
        toplevel: true,
    }
}

fn sample(rows: &[(i64, [f64; 4])]) -> HashMap<Key, Values> {
    rows.iter().map(|(q, v)| (key(*q), v.to_vec())).collect()
}

#[test]
fn deltas_of_counters_and_gauges_as_they_are() {
    let prev = sample(&[(1, [10.0, 100.0, 50.0, 9.0]), (2, [5.0, 5.0, 1.0, 1.0])]);
    let cur = sample(&[
        (1, [17.0, 170.0, 64.0, 12.0]),
        (2, [5.0, 5.0, 1.0, 1.0]),
        (3, [2.0, 2.0, 4.0, 3.0]),
    ]);
    let mut d = diff(&cols(), &prev, &cur, false);
    d.sort_by_key(|d| d.key.queryid);
    assert_eq!(d.len(), 2, "entry 2 had no new calls");
    assert_eq!(d[0].values, vec![7.0, 70.0, 14.0, 12.0]);
    assert!(!d[0].new && !d[0].counters_reset);
    assert_eq!(d[1].values, vec![2.0, 2.0, 4.0, 3.0]);
    assert!(d[1].new);
}

#[test]
fn a_counter_going_backwards_starts_over_instead_of_going_negative() {
    let prev = sample(&[(1, [1000.0, 1000.0, 900.0, 9.0])]);
    let cur = sample(&[(1, [3.0, 3.0, 2.5, 1.0])]);
    let d = diff(&cols(), &prev, &cur, false);
    assert_eq!(d[0].values, vec![3.0, 3.0, 2.5, 1.0]);
    assert!(d[0].counters_reset);
    assert!(d.iter().all(|d| d.values.iter().all(|v| *v >= 0.0)));
}

#[test]
fn a_stats_reset_makes_every_entry_count_from_zero() {
    let prev = sample(&[(1, [2.0, 2.0, 2.0, 2.0])]);
    let cur = sample(&[(1, [5.0, 5.0, 5.0, 5.0])]);
    let d = diff(&cols(), &prev, &cur, true);
    assert_eq!(d[0].values, vec![5.0, 5.0, 5.0, 5.0]);
    assert!(!d[0].new);
}

#[test]
fn top_n_keeps_the_most_time() {
    let cur = sample(&[
        (1, [1.0, 1.0, 5.0, 0.0]),
        (2, [1.0, 1.0, 50.0, 0.0]),
        (3, [1.0, 1.0, 20.0, 0.0]),
    ]);
    let mut d = diff(&cols(), &HashMap::new(), &cur, false);
    assert_eq!(top_n(&mut d, &cols(), 2), 1);
    assert_eq!(
        d.iter().map(|d| d.key.queryid).collect::<Vec<_>>(),
        vec![2, 3]
    );
}

#[test]
fn the_top_handed_to_plans_sums_a_statement_over_toplevel_and_orders_by_time() {
    let columns: Vec<Column> = ["calls", "total_exec_time_ms"]
        .iter()
        .map(|n| Column {
            name: n.to_string(),
            expr: String::new(),
            kind: ColKind::Count,
        })
        .collect();
    let d = |queryid: i64, toplevel: bool, calls: f64, ms: f64| Delta {
        key: Key {
            userid: 10,
            dbid: 5,
            queryid,
            toplevel,
        },
        values: vec![calls, ms],
        new: false,
        counters_reset: false,
    };
    let t = top(
        chrono::Utc::now(),
        &columns,
        &[
            d(1, true, 10.0, 5.0),
            d(2, true, 1.0, 50.0),
            d(1, false, 10.0, 5.0),
        ],
    );
    let got: Vec<(i64, f64, Option<f64>)> = t
        .statements
        .iter()
        .map(|s| (s.queryid, s.total_ms, s.mean_ms()))
        .collect();
    assert_eq!(got, vec![(2, 50.0, Some(50.0)), (1, 10.0, Some(0.5))]);
}
