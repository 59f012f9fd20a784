//! Settings every pushcast process shares: where the state lives and who this node is.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pushcast_store::Store;
use pushcast_store::embedded::EmbeddedStore;
use pushcast_store::etcd::EtcdStore;

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
            let store = EtcdStore::connect(&self.etcd_endpoints, &self.etcd_prefix, timeout)
                .await
                .with_context(|| {
                    format!("cannot reach etcd at {}", self.etcd_endpoints.join(","))
                })?;
            tracing::info!(endpoints = %self.etcd_endpoints.join(","), prefix = %self.etcd_prefix, "using etcd");
            Ok(Arc::new(store))
        }
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
