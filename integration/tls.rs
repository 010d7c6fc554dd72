//! TLS to the database over TCP with libpq's sslmode meanings.

use std::process::Command;

use crate::harness::agent::bin;
use crate::harness::pg::PgCluster;
use crate::harness::shared_tempdir;

fn openssl(args: &[&str], dir: &std::path::Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package `openssl`)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it: (CA PEM, cert PEM, key PEM).
fn certificates(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
        dir,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
        dir,
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("ext");
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.crt",
        ],
        dir,
    );
    let read = |n: &str| std::fs::read(dir.join(n)).expect("read pem");
    (read("ca.crt"), read("server.crt"), read("server.key"))
}

fn once(dir: &std::path::Path, port: u16, ssl: &str) -> (i32, String) {
    let path = dir.join(format!(
        "agent-{}.toml",
        ssl.replace(['"', '=', ' ', '/', '.'], "_")
    ));
    std::fs::write(
        &path,
        format!(
            "[agent]\nproject_id = \"tls\"\nstate_dir = \"{}\"\n[database]\nhost = \"127.0.0.1\"\nport = {port}\n\
             user = \"postgres\"\nconnect_timeout_ms = 3000\n{ssl}\n\
             [collection]\nstatements = false\nlocks = false\nsystem = false\nlogs = false\n",
            dir.join("state").display()
        ),
    )
    .expect("write");
    let out = Command::new(bin())
        .args(["once", "-c"])
        .arg(&path)
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn sslmode_require_and_verify_full_connect_over_tls_only() {
    let dir = shared_tempdir("pgagent-tls");
    let (ca, crt, key) = certificates(dir.path());
    let mut pg =
        PgCluster::init("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
    pg.write_data_file("server.crt", &crt);
    pg.write_data_file("server.key", &key);
    // Plain TCP is refused: only a TLS connection gets in.
    pg.write_data_file(
        "pg_hba.conf",
        b"local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
    );
    let port = pg.enable_tcp();
    pg.start_server();

    let (code, err) = once(dir.path(), port, "sslmode = \"disable\"");
    assert_eq!(code, 69, "{err}");
    // PostgreSQL 14 says "no encryption", earlier versions "SSL off".
    assert!(
        err.contains("no encryption") || err.contains("SSL off"),
        "{err}"
    );

    for mode in ["prefer", "require"] {
        let (code, err) = once(dir.path(), port, &format!("sslmode = \"{mode}\""));
        assert_eq!(code, 0, "{mode}: {err}\n{}", pg.server_log());
    }

    let root = dir.path().join("root.crt");
    std::fs::write(&root, &ca).expect("write root");
    let (code, err) = once(
        dir.path(),
        port,
        &format!(
            "sslmode = \"verify-full\"\nsslrootcert = \"{}\"",
            root.display()
        ),
    );
    assert_eq!(code, 0, "{err}");

    // Against the system's CAs our private CA is unknown: refused, and the error says why.
    let (code, err) = once(dir.path(), port, "sslmode = \"verify-full\"");
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[test]
fn unreadable_sslrootcert_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, err) = once(
        dir.path(),
        5432,
        "sslmode = \"verify-full\"\nsslrootcert = \"/nonexistent/ca.pem\"",
    );
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("database.sslrootcert"), "{err}");
}
