//! The command line: exit codes, `check`, `once`.

use std::process::Command;

use std::time::Duration;

use crate::harness::agent::{bin, config, Agent, TOKEN};
use crate::harness::listener::Listener;
use crate::harness::pg::PgCluster;
use crate::harness::shared_tempdir;

fn run(args: &[&str], config_path: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .arg("-c")
        .arg(config_path)
        .output()
        .expect("run agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_config_exits_78_naming_every_bad_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "[agent]\nstate_dir = \"/tmp/x\"\ncolour = \"blue\"\n[database]\npool_max_size = 10\nstatement_timeout_ms = 100\n\
         [collection]\ninterval_s = 0\n[listener]\ntoken = \"very-secret\"\nbatch_max_events = \"many\"\n",
    )
    .expect("write");
    for cmd in ["run", "check", "once", "status"] {
        let (code, _, err) = run(&[cmd], &path);
        assert_eq!(code, 78, "{cmd}: {err}");
        for key in [
            "agent.colour",
            "agent.project_id",
            "database.pool_max_size",
            "database.statement_timeout_ms",
            "collection.interval_s",
            "listener.batch_max_events",
        ] {
            assert!(err.contains(key), "{cmd}: {key} not named in: {err}");
        }
        assert!(err.contains("6 problem(s)"), "{err}");
        assert!(!err.contains("very-secret"), "token printed: {err}");
    }
    let (code, _, err) = run(&["run"], &dir.path().join("missing.toml"));
    assert_eq!(code, 78);
    assert!(err.contains("no such file"), "{err}");
}

#[test]
fn a_broken_file_never_shows_the_token_at_start_or_on_reload() {
    // An unterminated string: the TOML error would quote the line, token and all.
    let broken = |dir: &std::path::Path| {
        format!(
            "[agent]\nproject_id = \"p\"\nstate_dir = {:?}\n[listener]\ntoken = \"tok-SECRET-1234\n",
            dir.join("state").display().to_string()
        )
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, broken(dir.path())).expect("write");
    for cmd in ["run", "check", "once", "status"] {
        let (code, out, err) = run(&[cmd], &path);
        assert_eq!(code, 78, "{cmd}: {err}");
        assert!(err.contains("not valid TOML at line 5"), "{cmd}: {err}");
        assert!(
            !(out + &err).contains("SECRET"),
            "{cmd}: the token was printed: {err}"
        );
    }

    // The same file arriving by SIGHUP: rejected, named, and not in the log or status.
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let agent = Agent::start(
        dir.path(),
        &config(dir.path(), &pg, &listener.url(), 1),
        &[],
    );
    listener.wait_first_request();
    std::fs::write(&agent.config_path, broken(dir.path())).expect("rewrite");
    agent.signal(libc::SIGHUP);
    let rejected = agent.wait_log("reload_rejected", Duration::from_secs(10), |_| true);
    assert!(
        rejected.to_string().contains("not valid TOML at line 5"),
        "{rejected}"
    );
    let status = agent.status();
    for shown in [agent.stderr(), status.to_string()] {
        assert!(!shown.contains("SECRET"), "the token was shown: {shown}");
    }
}

#[test]
fn the_state_directory_and_its_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: umask has no preconditions; 022 is the common default anyway.
    unsafe {
        libc::umask(0o022);
    }
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    // Left open by an earlier run or a hand-made install.
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(state.join("status.json"), "{}").expect("write");
    std::fs::set_permissions(
        state.join("status.json"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let agent = Agent::start(
        dir.path(),
        &config(dir.path(), &pg, &listener.url(), 1),
        &[],
    );
    listener.wait_first_request();
    agent.status();
    let mode = |name: &str| {
        std::fs::metadata(state.join(name))
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    assert_eq!(mode(""), 0o700);
    for f in ["spool.db", "spool.db-wal", "status.json"] {
        assert_eq!(mode(f), 0o600, "{f}");
    }
    assert_eq!(agent.logs_named("state_dir_permissions_tightened").len(), 1);
}

#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "[agent]\nproject_id = \"p\"\n").expect("write");
    let out = Command::new(bin())
        .args(["status", "-c"])
        .arg(&path)
        .env("POSTGRES_AGENT__DATABASE__POOL_MAX_SIZE", "9")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1 problem(s) in the environment:\n  database.pool_max_size (environment variable POSTGRES_AGENT__DATABASE__POOL_MAX_SIZE): "),
        "{err}"
    );
    assert!(!err.contains("agent.toml"), "{err}");
}

#[test]
fn usage_errors_exit_64() {
    let out = Command::new(bin()).arg("frobnicate").output().expect("run");
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn check_passes_and_then_names_each_failure_with_a_fix() {
    let mut pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let path = dir.path().join("agent.toml");
    let good = config(dir.path(), &pg, &listener.url(), 1);
    std::fs::write(&path, &good).expect("write");
    let (code, out, _) = run(&["check"], &path);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok    database  connected as postgres"),
        "{out}"
    );
    assert!(out.contains("accepted the token (HTTP 200)"), "{out}");
    assert!(out.contains("all checks passed"), "{out}");
    // The state directory is judged, not made: made here (as root, say) it would be
    // check's user's, not the service's.
    let state = dir.path().join("state");
    assert!(
        out.contains(&format!(
            "ok    state_dir {} does not exist yet: the agent creates it (0700) when it starts",
            state.display()
        )),
        "{out}"
    );
    assert!(!state.exists(), "check created {}", state.display());
    std::fs::write(&state, "a file").expect("write");
    let (code, out, _) = run(&["check"], &path);
    assert_eq!(code, 69, "{out}");
    assert!(
        out.contains(&format!(
            "FAIL  state_dir {} is not a directory",
            state.display()
        )),
        "{out}"
    );
    std::fs::remove_file(&state).expect("rm");

    std::fs::write(&path, good.replace(TOKEN, "wrong-token")).expect("write");
    let (code, out, _) = run(&["check"], &path);
    assert_eq!(code, 69, "{out}");
    assert!(out.contains("rejected the token (HTTP 401)"), "{out}");
    assert!(out.contains("fix: set listener.token"), "{out}");
    assert!(!out.contains("wrong-token"), "token printed: {out}");

    pg.stop_server();
    std::fs::write(&path, &good).expect("write");
    let (code, out, _) = run(&["check"], &path);
    assert_eq!(code, 69, "{out}");
    assert!(out.contains("FAIL  database  cannot connect"), "{out}");
    assert!(out.contains("fix: is the server running?"), "{out}");
    assert!(out.contains("1 check(s) failed"), "{out}");
}

#[test]
fn check_tells_a_missing_role_a_missing_database_and_refused_credentials_apart() {
    let pg = PgCluster::start("");
    pg.sql("CREATE ROLE hba_blocked LOGIN; CREATE ROLE needs_pw LOGIN PASSWORD 'right-pw'");
    pg.write_data_file(
        "pg_hba.conf",
        b"local all hba_blocked reject\nlocal all needs_pw scram-sha-256\nlocal all all trust\n",
    );
    pg.sql("SELECT pg_reload_conf()");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let path = dir.path().join("agent.toml");
    let good = config(dir.path(), &pg, &listener.url(), 1);
    let wrong_pw = dir.path().join("pw");
    std::fs::write(&wrong_pw, "wrong-pw").expect("write");
    let credentials = "fix: check database.user and database.password_file, and that pg_hba.conf allows this role from this host";
    let cases = [
        (
            good.replace("user = \"postgres\"", "user = \"nobody_here\""),
            "fix: create the role, as a superuser: CREATE ROLE nobody_here LOGIN; GRANT pg_monitor TO nobody_here;",
        ),
        (
            good.replace("dbname = \"postgres\"", "dbname = \"no_such_db\""),
            "fix: set database.dbname to an existing database (postgres is fine)",
        ),
        // pg_hba.conf refuses the role (28000, like a missing role).
        (
            good.replace("user = \"postgres\"", "user = \"hba_blocked\""),
            credentials,
        ),
        // The server asks for a password and none is configured (the client's error).
        (
            good.replace("user = \"postgres\"", "user = \"needs_pw\""),
            credentials,
        ),
        // A wrong password (28P01).
        (
            good.replace(
                "user = \"postgres\"",
                &format!(
                    "user = \"needs_pw\"\npassword_file = \"{}\"",
                    wrong_pw.display()
                ),
            ),
            credentials,
        ),
    ];
    for (text, fix) in cases {
        std::fs::write(&path, &text).expect("write");
        let (code, out, _) = run(&["check"], &path);
        assert_eq!(code, 69, "{out}");
        assert!(out.contains("FAIL  database  cannot connect"), "{out}");
        assert!(out.contains(fix), "{fix} in:\n{out}");
        assert!(!out.contains("wrong-pw"), "password printed: {out}");
    }
}

#[test]
fn check_says_how_to_make_pg_stat_statements_readable() {
    let mut pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        config(dir.path(), &pg, &listener.url(), 1)
            .replace("statements = false", "statements = true"),
    )
    .expect("write");
    let (code, out, _) = run(&["check"], &path);
    assert_eq!(code, 69, "{out}");
    assert!(
        out.contains("FAIL  statements pg_stat_statements is not installed in database postgres"),
        "{out}"
    );
    assert!(
        out.contains("fix: CREATE EXTENSION pg_stat_statements;"),
        "{out}"
    );

    pg.sql("create extension pg_stat_statements");
    let (code, out, _) = run(&["check"], &path);
    assert_eq!(code, 69, "{out}");
    assert!(out.contains("shared_preload_libraries"), "{out}");

    pg.stop_server();
    pg.append_conf("shared_preload_libraries = 'pg_stat_statements'\n");
    pg.start_server();
    let (code, out, _) = run(&["check"], &path);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok    statements pg_stat_statements 1."),
        "{out}"
    );
}

#[test]
fn once_prints_activity_as_json_lines_and_ships_nothing() {
    let pg = PgCluster::start("");
    let listener = Listener::start(TOKEN);
    let dir = shared_tempdir("pgagent-it");
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, config(dir.path(), &pg, &listener.url(), 1)).expect("write");
    let uuid = "7d3c0d2e-5a8b-4c1f-9e2d-3b4a5c6d7e8f";
    let _s = pg.session(&format!("bitville-{uuid}"), "select pg_sleep(60)");
    crate::harness::wait_for(
        "the session to be active",
        std::time::Duration::from_secs(10),
        || {
            (pg.sql("select count(*) from pg_stat_activity where query = 'select pg_sleep(60)'")
                == "1")
                .then_some(())
        },
    );
    let (code, out, err) = run(&["once"], &path);
    assert_eq!(code, 0, "{err}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let tagged: Vec<_> = events
        .iter()
        .filter(|e| e["data"]["correlation_id"] == uuid)
        .collect();
    assert_eq!(tagged.len(), 1, "{out}");
    assert!(events.iter().all(|e| e["kind"] == "pg_activity"
        && e["project"] == "it-project"
        && e["server"] == "it-host"));
    assert!(listener.received().is_empty());
    assert!(!dir.path().join("state").join("spool.db").exists());
}

/// Under systemd the journal is stderr (`JOURNAL_STREAM` names it): each line starts with
/// the record's syslog priority, so `journalctl -p warning` filters by level. A variable
/// inherited by a process whose stderr is elsewhere is ignored: plain JSON lines.
#[test]
fn under_the_journal_each_log_line_carries_its_priority_and_elsewhere_none() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = Listener::start(TOKEN);
    let path = dir.path().join("agent.toml");
    // No database: its sources warn; the agent's start is said at info level.
    std::fs::write(
        &path,
        format!(
            "[agent]\nproject_id = \"journal\"\nstate_dir = {:?}\n[database]\nhost = {:?}\nconnect_timeout_ms = 1000\n\
             [collection]\ninterval_s = 1\nlogs = false\n[listener]\nurl = {:?}\ntoken = {:?}\n",
            dir.path().join("state").display().to_string(),
            dir.path().join("no-socket").display().to_string(),
            listener.url(),
            TOKEN
        ),
    )
    .expect("write");
    let level_priority = |level: &str| match level {
        "CRIT" => 2,
        "ERRO" => 3,
        "WARN" => 4,
        "INFO" => 6,
        "DEBG" | "TRCE" => 7,
        other => panic!("unknown level {other}"),
    };
    for journal in [true, false] {
        let log = dir.path().join(format!("stderr-{journal}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let md = file.metadata().expect("metadata");
        let stream = if journal {
            format!("{}:{}", md.dev(), md.ino())
        } else {
            format!("{}:{}", md.dev(), md.ino() + 1)
        };
        let mut child = Command::new(bin())
            .args(["run", "-c"])
            .arg(&path)
            .args(["--log-level", "debug"])
            .env("JOURNAL_STREAM", &stream)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn");
        // Each line: (priority prefix if any, the JSON record).
        let parse = |text: &str| -> Vec<(Option<u8>, serde_json::Value)> {
            text.lines()
                .map(|l| {
                    let (p, rest) = match l.strip_prefix('<').and_then(|r| r.split_once('>')) {
                        Some((p, rest)) => (Some(p.parse::<u8>().expect("priority")), rest),
                        None => (None, l),
                    };
                    let v = serde_json::from_str(rest)
                        .unwrap_or_else(|e| panic!("not a JSON record ({e}): {l}"));
                    (p, v)
                })
                .collect()
        };
        crate::harness::wait_for(
            "a warning and an info record",
            Duration::from_secs(60),
            || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
                let lines = parse(complete);
                let has = |l: &str| lines.iter().any(|(_, v)| v["level"] == l);
                (has("WARN") && has("INFO")).then_some(())
            },
        );
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().expect("wait");
        assert_eq!(status.code(), Some(0), "journal={journal}");
        let lines = parse(&std::fs::read_to_string(&log).expect("read log"));
        assert!(lines.len() >= 3, "{lines:?}");
        for (p, v) in &lines {
            let level = v["level"].as_str().expect("level");
            if journal {
                assert_eq!(*p, Some(level_priority(level)), "{v}");
            } else {
                assert_eq!(*p, None, "{v}");
            }
        }
        if journal {
            assert!(lines.iter().any(|(p, _)| *p == Some(4)));
            assert!(lines.iter().any(|(p, _)| *p == Some(6)));
            assert!(lines.iter().any(|(p, _)| *p == Some(7)));
        }
    }
}

#[test]
fn config_prints_every_key_with_its_origin_and_no_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "[agent]\nproject_id = \"p\"\n[listener]\nurl = \"http://127.0.0.1:9/ingest/postgres\"\n\
         token = \"tok-SECRET-1234\"\n[otlp]\nendpoint = \"http://h:4318/?api_key=KEY-SECRET-9\"\n\
         headers = { authorization = \"Bearer HDR-SECRET-7\" }\n",
    )
    .expect("write");
    let out = Command::new(bin())
        .args(["config", "-c"])
        .arg(&path)
        .env("POSTGRES_AGENT__DATABASE__PORT", "5433")
        .output()
        .expect("config");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in {text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("project_id"), "project_id = \"p\" # file");
    assert_eq!(
        line("port"),
        "port = 5433 # environment POSTGRES_AGENT__DATABASE__PORT"
    );
    assert_eq!(line("pool_max_size"), "pool_max_size = 4 # default");
    assert_eq!(line("token"), "token = \"********\" # file");
    assert_eq!(
        line("endpoint"),
        "endpoint = \"http://h:4318/?api_key=***\" # file"
    );
    assert_eq!(
        line("headers"),
        "headers = { \"authorization\" = \"********\" } # file"
    );
    for secret in ["tok-SECRET-1234", "KEY-SECRET-9", "HDR-SECRET-7"] {
        assert!(!text.contains(secret), "{secret} shown: {text}");
    }
    // Every section, and as many keys as conf/agent.toml documents.
    for section in [
        "[agent]",
        "[database]",
        "[collection]",
        "[correlation]",
        "[logs]",
        "[listener]",
        "[buffer]",
        "[breaker]",
        "[metrics]",
        "[otlp]",
    ] {
        assert!(text.lines().any(|l| l == section), "{section}: {text}");
    }
    // A broken configuration is the config error, exit 78.
    std::fs::write(&path, "[agent]\nproject_id = 7\n").expect("write");
    let out = Command::new(bin())
        .args(["config", "-c"])
        .arg(&path)
        .output()
        .expect("config");
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("agent.project_id"));
}

#[test]
fn check_warns_that_host_metrics_and_the_log_file_are_this_hosts_for_a_server_elsewhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    // TEST-NET-1: an address that is never this machine's (nothing answers there).
    let toml = format!(
        "[agent]\nproject_id = \"p\"\nstate_dir = \"{}\"\n\
         [database]\nhost = \"192.0.2.1\"\nconnect_timeout_ms = 300\n\
         [collection]\nsystem = true\nlogs = true\n\
         [listener]\nurl = \"http://127.0.0.1:9/ingest\"\ntoken = \"t\"\n",
        dir.path().join("state").display()
    );
    std::fs::write(&path, &toml).expect("write");
    let (_, out, _) = run(&["check"], &path);
    let warned = |what: &str, problem: &str, fix: &str| {
        format!("warn  {what:<9} [database] host 192.0.2.1 is not this host: {problem}\n      fix: {fix}")
    };
    assert!(
        out.contains(&warned(
            "system",
            "host metrics describe this host, not the server's",
            "set system = false in [collection], or run the agent on the database's host"
        )),
        "{out}"
    );
    assert!(
        out.contains(&warned(
            "logs",
            "the log file read is this host's, not the server's",
            "set logs = false in [collection], or run the agent on the database's host"
        )),
        "{out}"
    );
    // Both off: nothing to say.
    std::fs::write(
        &path,
        toml.replace("system = true\nlogs = true", "system = false\nlogs = false"),
    )
    .expect("write");
    let (_, out, _) = run(&["check"], &path);
    assert!(!out.contains("is not this host"), "{out}");
}
