//! Serving a user the cache already knows while the upstream struggles,
//! as nginx's `proxy_cache_use_stale` / `proxy_cache_background_update`
//! and Varnish's grace do.
//!
//! An entry lives past its TTL for the longer of the two stale windows,
//! and past its TTL it is never a plain hit:
//! - within `stale_while_revalidate_secs` it is served at once
//!   (`Cache-Status: ...; hit; ttl=-N`) while one background refresh per
//!   id replaces it;
//! - otherwise the request refetches (one shared refetch per id), and
//!   within `stale_if_error_secs` a refetch that fails (no answer, a 5xx, a
//!   429, or a 200 that is not the user) serves the entry instead
//!   (`...; fwd=stale; fwd-status=503; ttl=-N`). A 404 or another 4xx is
//!   the upstream's truth: it is passed on and the entry dropped. A refetch
//!   the organization's budget refuses is a failure like any other; while
//!   the organization is paused after an upstream 429 the entry is served
//!   at once, without waiting for a turn (no `fwd-status`: nothing was
//!   sent).
//!
//! Refreshes obey the write generations: they store under the key taken
//! before they began, which a write during the refresh has already retired.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::{HeaderMap, HeaderValue, Response, StatusCode};

use super::entry::CachedUser;
use super::fill::{FillFailed, Filler, Kept};
use super::key::CacheKey;
use super::response::{fetched_response, hit_response, stale_response};
use super::settings::Settings;
use super::status::CacheStatus;
use super::store::{Lookup, UserCache};
use crate::body::BoxBody;
use crate::metrics::Metrics;
use crate::upstream::Caller;

/// How a refetch of an expired entry ended.
enum Refetched {
    /// A fresh user, now stored (`leader`: this request fetched it).
    User(CachedUser, bool, Option<HeaderValue>),
    /// The upstream failed: no answer, or a status that is a failure.
    Failed(Option<StatusCode>),
    /// The upstream's answer, not a user, for the request that fetched it.
    Answer(Response<BoxBody>),
    /// Another request's refetch got an answer it could not share.
    Unshared,
}

/// An entry found past its TTL, and by how much when it was found.
pub(super) struct Expired {
    /// The stored user.
    user: CachedUser,
    /// Whole seconds past its TTL (at least 1).
    past: u64,
}

impl Expired {
    /// `user`, found past its TTL now.
    pub(super) fn new(user: CachedUser) -> Self {
        let past = user.ttl_left(Instant::now()).unsigned_abs().max(1);
        Self { user, past }
    }
}

/// The parts of the cached route that serve expired entries, borrowed for
/// one request or one background refresh.
pub(super) struct Stale<'a> {
    /// The stored users.
    cache: &'a UserCache,
    /// Refetches the user.
    filler: &'a Filler,
    /// Hit, miss, stale and refresh counters.
    metrics: &'a Metrics,
}

impl<'a> Stale<'a> {
    /// The stale path over the route's parts.
    pub(super) fn new(cache: &'a UserCache, filler: &'a Filler, metrics: &'a Metrics) -> Self {
        Self {
            cache,
            filler,
            metrics,
        }
    }

    /// `old`, past its TTL, served at once when it is within
    /// `stale_while_revalidate`; the caller starts the background refresh.
    pub(super) fn revalidating(
        &self,
        old: &Expired,
        settings: &Settings,
    ) -> Option<(Response<BoxBody>, CacheStatus)> {
        if old.past > settings.stale_while_revalidate.as_secs() {
            return None;
        }
        self.metrics
            .stale_served(crate::metrics::StaleReason::Revalidate);
        crate::telemetry::span::stale_answer("stale_while_revalidate");
        Some((
            stale_response(&old.user, old.past, None, true),
            CacheStatus::StaleRevalidate,
        ))
    }

    /// Refetches `old`, past its TTL, under `key`: the fresh user, the
    /// upstream's answer, or `old` itself when the refetch failed within
    /// `stale_if_error`. `None`: outside the window, or another request's
    /// answer: this request asks the upstream for itself.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn refetched(
        &self,
        caller: &Caller,
        headers: &HeaderMap,
        rest: &str,
        id: &str,
        key: CacheKey,
        old: &Expired,
        settings: &Settings,
    ) -> Option<(Response<BoxBody>, CacheStatus)> {
        let within = old.past <= settings.stale_if_error.as_secs();
        if within && self.filler.paused(caller) {
            // The organization is paused after an upstream 429: the refetch
            // could not be sent, so the stale user is served at once rather
            // than after waiting for a turn.
            self.metrics
                .stale_served(crate::metrics::StaleReason::Error);
            return Some((
                stale_response(&old.user, old.past, None, false),
                CacheStatus::StaleIfError,
            ));
        }
        match self.refetch(caller, headers, rest, id, key).await {
            Refetched::User(u, leader, upstream_id) => {
                if leader {
                    self.metrics.cache_miss(caller.org().metric());
                    Some((fetched_response(&u, upstream_id), CacheStatus::MissStored))
                } else {
                    // The user another request's refetch just stored.
                    self.metrics.cache_hit(caller.org().metric());
                    Some((hit_response(u), CacheStatus::Hit))
                }
            }
            Refetched::Failed(status) if within => {
                self.metrics
                    .stale_served(crate::metrics::StaleReason::Error);
                crate::telemetry::span::stale_answer("stale_if_error");
                let code = status.map(|s| s.as_u16());
                Some((
                    stale_response(&old.user, old.past, code, false),
                    CacheStatus::StaleIfError,
                ))
            }
            Refetched::Answer(answer) => {
                self.metrics.cache_miss(caller.org().metric());
                if is_gone(answer.status()) {
                    self.cache.remove(&key).await;
                }
                Some((answer, CacheStatus::Miss))
            }
            Refetched::Failed(_) | Refetched::Unshared => None,
        }
    }

    /// The background refresh of `key`: a refetch (which counts itself);
    /// a 404/4xx drops the entry.
    pub(super) async fn refresh(&self, caller: &Caller, rest: &str, id: &str, key: CacheKey) {
        if let Refetched::Answer(answer) =
            self.refetch(caller, &HeaderMap::new(), rest, id, key).await
        {
            if is_gone(answer.status()) {
                self.cache.remove(&key).await;
            }
        }
    }

    /// One refetch per id: concurrent requests for an expired entry share
    /// it (a single flight under the entry's refresh key, which does not
    /// find the stale entry itself). The request that ran it counts it in
    /// `gateway_cache_refreshes_total`, once however many shared it.
    async fn refetch(
        &self,
        caller: &Caller,
        headers: &HeaderMap,
        rest: &str,
        id: &str,
        key: CacheKey,
    ) -> Refetched {
        let rkey = UserCache::refresh_key(key);
        let fill = self.filler.fill(caller, headers, rest, id);
        let (outcome, kept) = self.cache.fetch_once_keeping(rkey, fill).await;
        let leader = kept.is_some();
        let refetched = match outcome {
            // An expired user under the refresh key is no refetch's result:
            // it was left by a refetch cancelled between its fill and the
            // removal below (code after an `.await`, see docs/ledger.md).
            // It is dropped, and this request fetches for itself.
            Lookup::Hit(u) if !u.is_fresh(Instant::now()) => {
                self.cache.remove(&rkey).await;
                Refetched::Unshared
            }
            Lookup::Filled(u) | Lookup::Hit(u) => {
                self.cache.insert(key, u.clone()).await;
                self.cache.remove(&rkey).await;
                Refetched::User(u, leader, kept.and_then(Kept::upstream_id))
            }
            Lookup::Failed(failed) => match (&*failed, kept) {
                (FillFailed::Error(_), _) => Refetched::Failed(None),
                (FillFailed::Answer(s), _) if is_failure(*s) => Refetched::Failed(Some(*s)),
                (FillFailed::Answer(_), Some(Kept::Answer(answer))) => Refetched::Answer(answer),
                (FillFailed::Answer(_), _) => Refetched::Unshared,
            },
        };
        if leader {
            self.metrics.refresh(match &refetched {
                Refetched::User(..) => crate::metrics::RefreshResult::Ok,
                Refetched::Failed(_) => crate::metrics::RefreshResult::Error,
                Refetched::Answer(a) if is_gone(a.status()) => crate::metrics::RefreshResult::Gone,
                Refetched::Answer(_) | Refetched::Unshared => {
                    crate::metrics::RefreshResult::Unstorable
                }
            });
        }
        refetched
    }
}

/// Ids (keys) with a background refresh running: one refresh per id.
#[derive(Debug, Default)]
pub(super) struct Refreshing {
    /// The keys' bits; shared with each refresh's [`Running`] guard.
    keys: Arc<Mutex<HashSet<u128>>>,
}

impl Refreshing {
    /// Marks `key` as refreshing, unless it is already (`None`). The mark
    /// lasts as long as the returned guard.
    pub(super) fn start(&self, key: CacheKey) -> Option<Running> {
        let started = self
            .keys
            .lock()
            .map(|mut set| set.insert(key.raw()))
            .unwrap_or(false);
        started.then(|| Running {
            keys: self.keys.clone(),
            key,
        })
    }

    /// True while `key` is marked.
    #[cfg(test)]
    pub(super) fn contains(&self, key: CacheKey) -> bool {
        self.keys.lock().expect("set").contains(&key.raw())
    }

    /// True when no key is marked.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.keys.lock().expect("set").is_empty()
    }
}

/// Marks `key`'s background refresh done however its task ends, including
/// a task that never ran.
pub(super) struct Running {
    /// The set of keys being refreshed.
    keys: Arc<Mutex<HashSet<u128>>>,
    /// The entry being refreshed.
    key: CacheKey,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(mut set) = self.keys.lock() {
            set.remove(&self.key.raw());
        }
    }
}

/// A failure the stale entry may cover: a 5xx, a 429, or a success that
/// was not the user (a broken body, another id).
fn is_failure(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || status.is_success()
}

/// The upstream says the user is not there (any 4xx but 429).
fn is_gone(status: StatusCode) -> bool {
    status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS
}
