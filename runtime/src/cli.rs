//! Settings every pushcast process shares: where the state lives and who this node is.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pushcast_store::Store;
use pushcast_store::embedded::EmbeddedStore;
use pushcast_store::etcd::{EtcdCredentials, EtcdStore};

#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Config file (TOML); its keys are these flags' names. Flags and environment
    /// variables override it.
    #[arg(long, env = "PUSHCAST_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Comma-separated etcd URLs. Absent: the embedded store in --data-dir (one process).
    #[arg(
        long,
        env = "PUSHCAST_ETCD_ENDPOINTS",
        value_delimiter = ',',
        value_name = "URLS"
    )]
    pub etcd_endpoints: Vec<String>,

    /// Prefix of every key pushcast writes in etcd.
    #[arg(long, env = "PUSHCAST_ETCD_PREFIX", default_value = "/pushcast/")]
    pub etcd_prefix: String,

    /// Deadline of one etcd request; past it the API answers 503.
    #[arg(long, env = "PUSHCAST_ETCD_TIMEOUT_MS", default_value_t = 2000)]
    pub etcd_timeout_ms: u64,

    /// CA certificates (PEM) that signed etcd's server certificates (https:// endpoints;
    /// without it the public web roots are trusted).
    #[arg(long, env = "PUSHCAST_ETCD_CA_FILE", value_name = "FILE")]
    pub etcd_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for etcd's --client-cert-auth; with etcd auth enabled and
    /// no --etcd-username, etcd takes its common name (CN) as the user.
    #[arg(
        long,
        env = "PUSHCAST_ETCD_CERT_FILE",
        value_name = "FILE",
        requires = "etcd_key_file"
    )]
    pub etcd_cert_file: Option<PathBuf>,

    /// Private key (PEM) of --etcd-cert-file.
    #[arg(
        long,
        env = "PUSHCAST_ETCD_KEY_FILE",
        value_name = "FILE",
        requires = "etcd_cert_file"
    )]
    pub etcd_key_file: Option<PathBuf>,

    /// etcd user (etcd with auth enabled); its password from --etcd-password-file or
    /// --etcd-password.
    #[arg(long, env = "PUSHCAST_ETCD_USERNAME", value_name = "USER")]
    pub etcd_username: Option<String>,

    /// Password of --etcd-username. Prefer --etcd-password-file or the variable: a flag
    /// is visible to every user of the machine in the process list.
    #[arg(
        long,
        env = "PUSHCAST_ETCD_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true,
        requires = "etcd_username",
        conflicts_with = "etcd_password_file"
    )]
    pub etcd_password: Option<Secret>,

    /// File holding the password of --etcd-username (a Kubernetes secret mounted as a
    /// file); one trailing newline is ignored.
    #[arg(
        long,
        env = "PUSHCAST_ETCD_PASSWORD_FILE",
        value_name = "FILE",
        requires = "etcd_username"
    )]
    pub etcd_password_file: Option<PathBuf>,

    /// Embedded store and generated secrets.
    #[arg(long, env = "PUSHCAST_DATA_DIR", default_value = "./pushcast-data")]
    pub data_dir: PathBuf,

    /// Prometheus `/metrics` (off unless set).
    #[arg(long, env = "PUSHCAST_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Stable name of this process in the cluster (default: the host name).
    #[arg(long, env = "PUSHCAST_NODE_ID")]
    pub node_id: Option<String>,

    #[command(flatten)]
    pub grpc_tls: crate::tls::GrpcTlsArgs,

    #[command(flatten)]
    pub webhook_tls: crate::tls::WebhookTlsArgs,
}

impl CommonArgs {
    /// Serves `/metrics` when `--metrics-addr` is set.
    pub async fn serve_metrics(&self, shutdown: &crate::CancellationToken) -> anyhow::Result<()> {
        if let Some(addr) = self.metrics_addr {
            crate::metrics::serve(addr, shutdown.clone()).await?;
        }
        Ok(())
    }

    /// Opens the configured store: etcd when endpoints are given, else the embedded one.
    pub async fn open_store(&self) -> anyhow::Result<Arc<dyn Store>> {
        if self.etcd_endpoints.is_empty() {
            let path = self.data_dir.join("store.redb");
            let store = EmbeddedStore::open(&path)
                .with_context(|| format!("cannot open the embedded store at {}", path.display()))?;
            tracing::info!(path = %path.display(), "using the embedded store");
            Ok(Arc::new(store))
        } else {
            let timeout = Duration::from_millis(self.etcd_timeout_ms.max(100));
            let credentials = self.etcd_credentials()?;
            let store = EtcdStore::connect_with(
                &self.etcd_endpoints,
                &self.etcd_prefix,
                timeout,
                &credentials,
            )
            .await
            .with_context(|| format!("cannot use etcd at {}", self.etcd_endpoints.join(",")))?;
            tracing::info!(
                endpoints = %self.etcd_endpoints.join(","),
                prefix = %self.etcd_prefix,
                tls = self.etcd_endpoints.iter().all(|e| e.starts_with("https://")),
                client_certificate = credentials.identity.is_some(),
                user = credentials.user.as_ref().map(|(u, _)| u.as_str()),
                "using etcd"
            );
            Ok(Arc::new(store))
        }
    }

    /// The etcd TLS files and user, read now (a missing file fails at start).
    pub fn etcd_credentials(&self) -> anyhow::Result<EtcdCredentials> {
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("{flag}: cannot read {}", path.display()))
        };
        let ca_pem = match &self.etcd_ca_file {
            Some(path) => Some(read("--etcd-ca-file", path)?),
            None => None,
        };
        let identity = match (&self.etcd_cert_file, &self.etcd_key_file) {
            (Some(cert), Some(key)) => Some((
                read("--etcd-cert-file", cert)?,
                read("--etcd-key-file", key)?,
            )),
            _ => None,
        };
        let password = match (&self.etcd_password, &self.etcd_password_file) {
            (Some(p), _) => Some(p.0.clone()),
            (None, Some(path)) => {
                let text =
                    String::from_utf8(read("--etcd-password-file", path)?).with_context(|| {
                        format!("--etcd-password-file: {} is not UTF-8", path.display())
                    })?;
                let text = text.strip_suffix('\n').unwrap_or(&text);
                Some(text.strip_suffix('\r').unwrap_or(text).to_string())
            }
            (None, None) => None,
        };
        let user = match (&self.etcd_username, password) {
            (Some(user), Some(password)) => Some((user.clone(), password)),
            (Some(_), None) => anyhow::bail!(
                "--etcd-username needs a password: --etcd-password-file or PUSHCAST_ETCD_PASSWORD"
            ),
            (None, _) => None,
        };
        Ok(EtcdCredentials {
            ca_pem,
            identity,
            user,
        })
    }

    pub fn node_id(&self) -> String {
        if let Some(id) = &self.node_id {
            return id.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "pushcast".to_string())
    }
}

/// A secret given on the command line or in the environment: `Debug` shows `***`.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}
