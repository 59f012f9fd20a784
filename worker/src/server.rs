//! Starting a worker: lease and registration, RTMP ingest, the task runner, status
//! writes and `WorkerService`, all stopped by one cancellation token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pushcast_proto::keys;
use pushcast_proto::model::WorkerInfo;
use pushcast_proto::v1::worker_service_server::WorkerServiceServer;
use pushcast_runtime::CancellationToken;
use pushcast_store::Store;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::backoff::BackoffConfig;
use crate::config::WorkerArgs;
use crate::hub::{Hub, QueueLimits};
use crate::ingest::Ingest;
use crate::lease::Lease;
use crate::live::LiveTasks;
use crate::push::{PushConfig, tls_client_config};
use crate::runner::Runner;
use crate::service::WorkerApi;
use crate::status::StatusWriter;

/// A running worker.
pub struct Worker {
    pub rtmp_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub hub: Hub,
    pub live: LiveTasks,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl Worker {
    /// Waits until the worker's servers have stopped (after shutdown).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        while let Some(r) = self.tasks.join_next().await {
            r.context("worker task panicked")??;
        }
        Ok(())
    }
}

pub async fn start(
    args: WorkerArgs,
    grpc_listen: SocketAddr,
    node_id: String,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> anyhow::Result<Worker> {
    let rtmp = TcpListener::bind(args.rtmp_addr)
        .await
        .with_context(|| format!("cannot bind RTMP ingest to {}", args.rtmp_addr))?;
    let rtmp_addr = rtmp.local_addr()?;
    let grpc = TcpListener::bind(grpc_listen)
        .await
        .with_context(|| format!("cannot bind WorkerService to {grpc_listen}"))?;
    let grpc_addr = grpc.local_addr()?;

    let host = match &args.advertise_host {
        Some(h) => h.clone(),
        None if grpc_addr.ip().is_unspecified() => node_id.clone(),
        None => grpc_addr.ip().to_string(),
    };
    let info = WorkerInfo {
        node_id: node_id.clone(),
        grpc_addr: format!("{host}:{}", grpc_addr.port()),
        rtmp_addr: format!("{host}:{}", rtmp_addr.port()),
        max_sessions: args.max_sessions,
    };

    let lease = Lease::keep(store.clone(), args.lease_ttl(), shutdown.clone())
        .await
        .context("cannot get a lease from the store")?;
    register(store.clone(), info.clone(), lease.clone(), shutdown.clone()).await?;
    let fence = lease.fence();
    let relay_token = crate::relay::cluster_token(store.as_ref())
        .await
        .context("cannot read the relay token")?;

    let hub = Hub::default();
    let live = LiveTasks::default();
    let status = StatusWriter::start(store.clone(), live.clone(), shutdown.clone());
    let tls =
        tls_client_config(args.push_ca_file.as_deref()).context("cannot set up TLS for rtmps")?;
    let push = PushConfig {
        connect_timeout: Duration::from_millis(args.connect_timeout_ms.max(100)),
        send_timeout: Duration::from_millis(args.send_timeout_ms.max(100)),
        tls,
        ..PushConfig::default()
    };

    let mut tasks = JoinSet::new();
    let publishers = crate::ingest::Publishers::default();
    let webhooks = pushcast_webhooks::Dispatcher::new(Default::default())
        .context("cannot start the webhook dispatcher")?;
    let ingest = Ingest {
        hub: hub.clone(),
        store: store.clone(),
        lease,
        node_id: node_id.clone(),
        relay_token: relay_token.clone(),
        published: Default::default(),
        publishers: publishers.clone(),
        refused: Default::default(),
        webhooks: webhooks.clone(),
    };
    let stop = shutdown.clone();
    tasks.spawn(async move {
        ingest.serve(rtmp, stop).await;
        Ok(())
    });
    tracing::info!(addr = %rtmp_addr, node = %node_id, "RTMP ingest listening");

    let relays = crate::relay::Relays {
        hub: hub.clone(),
        store: store.clone(),
        node_id: node_id.clone(),
        push: push.clone(),
        token: relay_token,
        fence: fence.clone(),
    };
    let stop = shutdown.clone();
    tasks.spawn(async move {
        relays.run(stop).await;
        Ok(())
    });

    let runner = Runner {
        hub: hub.clone(),
        store: store.clone(),
        live: live.clone(),
        status,
        push,
        backoff: BackoffConfig::default(),
        queue: QueueLimits::default(),
        node_id: node_id.clone(),
        fence: fence.clone(),
    };
    let (updates_tx, updates_rx) = tokio::sync::mpsc::channel(64);
    let stop = shutdown.clone();
    tasks.spawn(async move {
        runner.run(stop, updates_rx).await;
        Ok(())
    });

    // Gauges read from the live state, every few seconds.
    let (gauge_live, gauge_webhooks, stop) = (live.clone(), webhooks.clone(), shutdown.clone());
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let mut by_state = std::collections::BTreeMap::new();
            for s in ["ready", "started", "stopping", "stopped", "error"] {
                by_state.insert(s, 0u64);
            }
            for t in gauge_live.all() {
                *by_state.entry(t.snapshot().state.as_str()).or_default() += 1;
            }
            for (state, n) in by_state {
                metrics::gauge!("pushcast_push_tasks", "state" => state).set(n as f64);
            }
            gauge_webhooks.stats().record_metrics();
        }
    });

    let api = WorkerApi {
        live: live.clone(),
        updates: updates_tx,
        publishers,
    };
    let stop = shutdown.clone();
    tasks.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(WorkerServiceServer::new(api))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc),
                async move { stop.cancelled().await },
            )
            .await
            .context("WorkerService failed")
    });
    tracing::info!(addr = %grpc_addr, advertised = %info.grpc_addr, "WorkerService listening");

    Ok(Worker {
        rtmp_addr,
        grpc_addr,
        hub,
        live,
        tasks,
    })
}

/// Writes the worker's registration under its lease, and again whenever the lease is
/// replaced.
async fn register(
    store: Arc<dyn Store>,
    info: WorkerInfo,
    lease: Lease,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let key = keys::worker(&info.node_id);
    let value = serde_json::to_vec(&info)?;
    store
        .put(&key, value.clone(), lease.id())
        .await
        .context("cannot register the worker")?;
    let mut changes = lease.subscribe();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = changes.changed() => if r.is_err() { return },
            }
            let id = *changes.borrow();
            if let Err(e) = store.put(&key, value.clone(), id).await {
                tracing::warn!(error = %e, "cannot re-register the worker under its new lease");
            }
        }
    });
    Ok(())
}
