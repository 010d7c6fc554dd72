use super::*;
use crate::model::{Event, EventKind};
use std::io::Read;

fn batch() -> Batch {
    let at = DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z")
        .expect("time")
        .with_timezone(&Utc);
    Batch {
        batch_id: "b-1".into(),
        events: vec![Event::new(
            "e-1".into(),
            EventKind::PgActivity,
            at,
            &serde_json::json!({"pid": 7}),
        )
        .expect("event")],
    }
}

#[test]
fn envelope_has_the_contract_fields() {
    let s = Sender {
        project: "shop".into(),
        host: "db1".into(),
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
                        "project": "shop", "data": {"pid": 7}}]
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

#[test]
fn only_2xx_acks() {
    for s in [200, 201, 202, 204, 299] {
        assert_eq!(classify(s), Verdict::Ack, "{s}");
    }
    for s in [100, 301, 400, 401, 403, 408, 413, 429, 500, 503] {
        assert_eq!(classify(s), Verdict::Retry, "{s}");
    }
}

#[test]
fn backoff_doubles_with_jitter_up_to_max_and_resets() {
    let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
    let ceilings: Vec<u64> = (0..6)
        .map(|_| {
            let c = b.ceiling();
            let d = b.next_delay();
            assert!(d >= c / 2 && d <= c, "{d:?} outside [{:?}, {c:?}]", c / 2);
            c.as_millis() as u64
        })
        .collect();
    assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
    assert_eq!(b.failures(), 6);
    b.reset();
    assert_eq!(b.ceiling(), Duration::from_millis(100));
    for _ in 0..100 {
        b.next_delay();
    }
    assert_eq!(b.ceiling(), Duration::from_secs(1));
}
