//! `database.pool_max_size` is one cap for the whole process: counted in the server's own
//! `pg_stat_activity`, the agent never has more backends than the cap — not while reloads
//! that change `[database]` replace its pool again and again, and not while backends it
//! gave up on (stopped with SIGSTOP) still hold their sockets.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::agent::{config, Agent, TOKEN};
use crate::harness::listener::Listener;
use crate::harness::pg::PgCluster;
use crate::harness::{shared_tempdir, wait_for};

const CAP: usize = 4;

/// Counts the agent's backends every 100 ms from one psql session of its own.
struct Counter {
    samples: Arc<Mutex<Vec<usize>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    child: Child,
}

impl Counter {
    fn start(pg: &PgCluster) -> Counter {
        let mut child = pg
            .psql()
            .args(["-At", "-v", "ON_ERROR_STOP=0"])
            .env("PGAPPNAME", "counter")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn psql");
        let mut stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut line = String::new();
            while !st.load(Ordering::Relaxed) {
                let asked = stdin.write_all(
                    b"select count(*) from pg_stat_activity where application_name = 'postgres-agent';\n",
                );
                line.clear();
                if asked.is_err() || stdout.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if let Ok(n) = line.trim().parse::<usize>() {
                    s.lock().expect("samples").push(n);
                }
                // The sampling rate, not a wait for something.
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Counter {
            samples,
            stop,
            thread: Some(thread),
            child,
        }
    }

    fn taken(&self) -> usize {
        self.samples.lock().expect("samples").len()
    }

    fn max(&self) -> usize {
        self.samples
            .lock()
            .expect("samples")
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
    }

    /// Waits for `n` more samples.
    fn wait_samples(&self, n: usize) {
        let want = self.taken() + n;
        wait_for("samples of the backends", Duration::from_secs(120), || {
            (self.taken() >= want).then_some(())
        });
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn the_connection_cap_holds_through_reload_storms_and_stopped_backends() {
    let pg = PgCluster::start("shared_preload_libraries = 'pg_stat_statements'\n");
    pg.sql("create extension pg_stat_statements");
    pg.sql("create database other");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    // Every database source at 1 s, four connections for all of them.
    let toml = config(dir.path(), &pg, &listener.url(), 1)
        .replace(
            "[database]\n",
            "[database]\npool_max_size = 4\nstatement_timeout_ms = 1000\n",
        )
        .replace("statements = false", "statements = true")
        .replace("locks = false", "locks = true")
        .replace(
            "databases = false\ntables = false\nvacuum_progress = false\nhorizon = false\n\
             replication = false\nserver_stats = false\nsettings = false\n",
            "databases_interval_s = 1\ntables_interval_s = 1\nvacuum_progress_interval_s = 1\n\
             horizon_interval_s = 1\nreplication_interval_s = 1\nserver_stats_interval_s = 1\n\
             settings_interval_s = 1\n",
        );
    let agent = Agent::start(dir.path(), &toml, &[]);
    let counter = Counter::start(&pg);
    wait_for(
        "the agent's sources at work",
        Duration::from_secs(30),
        || (listener.events_of("pg_tables").len() > 1 && counter.max() >= 1).then_some(()),
    );

    // A storm of reloads that each build a new pool.
    let applied = |a: &Agent| a.logs_named("reload_applied").len();
    for i in 0..80u32 {
        let before = applied(&agent);
        let timeout = 2000 + i % 2;
        std::fs::write(
            &agent.config_path,
            toml.replace(
                "connect_timeout_ms = 2000",
                &format!("connect_timeout_ms = {timeout}"),
            ),
        )
        .expect("rewrite the config");
        agent.signal(libc::SIGHUP);
        wait_for("the reload applied", Duration::from_secs(20), || {
            (applied(&agent) > before).then_some(())
        });
        // A quarter of a second for the new pool's sources to connect.
        counter.wait_samples(2);
    }
    counter.wait_samples(20);
    assert!(counter.max() <= CAP, "{} agent backends", counter.max());

    // Three backends stop answering; the agent gives up on them, and their sockets
    // still count until they are closed.
    let pids: Vec<i32> = wait_for("three agent backends", Duration::from_secs(60), || {
        let pids: Vec<i32> = pg
            .sql("select pid from pg_stat_activity where application_name = 'postgres-agent' limit 3")
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        (pids.len() == 3).then_some(pids)
    });
    for &pid in &pids {
        // SAFETY: kill(2) with a pid read from the server.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
    }
    counter.wait_samples(100);
    let stuck_max = counter.max();
    for &pid in &pids {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
    }
    assert!(
        stuck_max <= CAP,
        "{stuck_max} agent backends with {} stopped",
        pids.len()
    );
    // And it recovers: sources ship again once the backends answer.
    let shipped = listener.events_of("pg_tables").len();
    wait_for("sources shipping again", Duration::from_secs(60), || {
        (listener.events_of("pg_tables").len() > shipped + 2).then_some(())
    });
    counter.wait_samples(10);
    assert!(counter.max() <= CAP, "{} agent backends", counter.max());
}
