use super::*;

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

#[test]
fn batches_come_out_oldest_first_and_repeat_until_acked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path()).expect("open");
    s.append(&(0..5).map(ev).collect::<Vec<_>>())
        .expect("append");
    let b1 = s.next_batch(3).expect("batch").expect("some");
    assert_eq!(ids(&b1), vec!["t:0", "t:1", "t:2"]);
    assert_eq!(b1.events[1].data.get(), r#"{"i":1}"#);
    // Not acknowledged: the same batch again, same id.
    let again = s.next_batch(3).expect("batch").expect("some");
    assert_eq!(again.batch_id, b1.batch_id);
    assert_eq!(ids(&again), ids(&b1));
    assert_eq!(s.ack(&b1.batch_id).expect("ack"), 3);
    let b2 = s.next_batch(3).expect("batch").expect("some");
    assert_ne!(b2.batch_id, b1.batch_id);
    assert_eq!(ids(&b2), vec!["t:3", "t:4"]);
    assert_eq!(s.ack(&b2.batch_id).expect("ack"), 2);
    assert!(s.next_batch(3).expect("batch").is_none());
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
        s.next_batch(2).expect("batch").expect("some")
    };
    let mut s = Spool::open(dir.path()).expect("reopen");
    let st = s.stats().expect("stats");
    assert_eq!(st.depth, 4);
    assert_eq!(st.bytes, 4 * r#"{"i":0}"#.len() as u64);
    assert!(st.oldest_age_s.is_some());
    let b = s.next_batch(2).expect("batch").expect("some");
    assert_eq!(b.batch_id, first.batch_id);
    assert_eq!(ids(&b), vec!["t:0", "t:1"]);
}

#[test]
fn acking_an_unknown_batch_deletes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path()).expect("open");
    s.append(&[ev(1)]).expect("append");
    assert_eq!(s.ack("nope").expect("ack"), 0);
    assert_eq!(s.stats().expect("stats").depth, 1);
}

#[test]
fn checkpoints_are_written_with_their_events_and_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path()).expect("open");
    assert_eq!(read_checkpoint(dir.path(), "x"), None);
    let c = |v: &[u8]| Checkpoint {
        name: "x".into(),
        value: v.to_vec(),
    };
    s.append_with(&[ev(1)], Some(&c(b"one"))).expect("append");
    s.append_with(&[ev(2)], Some(&c(b"two"))).expect("append");
    assert_eq!(read_checkpoint(dir.path(), "x"), Some(b"two".to_vec()));
    assert_eq!(s.stats().expect("stats").depth, 2);
    // Acknowledging events leaves the checkpoint alone.
    let b = s.next_batch(10).expect("batch").expect("some");
    s.ack(&b.batch_id).expect("ack");
    assert_eq!(read_checkpoint(dir.path(), "x"), Some(b"two".to_vec()));
}

#[test]
fn rows_of_a_split_batch_are_acked_or_quarantined_one_by_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path()).expect("open");
    s.append(&[ev(1), ev(2), ev(3)]).expect("append");
    let b = s.next_batch(10).expect("batch").expect("some");
    assert_eq!(b.seqs.len(), 3);
    assert_eq!(s.ack_rows(&b.seqs[..1]).expect("ack rows"), 1);
    assert_eq!(
        s.quarantine(&b.seqs[1..2], "HTTP 400").expect("quarantine"),
        1
    );
    let st = s.stats().expect("stats");
    assert_eq!((st.depth, st.quarantined), (1, 1));
    // The rest of the batch goes out again under the same id.
    let again = s.next_batch(10).expect("batch").expect("some");
    assert_eq!(again.batch_id, b.batch_id);
    assert_eq!(again.seqs, b.seqs[2..].to_vec());
    s.ack(&again.batch_id).expect("ack");
    let st = s.stats().expect("stats");
    assert_eq!((st.depth, st.quarantined), (0, 1));
}

#[test]
fn an_unreadable_row_goes_to_quarantine_instead_of_blocking_the_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path()).expect("open");
    s.append(&[ev(1), ev(2)]).expect("append");
    s.conn
        .execute(
            "UPDATE events SET data = 'not json' WHERE id = ?1",
            [ev(1).id],
        )
        .expect("corrupt a row");
    let b = s.next_batch(10).expect("batch").expect("some");
    assert_eq!(b.events.len(), 1);
    assert_eq!(b.events[0].id, ev(2).id);
    assert_eq!(s.stats().expect("stats").quarantined, 1);
}
