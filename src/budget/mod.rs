//! The organization's budget: one ceiling on everything the gateway sends
//! upstream for an organization (fills, refreshes, forwards, writes; all
//! clients and, with `[redis]`, all replicas), fair turns while it is
//! empty, and a pause after an upstream 429.
//!
//! - [`Budgets`]: one [`Budget`] per organization, by name (for now only
//!   [`DEFAULT_ORG`]), built from `[upstream]` and changed on reload.
//! - `gcra`: the local GCRA (and a replica's share while Redis is away).
//! - `fair`: a queue per waiting client and the round robin between them.
//! - `driver`: the one task per budget that hands turns to the waiting
//!   requests; it runs only while someone waits.
//! - `turn`: taking a turn (at once, or after waiting in a [`Place`],
//!   given back on drop), or being refused one.
//! - [`pause_for`]: how long an upstream 429 pauses the organization.
//! - `wait`: each request's wait for turns, for its access line
//!   ([`recording`], [`waited`]).
//!
//! Only [`crate::upstream::Upstream`]'s exchange takes turns, before its
//! concurrency slot: cache hits spend nothing, and nobody holds a slot
//! while waiting for a turn.
//!
//! Public surface: [`Budgets`], [`Budget`], [`Place`], [`pause_for`],
//! [`recording`], [`waited`], [`DEFAULT_ORG`].

mod driver;
mod fair;
mod gcra;
mod pause;
mod turn;
mod wait;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::cluster::{Bus, SharedBudget};
use crate::config::{RateLimit, UpstreamConfig};
use crate::metrics::Metrics;

pub use pause::{pause_for, DEFAULT_PAUSE, MAX_PAUSE};
pub use turn::Place;
pub use wait::{recording, waited};

/// The organization `[upstream]` configures.
pub const DEFAULT_ORG: &str = "default";

/// Every organization's budget, by name.
#[derive(Debug)]
pub struct Budgets {
    /// Each organization's budget.
    by_org: HashMap<Arc<str>, Budget>,
}

impl Budgets {
    /// The budgets `cfg` configures (the default organization's).
    pub fn new(cfg: &UpstreamConfig, metrics: Arc<Metrics>) -> Self {
        let org: Arc<str> = DEFAULT_ORG.into();
        let budget = Budget::new(org.clone(), cfg.rate_limit, cfg.budget_wait, metrics);
        Self {
            by_org: HashMap::from([(org, budget)]),
        }
    }

    /// Organization `org`'s budget.
    pub fn get(&self, org: &str) -> Option<&Budget> {
        self.by_org.get(org)
    }

    /// Applies a reloaded `[upstream]`: a budget whose limit did not change
    /// keeps its state; requests waiting keep their places either way.
    pub fn apply(&self, cfg: &UpstreamConfig) {
        if let Some(b) = self.get(DEFAULT_ORG) {
            b.apply(cfg.rate_limit, cfg.budget_wait);
        }
    }

    /// Shares every budget through `store` with the replicas `bus` counts
    /// (`[redis]`). Called once, when the bus has started.
    pub fn share(&self, store: Arc<SharedBudget>, bus: Bus) {
        for b in self.by_org.values() {
            let _ = b.inner.cluster.set(Cluster {
                store: store.clone(),
                bus: bus.clone(),
            });
        }
    }
}

/// One organization's budget. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Shared with its driver task and its waiters' places.
    inner: Arc<Inner>,
}

/// What a budget's callers, places and driver share.
#[derive(Debug)]
struct Inner {
    /// The organization's name (its key in Redis).
    org: Arc<str>,
    /// Everything that changes, under one short lock (never held across
    /// an `.await`).
    state: Mutex<State>,
    /// Wakes the driver early: a pause set, a reload.
    wake: Notify,
    /// `gateway_budget_*`.
    metrics: Arc<Metrics>,
    /// The shared store and the replica count, with `[redis]`.
    cluster: OnceLock<Cluster>,
}

/// Where a budget is shared with the other replicas.
#[derive(Debug)]
struct Cluster {
    /// Redis's budget and pause.
    store: Arc<SharedBudget>,
    /// Counts the live replicas (for this replica's share).
    bus: Bus,
}

/// A budget's changing state.
#[derive(Debug, Default)]
struct State {
    /// `upstream.rate_limit`; `None`: only pauses hold requests.
    limit: Option<RateLimit>,
    /// `upstream.budget_wait_ms`.
    wait: Duration,
    /// The local GCRA.
    gcra: gcra::Gcra,
    /// Nothing is sent until then (an upstream 429).
    paused_until: Option<Instant>,
    /// The requests waiting for a turn.
    fair: fair::Fair,
    /// The running driver's number, while one runs.
    driver: Option<u64>,
    /// Source of driver and waiter numbers.
    next_id: u64,
}

impl Budget {
    fn new(org: Arc<str>, limit: Option<RateLimit>, wait: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::new(Inner {
                org,
                state: Mutex::new(State {
                    limit,
                    wait,
                    ..State::default()
                }),
                wake: Notify::new(),
                metrics,
                cluster: OnceLock::new(),
            }),
        }
    }

    fn apply(&self, limit: Option<RateLimit>, wait: Duration) {
        let mut st = self.inner.lock();
        if st.limit != limit {
            st.limit = limit;
            st.gcra = gcra::Gcra::default();
        }
        st.wait = wait;
        drop(st);
        self.inner.wake.notify_one();
    }

    /// Pauses the organization for `pause` from now (an upstream 429): a
    /// pause is only ever extended. With `[redis]` every replica is told.
    pub fn pause(&self, pause: Duration) {
        let now = Instant::now();
        let until = now + pause;
        let mut st = self.inner.lock();
        let before = st.paused_until.filter(|p| *p > now).unwrap_or(now);
        if until > before {
            st.paused_until = Some(until);
            drop(st);
            self.inner.metrics.budget_paused(until - before);
            self.inner.wake.notify_one();
        } else {
            drop(st);
        }
        if let Some(c) = self.inner.cluster.get() {
            let (store, org) = (c.store.clone(), self.inner.org.clone());
            // Off the request's path: bounded by redis.timeout_ms.
            tokio::spawn(async move { store.pause(&org, pause).await });
        }
    }

    /// The time left of the pause, when the organization is paused.
    pub fn paused(&self) -> Option<Duration> {
        let now = Instant::now();
        let until = self.inner.lock().paused_until?;
        (until > now).then(|| until - now)
    }

    /// Requests waiting for a turn now.
    pub fn waiting(&self) -> usize {
        self.inner.lock().fair.len()
    }
}

impl Inner {
    /// The state. A panic while it was held cannot leave it half-changed
    /// in a way that matters more than refusing every request would.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The limit this replica enforces on its own: the whole of it, or
    /// with `[redis]` its share among the live replicas.
    fn local_limit(&self, limit: Option<RateLimit>) -> Option<RateLimit> {
        let limit = limit?;
        Some(match self.cluster.get() {
            Some(c) => gcra::share(limit, c.bus.live_replicas()),
            None => limit,
        })
    }
}

impl State {
    /// The time left of the pause at `now`.
    fn pause_left(&self, now: Instant) -> Option<Instant> {
        self.paused_until.filter(|p| *p > now)
    }

    /// Records a pause another replica set (no metric: this replica saw no
    /// 429).
    fn paused_elsewhere(&mut self, now: Instant, left: Duration) {
        let until = now + left;
        if self.paused_until.is_none_or(|p| p < until) {
            self.paused_until = Some(until);
        }
    }
}
