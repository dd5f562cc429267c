//! The organization's budget: one ceiling on everything the gateway sends
//! upstream for an organization (fills, refreshes, forwards, writes; all
//! clients and, with `[redis]`, all replicas), fair turns while it is
//! empty, and a pause after an upstream 429.
//!
//! - [`Budgets`]: one [`Budget`] per organization, by name (`default` from
//!   `[upstream]`, the others from `[[orgs]]`), changed on reload.
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
//! [`recording`], [`waited`].

mod driver;
mod fair;
mod gcra;
mod pause;
mod turn;
mod wait;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::cluster::{Bus, SharedBudget};
use crate::config::defaults::DEFAULT_ORG;
use crate::config::{OrgConfig, RateLimit, UpstreamConfig};
use crate::metrics::Metrics;

pub use pause::{pause_for, DEFAULT_PAUSE, MAX_PAUSE};
pub use turn::Place;
pub use wait::{recording, waited};

/// Every organization's budget, by name. Reloads add and remove
/// organizations; a budget that stays keeps its state and its waiters.
#[derive(Debug)]
pub struct Budgets {
    /// Each organization's budget (replaced whole on reload).
    by_org: ArcSwap<HashMap<Arc<str>, Budget>>,
    /// `gateway_budget_*`, for budgets made on reload.
    metrics: Arc<Metrics>,
    /// Where budgets are shared, once `[redis]`'s bus has started (budgets
    /// made later are shared too).
    cluster: OnceLock<(Arc<SharedBudget>, Bus)>,
}

impl Budgets {
    /// The default organization's budget from `cfg` (`[upstream]`); the
    /// `[[orgs]]`' come with [`apply`](Self::apply).
    pub fn new(cfg: &UpstreamConfig, metrics: Arc<Metrics>) -> Self {
        let org: Arc<str> = DEFAULT_ORG.into();
        let budget = Budget::new(
            org.clone(),
            cfg.rate_limit,
            cfg.budget_wait,
            metrics.clone(),
        );
        Self {
            by_org: ArcSwap::from_pointee(HashMap::from([(org, budget)])),
            metrics,
            cluster: OnceLock::new(),
        }
    }

    /// Organization `org`'s budget (by name).
    pub fn get(&self, org: &str) -> Option<Budget> {
        self.by_org.load().get(org).cloned()
    }

    /// Applies the organizations of a (re)loaded config: `[upstream]`'s
    /// `rate_limit` for the default, each `[[orgs]]`' own. A budget whose
    /// limit did not change keeps its state; requests waiting keep their
    /// places either way; an organization no longer configured loses its
    /// budget (its waiters finish on the one they hold).
    pub fn apply(&self, upstream: &UpstreamConfig, orgs: &[OrgConfig]) {
        let wait = upstream.budget_wait;
        let current = self.by_org.load();
        let wanted = std::iter::once((DEFAULT_ORG, upstream.rate_limit))
            .chain(orgs.iter().map(|o| (o.name.as_str(), o.rate_limit)));
        let mut next = HashMap::new();
        for (name, limit) in wanted {
            let budget = match current.get(name) {
                Some(b) => {
                    b.apply(limit, wait);
                    b.clone()
                }
                None => {
                    let b = Budget::new(name.into(), limit, wait, self.metrics.clone());
                    if let Some((store, bus)) = self.cluster.get() {
                        b.share(store.clone(), bus.clone());
                    }
                    b
                }
            };
            next.insert(Arc::<str>::from(name), budget);
        }
        self.by_org.store(Arc::new(next));
    }

    /// Shares every budget through `store` with the replicas `bus` counts
    /// (`[redis]`), and every budget made later. Called once, when the bus
    /// has started.
    pub fn share(&self, store: Arc<SharedBudget>, bus: Bus) {
        let _ = self.cluster.set((store.clone(), bus.clone()));
        for b in self.by_org.load().values() {
            b.share(store.clone(), bus.clone());
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

    /// Shares this budget through `store` (a second call changes nothing).
    fn share(&self, store: Arc<SharedBudget>, bus: Bus) {
        let _ = self.inner.cluster.set(Cluster { store, bus });
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
    /// Takes a turn from the local GCRA under `limit` (none: always):
    /// the turns left, or when the next one comes.
    fn take_local(
        &mut self,
        now: Instant,
        limit: Option<RateLimit>,
    ) -> std::result::Result<Option<u32>, Instant> {
        match limit {
            None => Ok(None),
            Some(l) => self.gcra.take(now, l).map(Some),
        }
    }

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
