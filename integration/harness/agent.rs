//! The real `postgres-agent` binary as a child process: config written to a file, JSON
//! logs captured from stderr, real signals.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::pg::PgCluster;
use super::wait_for;

/// The token every test listener expects.
pub const TOKEN: &str = "test-token-5b1e";

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_postgres-agent")
}

/// A configuration for a test: the cluster, the listener, a state dir inside `dir`.
/// `logs = false` ends `[collection]`: tests replace it to add keys and sections.
pub fn config(dir: &Path, pg: &PgCluster, listener_url: &str, interval_s: u64) -> String {
    format!(
        "[agent]\nproject_id = \"it-project\"\nhostname = \"it-host\"\nstate_dir = \"{}\"\nshutdown_grace_s = 5\n\
         [database]\nhost = \"{}\"\nport = {}\nuser = \"postgres\"\ndbname = \"postgres\"\nconnect_timeout_ms = 2000\n\
         [collection]\ninterval_s = {interval_s}\nsample_interval_ms = 0\n\
         databases = false\ntables = false\nvacuum_progress = false\nhorizon = false\nreplication = false\nserver_stats = false\nsettings = false\nplans = false\n\
         statements = false\nlocks = false\nsystem = false\nlogs = false\n\
         [listener]\nurl = \"{listener_url}\"\ntoken = \"{TOKEN}\"\ntimeout_ms = 2000\nretry_max_ms = 1000\n",
        dir.join("state").display(),
        pg.socket_dir().display(),
        pg.port,
    )
}

/// Runs `postgres-agent once -c config`, asserts it exits 0, and returns the events it
/// printed, one JSON object per line.
pub fn once(config: &Path) -> Vec<Value> {
    let out = Command::new(bin())
        .args(["once", "-c"])
        .arg(config)
        .output()
        .expect("run once");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// A running agent; killed on drop.
pub struct Agent {
    child: Child,
    /// The config file (rewrite it and send SIGHUP to reload).
    pub config_path: PathBuf,
    /// Its state directory.
    pub state_dir: PathBuf,
    stderr_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl Agent {
    /// Writes `toml` to `dir/agent.toml` and starts `postgres-agent run` on it.
    pub fn start(dir: &Path, toml: &str, env: &[(&str, &str)]) -> Agent {
        let config_path = dir.join("agent.toml");
        std::fs::write(&config_path, toml).expect("write config");
        let stderr_path = dir.join(format!(
            "agent-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ));
        let stderr = std::fs::File::create(&stderr_path).expect("log file");
        // systemd sets WATCHDOG_PID to the service's pid; `("WATCHDOG_PID", "self")` does
        // the same through a shell that execs the agent (the pid stays the shell's).
        let mut cmd = if env.contains(&("WATCHDOG_PID", "self")) {
            let mut c = Command::new("/bin/sh");
            c.args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\"", bin()]);
            c
        } else {
            Command::new(bin())
        };
        let env: Vec<(&str, &str)> = env
            .iter()
            .copied()
            .filter(|(k, _)| *k != "WATCHDOG_PID")
            .collect();
        let child = cmd
            .args(["run", "-c"])
            .arg(&config_path)
            .args(["--log-format", "json", "--log-level", "debug"])
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn agent");
        Agent {
            child,
            config_path,
            state_dir: dir.join("state"),
            stderr_path,
            exit: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// Waits for the process to exit; `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                self.exit = Some(s);
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The raw stderr text.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Every JSON log record so far (lines that are not JSON are returned as strings).
    pub fn logs(&self) -> Vec<Value> {
        self.stderr()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| Value::String(l.to_string())))
            .collect()
    }

    /// Log records with this message.
    pub fn logs_named(&self, msg: &str) -> Vec<Value> {
        self.logs()
            .into_iter()
            .filter(|r| r["msg"] == msg)
            .collect()
    }

    /// Waits for a log record with message `msg` matching `pred`.
    pub fn wait_log(&self, msg: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(&format!("log record {msg}"), timeout, || {
            self.logs_named(msg).into_iter().find(|r| pred(r))
        })
    }

    /// A fresh status dump (SIGUSR1, then status.json written after the signal). The
    /// children's figures are from the supervisor's last ping (at most a second old).
    pub fn status(&self) -> Value {
        // Signal handlers are in place once the agent says it started.
        self.wait_log("agent_started", Duration::from_secs(20), |_| true);
        let path = self.state_dir.join("status.json");
        let before = chrono::Utc::now();
        self.signal(libc::SIGUSR1);
        wait_for("status.json from SIGUSR1", Duration::from_secs(10), || {
            let s: Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
            let written: chrono::DateTime<chrono::Utc> = s["written_at"].as_str()?.parse().ok()?;
            (s["trigger"] == "sigusr1" && written >= before).then_some(s)
        })
    }

    /// Ids of the events in the spool right now (read through SQLite, as an operator
    /// with sqlite3 would).
    pub fn spool_ids(&self) -> Vec<String> {
        spool_ids(&self.state_dir)
    }
}

/// Ids of the events in the spool of `state_dir`.
pub fn spool_ids(state_dir: &Path) -> Vec<String> {
    let path = state_dir.join("spool.db");
    if !path.exists() {
        return vec![];
    }
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open spool");
    conn.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    // The agent may have created the file but not its tables yet (it is starting).
    let mut st = match conn.prepare("SELECT id FROM events ORDER BY seq") {
        Ok(st) => st,
        Err(e) if e.to_string().contains("no such table") => return vec![],
        Err(e) => panic!("read the spool: {e}"),
    };
    let ids = st
        .query_map([], |r| r.get::<_, String>(0))
        .expect("query")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows");
    ids
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
