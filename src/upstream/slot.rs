//! The upstream concurrency slot, held by a response until its body is
//! done or dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use crate::body::BoxError;
use crate::metrics::{Metrics, TimeoutPhase};

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
        metrics.upstream_in_flight(1);
        Self {
            _permit: permit,
            metrics,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.upstream_in_flight(-1);
    }
}

/// The upstream's body sent nothing for `upstream.body_idle_timeout_ms`.
#[derive(Debug, thiserror::Error)]
#[error("upstream body idle for longer than body_idle_timeout_ms")]
pub struct BodyIdle;

/// An upstream response body that keeps its [`Slot`] until it ends, and is
/// cut when it sends nothing for its idle timeout.
pub(super) struct SlotBody {
    /// The upstream body.
    inner: hyper::body::Incoming,
    /// Released when the body is dropped.
    slot: Slot,
    /// Longest wait for the next frame.
    idle: Duration,
    /// The idle timer, made on the first wait and re-armed after each frame.
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer runs for the current wait.
    armed: bool,
    /// The body ended (or was cut).
    done: bool,
}

impl SlotBody {
    /// `inner`, holding `slot`, cut after `idle` without a frame.
    pub(super) fn new(inner: hyper::body::Incoming, slot: Slot, idle: Duration) -> Self {
        Self {
            inner,
            slot,
            idle,
            timer: None,
            armed: false,
            done: false,
        }
    }
}

impl Body for SlotBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                if frame.is_none() {
                    this.done = true;
                }
                Poll::Ready(frame.map(|f| f.map_err(|e| Box::new(e) as BoxError)))
            }
            Poll::Pending => {
                let deadline = Instant::now() + this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.armed {
                    timer.as_mut().reset(deadline);
                    this.armed = true;
                }
                if timer.as_mut().poll(cx).is_ready() {
                    this.done = true;
                    this.slot.metrics.upstream_timeout(TimeoutPhase::Body);
                    return Poll::Ready(Some(Err(Box::new(BodyIdle))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
