//! The request handler: [`Gateway`] is the hyper service for the public
//! listener.
//!
//! - `canon`: the path brought to one spelling before any policy, and the
//!   spellings that could name another resource refused.
//! - `route`: the pure classification of method + canonical path.
//! - `handle`: [`Gateway::handle`], which never fails, and the phases it
//!   runs: 1 route, 2 authenticate, 3 the client's rate limit and scope,
//!   4 serve (the cached route, a write then its eviction, or a forward).
//!   Errors become OpenAI-shaped responses.
//! - `evict`: the dependency table, which write evicts which cached users
//!   ([`RULES`]); `eviction` carries one write's row out (body `user_id`,
//!   generations before and after, the bus, unknown outcomes).
//! - `access`: the per-request account (metrics, in-flight gauge, access
//!   and audit lines), written once on every exit, cancellation included,
//!   and [`ConnectionAccount`], what a request tells the server's
//!   connection it came on (through a [`ConnectionRef`]).
//! - `unfinished`: the guard of a write's task, which evicts and audits a
//!   write dropped before it ended (shutdown).
//! - `org_evict`: what the invalidation bus does here, by organization
//!   name (a name not configured here evicts in every organization).
//!
//! Phase 2 also selects the organization (`OpenAI-Organization`, else the
//! client's first): the request then borrows the client's
//! [`crate::upstream::Caller`] for it, which every cache key, eviction and
//! upstream exchange of the request takes.
//!
//! Everything a request holds (its account, an upstream slot or queue
//! place, a single-flight fill, a write task) is a guard released on drop,
//! so hyper dropping the request future at any `.await` gives it all back:
//! `docs/ledger.md` lists each one, and `tests/cancellation.rs` checks it.
//!
//! Public surface: [`Gateway`], [`ConnectionAccount`], [`ConnectionRef`],
//! [`canonicalize`], [`classify`], [`Route`],
//! [`RouteClass`], [`user_id_of`], the dependency table ([`RULES`],
//! [`plan`]), and the pieces the benches and fuzzers
//! drive alone.

mod access;
mod canon;
mod evict;
mod eviction;
mod handle;
mod org_evict;
mod route;
mod unfinished;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::BoxBody;
use crate::cache::{Settings, UserCache, UserRoute};
use crate::cluster::{Bus, Evict, SharedBudget, SharedLimits};
use crate::config::Config;
use crate::headers::RequestIds;
use crate::metrics::Metrics;
use crate::org::{Org, Orgs};
use crate::per_thread::Handles;
use crate::policy::ClientTable;
use crate::upstream::Upstream;
use org_evict::OrgEvict;
pub use org_evict::UnknownOrg;

pub use access::{ConnectionAccount, ConnectionRef, CLIENT_CLOSED, SEND_TIMEOUT};
pub use canon::{canonicalize, decode_segment, user_id_of};
pub use evict::{is_write, plan, Evicts, Plan, Rule, RULES};
pub use route::{allowed_method, classify, strip_prefix, Route, RouteClass, MAX_USER_ID_LEN};

/// State shared by every request.
#[derive(Debug)]
struct Shared {
    /// Client-facing path prefix.
    prefix: String,
    /// Clients by key digest, with their limiters and scopes; replaced on
    /// reload.
    clients: ArcSwap<ClientTable>,
    /// The organizations; replaced on reload (shared with the bus, which
    /// evicts by organization name).
    orgs: Arc<ArcSwap<Orgs>>,
    /// The cached retrieve-user route (and the cache).
    users: UserRoute,
    /// The upstream client.
    upstream: Arc<Upstream>,
    /// Metrics registry.
    metrics: Arc<Metrics>,
    /// Per-thread handles to `metrics`, for each request's account.
    metrics_handles: Handles<Metrics>,
    /// Request id source for gateway-made responses.
    ids: RequestIds,
    /// Shared rate-limit budgets (`[redis]`), fixed for the process lifetime.
    shared_limits: Option<Arc<SharedLimits>>,
    /// The invalidation bus to the other replicas (`[redis]`).
    bus: Option<Bus>,
}

/// The public listener's service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// Everything requests share.
    shared: Arc<Shared>,
}

impl Gateway {
    /// Builds the gateway's shared state from a validated config.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> std::io::Result<Gateway> {
        let upstream = Arc::new(Upstream::new(&config.upstream, metrics.clone())?);
        // Every organization's budget (`[upstream]` made the default's).
        upstream.budgets().apply(&config.upstream, &config.orgs);
        let conn = match &config.redis {
            Some(r) => Some(crate::cluster::connect(r).map_err(std::io::Error::other)?),
            None => None,
        };
        let shared_limits = match (&config.redis, &conn) {
            (Some(r), Some(c)) => Some(SharedLimits::new(c.clone(), r, metrics.clone())),
            _ => None,
        };
        let orgs = Arc::new(ArcSwap::from_pointee(Orgs::build(config, None)));
        let clients =
            ClientTable::build(&config.clients, &orgs.load(), None, shared_limits.as_ref());
        let settings = Settings::from(&config.cache);
        let users = UserRoute::new(
            UserCache::with_idle(
                config.cache.max_entries,
                settings.ttl + settings.stale_window(),
            ),
            upstream.clone(),
            metrics.clone(),
            settings,
        );
        let bus = match (&config.redis, conn) {
            (Some(r), Some(c)) => {
                let evict: Arc<dyn Evict> = Arc::new(OrgEvict::new(users.clone(), orgs.clone()));
                let lifetime = eviction_lifetime(config);
                let store = SharedBudget::new(c.clone(), r, metrics.clone());
                let bus = Bus::start(r, c, metrics.clone(), evict, lifetime)
                    .map_err(std::io::Error::other)?;
                // The organization's budget is shared like the clients'
                // limits: one in Redis, this replica's share without it.
                upstream.budgets().share(store, bus.clone());
                Some(bus)
            }
            _ => None,
        };
        Ok(Gateway {
            shared: Arc::new(Shared {
                prefix: config.server.path_prefix.clone(),
                clients: ArcSwap::from_pointee(clients),
                orgs,
                users,
                upstream,
                metrics_handles: Handles::new(metrics.clone()),
                metrics,
                ids: RequestIds::new(),
                shared_limits,
                bus,
            }),
        })
    }

    /// Applies the reloadable parts of `config`: clients, keys, limits,
    /// scopes, cache TTL and body bound, the admin key, the organization's
    /// budget. The cache is kept.
    pub fn apply(&self, config: &Config) {
        let shared = &*self.shared;
        // Unchanged organizations are kept and take their new key here.
        let orgs = Orgs::build(config, Some(&shared.orgs.load()));
        let previous = shared.clients.load();
        let next = ClientTable::build(
            &config.clients,
            &orgs,
            Some(&previous),
            shared.shared_limits.as_ref(),
        );
        shared.clients.store(Arc::new(next));
        for gone in shared.orgs.load().dropped_by(&orgs) {
            // No caller names it any more: its entries become unreachable
            // now (moka drops them at their TTL).
            gone.retire_all();
        }
        shared.orgs.store(Arc::new(orgs));
        shared.users.set_settings(Settings::from(&config.cache));
        shared
            .upstream
            .budgets()
            .apply(&config.upstream, &config.orgs);
        if let Some(bus) = &shared.bus {
            bus.set_lifetime(eviction_lifetime(config));
        }
    }

    /// Waits up to `within` for the evictions queued for the other
    /// replicas to be published (shutdown); `false` if some are left.
    pub async fn flush_evictions(&self, within: std::time::Duration) -> bool {
        match &self.shared.bus {
            Some(bus) => bus.flush(within).await,
            None => true,
        }
    }

    /// The user cache (admin purges, the entry gauge).
    pub fn cache(&self) -> &UserCache {
        self.shared.users.cache()
    }

    /// The organization called `name`, as configured now.
    pub fn org(&self, name: &str) -> Option<Org> {
        self.shared.orgs.load().by_name(name).cloned()
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Evicts `id` here and on every replica (admin purge), in every
    /// organization or in the one named `org`.
    pub async fn purge(&self, org: Option<&str>, id: &str) -> Result<(), UnknownOrg> {
        for o in self.orgs_named(org)? {
            self.cache().invalidate(&o, id).await;
            self.published(&o, id).await;
        }
        self.shared
            .metrics
            .invalidation(crate::metrics::Invalidation::Purge, org.unwrap_or("*"));
        Ok(())
    }

    /// Evicts everything here and on every replica (admin purge-all), of
    /// every organization or of the one named `org`.
    pub async fn purge_all(&self, org: Option<&str>) -> Result<(), UnknownOrg> {
        match org {
            None => self.cache().invalidate_all(),
            Some(_) => {
                for org in self.orgs_named(org)? {
                    self.cache().invalidate_org(&org);
                }
            }
        }
        self.shared
            .metrics
            .invalidation(crate::metrics::Invalidation::PurgeAll, org.unwrap_or("*"));
        if let Some(bus) = &self.shared.bus {
            bus.all_evicted(org).await;
        }
        Ok(())
    }

    /// Every organization (`None`), or the one called `name`.
    fn orgs_named(&self, name: Option<&str>) -> Result<Vec<Org>, UnknownOrg> {
        let orgs = self.shared.orgs.load();
        match name {
            None => Ok(orgs.iter().cloned().collect()),
            Some(n) => orgs.by_name(n).cloned().map(|o| vec![o]).ok_or(UnknownOrg),
        }
    }

    /// Tells the other replicas that `id` was evicted here in `org`.
    async fn published(&self, org: &Org, id: &str) {
        if let Some(bus) = &self.shared.bus {
            bus.user_evicted(org.name(), id).await;
        }
    }

    /// Evicts `id` in `org` here and queues the news for the other
    /// replicas, without awaiting (a write dropped unfinished, from its
    /// guard). The entry is made unreachable at once; moka drops it at its
    /// TTL.
    fn evicted_now(&self, org: &Org, id: &str) {
        self.cache().forget(org, id);
        if let Some(bus) = &self.shared.bus {
            bus.user_evicted_now(org.name(), id);
        }
    }

    /// Every cached user of `org` evicted here and queued for every
    /// replica, without awaiting (for a guard's drop).
    fn org_evicted_now(&self, org: &Org) {
        self.cache().invalidate_org(org);
        if let Some(bus) = &self.shared.bus {
            bus.all_evicted_now(Some(org.name()));
        }
    }
}

/// How long an eviction not yet published to the other replicas still
/// matters: a copy stored elsewhere before it (or by a fill that raced it,
/// which ends within the upstream timeout) lives for the TTL, then may be
/// served for the stale windows.
fn eviction_lifetime(config: &Config) -> std::time::Duration {
    let c = &config.cache;
    c.ttl + c.stale_if_error + c.stale_while_revalidate + config.upstream.timeout
}

impl hyper::service::Service<Request<Incoming>> for Gateway {
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let gw = self.clone();
        Box::pin(crate::budget::recording(
            async move { Ok(gw.handle(req).await) },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without running it.
    fn future_size<A, F: FnOnce(A) -> Fut, Fut>(_: F) -> usize {
        std::mem::size_of::<Fut>()
    }

    #[tokio::test]
    async fn a_requests_future_stays_small() {
        // Every request's future is boxed and moved: the fetch, forward,
        // write and Redis paths are boxed so that a hit does not carry their
        // kilobytes (it was 6.6 KiB before they were). The per-request
        // account and the canonical path cost about 400 bytes of it, the
        // borrowed upstream::Caller 16 (it was 3,584 before).
        let cfg = Config::parse("", std::path::Path::new("."), &|n| {
            (n == "OPENAI_ADMIN_KEY").then(|| "sk-admin-x".to_string())
        })
        .expect("default config");
        let gw = Gateway::new(&cfg, Arc::new(Metrics::new())).expect("gateway");
        let size = future_size(|r: Request<Incoming>| gw.handle(r));
        assert!(size <= 3600, "Gateway::handle's future is {size} bytes");
    }
}
