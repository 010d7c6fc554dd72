//! `cargo bench`: the places every event passes through — log parsing per format (and
//! shaping into events), event building, the sampler's window, the spool's append and
//! drain, batch encoding. Plain timing (no framework) so the numbers are easy to read:
//! each figure is the best of five runs.
//!
//! The targets and what was measured against them are in BENCHMARKS.md; the
//! whole-agent figures against the peers come from `scripts/bench-peers.sh`.

use std::time::{Duration, Instant};

use chrono::Utc;
use postgres_agent::config::Compression;
use postgres_agent::model::{Event, EventKind, Output};

use postgres_agent::shipper::{encode_body, envelope_json, Origin};
use postgres_agent::spool::Spool;

const L: Output = Output::Listener;

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

/// A stderr log like a busy server's, with prefix `%m [%p] %q%u@%d %a `: mostly
/// statement durations, some connections, errors with DETAIL/STATEMENT, multi-line
/// statements, checkpoints and autovacuum reports.
fn stderr_log(bytes: usize) -> Vec<u8> {
    let mut out = String::with_capacity(bytes + 4096);
    let mut i = 0usize;
    while out.len() < bytes {
        let pid = 20_000 + i % 97;
        let ts = format!(
            "2026-11-26 10:{:02}:{:02}.{:03} UTC",
            (i / 60_000) % 60,
            (i / 1000) % 60,
            i % 1000
        );
        let p = format!("{ts} [{pid}] web@shop bitville-0f1c2b7e-0d3a-4c55-9a8e-1b2c3d4e5f60 ");
        match i % 20 {
            0 => out.push_str(&format!("{p}LOG:  connection authorized: user=web database=shop application_name=bitville-0f1c2b7e-0d3a-4c55-9a8e-1b2c3d4e5f60\n")),
            1 => out.push_str(&format!("{p}ERROR:  duplicate key value violates unique constraint \"orders_pkey\"\n{p}DETAIL:  Key (id)=({i}) already exists.\n{p}STATEMENT:  INSERT INTO orders (id, customer_id, total) VALUES ({i}, 42, 19.99)\n")),
            2 => out.push_str(&format!("{p}LOG:  duration: 1532.118 ms  statement: SELECT o.id, o.total\n\t  FROM orders o\n\t  JOIN customers c ON c.id = o.customer_id\n\t WHERE o.created_at > now() - interval '1 day'\n")),
            3 => out.push_str(&format!("{ts} [{}] LOG:  checkpoint complete: wrote 1203 buffers (7.3%); 0 WAL file(s) added, 0 removed, 2 recycled; write=26.915 s, sync=0.013 s, total=26.960 s; sync files=41, longest=0.004 s, average=0.001 s; distance=31042 kB, estimate=32145 kB\n", 19_999)),
            _ => out.push_str(&format!("{p}LOG:  duration: 0.{:03} ms  statement: SELECT id, email, name FROM customers WHERE id = {i} AND tenant_id = 7\n", i % 1000)),
        }
        i += 1;
    }
    out.into_bytes()
}

/// A stderr log written by hostile sessions, prefix `%m [%p] %q%u@%d %a %h `: application
/// names full of spaces and forged severities (a backtracking matcher took seconds on
/// such lines).
fn hostile_log(bytes: usize) -> Vec<u8> {
    const APPS: [&str; 4] = [
        "a b c d e f g h i j k l m n o p q r s t",
        "bitville-11111111-2222-3333-4444-555555555555 PANIC:  x",
        "evil LOG:  duration: 123456.0 ms  statement: DROP TABLE orders",
        "x @ y / z : LOG:  ERROR:  FATAL:  DETAIL:  a b c d e f",
    ];
    let mut out = String::with_capacity(bytes + 4096);
    let mut i = 0usize;
    while out.len() < bytes {
        let app = APPS[i % APPS.len()];
        let p = format!(
            "2026-11-26 10:00:00.{:03} UTC [{}] web@shop {app} [local] ",
            i % 1000,
            30_000 + i % 7
        );
        out.push_str(&format!(
            "{p}ERROR:  division by zero\n{p}STATEMENT:  SELECT 1/0 -- {i} a b c d e\n"
        ));
        i += 1;
    }
    out.into_bytes()
}

/// One message of [`stderr_log`]'s mix, for the csvlog and jsonlog writers.
struct Message {
    ts: String,
    pid: usize,
    severity: &'static str,
    sqlstate: &'static str,
    text: String,
    detail: Option<String>,
    statement: Option<String>,
}

const APP: &str = "bitville-0f1c2b7e-0d3a-4c55-9a8e-1b2c3d4e5f60";

fn message(i: usize) -> Message {
    let (severity, sqlstate, text, detail, statement) = match i % 20 {
        0 => ("LOG", "00000", format!("connection authorized: user=web database=shop application_name={APP}"), None, None),
        1 => ("ERROR", "23505", "duplicate key value violates unique constraint \"orders_pkey\"".to_string(), Some(format!("Key (id)=({i}) already exists.")), Some(format!("INSERT INTO orders (id, customer_id, total) VALUES ({i}, 42, 19.99)"))),
        2 => ("LOG", "00000", "duration: 1532.118 ms  statement: SELECT o.id, o.total\n\t  FROM orders o\n\t  JOIN customers c ON c.id = o.customer_id\n\t WHERE o.created_at > now() - interval '1 day'".to_string(), None, None),
        _ => ("LOG", "00000", format!("duration: 0.{:03} ms  statement: SELECT id, email, name FROM customers WHERE id = {i} AND tenant_id = 7", i % 1000), None, None),
    };
    Message {
        ts: format!(
            "2026-11-26 10:{:02}:{:02}.{:03} UTC",
            (i / 60_000) % 60,
            (i / 1000) % 60,
            i % 1000
        ),
        pid: 20_000 + i % 97,
        severity,
        sqlstate,
        text,
        detail,
        statement,
    }
}

/// At least `bytes` of log: one line per message, written by `line`.
fn synthetic(bytes: usize, line: impl Fn(usize, &Message) -> String) -> Vec<u8> {
    let mut out = String::with_capacity(bytes + 4096);
    let mut i = 0usize;
    while out.len() < bytes {
        out.push_str(&line(i, &message(i)));
        i += 1;
    }
    out.into_bytes()
}

/// The messages of [`stderr_log`] as csvlog (PostgreSQL 14+ columns).
fn csv_log(bytes: usize) -> Vec<u8> {
    let q =
        |t: Option<&String>| t.map_or(String::new(), |t| format!("\"{}\"", t.replace('"', "\"\"")));
    synthetic(bytes, |i, m| {
        format!(
            "{},\"web\",\"shop\",{pid},\"[local]\",6745e0a1.{pid:x},{i},\"SELECT\",2026-11-26 10:00:00 UTC,3/{i},0,{},{},{},{},,,,,{},,,\"{APP}\",\"client backend\",,0\n",
            m.ts,
            m.severity,
            m.sqlstate,
            q(Some(&m.text)),
            q(m.detail.as_ref()),
            q(m.statement.as_ref()),
            pid = m.pid,
        )
    })
}

/// The messages of [`stderr_log`] as jsonlog (PostgreSQL 15+).
fn json_log(bytes: usize) -> Vec<u8> {
    synthetic(bytes, |i, m| {
        let mut r = serde_json::json!({
            "timestamp": m.ts, "user": "web", "dbname": "shop", "pid": m.pid,
            "remote_host": "[local]", "session_id": format!("6745e0a1.{:x}", m.pid),
            "line_num": i, "ps": "SELECT", "session_start": "2026-11-26 10:00:00 UTC",
            "vxid": format!("3/{i}"), "txid": 0, "error_severity": m.severity,
            "state_code": m.sqlstate, "message": m.text, "application_name": APP,
            "backend_type": "client backend", "query_id": 0,
        });
        if let Some(d) = &m.detail {
            r["detail"] = d.as_str().into();
        }
        if let Some(s) = &m.statement {
            r["statement"] = s.as_str().into();
        }
        r.to_string() + "\n"
    })
}

/// Parses `log` the way the tailer does (1 MiB reads, message boundaries carried over);
/// with `shape`, every record also becomes a pg_log event (classified, JSON).
fn parse_all(
    log: &[u8],
    parser: &mut postgres_agent::logs::LogParser,
    shaper: Option<&postgres_agent::logs::Shaper>,
) -> usize {
    use postgres_agent::logs::Flush;
    let mut pos = 0;
    let mut n = 0;
    let mut out = Vec::new();
    let mut seen = postgres_agent::model::LogInsights::default();
    let now = Utc::now();
    let format = parser.format();
    while pos < log.len() {
        let end = (pos + (1 << 20)).min(log.len());
        let flush = if end == log.len() {
            Flush::Force
        } else {
            Flush::No
        };
        out.clear();
        let used = parser.parse(&log[pos..end], pos as u64, flush, &mut out, 10_000);
        n += out.len();
        if let Some(s) = shaper {
            for r in out.drain(..) {
                let e = s.event(
                    r,
                    "/var/log/postgresql/postgresql.log",
                    format,
                    "803-1a2b-00ff",
                    now,
                    &mut seen,
                );
                std::hint::black_box(e);
            }
        }
        pos += used.max(1);
    }
    n
}

fn log_bench() {
    use postgres_agent::logs::{redact::Redact, Format, LogParser, Shaper};
    // BENCH_LOG=FILE [BENCH_PREFIX='…'] measures a real log instead of the synthetic one.
    let (log, prefix) = match std::env::var_os("BENCH_LOG") {
        Some(f) => (
            std::fs::read(&f).expect("BENCH_LOG"),
            std::env::var("BENCH_PREFIX").unwrap_or_else(|_| "%m [%p] ".into()),
        ),
        None => (stderr_log(64 << 20), "%m [%p] %q%u@%d %a ".to_string()),
    };
    let hostile = hostile_log(16 << 20);
    let hprefix = "%m [%p] %q%u@%d %a %h ";
    let mut hparser = LogParser::new(Format::Stderr, hprefix);
    let mut hrecords = 0;
    let t = best(|| {
        let t = Instant::now();
        hrecords = parse_all(&hostile, &mut hparser, None);
        t.elapsed()
    });
    println!(
        "stderr hostile log parse (prefix {hprefix:?}): {:>6.0} MB/s ({hrecords} messages)",
        hostile.len() as f64 / 1e6 / t.as_secs_f64()
    );
    let mb = log.len() as f64 / 1e6;
    let mut parser = LogParser::new(Format::Stderr, &prefix);
    let mut records = 0;
    let parse = best(|| {
        let t = Instant::now();
        records = parse_all(&log, &mut parser, None);
        t.elapsed()
    });
    println!(
        "stderr log parse (prefix {prefix:?}):  {:>6.0} MB/s ({records} messages in {mb:.0} MB)",
        mb / parse.as_secs_f64()
    );
    let shaper = Shaper::new(postgres_agent::config::default_pattern(), Redact::None);
    let shaped = best(|| {
        let t = Instant::now();
        parse_all(&log, &mut parser, Some(&shaper));
        t.elapsed()
    });
    println!(
        "stderr log parse + classify + event JSON:          {:>6.0} MB/s ({:.0}k events/s)",
        mb / shaped.as_secs_f64(),
        records as f64 / shaped.as_secs_f64() / 1e3
    );
    let shaper = Shaper {
        redact: Redact::Literals,
        ..shaper
    };
    let redacted = best(|| {
        let t = Instant::now();
        parse_all(&log, &mut parser, Some(&shaper));
        t.elapsed()
    });
    println!(
        "  … with redact = literals:                        {:>6.0} MB/s",
        mb / redacted.as_secs_f64()
    );
    let shaper = Shaper {
        redact: Redact::None,
        ..shaper
    };
    for (name, format, log) in [
        ("csvlog", Format::Csv, csv_log(64 << 20)),
        ("jsonlog", Format::Json, json_log(64 << 20)),
    ] {
        let mb = log.len() as f64 / 1e6;
        let mut parser = LogParser::new(format, "");
        let mut records = 0;
        let parse = best(|| {
            let t = Instant::now();
            records = parse_all(&log, &mut parser, None);
            t.elapsed()
        });
        let shaped = best(|| {
            let t = Instant::now();
            parse_all(&log, &mut parser, Some(&shaper));
            t.elapsed()
        });
        println!(
            "{name:<7} parse: {:>6.0} MB/s; + classify + event JSON: {:>6.0} MB/s ({records} messages in {mb:.0} MB)",
            mb / parse.as_secs_f64(),
            mb / shaped.as_secs_f64()
        );
    }
}

/// The sampler's window: 300 sessions a sample, 20 of them active under 20 requests,
/// 60 samples, then the summaries.
fn sampler_bench() {
    use postgres_agent::sources::sampler::window::{Sampled, Window};
    use postgres_agent::sources::session::Session;
    let session = |pid: i32, active: bool| Session {
        pid,
        datname: Some("shop".into()),
        usename: Some("web".into()),
        application_name: Some(format!(
            "bitville-{:08x}-0d3a-4c55-9a8e-1b2c3d4e5f60",
            pid % 20
        )),
        client_addr: Some("10.1.2.3".into()),
        state: Some(if active { "active" } else { "idle" }.into()),
        wait_event_type: (!active).then(|| "Client".into()),
        wait_event: (!active).then(|| "ClientRead".into()),
        query: Some(format!(
            "SELECT o.id FROM orders o WHERE o.customer_id = {pid}"
        )),
        query_truncated: false,
        query_id: Some(4_242 + i64::from(pid % 7)),
        query_fingerprint: Some(format!("{:016x}", pid % 7)),
        xact_age_s: active.then_some(0.1),
        query_age_s: Some(0.1),
        state_age_s: Some(0.1),
        backend_xid: None,
        correlation_id: active.then(|| format!("{:08x}-0d3a-4c55-9a8e-1b2c3d4e5f60", pid % 20)),
        correlation_source: None,
        trace_id: None,
        span_id: None,
        not_utf8: false,
    };
    let sample: Vec<Sampled> = (0..300)
        .map(|pid| Sampled {
            session: session(pid, pid < 20),
            backend_type: Some("client backend".into()),
            blockers: vec![],
        })
        .collect();
    let start = Utc::now();
    let mut summaries = 0;
    let t = best(|| {
        let t = Instant::now();
        let mut w = Window::holding(start, Duration::from_secs(60), 10_000);
        for i in 0..60 {
            w.add(start + chrono::Duration::seconds(i), &sample);
        }
        summaries = w
            .close(
                start + chrono::Duration::seconds(60),
                Duration::from_secs(1),
            )
            .len();
        t.elapsed()
    });
    println!(
        "sampler window, 60 samples of 300 sessions + close: {:>6.2} ms ({:.1} µs per sample, {summaries} summaries)",
        t.as_secs_f64() * 1e3,
        t.as_secs_f64() * 1e6 / 60.0
    );
}

/// The one SQL lexer against PostgreSQL's own scanner (`pg_query`, libpg_query) on the
/// same statements: what reading every query text with the real scanner would cost.
fn sql_bench() {
    let statements: Vec<String> = (0..2_000)
        .map(|i| {
            format!(
                "select o.id, o.total, c.name /* orders page */ from orders o join customers c \
                 on c.id = o.customer_id where o.created_at > now() - interval '{i} days' \
                 and c.email = 'user{i}@example.com' and o.note <> E'it\\'s' \
                 order by o.created_at desc limit 50 /*request_id='req-{i}',traceparent=\
                 '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/"
            )
        })
        .collect();
    let bytes: usize = statements.iter().map(String::len).sum();
    let mut n = 0;
    let ours = best(|| {
        let t = Instant::now();
        n = statements
            .iter()
            .map(|s| postgres_agent::sql::Lexer::new(s).count())
            .sum::<usize>();
        t.elapsed()
    });
    let theirs = best(|| {
        let t = Instant::now();
        for s in &statements {
            n += pg_query::scan(s).map_or(0, |r| r.tokens.len());
        }
        t.elapsed()
    });
    let fingerprint = best(|| {
        let t = Instant::now();
        for s in &statements {
            n += postgres_agent::fingerprint::fingerprint(s).map_or(0, |f| f.len());
        }
        t.elapsed()
    });
    let per = |d: Duration| d.as_secs_f64() * 1e6 / statements.len() as f64;
    println!(
        "SQL lexer, {} statements of {} bytes: ours {:>6.2} µs each ({:.0} MB/s), pg_query::scan {:>6.2} µs ({:.1}x), fingerprint {:>6.2} µs ({n} tokens)",
        statements.len(),
        bytes / statements.len(),
        per(ours),
        bytes as f64 / ours.as_secs_f64() / 1e6,
        per(theirs),
        theirs.as_secs_f64() / ours.as_secs_f64(),
        per(fingerprint),
    );
}

/// The database's metrics page with 20,000 tables (4 databases of 5,000, each with its
/// primary key), 500
/// statements, 350 settings: render time (one thread, so CPU time), bytes, and the
/// memory the tables' readings hold.
fn metrics_bench() {
    use postgres_agent::board::{self, Parts, Posted, TableRow, Tables, TABLE_COLUMNS};
    use postgres_agent::metrics::database::{render_small, TablePages};
    use std::sync::Arc;
    let now = std::time::SystemTime::now();
    fn posted<T>(at: std::time::SystemTime, v: T) -> Option<Posted<T>> {
        Some(Posted {
            at,
            value: Arc::new(v),
        })
    }
    let before = resident();
    let mut tables = Tables::default();
    let names: Vec<String> = (0..4).map(|d| format!("shop_{d}")).collect();
    for i in 0..20_000i64 {
        let mut values = [0.0; TABLE_COLUMNS.len()];
        for (j, v) in values.iter_mut().enumerate() {
            *v = (i * 37 + j as i64 * 1_000_003) as f64;
        }
        let index = (
            format!("orders_archive_{i:05}_pkey"),
            std::array::from_fn(|j| (i * 41 + j as i64 * 999_983) as f64),
        );
        tables.rows.insert(
            (i % 4, i),
            Arc::new(TableRow::new(
                (
                    &names[(i % 4) as usize],
                    "public",
                    &format!("orders_archive_{i:05}"),
                ),
                values,
                [index],
            )),
        );
    }
    let held = resident().saturating_sub(before);
    let statements: Vec<board::StatementTotals> = (0..500)
        .map(|i| board::StatementTotals {
            queryid: -4_611_686_018_427_387_904 + i * 7_919,
            user: "web".into(),
            datname: "shop_0".into(),
            calls: 1e6 + i as f64,
            seconds: 1234.5 + i as f64,
            rows: 5e6,
            block_read_seconds: 1.5,
            block_write_seconds: 0.25,
        })
        .collect();
    let settings: Vec<board::Setting> = (0..350)
        .map(|i| board::Setting {
            name: format!("setting_{i}"),
            setting: (i * 8).to_string(),
            unit: if i % 3 == 0 { "kB".into() } else { "ms".into() },
            short_desc: "Sets something the server does, in a sentence of ordinary length.".into(),
            vartype: "integer".into(),
        })
        .collect();
    let parts = Parts {
        up: posted(now, true),
        tables: posted(now, tables),
        statements: posted(now, statements),
        settings: posted(now, settings),
        ..Parts::default()
    };
    let mut bytes = 0;
    let mut largest = 0;
    let took = best(|| {
        let t = Instant::now();
        let p = parts.clone();
        let mut text = String::new();
        render_small(&p, "/var/run/postgresql:5432", now, &mut text);
        bytes = text.len();
        if let Some(t) = p.tables {
            for chunk in TablePages::new(t.value, "/var/run/postgresql:5432") {
                bytes += chunk.len();
                largest = largest.max(chunk.capacity());
            }
        }
        t.elapsed()
    });
    println!(
        "metrics page, 20,000 tables and 500 statements: {:.1} ms to render {:.1} MB (largest chunk {} KB); the tables' readings hold {:.1} MB",
        took.as_secs_f64() * 1e3,
        bytes as f64 / 1e6,
        largest / 1024,
        held as f64 / 1e6,
    );
}

/// This process's resident bytes.
fn resident() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn best<F: FnMut() -> Duration>(mut f: F) -> Duration {
    (0..5).map(|_| f()).min().unwrap_or_default()
}

fn main() {
    // BENCH_ONLY=sql: the SQL lexer against PostgreSQL's scanner alone.
    if std::env::var("BENCH_ONLY").as_deref() == Ok("sql") {
        sql_bench();
        return;
    }
    // BENCH_ONLY=metrics: the database's metrics page alone.
    if std::env::var("BENCH_ONLY").as_deref() == Ok("metrics") {
        metrics_bench();
        return;
    }
    // BENCH_ONLY=spool: the spool and encoding figures alone.
    // BENCH_ONLY=cycle: the spool's busy cycle alone.
    if !matches!(
        std::env::var("BENCH_ONLY").as_deref(),
        Ok("spool" | "cycle")
    ) {
        log_bench();
        sampler_bench();
    }
    // BENCH_ONLY=cycle: 2,000 events are enough (and run under valgrind in seconds).
    let n = if std::env::var("BENCH_ONLY").as_deref() == Ok("cycle") {
        2_000
    } else {
        100_000
    };
    let mut events: Vec<Event> = Vec::new();
    let build = best(|| {
        let t = Instant::now();
        events = (0..n).map(event).collect();
        t.elapsed()
    });
    println!(
        "event building (activity-shaped, ~1 KB JSON): {:>9.0} events/s",
        n as f64 / build.as_secs_f64()
    );
    let bytes: usize = events.iter().map(|e| e.data.get().len()).sum();

    let append = best(|| {
        if std::env::var("BENCH_ONLY").as_deref() == Ok("cycle") {
            return Duration::from_secs(1);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path()).expect("open");
        // Shared with the spool as a source's hand-over is (built first: not the
        // spool's cost).
        let handed: Vec<_> = events
            .chunks(500)
            .map(|c| std::sync::Arc::new(c.to_vec()))
            .collect();
        let t = Instant::now();
        for chunk in handed {
            s.append_shared(chunk, None).expect("append");
        }
        t.elapsed()
    });
    println!(
        "spool append, batches of 500: {:>9.0} events/s ({:.0} MB/s of event data)",
        n as f64 / append.as_secs_f64(),
        bytes as f64 / append.as_secs_f64() / 1e6
    );

    let drain = best(|| {
        if std::env::var("BENCH_ONLY").as_deref() == Ok("cycle") {
            return Duration::from_secs(1);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path()).expect("open");
        for chunk in events.chunks(500) {
            s.append(chunk).expect("append");
        }
        let t = Instant::now();
        while let Some(b) = s.next_batch(L, 500).expect("batch") {
            s.ack(L, &b.batch_id).expect("ack");
        }
        t.elapsed()
    });
    println!(
        "spool next_batch + ack of 500: {:>9.0} events/s",
        n as f64 / drain.as_secs_f64()
    );

    // A busy server's cycle as the daemon runs it (scripts/overhead.sh): three sources
    // hand over 205, 205 and 2 events, then the shipper takes them as one batch and acks
    // it. 200 cycles in a row, so the WAL fills and is checkpointed as it is there.
    let cycles: usize = std::env::var("BENCH_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(200);
    let cycle = best(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path()).expect("open");
        // The hand-overs are built first: what the sources do is not the spool's cost.
        let handed: Vec<Vec<std::sync::Arc<Vec<Event>>>> = (0..cycles)
            .map(|c| {
                let at = c * 412 % (n - 412);
                [(0, 205), (205, 410), (410, 412)]
                    .iter()
                    .map(|&(from, to)| std::sync::Arc::new(events[at + from..at + to].to_vec()))
                    .collect()
            })
            .collect();
        let t = Instant::now();
        for cycle in handed {
            for events in cycle {
                s.append_shared(events, None).expect("append");
            }
            while let Some(b) = s.next_batch(L, 1000).expect("batch") {
                s.ack(L, &b.batch_id).expect("ack");
            }
        }
        t.elapsed() / cycles as u32
    });
    println!(
        "spool, a cycle of 205 + 205 + 2 events handed over, taken and acked: {:>6.2} ms",
        cycle.as_secs_f64() * 1e3
    );
    if std::env::var("BENCH_ONLY").as_deref() == Ok("cycle") {
        return;
    }

    let origin = Origin {
        project: "shop-prod".into(),
        host: "db1".into(),
        server: Default::default(),
        server_name: "db1".into(),
        projects: Vec::new(),
        fleet: false,
    };
    let batch = postgres_agent::model::Batch {
        batch_id: "b".into(),
        events: events[..500].to_vec(),
        seqs: (0..500).collect(),
    };
    let mut out_len = 0;
    let encode = best(|| {
        let t = Instant::now();
        for _ in 0..20 {
            let body = encode_body(
                envelope_json(&origin, &batch, Utc::now()),
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

    let mut otlp_len = 0;
    let otlp = best(|| {
        let t = Instant::now();
        for _ in 0..20 {
            let req = postgres_agent::shipper::otlp::request(&origin, "postgresql", &batch);
            let body =
                encode_body(prost::Message::encode_to_vec(&req), Compression::Gzip).expect("gzip");
            otlp_len = body.len();
        }
        t.elapsed() / 20
    });
    println!(
        "OTLP log records + gzip of a 500-event batch: {:>6.2} ms ({:.0} MB/s in, {:.1}x smaller)",
        otlp.as_secs_f64() * 1e3,
        batch_bytes as f64 / otlp.as_secs_f64() / 1e6,
        batch_bytes as f64 / otlp_len as f64
    );

    // Without gzip: the one-pass writer against building prost messages and encoding them.
    let one_pass = best(|| {
        let t = Instant::now();
        for _ in 0..20 {
            otlp_len = postgres_agent::shipper::otlp::encode(&origin, "postgresql", &batch).len();
        }
        t.elapsed() / 20
    });
    let via_prost = best(|| {
        let t = Instant::now();
        for _ in 0..20 {
            let req = postgres_agent::shipper::otlp::request(&origin, "postgresql", &batch);
            otlp_len = prost::Message::encode_to_vec(&req).len();
        }
        t.elapsed() / 20
    });
    println!(
        "OTLP encoding alone, 500 events: one pass {:.2} ms, via prost messages {:.2} ms",
        one_pass.as_secs_f64() * 1e3,
        via_prost.as_secs_f64() * 1e3
    );

    // Two outputs: each takes every event (read twice), a row leaves when both have it.
    let drain2 = best(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path()).expect("open");
        s.set_outputs(&[L, Output::Otlp]).expect("outputs");
        for chunk in events.chunks(500) {
            s.append(chunk).expect("append");
        }
        let t = Instant::now();
        for o in [L, Output::Otlp] {
            while let Some(b) = s.next_batch(o, 500).expect("batch") {
                s.ack(o, &b.batch_id).expect("ack");
            }
        }
        t.elapsed()
    });
    println!(
        "spool next_batch + ack of 500, two outputs: {:>9.0} events/s (each event to both)",
        n as f64 / drain2.as_secs_f64()
    );
}
