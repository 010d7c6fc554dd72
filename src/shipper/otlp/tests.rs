use super::*;
use crate::model::EventKind;

fn event(kind: EventKind, data: Value) -> Event {
    let at = DateTime::parse_from_rfc3339("2026-12-02T10:00:00.5Z")
        .expect("t")
        .with_timezone(&Utc);
    Event::new(format!("id-{}", kind.as_str()), kind, at, &data).expect("event")
}

fn attr<'a>(r: &'a LogRecord, key: &str) -> Option<&'a any_value::Value> {
    r.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

#[test]
fn a_server_log_event_becomes_a_record_with_its_time_severity_and_trace() {
    let e = event(
        EventKind::PgLog,
        serde_json::json!({
            "timestamp": "2026-12-02T09:59:59.25Z", "severity": "ERROR", "sqlstate": "23505",
            "database": "shop", "correlation_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7",
            "message": "duplicate key", "hint": null, "pid": 42
        }),
    );
    let r = record(&origin(), &e);
    assert_eq!(r.time_unix_nano, 1_796_205_599_250_000_000);
    assert_eq!(r.observed_time_unix_nano, 1_796_205_600_500_000_000);
    assert_eq!((r.severity_number, r.severity_text.as_str()), (17, "ERROR"));
    assert_eq!(r.event_name, "pg_log");
    assert_eq!(
        r.trace_id,
        [
            0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
            0x47, 0x36
        ]
    );
    assert_eq!(r.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
    assert_eq!(attr(&r, attr::KIND), Some(&s("pg_log")));
    assert_eq!(attr(&r, attr::EVENT_ID), Some(&s("id-pg_log")));
    assert_eq!(attr(&r, attr::DATABASE), Some(&s("shop")));
    assert_eq!(attr(&r, attr::SQLSTATE), Some(&s("23505")));
    assert_eq!(attr(&r, attr::SEVERITY), Some(&s("ERROR")));
    // No server on the event (an older spool's row): the configured one's name.
    assert_eq!(attr(&r, attr::SERVER), Some(&s("h")));
    let named = Event {
        server: Some("db-a".into()),
        ..e.clone()
    };
    assert_eq!(
        attr(&record(&origin(), &named), attr::SERVER),
        Some(&s("db-a"))
    );
    assert_eq!(
        attr(&r, attr::CORRELATION_ID),
        Some(&s("4bf92f3577b34da6a3ce929d0e0e4736"))
    );
    let Some(any_value::Value::KvlistValue(body)) = r.body.and_then(|b| b.value) else {
        panic!("body is not a map");
    };
    let keys: Vec<&str> = body.values.iter().map(|k| k.key.as_str()).collect();
    assert!(!keys.contains(&"hint"), "nulls are left out: {keys:?}");
    assert!(
        keys.contains(&"message") && keys.contains(&"pid"),
        "{keys:?}"
    );
}

#[test]
fn forged_or_partial_trace_ids_give_no_trace() {
    for (t, sp) in [
        ("4BF92F3577B34DA6A3CE929D0E0E4736", "00f067aa0ba902b7"),
        ("00000000000000000000000000000000", "00f067aa0ba902b7"),
        ("4bf92f3577b34da6a3ce929d0e0e473", "00f067aa0ba902b7"),
        ("4bf92f3577b34da6a3ce929d0e0e47zz", "00f067aa0ba902b7"),
    ] {
        let r = record(
            &origin(),
            &event(
                EventKind::PgActivity,
                serde_json::json!({"trace_id": t, "span_id": sp}),
            ),
        );
        assert!(r.trace_id.is_empty() && r.span_id.is_empty(), "{t}");
    }
    // A good trace with a bad span keeps the trace.
    let r = record(
        &origin(),
        &event(
            EventKind::PgActivity,
            serde_json::json!({"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "é"}),
        ),
    );
    assert_eq!((r.trace_id.len(), r.span_id.len()), (16, 0));
}

#[test]
fn json_values_map_to_otlp_values_exactly() {
    use any_value::Value as V;
    let v = any(serde_json::json!([1, -2, 1.5, true, "x", null, u64::MAX, {"a": null, "b": [1]}]))
        .and_then(|v| v.value);
    let Some(V::ArrayValue(a)) = v else {
        panic!("{v:?}")
    };
    let got: Vec<Option<V>> = a.values.into_iter().map(|v| v.value).collect();
    assert_eq!(got[0], Some(V::IntValue(1)));
    assert_eq!(got[1], Some(V::IntValue(-2)));
    assert_eq!(got[2], Some(V::DoubleValue(1.5)));
    assert_eq!(got[3], Some(V::BoolValue(true)));
    assert_eq!(got[4], Some(s("x")));
    assert_eq!(got[5], None);
    assert_eq!(got[6], Some(s("18446744073709551615")));
    let Some(V::KvlistValue(m)) = &got[7] else {
        panic!("{:?}", got[7])
    };
    assert_eq!(m.values.len(), 1);
    assert_eq!(m.values[0].key, "b");
}

#[test]
fn severities_follow_postgres_and_other_kinds_carry_none() {
    let order = [
        "DEBUG5", "DEBUG4", "DEBUG3", "DEBUG2", "DEBUG1", "LOG", "INFO", "NOTICE", "WARNING",
        "ERROR", "FATAL", "PANIC",
    ];
    let n: Vec<i32> = order.iter().map(|s| severity(s)).collect();
    assert!(n.windows(2).all(|w| w[0] < w[1]), "{n:?}");
    assert_eq!(severity("nonsense"), 0);
    let r = record(
        &origin(),
        &event(EventKind::PgStatements, serde_json::json!({"calls": 3})),
    );
    assert_eq!((r.severity_number, r.severity_text.as_str()), (0, ""));
    let r = record(
        &origin(),
        &event(
            EventKind::Agent,
            serde_json::json!({"event": "agent_started"}),
        ),
    );
    assert_eq!(r.severity_number, 9);
}

#[test]
fn a_request_round_trips_through_protobuf() {
    let batch = Batch {
        batch_id: "b".into(),
        events: vec![
            event(EventKind::PgLog, serde_json::json!({"message": "m"})),
            event(EventKind::PgLocks, serde_json::json!({"pid": 1})),
        ],
        seqs: vec![1, 2],
    };
    let origin = Origin {
        project: "shop-prod".into(),
        host: "db1".into(),
        server: Default::default(),
        server_name: "db1".into(),
        projects: Vec::new(),
        fleet: false,
    };
    // The server's version is in the resource once a source has learnt it.
    let without = request(&origin, "postgresql", &batch);
    let resource = without.resource_logs[0]
        .resource
        .as_ref()
        .expect("resource");
    assert!(!resource
        .attributes
        .iter()
        .any(|a| a.key == "db.server.version"));
    origin.server.set_version(150_008);
    let req = request(&origin, "postgresql", &batch);
    let back = ExportLogsServiceRequest::decode(req.encode_to_vec().as_slice()).expect("decode");
    assert_eq!(back, req);
    let rl = &back.resource_logs[0];
    let res = &rl.resource.as_ref().expect("resource").attributes;
    let get = |k: &str| {
        res.iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.clone())
            .and_then(|v| v.value)
    };
    assert_eq!(get("service.name"), Some(s("postgresql")));
    assert_eq!(get("host.name"), Some(s("db1")));
    assert_eq!(get("postgres_agent.project"), Some(s("shop-prod")));
    assert_eq!(get("db.server.version"), Some(s("15.8")));
    assert_eq!(rl.scope_logs[0].log_records.len(), 2);
}

#[test]
fn a_receiver_message_is_repeated_printable_and_bounded() {
    let long = "x\u{7}".repeat(1000);
    let m = said(&long);
    assert!(!m.chars().any(char::is_control));
    assert_eq!(m.chars().count(), MAX_MESSAGE + 1);
}

fn batch_of(datas: Vec<Value>) -> Batch {
    let kinds = [EventKind::PgLog, EventKind::PgActivity, EventKind::Agent];
    Batch {
        batch_id: "b".into(),
        seqs: (0..datas.len() as i64).collect(),
        events: datas
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                let mut e = event(kinds[i % 3], d);
                e.id = format!("e{i}");
                e
            })
            .collect(),
    }
}

fn origin() -> Origin {
    Origin {
        project: "p".into(),
        host: "h".into(),
        server: Default::default(),
        server_name: "h".into(),
        projects: Vec::new(),
        fleet: false,
    }
}

#[test]
fn the_one_pass_encoding_is_the_message_prost_would_write() {
    let b = batch_of(vec![
        serde_json::json!({
            "timestamp": "2026-12-02T09:59:59.25Z", "severity": "ERROR", "sqlstate": "23505",
            "datname": "shop", "query_id": -42, "correlation_id": "c",
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7",
            "message": "dup \"key\"\n\u{1F600}", "hint": null, "pid": 42, "rate": 0.25,
            "big": u64::MAX, "empty": "", "zero": 0, "no": false,
            "list": [1, null, "x", [], {}], "nested": {"a": {"b": [null]}, "gone": null},
            "": "no key"
        }),
        serde_json::json!({}),
        // Never written by the agent, handled all the same.
        serde_json::json!([1, 2]),
        serde_json::json!(7),
        serde_json::json!(null),
    ]);
    let bytes = encode(&origin(), "postgresql", &b);
    let decoded = ExportLogsServiceRequest::decode(bytes.as_slice()).expect("decode");
    assert_eq!(decoded, request(&origin(), "postgresql", &b));
    let records = &decoded.resource_logs[0].scope_logs[0].log_records;
    assert_eq!(records.len(), 5);
    assert_eq!(records[4].body, None);
    assert_eq!(attr(&records[0], attr::DATABASE), Some(&s("shop")));
    assert_eq!(
        attr(&records[0], attr::QUERY_ID),
        Some(&any_value::Value::IntValue(-42))
    );
}

fn json() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::String),
        "[\"\\\\\n\t\u{0}-\u{1f}]{0,4}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest::proptest! {
    /// Whatever JSON an event holds, the one-pass bytes decode to the reference message.
    #[test]
    fn any_event_data_encodes_as_the_reference(datas in proptest::collection::vec(json(), 1..5)) {
        let b = batch_of(datas);
        let bytes = encode(&origin(), "svc", &b);
        let decoded = ExportLogsServiceRequest::decode(bytes.as_slice()).expect("decode");
        proptest::prop_assert_eq!(decoded, request(&origin(), "svc", &b));
    }
}
