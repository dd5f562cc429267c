//! The spans and events the gateway makes, and what travels with them.
//!
//! Attributes follow OpenTelemetry's HTTP semantic conventions
//! (`http.request.method`, `http.route`, `url.path`,
//! `http.response.status_code`, `server.address`) plus the gateway's own
//! (`gateway.client`, `gateway.cache_status`, `gateway.organization`).
//! `http.route` is the gateway's route class (`get_user`, `write`, ...),
//! the one low-cardinality name a request's path has here. `url.path` is
//! the path without its query; a user id in it is fine in a span (it is
//! never a metric label). No key, body or header value is ever recorded.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, Method, Uri};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::TARGET;

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C vendor trace state header.
pub const TRACESTATE: &str = "tracestate";

/// A trace id for the access and audit lines; all zeros is none. Bytes,
/// not a `u128`: every request's future holds one, and a 16-byte
/// alignment would pad the whole future.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceId([u8; 16]);

impl TraceId {
    /// The id of `context`'s span, if valid.
    fn of(context: &opentelemetry::trace::SpanContext) -> Self {
        Self(context.trace_id().to_bytes())
    }

    fn is_none(self) -> bool {
        self.0 == [0; 16]
    }

    /// For a log field: omitted when there is none.
    pub fn field(self) -> Option<tracing::field::DisplayValue<opentelemetry::trace::TraceId>> {
        (!self.is_none())
            .then(|| tracing::field::display(opentelemetry::trace::TraceId::from_bytes(self.0)))
    }
}

/// What a request carries for tracing: its SERVER span and the trace id
/// its lines carry. Shared (one pointer in every request's future, and
/// in the wrapper that enters the span), and absent when there is
/// neither: without export and without a client `traceparent` a request
/// allocates nothing for it.
#[derive(Debug)]
pub struct Traced {
    /// The SERVER span (disabled without export).
    pub span: Span,
    /// This span's trace id when it is sampled, else the client's.
    pub trace_id: TraceId,
}

/// Opens the SERVER span of a request with `method` on `path` (no query),
/// under the client's trace context when `headers` carry one. Also gives
/// the trace id the request's lines carry: this span's when it is sampled,
/// else the client's (if it sent one).
pub fn server(method: &Method, path: &str, headers: &HeaderMap) -> Option<Arc<Traced>> {
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method.as_str(),
        url.path = path,
        http.route = Empty,
        http.response.status_code = Empty,
        gateway.client = Empty,
        gateway.cache_status = Empty,
        gateway.organization = Empty,
    );
    let mut trace = TraceId::default();
    if !span.is_disabled() {
        // Before the span starts: its parent is fixed then.
        let _ = span.set_parent(extract(headers));
        let cx = span.context();
        let own = cx.span().span_context().clone();
        if own.is_sampled() {
            trace = TraceId::of(&own);
        }
    }
    if trace.is_none() && headers.contains_key(TRACEPARENT) {
        let cx = extract(headers);
        let theirs = cx.span().span_context().clone();
        if theirs.is_valid() {
            trace = TraceId::of(&theirs);
        }
    }
    (!span.is_disabled() || !trace.is_none()).then(|| {
        Arc::new(Traced {
            span,
            trace_id: trace,
        })
    })
}

pin_project_lite::pin_project! {
    /// `fut`, polled inside the request's SERVER span.
    pub struct InSpan<F> {
        traced: Arc<Traced>,
        #[pin]
        fut: F,
    }
}

impl<F> InSpan<F> {
    /// `fut` in `traced`'s span.
    pub fn new(traced: Arc<Traced>, fut: F) -> Self {
        Self { traced, fut }
    }
}

impl<F: Future> Future for InSpan<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = this.traced.span.enter();
        this.fut.poll(cx)
    }
}

/// Records what a request's account learned on its SERVER span. 5xx
/// answers mark the span as an error.
pub fn finished(
    traced: Option<&Traced>,
    method: &str,
    route: &str,
    status: u16,
    client: &str,
    cache: &str,
    org: &str,
) {
    let Some(span) = traced.map(|t| &t.span).filter(|s| !s.is_disabled()) else {
        return;
    };
    // Started already (for the trace id): the name is set on the span
    // itself, as `otel.name` only names a span not yet started.
    span.context()
        .span()
        .update_name(format!("{method} {route}"));
    span.record("http.route", route);
    span.record("http.response.status_code", status);
    span.record("gateway.client", client);
    span.record("gateway.cache_status", cache);
    span.record("gateway.organization", org);
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
}

/// Opens the CLIENT span of an upstream exchange (under the current span)
/// and puts its `traceparent` (and the trace's `tracestate`) in `headers`,
/// replacing whatever the client sent. Without export the span is
/// disabled and `headers` are left as they are (a client's
/// `traceparent` is passed on as before).
pub fn upstream(method: &Method, uri: &Uri, headers: &mut HeaderMap) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "upstream",
        otel.name = method.as_str(),
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = method.as_str(),
        server.address = uri.host().unwrap_or(""),
        url.path = uri.path(),
        http.response.status_code = Empty,
        "error.type" = Empty,
    );
    if !span.is_disabled() {
        let cx = span.context();
        if cx.span().span_context().is_valid() {
            headers.remove(TRACEPARENT);
            headers.remove(TRACESTATE);
            TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
            if headers.get(TRACESTATE).is_some_and(|v| v.is_empty()) {
                headers.remove(TRACESTATE);
            }
        }
    }
    span
}

/// Records an upstream exchange's answer (`Ok(status)`) or failure
/// (`Err(kind)`: `timeout`, `unavailable`, ...) on its CLIENT span.
pub fn answered(span: &Span, outcome: Result<u16, &'static str>) {
    if span.is_disabled() {
        return;
    }
    match outcome {
        Ok(status) => {
            span.record("http.response.status_code", status);
            if status >= 400 {
                span.record("error.type", status);
                span.record("otel.status_code", "error");
            }
        }
        Err(kind) => {
            span.record("error.type", kind);
            span.record("otel.status_code", "error");
        }
    }
}

/// When the current span is exported: the start of a wait to report with
/// [`waited`]. `None` costs nothing.
pub fn wait_starts() -> Option<Instant> {
    (!Span::current().is_disabled()).then(Instant::now)
}

/// An event on the current span: the request waited `what` since `start`
/// (`rate_limit`, `single_flight`).
pub fn waited(what: &'static str, start: Option<Instant>) {
    if let Some(start) = start {
        let waited_us = start.elapsed().as_micros() as u64;
        tracing::event!(target: TARGET, tracing::Level::INFO, gateway.wait = what, gateway.waited_us = waited_us, "wait");
    }
}

/// `fut`, reported as a wait (`what`) on the current span when it ends.
pub async fn timed<F: Future>(what: &'static str, fut: F) -> F::Output {
    let waiting = wait_starts();
    let out = fut.await;
    waited(what, waiting);
    out
}

/// An event on the current span: the request was answered from an
/// expired entry (`reason`: `stale_while_revalidate`, `stale_if_error`).
pub fn stale_answer(reason: &'static str) {
    tracing::event!(target: TARGET, tracing::Level::INFO, gateway.stale = reason, "stale_answer");
}

/// The client's trace context from `headers` (empty when none).
fn extract(headers: &HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}
