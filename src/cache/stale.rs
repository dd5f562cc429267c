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
//!   the upstream's truth: it is passed on and the entry dropped.
//!
//! Refreshes obey the write generations: they store under the key taken
//! before they began, which a write during the refresh has already retired.

use std::time::Instant;

use http::{HeaderMap, HeaderValue, Response, StatusCode};

use super::fill::FillFailed;
use super::route::{fetched_response, hit_response, stored_response, UserRoute};
use super::status::{stale_status, CacheStatus, CACHE_STATUS};
use super::store::{CacheKey, CachedUser, Lookup, UserCache};
use crate::body::BoxBody;
use crate::error::Result;
use crate::headers::int_value;

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

impl UserRoute {
    /// Serves `old`, which is past its TTL, under `key`.
    pub(super) async fn stale(
        &self,
        headers: &HeaderMap,
        rest: &str,
        id: &str,
        key: CacheKey,
        old: CachedUser,
    ) -> Result<(Response<BoxBody>, CacheStatus)> {
        let past = seconds_past(&old);
        let settings = **self.settings.load();
        if past <= settings.stale_while_revalidate.as_secs() {
            self.revalidate(rest, id, key);
            self.metrics
                .stale_served(crate::metrics::StaleReason::Revalidate);
            return Ok((
                stale_response(&old, past, None, true),
                CacheStatus::StaleRevalidate,
            ));
        }
        let within = past <= settings.stale_if_error.as_secs();
        match self.refetch(headers, rest, id, key).await {
            Refetched::User(u, leader, upstream_id) => {
                if leader {
                    self.metrics.cache_miss();
                    Ok((fetched_response(&u, upstream_id), CacheStatus::MissStored))
                } else {
                    // The user another request's refetch just stored.
                    self.metrics.cache_hit();
                    Ok((hit_response(u), CacheStatus::Hit))
                }
            }
            Refetched::Failed(status) if within => {
                self.metrics
                    .stale_served(crate::metrics::StaleReason::Error);
                let code = status.map(|s| s.as_u16());
                Ok((
                    stale_response(&old, past, code, false),
                    CacheStatus::StaleIfError,
                ))
            }
            Refetched::Answer(answer) => {
                self.metrics.cache_miss();
                if is_gone(answer.status()) {
                    self.cache.remove(&key).await;
                }
                Ok((answer, CacheStatus::Miss))
            }
            Refetched::Failed(_) | Refetched::Unshared => {
                // Outside the window, or another request's answer: this
                // request asks the upstream for itself.
                Box::pin(self.fetch_alone(headers, rest, id, super::route::Alone::Waiter)).await
            }
        }
    }

    /// One refetch per id: concurrent requests for an expired entry share
    /// it (a single flight under the entry's refresh key, which does not
    /// find the stale entry itself). The request that ran it counts it in
    /// `gateway_cache_refreshes_total`, once however many shared it.
    async fn refetch(&self, headers: &HeaderMap, rest: &str, id: &str, key: CacheKey) -> Refetched {
        let rkey = UserCache::refresh_key(key);
        let (mut upstream_id, mut mine, mut leader) = (None, None, false);
        let fill = async {
            leader = true;
            self.fill(headers, rest, id, &mut upstream_id, &mut mine)
                .await
        };
        let outcome = self.cache.fetch_once(rkey, fill).await;
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
                Refetched::User(u, leader, upstream_id)
            }
            Lookup::Failed(failed) => match (&*failed, mine) {
                (FillFailed::Error(_), _) => Refetched::Failed(None),
                (FillFailed::Answer(s), _) if is_failure(*s) => Refetched::Failed(Some(*s)),
                (FillFailed::Answer(_), Some(answer)) => Refetched::Answer(answer),
                (FillFailed::Answer(_), None) => Refetched::Unshared,
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

    /// Starts the one background refresh of `key` unless it runs already.
    fn revalidate(&self, rest: &str, id: &str, key: CacheKey) {
        let started = self
            .refreshing
            .lock()
            .map(|mut set| set.insert(key.raw()))
            .unwrap_or(false);
        if !started {
            return;
        }
        // The guard exists before the task does: a task dropped before its
        // first poll (its runtime shut down) still frees the id.
        let running = Running {
            route: self.clone(),
            key,
        };
        let (rest, id) = (rest.to_owned(), id.to_owned());
        tokio::spawn(async move {
            let route = &running.route;
            // refetch counts the refresh; a 404/4xx drops the entry.
            if let Refetched::Answer(answer) =
                route.refetch(&HeaderMap::new(), &rest, &id, key).await
            {
                if is_gone(answer.status()) {
                    route.cache.remove(&key).await;
                }
            }
        });
    }
}

/// Marks `key`'s background refresh done however its task ends, including
/// a task that never ran.
struct Running {
    /// The route whose `refreshing` set holds `key`.
    route: UserRoute,
    /// The entry being refreshed.
    key: CacheKey,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(mut set) = self.route.refreshing.lock() {
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

/// Whole seconds past the entry's TTL (at least 1: it is expired).
fn seconds_past(u: &CachedUser) -> u64 {
    u.ttl_left(Instant::now()).unsigned_abs().max(1)
}

/// An expired entry as a response: its bytes, its true `Age`, and a
/// `Cache-Status` with the negative `ttl`.
fn stale_response(
    u: &CachedUser,
    past: u64,
    fwd_status: Option<u16>,
    revalidating: bool,
) -> Response<BoxBody> {
    let mut r = stored_response(u);
    let h = r.headers_mut();
    h.insert(CACHE_STATUS, stale_status(past, fwd_status, revalidating));
    h.insert(http::header::AGE, int_value(u.age_secs(Instant::now())));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::BodyExt;

    use crate::cache::Settings;
    use crate::metrics::Metrics;
    use crate::upstream::Upstream;

    #[tokio::test]
    async fn an_expired_refresh_entry_left_behind_is_not_taken_for_a_refetch() {
        let (route, calls) = crate::cache::route::tests::route().await;
        let settings = Settings {
            stale_if_error: Duration::from_secs(600),
            ..**route.settings.load()
        };
        route.set_settings(settings);
        let expired = |name: &str| {
            let body = format!(
                r#"{{"object":"organization.user","id":"u1","name":"{name}","email":"n@x","role":"reader","added_at":1}}"#
            );
            CachedUser::new(Bytes::from(body), None, false, Duration::from_secs(1))
                .backdated(Duration::from_secs(5))
        };
        // The entry is past its TTL, and a refetch of it that was cancelled between its fill
        // and its cleanup left its (now expired too) result under the refresh key.
        let key = route.cache.key("u1");
        route.cache.insert(key, expired("Old")).await;
        route
            .cache
            .insert(UserCache::refresh_key(key), expired("Left"))
            .await;
        let (resp, status) = route
            .get_user(&HeaderMap::new(), "/organization/users/u1", "u1")
            .await
            .expect("an answer");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(
            (status, calls.load(Ordering::SeqCst)),
            (CacheStatus::MissStored, 1),
            "the refetch must ask the upstream, not serve the leftover: {body:?}"
        );
        assert!(body.windows(5).any(|w| w == b"\"N\",\""), "{body:?}");
    }

    #[test]
    fn a_refresh_whose_task_never_ran_frees_its_id() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let text = "[upstream]\nbase_url = \"http://127.0.0.1:9/v1\"\n";
        let cfg = crate::config::Config::parse(text, std::path::Path::new("."), &|n| {
            (n == "OPENAI_ADMIN_KEY").then(|| "sk-admin-x".to_string())
        })
        .expect("config");
        let metrics = Arc::new(Metrics::new());
        let upstream = Arc::new(Upstream::new(&cfg.upstream, metrics.clone()).expect("client"));
        let route = UserRoute::new(
            UserCache::new(100),
            upstream,
            metrics,
            Settings::from(&cfg.cache),
        );
        let key = route.cache.key("u1");
        // The refresh is spawned, and its runtime shuts down before it runs.
        rt.block_on(async { route.revalidate("/organization/users/u1", "u1", key) });
        assert!(route.refreshing.lock().expect("set").contains(&key.raw()));
        drop(rt);
        assert!(
            route.refreshing.lock().expect("set").is_empty(),
            "the id stays marked as refreshing: it would never be refreshed again"
        );
    }
}
