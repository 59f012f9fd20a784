//! Prometheus metrics: the `metrics` facade everywhere in the code, one exporter per
//! process, served as text at `/metrics` on `--metrics-addr`.
//!
//! Names follow Prometheus conventions: `pushcast_` prefix, `_total` for counters, base
//! units (`_bytes`, `_seconds`).

use std::net::SocketAddr;
use std::sync::OnceLock;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Every metric pushcast exports, with its help text (also the reference for dashboards).
pub const METRICS: &[(&str, &str)] = &[
    (
        "pushcast_push_tasks",
        "Push tasks held by this worker, by state.",
    ),
    (
        "pushcast_push_sent_bytes_total",
        "Media bytes written to push destinations.",
    ),
    (
        "pushcast_push_dropped_frames_total",
        "Frames a push session dropped.",
    ),
    (
        "pushcast_push_reconnects_total",
        "Push sessions that failed and will reconnect.",
    ),
    (
        "pushcast_push_bitrate_bps",
        "Bits per second this worker's pushes send, summed over its destinations (each push's own rate is in the API).",
    ),
    (
        "pushcast_push_stalls_total",
        "Pushes found stalled and connected again, by how: send_timeout (the destination stopped reading) or no_progress (no bytes sent while the source was live).",
    ),
    (
        "pushcast_hub_dropped_frames_total",
        "Frames skipped for slow push sessions (to the next keyframe).",
    ),
    (
        "pushcast_ingest_streams",
        "Live streams ingested by this worker.",
    ),
    (
        "pushcast_ingest_publishes_total",
        "Accepted RTMP publishes.",
    ),
    (
        "pushcast_ingest_refused_total",
        "Refused RTMP, RTMPS and SRT publishes, by reason.",
    ),
    (
        "pushcast_ingest_srt_listener_restarts_total",
        "Times the SRT listener's task stopped unexpectedly and was started again.",
    ),
    (
        "pushcast_stream_interruptions_total",
        "Times a stream lost its last publisher and waited within its reconnect window.",
    ),
    (
        "pushcast_stream_resumes_total",
        "Times a publisher continued an interrupted stream within its window.",
    ),
    (
        "pushcast_stream_windows_expired_total",
        "Times a reconnect window passed without a publisher: the stream ended.",
    ),
    (
        "pushcast_stream_input_switches_total",
        "Times a stream changed inputs (primary and backup).",
    ),
    (
        "pushcast_stream_republishes_total",
        "Times a publisher continued a stream with another codec: its pushes started again.",
    ),
    (
        "pushcast_callback_deliveries_total",
        "Webhook deliveries, by result.",
    ),
    (
        "pushcast_callback_retries_total",
        "Webhook delivery retries.",
    ),
    ("pushcast_callback_queued", "Webhooks waiting or in flight."),
    (
        "pushcast_callback_attempt_failures_total",
        "Failed webhook delivery attempts, by reason (certificate_unknown_issuer, tls, connect, timeout, http_5xx, ...).",
    ),
    (
        "pushcast_scheduler_passes_total",
        "Scheduler passes run by the leader.",
    ),
    (
        "pushcast_scheduler_pass_duration_seconds",
        "Duration of one scheduler pass.",
    ),
    (
        "pushcast_scheduler_placed_tasks",
        "Tasks placed on workers by the last pass.",
    ),
    ("pushcast_leader", "1 while this controller is the leader."),
    (
        "pushcast_store_errors_total",
        "State store calls that failed, by kind.",
    ),
    (
        "pushcast_store_decode_errors_total",
        "Stored values that did not decode and were left out, by kind.",
    ),
    (
        "pushcast_informer_relists_total",
        "Times a controller's informer listed the store again after its watch broke, by reason.",
    ),
    (
        "pushcast_informer_lagging_reads_total",
        "Reads and passes that did not see the informer reach the revision they waited for in time.",
    ),
    (
        "pushcast_ingest_stale_streams_total",
        "Publishes that met their stream registered on another worker, by decision (revoked: that worker was gone; refused: it answered; held: it could not be told).",
    ),
    (
        "pushcast_status_events_total",
        "Status callback entries recorded in the outbox (one per event and receiver).",
    ),
    (
        "pushcast_status_events_history_lost_total",
        "Status events sent from a comparison of states because the store's history since the cursor was compacted.",
    ),
    (
        "pushcast_callbacks_outbox_entries",
        "Status callback entries waiting in the outbox for their receiver.",
    ),
    (
        "pushcast_callbacks_outbox_delivered_total",
        "Outbox entries a receiver accepted (and that were deleted).",
    ),
    (
        "pushcast_callbacks_outbox_dropped_total",
        "Outbox entries dropped, by reason (full: the oldest beyond the bound; receiver removed).",
    ),
];

/// Installs the global recorder once (later calls reuse it).
fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(h) => {
                for (name, help) in METRICS {
                    // The kind does not matter for the help text of the exposition.
                    metrics::describe_counter!(*name, *help);
                }
                Some(h)
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        })
        .as_ref()
}

/// Serves `/metrics` on `addr` until `shutdown`; returns the bound address.
pub async fn serve(addr: SocketAddr, shutdown: CancellationToken) -> anyhow::Result<SocketAddr> {
    let handle = handle()
        .context("cannot install the metrics recorder")?
        .clone();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind metrics to {addr}"))?;
    let bound = listener.local_addr()?;
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let h = handle.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    h.render(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    tracing::info!(addr = %bound, "metrics listening");
    Ok(bound)
}
