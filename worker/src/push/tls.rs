//! TLS for `rtmps://` pushes: rustls with the ring provider, Mozilla's roots
//! (webpki-roots) plus optional extra CA certificates from a PEM file.
//!
//! Why these choices: ring builds in seconds where aws-lc needs a C toolchain and ~40 s;
//! webpki-roots makes the trust store independent of the container image (a slim image
//! has no `/etc/ssl/certs`), and the extra CA file covers private CDNs and the tests' own
//! CA. The provider is passed explicitly to the config builder, so nothing depends on a
//! process-wide default provider being installed first.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

use super::error::PushError;

/// Why the TLS client configuration could not be built (a worker start-up error).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read CA file {path}: {reason}")]
    ReadCa { path: PathBuf, reason: String },
    #[error("CA file {path} holds no PEM certificate")]
    NoCertificates { path: PathBuf },
    #[error("CA file {path}: certificate {index} is not a usable trust anchor: {reason}")]
    BadCertificate {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting webpki-roots and, if given, the certificates in
/// `extra_ca_file` (PEM, one or more). Build it once per worker and share it: each
/// session only clones the `Arc`.
pub fn client_config(extra_ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| TlsSetupError::ReadCa {
                path: path.to_owned(),
                reason: e.to_string(),
            })?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsSetupError::ReadCa {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsSetupError::NoCertificates {
                path: path.to_owned(),
            });
        }
        for (index, cert) in certs.into_iter().enumerate() {
            roots.add(cert).map_err(|e| TlsSetupError::BadCertificate {
                path: path.to_owned(),
                index,
                reason: e.to_string(),
            })?;
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The webpki-roots-only configuration, built once per process.
pub fn default_client_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            // Depends on no input: without an extra file the only possible error is the
            // ring provider lacking cipher suites for TLS 1.2/1.3, which it never does.
            #[allow(clippy::expect_used)]
            client_config(None).expect("the ring provider supports the default TLS versions")
        })
        .clone()
}

/// A failed TLS handshake as a [`PushError::Connect`] whose cause an operator can act
/// on: "certificate verify failed: ..." for an untrusted/mismatched certificate.
pub(crate) fn handshake_error(target: &str, e: &std::io::Error) -> PushError {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let cause = match tls {
        Some(rustls::Error::InvalidCertificate(c)) => {
            format!("TLS handshake failed: certificate verify failed: {c:?}")
        }
        Some(other) => format!("TLS handshake failed: {other}"),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "TLS handshake failed: the server closed the connection (not a TLS port?)".to_owned()
        }
        None => format!("TLS handshake failed: {}", super::error::io_cause(e)),
    };
    PushError::Connect {
        target: target.to_owned(),
        cause,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_has_the_webpki_roots() {
        let a = default_client_config();
        let b = default_client_config();
        assert!(Arc::ptr_eq(&a, &b), "built once");
    }

    #[test]
    fn missing_or_empty_ca_files_are_reported() {
        let e = client_config(Some(Path::new("/nonexistent/ca.pem"))).expect_err("missing");
        assert!(matches!(e, TlsSetupError::ReadCa { .. }), "{e}");
        let dir = std::env::temp_dir().join(format!("pushcast-tls-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let e = client_config(Some(&empty)).expect_err("empty");
        assert!(matches!(e, TlsSetupError::NoCertificates { .. }), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn certificate_errors_are_named() {
        let e = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let p = handshake_error("h:443", &e);
        assert_eq!(
            p.to_string(),
            "cannot connect to h:443: TLS handshake failed: certificate verify failed: UnknownIssuer"
        );
    }
}
