//! `cargo bench`: throughput of the spool and of batch encoding, the two places every
//! event passes through. Plain timing (no framework) so the numbers are easy to read:
//! each figure is the best of five runs.
//!
//! Targets (design.md §10): spool enqueue ≥ 100k events/s in batches.

use std::time::{Duration, Instant};

use chrono::Utc;
use postgres_agent::buffer::Spool;
use postgres_agent::config::Compression;
use postgres_agent::model::{Event, EventKind};
use postgres_agent::shipper::{encode_body, envelope_json, Sender};

/// An event shaped like a pg_activity row (~1 KB of JSON).
fn event(i: usize) -> Event {
    let data = serde_json::json!({
        "pid": 10_000 + i, "datname": "shop", "usename": "web", "application_name":
        "bitville-0f1c2b7e-0d3a-4c55-9a8e-1b2c3d4e5f60", "client_addr": "10.1.2.3",
        "backend_type": "client backend", "state": "active", "wait_event_type": "Lock",
        "wait_event": "transactionid", "query_age_s": 1.25, "xact_age_s": 3.5,
        "query": format!("SELECT o.id, o.total, c.email FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.status = 'open' AND o.created_at > now() - interval '1 day' /* {i} */ {}", "x".repeat(600)),
        "correlation_id": "0f1c2b7e-0d3a-4c55-9a8e-1b2c3d4e5f60",
    });
    Event::new(
        format!("pg_activity:h:{i}"),
        EventKind::PgActivity,
        Utc::now(),
        &data,
    )
    .expect("encode")
}

fn best<F: FnMut() -> Duration>(mut f: F) -> Duration {
    (0..5).map(|_| f()).min().unwrap_or_default()
}

fn main() {
    let n = 100_000;
    let events: Vec<Event> = (0..n).map(event).collect();
    let bytes: usize = events.iter().map(|e| e.data.get().len()).sum();

    let append = best(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path()).expect("open");
        let t = Instant::now();
        for chunk in events.chunks(500) {
            s.append(chunk).expect("append");
        }
        t.elapsed()
    });
    println!(
        "spool append, batches of 500: {:>9.0} events/s ({:.0} MB/s of event data)",
        n as f64 / append.as_secs_f64(),
        bytes as f64 / append.as_secs_f64() / 1e6
    );

    let drain = best(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path()).expect("open");
        for chunk in events.chunks(500) {
            s.append(chunk).expect("append");
        }
        let t = Instant::now();
        while let Some(b) = s.next_batch(500).expect("batch") {
            s.ack(&b.batch_id).expect("ack");
        }
        t.elapsed()
    });
    println!(
        "spool next_batch + ack of 500: {:>9.0} events/s",
        n as f64 / drain.as_secs_f64()
    );

    let sender = Sender {
        project: "shop-prod".into(),
        host: "db1".into(),
    };
    let batch = postgres_agent::model::Batch {
        batch_id: "b".into(),
        events: events[..500].to_vec(),
    };
    let mut out_len = 0;
    let encode = best(|| {
        let t = Instant::now();
        for _ in 0..20 {
            let body = encode_body(
                envelope_json(&sender, &batch, Utc::now()),
                Compression::Gzip,
            )
            .expect("gzip");
            out_len = body.len();
        }
        t.elapsed() / 20
    });
    let batch_bytes: usize = batch.events.iter().map(|e| e.data.get().len()).sum();
    println!(
        "envelope + gzip of a 500-event batch: {:>6.2} ms ({:.0} MB/s in, {:.1}x smaller)",
        encode.as_secs_f64() * 1e3,
        batch_bytes as f64 / encode.as_secs_f64() / 1e6,
        batch_bytes as f64 / out_len as f64
    );
}
