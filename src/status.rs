//! The status snapshot: what every child is doing, written to `<state_dir>/status.json`
//! on SIGUSR1 (and every few seconds), logged on SIGUSR1, and printed for a person by
//! `postgres-agent status`. It never contains the token or a password.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{
    ChildDetail, ChildId, ChildState, LogReaderStats, Output, ShipperStats, SpoolStats,
};

/// File name of the snapshot inside `state_dir`.
pub const STATUS_FILE: &str = "status.json";

/// The whole snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusSnapshot {
    /// When it was written.
    pub written_at: DateTime<Utc>,
    /// Why: `sigusr1`, `periodic`, `startup`, `reload` or `shutdown`.
    pub trigger: String,
    /// The agent's process id.
    pub pid: u32,
    /// The agent's version.
    pub version: String,
    /// When the agent started.
    pub started_at: DateTime<Utc>,
    /// The configuration file in use.
    pub config_path: String,
    /// Fingerprint of the configuration in use.
    pub config_fingerprint: String,
    /// The last reload: when, and the error if it was rejected.
    pub last_reload: Option<ReloadStatus>,
    /// The Prometheus endpoint (`[metrics] listen`): where it serves, or why it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// Every child (written by name, in the order of the names).
    #[serde(with = "by_name")]
    pub children: BTreeMap<ChildId, ChildStatus>,
}

/// The outcome of a reload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadStatus {
    /// When it was asked for.
    pub at: DateTime<Utc>,
    /// Whether the new config was taken.
    pub applied: bool,
    /// Why not, if it was not.
    pub error: Option<String>,
    /// Children restarted because their settings changed.
    pub restarted: Vec<ChildId>,
}

/// One child.
#[derive(Debug, Clone, Serialize)]
pub struct ChildStatus {
    /// `running`, `starting`, `restarting`, `failed` or `stopped`.
    pub state: ChildState,
    /// Restarts since the agent started.
    pub restarts: u64,
    /// Running since (this incarnation).
    pub up_since: Option<DateTime<Utc>>,
    /// Last success reported by the child.
    pub last_success: Option<DateTime<Utc>>,
    /// Last error reported by the child.
    pub last_error: Option<String>,
    /// Why it was last restarted (panicked, stopped, hung: …).
    pub last_restart_reason: Option<String>,
    /// Child-specific figures (collector counters, spool depth, delivery state), of the
    /// type the child reports.
    pub detail: Option<ChildDetail>,
}

/// The children of a status file: keyed by name there, by [`ChildId`] here; each
/// detail read as the type its child reports ([`ChildDetail::read`]). A child this
/// version does not know (a file of another version) is left out.
mod by_name {
    use super::*;
    use serde::{Deserializer, Serializer};

    /// [`ChildStatus`] as the file holds it, before its detail's type is known.
    #[derive(Deserialize)]
    struct Written {
        state: ChildState,
        restarts: u64,
        up_since: Option<DateTime<Utc>>,
        last_success: Option<DateTime<Utc>>,
        last_error: Option<String>,
        last_restart_reason: Option<String>,
        detail: Option<serde_json::Value>,
    }

    pub fn serialize<S: Serializer>(
        children: &BTreeMap<ChildId, ChildStatus>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let named: BTreeMap<&str, &ChildStatus> =
            children.iter().map(|(id, c)| (id.name(), c)).collect();
        named.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<ChildId, ChildStatus>, D::Error> {
        let written = BTreeMap::<String, Written>::deserialize(d)?;
        Ok(written
            .into_iter()
            .filter_map(|(name, w)| {
                let id = ChildId::parse(&name)?;
                let status = ChildStatus {
                    state: w.state,
                    restarts: w.restarts,
                    up_since: w.up_since,
                    last_success: w.last_success,
                    last_error: w.last_error,
                    last_restart_reason: w.last_restart_reason,
                    detail: w.detail.and_then(|v| ChildDetail::read(id, v)),
                };
                Some((id, status))
            })
            .collect())
    }
}

/// Where the snapshot of an agent with this state directory lives.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATUS_FILE)
}

/// Writes the snapshot atomically (temporary file, then rename), so a reader never sees
/// half a file.
pub fn write(state_dir: &Path, snap: &StatusSnapshot) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let tmp = state_dir.join(format!(".{STATUS_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(snap).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path(state_dir))
}

/// Reads a snapshot.
pub fn read(state_dir: &Path) -> Result<StatusSnapshot, String> {
    let p = path(state_dir);
    let text = std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{} is not a status dump: {e}", p.display()))
}

fn ago(now: DateTime<Utc>, t: Option<DateTime<Utc>>) -> String {
    match t {
        Some(t) => format!("{}s ago", (now - t).num_seconds().max(0)),
        None => "never".into(),
    }
}

impl StatusSnapshot {
    /// The children in the order of their names (as the file lists them).
    pub fn by_name(&self) -> impl Iterator<Item = (&'static str, &ChildStatus)> {
        let mut v: Vec<_> = self.children.iter().map(|(id, c)| (id.name(), c)).collect();
        v.sort_by_key(|(name, _)| *name);
        v.into_iter()
    }

    /// The spool's figures, when it reported them.
    pub fn spool(&self) -> Option<&SpoolStats> {
        match self.children.get(&ChildId::Spool)?.detail.as_ref()? {
            ChildDetail::Spool(d) => Some(d),
            _ => None,
        }
    }

    /// The shipper's figures of `output`, when it reported them.
    pub fn shipper(&self, output: Output) -> Option<&ShipperStats> {
        match self
            .children
            .get(&ChildId::Shipper(output))?
            .detail
            .as_ref()?
        {
            ChildDetail::Shipper(d) => Some(d),
            _ => None,
        }
    }

    /// The syslog receiver's figures, when it runs.
    pub fn receiver(&self) -> Option<&crate::model::ReceiverStats> {
        match self.children.get(&ChildId::Receiver)?.detail.as_ref()? {
            ChildDetail::Receiver(d) => Some(d),
            _ => None,
        }
    }

    /// The log readers' figures, each with its child, as they reported them.
    pub fn logs(&self) -> impl Iterator<Item = (ChildId, &LogReaderStats)> {
        self.children
            .iter()
            .filter_map(|(id, c)| match c.detail.as_ref()? {
                ChildDetail::LogReader(d) => Some((*id, d)),
                _ => None,
            })
    }
}

/// Delivery, spool and log in a few lines: what an on-call reader looks for first.
fn summary(s: &StatusSnapshot) -> String {
    use crate::model::BreakerPhase;
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    let mut out = String::from("\n");
    for output in Output::ALL {
        let Some(d) = s.shipper(output) else {
            continue;
        };
        let n = output.naming();
        if let Some(t) = &d.token_refused {
            out.push_str(&format!(
                "{} REFUSED by the {} ({t}): nothing is sent to it; fix {} and reload (SIGHUP)\n",
                n.credential.to_uppercase(),
                n.who,
                n.credential_key
            ));
        }
        let b = &d.breaker;
        let breaker = match b.state {
            BreakerPhase::Open => format!(
                "breaker OPEN since {} (next probe in {:.0} s)",
                b.open_since.map_or("?".to_string(), |t| t
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
                b.next_probe_in_s.unwrap_or(0.0)
            ),
            BreakerPhase::HalfOpen => "breaker half_open".to_string(),
            BreakerPhase::Closed => "breaker closed".to_string(),
        };
        out.push_str(&format!(
            "{:<9} {breaker}, last HTTP {}, {} batches / {} events sent, {} failures in a row, {} quarantined by the {}\n",
            format!("{}:", n.summary_label),
            d.last_http_status.map_or("-".to_string(), |x| x.to_string()),
            d.batches_sent_total,
            d.events_sent_total,
            d.consecutive_failures,
            d.events_quarantined_total,
            n.who,
        ));
    }
    if let Some(d) = s.spool() {
        out.push_str(&format!(
            "spool:    {} events waiting ({} of data, {} on disk), oldest {}, {} evicted, {} in quarantine\n",
            d.depth,
            mb(d.bytes),
            mb(d.file_bytes),
            d.oldest_age_s
                .map_or("-".to_string(), |a| format!("{a:.0} s old")),
            d.evicted_total,
            d.quarantined,
        ));
        if d.pending_by_output.len() > 1 {
            let each: Vec<String> = d
                .pending_by_output
                .iter()
                .map(|(o, n)| format!("{o} {n}"))
                .collect();
            out.push_str(&format!(
                "          not yet taken, per output: {}\n",
                each.join(", ")
            ));
        }
    }
    if let Some(r) = s.receiver() {
        let at = match (&r.listen, &r.listen_tls) {
            (Some(a), Some(t)) => format!("{a} and {t} (TLS)"),
            (Some(a), None) => a.clone(),
            (None, Some(t)) => format!("{t} (TLS)"),
            (None, None) => "-".to_string(),
        };
        let each: Vec<String> = r
            .servers
            .iter()
            .map(|(name, d)| format!("{name} {} events", d.events_total))
            .collect();
        out.push_str(&format!(
            "syslog:   {} on {}: {} messages ({} without a header, {} of no server), {} dropped at the socket{}; {}\n",
            if r.paused { "PAUSED for the spool" } else { "receiving" },
            at,
            r.messages_total,
            r.unreadable_total,
            r.unrouted_total,
            r.udp_dropped_total,
            if r.connections > 0 { format!(", {} TCP connections", r.connections) } else { String::new() },
            each.join(", "),
        ));
    }
    for (id, d) in s.logs() {
        // Each server's log in the `[[servers]]` form, under its name.
        let label = match id.server().and_then(|n| n.name()) {
            Some(name) => format!("log {name}:"),
            None => "log:".to_string(),
        };
        out.push_str(&format!(
            "{label:<9} {}; {} of {} bytes read ({} behind, reading {}/s), {} events, {} unparsed lines\n",
            d.source_state
                .as_ref()
                .map_or("starting".to_string(), |s| s.to_string()),
            d.tail.offset,
            d.tail.size,
            mb(d.tail.bytes_behind),
            mb(d.tail.read_bytes_per_s as u64),
            d.events_total,
            d.tail.unparsed_lines_total,
        ));
    }
    out
}

/// The snapshot as a person reads it.
pub fn render(s: &StatusSnapshot, now: DateTime<Utc>) -> String {
    let age = (now - s.written_at).num_seconds().max(0);
    let mut out = format!(
        "postgres-agent {} (pid {}), status written {age}s ago ({}), running since {}\nconfig {} (fingerprint {})\n",
        s.version,
        s.pid,
        s.trigger,
        s.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        s.config_path,
        s.config_fingerprint
    );
    if age > 30 {
        out.push_str(&format!(
            "WARNING: this status is {age}s old; the agent may not be running (send SIGUSR1 to refresh it)\n"
        ));
    }
    if let Some(r) = &s.last_reload {
        out.push_str(&match &r.error {
            None => format!("last reload: applied {}\n", ago(now, Some(r.at))),
            Some(e) => format!("last reload: REJECTED {} — {e}\n", ago(now, Some(r.at))),
        });
    }
    if let Some(m) = &s.metrics {
        out.push_str(&format!("metrics: {m}\n"));
    }
    // Columns as wide as their longest cell: names and states have no fixed length.
    let rows: Vec<[String; 5]> = s
        .by_name()
        .map(|(name, c)| {
            [
                name.to_string(),
                c.state.to_string(),
                c.restarts.to_string(),
                ago(now, c.last_success),
                c.last_error.as_deref().unwrap_or("-").to_string(),
            ]
        })
        .collect();
    let head = ["CHILD", "STATE", "RESTARTS", "LAST SUCCESS", "LAST ERROR"];
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([head[i].len()])
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2, w3) = (width(0), width(1), width(2), width(3));
    out.push('\n');
    for r in std::iter::once(head.map(String::from)).chain(rows) {
        out.push_str(&format!(
            "{:<w0$}  {:<w1$}  {:>w2$}  {:<w3$}  {}\n",
            r[0], r[1], r[2], r[3], r[4]
        ));
    }
    out.push_str(&summary(s));
    for (name, c) in s.by_name() {
        if let Some(d) = c
            .detail
            .as_ref()
            .and_then(|d| serde_json::to_string(d).ok())
        {
            out.push_str(&format!("\n{name}: {d}"));
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BreakerPhase, BreakerStats};
    use crate::model::{Problem, SourceState};

    fn child(detail: Option<ChildDetail>) -> ChildStatus {
        ChildStatus {
            state: ChildState::Running,
            restarts: 0,
            up_since: None,
            last_success: None,
            last_error: None,
            last_restart_reason: None,
            detail,
        }
    }

    /// A snapshot written at `now` with these children.
    fn snapshot(now: DateTime<Utc>, children: BTreeMap<ChildId, ChildStatus>) -> StatusSnapshot {
        StatusSnapshot {
            written_at: now,
            trigger: "sigusr1".into(),
            pid: 1,
            version: "0".into(),
            started_at: now,
            config_path: "/etc/x".into(),
            config_fingerprint: "f".into(),
            last_reload: None,
            metrics: None,
            children,
        }
    }

    #[test]
    fn columns_line_up_whatever_the_lengths() {
        let now = Utc::now();
        let mut children = BTreeMap::new();
        let mut long = child(None);
        long.state = ChildState::Restarting;
        long.restarts = 12345;
        children.insert(ChildId::Spool, child(None));
        children.insert(
            ChildId::Collector(
                crate::model::ServerNo::ONLY,
                crate::model::EventKind::PgActivitySummary,
            ),
            long,
        );
        let text = render(&snapshot(now, children), now);
        let table: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("CHILD"))
            .take(3)
            .collect();
        assert_eq!(table.len(), 3, "{text}");
        let at = |l: &str, w: &str| l.find(w).unwrap_or_else(|| panic!("{w} in {l}"));
        let state = at(table[0], "STATE");
        assert_eq!(at(table[1], "running"), state, "{text}");
        assert_eq!(at(table[2], "restarting"), state, "{text}");
        let success = at(table[0], "LAST SUCCESS");
        assert_eq!(at(table[1], "never"), success, "{text}");
        assert_eq!(at(table[2], "never"), success, "{text}");
        // RESTARTS is right-aligned.
        let end = state + at(&table[0][state..], "RESTARTS") + "RESTARTS".len();
        assert_eq!(at(table[2], "12345") + 5, end, "{text}");
    }

    #[test]
    fn the_summary_says_what_on_call_looks_for() {
        let now = Utc::now();
        let mut children = BTreeMap::new();
        // Written the way the supervisor writes them: from the children's own types.
        let shipper = ShipperStats {
            last_http_status: Some(401),
            batches_sent_total: 3,
            events_sent_total: 40,
            consecutive_failures: 2,
            events_quarantined_total: 1,
            token_refused: Some("HTTP 401".into()),
            breaker: BreakerStats {
                state: BreakerPhase::Open,
                open_since: "2026-11-26T10:00:00Z".parse().ok(),
                next_probe_in_s: Some(42.0),
                ..Default::default()
            },
            ..Default::default()
        };
        let buffer = SpoolStats {
            depth: 12,
            bytes: 3_000_000,
            file_bytes: 5_000_000,
            oldest_age_s: Some(75.2),
            evicted_total: 7,
            quarantined: 1,
            ..Default::default()
        };
        let log = LogReaderStats {
            source_state: Some(SourceState::Unavailable(Problem::new("gone", "find it"))),
            events_total: 9,
            tail: crate::model::TailStats {
                offset: 100,
                size: 2_000_100,
                bytes_behind: 2_000_000,
                read_bytes_per_s: 51_500_000.0,
                unparsed_lines_total: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        children.insert(
            ChildId::Shipper(Output::Listener),
            child(Some(ChildDetail::Shipper(shipper))),
        );
        children.insert(ChildId::Spool, child(Some(ChildDetail::Spool(buffer))));
        children.insert(
            ChildId::LogReader(crate::model::ServerNo::ONLY),
            child(Some(ChildDetail::LogReader(log))),
        );
        let s = StatusSnapshot {
            metrics: Some(
                "cannot listen on 127.0.0.1:9188 (metrics.listen): Address in use".into(),
            ),
            ..snapshot(now, children)
        };
        let text = render(&s, now);
        assert!(
            text.contains(
                "metrics: cannot listen on 127.0.0.1:9188 (metrics.listen): Address in use\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("TOKEN REFUSED by the listener (HTTP 401)"),
            "{text}"
        );
        assert!(text.contains("delivery: breaker OPEN since 2026-11-26T10:00:00Z (next probe in 42 s), last HTTP 401, 3 batches / 40 events sent, 2 failures in a row, 1 quarantined by the listener"), "{text}");
        assert!(
            text.contains("log:      unavailable: gone (fix: find it); 100 of 2000100 bytes read (2.0 MB behind, reading 51.5 MB/s), 9 events, 2 unparsed lines"),
            "{text}"
        );
        assert!(text.contains("spool:    12 events waiting (3.0 MB of data, 5.0 MB on disk), oldest 75 s old, 7 evicted, 1 in quarantine"), "{text}");
    }

    #[test]
    fn with_two_outputs_the_summary_shows_each_and_who_waits_for_what() {
        let now = Utc::now();
        let mut children = BTreeMap::new();
        let listener = ShipperStats {
            last_http_status: Some(202),
            batches_sent_total: 9,
            events_sent_total: 90,
            ..Default::default()
        };
        let otlp = ShipperStats {
            last_http_status: Some(403),
            consecutive_failures: 4,
            token_refused: Some("HTTP 403".into()),
            ..Default::default()
        };
        let buffer = SpoolStats {
            depth: 30,
            pending_by_output: [("listener".to_string(), 0), ("otlp".to_string(), 30)]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        children.insert(
            ChildId::Shipper(Output::Listener),
            child(Some(ChildDetail::Shipper(listener))),
        );
        children.insert(
            ChildId::Shipper(Output::Otlp),
            child(Some(ChildDetail::Shipper(otlp))),
        );
        children.insert(ChildId::Spool, child(Some(ChildDetail::Spool(buffer))));
        let s = snapshot(now, children);
        let text = render(&s, now);
        assert!(text.contains("delivery: breaker closed, last HTTP 202, 9 batches / 90 events sent, 0 failures in a row, 0 quarantined by the listener\n"), "{text}");
        assert!(text.contains("CREDENTIALS REFUSED by the OTLP receiver (HTTP 403): nothing is sent to it; fix otlp.headers and reload (SIGHUP)\n"), "{text}");
        assert!(text.contains("otlp:     breaker closed, last HTTP 403, 0 batches / 0 events sent, 4 failures in a row, 0 quarantined by the OTLP receiver\n"), "{text}");
        assert!(
            text.contains("          not yet taken, per output: listener 0, otlp 30\n"),
            "{text}"
        );
        assert!(!text.contains("TOKEN REFUSED"), "{text}");
    }

    #[test]
    fn a_written_snapshot_reads_back_with_each_detail_as_its_childs_type() {
        let now: DateTime<Utc> = "2026-12-05T10:00:00Z".parse().expect("time");
        let mut children = BTreeMap::new();
        let mut tables = child(Some(ChildDetail::Collector(crate::model::CollectorStats {
            cycles_total: 4,
            ..Default::default()
        })));
        tables.state = ChildState::Failed;
        children.insert(
            ChildId::Collector(
                crate::model::ServerNo::ONLY,
                crate::model::EventKind::PgTables,
            ),
            tables,
        );
        children.insert(
            ChildId::Spool,
            child(Some(ChildDetail::Spool(SpoolStats {
                depth: 3,
                ..Default::default()
            }))),
        );
        children.insert(
            ChildId::Shipper(Output::Otlp),
            child(Some(ChildDetail::Shipper(ShipperStats {
                events_sent_total: 9,
                ..Default::default()
            }))),
        );
        let mut s = snapshot(now, children);
        s.last_reload = Some(ReloadStatus {
            at: now,
            applied: true,
            error: None,
            restarted: vec![
                ChildId::LogReader(crate::model::ServerNo::ONLY),
                ChildId::Shipper(Output::Listener),
            ],
        });
        let json = serde_json::to_value(&s).expect("json");
        // The file keys children by their names, in the order of the names.
        let names: Vec<&str> = json["children"]
            .as_object()
            .expect("children")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(names, ["buffer", "pg_tables", "shipper_otlp"]);
        assert_eq!(json["children"]["pg_tables"]["state"], "failed");
        assert_eq!(json["children"]["buffer"]["detail"]["depth"], 3);
        assert_eq!(
            json["last_reload"]["restarted"],
            serde_json::json!(["pg_log", "shipper"])
        );
        let back: StatusSnapshot = serde_json::from_value(json).expect("reads back");
        assert_eq!(back.spool().map(|d| d.depth), Some(3));
        assert_eq!(
            back.shipper(Output::Otlp).map(|d| d.events_sent_total),
            Some(9)
        );
        let tables = &back.children[&ChildId::Collector(
            crate::model::ServerNo::ONLY,
            crate::model::EventKind::PgTables,
        )];
        assert_eq!(tables.state, ChildState::Failed);
        assert!(
            matches!(&tables.detail, Some(ChildDetail::Collector(c)) if c.cycles_total == 4),
            "{:?}",
            tables.detail
        );
        // A detail of another shape is not taken for this child's: the spool's detail
        // written under a collector's name does not read as a collector's.
        let mut json = serde_json::to_value(&s).expect("json");
        json["children"]["pg_tables"]["detail"] = json["children"]["buffer"]["detail"].clone();
        json["children"]["pg_newer_source"] = json["children"]["buffer"].clone();
        let back: StatusSnapshot = serde_json::from_value(json).expect("reads back");
        let tables = &back.children[&ChildId::Collector(
            crate::model::ServerNo::ONLY,
            crate::model::EventKind::PgTables,
        )];
        assert!(tables.detail.is_none(), "{:?}", tables.detail);
        assert_eq!(back.children.len(), 3, "an unknown child is left out");
    }
}
