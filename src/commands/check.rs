//! `check`: is the config valid, is the database reachable with the configured role and
//! privileges, is the listener reachable and accepting the token? Every failure is
//! printed with how to fix it; exit 0 only if everything passed.

use std::time::Duration;

use crate::cli::{Cli, EXIT_OK, EXIT_UNAVAILABLE};
use crate::config::Config;
use crate::db::{describe, pg_config};
use crate::model::EventKind;

struct Report {
    failures: usize,
    /// `name/` while a `[[servers]]` entry is checked: its lines say which server.
    scope: String,
}

impl Report {
    fn ok(&self, what: &str, detail: &str) {
        println!("ok    {:<9} {detail}", self.scoped(what));
    }

    fn warn(&self, what: &str, problem: &str, fix: &str) {
        let fix = self.keys_in(fix);
        println!("warn  {:<9} {problem}\n      fix: {fix}", self.scoped(what));
    }

    fn fail(&mut self, what: &str, problem: &str, fix: &str) {
        self.failures += 1;
        let fix = self.keys_in(fix);
        println!("FAIL  {:<9} {problem}\n      fix: {fix}", self.scoped(what));
    }

    /// A fix as the operator finds its keys: under the server's `[[servers]]` entry
    /// (`servers.db1.database.host`) while one is checked.
    fn keys_in(&self, fix: &str) -> String {
        let Some(name) = self.scope.strip_suffix('/') else {
            return fix.to_string();
        };
        server_keys(fix, name)
    }

    fn scoped(&self, what: &str) -> String {
        format!("{}{what}", self.scope)
    }
}

/// Runs every check; exit 0 if all passed, 69 otherwise.
pub fn check(cli: &Cli, config: Config) -> i32 {
    let mut r = Report {
        failures: 0,
        scope: String::new(),
    };
    r.ok("config", &format!("{} is valid", cli.config.display()));
    let metrics = config.metrics.listen;
    let page = metrics.map(|_| page_sources_off(&config));
    check_state_dir(&mut r, &config);
    check_files_for_service(&mut r, cli);
    let system = actix_rt::System::new();
    let r = system.block_on(async move {
        // Each server as its children see it; in the `[[servers]]` form its lines
        // start with its name.
        for server in &config.servers {
            let view = config.view(server);
            match &server.name {
                None => check_host_sources(&r, &view),
                Some(name) => {
                    r.scope = format!("{name}/");
                    say_where(&r, server);
                }
            }
            check_database(&mut r, &view).await;
            check_custom(&mut r, &view).await;
            if view.collection.logs && !view.logs.syslog_ident.is_empty() {
                check_syslog(&mut r, &view).await;
            } else if view.collection.logs {
                check_log(&mut r, &view).await;
            }
        }
        r.scope.clear();
        // Each output through its shipper's own request.
        for output in config.outputs() {
            let name = output.as_str();
            match (crate::shipper::outputs::spec(output).check)(&config).await {
                Ok(said) => r.ok(name, &said),
                Err((problem, fix)) => r.fail(name, &problem, &fix),
            }
        }
        r
    });
    let mut r = r;
    if let Some(addr) = metrics {
        check_metrics(&mut r, addr);
    }
    match page {
        Some(None) => r.ok(
            "dbmetrics",
            "off ([metrics] database = false): the page serves the agent's own figures",
        ),
        Some(Some(off)) if off.is_empty() => r.ok(
            "dbmetrics",
            "the database's metrics are served under postgres_exporter's names from every source's latest reading",
        ),
        Some(Some(off)) => {
            for (key, families) in off {
                r.warn(
                    "dbmetrics",
                    &format!("the database's metrics lack {families}: [collection] {key} is off"),
                    &format!("set {key} = true in [collection] to serve them"),
                );
            }
        }
        None => {}
    }
    if r.failures == 0 {
        println!("all checks passed");
        EXIT_OK
    } else {
        println!("{} check(s) failed", r.failures);
        EXIT_UNAVAILABLE
    }
}

/// `text` with each key of a server's own sections (`database.`, `collection.`,
/// `logs.` at a word's start) named under the entry `name`.
fn server_keys(text: &str, name: &str) -> String {
    let mut out = String::with_capacity(text.len() + 32);
    let mut rest = text;
    while !rest.is_empty() {
        let at_word = out
            .chars()
            .last()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '.' || c == '_'));
        let section = ["database.", "collection.", "logs."]
            .into_iter()
            .find(|s| rest.starts_with(s));
        if let (true, Some(s)) = (at_word, section) {
            out.push_str("servers.");
            out.push_str(name);
            out.push('.');
            out.push_str(s);
            rest = &rest[s.len()..];
            continue;
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

/// Where a `[[servers]]` entry's server is, and what that means for what is read of it.
fn say_where(r: &Report, server: &crate::config::ServerConfig) {
    let db = &server.database;
    let at = format!("{}:{}", db.host, db.port);
    if server.local {
        let here: Vec<&str> = [
            (server.collection.system, "host metrics"),
            (server.collection.logs, "its log"),
        ]
        .iter()
        .filter_map(|(on, what)| on.then_some(*what))
        .collect();
        let read = match here.as_slice() {
            [] => "everything over SQL (system and logs are off)".to_string(),
            _ => format!("{} read here", here.join(" and ")),
        };
        r.ok("server", &format!("{at} is on this host: {read}"));
        return;
    }
    let log = if server.collection.logs {
        format!("its log from {}", server.logs.path)
    } else {
        "no log (set [servers.logs] path to a copy of it to read one)".to_string()
    };
    r.ok(
        "server",
        &format!("{at} is another host's: everything over SQL, no host metrics, {log}"),
    );
}

/// Host metrics and the log file are this host's: for a server on another host they
/// would be shipped under its name while describing this one.
fn check_host_sources(r: &Report, config: &Config) {
    let db = &config.database;
    if crate::config::is_this_host(&db.host, db.port) != Some(false) {
        return;
    }
    let elsewhere = format!("[database] host {} is not this host", db.host);
    if config.collection.system {
        r.warn(
            "system",
            &format!("{elsewhere}: host metrics describe this host, not the server's"),
            "set system = false in [collection], or run the agent on the database's host",
        );
    }
    if config.collection.logs {
        r.warn(
            "logs",
            &format!("{elsewhere}: the log file read is this host's, not the server's"),
            "set logs = false in [collection], or run the agent on the database's host",
        );
    }
}

/// The sources the database's metrics page takes families from, by their `[collection]`
/// key, with the families each gives.
const PAGE_SOURCES: &[(EventKind, &str, &str)] = &[
    (
        EventKind::PgActivity,
        "activity",
        "pg_stat_activity_*, pg_long_running_transactions*, pg_process_idle_seconds",
    ),
    (EventKind::PgLocks, "locks", "pg_locks_count"),
    (EventKind::PgStatements, "statements", "pg_stat_statements_*"),
    (
        EventKind::PgDatabases,
        "databases",
        "pg_stat_database_*, pg_database_size_bytes, pg_database_wraparound_*",
    ),
    (
        EventKind::PgTables,
        "tables",
        "pg_stat_user_tables_*, pg_statio_user_tables_*, pg_stat_user_indexes_*, pg_statio_user_indexes_*",
    ),
    (
        EventKind::PgServerStats,
        "server_stats",
        "pg_static, pg_stat_bgwriter_*, pg_stat_archiver_*, pg_postmaster_start_time_seconds, pg_wal_*",
    ),
    (EventKind::PgSettings, "settings", "pg_settings_*, pg_roles_connection_limit"),
    (
        EventKind::PgReplication,
        "replication",
        "pg_stat_replication_*, pg_replication_slots_*, pg_stat_wal_receiver_*",
    ),
    (
        EventKind::PgVacuumProgress,
        "vacuum_progress",
        "pg_stat_progress_vacuum_*",
    ),
];

/// With `[metrics] database` on, the sources the page takes families from that are off
/// (key, families); `None` when the page is off.
fn page_sources_off(config: &Config) -> Option<Vec<(&'static str, &'static str)>> {
    if !config.metrics.database_readings() {
        return None;
    }
    let on = crate::sources::enabled(config);
    Some(
        PAGE_SOURCES
            .iter()
            .filter(|(kind, ..)| !on.iter().any(|(k, _)| k == kind))
            .map(|(_, key, families)| (*key, *families))
            .collect(),
    )
}

/// `[metrics] listen`: free, or held by a running agent serving its metrics there.
fn check_metrics(r: &mut Report, addr: std::net::SocketAddr) {
    let who = crate::access::Who::judged();
    // Root may bind below 1024; the service has no capability to (its unit drops them).
    if addr.port() < 1024 && who.uid != 0 {
        return r.fail(
            "metrics",
            &format!(
                "user {} cannot listen on {addr}: ports below 1024 need a capability the service does not have",
                who.name
            ),
            "set metrics.listen to a port above 1023, e.g. \"127.0.0.1:9187\" (postgres_exporter's)",
        );
    }
    match std::net::TcpListener::bind(addr) {
        Ok(_) => r.ok(
            "metrics",
            &format!("{addr} is free: the agent will serve http://{addr}/metrics"),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if serves_agent_metrics(addr) {
                r.ok(
                    "metrics",
                    &format!("http://{addr}/metrics is served by a running agent"),
                );
            } else {
                r.fail(
                    "metrics",
                    &format!("{addr} is in use by another program"),
                    &format!("set metrics.listen to a free port, or stop what holds it (ss -ltnp 'sport = :{}')", addr.port()),
                );
            }
        }
        Err(e) => r.fail(
            "metrics",
            &format!("cannot listen on {addr}: {e}"),
            "use an address of this host (127.0.0.1 unless the scraper is elsewhere) and a port above 1023",
        ),
    }
}

/// Whether `GET /metrics` on `addr` answers with this agent's exposition.
fn serves_agent_metrics(addr: std::net::SocketAddr) -> bool {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(2);
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    if s.write_all(b"GET /metrics HTTP/1.0\r\nHost: check\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut text = Vec::new();
    let _ = s.take(4 << 20).read_to_end(&mut text);
    memchr::memmem::find(&text, b"\npostgres_agent_info{").is_some()
}

/// The state directory, judged for the user the service runs as, without creating or
/// changing anything: a directory made here by root would be root's, and the service
/// could not write it.
fn check_state_dir(r: &mut Report, config: &Config) {
    use crate::access::{blocked, Want, Who};
    use std::os::unix::fs::MetadataExt;
    let dir = &config.agent.state_dir;
    let who = Who::judged();
    let me = Who::current();
    let whose = if who.uid == me.uid {
        format!("user {}", who.name)
    } else {
        format!(
            "user {} (the service's; judged for it, not for {})",
            who.name, me.name
        )
    };
    let d = dir.display();
    let owner = format!("{}:{}", who.name, who.group());
    let make = format!(
        "sudo install -d -o {} -g {} -m 0700 {d}",
        who.name,
        who.group()
    );
    let repair = format!("sudo chown -R {owner} {d} && sudo chmod 0700 {d}");
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => r.fail(
            "state_dir",
            &format!("{d} is not a directory"),
            "set agent.state_dir to a directory (the package's is /var/lib/postgres-agent)",
        ),
        Ok(m) => {
            if let Some(b) = blocked(dir, Want::Write, &who) {
                return r.fail("state_dir", &b.problem(&who), &repair);
            }
            if who.uid != 0 && m.uid() != who.uid {
                let theirs = crate::access::user_name(m.uid())
                    .map_or_else(|| format!("uid {}", m.uid()), |n| format!("user {n}"));
                return r.fail(
                    "state_dir",
                    &format!(
                        "{d} belongs to {theirs}, not to {whose}: the agent keeps it private (0700) and only its owner may"
                    ),
                    &repair,
                );
            }
            if who.uid == me.uid && !writable_here(dir) {
                return r.fail(
                    "state_dir",
                    &format!(
                        "{d} refuses new files although its mode allows them (read-only file system, ACL or security module): {}",
                        std::io::Error::last_os_error()
                    ),
                    "set agent.state_dir to a writable directory (the systemd unit allows only /var/lib/postgres-agent)",
                );
            }
            let mode = m.mode() & 0o777;
            if mode != crate::state_dir::DIR_MODE {
                r.warn(
                    "state_dir",
                    &format!("{d} is {mode:04o}: the spool holds query texts and log lines"),
                    &format!("nothing to do: the agent makes it 0700 when it starts (now: sudo chmod 0700 {d})"),
                );
            }
            r.ok("state_dir", &format!("{d} is writable by {whose}"));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = dir
                .ancestors()
                .skip(1)
                .find(|a| a.exists())
                .unwrap_or_else(|| std::path::Path::new("/"));
            match blocked(parent, Want::Write, &who) {
                None => r.ok(
                    "state_dir",
                    &format!("{d} does not exist yet: the agent creates it (0700) when it starts, as {whose}"),
                ),
                Some(b) if dir == std::path::Path::new("/var/lib/postgres-agent") => r.warn(
                    "state_dir",
                    &format!("{d} does not exist and {}: systemd creates it for the service (StateDirectory=), but not for an agent started by hand", b.problem(&who)),
                    &make,
                ),
                Some(b) => r.fail(
                    "state_dir",
                    &format!("{d} does not exist, and {}", b.problem(&who)),
                    &make,
                ),
            }
        }
        Err(e) => match blocked(dir, Want::Write, &who) {
            Some(b) => r.fail("state_dir", &b.problem(&who), &b.fix(&who)),
            None => r.fail(
                "state_dir",
                &format!("cannot look at {d}: {e}"),
                "set agent.state_dir to a directory the agent's user may write",
            ),
        },
    }
}

/// Run as root for the service's user: root read the config and the files it names, the
/// service must too (a token file left root's 0600 passes here and fails at start).
fn check_files_for_service(r: &mut Report, cli: &Cli) {
    use crate::access::{blocked, Want, Who};
    let (who, me) = (Who::judged(), Who::current());
    if who.uid == me.uid {
        return;
    }
    let mut files = vec![("config".to_string(), cli.config.clone())];
    if let Ok((_, keys)) = Config::load_effective(&cli.config) {
        for k in keys {
            let named = k.key.ends_with("_file")
                || [
                    "database.sslrootcert",
                    "database.sslcert",
                    "database.sslkey",
                ]
                .contains(&k.key.as_str());
            let path: Option<String> = serde_json::from_str(&k.value).ok();
            if let (true, Some(p)) = (named, path.filter(|p| !p.is_empty())) {
                files.push((k.key.clone(), p.into()));
            }
        }
    }
    let mut all = true;
    for (key, path) in files {
        if let Some(b) = blocked(&path, Want::Read, &who) {
            all = false;
            let fix = if b.dir {
                b.fix(&who)
            } else {
                format!(
                    "sudo chgrp {g} {p} && sudo chmod g+r {p}  (the group {g}, not everyone: it may hold a secret)",
                    g = who.group(),
                    p = path.display()
                )
            };
            r.fail("files", &format!("{key}: {}", b.problem(&who)), &fix);
        }
    }
    if all {
        r.ok(
            "files",
            &format!(
                "user {} may read the config and the files it names",
                who.name
            ),
        );
    }
}

/// Whether this process may create files in `dir` (the kernel's answer: ACLs, read-only
/// mounts and security modules included), without creating one.
fn writable_here(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access only reads the path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

async fn check_database(r: &mut Report, config: &Config) {
    let db = &config.database;
    let target = format!("{}:{} as {} to {}", db.host, db.port, db.user, db.dbname);
    let tls =
        match crate::db::tls::make(db) {
            Ok(t) => t,
            Err(e) => return r.fail(
                "database",
                &e.to_string(),
                "fix database.sslmode / database.sslrootcert / database.sslcert / database.sslkey",
            ),
        };
    let pg = pg_config(db);
    let connect = pg.connect(tls);
    let (client, conn) = match tokio::time::timeout(db.connect_timeout + Duration::from_secs(1), connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let msg = describe(&e);
            let credentials = || "check database.user and database.password_file, and that pg_hba.conf allows this role from this host".to_string();
            // By SQLSTATE; the server gives "no such role" and a pg_hba refusal the same
            // one (28000), which only its message tells apart.
            let fix = match e.as_db_error().map(|d| d.code().code()) {
                Some("28P01") => credentials(),
                Some("28000") if msg.contains("does not exist") => format!(
                    "create the role, as a superuser: CREATE ROLE {u} LOGIN; GRANT pg_monitor TO {u};",
                    u = quote_ident(&db.user)
                ),
                Some("28000") => credentials(),
                Some("3D000") => {
                    "set database.dbname to an existing database (postgres is fine)".to_string()
                }
                // The client's own error: the server asked for a password none was given.
                None if msg.contains("password") => credentials(),
                _ => "is the server running? check database.host (socket directory or host name) and database.port".to_string(),
            };
            return r.fail("database", &format!("cannot connect {target}: {msg}"), &fix);
        }
        Err(_) => {
            return r.fail(
                "database",
                &format!("no answer from {target} within {:?}", db.connect_timeout),
                "check database.host/port and firewalls; raise database.connect_timeout_ms if the network is slow",
            )
        }
    };
    actix_rt::spawn(conn);
    let user = db.user.as_str();
    let q = "SELECT current_user::text, current_setting('server_version'),
                    pg_has_role(current_user, 'pg_monitor', 'USAGE')
                    OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)";
    match client.query_one(q, &[]).await {
        Ok(row) => {
            let (user, version, monitor): (String, String, Option<bool>) =
                (row.get(0), row.get(1), row.get(2));
            if monitor == Some(true) {
                r.ok(
                    "database",
                    &format!(
                        "connected as {user} to PostgreSQL {version}; role can read all statistics"
                    ),
                );
            } else {
                r.fail(
                    "database",
                    &format!("connected as {user} to PostgreSQL {version}, but the role lacks pg_monitor: other sessions' queries would read <insufficient privilege>"),
                    &format!("GRANT pg_monitor TO {};", quote_ident(&user)),
                );
            }
        }
        Err(e) => r.fail(
            "database",
            &format!("query failed: {}", describe(&e)),
            &query_fix(&e, user),
        ),
    }
    // One shared_preload_libraries line for every fix that needs it: pasting one must
    // not drop what another needs.
    let current: String = match client
        .query_one("SELECT current_setting('shared_preload_libraries')", &[])
        .await
    {
        Ok(row) => row.get(0),
        Err(_) => String::new(),
    };
    let preload = preload_line(
        &current,
        &[
            ("pg_stat_statements", config.collection.statements),
            ("auto_explain", config.collection.logs),
        ],
    );
    if config.collection.statements {
        check_statements(r, &client, &db.dbname, &preload, user).await;
    }
    let logged = config.collection.logs && check_plans(r, &client, &preload, user).await;
    let enabled = crate::sources::enabled(config);
    let planned = enabled
        .iter()
        .any(|(k, _)| *k == crate::model::EventKind::PgPlans)
        && check_agent_plans(r, &client, config, user).await;
    plans_come_from(r, logged, planned);
    if crate::sources::specs()
        .any(|s| s.reads_statistics && enabled.iter().any(|(k, _)| *k == s.kind))
    {
        check_health(r, &client, config).await;
    }
}

/// What the health sources need beyond pg_monitor: statistics collected, CONNECT on
/// the databases the tables pass visits, I/O timing for I/O times.
async fn check_health(r: &mut Report, client: &tokio_postgres::Client, config: &Config) {
    let q =
        "SELECT current_setting('track_counts')::bool, current_setting('track_io_timing')::bool,
                    pg_has_role('pg_read_all_stats', 'USAGE'),
                    (SELECT coalesce(array_agg(datname::text ORDER BY datname), '{}')
                       FROM pg_catalog.pg_database
                      WHERE datallowconn AND NOT datistemplate
                        AND NOT has_database_privilege(oid, 'CONNECT')),
                    (SELECT count(*) FROM pg_catalog.pg_database
                      WHERE datallowconn AND NOT datistemplate)";
    let row = match client.query_one(q, &[]).await {
        Ok(row) => row,
        Err(e) => {
            return r.fail(
                "health",
                &describe(&e),
                &query_fix(&e, &config.database.user),
            )
        }
    };
    let (counts, io_timing, all_stats): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
    let closed: Vec<String> = row.get(3);
    let databases: i64 = row.get(4);
    let user = &config.database.user;
    if !counts {
        return r.fail(
            "health",
            "track_counts is off: the server keeps no table or database statistics (and autovacuum cannot work)",
            "ALTER SYSTEM SET track_counts = on; SELECT pg_reload_conf();",
        );
    }
    if !all_stats {
        r.warn(
            "health",
            "the role lacks pg_read_all_stats: other sessions' snapshots (pg_xmin_horizon), vacuum progress and standbys' positions read empty",
            &format!("GRANT pg_monitor TO {};", quote_ident(user)),
        );
    }
    let tables = crate::model::EventKind::PgTables;
    if config.collection.health.contains_key(&tables) && !closed.is_empty() {
        r.warn(
            "health",
            &format!(
                "the tables pass cannot connect to {} of {databases} databases: {}",
                closed.len(),
                closed.join(", ")
            ),
            &closed
                .iter()
                .map(|d| {
                    format!(
                        "GRANT CONNECT ON DATABASE {} TO {};",
                        quote_ident(d),
                        quote_ident(user)
                    )
                })
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    if !io_timing {
        r.warn(
            "health",
            "track_io_timing is off: read and write times (blk_read_time, pg_stat_io) stay 0",
            "ALTER SYSTEM SET track_io_timing = on; SELECT pg_reload_conf();  -- check the clock's cost first with pg_test_timing",
        );
    }
    r.ok(
        "health",
        &format!(
            "statistics collected; the tables pass can read {} of {databases} databases",
            databases - closed.len() as i64
        ),
    );
}

/// A name as SQL writes it: quoted only when it must be (safe to paste).
fn quote_ident(name: &str) -> String {
    let plain = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// `shared_preload_libraries = '…'` with what the server loads now and every library
/// `wanted` marks as needed (in that order), each once.
fn preload_line(current: &str, wanted: &[(&str, bool)]) -> String {
    let mut libs: Vec<String> = current
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for (lib, needed) in wanted {
        if *needed && !libs.iter().any(|l| l == lib) {
            libs.push(lib.to_string());
        }
    }
    format!("shared_preload_libraries = '{}'", libs.join(","))
}

/// The fix for a catalogue query that failed: the privilege when the server refused one
/// (SQLSTATE 42501), else what the error's class says.
fn query_fix(e: &tokio_postgres::Error, user: &str) -> String {
    match e.as_db_error().map(|d| d.code().code()) {
        Some("42501") => format!(
            "GRANT pg_monitor TO {};  -- as a superuser: pg_monitor holds pg_read_all_settings, pg_read_all_stats and pg_stat_scan_tables, what the agent reads",
            quote_ident(user)
        ),
        Some("57014") => "the server cancelled the query (statement_timeout): raise database.statement_timeout_ms, or find what makes the catalogue slow (locks on pg_class, a bloated catalogue)".to_string(),
        Some(code) => format!(
            "not a privilege problem (SQLSTATE {code}): the server log names this session's error; report it with `postgres-agent --version` and the server's version"
        ),
        None => "the connection failed during the query: is the server running and reachable?".to_string(),
    }
}

/// The lines that make the server log plans the agent reads best, as `check` prints them.
pub const AUTO_EXPLAIN_LINES: &str = "\
auto_explain.log_min_duration = '1s'   # plans of statements slower than this
      auto_explain.log_format = 'json'       # read exactly; a text plan whose statement holds quoted newlines may ship as text only
      auto_explain.log_analyze = on          # actual rows, loops and times per node
      auto_explain.log_timing = off          # the costly part of log_analyze: clock reads per row
      auto_explain.log_buffers = on
      auto_explain.sample_rate = 0.1         # log_analyze instruments every sampled statement, fast or slow: this bounds it";

/// auto_explain: loaded, and set so that the plans it logs are worth reading.
async fn check_plans(
    r: &mut Report,
    client: &tokio_postgres::Client,
    preload_fix: &str,
    user: &str,
) -> bool {
    let q = "SELECT current_setting('shared_preload_libraries'),
                    (SELECT setting FROM pg_settings
                      WHERE name = 'auto_explain.log_min_duration' AND vartype = 'integer'),
                    current_setting('auto_explain.log_format', true),
                    current_setting('auto_explain.log_analyze', true),
                    current_setting('auto_explain.log_timing', true),
                    current_setting('auto_explain.sample_rate', true)";
    let row = match client.query_one(q, &[]).await {
        Ok(row) => row,
        Err(e) => {
            r.fail("plans", &describe(&e), &query_fix(&e, user));
            return false;
        }
    };
    let get = |i: usize| row.get::<_, Option<String>>(i).unwrap_or_default();
    let (min_ms, format, analyze, timing, rate) = (get(1), get(2), get(3), get(4), get(5));
    if min_ms.is_empty() {
        r.warn(
            "plans",
            "auto_explain is not loaded: slow statements arrive without their plan",
            &format!(
                "in postgresql.conf, then restart the server:\n      {preload_fix}\n      {AUTO_EXPLAIN_LINES}"
            ),
        );
        return false;
    }
    let min: i64 = min_ms.parse().unwrap_or(-1);
    if min < 0 {
        r.warn(
            "plans",
            "auto_explain is loaded but auto_explain.log_min_duration = -1: it logs no plan",
            &format!("in postgresql.conf, then reload:\n      {AUTO_EXPLAIN_LINES}"),
        );
        return false;
    }
    r.ok(
        "plans",
        &format!(
            "auto_explain logs the plans of statements slower than {min} ms ({format}, log_analyze {analyze}, log_timing {timing}, sample_rate {rate})"
        ),
    );
    if min == 0 {
        r.warn(
            "plans",
            "auto_explain.log_min_duration = 0 logs a plan for every statement: a log as large as the workload",
            "auto_explain.log_min_duration = '1s' (or the slowest duration your requests may take)",
        );
    }
    if format != "json" {
        r.warn(
            "plans",
            &format!("auto_explain.log_format = {format}: {}", if format == "text" {
                "a plan whose statement or constants hold a quoted newline can be read two ways and ships as text only"
            } else {
                "the agent reads text and JSON plans; these ship as text"
            }),
            "auto_explain.log_format = 'json'",
        );
    }
    if analyze == "on" && timing == "on" && rate.parse::<f64>().unwrap_or(1.0) >= 1.0 {
        r.warn(
            "plans",
            "log_analyze with log_timing on and sample_rate 1 times every row of every statement, fast or slow (the server cannot know in advance which will be slow)",
            "auto_explain.log_timing = off, or auto_explain.sample_rate = 0.1",
        );
    }
    true
}

/// Each `[[custom]]` query, dry-run in every database it targets as the agent runs it
/// (read-only, under its timeout, through its cursor): how long it took, its plan's
/// cost, its rows now, and every problem with its fix.
async fn check_custom(r: &mut Report, config: &Config) {
    use crate::config::CustomDatabases;
    use crate::sources::custom::{connectable, gated, run, Cell};
    if config.custom.is_empty() {
        return;
    }
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let Ok(server) = crate::db::Server::new() else {
        return r.fail(
            "custom",
            "cannot start the connection thread",
            "free system resources (threads, memory) and run check again",
        );
    };
    // One connection to list the databases, one to each database in turn.
    let db = crate::db::Db::new(&config.database, &server, 2, &log);
    let conn = match db.connect_once().await {
        Ok(c) => c,
        Err(e) => {
            return r.fail(
                "custom",
                &format!("the queries were not tried: {e}"),
                "see the database check above",
            )
        }
    };
    let version: i32 = match conn
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
    {
        Ok(row) => row.get(0),
        Err(e) => return r.fail("custom", &describe(&e), "see the database check above"),
    };
    for q in &config.custom {
        let name = &q.name;
        if let Some(why) = gated(q, version) {
            r.ok("custom", &format!("{name}: {why}"));
            continue;
        }
        let databases = match &q.databases {
            CustomDatabases::Connected => vec![config.database.dbname.clone()],
            CustomDatabases::List(l) => l.clone(),
            CustomDatabases::All => connectable(&conn).await.unwrap_or_default(),
        };
        for d in databases {
            let other = match db.connect_to(Some(&d)).await {
                Ok(c) => c,
                Err(e) => {
                    r.fail(
                        "custom",
                        &format!("{name} in {d}: cannot connect: {e}"),
                        &format!(
                            "GRANT CONNECT ON DATABASE {} TO {};   (or leave {d} out of databases)",
                            quote_ident(&d),
                            quote_ident(&config.database.user)
                        ),
                    );
                    continue;
                }
            };
            let started = std::time::Instant::now();
            let ran = match run(&other, q, true).await {
                Ok(ran) => ran,
                Err(e) => {
                    let timed_out = matches!(&e, crate::db::DbError::Query { sqlstate: Some(s), .. } if s == "57014");
                    let fix = if timed_out {
                        format!("it takes longer than timeout_ms = {}: make it cheaper, or raise timeout_ms (at most database.statement_timeout_ms)", q.timeout.as_millis())
                    } else {
                        format!("fix the query for {d} (run it in psql as {}), or leave {d} out of databases", config.database.user)
                    };
                    r.fail("custom", &format!("{name} in {d}: {e}"), &fix);
                    continue;
                }
            };
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            let cost = ran
                .cost
                .map_or("unknown".to_string(), |c| format!("{c:.1}"));
            r.ok(
                "custom",
                &format!(
                    "{name} in {d}: ran read-only in {ms:.0} ms, plan cost {cost}, {} rows now",
                    ran.rows.len()
                ),
            );
            if ran.truncated {
                r.warn(
                    "custom",
                    &format!("{name} in {d}: more rows than max_rows = {}: only the first {} are kept each run", q.max_rows, q.max_rows),
                    "make the query return fewer rows (a WHERE, an aggregate, an ORDER BY … LIMIT), or raise max_rows",
                );
            }
            for (key, list) in [
                ("labels", &q.labels),
                ("gauges", &q.gauges),
                ("counters", &q.counters),
            ] {
                for col in list {
                    if !ran.columns.contains(col) {
                        r.fail(
                            "custom",
                            &format!("{name}: {key} names {col}, which the query does not return (it returns {})", ran.columns.join(", ")),
                            &format!("name a column the query returns in {key}, or add {col} to the query"),
                        );
                    }
                }
            }
            for col in q.gauges.iter().chain(&q.counters) {
                let not_number = ran.rows.iter().any(|row| {
                    row.iter().any(|(n, c)| {
                        n == col && !matches!(c, Cell::Int(_) | Cell::Number(_) | Cell::Null)
                    })
                });
                if not_number {
                    r.warn(
                        "custom",
                        &format!(
                            "{name} in {d}: {col} is not a number: it has no metric and no delta"
                        ),
                        &format!("cast it in the query: {col}::float8"),
                    );
                }
            }
        }
    }
}

/// pg_plans: the statements it plans come from pg_statements, and planning needs read
/// access to their tables (or the roles that run them).
async fn check_agent_plans(
    r: &mut Report,
    client: &tokio_postgres::Client,
    config: &Config,
    user: &str,
) -> bool {
    if !config.collection.statements {
        r.warn(
            "plans",
            "the agent plans the statements pg_statements hands it, and pg_statements is off: no plan of its own",
            "[collection] statements = true (or plans = false)",
        );
        return false;
    }
    let q = "SELECT r.rolsuper,
                    EXISTS (SELECT 1 FROM pg_catalog.pg_roles g
                             WHERE g.rolname = 'pg_read_all_data'
                               AND pg_has_role(current_user, g.oid, 'USAGE'))
               FROM pg_catalog.pg_roles r WHERE r.rolname = current_user";
    let row = match client.query_one(q, &[]).await {
        Ok(row) => row,
        Err(e) => {
            r.fail("plans", &describe(&e), &query_fix(&e, user));
            return false;
        }
    };
    let (superuser, read_all): (bool, bool) = (row.get(0), row.get(1));
    let what = format!(
        "the agent plans the {} statements with the most time of each pg_statements cycle (generic plans, at most {} ms per cycle)",
        config.collection.plans_top,
        config.collection.plans_budget.as_millis()
    );
    if superuser {
        r.warn(
            "plans",
            &format!("{what}; it passes over the statements of its own role as its monitoring queries, and {user} is a superuser: if applications or jobs run as {user}, their statements are not planned"),
            "give the agent a role of its own: CREATE ROLE postgres_agent LOGIN IN ROLE pg_monitor, pg_read_all_data;",
        );
    } else if read_all {
        r.ok("plans", &what);
    } else {
        r.warn(
            "plans",
            &format!("{what}, but role {user} may not read every table: a statement over one it cannot read is not planned (unless it may SET ROLE to the statement's role)"),
            &format!("GRANT pg_read_all_data TO {user};   (PostgreSQL 14+; before: GRANT SELECT on the tables)"),
        );
    }
    true
}

/// Where plans come from, and what each way gives that the other does not.
fn plans_come_from(r: &mut Report, logged: bool, planned: bool) {
    match (logged, planned) {
        (true, true) => r.ok(
            "plans",
            "plans come from both: the agent's generic plans of the top statements (and plan changes), and auto_explain's plans of slow runs with what they did, linked to the generic plans by shape",
        ),
        (false, true) => r.warn(
            "plans",
            "plans come from the agent only: generic plans, without the rows, times and buffers of the runs that were slow",
            "load auto_explain as above, with [collection] logs = true",
        ),
        (true, false) => r.warn(
            "plans",
            "plans come from auto_explain only: a statement slow in aggregate but fast each time has no plan, and plan changes are not noticed",
            "[collection] statements = true and plans = true",
        ),
        (false, false) => r.warn(
            "plans",
            "no plans: neither auto_explain's (logs) nor the agent's (pg_plans)",
            "[collection] statements = true and plans = true; and load auto_explain as above, with [collection] logs = true",
        ),
    }
}

/// The server log: found, readable, and its lines fit the prefix the parser will use.
/// A server whose log arrives by syslog: the server sends it there, under the
/// program name the agent routes by, numbered so its chunks can be joined.
async fn check_syslog(r: &mut Report, config: &Config) {
    let ident = &config.logs.syslog_ident;
    let listen = config
        .syslog
        .listen
        .map_or("(no [syslog] listen)".to_string(), |a| a.to_string());
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let Ok(server) = crate::db::Server::new() else {
        return r.fail(
            "log",
            "cannot start the connection thread",
            "free system resources (threads, memory) and run check again",
        );
    };
    let db = crate::db::Db::new(&config.database, &server, 1, &log);
    let settings = async {
        let conn = db.connect_once().await.ok()?;
        let rows = conn
            .query(
                "SELECT name, setting FROM pg_catalog.pg_settings WHERE name = ANY($1)",
                &[&vec![
                    "log_destination",
                    "syslog_ident",
                    "syslog_sequence_numbers",
                    "syslog_split_messages",
                ]],
            )
            .await
            .ok()?;
        let map: std::collections::BTreeMap<String, String> =
            rows.iter().map(|row| (row.get(0), row.get(1))).collect();
        Some(map)
    }
    .await;
    let Some(s) = settings else {
        return r.warn(
            "log",
            &format!("arrives by syslog on {listen} under {ident:?}; the server's log settings could not be read"),
            "check the database line above",
        );
    };
    let get = |k: &str| s.get(k).map(String::as_str).unwrap_or("");
    if !get("log_destination")
        .split(',')
        .any(|d| d.trim() == "syslog")
    {
        return r.fail(
            "log",
            &format!("log_destination is {:?}: the server sends nothing to syslog", get("log_destination")),
            "ALTER SYSTEM SET log_destination = 'syslog' (or add it to the list) and reload the server",
        );
    }
    if get("syslog_ident") != ident {
        return r.fail(
            "log",
            &format!(
                "the server's syslog_ident is {:?}, the agent takes {ident:?}",
                get("syslog_ident")
            ),
            "set [logs] syslog_ident to the server's, or the server's to it",
        );
    }
    if get("syslog_sequence_numbers") == "off" {
        r.warn(
            "log",
            "syslog_sequence_numbers is off: a message's lines cannot be told from the next message's",
            "ALTER SYSTEM SET syslog_sequence_numbers = on and reload the server",
        );
    }
    r.ok(
        "log",
        &format!("arrives by syslog on {listen} under {ident:?} (log_destination includes syslog); relay it with rsyslog or syslog-ng"),
    );
}

async fn check_log(r: &mut Report, config: &Config) {
    use crate::logs::plan::Saved;
    use crate::logs::plan::{plan, server_settings, Facts};
    use crate::logs::LogParser;
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let server = match crate::db::Server::new() {
        Ok(s) => s,
        Err(e) => {
            return r.fail(
                "log",
                &format!("cannot start the connection thread: {e}"),
                "free system resources (threads, memory) and run check again",
            )
        }
    };
    let db = crate::db::Db::new(&config.database, &server, 1, &log);
    let server = server_settings(&db).await.ok();
    let saved = Saved::default();
    let facts = Facts::gather(&config.logs, server.as_ref(), &saved);
    let p = match plan(&config.logs, server.as_ref(), &saved, &facts) {
        Ok(p) => p,
        Err(e) => return r.fail("log", &e.reason, &e.fix),
    };
    // Judged for the service's user when run as root: root reads every log.
    if let Some((problem, fix)) = p.locator.permission_problem(&crate::access::Who::judged()) {
        return r.fail("log", &problem, &fix);
    }
    let Some(cur) = p.locator.current() else {
        return r.fail(
            "log",
            &format!("no log file found ({})", p.locator.describe()),
            "check log_directory and log_destination, or set [logs] path",
        );
    };
    let tail = match read_tail(&cur.path) {
        Ok(t) => t,
        Err(e) => {
            return r.fail(
                "log",
                &format!("cannot read {}: {e}", cur.path.display()),
                "let the agent's user read the log: add it to the server's group and set log_file_mode = 0640 (or adjust [logs] path)",
            )
        }
    };
    let mut parser = LogParser::new(p.format, &p.prefix);
    let mut records = Vec::new();
    parser.parse(
        &tail,
        0,
        crate::logs::Flush::Settled,
        &mut records,
        usize::MAX,
    );
    let unparsed = records.iter().filter(|r| r.raw.is_some()).count();
    if !records.is_empty() && unparsed * 2 > records.len() {
        return r.fail(
            "log",
            &format!(
                "{unparsed} of the last {} lines of {} do not fit {} log_line_prefix {:?}",
                records.len(),
                cur.path.display(),
                p.format.as_str(),
                p.prefix
            ),
            "set [logs] prefix to the server's log_line_prefix (or [logs] format), then check with `postgres-agent parse-log`",
        );
    }
    r.ok(
        "log",
        &format!(
            "{} ({}{}) is readable; {} of its last {} messages parsed",
            cur.path.display(),
            p.format.as_str(),
            parser
                .prefix()
                .map(|x| format!(", prefix {x:?}"))
                .unwrap_or_default(),
            records.len() - unparsed,
            records.len()
        ),
    );
    let mut language = crate::logs::record::Language::default();
    language.count(&records);
    if language.judge() == Some(true) {
        r.warn(
            "log",
            &format!(
                "the server writes its messages in a language the agent's catalogue does not have ({} of the last {} severity labels, e.g. {:?}; it reads {}): they are classified by SQLSTATE only",
                language.other,
                language.english + language.other,
                language.example.as_deref().unwrap_or(""),
                crate::logs::messages::languages().join(", ")
            ),
            "set lc_messages = 'C' in postgresql.conf, then SELECT pg_reload_conf() (or add %e to log_line_prefix so that each message carries its SQLSTATE)",
        );
    }
    if let LogParser::Stderr(s) = &parser {
        stderr_advice(r, s.prefix(), &records);
    }
}

/// What a stderr log lacks, with one fix that holds for all of it: csvlog (jsonlog on
/// 15+) carries every field quoted, so nothing is missing and nothing is forgeable. The
/// prefix that would stay with stderr is given whole, with what it costs, so taking it
/// explains the warning that follows instead of contradicting it.
fn stderr_advice(
    r: &mut Report,
    prefix: &crate::logs::prefix::Prefix,
    records: &[crate::logs::record::Record],
) {
    use crate::logs::prefix::Escape;
    let structured = "csvlog";
    let destination = format!(
        "log_destination = 'stderr,{structured}' in postgresql.conf, then SELECT pg_reload_conf(): {structured} carries every field, quoted; [logs] format = \"auto\" reads it"
    );
    let client: Vec<&str> = prefix.client_fields().iter().map(|e| e.as_str()).collect();
    let missing = prefix.shortcomings();
    if !missing.is_empty() {
        let e = prefix.escapes();
        let has = |x: &[Escape]| x.iter().any(|x| e.contains(x));
        let mut whole = String::new();
        if !has(&[Escape::TimeMs, Escape::Time, Escape::Epoch]) {
            whole.push_str("%m ");
        }
        if !has(&[Escape::Pid]) {
            whole.push_str("[%p] ");
        }
        whole.push_str(prefix.as_str());
        if !has(&[Escape::App]) {
            if !whole.is_empty() && !whole.ends_with(' ') {
                whole.push(' ');
            }
            whole.push_str("%a ");
        }
        let costs = if has(&[Escape::App]) {
            ""
        } else {
            " (%a is written by the client: a stderr line whose application name holds the prefix's separators ships flagged)"
        };
        r.warn(
            "log",
            &format!(
                "the stderr prefix {:?} lacks: {}",
                prefix.as_str(),
                missing.join("; ")
            ),
            &format!("{destination}; or, staying with stderr: log_line_prefix = '{whole}'{costs}"),
        );
    }
    if !client.is_empty() {
        let ambiguous = records.iter().filter(|r| r.ambiguous).count();
        r.warn(
            "log",
            &format!(
                "the stderr log lets clients write into the prefix ({} come from the client and precede the severity): a name holding the prefix's separators or a severity label makes a line ambiguous, shipped flagged without the disputed fields ({ambiguous} of the last {} messages); {structured} quotes every field and cannot be forged",
                client.join(", "),
                records.len()
            ),
            &destination,
        );
    }
}

/// The last 64 KiB of a file, from its first complete line.
fn read_tail(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    let from = size.saturating_sub(64 * 1024);
    f.seek(SeekFrom::Start(from))?;
    let mut b = Vec::new();
    f.read_to_end(&mut b)?;
    if from > 0 {
        let nl = memchr::memchr(b'\n', &b).map_or(b.len(), |i| i + 1);
        b.drain(..nl);
    }
    Ok(b)
}

/// pg_stat_statements: installed in the agent's database, and loaded by the server.
async fn check_statements(
    r: &mut Report,
    client: &tokio_postgres::Client,
    dbname: &str,
    preload_fix: &str,
    user: &str,
) {
    let preload = format!("in postgresql.conf: {preload_fix}, then restart the server");
    let preload = preload.as_str();
    let installed = client
        .query_opt(
            "SELECT e.extversion, quote_ident(n.nspname) FROM pg_extension e
             JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_stat_statements'",
            &[],
        )
        .await;
    let (version, schema): (String, String) = match installed {
        Ok(Some(row)) => (row.get(0), row.get(1)),
        Ok(None) => {
            return r.fail(
                "statements",
                &format!("pg_stat_statements is not installed in database {dbname}"),
                &format!("CREATE EXTENSION pg_stat_statements; in {dbname} (and {preload}), or set collection.statements = false"),
            )
        }
        Err(e) => return r.fail("statements", &describe(&e), &query_fix(&e, user)),
    };
    let probe = format!("SELECT count(*) FROM {schema}.pg_stat_statements(false)");
    match client.query_one(&probe, &[]).await {
        Ok(row) => {
            let n: i64 = row.get(0);
            r.ok(
                "statements",
                &format!("pg_stat_statements {version} is readable ({n} entries)"),
            )
        }
        Err(e) => {
            let fix = match e.as_db_error().map(|d| d.code().code()) {
                Some("55000") => preload.to_string(),
                _ => query_fix(&e, user),
            };
            r.fail(
                "statements",
                &format!("cannot read pg_stat_statements: {}", describe(&e)),
                &fix,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_preload_line_keeps_what_is_loaded_and_adds_what_is_needed() {
        let both = [("pg_stat_statements", true), ("auto_explain", true)];
        assert_eq!(
            preload_line("", &both),
            "shared_preload_libraries = 'pg_stat_statements,auto_explain'"
        );
        assert_eq!(
            preload_line(" timescaledb , \"pg_stat_statements\"", &both),
            "shared_preload_libraries = 'timescaledb,pg_stat_statements,auto_explain'"
        );
        assert_eq!(
            preload_line(
                "pg_cron",
                &[("pg_stat_statements", false), ("auto_explain", true)]
            ),
            "shared_preload_libraries = 'pg_cron,auto_explain'"
        );
    }

    #[test]
    fn names_are_quoted_only_when_they_must_be() {
        assert_eq!(quote_ident("postgres_agent"), "postgres_agent");
        assert_eq!(quote_ident("Agent"), "\"Agent\"");
        assert_eq!(quote_ident("a-b"), "\"a-b\"");
        assert_eq!(quote_ident("x\"y"), "\"x\"\"y\"");
        assert_eq!(quote_ident(""), "\"\"");
    }

    #[test]
    fn a_fix_names_the_keys_of_the_server_checked() {
        assert_eq!(
            server_keys(
                "check database.host/port; raise database.connect_timeout_ms",
                "db1"
            ),
            "check servers.db1.database.host/port; raise servers.db1.database.connect_timeout_ms"
        );
        assert_eq!(
            server_keys(
                "set logs.path, not mydatabase.x or servers.a.logs.path",
                "b"
            ),
            "set servers.b.logs.path, not mydatabase.x or servers.a.logs.path"
        );
    }
}
