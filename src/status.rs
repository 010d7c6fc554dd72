//! The status snapshot: what every child is doing, written to `<state_dir>/status.json`
//! on SIGUSR1 (and every few seconds), logged on SIGUSR1, and printed for a person by
//! `postgres-agent status`. It never contains the token or a password.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
    /// Every child by name.
    pub children: BTreeMap<String, ChildStatus>,
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
    pub restarted: Vec<String>,
}

/// One child.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildStatus {
    /// `running`, `starting`, `restarting`, `failed` or `stopped`.
    pub state: String,
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
    /// Child-specific figures (collector counters, spool depth, delivery state).
    pub detail: Option<serde_json::Value>,
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
    /// The detail of child `name` read back as the type the child wrote it from; `None`
    /// when the child is absent or its detail is of another shape.
    pub fn detail<T: serde::de::DeserializeOwned>(&self, name: &str) -> Option<T> {
        let d = self.children.get(name)?.detail.clone()?;
        serde_json::from_value(d).ok()
    }
}

/// Delivery, spool and log in a few lines: what an on-call reader looks for first.
fn summary(s: &StatusSnapshot) -> String {
    use crate::model::{LogStats, ShipperStats, SpoolStats};
    use crate::shipper::policy::BreakerPhase;
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    let mut out = String::from("\n");
    for (child, what, who, key, label) in [
        (
            "shipper",
            "TOKEN",
            "the listener",
            "listener.token",
            "delivery:",
        ),
        (
            "shipper_otlp",
            "CREDENTIALS",
            "the OTLP receiver",
            "otlp.headers",
            "otlp:    ",
        ),
    ] {
        let Some(d) = s.detail::<ShipperStats>(child) else {
            continue;
        };
        if let Some(t) = &d.token_refused {
            out.push_str(&format!(
                "{what} REFUSED by {who} ({t}): nothing is sent to it; fix {key} and reload (SIGHUP)\n"
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
            "{label} {breaker}, last HTTP {}, {} batches / {} events sent, {} failures in a row, {} quarantined by {who}\n",
            d.last_http_status.map_or("-".to_string(), |x| x.to_string()),
            d.batches_sent_total,
            d.events_sent_total,
            d.consecutive_failures,
            d.events_quarantined_total,
        ));
    }
    if let Some(d) = s.detail::<SpoolStats>("buffer") {
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
    if let Some(d) = s.detail::<LogStats>("pg_log") {
        out.push_str(&format!(
            "log:      {}; {} of {} bytes read ({} behind, reading {}/s), {} events, {} unparsed lines\n",
            d.source_state
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
        .children
        .iter()
        .map(|(name, c)| {
            [
                name.clone(),
                c.state.clone(),
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
    for (name, c) in &s.children {
        if let Some(d) = &c.detail {
            out.push_str(&format!("\n{name}: {d}"));
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ChildDetail, LogStats, Problem, ShipperStats, SourceState, SpoolStats};
    use crate::shipper::policy::{BreakerPhase, BreakerStats};

    fn child(detail: serde_json::Value) -> ChildStatus {
        ChildStatus {
            state: "running".into(),
            restarts: 0,
            up_since: None,
            last_success: None,
            last_error: None,
            last_restart_reason: None,
            detail: Some(detail),
        }
    }

    /// A snapshot written at `now` with these children.
    fn snapshot(now: DateTime<Utc>, children: BTreeMap<String, ChildStatus>) -> StatusSnapshot {
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
        let mut long = child(serde_json::json!({}));
        long.state = "restarting-after-backoff".into();
        long.restarts = 12345;
        children.insert("a".to_string(), child(serde_json::json!({})));
        children.insert("pg_vacuum_progress_of_a_long_name".to_string(), long);
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
        assert_eq!(at(table[2], "restarting-after-backoff"), state, "{text}");
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
        let log = LogStats {
            source_state: Some(SourceState::Unavailable(Problem::new("gone", "find it"))),
            events_total: 9,
            tail: crate::logs::tail::TailStats {
                offset: 100,
                size: 2_000_100,
                bytes_behind: 2_000_000,
                read_bytes_per_s: 51_500_000.0,
                unparsed_lines_total: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        let value = |d: ChildDetail| serde_json::to_value(d).expect("json");
        children.insert(
            "shipper".into(),
            child(value(ChildDetail::Shipper(shipper))),
        );
        children.insert("buffer".into(), child(value(ChildDetail::Spool(buffer))));
        children.insert("pg_log".into(), child(value(ChildDetail::Log(log))));
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
        let value = |d: ChildDetail| serde_json::to_value(d).expect("json");
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
            "shipper".into(),
            child(value(ChildDetail::Shipper(listener))),
        );
        children.insert(
            "shipper_otlp".into(),
            child(value(ChildDetail::Shipper(otlp))),
        );
        children.insert("buffer".into(), child(value(ChildDetail::Spool(buffer))));
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
}
