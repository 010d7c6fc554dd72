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
