use super::*;
use crate::board::{Setting, TableRow, INDEX_COLUMNS, TABLE_COLUMNS};

fn setting(name: &str, setting: &str, unit: &str, vartype: &str) -> Setting {
    Setting {
        name: name.into(),
        setting: setting.into(),
        unit: unit.into(),
        short_desc: "d".into(),
        vartype: vartype.into(),
    }
}

#[test]
fn settings_take_the_exporters_units() {
    let cases = [
        (
            setting("shared_buffers", "16384", "8kB", "integer"),
            Some((134_217_728.0, "bytes")),
        ),
        (
            setting("work_mem", "4096", "kB", "integer"),
            Some((4_194_304.0, "bytes")),
        ),
        (
            setting("wal_segment_size", "16777216", "B", "integer"),
            Some((16_777_216.0, "bytes")),
        ),
        (
            setting("min_wal_size", "80", "MB", "integer"),
            Some((83_886_080.0, "bytes")),
        ),
        (
            setting("statement_timeout", "1500", "ms", "integer"),
            Some((1.5, "seconds")),
        ),
        (
            setting("autovacuum_naptime", "1", "min", "integer"),
            Some((60.0, "seconds")),
        ),
        (
            setting("log_min_duration_statement", "-1", "ms", "integer"),
            Some((-1.0, "seconds")),
        ),
        (
            setting("vacuum_cost_delay", "2", "ms", "real"),
            Some((0.002, "seconds")),
        ),
        (setting("jit", "on", "", "bool"), Some((1.0, ""))),
        (setting("fsync", "off", "", "bool"), Some((0.0, ""))),
        (
            setting("max_connections", "100", "", "integer"),
            Some((100.0, "")),
        ),
        (setting("odd", "3", "furlongs", "integer"), None),
        (setting("odd", "three", "", "integer"), None),
    ];
    for (s, want) in cases {
        assert_eq!(setting_value(&s), want, "{}", s.name);
    }
}

#[test]
fn label_values_and_help_are_escaped_and_values_spelled_as_prometheus_reads_them() {
    let mut out = String::new();
    let mut w = Writer::new(&mut out);
    w.family("x", "a \\ b\nc", Type::Gauge);
    w.sample("x", &[("datname", "we\"ird\\db\nname")], f64::NAN);
    w.sample("x", &[], f64::INFINITY);
    w.sample("x", &[("a", "1"), ("b", "2")], 1.5);
    w.sample("x", &[], 134_217_728.0);
    assert_eq!(
        out,
        "# HELP x a \\\\ b\\nc\n# TYPE x gauge\n\
         x{datname=\"we\\\"ird\\\\db\\nname\"} NaN\nx +Inf\nx{a=\"1\",b=\"2\"} 1.5\nx 134217728\n"
    );
}

#[test]
fn values_are_spelled_the_same_as_text_and_as_bytes() {
    let cases = [
        (0.0, "0"),
        (-0.0, "0"),
        (-3.0, "-3"),
        (i64::MAX as f64, "9223372036854776000"),
        (8_999_999_999_999_999.0, "8999999999999999"),
        (1e20, "100000000000000000000"),
        (-2.5, "-2.5"),
        (f64::NAN, "NaN"),
        (f64::NEG_INFINITY, "-Inf"),
    ];
    for (v, want) in cases {
        let mut text = String::new();
        push_value(&mut text, v);
        let mut bytes = Vec::new();
        push_value_bytes(&mut bytes, v);
        assert_eq!(
            (text.as_str(), bytes.as_slice()),
            (want, want.as_bytes()),
            "{v}"
        );
    }
}

#[test]
fn column_values_are_numbers_times_switches_or_nan() {
    assert_eq!(value_of(Some(&Value::from(7))), Some(7.0));
    assert_eq!(value_of(Some(&Value::from(true))), Some(1.0));
    assert!(value_of(Some(&Value::Null)).is_some_and(f64::is_nan));
    assert!(value_of(None).is_some_and(f64::is_nan));
    assert_eq!(
        value_of(Some(&Value::from("2026-12-05T05:00:00.75+00:00"))),
        Some(1_796_446_800.0),
        "whole seconds, as the exporter"
    );
    assert_eq!(value_of(Some(&Value::from("0/1500718"))), None);
}

fn table(datid: i64, relid: i64, name: &str) -> ((i64, i64), Arc<TableRow>) {
    let mut values = [f64::NAN; TABLE_COLUMNS.len()];
    for (i, v) in values.iter_mut().enumerate() {
        *v = (relid * 100 + i as i64) as f64;
    }
    // Every third table has no index, the others one or two.
    let indexes = (0..relid % 3).map(|k| {
        let values = std::array::from_fn(|c| (relid * 10 + k) as f64 + c as f64 / 10.0);
        (format!("{name}_i{k}"), values)
    });
    (
        (datid, relid),
        Arc::new(TableRow::new(
            (&format!("db{datid}"), "public", name),
            values,
            indexes,
        )),
    )
}

#[test]
fn table_pages_in_chunks_hold_every_family_and_every_table_exactly_once() {
    // Enough tables that a family spans several chunks and chunks end mid-family.
    let n = 3_000;
    let rows: Tables = Tables {
        rows: (0..n)
            .map(|i| table(1 + i % 3, i, &format!("t{i}")))
            .collect(),
    };
    let chunks: Vec<Vec<u8>> = TablePages::new(Arc::new(rows), "h:5432").collect();
    assert!(chunks.len() > 2, "{} chunks", chunks.len());
    // Each chunk ends at a line's end.
    assert!(chunks.iter().all(|c| c.ends_with(b"\n")));
    let text = String::from_utf8(chunks.concat()).expect("UTF-8");
    for (col, name, ty, _) in TABLE_FAMILIES {
        assert_eq!(
            text.matches(&format!("# TYPE {name} {}\n", ty.name()))
                .count(),
            1,
            "{name}"
        );
        let i = TABLE_COLUMNS.iter().position(|c| c == col).expect("column");
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .collect();
        assert_eq!(lines.len(), n as usize, "{name}");
        let want = format!(
            "{name}{{datname=\"db2\",relname=\"t1234\",schemaname=\"public\",server=\"h:5432\"}} {}",
            1234 * 100 + i as i64
        );
        assert!(lines.contains(&want.as_str()), "{want}");
    }
    let indexed: i64 = (0..n).map(|i| i % 3).sum();
    for (col, name, ty, _) in INDEX_FAMILIES {
        assert_eq!(
            text.matches(&format!("# TYPE {name} {}\n", ty.name()))
                .count(),
            1,
            "{name}"
        );
        let c = INDEX_COLUMNS.iter().position(|x| x == col).expect("column");
        let lines = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .count();
        assert_eq!(lines as i64, indexed, "{name}");
        let want = format!(
            "{name}{{datname=\"db2\",relname=\"t1234\",schemaname=\"public\",indexrelname=\"t1234_i0\"}} {}",
            12340.0 + c as f64 / 10.0
        );
        assert!(text.lines().any(|l| l == want), "{want}");
    }
    // A family's samples follow its TYPE line with nothing of another family between.
    let mut current = "";
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            current = rest.split(' ').next().unwrap_or_default();
        } else if !l.starts_with('#') {
            assert!(
                l.starts_with(&format!("{current}{{")),
                "{l} after {current}"
            );
        }
    }
}

#[test]
fn no_tables_no_pages() {
    assert_eq!(TablePages::new(Arc::default(), "h").count(), 0);
}

#[test]
fn a_histogram_is_cumulative_with_sum_and_count() {
    let mut h = crate::model::Histogram::new(&[0.5, 1.0]);
    for v in [0.1, 0.7, 0.9, 3.0] {
        h.observe(v);
    }
    let mut out = String::new();
    Writer::new(&mut out).histogram("x", &[("class", "a")], &h);
    assert_eq!(
        out,
        "x_bucket{class=\"a\",le=\"0.5\"} 1\nx_bucket{class=\"a\",le=\"1\"} 3\n\
         x_bucket{class=\"a\",le=\"+Inf\"} 4\nx_sum{class=\"a\"} 4.7\nx_count{class=\"a\"} 4\n"
    );
}

#[test]
fn log_insights_keep_labels_in_bounded_sets_and_take_each_figure() {
    let mut i = crate::model::LogInsights::default();
    let figures = |k: &str, v: f64| {
        let mut m = serde_json::Map::new();
        m.insert(k.into(), v.into());
        m
    };
    i.note("slow_query", Some("LOG"), Some(250.0), None);
    i.note("error", Some("FEHLER"), None, None);
    i.note("other", None, None, None);
    i.note(
        "lock_acquired",
        Some("LOG"),
        None,
        Some(&figures("waited_ms", 1500.0)),
    );
    i.note(
        "checkpoint",
        Some("LOG"),
        None,
        Some(&figures("total_s", 12.5)),
    );
    i.note(
        "autoanalyze",
        Some("LOG"),
        None,
        Some(&figures("elapsed_s", 0.02)),
    );
    let keys: Vec<(&str, &str)> = i.messages.keys().copied().collect();
    assert_eq!(
        keys,
        vec![
            ("autoanalyze", "LOG"),
            ("checkpoint", "LOG"),
            ("error", "other"),
            ("lock_acquired", "LOG"),
            ("other", "none"),
            ("slow_query", "LOG"),
        ]
    );
    assert_eq!(
        (i.slow_query_seconds.sum, i.lock_wait_seconds.sum),
        (0.25, 1.5)
    );
    assert_eq!(i.checkpoint_seconds.sum, 12.5);
    assert_eq!(
        i.autovacuum_seconds["autoanalyze"]
            .counts
            .iter()
            .sum::<u64>(),
        1
    );
}

#[test]
fn bounded_labels_fall_back_to_other_and_none() {
    use crate::board::{bounded, STATES, WAIT_EVENT_TYPES};
    assert_eq!(bounded(Some("Lock"), WAIT_EVENT_TYPES, "none"), "Lock");
    assert_eq!(bounded(Some("Bogus"), WAIT_EVENT_TYPES, "none"), "other");
    assert_eq!(bounded(None, WAIT_EVENT_TYPES, "none"), "none");
    assert_eq!(bounded(Some(""), STATES, "other"), "other");
}

#[test]
fn several_servers_tables_are_one_family_each_told_apart_by_server() {
    let one = |name: &str| Tables {
        rows: [table(1, 7, name)].into_iter().collect(),
    };
    let text = String::from_utf8(
        TablePages::of_servers(vec![
            (Arc::new(one("t7")), "alpha".into()),
            (Arc::new(one("t7")), "beta".into()),
        ])
        .collect::<Vec<_>>()
        .concat(),
    )
    .expect("UTF-8");
    let (_, name, ty, _) = TABLE_FAMILIES[0];
    assert_eq!(
        text.matches(&format!("# TYPE {name} {}\n", ty.name()))
            .count(),
        1
    );
    for server in ["alpha", "beta"] {
        let series = format!(
            "{name}{{datname=\"db1\",relname=\"t7\",schemaname=\"public\",server=\"{server}\"}} "
        );
        assert_eq!(text.matches(&series).count(), 1, "{series}");
    }
    // Index series carry the server too when several share the page (one server's
    // are the exporter's, without it).
    let (_, index, _, _) = INDEX_FAMILIES[0];
    let series = format!(
        "{index}{{datname=\"db1\",relname=\"t7\",schemaname=\"public\",server=\"beta\",indexrelname=\"t7_i0\"}} "
    );
    assert_eq!(text.matches(&series).count(), 1, "{series} in\n{text}");
    let single = String::from_utf8(
        TablePages::new(Arc::new(one("t7")), "h:1")
            .collect::<Vec<_>>()
            .concat(),
    )
    .expect("UTF-8");
    assert!(single.contains(&format!(
        "{index}{{datname=\"db1\",relname=\"t7\",schemaname=\"public\",indexrelname=\"t7_i0\"}} "
    )));
}

#[test]
fn several_servers_small_families_merge_with_each_series_labelled() {
    let page = |up: f64, server: &str| {
        let mut out = String::new();
        let mut w = Writer::new(&mut out);
        w.family("pg_up", "up", Type::Gauge);
        w.sample("pg_up", &[], up);
        w.family("pg_locks_count", "locks", Type::Gauge);
        w.sample(
            "pg_locks_count",
            &[
                ("datname", "a,server=\"x\""),
                ("mode", "m"),
                ("server", server),
            ],
            2.0,
        );
        w.sample("pg_locks_count", &[("datname", "b"), ("mode", "m")], 3.0);
        out
    };
    let mut out = String::new();
    merge_servers(
        &[(page(1.0, "alpha"), "alpha"), (page(0.0, "beta"), "beta")],
        &mut out,
    );
    assert_eq!(
        out,
        "# HELP pg_up up\n# TYPE pg_up gauge\n\
         pg_up{server=\"alpha\"} 1\npg_up{server=\"beta\"} 0\n\
         # HELP pg_locks_count locks\n# TYPE pg_locks_count gauge\n\
         pg_locks_count{datname=\"a,server=\\\"x\\\"\",mode=\"m\",server=\"alpha\"} 2\n\
         pg_locks_count{server=\"alpha\",datname=\"b\",mode=\"m\"} 3\n\
         pg_locks_count{datname=\"a,server=\\\"x\\\"\",mode=\"m\",server=\"beta\"} 2\n\
         pg_locks_count{server=\"beta\",datname=\"b\",mode=\"m\"} 3\n"
    );
}
