//! The upstream concurrency slot, held by a response until its body is
//! done or dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use crate::body::BoxError;
use crate::metrics::Metrics;

/// Holds a concurrency slot until the response body is done or dropped.
pub(super) struct Slot {
    /// The concurrency permit.
    _permit: OwnedSemaphorePermit,
    /// Holds `gateway_upstream_in_flight` up while the slot lives.
    metrics: Arc<Metrics>,
}

impl Slot {
    /// Takes `permit` and counts it in flight.
    pub(super) fn new(permit: OwnedSemaphorePermit, metrics: Arc<Metrics>) -> Self {
        metrics.upstream_in_flight().inc();
        Self {
            _permit: permit,
            metrics,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.upstream_in_flight().dec();
    }
}

/// An upstream response body that keeps its [`Slot`] until it ends.
pub(super) struct SlotBody {
    /// The upstream body.
    inner: hyper::body::Incoming,
    /// Released when the body is dropped.
    _slot: Slot,
}

impl SlotBody {
    /// `inner`, holding `slot`.
    pub(super) fn new(inner: hyper::body::Incoming, slot: Slot) -> Self {
        Self { inner, _slot: slot }
    }
}

impl Body for SlotBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(|e| Box::new(e) as BoxError)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
