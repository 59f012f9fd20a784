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
    /// Auto-push rules, each naming its `app` (one of `apps`), in the REST API's shape:
    /// `[[vhosts.default.rules]] app = "live" name = "yt" stream = "cam*"
    /// destinations = [{ protocol = "rtmp", url = "...", streamKey = "${SourceStream}" }]`.
    /// They replace the app's rules at start (the file wins, as for `hosts`).
    #[serde(default)]
    pub rules: Vec<serde_json::Value>,
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
                rules: Vec::new(),
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
            s.apps
                .iter()
                .map(move |name| AppConfig::new(vhost.clone(), name.clone()))
        })
        .collect();
    (vhosts, apps)
}

/// Vhosts and apps of a loaded config file (or the default ones), with the apps' rules
/// (checked as the API checks them: a bad rule fails the start, named).
pub fn vhosts_from(
    file: &pushcast_runtime::config_file::ConfigFile,
) -> anyhow::Result<(Vec<VhostSeed>, Vec<AppConfig>)> {
    let section = file.section::<BTreeMap<String, VhostSection>>("vhosts")?;
    let rules: Vec<(String, Vec<serde_json::Value>)> = section
        .iter()
        .flatten()
        .map(|(vhost, s)| (vhost.clone(), s.rules.clone()))
        .collect();
    let (vhosts, mut apps) = vhosts_or_default(section);
    for (vhost, list) in rules {
        let mut by_app: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
        for r in list {
            let app = r
                .get("app")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_string();
            by_app.entry(app).or_default().push(r);
        }
        for (app, list) in by_app {
            let Some(target) = apps.iter_mut().find(|a| a.vhost == vhost && a.name == app) else {
                anyhow::bail!(
                    "config file: a rule of [vhosts.{vhost}] names app '{app}', which is not in its apps"
                );
            };
            let parsed =
                crate::requests::rules(&serde_json::json!({ "rules": list })).map_err(|e| {
                    anyhow::anyhow!("config file: rules of {vhost}/{app}: {}", e.message)
                })?;
            target.rules = parsed.unwrap_or_default();
        }
    }
    Ok((vhosts, apps))
}

/// Everything [`crate::server::start`] needs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub args: ControllerArgs,
    pub vhosts: Vec<VhostSeed>,
    pub apps: Vec<AppConfig>,
    pub node_id: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn load(text: &str) -> anyhow::Result<(Vec<VhostSeed>, Vec<AppConfig>)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pushcast.toml");
        std::fs::write(&path, text).unwrap();
        vhosts_from(&pushcast_runtime::config_file::ConfigFile::load(&path).unwrap())
    }

    #[test]
    fn rules_in_the_file_go_to_their_app_checked_as_the_api_checks_them() {
        let (_, apps) = load(
            r#"
            [vhosts.default]
            apps = ["live", "other"]
            [[vhosts.default.rules]]
            app = "live"
            name = "yt"
            stream = "cam*"
            destinations = [{ protocol = "rtmp", url = "rtmp://a.example/live", streamKey = "${SourceStream}" }]
            "#,
        )
        .unwrap();
        let live = apps.iter().find(|a| a.name == "live").unwrap();
        assert_eq!(live.rules.len(), 1);
        assert_eq!(live.rules[0].destinations[0].stream_key, "${SourceStream}");
        assert!(
            apps.iter()
                .find(|a| a.name == "other")
                .unwrap()
                .rules
                .is_empty()
        );

        let e = load(
            r#"
            [vhosts.default]
            apps = ["live"]
            [[vhosts.default.rules]]
            app = "nope"
            name = "yt"
            stream = "*"
            destinations = [{ protocol = "rtmp", url = "rtmp://a/live", streamKey = "k" }]
            "#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("app 'nope'"), "{e}");
        let e = load(
            r#"
            [vhosts.default]
            apps = ["live"]
            [[vhosts.default.rules]]
            app = "live"
            name = "bad name"
            stream = "*"
            destinations = [{ protocol = "rtmp", url = "rtmp://a/live", streamKey = "k" }]
            "#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("name must be"), "{e}");
    }
}
