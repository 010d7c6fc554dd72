use super::*;
use crate::model::{Event, EventKind};
use std::io::Read;

fn batch() -> Batch {
    let at = DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z")
        .expect("time")
        .with_timezone(&Utc);
    Batch {
        batch_id: "b-1".into(),
        events: vec![
            Event {
                server: Some("main-db".into()),
                ..Event::new(
                    "e-1".into(),
                    EventKind::PgActivity,
                    at,
                    &serde_json::json!({"pid": 7}),
                )
                .expect("event")
            },
            // Spooled by an older agent: no server on the row.
            Event::new("e-2".into(), EventKind::PgLocks, at, &serde_json::json!({}))
                .expect("event"),
            // The agent's own.
            Event::new("e-3".into(), EventKind::Agent, at, &serde_json::json!({})).expect("event"),
        ],
        seqs: vec![1, 2, 3],
    }
}

#[test]
fn envelope_has_the_contract_fields() {
    let s = Origin {
        project: "shop".into(),
        host: "db1".into(),
        server: Default::default(),
        server_name: "db1".into(),
        projects: Vec::new(),
        fleet: false,
    };
    let at = DateTime::parse_from_rfc3339("2026-11-26T10:00:01Z")
        .expect("time")
        .with_timezone(&Utc);
    let json = envelope_json(&s, &batch(), at);
    let v: serde_json::Value = serde_json::from_slice(&json).expect("json");
    assert_eq!(
        v,
        serde_json::json!({
            "project": "shop",
            "agent": {"host": "db1", "version": crate::VERSION},
            "batch_id": "b-1",
            "sent_at": "2026-11-26T10:00:01.000000Z",
            "events": [{"id": "e-1", "kind": "pg_activity", "collected_at": "2026-11-26T10:00:00.000000Z",
                        "project": "shop", "server": "main-db", "data": {"pid": 7}},
                       {"id": "e-2", "kind": "pg_locks", "collected_at": "2026-11-26T10:00:00.000000Z",
                        "project": "shop", "server": "db1", "data": {}},
                       {"id": "e-3", "kind": "agent", "collected_at": "2026-11-26T10:00:00.000000Z",
                        "project": "shop", "data": {}}]
        })
    );
}

#[test]
fn gzip_round_trips() {
    let body = encode_body(b"{\"a\":1}".to_vec(), Compression::Gzip).expect("gzip");
    let mut out = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut out)
        .expect("gunzip");
    assert_eq!(out, "{\"a\":1}");
    assert_eq!(
        encode_body(b"x".to_vec(), Compression::None).expect("plain"),
        b"x"
    );
}
