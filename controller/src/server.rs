//! Starting the controller: token, configured apps, the REST gateway and the gRPC server,
//! all stopped by one cancellation token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use futures::FutureExt;
use pushcast_proto::secret::redact;
use pushcast_proto::v1::app_service_server::AppServiceServer;
use pushcast_proto::v1::push_service_server::PushServiceServer;
use pushcast_proto::v1::stream_key_service_server::StreamKeyServiceServer;
use pushcast_runtime::CancellationToken;
use pushcast_store::{Compare, Op, Store, Txn};
use rand::RngCore;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tonic::service::interceptor::InterceptedService;

use crate::apps::Apps;
use crate::auth::Auth;
use crate::config::ControllerConfig;
use crate::gateway::{self, Gateway};
use crate::grpc::{Api, auth_interceptor};
use crate::pushes::Pushes;
use pushcast_proto::keys;

/// The largest gRPC request the API decodes (tonic's default is 4 MiB). A task with its
/// 50 destinations is a few kB; a larger request is refused (`OUT_OF_RANGE`) before it is
/// decoded, whatever it holds.
pub const MAX_GRPC_REQUEST_BYTES: usize = 1024 * 1024;

/// A running controller.
pub struct Controller {
    pub rest_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// The token to call the API with when none was configured (generated or loaded).
    pub generated_token: Option<String>,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl Controller {
    /// Waits until every server has stopped (after the shutdown token is cancelled).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        while let Some(r) = self.tasks.join_next().await {
            r.context("server task panicked")??;
        }
        Ok(())
    }
}

pub async fn start(
    cfg: ControllerConfig,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> anyhow::Result<Controller> {
    let (auth, generated_token) = if cfg.args.no_auth {
        tracing::warn!(
            "API authentication is OFF (--no-auth): anyone who reaches the ports can use the API"
        );
        (Auth::disabled(), None)
    } else if !cfg.args.access_tokens.is_empty() {
        (Auth::new(&cfg.args.access_tokens), None)
    } else {
        let token = shared_token(store.as_ref()).await?;
        tracing::info!(token = %redact(&token), "using the generated access token kept in the store");
        (Auth::new(std::slice::from_ref(&token)), Some(token))
    };

    let apps = Apps::new(store.clone(), cfg.vhosts.iter().map(|v| v.name.clone()));
    apps.seed_vhosts(&cfg.vhosts)
        .await
        .map_err(|e| anyhow::anyhow!("cannot set the configured vhosts' host names: {e}"))?;
    apps.seed(&cfg.apps)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the configured apps: {e}"))?;
    let rest_tls = pushcast_runtime::tls::pair(
        cfg.args.rest_tls_cert.as_deref(),
        cfg.args.rest_tls_key.as_deref(),
        "--rest-tls-cert/--rest-tls-key",
    )?
    .map(|(c, k)| (c.to_path_buf(), k.to_path_buf()));
    let grpc_tls = cfg.args.grpc_tls.server(false).context("gRPC API TLS")?;
    let clients = crate::worker_clients::WorkerClients::with_tls(
        cfg.args
            .grpc_tls
            .client()
            .context("TLS toward the workers")?,
    );
    let informer = crate::informer::Informer::new(store.clone());
    let pushes = Pushes::new(
        store.clone(),
        informer.clone(),
        apps.clone(),
        clients.clone(),
    );
    let stream_keys = crate::publish_keys::PublishKeys::new(
        store.clone(),
        apps,
        clients.clone(),
        cfg.args
            .public_ingest_url
            .clone()
            .unwrap_or_else(|| "rtmp://localhost:1935".to_string()),
    )
    .with_public_rtmps_url(cfg.args.public_ingest_rtmps_url.clone());

    // Every replica campaigns; the leader schedules.
    let (leading, campaign) = crate::leader::campaign(
        store.clone(),
        cfg.node_id.clone(),
        Duration::from_secs(cfg.args.leader_ttl_secs.max(1)),
        shutdown.clone(),
    );

    let rest = TcpListener::bind(cfg.args.rest_addr)
        .await
        .with_context(|| format!("cannot bind the REST gateway to {}", cfg.args.rest_addr))?;
    let rest_addr = rest.local_addr()?;
    let grpc = TcpListener::bind(cfg.args.grpc_addr)
        .await
        .with_context(|| format!("cannot bind the gRPC API to {}", cfg.args.grpc_addr))?;
    let grpc_addr = grpc.local_addr()?;

    let mut tasks = JoinSet::new();
    // Waited for at shutdown, so the leader's lease is revoked before the process exits.
    tasks.spawn(async move { campaign.await.context("leader election task panicked") });
    let (notify_store, notify_leader, stop) = (store.clone(), leading.clone(), shutdown.clone());
    let notify_node = cfg.node_id.clone();
    let dispatcher = pushcast_webhooks::Dispatcher::new(pushcast_webhooks::DispatcherConfig {
        extra_roots: cfg.args.webhook_tls.roots()?,
        ..Default::default()
    })
    .context("cannot start the callback dispatcher")?;
    tasks.spawn(async move {
        crate::notifier::run(notify_store, notify_node, dispatcher, notify_leader, stop).await;
        Ok(())
    });
    let stop = shutdown.clone();
    tasks.spawn(informer.clone().run(stop).map(Ok));
    let (rules_store, rules_informer, rules_pushes, rules_leader, stop) = (
        store.clone(),
        informer.clone(),
        pushes.clone(),
        leading.clone(),
        shutdown.clone(),
    );
    tasks.spawn(async move {
        crate::rules::run(
            rules_store,
            rules_informer,
            rules_pushes,
            rules_leader,
            stop,
        )
        .await;
        Ok(())
    });
    let (sched_store, stop) = (store.clone(), shutdown.clone());
    tasks.spawn(async move {
        crate::scheduler::run(informer, sched_store, clients, leading, stop).await;
        Ok(())
    });
    let router = gateway::router(Gateway {
        pushes: pushes.clone(),
        keys: stream_keys.clone(),
        auth: auth.clone(),
    });
    let stop = shutdown.clone();
    if let Some((cert, key)) = rest_tls {
        // Load now so a bad file fails the start, not the first connection.
        pushcast_runtime::tls::server_config(&cert, &key, &[])?;
        tasks.spawn(async move {
            pushcast_runtime::tls::serve_https(rest, &cert, &key, router, stop)
                .await
                .context("REST gateway (HTTPS) failed")
        });
        tracing::info!(addr = %rest_addr, node = %cfg.node_id, tls = true, "REST gateway listening");
    } else {
        tasks.spawn(async move {
            axum::serve(rest, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .context("REST gateway failed")
        });
        tracing::info!(addr = %rest_addr, node = %cfg.node_id, "REST gateway listening");
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<PushServiceServer<Api>>().await;
    health.set_serving::<AppServiceServer<Api>>().await;
    // Reflection in both versions: v1, and v1alpha for the tools that speak only it
    // (grpcurl 1.8, older IDE plugins).
    let reflection_of = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pushcast_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_of()
        .build_v1()
        .context("cannot build gRPC reflection")?;
    let reflection_v1alpha = reflection_of()
        .build_v1alpha()
        .context("cannot build gRPC reflection (v1alpha)")?;
    let api = Api {
        pushes,
        keys: stream_keys,
    };
    let interceptor = auth_interceptor(auth);
    let stop = shutdown.clone();
    let grpc_is_tls = grpc_tls.is_some();
    let mut builder =
        tonic::transport::Server::builder().trace_fn(pushcast_runtime::logging::grpc_span);
    if let Some(tls) = grpc_tls {
        builder = builder
            .tls_config(tls)
            .context("cannot set up TLS for the gRPC API")?;
    }
    tasks.spawn(async move {
        builder
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(InterceptedService::new(
                PushServiceServer::new(api.clone())
                    .max_decoding_message_size(MAX_GRPC_REQUEST_BYTES),
                interceptor.clone(),
            ))
            .add_service(InterceptedService::new(
                AppServiceServer::new(api.clone())
                    .max_decoding_message_size(MAX_GRPC_REQUEST_BYTES),
                interceptor.clone(),
            ))
            .add_service(InterceptedService::new(
                StreamKeyServiceServer::new(api).max_decoding_message_size(MAX_GRPC_REQUEST_BYTES),
                interceptor,
            ))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc),
                async move { stop.cancelled().await },
            )
            .await
            .context("gRPC server failed")
    });
    tracing::info!(addr = %grpc_addr, tls = grpc_is_tls, "gRPC API listening");

    Ok(Controller {
        rest_addr,
        grpc_addr,
        generated_token,
        tasks,
    })
}

/// The cluster's generated access token: created once (first writer wins), then read by
/// every replica, so all controllers accept the same token.
async fn shared_token(store: &dyn Store) -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    let fresh = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let txn = Txn::new()
        .when(Compare::Absent(keys::ACCESS_TOKEN.to_string()))
        .and_then(Op::put(keys::ACCESS_TOKEN, fresh.into_bytes()));
    store
        .txn(txn)
        .await
        .context("cannot store the access token")?;
    let kv = store
        .get(keys::ACCESS_TOKEN)
        .await
        .context("cannot read the access token")?
        .context("the access token vanished from the store")?;
    String::from_utf8(kv.value).context("the stored access token is not text")
}
