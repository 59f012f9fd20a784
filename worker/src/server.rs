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

use crate::config::WorkerArgs;
use crate::hub::{Hub, QueueLimits};
use crate::ingest::Ingest;
use crate::lease::Lease;
use crate::live::LiveTasks;
use crate::push::{PushConfig, tls_client_config};
use crate::reconnect::Settings;
use crate::runner::Runner;
use crate::service::WorkerApi;
use crate::status::StatusWriter;
use pushcast_retry::BackoffConfig;

/// A running worker.
pub struct Worker {
    /// Cancelled when the worker stops (after its drain).
    pub stopped: CancellationToken,
    pub rtmp_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// RTMPS ingest, when configured.
    pub rtmps_addr: Option<SocketAddr>,
    /// SRT ingest, when configured.
    pub srt_addr: Option<SocketAddr>,
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
    drain: CancellationToken,
) -> anyhow::Result<Worker> {
    // `drain` (SIGTERM) stops new publishes; `shutdown` stops everything, once the live
    // publishes have ended or the grace has run out.
    let shutdown = CancellationToken::new();
    let rtmp = TcpListener::bind(args.rtmp_addr)
        .await
        .with_context(|| format!("cannot bind RTMP ingest to {}", args.rtmp_addr))?;
    let rtmp_addr = rtmp.local_addr()?;
    let rtmps = match &args.rtmps_addr {
        Some(addr) => {
            let (cert, key) = pushcast_runtime::tls::pair(
                args.rtmps_cert.as_deref(),
                args.rtmps_key.as_deref(),
                "--rtmps-cert/--rtmps-key",
            )?
            .context("--rtmps-addr needs --rtmps-cert and --rtmps-key")?;
            let acceptor = pushcast_runtime::tls::acceptor(cert, key)
                .context("cannot set up TLS for RTMPS ingest")?;
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind RTMPS ingest to {addr}"))?;
            Some((listener, acceptor))
        }
        None => None,
    };
    let rtmps_addr = match &rtmps {
        Some((l, _)) => Some(l.local_addr()?),
        None => None,
    };
    let grpc_tls = args.grpc_tls.server(true).context("WorkerService TLS")?;
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
        rtmps_addr: rtmps_addr.map(|a| format!("{host}:{}", a.port())),
        max_sessions: args.max_sessions,
        draining: false,
    };

    let lease = Lease::keep(store.clone(), args.lease_ttl(), shutdown.clone())
        .await
        .context("cannot get a lease from the store")?;
    register(store.clone(), info.clone(), lease.clone(), shutdown.clone()).await?;
    let fence = lease.fence();
    let lease_done = lease.clone();
    let forward_token = crate::forward::cluster_token(store.as_ref())
        .await
        .context("cannot read the forward token")?;

    let hub = Hub::default();
    let live = LiveTasks::default();
    let status = StatusWriter::start(store.clone(), live.clone(), shutdown.clone());
    let tls =
        tls_client_config(args.push_ca_file.as_deref()).context("cannot set up TLS for rtmps")?;
    let push = PushConfig {
        connect_timeout: Duration::from_millis(args.connect_timeout_ms.max(100)),
        send_timeout: Duration::from_millis(args.send_timeout_ms.max(100)),
        write_interval: Duration::from_millis(args.write_interval_ms.min(1000)),
        tls,
        ..PushConfig::default()
    };

    let stall_after = Duration::from_millis(args.stall_timeout_ms);
    let mut tasks = JoinSet::new();
    // Waited for at shutdown: the lease is revoked before the process exits.
    tasks.spawn(async move {
        lease_done.stopped().await;
        Ok(())
    });
    let publishers = crate::ingest::Publishers::default();
    let webhooks = pushcast_webhooks::Dispatcher::new(pushcast_webhooks::DispatcherConfig {
        extra_roots: args.webhook_tls.roots()?,
        ..Default::default()
    })
    .context("cannot start the webhook dispatcher")?;
    // Forwards, and backups relayed to their primary's worker, share these settings.
    let forward_settings = Arc::new(Settings {
        hub: hub.clone(),
        push: push.clone(),
        queue: QueueLimits::default(),
        backoff: crate::forward::retry_policy(),
        fence: fence.clone(),
        // Forwards have no task to report to; their send timeout still applies.
        stall_after: Duration::ZERO,
    });
    let ingest = Ingest {
        backup_relay: Some(forward_settings.clone()),
        hub: hub.clone(),
        store: store.clone(),
        lease: lease.clone(),
        node_id: node_id.clone(),
        forward_token: forward_token.clone(),
        published: Default::default(),
        publishers: publishers.clone(),
        refused: Default::default(),
        webhooks: webhooks.clone(),
        limits: crate::ingest_limits::IngestLimits::new(
            args.max_ingest_connections,
            args.max_ingest_connections_per_ip,
            args.max_message_bytes,
        ),
    };
    if let (Some((listener, acceptor)), Some(addr)) = (rtmps, rtmps_addr) {
        let (ingest, accept_until, stop) = (ingest.clone(), drain.clone(), shutdown.clone());
        tasks.spawn(async move {
            ingest
                .serve_tls(listener, acceptor, accept_until, stop)
                .await;
            Ok(())
        });
        tracing::info!(%addr, node = %node_id, "RTMPS ingest listening");
    }
    let srt_addr = match args.srt_addr {
        Some(addr) => {
            let config = crate::ingest::srt::SrtIngestConfig {
                passphrase: args.srt_passphrase.clone().map(|p| p.0),
                latency: Duration::from_millis(args.srt_latency_ms),
            };
            let (bound, serve) = ingest
                .clone()
                .bind_srt(addr, config, drain.clone(), shutdown.clone())
                .await
                .with_context(|| format!("cannot start the SRT ingest on {addr}"))?;
            tasks.spawn(async move {
                serve.await;
                Ok(())
            });
            tracing::info!(addr = %bound, node = %node_id, "SRT ingest listening");
            Some(bound)
        }
        None => None,
    };
    let (accept_until, stop) = (drain.clone(), shutdown.clone());
    tasks.spawn(async move {
        ingest.serve(rtmp, accept_until, stop).await;
        Ok(())
    });
    let (drain_store, drain_info, drain_lease) = (store.clone(), info.clone(), lease.clone());
    let (pubs, stop) = (publishers.clone(), shutdown.clone());
    let grace = Duration::from_secs(args.drain_grace_secs);
    tasks.spawn(async move {
        tokio::select! {
            _ = drain.cancelled() => {}
            _ = stop.cancelled() => return Ok(()),
        }
        tracing::info!(
            live = pubs.len(),
            grace_secs = grace.as_secs(),
            "draining: no new publishes; waiting for the live ones to end"
        );
        // Tell the controllers: the scheduler places no new work here.
        let draining = WorkerInfo {
            draining: true,
            ..drain_info
        };
        if let Ok(v) = serde_json::to_vec(&draining) {
            let _ = drain_store
                .put(&keys::worker(&draining.node_id), v, drain_lease.id())
                .await;
        }
        let deadline = tokio::time::Instant::now() + grace;
        while !pubs.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::info!(left = pubs.len(), "drained; stopping");
        stop.cancel();
        Ok(())
    });
    tracing::info!(addr = %rtmp_addr, node = %node_id, "RTMP ingest listening");

    let forwards = crate::forward::Forwards {
        settings: forward_settings,
        store: store.clone(),
        node_id: node_id.clone(),
        token: forward_token,
        fence: fence.clone(),
    };
    let stop = shutdown.clone();
    tasks.spawn(async move {
        forwards.run(stop).await;
        Ok(())
    });

    let runner = Runner {
        settings: Arc::new(Settings {
            hub: hub.clone(),
            push,
            queue: QueueLimits::default(),
            backoff: BackoffConfig::default(),
            fence: fence.clone(),
            stall_after,
        }),
        store: store.clone(),
        live: live.clone(),
        status,
        node_id: node_id.clone(),
        fence: fence.clone(),
    };
    // The pushes' health: rates sampled every second, and the stall watchdog.
    let rates = crate::stream_health::StreamRates::default();
    let (sampled, sample_hub, sampled_streams, stop) =
        (live.clone(), hub.clone(), rates.clone(), shutdown.clone());
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    let streams = sample_hub.streams();
                    sampled.sample(&streams, stall_after);
                    sampled_streams.sample(&streams);
                }
            }
        }
    });
    let (updates_tx, updates_rx) = tokio::sync::mpsc::channel(64);
    let stop = shutdown.clone();
    tasks.spawn(async move {
        Arc::new(runner).run(stop, updates_rx).await;
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
            let mut bitrate = 0u64;
            for t in gauge_live.all() {
                let st = t.snapshot();
                *by_state.entry(st.state.as_str()).or_default() += 1;
                bitrate += st.health.bitrate_bps;
            }
            metrics::gauge!("pushcast_push_bitrate_bps").set(bitrate as f64);
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
        hub: hub.clone(),
        rates,
    };
    let stop = shutdown.clone();
    let mut builder =
        tonic::transport::Server::builder().trace_fn(pushcast_runtime::logging::grpc_span);
    let tls = grpc_tls.is_some();
    if let Some(config) = grpc_tls {
        builder = builder
            .tls_config(config)
            .context("cannot set up TLS for WorkerService")?;
    }
    tasks.spawn(async move {
        builder
            .add_service(WorkerServiceServer::new(api))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc),
                async move { stop.cancelled().await },
            )
            .await
            .context("WorkerService failed")
    });
    tracing::info!(addr = %grpc_addr, advertised = %info.grpc_addr, tls, "WorkerService listening");

    Ok(Worker {
        stopped: shutdown,
        rtmp_addr,
        grpc_addr,
        rtmps_addr,
        srt_addr,
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
