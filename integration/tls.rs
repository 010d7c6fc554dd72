//! TLS to the database over TCP with libpq's sslmode meanings.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
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
pub(crate) fn certificates(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    certificates_for(dir, "subjectAltName=IP:127.0.0.1,DNS:localhost")
}

/// A CA and a server certificate with `names` (an extension line) signed by it.
fn certificates_for(dir: &std::path::Path, names: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
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
    std::fs::write(dir.join("ext.cnf"), format!("{names}\n")).expect("ext");
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

/// A client certificate for role `cn` signed by the CA of [`certificates`] in `dir`:
/// (cert path, key path), the key u=rw only. With `v3` false, an X.509 version 1
/// certificate (no extensions), which the TLS library cannot use.
fn client_certificate(dir: &std::path::Path, cn: &str, v3: bool) -> (PathBuf, PathBuf) {
    let (cert, key) = (format!("client-{v3}.crt"), format!("client-{v3}.key"));
    let subject = format!("/CN={cn}");
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &subject,
            "-keyout",
            &key,
            "-out",
            "client.csr",
        ],
        dir,
    );
    std::fs::write(dir.join("client.cnf"), "extendedKeyUsage=clientAuth\n").expect("ext");
    let mut sign = vec![
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        &cert,
    ];
    if v3 {
        sign.extend(["-extfile", "client.cnf"]);
    }
    openssl(&sign, dir);
    let key = dir.join(key);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    (dir.join(cert), key)
}

#[test]
fn a_server_that_asks_for_a_client_certificate_gets_the_configured_one() {
    let dir = shared_tempdir("pgagent-tls-cert");
    // The server's certificate names neither 127.0.0.1 nor localhost: verify-full refuses
    // it, verify-ca (the chain only) takes it.
    let (ca, crt, key) = certificates_for(dir.path(), "subjectAltName=DNS:db.invalid");
    let (cert, client_key) = client_certificate(dir.path(), "postgres", true);
    let mut pg = PgCluster::init(
        "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'root.crt'\n",
    );
    pg.write_data_file("server.crt", &crt);
    pg.write_data_file("server.key", &key);
    pg.write_data_file("root.crt", &ca);
    // Only a TLS connection with a certificate the CA signed, naming the role, gets in.
    pg.write_data_file(
        "pg_hba.conf",
        b"local all all trust\nhostssl all all 127.0.0.1/32 cert\nhost all all 127.0.0.1/32 reject\n",
    );
    let port = pg.enable_tcp();
    pg.start_server();
    let root = dir.path().join("root.crt");
    std::fs::write(&root, &ca).expect("write root");
    let with = |mode: &str, cert: &std::path::Path, key: &std::path::Path| {
        format!(
            "sslmode = \"{mode}\"\nsslrootcert = \"{}\"\nsslcert = \"{}\"\nsslkey = \"{}\"",
            root.display(),
            cert.display(),
            key.display()
        )
    };

    let (code, err) = once(dir.path(), port, &with("verify-ca", &cert, &client_key));
    assert_eq!(code, 0, "{err}\n{}", pg.server_log());

    // The same certificate, but the server's names are checked: refused, and said why.
    let (code, err) = once(dir.path(), port, &with("verify-full", &cert, &client_key));
    assert_eq!(code, 69, "{err}");
    assert!(
        err.contains("certificate not valid for name \"127.0.0.1\""),
        "{err}"
    );

    // No client certificate: the server refuses, and says it wanted one.
    let (code, err) = once(
        dir.path(),
        port,
        &format!(
            "sslmode = \"verify-ca\"\nsslrootcert = \"{}\"",
            root.display()
        ),
    );
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("certificate"), "{err}");

    // A key other users may read, a key without its certificate, a certificate file that
    // is not PEM: configuration errors naming the key and the fix.
    let open = dir.path().join("open.key");
    std::fs::copy(&client_key, &open).expect("copy");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, err) = once(dir.path(), port, &with("verify-ca", &cert, &open));
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains(&format!(
            "database.sslkey: {} is open to other users (mode 0644)",
            open.display()
        )) && err.contains(&format!("chmod 0600 {}", open.display())),
        "{err}"
    );
    let (code, err) = once(
        dir.path(),
        port,
        &format!("sslmode = \"require\"\nsslcert = \"{}\"", cert.display()),
    );
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("database.sslkey: is empty while database.sslcert is set"),
        "{err}"
    );
    let (code, err) = once(
        dir.path(),
        port,
        &with("verify-ca", &root.with_extension("none"), &client_key),
    );
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("database.sslcert: ") && err.contains("cannot be read"),
        "{err}"
    );
    // A certificate the TLS library cannot use (X.509 version 1): said at load.
    let (v1, v1_key) = client_certificate(dir.path(), "postgres", false);
    let (code, err) = once(dir.path(), port, &with("verify-ca", &v1, &v1_key));
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains(&format!(
            "database.sslcert: {} cannot be used as a client certificate: ",
            v1.display()
        )),
        "{err}"
    );
}
