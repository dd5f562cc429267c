//! The cached route: `GET {prefix}/organization/users/{user_id}`.
//!
//! A miss runs one upstream fetch shared by every concurrent request for the
//! id. That fetch is the gateway's own request, with a fixed set of headers
//! ([`fill_headers`](super::fill_headers)), so no client's headers shape another client's answer.
//! It reads the body up to `cache.max_body_bytes`; only a 200 that parses
//! as an `organization.user` with the requested id is stored, as the
//! upstream's bytes, and only such a user is shared with the requests that
//! waited on it. Anything else answers the request that fetched it, and
//! each waiter fetches for itself.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::{HeaderMap, Response};
use tracing::Instrument;

use super::entry::CachedUser;
use super::fill::{FillFailed, Filler, Kept};
use super::key::CacheKey;
use super::request::{directive, Directive};
use super::response::{fetched_response, hit_response, hit_response_at};
use super::settings::Settings;
use super::stale::{Expired, Refreshing, Stale};
use super::status::CacheStatus;
use super::store::{Lookup, UserCache};
use crate::body::BoxBody;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::telemetry::span as trace_span;
use crate::upstream::{Caller, Upstream};

/// The cached route and everything it needs: the cache, the upstream it
/// fills from, metrics and its live settings. Nothing else of the gateway.
/// Cheap to clone (a background refresh holds a clone).
#[derive(Debug, Clone)]
pub struct UserRoute {
    /// Shared with background refreshes.
    inner: Arc<Inner>,
}

/// What [`UserRoute`] holds.
#[derive(Debug)]
struct Inner {
    /// The stored users.
    cache: UserCache,
    /// Fetches misses and refreshes from the upstream.
    filler: Filler,
    /// Hit and miss counters.
    metrics: Arc<Metrics>,
    /// TTL, body bound and stale windows, replaced on reload (shared with
    /// the filler).
    settings: Arc<ArcSwap<Settings>>,
    /// Ids (keys) with a background refresh running: one per id.
    refreshing: Refreshing,
}

impl UserRoute {
    /// The route over `cache`, filling from `upstream`.
    pub fn new(
        cache: UserCache,
        upstream: Arc<Upstream>,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Self {
        cache.set_stale_window(settings.stale_window());
        let settings = Arc::new(ArcSwap::from_pointee(settings));
        Self {
            inner: Arc::new(Inner {
                cache,
                filler: Filler::new(upstream, metrics.clone(), settings.clone()),
                metrics,
                settings,
                refreshing: Refreshing::default(),
            }),
        }
    }

    /// The cache (purges, the entry gauge, evictions after writes).
    pub fn cache(&self) -> &UserCache {
        &self.inner.cache
    }

    /// Applies reloaded settings; entries already stored keep their TTL.
    /// A longer TTL plus stale window than the gateway started with is
    /// served in full only to users read at least once per the old one:
    /// moka's idle bound is fixed at start (see [`UserCache::idle`]).
    pub fn set_settings(&self, settings: Settings) {
        let life = settings.ttl + settings.stale_window();
        let idle = self.inner.cache.idle();
        if life > idle {
            tracing::warn!(
                life_secs = life.as_secs(),
                idle_secs = idle.as_secs(),
                "cache: TTL plus stale window now longer than at start; \
                 users unread for idle_secs are dropped before their TTL \
                 until a restart"
            );
        }
        self.inner.cache.set_stale_window(settings.stale_window());
        self.inner.settings.store(Arc::new(settings));
    }

    /// Serves the cached route for `id` (decoded); `rest` is the path as
    /// the client spelled it. Only `Cache-Control` and a valid
    /// `x-request-id` are read from `headers`: a fill is the gateway's own
    /// request (see [`fill_headers`](super::fill_headers)), and requests
    /// whose headers would change the answer never get here
    /// ([`bypasses`](super::bypasses)).
    pub async fn get_user(
        &self,
        caller: &Caller,
        headers: &HeaderMap,
        rest: &str,
        id: &str,
    ) -> Result<(Response<BoxBody>, CacheStatus)> {
        let inner = &*self.inner;
        // The fetch paths are boxed: their futures (the upstream exchange,
        // moka's single-flight entry) are kilobytes, and inline they would make
        // every hit's request future that large too.
        if !inner.cache.serving() {
            // The invalidation bus is down: entries may be stale, so answer
            // as a replica without a cache would.
            return Box::pin(self.fetch_alone(caller, headers, rest, id, Alone::Offline)).await;
        }
        match directive(headers) {
            Directive::Normal => {
                let key = inner.cache.key(caller.org(), id);
                // One clock read for the lookup, the freshness and the Age.
                let now = Instant::now();
                if let Some(u) = inner.cache.get_at(&key, now).await {
                    if u.is_fresh(now) {
                        inner.metrics.cache_hit(caller.org().metric());
                        return Ok((hit_response_at(u, now), CacheStatus::Hit));
                    }
                    return Box::pin(self.stale(caller, headers, rest, id, key, u)).await;
                }
                Box::pin(self.lookup(caller, headers, rest, id, key)).await
            }
            Directive::Refresh => {
                Box::pin(self.fetch_alone(caller, headers, rest, id, Alone::Refresh)).await
            }
            Directive::NoStore => {
                Box::pin(self.fetch_alone(caller, headers, rest, id, Alone::NoStore)).await
            }
        }
    }

    /// A miss (or a hit that turned up while this request got here): one
    /// shared fetch per key. Only a storable user is shared: when the fill
    /// got anything else, the request that ran it answers with that, and
    /// each request that waited on it fetches for itself.
    async fn lookup(
        &self,
        caller: &Caller,
        headers: &HeaderMap,
        rest: &str,
        id: &str,
        key: CacheKey,
    ) -> Result<(Response<BoxBody>, CacheStatus)> {
        let inner = &*self.inner;
        let fill = inner.filler.fill(caller, headers, rest, id);
        // get_user has just looked the key up: go straight to the shared fetch.
        let waiting = trace_span::wait_starts();
        let looked_up = inner.cache.fetch_once_keeping(key, fill).await;
        trace_span::waited("single_flight", waiting);
        match looked_up {
            (Lookup::Hit(u), _) => {
                inner.metrics.cache_hit(caller.org().metric());
                Ok((hit_response(u), CacheStatus::Hit))
            }
            (Lookup::Filled(u), kept) => {
                inner.metrics.cache_miss(caller.org().metric());
                let upstream_id = kept.and_then(Kept::upstream_id);
                Ok((fetched_response(&u, upstream_id), CacheStatus::MissStored))
            }
            (Lookup::Failed(failed), kept) => match (&*failed, kept) {
                (FillFailed::Error(e), _) => {
                    inner.metrics.cache_miss(caller.org().metric());
                    Err(e.clone())
                }
                (FillFailed::Answer(_), Some(Kept::Answer(answer))) => {
                    inner.metrics.cache_miss(caller.org().metric());
                    Ok((answer, CacheStatus::Miss))
                }
                (FillFailed::Answer(_), _) => {
                    self.fetch_alone(caller, headers, rest, id, Alone::Waiter)
                        .await
                }
            },
        }
    }

    /// A fetch for this request alone: `no-cache`, `no-store`, or a waiter
    /// whose shared fill got nothing to share. A user it gets is stored
    /// unless `no-store` asked otherwise.
    async fn fetch_alone(
        &self,
        caller: &Caller,
        headers: &HeaderMap,
        rest: &str,
        id: &str,
        why: Alone,
    ) -> Result<(Response<BoxBody>, CacheStatus)> {
        let inner = &*self.inner;
        let key = inner.cache.key(caller.org(), id);
        let (stored, unstored) = why.statuses();
        if matches!(why, Alone::Waiter | Alone::Offline) {
            inner.metrics.cache_miss(caller.org().metric());
        }
        match inner.filler.fetch(caller, headers, rest, id).await {
            Ok(fetched) => {
                let (r, u) = fetched.answer();
                if matches!(why, Alone::NoStore | Alone::Offline) {
                    return Ok((r, unstored));
                }
                inner.cache.insert(key, u).await;
                Ok((r, stored))
            }
            Err(unstored_answer) => Ok((unstored_answer?, unstored)),
        }
    }

    /// Serves `old`, which is past its TTL, under `key` (see
    /// [`stale`](super::stale)).
    async fn stale(
        &self,
        caller: &Caller,
        headers: &HeaderMap,
        rest: &str,
        id: &str,
        key: CacheKey,
        old: CachedUser,
    ) -> Result<(Response<BoxBody>, CacheStatus)> {
        let old = Expired::new(old);
        let settings = **self.inner.settings.load();
        let stale = self.stale_path();
        if let Some(served) = stale.revalidating(&old, &settings) {
            self.revalidate(caller, rest, id, key);
            return Ok(served);
        }
        match stale
            .refetched(caller, headers, rest, id, key, &old, &settings)
            .await
        {
            Some(served) => Ok(served),
            // Outside the window, or another request's answer: this
            // request asks the upstream for itself.
            None => Box::pin(self.fetch_alone(caller, headers, rest, id, Alone::Waiter)).await,
        }
    }

    /// Starts the one background refresh of `key` unless it runs already.
    fn revalidate(&self, caller: &Caller, rest: &str, id: &str, key: CacheKey) {
        // The guard exists before the task does: a task dropped before its
        // first poll (its runtime shut down) still frees the id.
        let Some(running) = self.inner.refreshing.start(key) else {
            return;
        };
        let route = self.clone();
        let (caller, rest, id) = (caller.clone(), rest.to_owned(), id.to_owned());
        // In the request's span: the refresh's exchange is a CLIENT span
        // under the request that started it.
        tokio::spawn(
            async move {
                let _running = running;
                route.stale_path().refresh(&caller, &rest, &id, key).await;
            }
            .in_current_span(),
        );
    }

    /// The parts the stale path uses.
    fn stale_path(&self) -> Stale<'_> {
        let inner = &*self.inner;
        Stale::new(&inner.cache, &inner.filler, &inner.metrics)
    }
}

/// Why a request fetches for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alone {
    /// `Cache-Control: no-cache`: fetch, then store.
    Refresh,
    /// `Cache-Control: no-store`: fetch, don't store.
    NoStore,
    /// It waited on a fill that got nothing to share.
    Waiter,
    /// The cache is not serving (the invalidation bus is down): fetch,
    /// don't store.
    Offline,
}

impl Alone {
    /// (`Cache-Status` when stored, when not).
    fn statuses(self) -> (CacheStatus, CacheStatus) {
        match self {
            Self::Refresh | Self::NoStore => (CacheStatus::RequestStored, CacheStatus::Request),
            Self::Waiter | Self::Offline => (CacheStatus::MissStored, CacheStatus::Miss),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fill::is_user;
    use super::*;
    use bytes::Bytes;
    use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
    use http::StatusCode;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    /// A one-route Admin API on a loopback port: `GET /v1/organization/users/{id}`
    /// answers the user, except `missing` (404). Counts the requests.
    async fn upstream() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let calls = counted.clone();
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let id = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
                    async move {
                        let (status, body) = if id == "missing" {
                            (404, r#"{"error":{"message":"No such user","type":"invalid_request_error","param":null,"code":null}}"#.to_owned())
                        } else {
                            (
                                200,
                                format!(
                                    r#"{{"object":"organization.user","id":"{id}","name":"N","email":"n@x","role":"reader","added_at":1}}"#
                                ),
                            )
                        };
                        let mut r = Response::new(http_body_util::Full::new(Bytes::from(body)));
                        *r.status_mut() = StatusCode::from_u16(status).unwrap();
                        r.headers_mut()
                            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        (format!("http://{addr}/v1"), calls)
    }

    /// The cached route alone: a cache, an upstream client, metrics.
    async fn route() -> (UserRoute, Arc<AtomicUsize>) {
        let (base, calls) = upstream().await;
        let text = format!("[upstream]\nbase_url = \"{base}\"\n");
        let cfg = crate::config::Config::parse(&text, std::path::Path::new("."), &|n| {
            (n == "OPENAI_ADMIN_KEY").then(|| "sk-admin-x".to_string())
        })
        .expect("config");
        let metrics = Arc::new(Metrics::new());
        let upstream = Arc::new(Upstream::new(&cfg.upstream, metrics.clone()).expect("client"));
        let settings = Settings::from(&cfg.cache);
        (
            UserRoute::new(UserCache::new(100), upstream, metrics, settings),
            calls,
        )
    }

    async fn get(r: &UserRoute, id: &str, headers: &HeaderMap) -> (StatusCode, CacheStatus, Bytes) {
        let rest = format!("/organization/users/{id}");
        let caller = Caller::for_tests("test");
        let (resp, status) = r
            .get_user(&caller, headers, &rest, id)
            .await
            .expect("answer");
        let code = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (code, status, body)
    }

    #[tokio::test]
    async fn a_miss_is_stored_and_the_next_request_is_a_hit() {
        let (r, calls) = route().await;
        let none = HeaderMap::new();
        let (code, status, first) = get(&r, "user_1", &none).await;
        assert_eq!((code, status), (StatusCode::OK, CacheStatus::MissStored));
        let (code, status, second) = get(&r, "user_1", &none).await;
        assert_eq!((code, status), (StatusCode::OK, CacheStatus::Hit));
        assert_eq!(first, second, "a hit returns the stored bytes");
        assert!(is_user(&second, "user_1"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_404_is_passed_through_and_not_stored() {
        let (r, calls) = route().await;
        let none = HeaderMap::new();
        for _ in 0..2 {
            let (code, status, _) = get(&r, "missing", &none).await;
            assert_eq!((code, status), (StatusCode::NOT_FOUND, CacheStatus::Miss));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn no_store_fetches_without_storing_and_no_cache_refreshes() {
        let (r, calls) = route().await;
        let mut h = HeaderMap::new();
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        assert_eq!(get(&r, "u2", &h).await.1, CacheStatus::Request);
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        assert_eq!(get(&r, "u2", &h).await.1, CacheStatus::RequestStored);
        assert_eq!(get(&r, "u2", &HeaderMap::new()).await.1, CacheStatus::Hit);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_expired_refresh_entry_left_behind_is_not_taken_for_a_refetch() {
        let (route, calls) = route().await;
        let settings = Settings {
            stale_if_error: Duration::from_secs(600),
            ..**route.inner.settings.load()
        };
        route.set_settings(settings);
        let expired = |name: &str| {
            let body = format!(
                r#"{{"object":"organization.user","id":"u1","name":"{name}","email":"n@x","role":"reader","added_at":1}}"#
            );
            CachedUser::new(Bytes::from(body), None, false, Duration::from_secs(1), None)
                .backdated(Duration::from_secs(5))
        };
        // The entry is past its TTL, and a refetch of it that was cancelled between its fill
        // and its cleanup left its (now expired too) result under the refresh key.
        let key = route.inner.cache.key(Caller::for_tests("test").org(), "u1");
        route.inner.cache.insert(key, expired("Old")).await;
        route
            .inner
            .cache
            .insert(UserCache::refresh_key(key), expired("Left"))
            .await;
        let (resp, status) = route
            .get_user(
                &Caller::for_tests("test"),
                &HeaderMap::new(),
                "/organization/users/u1",
                "u1",
            )
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
        let key = route.inner.cache.key(Caller::for_tests("test").org(), "u1");
        // The refresh is spawned, and its runtime shuts down before it runs.
        let caller = Caller::for_tests("test");
        rt.block_on(async { route.revalidate(&caller, "/organization/users/u1", "u1", key) });
        assert!(route.inner.refreshing.contains(key));
        drop(rt);
        assert!(
            route.inner.refreshing.is_empty(),
            "the id stays marked as refreshing: it would never be refreshed again"
        );
    }
}
