//! The export side: the tracer provider, a bounded queue in front of the
//! SDK's batch span processor, the OTLP/HTTP exporter and the HTTP client
//! it posts with.
//!
//! Nothing here runs on a request's thread but [`Bounded::on_end`], which
//! only counts and hands the span to the batch processor's channel. The
//! batch processor exports from a thread of its own, and the HTTP exchange
//! runs on a current-thread runtime of its own (`gateway-otlp`), so a dead
//! or slow collector stalls only that thread: spans beyond
//! [`QUEUE_SPANS`] are dropped and counted, never waited for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::Context;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, Span, SpanData,
    SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;

use crate::config::TelemetryConfig;
use crate::metrics::{trace_export_failed, trace_span_dropped};

/// Spans held for export at most; more are dropped (and counted).
pub const QUEUE_SPANS: usize = 4096;
/// Spans per exported batch.
const BATCH_SPANS: usize = 512;
/// How often a partial batch is sent.
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// One export's bound, connect to the collector's last byte.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a collector's answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Builds the provider that exports to `config`'s `{otlp_endpoint}/v1/traces`.
pub(super) fn provider(
    config: &TelemetryConfig,
    url: String,
) -> std::io::Result<SdkTracerProvider> {
    let client = OtlpClient::start()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(client)
        .build()
        .map_err(std::io::Error::other)?;
    let queued = Arc::new(AtomicUsize::new(0));
    let batch = BatchSpanProcessor::builder(Counted {
        inner: exporter,
        queued: queued.clone(),
    })
    .with_batch_config(
        BatchConfigBuilder::default()
            .with_max_queue_size(QUEUE_SPANS)
            .with_max_export_batch_size(BATCH_SPANS)
            .with_scheduled_delay(BATCH_DELAY)
            .build(),
    )
    .build();
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
    Ok(SdkTracerProvider::builder()
        .with_span_processor(Bounded {
            inner: batch,
            queued,
        })
        .with_sampler(sampler)
        .with_resource(
            Resource::builder_empty()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build())
}

// === Bounded ===

/// The batch processor behind a count of the spans it holds: a span that
/// would exceed [`QUEUE_SPANS`] is dropped here and counted in
/// `gateway_trace_spans_dropped_total` (the SDK's own drop count is not
/// readable).
#[derive(Debug)]
struct Bounded {
    /// The SDK's batch processor (its channel holds [`QUEUE_SPANS`]).
    inner: BatchSpanProcessor,
    /// Sampled spans handed to `inner` and not yet handed to the exporter
    /// (an upper bound of what its channel holds).
    queued: Arc<AtomicUsize>,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= QUEUE_SPANS {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            trace_span_dropped();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

// === Counted ===

/// The OTLP exporter, counting failed batches in
/// `gateway_trace_export_failures_total` and telling [`Bounded`] which
/// spans left its queue.
#[derive(Debug)]
struct Counted {
    /// The OTLP/HTTP exporter.
    inner: opentelemetry_otlp::SpanExporter,
    /// Shared with [`Bounded`].
    queued: Arc<AtomicUsize>,
}

impl SpanExporter for Counted {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        let result = self.inner.export(batch).await;
        if result.is_err() {
            trace_export_failed();
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

// === OtlpClient ===

/// The exporter's HTTP client: hyper (the stack the gateway already uses,
/// rustls with the webpki roots for https) on a current-thread runtime of
/// its own. The batch processor's thread awaits the task's handle; the
/// exchange itself never touches a worker's runtime.
#[derive(Debug)]
struct OtlpClient {
    /// The `gateway-otlp` runtime's handle.
    runtime: tokio::runtime::Handle,
    /// The pooled client (one connection kept to the collector).
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl OtlpClient {
    /// Starts the `gateway-otlp` thread and its runtime. It runs until
    /// the process ends.
    fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("gateway-otlp".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(EXPORT_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls()?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            runtime: handle,
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }
}

#[async_trait::async_trait]
impl HttpClient for OtlpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let exchange = async move {
            let resp = client.request(request.map(Full::new)).await?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES).collect().await?;
            Ok::<_, HttpError>(Response::from_parts(parts, body.to_bytes()))
        };
        let task = self
            .runtime
            .spawn(async move { tokio::time::timeout(EXPORT_TIMEOUT, exchange).await });
        match task.await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err("the collector did not answer within 5 s".into()),
            Err(e) => Err(Box::new(e)),
        }
    }
}

/// rustls with the webpki roots, for an `https://` collector.
fn tls() -> std::io::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
