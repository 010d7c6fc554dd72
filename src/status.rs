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
    out.push_str("\nCHILD          STATE       RESTARTS  LAST SUCCESS   LAST ERROR\n");
    for (name, c) in &s.children {
        out.push_str(&format!(
            "{name:<14} {:<11} {:>8}  {:<14} {}\n",
            c.state,
            c.restarts,
            ago(now, c.last_success),
            c.last_error.as_deref().unwrap_or("-")
        ));
    }
    for (name, c) in &s.children {
        if let Some(d) = &c.detail {
            out.push_str(&format!("\n{name}: {d}"));
        }
    }
    out.push('\n');
    out
}
