use super::*;
use crate::model::Batch;

const L: Output = Output::Listener;

fn ev(i: u32) -> Event {
    Event::new(
        format!("t:{i}"),
        EventKind::PgActivity,
        Utc::now(),
        &serde_json::json!({ "i": i }),
    )
    .expect("encode")
}

fn ids(b: &Batch) -> Vec<String> {
    b.events.iter().map(|e| e.id.clone()).collect()
}

/// The page cache is small (SQLite's 2 MB default was a tenth of the agent's RSS).
#[test]
fn the_page_cache_is_capped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Spool::open(dir.path()).expect("open");
    let kib: i64 = s
        .conn
        .query_row("PRAGMA cache_size", [], |r| r.get(0))
        .expect("pragma");
    assert_eq!(kib, -(CACHE_KIB as i64));
}

#[test]
fn batches_come_out_oldest_first_and_repeat_until_acked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path()).expect("open");
    s.append(&(0..5).map(ev).collect::<Vec<_>>())
        .expect("append");
    let b1 = s.next_batch(L, 3).expect("batch").expect("some");
    assert_eq!(ids(&b1), vec!["t:0", "t:1", "t:2"]);
    assert_eq!(b1.events[1].data.get(), r#"{"i":1}"#);
    // Not acknowledged: the same batch again, same id.
    let again = s.next_batch(L, 3).expect("batch").expect("some");
    assert_eq!(again.batch_id, b1.batch_id);
    assert_eq!(ids(&again), ids(&b1));
    assert_eq!(s.ack(L, &b1.batch_id).expect("ack"), 3);
    let b2 = s.next_batch(L, 3).expect("batch").expect("some");
    assert_ne!(b2.batch_id, b1.batch_id);
    assert_eq!(ids(&b2), vec!["t:3", "t:4"]);
    assert_eq!(s.ack(L, &b2.batch_id).expect("ack"), 2);
    assert!(s.next_batch(L, 3).expect("batch").is_none());
    let st = s.stats().expect("stats");
    assert_eq!(
        (st.depth, st.bytes, st.appended_total, st.acked_total),
        (0, 0, 5, 5)
    );
}

#[test]
fn reopened_spool_keeps_unacked_batch_and_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = {
        let mut s = Spool::open(dir.path()).expect("open");
        s.append(&(0..4).map(ev).collect::<Vec<_>>())
            .expect("append");
        s.next_batch(L, 2).expect("batch").expect("some")
    };
    let mut s = Spool::open(dir.path()).expect("reopen");
    let st = s.stats().expect("stats");
    assert_eq!(st.depth, 4);
    assert_eq!(st.bytes, 4 * r#"{"i":0}"#.len() as u64);
    assert!(st.oldest_age_s.is_some());
    let b = s.next_batch(L, 2).expect("batch").expect("some");
    assert_eq!(b.batch_id, first.batch_id);
    assert_eq!(ids(&b), vec!["t:0", "t:1"]);
}

#[test]
fn acking_an_unknown_batch_deletes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path()).expect("open");
    s.append(&[ev(1)]).expect("append");
    assert_eq!(s.ack(L, "nope").expect("ack"), 0);
    assert_eq!(s.stats().expect("stats").depth, 1);
}

#[test]
fn checkpoints_are_written_with_their_events_and_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path()).expect("open");
    assert_eq!(read_checkpoint(dir.path(), "x"), None);
    let c = |v: &[u8]| Checkpoint::value("x", v.to_vec());
    s.append_with(&[ev(1)], Some(&c(b"one"))).expect("append");
    s.append_with(&[ev(2)], Some(&c(b"two"))).expect("append");
    assert_eq!(read_checkpoint(dir.path(), "x"), Some(b"two".to_vec()));
    assert_eq!(s.stats().expect("stats").depth, 2);
    // Acknowledging events leaves the checkpoint alone.
    let b = s.next_batch(L, 10).expect("batch").expect("some");
    s.ack(L, &b.batch_id).expect("ack");
    assert_eq!(read_checkpoint(dir.path(), "x"), Some(b"two".to_vec()));
}

#[test]
fn checkpoint_rows_follow_their_journal_and_merge_when_one_was_not_written() {
    use crate::model::RowChanges;
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path()).expect("open");
    let cp = |v: &str, replace: bool, set: &[(&str, Option<&str>)]| Checkpoint {
        name: "b".into(),
        value: v.as_bytes().to_vec(),
        rows: RowChanges {
            replace,
            set: set
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        },
    };
    let read = || {
        let (v, rows) = read_checkpoint_with_rows(dir.path(), "b", true).expect("some");
        let rows: Vec<String> = rows
            .into_iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(&k),
                    String::from_utf8_lossy(&v)
                )
            })
            .collect();
        (String::from_utf8(v).expect("utf8"), rows.join(","))
    };
    s.append_with(
        &[],
        Some(&cp("h1", true, &[("a", Some("1")), ("b", Some("2"))])),
    )
    .expect("append");
    assert_eq!(read(), ("h1".into(), "a=1,b=2".into()));
    s.append_with(
        &[ev(1)],
        Some(&cp(
            "h2",
            false,
            &[("a", None), ("b", Some("3")), ("c", Some("4"))],
        )),
    )
    .expect("append");
    assert_eq!(read(), ("h2".into(), "b=3,c=4".into()));
    // Two journals of which the first was never written: merged, nothing lost.
    let merged = cp("h4", false, &[("c", Some("6"))]).after(cp(
        "h3",
        false,
        &[("b", None), ("c", Some("5")), ("d", Some("7"))],
    ));
    s.append_with(&[], Some(&merged)).expect("append");
    assert_eq!(read(), ("h4".into(), "c=6,d=7".into()));
    // A new state after an unwritten journal: only the new state.
    let fresh = cp("h6", true, &[("z", Some("9"))]).after(cp("h5", false, &[("y", Some("8"))]));
    s.append_with(&[], Some(&fresh)).expect("append");
    assert_eq!(read(), ("h6".into(), "z=9".into()));
    // A journal after an unwritten new state keeps the replace.
    let kept = cp("h8", false, &[("x", Some("1"))]).after(cp("h7", true, &[("w", Some("2"))]));
    assert!(kept.rows.replace);
    s.append_with(&[], Some(&kept)).expect("append");
    assert_eq!(read(), ("h8".into(), "w=2,x=1".into()));
    // A value-only checkpoint leaves rows alone; other names are apart.
    s.append_with(&[], Some(&Checkpoint::value("b", b"h9".to_vec())))
        .expect("append");
    s.append_with(&[], Some(&Checkpoint::value("other", b"o".to_vec())))
        .expect("append");
    assert_eq!(read(), ("h9".into(), "w=2,x=1".into()));
    assert_eq!(
        read_checkpoint_with_rows(dir.path(), "other", true),
        Some((b"o".to_vec(), vec![]))
    );
}

#[test]
fn rows_of_a_split_batch_are_acked_or_quarantined_one_by_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path()).expect("open");
    s.append(&[ev(1), ev(2), ev(3)]).expect("append");
    let b = s.next_batch(L, 10).expect("batch").expect("some");
    assert_eq!(b.seqs.len(), 3);
    assert_eq!(s.ack_rows(L, &b.seqs[..1]).expect("ack rows"), 1);
    assert_eq!(
        s.quarantine(L, &b.seqs[1..2], "HTTP 400")
            .expect("quarantine"),
        1
    );
    let st = s.stats().expect("stats");
    assert_eq!((st.depth, st.quarantined), (1, 1));
    // The rest of the batch goes out again under the same id.
    let again = s.next_batch(L, 10).expect("batch").expect("some");
    assert_eq!(again.batch_id, b.batch_id);
    assert_eq!(again.seqs, b.seqs[2..].to_vec());
    s.ack(L, &again.batch_id).expect("ack");
    let st = s.stats().expect("stats");
    assert_eq!((st.depth, st.quarantined), (0, 1));
}

#[test]
fn an_unreadable_row_goes_to_quarantine_instead_of_blocking_the_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Written by an earlier run: read back from disk (this run's own rows are also
    // held in memory, see the tail's tests below).
    Spool::open(dir.path())
        .expect("open")
        .append(&[ev(1), ev(2)])
        .expect("append");
    let mut s = Spool::open(dir.path()).expect("reopen");
    s.conn
        .execute(
            "UPDATE events SET data = 'not json' WHERE id = ?1",
            [ev(1).id],
        )
        .expect("corrupt a row");
    let b = s.next_batch(L, 10).expect("batch").expect("some");
    assert_eq!(b.events.len(), 1);
    assert_eq!(b.events[0].id, ev(2).id);
    assert_eq!(s.stats().expect("stats").quarantined, 1);
}

/// Every batch of a spool, acked as it comes: (ids, seqs) per batch.
fn drain(s: &mut Spool, max: u32) -> Vec<(Vec<String>, Vec<i64>)> {
    let mut out = Vec::new();
    while let Some(b) = s.next_batch(L, max).expect("batch") {
        assert_eq!(s.ack(L, &b.batch_id).expect("ack"), b.events.len() as u64);
        out.push((ids(&b), b.seqs));
    }
    out
}

fn names(from: u32, to: u32) -> Vec<String> {
    (from..to).map(|i| format!("t:{i}")).collect()
}

#[test]
fn this_runs_events_are_taken_from_memory_in_order_with_their_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path()).expect("open");
    for round in 0..3 {
        s.append_shared(
            std::sync::Arc::new((round * 5..round * 5 + 5).map(ev).collect()),
            None,
        )
        .expect("append");
    }
    // The rows on disk are spoiled: a batch of them could only come from memory.
    s.conn
        .execute("UPDATE events SET data = 'not json', id = 'x'", [])
        .expect("spoil");
    let b = s.next_batch(L, 7).expect("batch").expect("some");
    assert_eq!(ids(&b), names(0, 7));
    assert_eq!(b.seqs, (1..=7).collect::<Vec<i64>>());
    assert_eq!(b.events[3].data.get(), r#"{"i":3}"#);
    // Not acknowledged: the same batch again, from the table (same rows, same id).
    s.conn
        .execute("UPDATE events SET data = '{\"again\":' || seq || '}'", [])
        .expect("mark");
    let again = s.next_batch(L, 7).expect("batch").expect("some");
    assert_eq!(again.batch_id, b.batch_id);
    assert_eq!(again.seqs, b.seqs);
    assert_eq!(again.events[0].data.get(), r#"{"again":1}"#);
    assert_eq!(s.ack(L, &b.batch_id).expect("ack"), 7);
    // The rest: the tail's, after the acknowledgement cut it.
    let rest = s.next_batch(L, 100).expect("batch").expect("some");
    assert_eq!(ids(&rest), names(7, 15));
    assert_eq!(s.ack(L, &rest.batch_id).expect("ack"), 8);
    let st = s.stats().expect("stats");
    assert_eq!((st.depth, st.bytes, st.acked_total), (0, 0, 15));
    assert!(s.next_batch(L, 100).expect("batch").is_none());
}

#[test]
fn rows_of_an_earlier_run_or_unknown_to_memory_go_first_and_nothing_is_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    Spool::open(dir.path())
        .expect("open")
        .append(&(0..3).map(ev).collect::<Vec<_>>())
        .expect("append");
    let mut s = Spool::open(dir.path()).expect("reopen");
    s.append(&(3..6).map(ev).collect::<Vec<_>>())
        .expect("append");
    // Behind a backlog no tail is started: it would only hold memory.
    assert_eq!(s.tail.span(), None);
    // Older rows first, two at a time, all from the table.
    assert_eq!(
        drain(&mut s, 2),
        vec![
            (names(0, 2), vec![1, 2]),
            (names(2, 4), vec![3, 4]),
            (names(4, 6), vec![5, 6]),
        ]
    );
    // On the empty table a tail starts. A row written behind its back, between two
    // hand-overs and after them.
    s.append(&[ev(6)]).expect("append");
    assert_eq!(s.tail.span(), Some((7, 7)));
    let foreign = ev(99);
    s.conn
        .execute(
            "INSERT INTO events (id, kind, collected_at, data, bytes) VALUES (?1, 'pg_activity', '2026-12-01T00:00:00Z', ?2, 6)",
            params![foreign.id, foreign.data.get()],
        )
        .expect("insert");
    s.append(&[ev(7)]).expect("append");
    s.conn
        .execute(
            "INSERT INTO events (id, kind, collected_at, data, bytes) VALUES ('t:100', 'pg_activity', '2026-12-01T00:00:00Z', '{}', 2)",
            [],
        )
        .expect("insert");
    assert_eq!(
        drain(&mut s, 10),
        vec![(
            vec![
                "t:6".to_string(),
                "t:99".into(),
                "t:7".into(),
                "t:100".into()
            ],
            vec![7, 8, 9, 10]
        )]
    );
    // And with the table empty, this run's events come from memory again.
    s.append(&[ev(8), ev(9)]).expect("append");
    assert_eq!(drain(&mut s, 10), vec![(names(8, 10), vec![11, 12])]);
    let st = s.stats().expect("stats");
    assert_eq!((st.depth, st.bytes), (0, 0));
}

#[test]
fn rows_taken_one_by_one_are_not_sent_again_from_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path()).expect("open");
    s.append(&(0..4).map(ev).collect::<Vec<_>>())
        .expect("append");
    let b = s.next_batch(L, 10).expect("batch").expect("some");
    // A split: the first two accepted, the third refused; the fourth still waits.
    assert_eq!(s.ack_rows(L, &b.seqs[..2]).expect("ack rows"), 2);
    assert_eq!(s.quarantine(L, &b.seqs[2..3], "HTTP 400").expect("q"), 1);
    s.append(&[ev(4)]).expect("append");
    let again = s.next_batch(L, 10).expect("batch").expect("some");
    assert_eq!(again.batch_id, b.batch_id);
    assert_eq!(ids(&again), names(3, 4));
    s.ack(L, &again.batch_id).expect("ack");
    assert_eq!(drain(&mut s, 10), vec![(names(4, 5), vec![5])]);
    let st = s.stats().expect("stats");
    assert_eq!((st.depth, st.quarantined, st.acked_total), (0, 1, 4));
}

#[test]
fn an_acknowledgement_of_some_rows_leaves_the_rest_with_exact_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path()).expect("open");
    let evs: Vec<Event> = (0..10).map(ev).collect();
    let all: u64 = evs.iter().map(|e| e.data.get().len() as u64).sum();
    s.append(&evs).expect("append");
    let b = s.next_batch(L, 4).expect("batch").expect("some");
    // Only part of the table: deleted row by row.
    assert_eq!(s.ack(L, &b.batch_id).expect("ack"), 4);
    let first4: u64 = evs[..4].iter().map(|e| e.data.get().len() as u64).sum();
    let st = s.stats().expect("stats");
    assert_eq!((st.depth, st.bytes), (6, all - first4));
    // All of it: emptied whole.
    let b = s.next_batch(L, 100).expect("batch").expect("some");
    assert_eq!(s.ack(L, &b.batch_id).expect("ack"), 6);
    let st = s.stats().expect("stats");
    assert_eq!((st.depth, st.bytes, st.acked_total), (0, 0, 10));
    let n: i64 = s
        .conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 0);
    // Sequence numbers are not reused after the table was emptied.
    s.append(&[ev(10)]).expect("append");
    assert_eq!(drain(&mut s, 10), vec![(names(10, 11), vec![11])]);
}

#[test]
fn a_shipper_behind_by_more_than_the_tails_cap_is_served_from_the_table_until_it_catches_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path()).expect("open");
    let mb = |i: u32| {
        Event::new(
            format!("t:{i}"),
            EventKind::PgLog,
            Utc::now(),
            &serde_json::json!({ "i": i, "pad": "x".repeat(1_000_000) }),
        )
        .expect("encode")
    };
    for i in 0..3 {
        s.append(&[mb(i)]).expect("append");
    }
    assert_eq!(s.tail.span(), Some((1, 3)));
    // Over 4 MB: the tail ends, and does not start again behind the backlog.
    for i in 3..6 {
        s.append(&[mb(i)]).expect("append");
        assert_eq!(s.tail.span(), None);
    }
    assert_eq!(
        drain(&mut s, 4),
        vec![(names(0, 4), vec![1, 2, 3, 4]), (names(4, 6), vec![5, 6])]
    );
    // Caught up: the next hand-over starts a tail again.
    s.append(&[ev(6)]).expect("append");
    assert_eq!(s.tail.span(), Some((7, 7)));
    assert_eq!(drain(&mut s, 4), vec![(names(6, 7), vec![7])]);
}

fn big(i: u32) -> Event {
    Event::new(
        format!("big:{i:06}"),
        if i.is_multiple_of(3) {
            EventKind::PgLog
        } else {
            EventKind::PgActivity
        },
        Utc::now(),
        &serde_json::json!({ "i": i, "pad": "x".repeat(1000) }),
    )
    .expect("encode")
}

#[test]
fn the_cap_holds_on_disk_by_evicting_the_oldest_and_reporting_the_loss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path()).expect("open");
    let cap = 1 << 20;
    s.set_cap(cap, "h");
    let mut max_seen = 0;
    for chunk in 0..50u32 {
        let evs: Vec<Event> = (chunk * 100..chunk * 100 + 100).map(big).collect();
        s.append(&evs).expect("append");
        s.enforce_cap().expect("enforce");
        max_seen = max_seen.max(s.disk_bytes());
    }
    // Within the cap plus one chunk of appends (100 events of ~1 KB) and the WAL's
    // checkpoint interval.
    assert!(max_seen <= cap + cap / 4, "spool grew to {max_seen} bytes");
    let st = s.stats().expect("stats");
    assert!(st.evicted_total > 3000, "{st:?}");
    // What is left is the newest events, contiguous, plus the loss reports.
    let rows: Vec<(String, String)> = s
        .conn
        .prepare("SELECT id, data FROM events ORDER BY seq")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let kept: Vec<u32> = rows
        .iter()
        .filter_map(|(id, _)| id.strip_prefix("big:").and_then(|n| n.parse().ok()))
        .collect();
    assert_eq!(kept.last(), Some(&4999));
    assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "not contiguous");
    assert_eq!(kept.len() as u64 + st.evicted_total, 5000);
    let reports: Vec<serde_json::Value> = rows
        .iter()
        .filter(|(id, _)| id.starts_with("agent:h:events_evicted:"))
        .map(|(_, d)| serde_json::from_str(d).expect("json"))
        .collect();
    assert!(!reports.is_empty());
    let reported: u64 = reports
        .iter()
        .map(|r| r["evicted"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(reported, st.evicted_total);
    let by_kind: u64 = reports
        .iter()
        .flat_map(|r| r["by_kind"].as_object().cloned().unwrap_or_default())
        .map(|(_, n)| n.as_u64().unwrap_or(0))
        .sum();
    assert_eq!(by_kind, st.evicted_total);
    assert!(reports[0]["oldest_collected_at"].is_string());
}

#[test]
fn quarantine_is_never_evicted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path()).expect("open");
    s.set_cap(1 << 20, "h");
    s.append(&[big(0)]).expect("append");
    let b = s.next_batch(L, 1).expect("batch").expect("some");
    s.quarantine(L, &b.seqs, "HTTP 400").expect("quarantine");
    for chunk in 1..30u32 {
        let evs: Vec<Event> = (chunk * 100..chunk * 100 + 100).map(big).collect();
        s.append(&evs).expect("append");
        s.enforce_cap().expect("enforce");
    }
    assert_eq!(s.stats().expect("stats").quarantined, 1);
}

#[test]
fn an_unreadable_spool_is_moved_aside_and_a_fresh_one_started() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(SPOOL_FILE), vec![0xA5u8; 8192]).expect("garbage");
    let (mut s, moved) = Spool::open_or_recover(dir.path()).expect("recover");
    let aside = moved.expect("moved aside");
    assert!(aside
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("spool.db.corrupt.")));
    assert_eq!(std::fs::read(&aside).expect("kept"), vec![0xA5u8; 8192]);
    s.append(&[ev(1)]).expect("the fresh spool works");
    // A healthy spool is opened as it is.
    drop(s);
    let (s, moved) = Spool::open_or_recover(dir.path()).expect("open");
    assert!(moved.is_none());
    assert_eq!(s.stats().expect("stats").depth, 1);
}

#[test]
fn a_full_disk_fails_the_append_loses_nothing_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path()).expect("open");
    s.append(&[ev(1)]).expect("append");
    // SQLite's own disk-full path: no page may be added.
    let pages: i64 = s
        .conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .expect("pages");
    s.conn
        .pragma_update(None, "max_page_count", pages)
        .expect("limit");
    let many: Vec<Event> = (0..200).map(big).collect();
    let err = s.append(&many).expect_err("disk full");
    assert!(err.to_string().contains("full"), "{err}");
    assert_eq!(
        s.stats().expect("stats").depth,
        1,
        "a failed append adds nothing"
    );
    // Space returns.
    s.conn
        .pragma_update(None, "max_page_count", 1_000_000)
        .expect("unlimit");
    s.append(&many).expect("append after recovery");
    assert_eq!(s.stats().expect("stats").depth, 201);
}

#[test]
fn a_spool_deleted_or_replaced_while_open_is_copied_back_to_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path()).expect("open");
    let c = Checkpoint::value("pos", b"here".to_vec());
    s.append_with(&(0..5).map(ev).collect::<Vec<_>>(), Some(&c))
        .expect("append");
    let handed = s.next_batch(L, 2).expect("batch").expect("some");
    assert!(!s.detached());
    // Deleted (database, WAL and all), then written to: SQLite writes into the ghost.
    for f in ["spool.db", "spool.db-wal", "spool.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    s.append(&[ev(5)]).expect("append to the unlinked file");
    assert!(s.detached());
    let (carried, aside) = s.reattach().expect("reattach");
    assert_eq!((carried, aside), (6, None));
    assert!(!s.detached());
    // A restart finds everything: the events, the batch id handed out, the checkpoint.
    drop(s);
    let mut s = Spool::open(dir.path()).expect("reopen");
    assert_eq!(s.stats().expect("stats").depth, 6);
    assert_eq!(read_checkpoint(dir.path(), "pos"), Some(b"here".to_vec()));
    let again = s.next_batch(L, 2).expect("batch").expect("some");
    assert_eq!(again.batch_id, handed.batch_id);

    // Replaced by another file: that one is moved aside, ours copied back.
    std::fs::remove_file(dir.path().join("spool.db")).expect("rm");
    std::fs::write(dir.path().join("spool.db"), b"someone else's file").expect("write");
    assert!(s.detached());
    let (carried, aside) = s.reattach().expect("reattach");
    assert_eq!(carried, 6);
    let aside = aside.expect("moved aside");
    assert_eq!(std::fs::read(aside).expect("read"), b"someone else's file");
}

#[test]
fn a_batch_an_older_agent_handed_out_keeps_its_id_and_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path()).expect("open");
    s.append(&(1..=5).map(ev).collect::<Vec<_>>())
        .expect("append");
    // What an older agent left: its open batch's id written on the oldest rows.
    s.conn
        .execute(
            "UPDATE events SET batch_id = 'old-batch' WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT 3)",
            [],
        )
        .expect("mark");
    drop(s);
    let mut s = Spool::open(dir.path()).expect("reopen");
    let b = s.next_batch(L, 100).expect("batch").expect("some");
    assert_eq!(b.batch_id, "old-batch");
    assert_eq!(ids(&b), ["t:1", "t:2", "t:3"]);
    assert_eq!(s.ack(L, "old-batch").expect("ack"), 3);
    let b = s.next_batch(L, 100).expect("batch").expect("some");
    assert_eq!(ids(&b), ["t:4", "t:5"]);
    assert_ne!(b.batch_id, "old-batch");
    // A batch whose rows all went one by one is over; the next one starts after it.
    assert_eq!(s.ack_rows(L, &b.seqs).expect("rows"), 2);
    s.append(&[ev(6)]).expect("append");
    let c = s.next_batch(L, 100).expect("batch").expect("some");
    assert_eq!(ids(&c), ["t:6"]);
    assert_ne!(c.batch_id, b.batch_id);
    assert_eq!(
        s.ack(L, &b.batch_id).expect("stale ack"),
        0,
        "a stale ack takes nothing"
    );
    assert_eq!(s.stats().expect("stats").depth, 1);
}

#[test]
fn a_batch_is_bounded_by_bytes_and_holds_one_event_at_least() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path()).expect("open");
    let size = big(1).data.get().len() as u64;
    s.append(&(1..=7).map(big).collect::<Vec<_>>())
        .expect("append");
    // Three events' worth of bytes (and a little): three events, though 100 may go.
    let b = s
        .next_batch_within(L, 100, 3 * size + 10)
        .expect("batch")
        .expect("some");
    assert_eq!(ids(&b), ["big:000001", "big:000002", "big:000003"]);
    // The same batch again until acknowledged, whatever the limit asked now.
    let again = s
        .next_batch_within(L, 100, 1)
        .expect("batch")
        .expect("some");
    assert_eq!(again.batch_id, b.batch_id);
    assert_eq!(again.events.len(), 3);
    s.ack(L, &b.batch_id).expect("ack");
    // A limit below one event still moves the queue, one event at a time.
    let one = s
        .next_batch_within(L, 100, 1)
        .expect("batch")
        .expect("some");
    assert_eq!(ids(&one), ["big:000004"]);
    s.ack(L, &one.batch_id).expect("ack");
    let rest = s
        .next_batch_within(L, 2, u64::MAX)
        .expect("batch")
        .expect("some");
    assert_eq!(
        ids(&rest),
        ["big:000005", "big:000006"],
        "the count still applies"
    );
}

/// The journal of checkpoint rows against a model: thousands of changes (puts, removals,
/// replacements), folded into the rows whenever it grows as large as they are, across a
/// reopen; what is read back is always the model, and the journal stays bounded.
#[test]
fn checkpoint_row_journals_fold_into_the_rows_and_read_back_as_the_model() {
    use crate::model::RowChanges;
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path()).expect("open");
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut rng = fastrand::Rng::with_seed(7);
    let log_rows = || -> i64 {
        let c = rusqlite::Connection::open(dir.path().join(SPOOL_FILE)).expect("open");
        c.query_row("SELECT count(*) FROM checkpoint_log", [], |r| r.get(0))
            .expect("count")
    };
    let mut max_log = 0;
    for step in 0..400u32 {
        let replace = step == 0 || rng.u32(0..150) == 0;
        let mut set = BTreeMap::new();
        if replace {
            model.clear();
        }
        for _ in 0..rng.usize(0..60) {
            let key = format!("k{:04}", rng.u32(0..1500)).into_bytes();
            if !replace && rng.u32(0..5) == 0 {
                model.remove(&key);
                set.insert(key, None);
            } else {
                let v = format!("v{step}-{}", rng.u32(..)).into_bytes();
                model.insert(key.clone(), v.clone());
                set.insert(key, Some(v));
            }
        }
        let cp = Checkpoint {
            name: "j".into(),
            value: format!("h{step}").into_bytes(),
            rows: RowChanges { replace, set },
        };
        s.append_with(&[], Some(&cp)).expect("append");
        if step == 200 {
            drop(s);
            s = Spool::open(dir.path()).expect("reopen");
        }
        if step % 7 == 0 || step == 399 {
            let (v, rows) = read_checkpoint_with_rows(dir.path(), "j", true).expect("some");
            assert_eq!(v, format!("h{step}").into_bytes());
            let got: BTreeMap<Vec<u8>, Vec<u8>> = rows.into_iter().collect();
            assert_eq!(got, model, "step {step}");
        }
        max_log = max_log.max(log_rows());
    }
    // Folded along the way: never more than the threshold plus one cycle's changes.
    let bound = (CHECKPOINT_LOG_MIN as i64).max(model.len() as i64 + 60) + 60;
    assert!(
        max_log > 0 && max_log <= bound,
        "journal peaked at {max_log} rows"
    );
}

const O: Output = Output::Otlp;

fn both(dir: &Path) -> Spool {
    let mut s = Spool::open(dir).expect("open");
    s.set_outputs(&[L, O]).expect("outputs");
    s
}

fn pending(s: &Spool) -> (u64, u64, u64) {
    (s.pending(L), s.pending(O), s.stats().expect("stats").depth)
}

#[test]
fn the_backlog_a_reader_waits_on_is_what_the_output_furthest_along_has_not_taken() {
    // One output: everything held.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut one = Spool::open(dir.path()).expect("open");
    let events: Vec<Event> = (0..10).map(ev).collect();
    let each = events[0].data.get().len() as u64;
    one.append(&events).expect("append");
    assert_eq!(one.backlog_bytes(), 10 * each);
    let b = one.next_batch(L, 4).expect("batch").expect("some");
    one.ack(L, &b.batch_id).expect("ack");
    assert_eq!(one.backlog_bytes(), 6 * each);
    // Two outputs: the one that took 8 sets it, however far behind the other is.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = both(dir.path());
    s.append(&events).expect("append");
    assert_eq!(s.backlog_bytes(), 10 * each);
    let b = s.next_batch(L, 8).expect("batch").expect("some");
    s.ack(L, &b.batch_id).expect("ack");
    assert_eq!(pending(&s), (2, 10, 10));
    assert_eq!(s.backlog_bytes(), 2 * each);
    let b = s.next_batch(O, 10).expect("batch").expect("some");
    s.ack(O, &b.batch_id).expect("ack");
    assert_eq!(pending(&s), (2, 0, 2));
    assert_eq!(s.backlog_bytes(), 0);
}

#[test]
fn two_outputs_each_take_every_event_and_a_row_leaves_when_both_have_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = both(dir.path());
    s.append(&(0..5).map(ev).collect::<Vec<_>>())
        .expect("append");
    assert_eq!(pending(&s), (5, 5, 5));
    let l1 = s.next_batch(L, 3).expect("batch").expect("some");
    assert_eq!(ids(&l1), ["t:0", "t:1", "t:2"]);
    // The other output's batch is its own: everything, under another id.
    let o1 = s.next_batch(O, 10).expect("batch").expect("some");
    assert_eq!(ids(&o1), ["t:0", "t:1", "t:2", "t:3", "t:4"]);
    assert_ne!(o1.batch_id, l1.batch_id);
    assert_eq!(s.ack(L, &l1.batch_id).expect("ack"), 3);
    // The listener has 0..2, the OTLP receiver nothing yet: every row stays.
    assert_eq!(pending(&s), (2, 5, 5));
    // Acknowledging under the wrong output changes nothing.
    assert_eq!(s.ack(L, &o1.batch_id).expect("ack"), 0);
    assert_eq!(s.ack(O, &o1.batch_id).expect("ack"), 5);
    assert_eq!(pending(&s), (2, 0, 2));
    let l2 = s.next_batch(L, 10).expect("batch").expect("some");
    assert_eq!(ids(&l2), ["t:3", "t:4"]);
    assert!(s.next_batch(O, 10).expect("batch").is_none());
    s.ack(L, &l2.batch_id).expect("ack");
    assert_eq!(pending(&s), (0, 0, 0));
    let st = s.stats().expect("stats");
    assert_eq!(st.pending_by_output.get("listener"), Some(&0));
    assert_eq!(st.pending_by_output.get("otlp"), Some(&0));
}

#[test]
fn an_output_that_is_down_holds_only_its_own_rows_across_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let handed = {
        let mut s = both(dir.path());
        for round in 0..3u32 {
            s.append(&(round * 4..round * 4 + 4).map(ev).collect::<Vec<_>>())
                .expect("append");
            let b = s.next_batch(L, 100).expect("batch").expect("some");
            s.ack(L, &b.batch_id).expect("ack");
        }
        // The OTLP receiver is down: its batch is handed out, never acknowledged.
        let o = s.next_batch(O, 5).expect("batch").expect("some");
        assert_eq!(pending(&s), (0, 12, 12));
        o
    };
    let mut s = both(dir.path());
    assert_eq!(pending(&s), (0, 12, 12));
    assert!(s.next_batch(L, 100).expect("batch").is_none());
    let again = s.next_batch(O, 5).expect("batch").expect("some");
    assert_eq!(again.batch_id, handed.batch_id);
    assert_eq!(ids(&again), ids(&handed));
    s.ack(O, &again.batch_id).expect("ack");
    let rest = s.next_batch(O, 100).expect("batch").expect("some");
    assert_eq!(rest.events.len(), 7);
    s.ack(O, &rest.batch_id).expect("ack");
    assert_eq!(pending(&s), (0, 0, 0));
}

#[test]
fn split_acknowledgements_and_quarantine_belong_to_one_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = both(dir.path());
    s.append(&(0..4).map(ev).collect::<Vec<_>>())
        .expect("append");
    let b = s.next_batch(L, 10).expect("batch").expect("some");
    assert_eq!(s.ack_rows(L, &b.seqs[..1]).expect("ack rows"), 1);
    assert_eq!(
        s.quarantine(L, &b.seqs[1..2], "HTTP 400 from the listener")
            .expect("quarantine"),
        1
    );
    // Counted once only.
    assert_eq!(s.ack_rows(L, &b.seqs[..1]).expect("ack rows"), 0);
    assert_eq!(pending(&s), (2, 4, 4));
    // The listener's batch goes on with what it has not had; same id.
    let again = s.next_batch(L, 10).expect("batch").expect("some");
    assert_eq!(
        (again.batch_id.as_str(), ids(&again)),
        (b.batch_id.as_str(), vec!["t:2".to_string(), "t:3".into()])
    );
    // The OTLP receiver gets all four, the one the listener refused too.
    let o = s.next_batch(O, 10).expect("batch").expect("some");
    assert_eq!(ids(&o), ["t:0", "t:1", "t:2", "t:3"]);
    s.ack(O, &o.batch_id).expect("ack");
    // t:0 and t:1 are done for both: gone; t:2, t:3 wait for the listener.
    assert_eq!(pending(&s), (2, 0, 2));
    s.ack(L, &again.batch_id).expect("ack");
    assert_eq!(pending(&s), (0, 0, 0));
    let st = s.stats().expect("stats");
    assert_eq!(st.quarantined, 1);
    let reason: String = s
        .conn
        .query_row("SELECT reason FROM quarantine", [], |r| r.get(0))
        .expect("reason");
    assert_eq!(reason, "HTTP 400 from the listener");
    let left: i64 = s
        .conn
        .query_row("SELECT count(*) FROM output_done", [], |r| r.get(0))
        .expect("count");
    assert_eq!(left, 0, "done marks of rows that left are gone");
}

#[test]
fn a_split_batch_whose_rows_are_all_done_moves_the_cursor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = both(dir.path());
    s.append(&(0..3).map(ev).collect::<Vec<_>>())
        .expect("append");
    let b = s.next_batch(O, 10).expect("batch").expect("some");
    s.ack_rows(O, &b.seqs).expect("ack rows");
    s.append(&[ev(3)]).expect("append");
    // Nothing of the old batch is left for this output: a new one with the new row.
    let next = s.next_batch(O, 10).expect("batch").expect("some");
    assert_ne!(next.batch_id, b.batch_id);
    assert_eq!(ids(&next), ["t:3"]);
    assert_eq!(pending(&s), (4, 1, 4));
}

#[test]
fn outputs_added_start_with_what_is_spooled_and_removed_ones_are_forgotten() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut s = Spool::open(dir.path()).expect("open");
        s.set_outputs(&[L]).expect("outputs");
        s.append(&(0..6).map(ev).collect::<Vec<_>>())
            .expect("append");
        let b = s.next_batch(L, 2).expect("batch").expect("some");
        s.ack(L, &b.batch_id).expect("ack");
    }
    {
        // OTLP added: it starts with the four rows still spooled.
        let mut s = both(dir.path());
        assert_eq!(pending(&s), (4, 4, 4));
        let o = s.next_batch(O, 10).expect("batch").expect("some");
        assert_eq!(ids(&o), ["t:2", "t:3", "t:4", "t:5"]);
        s.ack(O, &o.batch_id).expect("ack");
        let l = s.next_batch(L, 1).expect("batch").expect("some");
        s.ack(L, &l.batch_id).expect("ack");
        assert_eq!(pending(&s), (3, 0, 3));
    }
    {
        // OTLP removed while it has everything: only the listener's three are left.
        let mut s = Spool::open(dir.path()).expect("open");
        s.set_outputs(&[L]).expect("outputs");
        assert_eq!(pending(&s), (3, 3, 3));
        let l = s.next_batch(L, 10).expect("batch").expect("some");
        assert_eq!(ids(&l), ["t:3", "t:4", "t:5"]);
    }
    {
        // The listener removed with its batch open: the OTLP receiver starts over with
        // what is spooled; the listener's batch is gone.
        let mut s = Spool::open(dir.path()).expect("open");
        s.set_outputs(&[O]).expect("outputs");
        let batches: i64 = s
            .conn
            .query_row("SELECT count(*) FROM batches", [], |r| r.get(0))
            .expect("count");
        assert_eq!(batches, 0);
        let o = s.next_batch(O, 10).expect("batch").expect("some");
        assert_eq!(ids(&o), ["t:3", "t:4", "t:5"]);
        assert_eq!(s.ack(O, &o.batch_id).expect("ack"), 3);
        assert_eq!(s.stats().expect("stats").depth, 0);
    }
}

#[test]
fn an_eviction_says_which_output_lost_what() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = both(dir.path());
    let cap = 1 << 20;
    s.set_cap(cap, "h");
    let mut evicted = 0;
    for chunk in 0..30u32 {
        let evs: Vec<Event> = (chunk * 100..chunk * 100 + 100).map(big).collect();
        s.append(&evs).expect("append");
        // The listener keeps up; the OTLP receiver is down.
        while let Some(b) = s.next_batch(L, 1000).expect("batch") {
            s.ack(L, &b.batch_id).expect("ack");
        }
        if let Some(e) = s.enforce_cap().expect("enforce") {
            evicted += e.evicted;
        }
    }
    assert!(evicted > 1000, "{evicted}");
    let reports: Vec<serde_json::Value> = s
        .conn
        .prepare("SELECT data FROM events WHERE id LIKE 'agent:h:events_evicted:%'")
        .expect("prepare")
        .query_map([], |r| r.get::<_, String>(0))
        .expect("query")
        .map(|d| serde_json::from_str(&d.expect("row")).expect("json"))
        .collect();
    let sum = |o: &str| -> u64 {
        reports
            .iter()
            .map(|r| r["undelivered_by_output"][o].as_u64().expect("count"))
            .sum()
    };
    assert_eq!((sum("listener"), sum("otlp")), (0, evicted));
    // The counts follow what is left (the last report is new to the listener).
    while let Some(b) = s.next_batch(L, 1000).expect("batch") {
        s.ack(L, &b.batch_id).expect("ack");
    }
    let (l, o, depth) = pending(&s);
    assert_eq!((l, o), (0, depth));
}

#[test]
fn each_event_keeps_its_server_from_memory_and_from_the_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let named = |i: u32, server: Option<&str>| Event {
        server: server.map(Into::into),
        ..ev(i)
    };
    let servers = |b: &Batch| -> Vec<Option<String>> {
        b.events
            .iter()
            .map(|e| e.server.as_deref().map(str::to_string))
            .collect()
    };
    let want = vec![Some("db-a".to_string()), None, Some("db-b".to_string())];
    {
        let mut s = Spool::open(dir.path()).expect("open");
        s.append(&[
            named(0, Some("db-a")),
            named(1, None),
            named(2, Some("db-b")),
        ])
        .expect("append");
        let b = s.next_batch(L, 10).expect("batch").expect("some");
        assert_eq!(servers(&b), want);
    }
    // Reopened: read from the table.
    let mut s = Spool::open(dir.path()).expect("open");
    let b = s.next_batch(L, 10).expect("batch").expect("some");
    assert_eq!(servers(&b), want);
}

#[test]
fn an_older_spool_without_servers_is_opened_and_its_rows_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let conn = rusqlite::Connection::open(dir.path().join("spool.db")).expect("create");
        conn.execute_batch(
            "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL,
                 kind TEXT NOT NULL, collected_at TEXT NOT NULL, data TEXT NOT NULL,
                 bytes INTEGER NOT NULL, batch_id TEXT);
             INSERT INTO events (id, kind, collected_at, data, bytes)
                 VALUES ('old-1', 'pg_locks', '2026-11-01T00:00:00.000000Z', '{}', 2);",
        )
        .expect("old schema");
    }
    let mut s = Spool::open(dir.path()).expect("open");
    let b = s.next_batch(L, 10).expect("batch").expect("some");
    assert_eq!(ids(&b), vec!["old-1"]);
    assert_eq!(b.events[0].server, None);
    s.append(&[Event {
        server: Some("db-a".into()),
        ..ev(1)
    }])
    .expect("append after the column was added");
}
