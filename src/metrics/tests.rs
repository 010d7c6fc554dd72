use super::*;
use crate::model::{CollectorStats, LogReaderStats, ShipperStats, SpoolStats};
use crate::shipper::policy::BreakerStats;
use crate::status::ChildStatus;
use chrono::TimeZone;

fn child(state: ChildState, restarts: u64, detail: ChildDetail) -> ChildStatus {
    ChildStatus {
        state,
        restarts,
        up_since: None,
        last_success: Some(
            chrono::Utc
                .timestamp_opt(1_700_000_000, 500_000_000)
                .unwrap(),
        ),
        last_error: None,
        last_restart_reason: None,
        detail: Some(detail),
    }
}

fn snapshot() -> StatusSnapshot {
    let mut children = std::collections::BTreeMap::new();
    children.insert(
        ChildId::Collector(
            crate::model::ServerNo::ONLY,
            crate::model::EventKind::PgActivity,
        ),
        child(
            ChildState::Running,
            2,
            ChildDetail::Collector(CollectorStats {
                cycles_total: 7,
                cycle_errors_total: 1,
                cycles_skipped_total: 3,
                events_total: 41,
                dropped_events_total: 5,
                ..Default::default()
            }),
        ),
    );
    children.insert(
        ChildId::Spool,
        child(
            ChildState::Running,
            0,
            ChildDetail::Spool(SpoolStats {
                depth: 12,
                bytes: 3456,
                file_bytes: 65536,
                oldest_age_s: Some(2.5),
                appended_total: 100,
                acked_total: 88,
                evicted_total: 9,
                quarantined: 4,
                quarantined_bytes: 400,
                errors_total: 0,
                pending_by_output: [("listener".to_string(), 12)].into_iter().collect(),
                max_bytes: 104_857_600,
            }),
        ),
    );
    children.insert(
        ChildId::Shipper(Output::Listener),
        child(
            ChildState::Restarting,
            1,
            ChildDetail::Shipper(ShipperStats {
                batches_sent_total: 6,
                events_sent_total: 88,
                failures_total: 11,
                consecutive_failures: 5,
                breaker: BreakerStats {
                    state: BreakerPhase::Open,
                    consecutive_failures: 5,
                    open_since: None,
                    next_probe_in_s: Some(30.0),
                },
                batches_split_total: 2,
                events_quarantined_total: 4,
                ..Default::default()
            }),
        ),
    );
    let mut log = LogReaderStats {
        events_total: 30,
        ..Default::default()
    };
    log.tail.bytes_behind = 777;
    log.tail.bytes_read_total = 123_456;
    log.tail.unparsed_lines_total = 2;
    log.waiting_for_spool = true;
    log.spool_waits_total = 3;
    children.insert(
        ChildId::LogReader(crate::model::ServerNo::ONLY),
        child(ChildState::Running, 0, ChildDetail::LogReader(log)),
    );
    StatusSnapshot {
        written_at: chrono::Utc::now(),
        trigger: "metrics".into(),
        pid: 1,
        version: "9.9.9".into(),
        started_at: chrono::Utc.timestamp_opt(1_600_000_000, 0).unwrap(),
        config_path: "/etc/postgres-agent/agent.toml".into(),
        config_fingerprint: "f".into(),
        last_reload: None,
        metrics: None,
        children,
    }
}

/// The sample lines of a family (without HELP/TYPE).
fn samples(text: &str, family: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn a_snapshot_renders_every_figure_under_its_name_with_fixed_labels() {
    let mut s = snapshot();
    let activity = ChildId::Collector(
        crate::model::ServerNo::ONLY,
        crate::model::EventKind::PgActivity,
    );
    if let Some(ChildDetail::Collector(d)) = &mut s.children.get_mut(&activity).unwrap().detail {
        d.cycle_seconds.observe(Duration::from_millis(3));
    }
    let text = render(&s).unwrap();
    let expect = |family: &str, lines: &[&str]| {
        assert_eq!(samples(&text, family), lines, "{family} in:\n{text}");
    };
    expect(
        "postgres_agent_info",
        &["postgres_agent_info{version=\"9.9.9\"} 1"],
    );
    expect(
        "postgres_agent_start_time_seconds",
        &["postgres_agent_start_time_seconds 1600000000"],
    );
    expect(
        "postgres_agent_child_up",
        &[
            "postgres_agent_child_up{child=\"buffer\"} 1",
            "postgres_agent_child_up{child=\"pg_activity\"} 1",
            "postgres_agent_child_up{child=\"pg_log\"} 1",
            "postgres_agent_child_up{child=\"shipper\"} 0",
        ],
    );
    expect(
        "postgres_agent_child_restarts_total",
        &[
            "postgres_agent_child_restarts_total{child=\"buffer\"} 0",
            "postgres_agent_child_restarts_total{child=\"pg_activity\"} 2",
            "postgres_agent_child_restarts_total{child=\"pg_log\"} 0",
            "postgres_agent_child_restarts_total{child=\"shipper\"} 1",
        ],
    );
    expect(
        "postgres_agent_source_cycles_total",
        &["postgres_agent_source_cycles_total{source=\"pg_activity\"} 7"],
    );
    expect(
        "postgres_agent_source_errors_total",
        &["postgres_agent_source_errors_total{source=\"pg_activity\"} 1"],
    );
    expect(
        "postgres_agent_source_skipped_cycles_total",
        &["postgres_agent_source_skipped_cycles_total{source=\"pg_activity\"} 3"],
    );
    expect(
        "postgres_agent_source_events_total",
        &[
            "postgres_agent_source_events_total{source=\"pg_activity\"} 41",
            "postgres_agent_source_events_total{source=\"pg_log\"} 30",
        ],
    );
    expect(
        "postgres_agent_source_dropped_events_total",
        &["postgres_agent_source_dropped_events_total{source=\"pg_activity\"} 5"],
    );
    expect(
        "postgres_agent_source_last_success_timestamp_seconds",
        &[
            "postgres_agent_source_last_success_timestamp_seconds{source=\"pg_activity\"} 1700000000.5",
            "postgres_agent_source_last_success_timestamp_seconds{source=\"pg_log\"} 1700000000.5",
        ],
    );
    expect(
        "postgres_agent_log_bytes_behind",
        &["postgres_agent_log_bytes_behind 777"],
    );
    expect(
        "postgres_agent_log_read_bytes_total",
        &["postgres_agent_log_read_bytes_total 123456"],
    );
    expect(
        "postgres_agent_log_unparsed_lines_total",
        &["postgres_agent_log_unparsed_lines_total 2"],
    );
    expect(
        "postgres_agent_log_waiting_for_spool",
        &["postgres_agent_log_waiting_for_spool 1"],
    );
    expect(
        "postgres_agent_log_spool_waits_total",
        &["postgres_agent_log_spool_waits_total 3"],
    );
    expect(
        "postgres_agent_spool_events",
        &["postgres_agent_spool_events 12"],
    );
    expect(
        "postgres_agent_spool_bytes",
        &["postgres_agent_spool_bytes 3456"],
    );
    expect(
        "postgres_agent_spool_max_bytes",
        &["postgres_agent_spool_max_bytes 104857600"],
    );
    expect(
        "postgres_agent_spool_file_bytes",
        &["postgres_agent_spool_file_bytes 65536"],
    );
    expect(
        "postgres_agent_spool_oldest_event_age_seconds",
        &["postgres_agent_spool_oldest_event_age_seconds 2.5"],
    );
    expect(
        "postgres_agent_spool_evicted_events_total",
        &["postgres_agent_spool_evicted_events_total 9"],
    );
    expect(
        "postgres_agent_spool_quarantined_events",
        &["postgres_agent_spool_quarantined_events 4"],
    );
    expect(
        "postgres_agent_spool_appended_events_total",
        &["postgres_agent_spool_appended_events_total 100"],
    );
    expect(
        "postgres_agent_spool_acked_events_total",
        &["postgres_agent_spool_acked_events_total 88"],
    );
    expect(
        "postgres_agent_shipper_batches_total",
        &[
            "postgres_agent_shipper_batches_total{outcome=\"failed\",output=\"listener\"} 11",
            "postgres_agent_shipper_batches_total{outcome=\"sent\",output=\"listener\"} 6",
        ],
    );
    expect(
        "postgres_agent_shipper_breaker_state",
        &[
            "postgres_agent_shipper_breaker_state{output=\"listener\",state=\"closed\"} 0",
            "postgres_agent_shipper_breaker_state{output=\"listener\",state=\"half_open\"} 0",
            "postgres_agent_shipper_breaker_state{output=\"listener\",state=\"open\"} 1",
        ],
    );
    expect(
        "postgres_agent_shipper_consecutive_failures",
        &["postgres_agent_shipper_consecutive_failures{output=\"listener\"} 5"],
    );
    expect(
        "postgres_agent_shipper_last_success_timestamp_seconds",
        &["postgres_agent_shipper_last_success_timestamp_seconds{output=\"listener\"} 1700000000.5"],
    );
    expect(
        "postgres_agent_shipper_token_refused",
        &["postgres_agent_shipper_token_refused{output=\"listener\"} 0"],
    );
    // The histogram the collectors feed: its count for the source observed above.
    let count = samples(&text, "postgres_agent_source_cycle_duration_seconds_count");
    assert!(
        count.iter().any(|l| l.starts_with(
            "postgres_agent_source_cycle_duration_seconds_count{source=\"pg_activity\"} "
        )),
        "{text}"
    );
    let series = |family: &str| -> Vec<String> {
        samples(&text, family)
            .into_iter()
            .filter(|l| l.contains("source=\"pg_activity\""))
            .collect()
    };
    assert_eq!(
        series("postgres_agent_source_cycle_duration_seconds_count"),
        ["postgres_agent_source_cycle_duration_seconds_count{source=\"pg_activity\"} 1"]
    );
    let buckets = series("postgres_agent_source_cycle_duration_seconds_bucket");
    assert!(
        buckets.contains(
            &"postgres_agent_source_cycle_duration_seconds_bucket{source=\"pg_activity\",le=\"0.0025\"} 0"
                .to_string()
        ),
        "{buckets:?}"
    );
    assert!(
        buckets.contains(
            &"postgres_agent_source_cycle_duration_seconds_bucket{source=\"pg_activity\",le=\"0.005\"} 1"
                .to_string()
        ),
        "{buckets:?}"
    );
    assert!(
        buckets.contains(
            &"postgres_agent_source_cycle_duration_seconds_bucket{source=\"pg_activity\",le=\"+Inf\"} 1"
                .to_string()
        ),
        "{buckets:?}"
    );
    assert_eq!(samples(&text, "process_resident_memory_bytes").len(), 1);
    // Every family has its HELP and TYPE.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let name = l.split(['{', ' ']).next().unwrap();
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_count")
            .trim_end_matches("_sum");
        assert!(
            text.contains(&format!("# TYPE {base} ")) || text.contains(&format!("# TYPE {name} ")),
            "{name} has no TYPE"
        );
    }
}

#[test]
fn label_values_are_only_child_names_outcomes_and_states() {
    let text = render(&snapshot()).unwrap();
    let allowed = [
        "pg_activity",
        "pg_log",
        "buffer",
        "shipper",
        "listener",
        "otlp",
        "sent",
        "failed",
        "closed",
        "open",
        "half_open",
        "9.9.9",
    ];
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(labels) = l.split_once('{').map(|(_, r)| r.split_once('}').unwrap().0) else {
            continue;
        };
        for kv in labels.split(',') {
            let (k, v) = kv.split_once('=').unwrap();
            let v = v.trim_matches('"');
            if k == "le" {
                continue;
            }
            assert!(allowed.contains(&v), "label {k}={v} in {l}");
        }
    }
}

#[test]
fn an_empty_snapshot_renders_the_agent_figures_only() {
    let mut s = snapshot();
    s.children.clear();
    let text = render(&s).unwrap();
    assert_eq!(samples(&text, "postgres_agent_info").len(), 1);
    assert!(samples(&text, "postgres_agent_spool_events").is_empty());
    assert!(samples(&text, "postgres_agent_shipper_breaker_state").is_empty());
}

#[test]
fn requests_are_routed_by_method_and_path() {
    assert_eq!(route_of("GET", "/metrics"), Route::Metrics);
    assert_eq!(route_of("HEAD", "/metrics"), Route::Metrics);
    assert_eq!(route_of("GET", "/"), Route::Index);
    assert_eq!(route_of("GET", "/metricsx"), Route::NotFound);
    assert_eq!(route_of("GET", "/../etc/passwd"), Route::NotFound);
    assert_eq!(route_of("POST", "/metrics"), Route::MethodNotAllowed);
    assert_eq!(route_of("DELETE", "/"), Route::MethodNotAllowed);
}

#[test]
fn in_the_servers_form_every_series_names_its_server_and_every_family_is_named_once() {
    let mut s = snapshot();
    s.children.clear();
    for (name, behind, class) in [("alpha", 5, "checkpoint"), ("beta", 9, "error")] {
        let no = crate::model::ServerNo::of(name);
        let mut log = LogReaderStats::default();
        log.tail.bytes_behind = behind;
        log.insights.note(class, Some("LOG"), None, None);
        s.children.insert(
            ChildId::LogReader(no),
            child(ChildState::Running, 0, ChildDetail::LogReader(log)),
        );
        s.children.insert(
            ChildId::Collector(no, crate::model::EventKind::PgActivity),
            child(
                ChildState::Running,
                1,
                ChildDetail::Collector(CollectorStats::default()),
            ),
        );
    }
    let text = render(&s).expect("render");
    let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let distinct: std::collections::BTreeSet<&str> = types.iter().copied().collect();
    assert_eq!(types.len(), distinct.len(), "a family twice:\n{text}");
    assert_eq!(
        samples(&text, "postgres_agent_log_bytes_behind"),
        [
            "postgres_agent_log_bytes_behind{server=\"alpha\"} 5",
            "postgres_agent_log_bytes_behind{server=\"beta\"} 9"
        ]
    );
    assert_eq!(
        samples(&text, "postgres_agent_child_restarts_total"),
        [
            "postgres_agent_child_restarts_total{child=\"pg_activity\",server=\"alpha\"} 1",
            "postgres_agent_child_restarts_total{child=\"pg_activity\",server=\"beta\"} 1",
            "postgres_agent_child_restarts_total{child=\"pg_log\",server=\"alpha\"} 0",
            "postgres_agent_child_restarts_total{child=\"pg_log\",server=\"beta\"} 0",
        ]
    );
    let messages = samples(&text, "postgres_agent_log_messages_total");
    assert!(
        messages
            .iter()
            .any(|l| l.contains("server=\"alpha\"") && l.contains("class=\"checkpoint\"")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|l| l.contains("server=\"beta\"") && l.contains("class=\"error\"")),
        "{messages:?}"
    );
}
