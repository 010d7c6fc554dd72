//! The CA certificates of `sslrootcert`: read when the config is validated (so a bad file
//! is a config error) and when the database's TLS connector is built.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The certificates of the PEM file `path`, or why it cannot give any ("cannot be read:
/// …", "is not PEM: …", "holds no certificate"), to follow the path in a message.
pub fn read_root_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot be read: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("holds no certificate".into());
    }
    Ok(certs)
}

/// The client certificate (with its chain) of `cert` and the private key of `key`, or the
/// key (`database.sslcert` / `database.sslkey`) and what is wrong with its file. The key
/// file must not be open to other users, as libpq requires: at most `0600`, or `0640`
/// when root owns it (a group the service user is in may then read it).
#[allow(clippy::type_complexity)]
pub fn read_client_cert(
    cert: &str,
    key: &str,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ),
    (&'static str, String),
> {
    read_cert_and_key(
        cert,
        key,
        ("database.sslcert", "database.sslkey"),
        "a client",
    )
}

/// A certificate (with its chain) and its private key, for the keys `names` (what a
/// problem is reported under) and the use `role` (`a client`, `a server`), held to
/// libpq's rule for the key file.
#[allow(clippy::type_complexity)]
pub fn read_cert_and_key(
    cert: &str,
    key: &str,
    names: (&'static str, &'static str),
    role: &str,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ),
    (&'static str, String),
> {
    use rustls::pki_types::PrivateKeyDer;
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{cert} cannot be read: {e}"))
        .and_then(|i| {
            i.collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{cert} is not PEM: {e}"))
        })
        .and_then(|c| match c.is_empty() {
            true => Err(format!("{cert} holds no certificate")),
            false => Ok(c),
        })
        .map_err(|r| (names.0, r))?;
    let problem = |r: String| (names.1, r);
    key_file_private(key).map_err(problem)?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        problem(match e {
            rustls::pki_types::pem::Error::Io(e) => format!("{key} cannot be read: {e}"),
            rustls::pki_types::pem::Error::NoItemsFound => {
                format!("{key} holds no private key (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC)")
            }
            e => format!("{key} is not a PEM private key: {e}"),
        })
    })?;
    // The checks the TLS library makes when the connector is built, made here so that a
    // certificate it cannot use is a configuration error, not a connection failure.
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(certs.clone(), private.clone_key(), &provider).map_err(
        |e| match e {
            rustls::Error::InconsistentKeys(_) => problem(format!(
                "{key} is not the private key of the certificate in {cert}"
            )),
            rustls::Error::InvalidCertificate(e) => (
                names.0,
                format!("{cert} cannot be used as {role} certificate: {e:?} (an X.509 v3 certificate is needed)"),
            ),
            e => problem(format!("{key} cannot be used with {cert}: {e}")),
        },
    )?;
    Ok((certs, private))
}

/// Refuses a key file that other users may read (libpq's rule).
fn key_file_private(key: &str) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(key).map_err(|e| format!("{key} cannot be read: {e}"))?;
    let mode = meta.mode() & 0o777;
    let allowed = if meta.uid() == 0 { 0o640 } else { 0o600 };
    if mode & !allowed != 0 {
        return Err(format!(
            "{key} is open to other users (mode {mode:04o}); a private key must be u=rw (0600) or less, or u=rw,g=r (0640) when owned by root: chmod 0600 {key}"
        ));
    }
    Ok(())
}
