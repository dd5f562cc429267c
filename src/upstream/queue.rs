//! The global cap on concurrent upstream requests and its bounded wait
//! queue: a request takes a slot at once, or a [`QueuePlace`] while it waits
//! for one, or is refused (503 `upstream_overloaded`).
//!
//! Both are guards. The slot is a [`Slot`] that the response body keeps
//! until it ends; the queue place is given back by its `Drop`, so a request
//! cancelled while it waits (the client reset the stream or hung up, and
//! hyper dropped the request future at the `.await`) gives its place back
//! too. Counting the queue down after the `.await` instead leaked one place
//! per cancelled waiter until the queue read full for good (see
//! `docs/ledger.md`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::slot::Slot;
use crate::error::{GatewayError, Result};
use crate::metrics::Metrics;

/// The concurrency slots and the requests waiting for one.
pub(super) struct Slots {
    /// One permit per request allowed at the upstream at once.
    permits: Arc<Semaphore>,
    /// Requests waiting for a permit now (one per live [`QueuePlace`]).
    queued: AtomicUsize,
    /// Most requests allowed to wait.
    max_queued: usize,
    /// `gateway_upstream_in_flight` and `gateway_upstream_queued`.
    metrics: Arc<Metrics>,
}

impl Slots {
    /// `max_concurrent` slots and room for `max_queued` waiters.
    pub(super) fn new(max_concurrent: usize, max_queued: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_concurrent)),
            queued: AtomicUsize::new(0),
            max_queued,
            metrics,
        }
    }

    /// A slot now, or after waiting in the queue until `deadline` (else
    /// `timeout` from now). A full queue, or no slot by the deadline, is
    /// [`GatewayError::UpstreamOverloaded`].
    pub(super) async fn acquire(
        &self,
        deadline: Option<tokio::time::Instant>,
        timeout: Duration,
    ) -> Result<Slot> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Ok(Slot::new(p, self.metrics.clone()));
        }
        let place = self.enqueue().ok_or(GatewayError::UpstreamOverloaded)?;
        let deadline = deadline.unwrap_or_else(|| tokio::time::Instant::now() + timeout);
        let waited = tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned()).await;
        drop(place);
        match waited {
            Ok(Ok(p)) => Ok(Slot::new(p, self.metrics.clone())),
            _ => Err(GatewayError::UpstreamOverloaded),
        }
    }

    /// Requests waiting for a slot now (what `gateway_upstream_queued`
    /// shows).
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// A place in the queue, or `None` when it is full.
    fn enqueue(&self) -> Option<QueuePlace<'_>> {
        // Taken and, when over the bound, given back with no `.await`
        // between: nothing can cancel this.
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.metrics.upstream_queued(1);
        Some(QueuePlace { slots: self })
    }
}

/// One request's place in the queue for a slot, given back when dropped:
/// when the wait ends, and when the waiting request is cancelled.
pub(super) struct QueuePlace<'a> {
    /// The queue it counts in.
    slots: &'a Slots,
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.slots.queued.fetch_sub(1, Ordering::AcqRel);
        self.slots.metrics.upstream_queued(-1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    /// Polls `fut` once; it must still be waiting.
    fn poll_pending<F: Future>(fut: std::pin::Pin<&mut F>) {
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(fut.poll(&mut cx), Poll::Pending), "did not wait");
    }

    #[tokio::test]
    async fn a_cancelled_waiter_gives_its_queue_place_back() {
        let metrics = Arc::new(Metrics::new());
        let slots = Slots::new(1, 2, metrics.clone());
        let held = slots.acquire(None, Duration::from_secs(60)).await;
        assert!(held.is_ok(), "the one slot");
        // More cancelled waiters than the queue holds: each leaked place
        // would leave the queue full for good.
        for _ in 0..5 {
            let mut waiter = pin!(slots.acquire(None, Duration::from_secs(60)));
            poll_pending(waiter.as_mut());
            assert_eq!(slots.queued(), 1, "the waiter holds a place");
        }
        assert_eq!(slots.queued(), 0, "dropped waiters gave their places back");
        let text = metrics.encode(0);
        let gauge = text
            .lines()
            .find(|l| l.starts_with("gateway_upstream_queued "));
        assert_eq!(gauge, Some("gateway_upstream_queued 0"), "{text}");
        // The queue still admits a waiter, which gets the slot once freed.
        let mut waiter = pin!(slots.acquire(None, Duration::from_secs(60)));
        poll_pending(waiter.as_mut());
        drop(held);
        assert!(waiter.await.is_ok(), "the waiter got the freed slot");
        assert_eq!(slots.queued(), 0);
        let text = metrics.encode(0);
        for idle in ["gateway_upstream_queued 0", "gateway_upstream_in_flight 0"] {
            assert!(text.lines().any(|l| l == idle), "{idle}:\n{text}");
        }
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_counts_nothing() {
        let metrics = Arc::new(Metrics::new());
        let slots = Slots::new(1, 0, metrics.clone());
        let held = slots.acquire(None, Duration::from_secs(60)).await;
        let refused = slots.acquire(None, Duration::from_secs(60)).await;
        assert!(matches!(refused, Err(GatewayError::UpstreamOverloaded)));
        assert_eq!(slots.queued(), 0);
        drop(held);
        let text = metrics.encode(0);
        for idle in ["gateway_upstream_queued 0", "gateway_upstream_in_flight 0"] {
            assert!(text.lines().any(|l| l == idle), "{idle}:\n{text}");
        }
    }
}
