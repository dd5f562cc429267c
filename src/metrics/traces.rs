//! The trace exporter's own counters. The exporter is one per process (it
//! is built before any [`Metrics`](super::Metrics) and outlives them), so
//! its counts are process-wide and every registry shows the same ones.

use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// Batches the collector did not take (refused, unreachable, timed out).
static EXPORT_FAILURES: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Spans dropped because the export queue was full.
static SPANS_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Counts one failed export of a batch.
pub fn trace_export_failed() {
    EXPORT_FAILURES.inc();
}

/// Counts one span dropped at a full export queue.
pub fn trace_span_dropped() {
    SPANS_DROPPED.inc();
}

/// Registers both counters in `r`.
pub(super) fn register(r: &mut Registry) {
    r.register(
        "gateway_trace_export_failures",
        "Span batches the OTLP collector did not take (refused, unreachable or timed out)",
        EXPORT_FAILURES.clone(),
    );
    r.register(
        "gateway_trace_spans_dropped",
        "Spans dropped because the trace export queue was full",
        SPANS_DROPPED.clone(),
    );
}
