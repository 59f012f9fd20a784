//! Logging and tracing through `tracing`: plain text (or JSON with
//! `PUSHCAST_LOG_FORMAT=json`) to stderr, filtered by `RUST_LOG` (default `info`), and
//! OpenTelemetry spans exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
//! (service name from `OTEL_SERVICE_NAME`, else the binary's name). W3C trace context
//! crosses process boundaries: see [`inject`] and [`set_parent`].

use std::collections::HashMap;
use std::io::IsTerminal;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes it.
#[must_use = "dropping it stops trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered (call before the process exits).
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("trace export shutdown: {e}");
        }
    }
}

/// Installs the global subscriber (a second call is a no-op) and, when configured, the
/// OTLP trace exporter. Must run inside a tokio runtime when OTLP is on.
pub fn init(service: &str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("PUSHCAST_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let ansi = std::io::stderr().is_terminal();
    let provider = otlp_provider(service);
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("pushcast")));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let _ = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
    if provider.is_some() {
        tracing::info!(service, "exporting traces over OTLP");
    }
    Telemetry { provider }
}

fn otlp_provider(service: &str) -> Option<SdkTracerProvider> {
    std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT")?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (and friends) itself.
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("OTLP trace export disabled: {e}");
            return None;
        }
    };
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_string());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(name)
        .build();
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    )
}

/// The W3C trace context (`traceparent`, ...) of `span`, to carry it to another process.
pub fn inject(span: &tracing::Span) -> HashMap<String, String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier
}

/// Makes `span` a child of the trace context in `carrier` (no-op when it holds none).
pub fn set_parent(span: &tracing::Span, carrier: &HashMap<String, String>) {
    if carrier.contains_key("traceparent") {
        let cx = TraceContextPropagator::new().extract(carrier);
        let _ = span.set_parent(cx);
    }
}

/// The span of one gRPC call (for tonic's `Server::trace_fn`), continuing the caller's
/// trace when its metadata carries a `traceparent`.
pub fn grpc_span(req: &axum::http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!("grpc", path = %req.uri().path());
    let carrier: HashMap<String, String> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    set_parent(&span, &carrier);
    span
}
