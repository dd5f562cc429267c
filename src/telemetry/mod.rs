//! Traces: OpenTelemetry spans made with the `tracing` stack and exported
//! over OTLP/HTTP (protobuf) when `[telemetry] otlp_endpoint` is set.
//!
//! - [`Telemetry`]: the process's tracer provider (built once at start,
//!   restart-only), its [`layer`] for the subscriber, and the bounded
//!   flush at shutdown.
//! - `export`: the bounded queue, the batch processor, the exporter and
//!   its HTTP client, all off the request path.
//! - `span`: the spans the gateway makes: one SERVER span per request
//!   (its parent extracted from the client's `traceparent`/`tracestate`),
//!   one CLIENT span per upstream exchange (its own `traceparent` injected
//!   into the upstream request), events for the waits, and the trace id
//!   the access and audit lines carry.
//!
//! Every span and event is made with [`TARGET`]: only the OpenTelemetry
//! layer sees that target and the log layer never does, so `RUST_LOG`
//! keeps meaning what it meant. Without an endpoint there is no
//! OpenTelemetry layer, and the spans cost a disabled callsite each.
//! Never in a span: keys, bodies, or header values.
//!
//! Public surface: [`Telemetry`], [`TARGET`], [`layer`], [`span`].

mod export;
pub mod span;

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::Layer;

use crate::config::TelemetryConfig;

pub use export::QUEUE_SPANS;

/// The `tracing` target of every span and event meant for export.
pub const TARGET: &str = "openai_admin_gateway::trace";

/// The running trace export.
#[derive(Debug)]
pub struct Telemetry {
    /// The SDK's provider (its batch processor thread and the exporter).
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// The export `config` asks for, or `None` without `otlp_endpoint`.
    pub fn start(config: &TelemetryConfig) -> std::io::Result<Option<Self>> {
        let Some(url) = config.traces_url() else {
            return Ok(None);
        };
        let provider = export::provider(config, url)?;
        Ok(Some(Self { provider }))
    }

    /// Sends what is queued, waiting at most `within`; `false` if it did
    /// not all go (the collector is down or slow).
    pub fn shutdown(self, within: Duration) -> bool {
        self.provider.shutdown_with_timeout(within).is_ok()
    }
}

/// The OpenTelemetry layer for the subscriber: it sees [`TARGET`] only.
/// `None` (no layer) without export.
pub fn layer<S>(telemetry: Option<&Telemetry>) -> Option<impl Layer<S>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let t = telemetry?;
    let tracer = t.provider.tracer("openai-admin-gateway");
    let only_ours = Targets::new().with_target(TARGET, tracing::Level::TRACE);
    Some(
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            // No busy/idle timing on every enter and exit of a span.
            .with_tracked_inactivity(false)
            .with_filter(only_ours),
    )
}

/// The filter the log layer adds to its own: never [`TARGET`].
pub fn not_traces() -> Targets {
    Targets::new()
        .with_target(TARGET, tracing_subscriber::filter::LevelFilter::OFF)
        .with_default(tracing::Level::TRACE)
}
