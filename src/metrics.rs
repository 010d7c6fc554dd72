//! The agent's own health for Prometheus (`[metrics] listen`, opt-in): `GET /metrics` in
//! the text exposition format, built at each scrape from a fresh status snapshot (the
//! same figures `status` shows, at most a ping old), each collector's cycle durations
//! included. Names and units follow Prometheus conventions; the agent's label values
//! come from small fixed sets (child names, outcomes, breaker states, log classes), never
//! from request ids or anything a client chose. With `[metrics] database` the page also
//! carries the database's metrics under postgres_exporter's names ([`database`]), whose
//! labels name the server's objects (databases, tables, roles, slots, standbys) and the
//! top statements' query ids, as the exporter's do, in numbers the config bounds.
//!
//! The server is actix-web's on one worker thread: every connection is its own task, a
//! request head must arrive whole within 5 s, and 256 connections may be open at once,
//! so clients that connect and say nothing, or send a byte a second, hold a connection
//! each for at most 5 s and never a scrape's turn. A scraper that misbehaves costs a
//! closed socket, never a stall of the agent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use prometheus::{Encoder, GaugeVec, IntCounterVec, Opts, Registry, TextEncoder};
use slog::{info, Logger};

use crate::board::Board;
use crate::model::BreakerPhase;
use crate::model::EventKind;
use crate::model::{ChildDetail, ChildId, ChildState, Output, CYCLE_BUCKETS};
use crate::status::StatusSnapshot;

/// Asks the supervisor for a fresh snapshot (answered from its last pings).
#[derive(Message)]
#[rtype(result = "StatusSnapshot")]
pub struct GetSnapshot;

/// Metrics of one scrape, registered as they are set.
struct Page {
    r: Registry,
}

impl Page {
    fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        let v = IntCounterVec::new(Opts::new(name, help), labels)?;
        self.r.register(Box::new(v.clone()))?;
        Ok(v)
    }

    fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<GaugeVec> {
        let v = GaugeVec::new(Opts::new(name, help), labels)?;
        self.r.register(Box::new(v.clone()))?;
        Ok(v)
    }

    /// A counter that holds `v` (a total kept by the agent, read from the snapshot).
    fn counter(&self, name: &str, help: &str, v: u64) -> prometheus::Result<()> {
        let c = prometheus::IntCounter::new(name, help)?;
        c.inc_by(v);
        self.r.register(Box::new(c))
    }

    fn counter_f(&self, name: &str, help: &str, v: f64) -> prometheus::Result<()> {
        let c = prometheus::Counter::new(name, help)?;
        c.inc_by(v);
        self.r.register(Box::new(c))
    }

    fn gauge(&self, name: &str, help: &str, v: f64) -> prometheus::Result<()> {
        let g = prometheus::Gauge::new(name, help)?;
        g.set(v);
        self.r.register(Box::new(g))
    }
}

fn unix_s(t: chrono::DateTime<chrono::Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

fn flag(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}

/// The text exposition of a snapshot and the cycle histograms.
pub fn render(s: &StatusSnapshot) -> prometheus::Result<String> {
    let p = Page { r: Registry::new() };
    p.gauge_vec(
        "postgres_agent_info",
        "Always 1; the agent's version as a label",
        &["version"],
    )?
    .with_label_values(&[&s.version])
    .set(1.0);
    p.gauge(
        "postgres_agent_start_time_seconds",
        "When the agent started, Unix time",
        unix_s(s.started_at),
    )?;

    children(&p, s)?;
    let events = sources(&p, s)?;
    log_reader(&p, s, &events)?;
    receiver(&p, s)?;
    spool(&p, s)?;
    shippers(&p, s)?;
    process(&p)?;
    let mut families = p.r.gather();
    families.extend(cycle_histograms(s));
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::new();
    TextEncoder::new().encode(&families, &mut out)?;
    let mut text = String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))?;
    // Each server's log in the `[[servers]]` form: one family each, its series
    // labelled with the server's name.
    // The syslog receiver's servers likewise.
    let mut named: Vec<(Option<&str>, &crate::model::LogInsights)> = s
        .logs()
        .map(|(id, d)| (id.server().and_then(|n| n.name()), &d.insights))
        .collect();
    if let Some(r) = s.receiver() {
        named.extend(r.insights.iter().map(|(name, i)| (Some(name.as_str()), i)));
    }
    match named.as_slice() {
        [] => {}
        [(None, i)] => log_insights(i, &mut text),
        several => {
            let pages: Vec<(String, &str)> = several
                .iter()
                .map(|(name, i)| {
                    let mut page = String::new();
                    log_insights(i, &mut page);
                    (page, name.unwrap_or(""))
                })
                .collect();
            database::merge_servers(&pages, &mut text);
        }
    }
    Ok(text)
}

/// What the server's messages said: by class and severity, and the durations they
/// report (slow statements, lock waits that ended, checkpoints, autovacuum runs).
fn log_insights(i: &crate::model::LogInsights, out: &mut String) {
    use database::{Type, Writer};
    let mut w = Writer::new(out);
    w.family(
        "postgres_agent_log_messages_total",
        "Server log messages read, by class and severity (csvlog's error_severity)",
        Type::Counter,
    );
    for ((class, severity), n) in &i.messages {
        w.sample(
            "postgres_agent_log_messages_total",
            &[("class", class), ("error_severity", severity)],
            *n as f64,
        );
    }
    for (name, help, h) in [
        (
            "postgres_agent_log_slow_query_duration_seconds",
            "Durations of statements the server logged (log_min_duration_statement)",
            &i.slow_query_seconds,
        ),
        (
            "postgres_agent_log_lock_wait_seconds",
            "Lock waits that ended, as the server logged them (log_lock_waits: acquired after)",
            &i.lock_wait_seconds,
        ),
        (
            "postgres_agent_log_checkpoint_duration_seconds",
            "Checkpoints and restartpoints the server logged complete (log_checkpoints): total time",
            &i.checkpoint_seconds,
        ),
    ] {
        w.family(name, help, Type::Histogram);
        w.histogram(name, &[], h);
    }
    let name = "postgres_agent_log_autovacuum_duration_seconds";
    w.family(
        name,
        "Autovacuum and autoanalyze runs the server logged (log_autovacuum_min_duration): elapsed time",
        Type::Histogram,
    );
    for (class, h) in &i.autovacuum_seconds {
        w.histogram(name, &[("class", class)], h);
    }
}

/// Each child: up, restarts.
fn children(p: &Page, s: &StatusSnapshot) -> prometheus::Result<()> {
    let fleet = Fleet::of(s);
    let up = p.gauge_vec(
        "postgres_agent_child_up",
        "1 while the child (a source, the spool, the shipper) runs",
        &fleet.names("child"),
    )?;
    let restarts = p.counter_vec(
        "postgres_agent_child_restarts_total",
        "Restarts of the child since the agent started (panicked, stopped or hung)",
        &fleet.names("child"),
    )?;
    for (id, c) in &s.children {
        let name = fleet.values(*id);
        up.with_label_values(&name)
            .set(flag(c.state == ChildState::Running));
        restarts.with_label_values(&name).inc_by(c.restarts);
    }

    Ok(())
}

/// Each source's cycles, errors, events and last success; the events family, which the
/// log reader adds to.
fn sources(p: &Page, s: &StatusSnapshot) -> prometheus::Result<IntCounterVec> {
    let fleet = Fleet::of(s);
    let cycles = p.counter_vec(
        "postgres_agent_source_cycles_total",
        "Collection cycles run",
        &fleet.names("source"),
    )?;
    let errors = p.counter_vec(
        "postgres_agent_source_errors_total",
        "Collection cycles that failed",
        &fleet.names("source"),
    )?;
    let skipped = p.counter_vec(
        "postgres_agent_source_skipped_cycles_total",
        "Cycles skipped because the previous one still ran",
        &fleet.names("source"),
    )?;
    let events = p.counter_vec(
        "postgres_agent_source_events_total",
        "Events the source produced",
        &fleet.names("source"),
    )?;
    let dropped = p.counter_vec(
        "postgres_agent_source_dropped_events_total",
        "Events dropped before the spool took them (backlog over its cap)",
        &fleet.names("source"),
    )?;
    let problem = p.gauge_vec(
        "postgres_agent_source_problem",
        "1 while the source says it is degraded or unavailable (status says why and the fix), else 0",
        &fleet.names("source"),
    )?;
    let last_success = p.gauge_vec(
        "postgres_agent_source_last_success_timestamp_seconds",
        "When the source last completed a cycle (the log reader: a read), Unix time",
        &fleet.names("source"),
    )?;
    for (id, c) in &s.children {
        if !id.is_source() {
            continue;
        }
        let name = fleet.values(*id);
        if let Some(t) = c.last_success {
            last_success.with_label_values(&name).set(unix_s(t));
        }
        let Some(ChildDetail::Collector(d)) = &c.detail else {
            continue;
        };
        cycles.with_label_values(&name).inc_by(d.cycles_total);
        errors.with_label_values(&name).inc_by(d.cycle_errors_total);
        problem.with_label_values(&name).set(
            if d.source_state.as_ref().is_some_and(|st| st.is_problem()) {
                1.0
            } else {
                0.0
            },
        );
        skipped
            .with_label_values(&name)
            .inc_by(d.cycles_skipped_total);
        events.with_label_values(&name).inc_by(d.events_total);
        dropped
            .with_label_values(&name)
            .inc_by(d.dropped_events_total);
    }

    Ok(events)
}

/// The log readers' figures (one per server that reads its log).
fn log_reader(p: &Page, s: &StatusSnapshot, events: &IntCounterVec) -> prometheus::Result<()> {
    let readers: Vec<(ChildId, &crate::model::LogReaderStats)> = s.logs().collect();
    if readers.is_empty() {
        return Ok(());
    }
    let fleet = Fleet::of(s);
    let server_names = fleet.names("server");
    let by_server = &server_names[1..];
    let family = |name: &str, help: &str| p.gauge_vec(name, help, by_server);
    let counter = |name: &str, help: &str| p.counter_vec(name, help, by_server);
    let behind = family(
        "postgres_agent_log_bytes_behind",
        "Bytes of the server log not read yet",
    )?;
    let read = counter(
        "postgres_agent_log_read_bytes_total",
        "Bytes of server log parsed",
    )?;
    let unparsed = counter(
        "postgres_agent_log_unparsed_lines_total",
        "Log lines that fit no format (shipped raw, class other)",
    )?;
    let waiting = family(
        "postgres_agent_log_waiting_for_spool",
        "1 while reading waits for the spool to ship (it holds 40 % of buffer.max_bytes)",
    )?;
    let waits = counter(
        "postgres_agent_log_spool_waits_total",
        "Times reading paused for the spool to ship",
    )?;
    for (id, d) in readers {
        let values = fleet.values(id);
        let server = &values[1..];
        events.with_label_values(&values).inc_by(d.events_total);
        behind
            .with_label_values(server)
            .set(d.tail.bytes_behind as f64);
        read.with_label_values(server)
            .inc_by(d.tail.bytes_read_total);
        unparsed
            .with_label_values(server)
            .inc_by(d.tail.unparsed_lines_total);
        waiting
            .with_label_values(server)
            .set(flag(d.waiting_for_spool));
        waits.with_label_values(server).inc_by(d.spool_waits_total);
    }

    Ok(())
}

/// The syslog receiver's figures.
fn receiver(p: &Page, s: &StatusSnapshot) -> prometheus::Result<()> {
    let Some(r) = s.receiver() else {
        return Ok(());
    };
    p.counter(
        "postgres_agent_syslog_messages_total",
        "Syslog messages received (datagrams and framed TCP messages)",
        r.messages_total,
    )?;
    p.counter(
        "postgres_agent_syslog_bytes_total",
        "Bytes of syslog messages received",
        r.bytes_total,
    )?;
    let dropped = p.counter_vec(
        "postgres_agent_syslog_dropped_total",
        "Syslog messages not taken, by why: no header, no server's syslog_ident, over the size cap, dropped by the kernel at the UDP socket while the spool's intake was behind",
        &["reason"],
    )?;
    for (reason, n) in [
        ("unreadable", r.unreadable_total),
        ("unrouted", r.unrouted_total),
        ("oversize", r.oversize_total),
        ("udp_socket", r.udp_dropped_total),
    ] {
        dropped.with_label_values(&[reason]).inc_by(n);
    }
    p.gauge(
        "postgres_agent_syslog_connections",
        "TCP connections of syslog senders open",
        r.connections as f64,
    )?;
    p.gauge(
        "postgres_agent_syslog_paused",
        "1 while the receiver reads nothing, waiting for the spool",
        flag(r.paused),
    )?;
    let events = p.counter_vec(
        "postgres_agent_syslog_events_total",
        "Events of a server's syslog messages in the spool",
        &["server"],
    )?;
    for (name, d) in &r.servers {
        events.with_label_values(&[name]).inc_by(d.events_total);
    }
    Ok(())
}

/// Whether the children's families carry a `server` label: only in the `[[servers]]`
/// form (its values are the configured names), so the single-server form's series are
/// as they always were.
#[derive(Clone, Copy)]
struct Fleet(bool);

impl Fleet {
    fn of(s: &StatusSnapshot) -> Fleet {
        Fleet(s.children.keys().any(|id| server_name(*id).is_some()))
    }

    /// The label names: `first` (`child`, `source`), then `server` in a fleet.
    fn names(self, first: &'static str) -> Vec<&'static str> {
        let mut v = vec![first];
        if self.0 {
            v.push("server");
        }
        v
    }

    /// A child's label values, in the order of [`Fleet::names`].
    fn values(self, id: ChildId) -> Vec<&'static str> {
        let mut v = vec![id.base()];
        if self.0 {
            v.push(server_name(id).unwrap_or(""));
        }
        v
    }
}

/// The configured name of the server a child serves.
fn server_name(id: ChildId) -> Option<&'static str> {
    id.server().and_then(|s| s.name())
}

/// The spool's figures.
fn spool(p: &Page, s: &StatusSnapshot) -> prometheus::Result<()> {
    if let Some(d) = s.spool() {
        p.gauge(
            "postgres_agent_spool_events",
            "Events waiting in the spool",
            d.depth as f64,
        )?;
        p.gauge(
            "postgres_agent_spool_bytes",
            "Bytes of event data waiting in the spool",
            d.bytes as f64,
        )?;
        p.gauge(
            "postgres_agent_spool_max_bytes",
            "The cap on the spool's file (buffer.max_bytes; beyond it the oldest events are evicted)",
            d.max_bytes as f64,
        )?;
        let pending = p.gauge_vec(
            "postgres_agent_spool_pending_events",
            "Events in the spool an output has not taken yet",
            &["output"],
        )?;
        for (output, n) in &d.pending_by_output {
            // Only the fixed output names become label values.
            if let Some(o) = Output::parse(output) {
                pending.with_label_values(&[o.as_str()]).set(*n as f64);
            }
        }
        p.gauge(
            "postgres_agent_spool_file_bytes",
            "Size of the spool on disk (database and WAL)",
            d.file_bytes as f64,
        )?;
        p.gauge(
            "postgres_agent_spool_oldest_event_age_seconds",
            "Age of the oldest event waiting (0 when none waits)",
            d.oldest_age_s.unwrap_or(0.0),
        )?;
        p.gauge(
            "postgres_agent_spool_quarantined_events",
            "Events set aside: refused by the listener on their own or unreadable (kept, never retried)",
            d.quarantined as f64,
        )?;
        p.gauge(
            "postgres_agent_spool_quarantined_bytes",
            "Bytes of the quarantined events",
            d.quarantined_bytes as f64,
        )?;
        p.counter(
            "postgres_agent_spool_appended_events_total",
            "Events written to the spool",
            d.appended_total,
        )?;
        p.counter(
            "postgres_agent_spool_acked_events_total",
            "Events deleted from the spool after the listener acknowledged them",
            d.acked_total,
        )?;
        p.counter(
            "postgres_agent_spool_evicted_events_total",
            "Events dropped to keep the spool under buffer.max_bytes (each loss is reported)",
            d.evicted_total,
        )?;
        p.counter(
            "postgres_agent_spool_errors_total",
            "Spool operations that failed",
            d.errors_total,
        )?;
    }

    Ok(())
}

/// Each output's delivery.
fn shippers(p: &Page, s: &StatusSnapshot) -> prometheus::Result<()> {
    // One set of families for every output, labelled by it (`listener`, `otlp`).
    let shippers: Vec<(Output, &crate::model::ShipperStats)> = Output::ALL
        .into_iter()
        .filter_map(|o| s.shipper(o).map(|d| (o, d)))
        .collect();
    if !shippers.is_empty() {
        let batches = p.counter_vec(
            "postgres_agent_shipper_batches_total",
            "Batch posts to an output by outcome (sent: a 2xx; failed: any other answer or none)",
            &["output", "outcome"],
        )?;
        let split = p.counter_vec(
            "postgres_agent_shipper_batches_split_total",
            "Batches split in halves after the output refused them as too large or invalid",
            &["output"],
        )?;
        let sent = p.counter_vec(
            "postgres_agent_shipper_events_sent_total",
            "Events the output acknowledged",
            &["output"],
        )?;
        let quarantined = p.counter_vec(
            "postgres_agent_shipper_events_quarantined_total",
            "Events the output refused on their own (moved to quarantine; other outputs still get them)",
            &["output"],
        )?;
        let failures = p.gauge_vec(
            "postgres_agent_shipper_consecutive_failures",
            "Failed attempts since the last success",
            &["output"],
        )?;
        let breaker = p.gauge_vec(
            "postgres_agent_shipper_breaker_state",
            "The circuit breaker towards the output: 1 for the state it is in",
            &["output", "state"],
        )?;
        let refused = p.gauge_vec(
            "postgres_agent_shipper_token_refused",
            "1 while the output refuses the agent's credentials (nothing is sent to it)",
            &["output"],
        )?;
        let last = p.gauge_vec(
            "postgres_agent_shipper_last_success_timestamp_seconds",
            "When the output last accepted a batch (2xx), Unix time",
            &["output"],
        )?;
        for &(o, d) in &shippers {
            let output = &o.as_str();
            batches
                .with_label_values(&[output, "sent"])
                .inc_by(d.batches_sent_total);
            batches
                .with_label_values(&[output, "failed"])
                .inc_by(d.failures_total);
            split
                .with_label_values(&[output])
                .inc_by(d.batches_split_total);
            sent.with_label_values(&[output])
                .inc_by(d.events_sent_total);
            quarantined
                .with_label_values(&[output])
                .inc_by(d.events_quarantined_total);
            failures
                .with_label_values(&[output])
                .set(f64::from(d.consecutive_failures));
            for (label, phase) in [
                ("closed", BreakerPhase::Closed),
                ("open", BreakerPhase::Open),
                ("half_open", BreakerPhase::HalfOpen),
            ] {
                breaker
                    .with_label_values(&[output, label])
                    .set(flag(d.breaker.state == phase));
            }
            refused
                .with_label_values(&[output])
                .set(flag(d.token_refused.is_some()));
            if let Some(t) = s
                .children
                .get(&ChildId::Shipper(o))
                .and_then(|c| c.last_success)
            {
                last.with_label_values(&[output]).set(unix_s(t));
            }
        }
    }

    Ok(())
}

/// The agent's own CPU and memory.
fn process(p: &Page) -> prometheus::Result<()> {
    if let Some((cpu_s, rss)) = own_usage() {
        p.counter_f(
            "process_cpu_seconds_total",
            "User and system CPU time of the agent",
            cpu_s,
        )?;
        p.gauge(
            "process_resident_memory_bytes",
            "Resident memory of the agent",
            rss as f64,
        )?;
    }

    Ok(())
}

/// How long each source's cycles took: one histogram family, a series per collector,
/// from the counts each collector keeps.
fn cycle_histograms(s: &StatusSnapshot) -> Option<prometheus::proto::MetricFamily> {
    use prometheus::proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType};
    let metrics: Vec<Metric> = s
        .children
        .iter()
        .filter_map(|(id, c)| match &c.detail {
            Some(ChildDetail::Collector(d)) => Some((*id, &d.cycle_seconds)),
            _ => None,
        })
        .map(|(id, times)| {
            let mut cumulative = 0;
            let buckets = CYCLE_BUCKETS
                .iter()
                .zip(&times.counts)
                .map(|(bound, n)| {
                    cumulative += n;
                    let mut b = Bucket::default();
                    b.set_upper_bound(*bound);
                    b.set_cumulative_count(cumulative);
                    b
                })
                .collect();
            let mut h = Histogram::default();
            h.set_bucket(buckets);
            h.set_sample_count(times.count());
            h.set_sample_sum(times.sum_s);
            let pair = |name: &str, value: &str| {
                let mut label = LabelPair::default();
                label.set_name(name.into());
                label.set_value(value.into());
                label
            };
            let mut m = Metric::default();
            m.set_label(match server_name(id) {
                Some(server) => vec![pair("server", server), pair("source", id.base())],
                None => vec![pair("source", id.base())],
            });
            m.set_histogram(h);
            m
        })
        .collect();
    if metrics.is_empty() {
        return None;
    }
    let mut f = MetricFamily::default();
    f.set_name("postgres_agent_source_cycle_duration_seconds".into());
    f.set_help("Time one collection cycle of a source took, queries and event building".into());
    f.set_field_type(MetricType::HISTOGRAM);
    f.set_metric(metrics);
    Some(f)
}

/// The agent's CPU seconds and resident bytes from /proc/self.
fn own_usage() -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the command's closing parenthesis: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Some(((utime + stime) as f64 / tck, pages * page))
}

/// postgres_exporter's collectors and the source each one's figures come from here.
const COLLECTORS: &[(&str, EventKind)] = &[
    ("bgwriter", EventKind::PgServerStats),
    ("database", EventKind::PgDatabases),
    ("locks", EventKind::PgLocks),
    ("replication", EventKind::PgReplication),
    ("process_idle", EventKind::PgActivity),
    ("stat_database", EventKind::PgDatabases),
    ("stat_user_indexes", EventKind::PgTables),
    ("stat_user_tables", EventKind::PgTables),
    ("statio_user_indexes", EventKind::PgTables),
    ("statio_user_tables", EventKind::PgTables),
];

/// Scrapes served, and how long the last one took to render.
#[derive(Default)]
struct Scrapes {
    total: std::sync::atomic::AtomicU64,
    last_render_us: std::sync::atomic::AtomicU64,
}

/// postgres_exporter's own families: scrapes, the last one's duration, whether the
/// sources behind the page failed their last cycle, per collector.
fn exporter_families(s: &StatusSnapshot, scrapes: &Scrapes, out: &mut String) {
    use database::{Type, Writer};
    use std::sync::atomic::Ordering;
    let mut w = Writer::new(out);
    // The first server's collector of `kind` (postgres_exporter's own families have
    // no `server` label).
    let state = |kind: EventKind| {
        let first = s
            .children
            .keys()
            .find(|id| matches!(id, ChildId::Collector(_, k) if *k == kind));
        first.and_then(|id| s.children.get(id)).map(|c| {
            let took = match &c.detail {
                Some(ChildDetail::Collector(d)) => d.cycle_seconds.last_s,
                _ => 0.0,
            };
            (c.last_error.is_none() && c.last_success.is_some(), took)
        })
    };
    w.family(
        "pg_exporter_scrapes_total",
        "Total number of times PostgreSQL was scraped for metrics.",
        Type::Counter,
    );
    w.sample(
        "pg_exporter_scrapes_total",
        &[],
        scrapes.total.load(Ordering::Relaxed) as f64,
    );
    w.family(
        "pg_exporter_last_scrape_duration_seconds",
        "Duration of the last scrape of metrics from PostgreSQL (here: rendering the latest readings).",
        Type::Gauge,
    );
    w.sample(
        "pg_exporter_last_scrape_duration_seconds",
        &[],
        scrapes.last_render_us.load(Ordering::Relaxed) as f64 / 1e6,
    );
    let known: Vec<(&str, bool, f64)> = COLLECTORS
        .iter()
        .filter_map(|(name, kind)| state(*kind).map(|(ok, took)| (*name, ok, took)))
        .collect();
    w.family(
        "pg_exporter_last_scrape_error",
        "Whether the last scrape of metrics from PostgreSQL resulted in an error (1 for error, 0 for success).",
        Type::Gauge,
    );
    w.sample(
        "pg_exporter_last_scrape_error",
        &[],
        flag(known.iter().any(|(_, ok, _)| !ok)),
    );
    w.family(
        "pg_scrape_collector_success",
        "postgres_exporter: Whether a collector succeeded (here: its source's last cycle).",
        Type::Gauge,
    );
    for (name, ok, _) in &known {
        w.sample(
            "pg_scrape_collector_success",
            &[("collector", name)],
            flag(*ok),
        );
    }
    w.family(
        "pg_scrape_collector_duration_seconds",
        "postgres_exporter: Duration of a collector scrape (here: its source's last cycle).",
        Type::Gauge,
    );
    for (name, _, took) in &known {
        w.sample(
            "pg_scrape_collector_duration_seconds",
            &[("collector", name)],
            *took,
        );
    }
}

/// The boards the page shows: the one server's, or each `[[servers]]` server's under
/// its name. The supervisor sets them at start and on reload; a scrape reads them.
#[derive(Default)]
pub struct PageBoards {
    boards: std::sync::RwLock<Vec<(String, Arc<Board>)>>,
}

impl PageBoards {
    /// Shows `boards`, each under its server's name (none in the single-server form).
    pub fn set(&self, boards: Vec<(String, Arc<Board>)>) {
        *self.boards.write().unwrap_or_else(|p| p.into_inner()) = boards;
    }

    /// The boards shown, those the page asks readings of.
    pub fn wanted(&self) -> Vec<(String, Arc<Board>)> {
        self.boards
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, b)| b.wanted())
            .cloned()
            .collect()
    }
}

/// The whole page: the agent's families, then the database's (when on), the tables'
/// a chunk at a time. Several servers' readings are one page: each family once, its
/// series told apart by `server`.
fn page(
    s: &StatusSnapshot,
    boards: &PageBoards,
    scrapes: &Scrapes,
) -> prometheus::Result<(String, Option<database::TablePages>)> {
    use std::sync::atomic::Ordering;
    let started = std::time::Instant::now();
    let mut text = render(s)?;
    let boards = boards.wanted();
    if boards.is_empty() {
        return Ok((text, None));
    }
    scrapes.total.fetch_add(1, Ordering::Relaxed);
    let now = std::time::SystemTime::now();
    let mut small = Vec::with_capacity(boards.len());
    let mut tables = Vec::new();
    for (_, board) in &boards {
        let parts = board.parts();
        let label = board.label();
        let mut t = String::new();
        database::render_small(&parts, &label, now, &mut t);
        if let Some(rows) = parts.tables {
            tables.push((rows.value, label.clone()));
        }
        small.push((t, label));
    }
    match small.as_slice() {
        [(one, _)] => text.push_str(one),
        several => {
            let pages: Vec<(String, &str)> = several
                .iter()
                .map(|(t, l)| (t.clone(), l.as_str()))
                .collect();
            database::merge_servers(&pages, &mut text);
        }
    }
    exporter_families(s, scrapes, &mut text);
    let tables = (!tables.is_empty()).then(|| database::TablePages::of_servers(tables));
    scrapes
        .last_render_us
        .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    Ok((text, tables))
}

/// A page's chunks as the response body.
struct Body {
    first: Option<String>,
    rest: Option<database::TablePages>,
}

impl futures_core::Stream for Body {
    type Item = Result<actix_web::web::Bytes, std::convert::Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let next = match self.first.take() {
            Some(t) => Some(t.into_bytes()),
            None => self.rest.as_mut().and_then(Iterator::next),
        };
        std::task::Poll::Ready(next.map(|t| Ok(actix_web::web::Bytes::from(t))))
    }
}

/// The running endpoint; dropping it does not stop it, [`MetricsServer::stop`] does.
pub struct MetricsServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    arbiter: Arbiter,
}

/// Longest wait for a request's head, from the connection's start.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections open at once (per the one worker); beyond, the next wait in the
/// kernel's queue until one closes.
const MAX_CONNECTIONS: usize = 256;
/// An idle kept-alive connection (Prometheus keeps its connection between scrapes) is
/// closed after this long.
const KEEP_ALIVE: Duration = Duration::from_secs(90);

impl MetricsServer {
    /// Binds `addr` (so a taken port or a missing address is reported here, naming it)
    /// and serves on threads of its own.
    pub fn start(
        addr: SocketAddr,
        snapshots: Recipient<GetSnapshot>,
        boards: Arc<PageBoards>,
        log: &Logger,
    ) -> Result<MetricsServer, String> {
        let std_listener = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("cannot listen on {addr} (metrics.listen): {e}"))?;
        let bound = std_listener.local_addr().unwrap_or(addr);
        let scrapes = actix_web::web::Data::new(Scrapes::default());
        let boards = actix_web::web::Data::from(boards);
        let server = actix_web::HttpServer::new(move || {
            actix_web::App::new()
                .app_data(actix_web::web::Data::new(snapshots.clone()))
                .app_data(boards.clone())
                .app_data(scrapes.clone())
                .default_service(actix_web::web::to(answer))
        })
        .workers(1)
        .disable_signals()
        .max_connections(MAX_CONNECTIONS)
        .client_request_timeout(READ_TIMEOUT)
        .client_disconnect_timeout(Duration::from_secs(1))
        .keep_alive(KEEP_ALIVE)
        .shutdown_timeout(1)
        .listen(std_listener)
        .map_err(|e| format!("metrics listener on {addr}: {e}"))?
        .run();
        let handle = server.handle();
        let arbiter = Arbiter::new();
        arbiter.spawn_fn(|| crate::thread::name_thread("metrics"));
        if !arbiter.spawn(async move {
            let _ = server.await;
        }) {
            return Err("metrics: the server thread did not start".into());
        }
        info!(log, "metrics_listening"; "addr" => %bound);
        Ok(MetricsServer {
            addr: bound,
            handle,
            arbiter,
        })
    }

    /// Stops serving and closes the port.
    pub fn stop(self) {
        let handle = self.handle;
        let arbiter = self.arbiter;
        let stopping = arbiter.spawn(async move {
            handle.stop(false).await;
            actix_rt::Arbiter::current().stop();
        });
        if !stopping {
            arbiter.stop();
        }
    }
}

/// Answers one request: the exposition, a pointer to it, or why not.
async fn answer(
    req: actix_web::HttpRequest,
    snapshots: actix_web::web::Data<Recipient<GetSnapshot>>,
    boards: actix_web::web::Data<PageBoards>,
    scrapes: actix_web::web::Data<Scrapes>,
) -> actix_web::HttpResponse {
    use actix_web::http::StatusCode;
    let text = |code: StatusCode, body: &str| {
        actix_web::HttpResponse::build(code)
            .content_type("text/plain")
            .body(body.to_string())
    };
    match route_of(req.method().as_str(), req.path()) {
        Route::Metrics => match snapshots.send(GetSnapshot).await {
            Ok(snap) => match page(&snap, &boards, &scrapes) {
                Ok((first, None)) => actix_web::HttpResponse::Ok()
                    .content_type(prometheus::TEXT_FORMAT)
                    .body(first),
                Ok((first, rest)) => actix_web::HttpResponse::Ok()
                    .content_type(prometheus::TEXT_FORMAT)
                    .streaming(Body {
                        first: Some(first),
                        rest,
                    }),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("metrics: {e}\n"),
                ),
            },
            Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping\n"),
        },
        Route::Index => text(StatusCode::OK, "postgres-agent: metrics at /metrics\n"),
        Route::NotFound => text(StatusCode::NOT_FOUND, "not found\n"),
        Route::MethodNotAllowed => text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n"),
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq)]
pub enum Route {
    /// `GET /metrics` (a query string is ignored).
    Metrics,
    /// `GET /`: a pointer to /metrics.
    Index,
    /// Another path.
    NotFound,
    /// Another method.
    MethodNotAllowed,
}

/// Where a request of `method` for `path` goes.
pub fn route_of(method: &str, path: &str) -> Route {
    if method != "GET" && method != "HEAD" {
        return Route::MethodNotAllowed;
    }
    match path {
        "/metrics" => Route::Metrics,
        "/" => Route::Index,
        _ => Route::NotFound,
    }
}

pub mod database;

#[cfg(test)]
mod tests;
