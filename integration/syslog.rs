//! Server logs that arrive by syslog: PostgreSQL (`log_destination = 'syslog'`) → a
//! real rsyslog (Debian's package) on `/dev/log` → the agent's `[syslog] listen`, one
//! server over TCP (RFC 5424, octet-counted), another over UDP (RFC 3164). Every marker
//! statement arrives once, under its server, with multi-line and long (split) messages
//! whole and correlation ids intact; a UDP flood is accounted for to the datagram.
//! Needs root (rsyslog takes `/dev/log`, which PostgreSQL's syslog(3) writes to) and
//! rsyslog installed; says so and passes otherwise.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::agent::{Agent, TOKEN};
use crate::harness::listener::Listener;
use crate::harness::pg::PgCluster;
use crate::harness::prometheus::free_port;
use crate::harness::{is_root, shared_tempdir, wait_for};

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";
/// rsyslog's TLS driver (Debian's `rsyslog-gnutls`).
const GTLS: &str = "/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so";

/// rsyslogd in the foreground, on `/dev/log`, relaying local0 over TCP and local1 over
/// UDP to the agent's `port`, local2 over TLS to `tls_port` (trusting `ca`); stopped
/// (and `/dev/log` removed) on drop.
struct Rsyslog(Child);

impl Rsyslog {
    fn start(dir: &Path, port: u16, tls_port: u16, ca: &Path) -> Rsyslog {
        let conf = dir.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                "global(workDirectory=\"{dir}\" parser.escapeControlCharactersOnReceive=\"off\" DefaultNetstreamDriverCAFile=\"{ca}\")\n\
                 module(load=\"imuxsock\" SysSock.Name=\"/dev/log\" SysSock.Unlink=\"on\" SysSock.RateLimit.Interval=\"0\")\n\
                 local0.* action(type=\"omfwd\" target=\"127.0.0.1\" port=\"{port}\" protocol=\"tcp\" TCP_Framing=\"octet-counted\" template=\"RSYSLOG_SyslogProtocol23Format\")\n\
                 local1.* action(type=\"omfwd\" target=\"127.0.0.1\" port=\"{port}\" protocol=\"udp\")\n\
                 local2.* action(type=\"omfwd\" target=\"127.0.0.1\" port=\"{tls_port}\" protocol=\"tcp\" StreamDriver=\"gtls\" StreamDriverMode=\"1\" StreamDriverAuthMode=\"x509/name\" StreamDriverPermittedPeers=\"localhost\" TCP_Framing=\"octet-counted\" template=\"RSYSLOG_SyslogProtocol23Format\")\n",
                dir = dir.display(),
                ca = ca.display(),
            ),
        )
        .expect("rsyslog.conf");
        let child = Command::new(RSYSLOGD)
            .args(["-n", "-f"])
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rsyslogd");
        wait_for("/dev/log", Duration::from_secs(30), || {
            Path::new("/dev/log").exists().then_some(())
        });
        Rsyslog(child)
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file("/dev/log");
    }
}

fn cluster(facility: &str, ident: &str) -> PgCluster {
    PgCluster::start(&format!(
        "log_destination = 'syslog'\nsyslog_facility = '{facility}'\nsyslog_ident = '{ident}'\n\
         log_line_prefix = '%m [%p] %q%u@%d %a '\nlog_min_duration_statement = 0\n"
    ))
}

/// The `pg_log` events of `server`.
fn logs_of(listener: &Listener, server: &str) -> Vec<Value> {
    listener
        .events_of("pg_log")
        .into_iter()
        .filter(|e| e["server"] == server)
        .collect()
}

/// How many of `server`'s events carry `marker` in their statement or message.
fn count(listener: &Listener, server: &str, marker: &str) -> usize {
    logs_of(listener, server)
        .iter()
        .filter(|e| e["data"].to_string().contains(marker))
        .count()
}

fn vm_hwm_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn postgres_logs_relayed_by_rsyslog_over_tcp_udp_and_tls_arrive_once_each_whole() {
    if !is_root()
        || !Path::new(RSYSLOGD).exists()
        || !Path::new(GTLS).exists()
        || Path::new("/dev/log").exists()
    {
        eprintln!(
            "skipped: needs root, {RSYSLOGD} and {GTLS} (apt-get install rsyslog rsyslog-gnutls) and no other syslog daemon on /dev/log"
        );
        return;
    }
    let dir = shared_tempdir("syslog");
    let (port, tls_port) = (free_port(), free_port());
    // The receiver's certificate for localhost, from a CA rsyslog trusts; its key
    // private to its owner.
    crate::tls::certificates(dir.path());
    let key = dir.path().join("server.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    // The servers first (their syslog(3) connects to /dev/log at each message until it
    // can), then the agent, then rsyslog (whose TCP forwarding gives up for 30 s when
    // the receiver is not there yet).
    let tcp = cluster("local0", "pg_tcp");
    let udp = cluster("local1", "pg_udp");
    let tls = cluster("local2", "pg_tls");
    let listener = Listener::start(TOKEN);
    let mut toml = format!(
        "[agent]\nproject_id = \"it-project\"\nhostname = \"it-host\"\nstate_dir = \"{}\"\nshutdown_grace_s = 5\n\
         [database]\nuser = \"postgres\"\ndbname = \"postgres\"\n\
         [collection]\nactivity = false\nstatements = false\nlocks = false\nsystem = false\nsample_interval_ms = 0\n\
         databases = false\ntables = false\nvacuum_progress = false\nhorizon = false\nreplication = false\nserver_stats = false\nsettings = false\n\
         [listener]\nurl = \"{}\"\ntoken = \"{TOKEN}\"\ntimeout_ms = 2000\nretry_max_ms = 1000\n\
         [syslog]\nlisten = \"127.0.0.1:{port}\"\nlisten_tls = \"127.0.0.1:{tls_port}\"\n\
         tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        dir.path().join("state").display(),
        listener.url(),
        dir.path().join("server.crt").display(),
        key.display(),
    );
    // A third server takes only the flood below (its own program name and prefix), so
    // the flood's figures are its own.
    for (name, pg, ident, extra) in [
        ("tcp", &tcp, "pg_tcp", ""),
        ("udp", &udp, "pg_udp", ""),
        ("tls", &tls, "pg_tls", ""),
        (
            "flood",
            &udp,
            "pg_flood",
            "prefix = '%m [%p] %q%u@%d %a '\nsyslog_host = 'h'\n",
        ),
    ] {
        toml.push_str(&format!(
            "[[servers]]\nname = \"{name}\"\n[servers.database]\nhost = \"{}\"\nport = {}\n\
             [servers.logs]\nsyslog_ident = \"{ident}\"\n{extra}",
            pg.socket_dir().display(),
            pg.port
        ));
    }
    let agent = Agent::start(dir.path(), &toml, &[]);
    agent.wait_log("syslog_listening", Duration::from_secs(30), |_| true);
    // The prefix each server says, before the markers.
    wait_for("every prefix asked", Duration::from_secs(30), || {
        (agent.logs_named("syslog_prefix").len() == 3).then_some(())
    });
    let _rsyslog = Rsyslog::start(dir.path(), port, tls_port, &dir.path().join("ca.crt"));

    // Markers: short statements, a multi-line one, one over PostgreSQL's 900-byte
    // chunk, each from a session whose application_name carries a request id.
    let id = "0d8d4e7a-9f3c-4c8e-9a57-2f1b6a0e5c11";
    let long = format!("SELECT '{}' AS pad, 'long-marker-end'", "x ".repeat(1500));
    for (server, pg) in [("tcp", &tcp), ("udp", &udp), ("tls", &tls)] {
        // Each its own query (and log message).
        let mut statements: Vec<String> = (0..20)
            .map(|i| format!("SELECT 'marker-{server}-{i}'"))
            .collect();
        statements.push(format!("SELECT 1,\n  'multi-{server}'\n  AS second_line"));
        statements.push(format!("{long} /* {server} */"));
        let mut cmd = pg.psql();
        cmd.env("PGAPPNAME", format!("bitville-{id}"));
        for s in &statements {
            cmd.args(["-c", s]);
        }
        let out = cmd.output().expect("psql");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_for("every marker", Duration::from_secs(60), || {
        ["tcp", "udp", "tls"]
            .iter()
            .all(|s| {
                count(&listener, s, &format!("marker-{s}-19'")) == 1
                    && count(&listener, s, &format!("multi-{s}")) == 1
                    && count(&listener, s, "long-marker-end") >= 1
            })
            .then_some(())
    });
    for s in ["tcp", "udp", "tls"] {
        let other = if s == "tcp" { "udp" } else { "tcp" };
        for i in 0..20 {
            let marker = format!("marker-{s}-{i}'");
            assert_eq!(count(&listener, s, &marker), 1, "{s} {i}");
            assert_eq!(count(&listener, other, &marker), 0);
        }
        let events = logs_of(&listener, s);
        let multi: Vec<&Value> = events
            .iter()
            .filter(|e| e["data"].to_string().contains(&format!("multi-{s}")))
            .collect();
        let text = multi[0]["data"].to_string();
        assert!(
            text.contains(&format!("SELECT 1,\\n  'multi-{s}'\\n  AS second_line")),
            "{s}: the statement's lines: {text}"
        );
        let long_events: Vec<&Value> = events
            .iter()
            .filter(|e| e["data"].to_string().contains("long-marker-end"))
            .collect();
        assert_eq!(long_events.len(), 1, "{s}: {long_events:?}");
        let ltext = long_events[0]["data"].to_string();
        assert!(
            ltext.contains(&format!("'{}'", "x ".repeat(1500))),
            "{s}: the long statement whole"
        );
        for e in multi.iter().chain(long_events.iter()) {
            assert_eq!(e["data"]["correlation_id"], id, "{s}: {e}");
            assert_eq!(e["data"]["class"], "slow_query", "{s}: {e}");
        }
    }
    let ids: Vec<String> = listener
        .events_of("pg_log")
        .iter()
        .filter_map(|e| e["id"].as_str().map(String::from))
        .collect();
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "an event id twice");

    // A flood over UDP straight at the receiver: every datagram is either received or
    // counted as dropped at the socket, and memory stays bounded.
    let status = agent.status();
    let before = &status["children"]["syslog"]["detail"];
    let (received0, dropped0) = (
        before["servers"]["flood"]["messages_total"]
            .as_u64()
            .unwrap_or(0),
        before["udp_dropped_total"].as_u64().unwrap_or(0),
    );
    let hwm0 = vm_hwm_kb(agent.pid());
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let sent: u64 = 200_000;
    // 100,000 datagrams a second: a pace, not a wait (the whole machine is not
    // flooded, only the receiver).
    let start = std::time::Instant::now();
    for i in 0..sent {
        if i % 1000 == 0 {
            let due = start + Duration::from_micros(i * 10);
            std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
        }
        let msg = format!(
            "<139>Dec  5 10:00:00 h pg_flood[77]: [{}] 2026-12-05 10:00:00.000 UTC [77] x@y z ERROR:  flood {i}",
            i + 1
        );
        let _ = sock.send_to(msg.as_bytes(), ("127.0.0.1", port));
    }
    let (received, dropped) = wait_for("the flood accounted for", Duration::from_secs(120), || {
        let s = agent.status();
        let d = &s["children"]["syslog"]["detail"];
        let received = d["servers"]["flood"]["messages_total"].as_u64()? - received0;
        let dropped = d["udp_dropped_total"].as_u64()? - dropped0;
        (received + dropped == sent).then_some((received, dropped))
    });
    let hwm = vm_hwm_kb(agent.pid());
    assert!(
        hwm < hwm0 + 64 * 1024,
        "peak RSS {hwm0} kB → {hwm} kB with {received} received, {dropped} dropped"
    );
    eprintln!("flood: {sent} sent, {received} received, {dropped} dropped at the socket");
    // Every datagram received is one event, shipped once.
    let flood = |l: &Listener| -> Vec<String> {
        logs_of(l, "flood")
            .iter()
            .filter(|e| {
                e["data"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("flood "))
            })
            .filter_map(|e| e["data"]["message"].as_str().map(String::from))
            .collect()
    };
    let shipped = wait_for(
        "the received flood shipped",
        Duration::from_secs(120),
        || {
            let f = flood(&listener);
            (f.len() as u64 >= received).then_some(f)
        },
    );
    let distinct: BTreeSet<&String> = shipped.iter().collect();
    assert_eq!(
        shipped.len() as u64,
        received,
        "each received datagram once"
    );
    assert_eq!(distinct.len(), shipped.len());

    // The flood's server takes its program name from host `h` only: from another host
    // the same message is no server's.
    let unrouted = || {
        agent.status()["children"]["syslog"]["detail"]["unrouted_total"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = unrouted();
    sock.send_to(
        b"<139>Dec  5 10:00:00 elsewhere pg_flood[77]: [1] 2026-12-05 10:00:00.000 UTC [77] x@y z ERROR:  not ours",
        ("127.0.0.1", port),
    )
    .expect("send");
    wait_for(
        "the other host's message unrouted",
        Duration::from_secs(30),
        || (unrouted() == before + 1).then_some(()),
    );
    assert!(flood(&listener).iter().all(|m| !m.contains("not ours")));

    // A sender that does not speak TLS to the TLS port is refused and counted.
    let before = agent.status()["children"]["syslog"]["detail"]["tls_handshake_failures_total"]
        .as_u64()
        .unwrap_or(0);
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", tls_port)).expect("connect");
    std::io::Write::write_all(
        &mut plain,
        b"<13>Dec  5 10:00:00 h pg_tls[1]: [1] plaintext\n",
    )
    .expect("write");
    wait_for(
        "the plaintext sender refused",
        Duration::from_secs(30),
        || {
            let d = &agent.status()["children"]["syslog"]["detail"];
            (d["tls_handshake_failures_total"].as_u64()? > before).then_some(())
        },
    );
    assert_eq!(count(&listener, "tls", "plaintext"), 0);

    // `check` says where each server's log comes from and that the server sends it.
    let out = Command::new(crate::harness::agent::bin())
        .args(["check", "-c"])
        .arg(&agent.config_path)
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&out.stdout);
    for s in ["tcp", "udp", "tls"] {
        let prefix = format!("ok    {s}/log ");
        assert!(
            text.lines()
                .any(|l| l.starts_with(&prefix) && l.contains("arrives by syslog")),
            "{text}"
        );
    }
}
