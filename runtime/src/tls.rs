//! TLS from configured PEM files: certificates and keys, rustls server configs (ring
//! provider, no aws-lc), the HTTPS server for the REST gateway, and the gRPC TLS settings
//! shared by controllers and workers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::CancellationToken;

/// The crypto provider every TLS config here uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide rustls provider (for libraries that use the default);
/// a no-op when one is installed already.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The certificates of a PEM file (a chain: leaf first).
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("bad certificate PEM in {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("cannot read a private key from {}", path.display()))
}

/// A server config for `cert` + `key`, offering `alpn` protocols.
pub fn server_config(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .with_context(|| {
            format!(
                "the key {} does not fit the certificate {}",
                key.display(),
                cert.display()
            )
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A TLS acceptor for `cert` + `key` (no ALPN: for RTMPS).
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    Ok(TlsAcceptor::from(server_config(cert, key, &[])?))
}

/// Both of a cert/key pair, or neither.
pub fn pair<'a>(
    cert: Option<&'a Path>,
    key: Option<&'a Path>,
    what: &str,
) -> anyhow::Result<Option<(&'a Path, &'a Path)>> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((c, k))),
        (None, None) => Ok(None),
        _ => anyhow::bail!("{what}: give both the certificate and the key, or neither"),
    }
}

/// Serves `router` over HTTPS (HTTP/1.1 and HTTP/2 by ALPN) on `listener` until
/// `shutdown`. A failed handshake (plain HTTP to this port, say) closes that one
/// connection; the server goes on.
pub async fn serve_https(
    listener: TcpListener,
    cert: &Path,
    key: &Path,
    router: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let acceptor = TlsAcceptor::from(server_config(cert, key, &[b"h2", b"http/1.1"])?);
    serve_https_with(listener, acceptor, router, shutdown).await;
    Ok(())
}

async fn serve_https_with(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: axum::Router,
    shutdown: CancellationToken,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    loop {
        let (sock, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTPS accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (acceptor, router, stop) = (acceptor.clone(), router.clone(), shutdown.clone());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock));
            let tls = match handshake.await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = TowerToHyperService::new(router);
            let builder = Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "HTTPS connection ended with an error");
                },
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}

/// How long a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Trust for https callback receivers (publish, authorization and status callbacks).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WebhookTlsArgs {
    /// CA certificates (PEM) trusted for https callback receivers besides the public web
    /// roots (Mozilla's list): a private CA's receivers.
    #[arg(long, env = "PUSHCAST_WEBHOOK_CA_FILE", value_name = "FILE")]
    pub webhook_ca_file: Option<PathBuf>,
}

impl WebhookTlsArgs {
    /// The extra trust anchors (none without --webhook-ca-file); a file that cannot be
    /// read or holds no certificate is an error, so a typo fails at start.
    pub fn roots(&self) -> anyhow::Result<Vec<CertificateDer<'static>>> {
        match &self.webhook_ca_file {
            None => Ok(Vec::new()),
            Some(path) => load_certs(path).context("--webhook-ca-file"),
        }
    }
}

/// gRPC between controllers and workers (flags shared by every binary).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GrpcTlsArgs {
    /// gRPC server certificate (PEM; controller API and WorkerService speak TLS only when
    /// set); with --grpc-tls-client-auth also the controller's client certificate.
    #[arg(long, env = "PUSHCAST_GRPC_TLS_CERT", value_name = "FILE")]
    pub grpc_tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --grpc-tls-cert.
    #[arg(long, env = "PUSHCAST_GRPC_TLS_KEY", value_name = "FILE")]
    pub grpc_tls_key: Option<PathBuf>,

    /// CA (PEM) that signed the peers' certificates: the controller calls workers over
    /// TLS (https) verified against it; workers verify client certificates with it.
    #[arg(long, env = "PUSHCAST_GRPC_TLS_CA", value_name = "FILE")]
    pub grpc_tls_ca: Option<PathBuf>,

    /// Mutual TLS: WorkerService requires a client certificate signed by --grpc-tls-ca,
    /// and the controller presents --grpc-tls-cert/--grpc-tls-key to workers.
    #[arg(long, env = "PUSHCAST_GRPC_TLS_CLIENT_AUTH")]
    pub grpc_tls_client_auth: bool,
}

impl GrpcTlsArgs {
    fn identity(&self) -> anyhow::Result<Option<tonic::transport::Identity>> {
        let Some((cert, key)) = pair(
            self.grpc_tls_cert.as_deref(),
            self.grpc_tls_key.as_deref(),
            "--grpc-tls-cert/--grpc-tls-key",
        )?
        else {
            return Ok(None);
        };
        // Parse once here so a bad file fails at start with its name.
        load_certs(cert)?;
        load_key(key)?;
        let read =
            |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
        Ok(Some(tonic::transport::Identity::from_pem(
            read(cert)?,
            read(key)?,
        )))
    }

    fn ca(&self) -> anyhow::Result<Option<tonic::transport::Certificate>> {
        let Some(path) = self.grpc_tls_ca.as_deref() else {
            return Ok(None);
        };
        load_certs(path)?;
        let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Some(tonic::transport::Certificate::from_pem(pem)))
    }

    /// The TLS of a gRPC server; `None` without a certificate (plain h2c). With
    /// `mutual` and --grpc-tls-client-auth, clients must present a certificate signed
    /// by --grpc-tls-ca.
    pub fn server(
        &self,
        mutual: bool,
    ) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
        install_provider();
        let Some(identity) = self.identity()? else {
            anyhow::ensure!(
                !self.grpc_tls_client_auth,
                "--grpc-tls-client-auth needs --grpc-tls-cert and --grpc-tls-key"
            );
            return Ok(None);
        };
        let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
        if mutual && self.grpc_tls_client_auth {
            let ca = self
                .ca()?
                .context("--grpc-tls-client-auth needs --grpc-tls-ca")?;
            config = config.client_ca_root(ca);
        }
        Ok(Some(config))
    }

    /// The TLS of a client toward workers; `None` (plain http) without --grpc-tls-ca.
    pub fn client(&self) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
        install_provider();
        let Some(ca) = self.ca()? else {
            return Ok(None);
        };
        let mut config = tonic::transport::ClientTlsConfig::new().ca_certificate(ca);
        if self.grpc_tls_client_auth {
            let identity = self
                .identity()?
                .context("--grpc-tls-client-auth needs --grpc-tls-cert and --grpc-tls-key")?;
            config = config.identity(identity);
        }
        Ok(Some(config))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn webhook_ca_file_that_is_missing_or_empty_fails_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let none = WebhookTlsArgs::default();
        assert!(none.roots().unwrap().is_empty());
        let missing = WebhookTlsArgs {
            webhook_ca_file: Some(dir.path().join("nope.pem")),
        };
        let e = format!("{:#}", missing.roots().unwrap_err());
        assert!(
            e.contains("--webhook-ca-file") && e.contains("nope.pem"),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = format!(
            "{:#}",
            WebhookTlsArgs {
                webhook_ca_file: Some(empty)
            }
            .roots()
            .unwrap_err()
        );
        assert!(e.contains("no certificate"), "{e}");
    }
}
