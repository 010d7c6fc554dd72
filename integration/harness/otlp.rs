//! A real OTLP/HTTP receiver on 127.0.0.1:0: `integration/otlp_receiver.py`, decoding
//! with the official definitions (PyPI's opentelemetry-proto, in a venv made by
//! `scripts/otlp-python.sh`). It records every request; stopping it kills the process
//! (connections refused), restarting binds the same port again.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

/// The venv's python (made once per test run).
fn python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/otlp-python.sh"
        ))
        .output()
        .expect("run scripts/otlp-python.sh");
        assert!(
            out.status.success(),
            "scripts/otlp-python.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
}

/// The receiver; killed on drop.
pub struct Receiver {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Receiver {
    /// Starts on a free port, answering 200.
    pub fn start() -> Receiver {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("mode"), "ok").expect("mode");
        let mut r = Receiver {
            child: None,
            port: 0,
            dir,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let mut child = Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/integration/otlp_receiver.py"
            ))
            .arg(self.port.to_string())
            .arg(self.out())
            .arg(self.dir.path().join("mode"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the OTLP receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read port");
        self.port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("receiver said {line:?}"));
        self.child = Some(child);
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("requests.jsonl")
    }

    /// The base endpoint (`/v1/logs` is the agent's to append).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `ok`, `status:503`, `reject-marked`.
    pub fn set_mode(&self, mode: &str) {
        std::fs::write(self.dir.path().join("mode"), mode).expect("mode");
    }

    /// Down: connections refused.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Up again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Every request, decoded, in arrival order.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.out())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The log records of the requests answered 200, with their resource attributes.
    pub fn accepted(&self) -> Vec<(Value, Value)> {
        let mut out = Vec::new();
        for req in self.requests().iter().filter(|r| r["status"] == 200) {
            for rl in req["request"]["resource_logs"]
                .as_array()
                .into_iter()
                .flatten()
            {
                for sl in rl["scopes"].as_array().into_iter().flatten() {
                    for r in sl["records"].as_array().into_iter().flatten() {
                        out.push((r.clone(), rl["resource"].clone()));
                    }
                }
            }
        }
        out
    }

    /// Event ids of the accepted records.
    pub fn event_ids(&self) -> Vec<String> {
        self.accepted()
            .iter()
            .filter_map(|(r, _)| r["attributes"]["postgres_agent.event_id"].as_str())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}
