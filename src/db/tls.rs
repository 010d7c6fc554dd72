//! TLS towards the database, with libpq's meaning of `sslmode`: `prefer` and `require`
//! encrypt without checking the certificate (as libpq does), `verify-ca` checks the chain
//! against `sslrootcert` (or the system's CA store), `verify-full` the chain and the host
//! name. A client certificate (`sslcert`, `sslkey`) is offered when configured. Over a
//! Unix socket no TLS is attempted, as with libpq.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{DatabaseConfig, SslMode};

/// The TLS connector of the pool.
pub type Tls = MakeRustlsConnect;

/// Why no TLS connector could be built.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    /// `sslrootcert` is unusable.
    #[error("{path} {reason}")]
    RootCert {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `sslcert` or `sslkey` is unusable.
    #[error("{key}: {reason}")]
    ClientCert {
        /// The config key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The TLS library refused the settings.
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// Builds the connector for the configured `sslmode`, with the client certificate when
/// one is configured.
pub fn make(cfg: &DatabaseConfig) -> Result<Tls, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = match cfg.sslmode {
        SslMode::VerifyFull => builder.with_root_certificates(roots(cfg)?),
        SslMode::VerifyCa => {
            let chain = WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(cfg)?),
                provider.clone(),
            )
            .build()
            .map_err(|e| TlsError::Setup(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(chain)))
        }
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider))),
    };
    let config = if cfg.sslcert.is_empty() {
        builder.with_no_client_auth()
    } else {
        let (certs, key) = crate::config::read_client_cert(&cfg.sslcert, &cfg.sslkey).map_err(
            |(key, reason)| TlsError::ClientCert {
                key: key.to_string(),
                reason,
            },
        )?;
        builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| TlsError::ClientCert {
                key: "database.sslkey".into(),
                reason: format!("{} cannot be used with {}: {e}", cfg.sslkey, cfg.sslcert),
            })?
    };
    Ok(MakeRustlsConnect::new(config))
}

/// The CAs a server's certificate must chain to: `sslrootcert`'s, or the system's.
fn roots(cfg: &DatabaseConfig) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    if cfg.sslrootcert.is_empty() {
        let found = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(found.certs);
        return Ok(roots);
    }
    let certs =
        crate::config::read_root_certs(&cfg.sslrootcert).map_err(|reason| TlsError::RootCert {
            path: cfg.sslrootcert.clone(),
            reason,
        })?;
    for c in certs {
        roots.add(c).map_err(|e| TlsError::RootCert {
            path: cfg.sslrootcert.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// `verify-ca`: the certificate must chain to a trusted CA and be valid; the names in it
/// are not compared with the host (libpq's meaning).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Accepts any certificate but still checks that the server holds its key (the
/// handshake signatures), like libpq's `sslmode=require`.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
