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

/// A server that accepts and never answers: each connection is held (as a backend
/// waiting for a startup would be) until the client ends its side, then closed a
/// moment later, as a backend ends.
/// Records how many were open at once and how many the client ended.
struct Silent {
    port: u16,
    open_max: Arc<Mutex<(usize, usize)>>,
    ended: Arc<Mutex<usize>>,
}

impl Silent {
    fn start() -> Silent {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let open_max = Arc::new(Mutex::new((0usize, 0usize)));
        let ended = Arc::new(Mutex::new(0usize));
        let (o, e) = (open_max.clone(), ended.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                {
                    let mut g = o.lock().expect("open");
                    g.0 += 1;
                    g.1 = g.1.max(g.0);
                }
                let (o, e) = (o.clone(), e.clone());
                std::thread::spawn(move || {
                    // Reads the startup packet and whatever follows, answers nothing,
                    // until the client ends its side.
                    let mut buf = [0u8; 1024];
                    while matches!(std::io::Read::read(&mut s, &mut buf), Ok(n) if n > 0) {}
                    *e.lock().expect("ended") += 1;
                    // A backend takes a while to end (more on a loaded server): the
                    // connection is still the server's until it closes.
                    std::thread::sleep(Duration::from_millis(1500));
                    o.lock().expect("open").0 -= 1;
                    drop(s);
                });
            }
        });
        Silent {
            port,
            open_max,
            ended,
        }
    }
}

#[test]
fn a_connection_that_never_starts_keeps_its_slot_until_the_server_side_ends() {
    let silent = Silent::start();
    let dir = crate::harness::shared_tempdir("pgagent-it");
    let listener = Listener::start(TOKEN);
    // A real cluster only for `config`'s shape; the agent talks to the silent server.
    let pg = PgCluster::start("");
    let toml = config(dir.path(), &pg, &listener.url(), 1)
        .replace(
            &format!(
                "host = \"{}\"\nport = {}\n",
                pg.socket_dir().display(),
                pg.port
            ),
            &format!(
                "host = \"127.0.0.1\"\nport = {}\nsslmode = \"disable\"\npool_max_size = 1\n",
                silent.port
            ),
        )
        .replace("connect_timeout_ms = 2000", "connect_timeout_ms = 300")
        .replace("databases = false\n", "databases = true\n")
        .replace(
            "settings = false\n",
            "settings = true\nsettings_interval_s = 1\n",
        );
    let agent = Agent::start(dir.path(), &toml, &[]);
    // Every attempt times out; the agent ends its side, the server side closes, and only
    // then may the next attempt connect: never two at once.
    wait_for(
        "attempts ended by the agent",
        Duration::from_secs(60),
        || (*silent.ended.lock().expect("ended") >= 5).then_some(()),
    );
    assert_eq!(silent.open_max.lock().expect("open").1, 1);
    assert!(!agent.logs_named("db_connect_failed").is_empty());
}

#[test]
fn every_servers_connections_together_stay_under_agent_max_connections() {
    // Two servers that are the same cluster: its pg_stat_activity counts both at once.
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let one = config(dir.path(), &pg, &listener.url(), 1)
        .replace(
            "shutdown_grace_s = 5\n",
            "shutdown_grace_s = 5\nmax_connections = 2\n",
        )
        .replace("[database]\n", "[database]\npool_max_size = 3\n")
        .replace(
            "databases = false\ntables = false\nvacuum_progress = false\nhorizon = false\n\
             replication = false\nserver_stats = false\nsettings = false\n",
            "databases_interval_s = 1\ntables = false\nvacuum_progress = false\n\
             horizon = false\nreplication = false\nserver_stats_interval_s = 1\n\
             settings_interval_s = 1\n",
        );
    let toml = format!("{one}[[servers]]\nname = \"one\"\n[[servers]]\nname = \"two\"\n");
    let _agent = Agent::start(dir.path(), &toml, &[]);
    let counter = Counter::start(&pg);
    let of = |server: &str| {
        listener
            .events_of("pg_databases")
            .iter()
            .filter(|e| e["server"] == server)
            .filter_map(|e| e["collected_at"].as_str().map(String::from))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    // Both servers' sources get connections (an idle one of the other server's gives
    // its slot up), while the two never have more than two between them.
    wait_for("both servers' cycles", Duration::from_secs(120), || {
        (of("one") >= 5 && of("two") >= 5).then_some(())
    });
    counter.wait_samples(20);
    assert!(counter.max() >= 1);
    assert!(counter.max() <= 2, "{} agent backends", counter.max());
}
