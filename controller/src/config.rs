//! The controller's settings: flags, `PUSHCAST_*` environment variables, config file keys.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use pushcast_proto::model::AppConfig;

pub use crate::apps::VhostSeed;
use serde::Deserialize;

#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// API access token (repeatable, or comma-separated in the variable). None configured:
    /// one is generated at first start, kept in the store and printed.
    #[arg(
        long = "access-token",
        env = "PUSHCAST_ACCESS_TOKEN",
        value_delimiter = ',',
        value_name = "TOKEN"
    )]
    pub access_tokens: Vec<String>,

    /// Serve the API without authentication (a warning is logged at start).
    #[arg(long, env = "PUSHCAST_NO_AUTH")]
    pub no_auth: bool,

    /// HTTP/JSON gateway (the OME-compatible REST API).
    #[arg(long, env = "PUSHCAST_REST_ADDR", default_value = "0.0.0.0:8081")]
    pub rest_addr: SocketAddr,

    /// HTTPS for the REST gateway: certificate chain (PEM). Set with --rest-tls-key, the
    /// REST port speaks only TLS.
    #[arg(long, env = "PUSHCAST_REST_TLS_CERT", value_name = "FILE")]
    pub rest_tls_cert: Option<std::path::PathBuf>,

    /// Private key (PEM) of --rest-tls-cert.
    #[arg(long, env = "PUSHCAST_REST_TLS_KEY", value_name = "FILE")]
    pub rest_tls_key: Option<std::path::PathBuf>,

    /// gRPC TLS (the shared `--grpc-tls-*` flags, copied here by the binary).
    #[arg(skip)]
    pub grpc_tls: pushcast_runtime::tls::GrpcTlsArgs,

    /// Trust for https callback receivers (the shared `--webhook-ca-file`, copied here by
    /// the binary).
    #[arg(skip)]
    pub webhook_tls: pushcast_runtime::tls::WebhookTlsArgs,

    /// gRPC API (PushService, AppService, health, reflection).
    #[arg(long, env = "PUSHCAST_GRPC_ADDR", default_value = "0.0.0.0:9000")]
    pub grpc_addr: SocketAddr,

    /// Where encoders publish, as stream-key answers show it (`rtmpUrl` is this + `/app`).
    /// Default: `rtmp://localhost:1935` (standalone: its own ingest address).
    #[arg(long, env = "PUSHCAST_PUBLIC_INGEST_URL")]
    pub public_ingest_url: Option<String>,

    /// Where encoders reach the RTMPS ingest, as stream-key answers show it (`rtmpsUrl`
    /// is this + `/app`). Default: the host of --public-ingest-url with the RTMPS port a
    /// worker registered; no `rtmpsUrl` when no worker serves RTMPS.
    #[arg(long, env = "PUSHCAST_PUBLIC_INGEST_RTMPS_URL")]
    pub public_ingest_rtmps_url: Option<String>,

    /// TTL of the leader's lease, in seconds: a dead leader is replaced within it.
    #[arg(long, env = "PUSHCAST_LEADER_TTL_SECS", default_value_t = 5)]
    pub leader_ttl_secs: u64,
}

/// One `[vhosts.NAME]` section of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct VhostSection {
    #[serde(default)]
    pub apps: Vec<String>,
    /// Host names (and `*.suffix` wildcards) whose publishes land in this vhost.
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
}

/// Vhosts and apps from the config file's `[vhosts]` table; without one, `default` with
/// an `app` application, as OME ships.
pub fn vhosts_or_default(
    section: Option<BTreeMap<String, VhostSection>>,
) -> (Vec<VhostSeed>, Vec<AppConfig>) {
    let section = section.unwrap_or_else(|| {
        BTreeMap::from([(
            "default".to_string(),
            VhostSection {
                apps: vec!["app".to_string()],
                hosts: None,
            },
        )])
    });
    let vhosts = section
        .iter()
        .map(|(name, s)| VhostSeed {
            name: name.clone(),
            hosts: s.hosts.clone(),
        })
        .collect();
    let apps = section
        .iter()
        .flat_map(|(vhost, s)| {
            s.apps.iter().map(move |name| AppConfig {
                vhost: vhost.clone(),
                name: name.clone(),
                open_publish: false,
                callbacks: Default::default(),
                srt_passphrase: None,
                reconnect_window_ms: 0,
                input_stall_ms: None,
                switch_back_to_primary: None,
                rules: Vec::new(),
            })
        })
        .collect();
    (vhosts, apps)
}

/// Vhosts and apps of a loaded config file (or the default ones).
pub fn vhosts_from(
    file: &pushcast_runtime::config_file::ConfigFile,
) -> anyhow::Result<(Vec<VhostSeed>, Vec<AppConfig>)> {
    Ok(vhosts_or_default(
        file.section::<BTreeMap<String, VhostSection>>("vhosts")?,
    ))
}

/// Everything [`crate::server::start`] needs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub args: ControllerArgs,
    pub vhosts: Vec<VhostSeed>,
    pub apps: Vec<AppConfig>,
    pub node_id: String,
}
