//! Taking a turn: at once when nobody waits and the budget has one, else
//! in a [`Place`] in the client's queue until the driver hands it a turn,
//! at most `budget_wait_ms` and never past the request's own deadline. A
//! request that gets no turn in time is refused (429
//! `organization_budget_exceeded`) and never reaches the upstream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::fair::Waiter;
use super::{driver, Budget, Inner, State};
use crate::cluster::BudgetReply;
use crate::error::{GatewayError, Result};
use crate::metrics::ClientLabel;

/// A request's place in its client's queue for a turn, given back when
/// dropped: when the wait ends, and when the waiting request is cancelled
/// (its client hung up). Without it a cancelled waiter would stay queued
/// and be handed a turn nobody uses.
#[derive(Debug)]
pub struct Place {
    /// The budget it waits in.
    inner: Arc<Inner>,
    /// Whose queue.
    client: ClientLabel,
    /// Which waiter of that queue.
    id: u64,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.inner.lock().fair.remove(&self.client, self.id);
        self.inner.metrics.budget_queued(-1);
    }
}

impl Budget {
    /// Takes a turn for a request of `client`'s (`weight` turns per round)
    /// that must be sent by `deadline` (a fill's; `None`: no deadline of
    /// its own): the time it waited, or [`GatewayError::BudgetExceeded`]
    /// with when to retry.
    pub async fn turn(
        &self,
        client: &ClientLabel,
        weight: u32,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Duration> {
        let inner = &self.inner;
        let start = Instant::now();
        let wait = inner.lock().wait;
        let give_up = deadline.map_or(start + wait, |d| d.into_std().min(start + wait));
        let earliest = match self.at_once(start).await {
            Ok(remaining) => {
                inner.metrics.budget_turn(Duration::ZERO, remaining);
                return Ok(Duration::ZERO);
            }
            Err(at) => at,
        };
        if earliest > give_up {
            // No turn can come in time: refused now rather than after waiting.
            super::wait::record(start.elapsed());
            return Err(self.refuse(client, start, earliest));
        }
        let (place, mut rx) = self.enqueue(client, weight);
        let got = tokio::time::timeout_at(give_up.into(), &mut rx).await;
        // Out of the queue first: a turn the driver handed over before that is in `rx`,
        // and none can come after it.
        drop(place);
        let got = matches!(got, Ok(Ok(()))) || rx.try_recv().is_ok();
        super::wait::record(start.elapsed());
        if got {
            let waited = start.elapsed();
            inner.metrics.budget_turn(waited, None);
            return Ok(waited);
        }
        let now = Instant::now();
        let next = {
            let st = inner.lock();
            inner.next_turn(&st, now)
        };
        Err(self.refuse(client, start, next))
    }

    /// A turn now (`Ok`, with the turns left when limited), or the earliest
    /// time one may come. Nobody may take one at once while others wait.
    async fn at_once(&self, now: Instant) -> std::result::Result<Option<u32>, Instant> {
        let inner = &self.inner;
        let limit = {
            let mut st = inner.lock();
            if !st.fair.is_empty() {
                return Err(inner.next_turn(&st, now));
            }
            if let Some(p) = st.pause_left(now) {
                return Err(p);
            }
            if inner.cluster.get().is_none() {
                let limit = st.limit;
                return st.take_local(now, limit);
            }
            st.limit
        };
        let Some(c) = inner.cluster.get() else {
            return Ok(None);
        };
        // Boxed: a Redis round trip's future is large.
        let reply = Box::pin(c.store.take(&inner.org, limit)).await;
        let now = Instant::now();
        let mut st = inner.lock();
        match reply {
            Some(BudgetReply::Allowed { remaining }) => Ok(limit.map(|_| remaining)),
            Some(BudgetReply::Limited { wait }) => Err(now + wait),
            Some(BudgetReply::Paused { left }) => {
                st.paused_elsewhere(now, left);
                Err(now + left)
            }
            None => st.take_local(now, inner.local_limit(limit)),
        }
    }

    /// Queues the request in `client`'s queue, starting the driver if none
    /// runs.
    fn enqueue(&self, client: &ClientLabel, weight: u32) -> (Place, oneshot::Receiver<()>) {
        let inner = &self.inner;
        let (tx, rx) = oneshot::channel();
        let mut st = inner.lock();
        st.next_id += 1;
        let id = st.next_id;
        st.fair.push(client, weight, Waiter { id, tx });
        let start = st.driver.is_none().then(|| {
            st.next_id += 1;
            st.driver = Some(st.next_id);
            st.next_id
        });
        drop(st);
        inner.metrics.budget_queued(1);
        let place = Place {
            inner: inner.clone(),
            client: client.clone(),
            id,
        };
        if let Some(number) = start {
            driver::start(inner.clone(), number);
        }
        (place, rx)
    }

    /// Counts and builds a refusal: a turn is expected at `next`.
    fn refuse(&self, client: &ClientLabel, start: Instant, next: Instant) -> GatewayError {
        let now = Instant::now();
        self.inner.metrics.budget_refused(client, now - start);
        GatewayError::BudgetExceeded {
            retry_after: next
                .saturating_duration_since(now)
                .max(Duration::from_millis(1)),
        }
    }
}

impl Inner {
    /// When the next turn is expected: the pause's end or the GCRA's next.
    pub(super) fn next_turn(&self, st: &State, now: Instant) -> Instant {
        let gcra = self
            .local_limit(st.limit)
            .map_or(now, |l| st.gcra.next_at(now, l));
        st.pause_left(now).map_or(gcra, |p| p.max(gcra))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateLimit;
    use crate::metrics::Metrics;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    fn budget(rpm: u32, burst: u32, wait_ms: u64) -> Budget {
        let limit = RateLimit {
            requests_per_minute: rpm,
            burst,
        };
        Budget::new(
            "default".into(),
            Some(limit),
            Duration::from_millis(wait_ms),
            Arc::new(Metrics::new()),
        )
    }

    #[tokio::test]
    async fn a_cancelled_waiter_gives_its_place_back() {
        let b = budget(60, 1, 5_000);
        let a = ClientLabel::new("a");
        assert_eq!(b.turn(&a, 1, None).await.ok(), Some(Duration::ZERO));
        for _ in 0..5 {
            let mut waiter = pin!(b.turn(&a, 1, None));
            let mut cx = Context::from_waker(Waker::noop());
            assert!(matches!(waiter.as_mut().poll(&mut cx), Poll::Pending));
            assert_eq!(b.waiting(), 1, "the waiter holds a place");
        }
        assert_eq!(b.waiting(), 0, "dropped waiters gave their places back");
        let text = b.inner.metrics.encode(0);
        assert!(
            text.lines().any(|l| l == "gateway_budget_queued 0"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn no_turn_in_time_is_refused_with_when_to_retry() {
        let b = budget(60, 1, 50);
        let a = ClientLabel::new("a");
        assert!(b.turn(&a, 1, None).await.is_ok());
        match b.turn(&a, 1, None).await {
            Err(GatewayError::BudgetExceeded { retry_after }) => {
                assert!(retry_after > Duration::from_millis(500), "{retry_after:?}");
                assert!(retry_after <= Duration::from_secs(1), "{retry_after:?}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        b.pause(Duration::from_secs(3));
        match b.turn(&a, 1, None).await {
            Err(GatewayError::BudgetExceeded { retry_after }) => {
                assert!(
                    retry_after > Duration::from_secs(2),
                    "the pause's time left"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(b.waiting(), 0);
    }
}
