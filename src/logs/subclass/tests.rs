use serde_json::json;

use super::*;

fn refined(sev: &str, message: &str, detail: Option<&str>, context: Option<&str>) -> Refined {
    let langs = Languages::default();
    langs.prefer_locale("de_DE.UTF-8");
    let found = langs
        .find(message)
        .unwrap_or_else(|| panic!("no template: {message}"));
    refine(&langs, &found, message, sev, detail, context)
}

#[test]
fn every_rule_names_a_template_of_the_catalogue() {
    for r in RULES {
        assert!(
            Message::of_template(r.template).is_some(),
            "not in catalogue/en.txt: {:?}",
            r.template
        );
        let convs = super::super::messages::count_conversions(r.template);
        let names = if r.args.is_empty() {
            0
        } else {
            r.args.split(' ').count()
        };
        assert_eq!(names, convs, "one name per argument: {:?}", r.template);
    }
}

#[test]
fn checkpoints_with_every_figure() {
    let r = refined("LOG", "checkpoint complete: wrote 1004 buffers (6.1%), wrote 3 SLRU buffers; 0 WAL file(s) added, 0 removed, 1 recycled; write=0.016 s, sync=0.034 s, total=0.056 s; sync files=51, longest=0.020 s, average=0.001 s; distance=9803 kB, estimate=9803 kB; lsn=0/20DDF38, redo lsn=0/20DDF38", None, None);
    assert_eq!(r.subclass, Some("checkpoint_complete"));
    assert_eq!(
        serde_json::Value::Object(r.figures),
        json!({
            "buffers_written": 1004, "buffers_pct": 6.1, "slru_buffers_written": 3,
            "wal_added": 0, "wal_removed": 0, "wal_recycled": 1,
            "write_s": 0.016, "sync_s": 0.034, "total_s": 0.056, "sync_files": 51,
            "longest_s": 0.02, "average_s": 0.001, "distance_kb": 9803, "estimate_kb": 9803,
            "lsn": "0/20DDF38", "redo_lsn": "0/20DDF38"
        })
    );
    let r = refined(
        "LOG",
        "checkpoint starting: immediate force wait",
        None,
        None,
    );
    assert_eq!(r.subclass, Some("checkpoint_starting"));
    assert_eq!(r.figures["reason"], "immediate force wait");
    let r = refined(
        "LOG",
        "checkpoints are occurring too frequently (18 seconds apart)",
        None,
        None,
    );
    assert_eq!(r.subclass, Some("checkpoints_too_frequent"));
    assert_eq!(r.figures["seconds_apart"], 18);
}

#[test]
fn an_autovacuum_report_line_by_line() {
    let m = "automatic vacuum of table \"shop.public.orders\": index scans: 1\n\
pages: 0 removed, 45 remain, 45 scanned (100.00% of total)\n\
tuples: 10000 removed, 5000 remain, 3 are dead but not yet removable\n\
removable cutoff: 1234, which was 2 XIDs old when operation ended\n\
new relfrozenxid: 1200, which is 5 XIDs ahead of previous value\n\
index scan needed: 45 pages from table (100.00% of total) had 10000 dead item identifiers removed\n\
avg read rate: 0.000 MB/s, avg write rate: 12.500 MB/s\n\
buffer usage: 300 hits, 0 misses, 40 dirtied\n\
WAL usage: 200 records, 40 full page images, 350000 bytes\n\
system usage: CPU: user: 0.01 s, system: 0.00 s, elapsed: 0.02 s";
    let r = refined("LOG", m, None, None);
    assert_eq!(r.subclass, Some("autovacuum_completed"));
    let f = serde_json::Value::Object(r.figures);
    for (k, v) in [
        ("table", json!("shop.public.orders")),
        ("database", json!("shop")),
        ("index_scans", json!(1)),
        ("pages_removed", json!(0)),
        ("pages_remain", json!(45)),
        ("pages_scanned_pct", json!(100.0)),
        ("tuples_removed", json!(10000)),
        ("tuples_remain", json!(5000)),
        ("tuples_dead_not_removable", json!(3)),
        ("removable_cutoff", json!(1234)),
        ("removable_cutoff_age", json!(2)),
        ("relfrozenxid_advance", json!(5)),
        ("write_rate_mbs", json!(12.5)),
        ("buffer_hits", json!(300)),
        ("buffer_dirtied", json!(40)),
        ("wal_fpi", json!(40)),
        ("wal_bytes", json!(350000)),
        ("cpu_user_s", json!(0.01)),
        ("elapsed_s", json!(0.02)),
    ] {
        assert_eq!(f[k], v, "{k}");
    }
}

#[test]
fn locks_with_holders_waiters_and_the_lock_type() {
    let r = refined(
        "LOG",
        "process 4242 still waiting for ShareLock on transaction 731 after 1000.072 ms",
        Some("Processes holding the lock: 4240, 4241. Wait queue: 4242, 4243."),
        Some("while updating tuple (0,1) in relation \"orders\""),
    );
    assert_eq!(r.subclass, Some("lock_waiting"));
    let f = serde_json::Value::Object(r.figures);
    assert_eq!(f["waiting_pid"], 4242);
    assert_eq!(f["lock_mode"], "ShareLock");
    assert_eq!(f["object"], "transaction 731");
    assert_eq!(f["lock_type"], "transaction");
    assert_eq!(f["waited_ms"], 1000.072);
    assert_eq!(f["holder_pids"], json!([4240, 4241]));
    assert_eq!(f["waiter_pids"], json!([4242, 4243]));
    let r = refined(
        "ERROR",
        "deadlock detected",
        Some("Process 10 waits for ShareLock on transaction 7; blocked by process 11.\nProcess 11 waits for ShareLock on transaction 6; blocked by process 10."),
        None,
    );
    assert_eq!(r.subclass, Some("deadlock_detected"));
    assert_eq!(r.figures["deadlock_pids"], json!([10, 11]));
    assert_eq!(r.figures["deadlock_blocked_by"], json!([11, 10]));
}

#[test]
fn connections_read_with_their_optional_parts() {
    let r = refined(
        "LOG",
        "connection authorized: user=app database=shop application_name=psql SSL enabled (protocol=TLSv1.3, cipher=TLS_AES_256_GCM_SHA384, bits=256)",
        None,
        None,
    );
    assert_eq!(r.subclass, Some("connection_authorized"));
    assert_eq!(
        serde_json::Value::Object(r.figures),
        json!({"user": "app", "database": "shop", "application_name": "psql",
               "ssl_protocol": "TLSv1.3", "ssl_cipher": "TLS_AES_256_GCM_SHA384", "ssl_bits": 256})
    );
    let r = refined(
        "LOG",
        "disconnection: session time: 1:02:03.456 user=app database=shop host=10.0.0.7 port=51234",
        None,
        None,
    );
    assert_eq!(r.subclass, Some("disconnection"));
    assert_eq!(r.figures["session_s"], 3723.456);
    assert_eq!(r.figures["host"], "10.0.0.7");
    assert_eq!(r.figures["port"], 51234);
}

#[test]
fn severity_tells_a_failed_login_from_an_undefined_object_and_from_a_raise() {
    assert_eq!(
        refined("FATAL", "role \"bob\" does not exist", None, None).subclass,
        Some("auth_no_such_role")
    );
    assert_eq!(
        refined("ERROR", "role \"bob\" does not exist", None, None).subclass,
        Some("undefined_role")
    );
    // A RAISE NOTICE with a checkpoint's words is the application's text.
    let r = refined("NOTICE", "checkpoint starting: time", None, None);
    assert_eq!((r.subclass, r.figures.is_empty()), (None, true));
}

#[test]
fn constraint_violations_name_their_constraint_and_columns_never_values() {
    let r = refined(
        "ERROR",
        "duplicate key value violates unique constraint \"orders_pkey\"",
        Some("Key (id, region)=(42, secret) already exists."),
        None,
    );
    assert_eq!(r.subclass, Some("unique_violation"));
    assert_eq!(
        serde_json::Value::Object(r.figures),
        json!({"constraint": "orders_pkey", "key_columns": "id, region"})
    );
    let r = refined("ERROR", "permission denied for table orders", None, None);
    assert_eq!(r.subclass, Some("permission_denied"));
    assert_eq!(
        serde_json::Value::Object(r.figures),
        json!({"object_name": "orders", "object_kind": "table"})
    );
}

#[test]
fn a_translated_message_has_the_english_ones_subclass_and_figures() {
    for (sev, english, translated) in [
        (
            "LOG",
            "process 4242 still waiting for ShareLock on transaction 731 after 1000.072 ms",
            "Prozess 4242 wartet immer noch auf ShareLock-Sperre auf Transaktion 731 nach 1000,072 ms",
        ),
        (
            "ERROR",
            "duplicate key value violates unique constraint \"orders_pkey\"",
            "doppelter Schlüsselwert verletzt Unique-Constraint »orders_pkey«",
        ),
        (
            "LOG",
            "temporary file: path \"base/pgsql_tmp/pgsql_tmp1.0\", size 1400000",
            "temporäre Datei: Pfad »base/pgsql_tmp/pgsql_tmp1.0«, Größe 1400000",
        ),
    ] {
        let e = refined(sev, english, None, None);
        let t = refined(sev, translated, None, None);
        assert_eq!(e.subclass, t.subclass, "{translated}");
        // The lock's object is the server's words ("Transaktion 731").
        let strip = |mut f: Map<String, Value>| {
            f.remove("object");
            f.remove("lock_type");
            f
        };
        assert_eq!(strip(e.figures), strip(t.figures), "{translated}");
    }
}

#[test]
fn the_readme_lists_every_subclass() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    for s in subclass_names() {
        assert!(
            readme.contains(&format!("| `{s}` |")) || readme.contains(&format!("`{s}` (")),
            "README.md does not list subclass {s}"
        );
    }
}
