//! The bus's outbox: evictions waiting to reach the other replicas.
//!
//! A write evicts here at once and queues the eviction; one task per bus
//! ([`super::Bus`]) publishes the queue in order, and a publish that fails
//! or times out stays at the head and is retried with backoff until it goes
//! through. Nothing is lost while it still matters:
//! - a later eviction of the same id replaces a queued one (the later one
//!   is sent after both writes, which is what the other replicas need);
//! - an evict-all replaces everything queued before it, and an
//!   organization's evict-all everything of that organization;
//! - the queue is bounded ([`CAPACITY`]): when it is full it collapses to
//!   one evict-all, which covers every eviction it replaces;
//! - an eviction still unsent after its lifetime (the cache TTL, the stale
//!   windows and the upstream timeout: every copy it would evict has
//!   expired by then) is dropped and counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::metrics::{DropReason, Metrics};

/// Most evictions queued at once; past it the queue collapses to one
/// evict-all.
pub const CAPACITY: usize = 4096;

/// One eviction to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Item {
    /// One user of an organization (by name) was evicted: (org, id).
    User(String, String),
    /// Everything of one organization (by name) was evicted.
    Org(String),
    /// Everything of every organization was evicted.
    All,
}

impl Item {
    /// True when evicting everything of `org` covers this item.
    fn in_org(&self, org: &str) -> bool {
        match self {
            Item::User(o, _) | Item::Org(o) => o == org,
            Item::All => false,
        }
    }
}

/// An eviction and when it was made.
#[derive(Debug, Clone)]
pub(super) struct Queued {
    /// What was evicted.
    pub(super) item: Item,
    /// When (its lifetime counts from here).
    pub(super) since: Instant,
    /// Wall-clock microseconds at the eviction, sent for the delay metric.
    pub(super) since_us: u64,
}

/// The queue and what is being sent.
#[derive(Debug, Default)]
struct State {
    /// Waiting, oldest first.
    queue: VecDeque<Queued>,
    /// The head, taken by the sender and not yet delivered.
    in_flight: Option<Item>,
    /// A later eviction made the one in flight unnecessary: not put back
    /// if it fails.
    superseded: bool,
}

impl State {
    fn waiting(&self) -> usize {
        self.queue.len() + usize::from(self.in_flight.is_some())
    }
}

/// The outbox shared by a bus's handles and its sender task.
#[derive(Debug)]
pub(super) struct Outbox {
    /// The queue.
    state: Mutex<State>,
    /// Wakes the sender when something is queued.
    wake: Notify,
    /// The number waiting (queued or in flight), for [`Outbox::flushed`].
    waiting: watch::Sender<usize>,
    /// How long an unsent eviction still matters, in milliseconds.
    lifetime_ms: AtomicU64,
    /// The outbox gauge and drop counter.
    metrics: Arc<Metrics>,
}

impl Outbox {
    /// An empty outbox whose evictions matter for `lifetime`.
    pub(super) fn new(lifetime: Duration, metrics: Arc<Metrics>) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            waiting: watch::Sender::new(0),
            lifetime_ms: AtomicU64::new(lifetime.as_millis() as u64),
            metrics,
        }
    }

    /// Sets how long an unsent eviction still matters (on reload).
    pub(super) fn set_lifetime(&self, lifetime: Duration) {
        self.lifetime_ms
            .store(lifetime.as_millis() as u64, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a queue that is still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item`, made at `since_us` (wall clock). Never waits.
    pub(super) fn push(&self, item: Item, since_us: u64) {
        let mut s = self.lock();
        match &item {
            Item::All => {
                s.queue.clear();
                s.superseded = s.in_flight.is_some();
            }
            Item::User(..) => {
                s.queue.retain(|q| q.item != item);
                if s.in_flight.as_ref() == Some(&item) {
                    s.superseded = true;
                }
            }
            Item::Org(org) => {
                s.queue.retain(|q| !q.item.in_org(org));
                if s.in_flight.as_ref().is_some_and(|i| i.in_org(org)) {
                    s.superseded = true;
                }
            }
        }
        let mut item = item;
        if s.queue.len() >= CAPACITY {
            // Full: one evict-all covers everything queued.
            self.metrics
                .invalidations_dropped(DropReason::Collapsed, s.queue.len());
            tracing::warn!(
                queued = s.queue.len(),
                "invalidation outbox full; replacing it with one evict-all"
            );
            s.queue.clear();
            s.superseded = s.in_flight.is_some();
            item = Item::All;
        }
        s.queue.push_back(Queued {
            item,
            since: Instant::now(),
            since_us,
        });
        self.publish_count(&s);
        drop(s);
        self.wake.notify_one();
    }

    /// Takes the next eviction to send, dropping the expired ones first;
    /// waits until there is one.
    pub(super) async fn next(&self) -> Queued {
        loop {
            if let Some(q) = self.take() {
                return q;
            }
            self.wake.notified().await;
        }
    }

    fn take(&self) -> Option<Queued> {
        let lifetime = Duration::from_millis(self.lifetime_ms.load(Ordering::Relaxed));
        let mut s = self.lock();
        let before = s.queue.len();
        s.queue.retain(|q| q.since.elapsed() < lifetime);
        let expired = before - s.queue.len();
        if expired > 0 {
            self.metrics
                .invalidations_dropped(DropReason::Expired, expired);
            tracing::warn!(
                expired,
                "invalidations never published and no longer needed (every copy they evict has expired)"
            );
        }
        let q = s.queue.pop_front();
        s.in_flight = q.as_ref().map(|q| q.item.clone());
        s.superseded = false;
        self.publish_count(&s);
        q
    }

    /// The eviction taken by [`Outbox::next`] was delivered.
    pub(super) fn delivered(&self) {
        let mut s = self.lock();
        s.in_flight = None;
        self.publish_count(&s);
    }

    /// The eviction taken by [`Outbox::next`] was not delivered: it goes
    /// back to the head unless a later eviction replaced it meanwhile.
    pub(super) fn failed(&self, q: Queued) {
        let mut s = self.lock();
        s.in_flight = None;
        if !s.superseded {
            s.queue.push_front(q);
        }
        self.publish_count(&s);
    }

    fn publish_count(&self, s: &State) {
        let n = s.waiting();
        self.metrics.invalidation_outbox(n);
        self.waiting.send_replace(n);
    }

    /// Evictions queued or being sent.
    pub(super) fn waiting(&self) -> usize {
        *self.waiting.borrow()
    }

    /// Resolves once nothing is waiting.
    pub(super) async fn flushed(&self) {
        let mut rx = self.waiting.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox() -> Outbox {
        Outbox::new(Duration::from_secs(60), Arc::new(Metrics::new()))
    }

    fn items(o: &Outbox) -> Vec<Item> {
        o.lock().queue.iter().map(|q| q.item.clone()).collect()
    }

    fn user(id: &str) -> Item {
        Item::User("default".into(), id.into())
    }

    #[test]
    fn an_organizations_evict_all_replaces_only_its_own_evictions() {
        let o = outbox();
        o.push(user("a"), 0);
        o.push(Item::User("r".into(), "a".into()), 0);
        o.push(Item::Org("r".into()), 0);
        assert_eq!(items(&o), vec![user("a"), Item::Org("r".into())]);
    }

    #[test]
    fn a_later_eviction_of_an_id_replaces_the_queued_one_and_keeps_the_order() {
        let o = outbox();
        for id in ["a", "b", "a", "c"] {
            o.push(user(id), 0);
        }
        assert_eq!(items(&o), vec![user("b"), user("a"), user("c")]);
        o.push(Item::All, 0);
        o.push(user("d"), 0);
        assert_eq!(items(&o), vec![Item::All, user("d")]);
        assert_eq!(o.waiting(), 2);
    }

    #[test]
    fn a_failed_send_goes_back_to_the_head_unless_replaced_meanwhile() {
        let o = outbox();
        o.push(user("a"), 0);
        o.push(user("b"), 0);
        let a = o.take().expect("a");
        assert_eq!(o.waiting(), 2, "in flight counts");
        o.failed(a);
        assert_eq!(items(&o), vec![user("a"), user("b")]);

        let a = o.take().expect("a");
        o.push(user("a"), 0);
        o.failed(a);
        assert_eq!(items(&o), vec![user("b"), user("a")], "sent once, later");

        let b = o.take().expect("b");
        o.push(Item::All, 0);
        o.failed(b);
        assert_eq!(items(&o), vec![Item::All]);
        let all = o.take().expect("all");
        assert_eq!(all.item, Item::All);
        o.delivered();
        assert_eq!(o.waiting(), 0);
    }

    #[test]
    fn a_full_outbox_collapses_to_one_evict_all() {
        let o = outbox();
        for i in 0..CAPACITY {
            o.push(user(&i.to_string()), 0);
        }
        assert_eq!(o.waiting(), CAPACITY);
        o.push(user("one more"), 0);
        assert_eq!(items(&o), vec![Item::All]);
    }

    #[test]
    fn evictions_past_their_lifetime_are_dropped() {
        let o = Outbox::new(Duration::ZERO, Arc::new(Metrics::new()));
        o.push(user("a"), 0);
        assert!(o.take().is_none());
        assert_eq!(o.waiting(), 0);
    }
}
