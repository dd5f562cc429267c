//! The cached route: `GET {prefix}/organization/users/{user_id}`.
//!
//! A miss runs one upstream fetch shared by every concurrent request for the
//! id. That fetch is the gateway's own request, with a fixed set of headers
//! ([`fill_headers`]), so no client's headers shape another client's answer.
//! It reads the body up to `cache.max_body_bytes`; only a 200 that parses
//! as an `organization.user` with the requested id is stored, as the
//! upstream's bytes, and only such a user is shared with the requests that
//! waited on it. Anything else answers the request that fetched it, and
//! each waiter fetches for itself.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Response};

use super::entry::CachedUser;
use super::fill::FillFailed;
use super::key::CacheKey;
use super::request::{directive, Directive};
use super::status::{hit_status, CacheStatus, CACHE_STATUS};
use super::store::{Lookup, UserCache};
use crate::body::{full, BoxBody};
use crate::config::CacheConfig;
use crate::error::Result;
use crate::headers::{int_value, X_REQUEST_ID};
use crate::metrics::Metrics;
use crate::upstream::Upstream;

/// The cached route's reloadable settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// TTL for newly stored users.
    pub ttl: Duration,
    /// Larger user responses are passed through unstored.
    pub max_body_bytes: usize,
    /// How long past its TTL an entry may be served when the refetch fails.
    pub stale_if_error: Duration,
    /// How long past its TTL an entry is served at once while one
    /// background refresh runs.
    pub stale_while_revalidate: Duration,
}

impl Settings {
    /// How long entries outlive their TTL: the longer stale window.
    pub fn stale_window(&self) -> Duration {
        self.stale_if_error.max(self.stale_while_revalidate)
    }
}

impl From<&CacheConfig> for Settings {
    fn from(c: &CacheConfig) -> Self {
        Self {
            ttl: c.ttl,
            max_body_bytes: c.max_body_bytes,
            stale_if_error: c.stale_if_error,
            stale_while_revalidate: c.stale_while_revalidate,
        }
    }
}

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
pub struct Inner {
    /// The stored users.
    pub(super) cache: UserCache,
    /// Where misses are fetched.
    pub(super) upstream: Arc<Upstream>,
    /// Hit and miss counters.
    pub(super) metrics: Arc<Metrics>,
    /// TTL, body bound and stale windows, replaced on reload.
    pub(super) settings: ArcSwap<Settings>,
    /// Ids (keys) with a background refresh running: one per id.
    pub(super) refreshing: Mutex<HashSet<u128>>,
}

impl std::ops::Deref for UserRoute {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.inner
    }
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
        Self {
            inner: Arc::new(Inner {
                cache,
                upstream,
                metrics,
                settings: ArcSwap::from_pointee(settings),
                refreshing: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// The cache (purges, the entry gauge, evictions after writes).
    pub fn cache(&self) -> &UserCache {
        &self.cache
    }

    /// Applies reloaded settings; entries already stored keep their TTL.
    pub fn set_settings(&self, settings: Settings) {
        self.cache.set_stale_window(settings.stale_window());
        self.settings.store(Arc::new(settings));
    }

    /// Serves the cached route for `id` (decoded); `rest` is the path as
    /// the client spelled it. Only `Cache-Control` and a valid
    /// `x-request-id` are read from `headers`: a fill is the gateway's own
    /// request (see [`fill_headers`]), and requests whose headers would
    /// change the answer never get here ([`bypasses`]).
    pub async fn get_user(
        &self,
        headers: &HeaderMap,
        rest: &str,
        id: &str,
    ) -> Result<(Response<BoxBody>, CacheStatus)> {
        // The fetch paths are boxed: their futures (the upstream exchange,
        // moka's single-flight entry) are kilobytes, and inline they would make
        // every hit's request future that large too.
        if !self.cache.serving() {
            // The invalidation bus is down: entries may be stale, so answer
            // as a replica without a cache would.
            return Box::pin(self.fetch_alone(headers, rest, id, Alone::Offline)).await;
        }
        match directive(headers) {
            Directive::Normal => {
                let key = self.cache.key(id);
                if let Some(u) = self.cache.get(&key).await {
                    if u.is_fresh(Instant::now()) {
                        self.metrics.cache_hit();
                        return Ok((hit_response(u), CacheStatus::Hit));
                    }
                    return Box::pin(self.stale(headers, rest, id, key, u)).await;
                }
                Box::pin(self.lookup(headers, rest, id, key)).await
            }
            Directive::Refresh => {
                Box::pin(self.fetch_alone(headers, rest, id, Alone::Refresh)).await
            }
            Directive::NoStore => {
                Box::pin(self.fetch_alone(headers, rest, id, Alone::NoStore)).await
            }
        }
    }

    /// A miss (or a hit that turned up while this request got here): one
    /// shared fetch per key. Only a storable user is shared: when the fill
    /// got anything else, the request that ran it answers with that, and
    /// each request that waited on it fetches for itself.
    async fn lookup(
        &self,
        headers: &HeaderMap,
        rest: &str,
        id: &str,
        key: CacheKey,
    ) -> Result<(Response<BoxBody>, CacheStatus)> {
        let mut upstream_id = None;
        let mut mine: Option<Response<BoxBody>> = None;
        let fill = self.fill(headers, rest, id, &mut upstream_id, &mut mine);
        // get_user has just looked the key up: go straight to the shared fetch.
        match self.cache.fetch_once(key, fill).await {
            Lookup::Hit(u) => {
                self.metrics.cache_hit();
                Ok((hit_response(u), CacheStatus::Hit))
            }
            Lookup::Filled(u) => {
                self.metrics.cache_miss();
                Ok((fetched_response(&u, upstream_id), CacheStatus::MissStored))
            }
            Lookup::Failed(failed) => match (&*failed, mine) {
                (FillFailed::Error(e), _) => {
                    self.metrics.cache_miss();
                    Err(e.clone())
                }
                (FillFailed::Answer(_), Some(answer)) => {
                    self.metrics.cache_miss();
                    Ok((answer, CacheStatus::Miss))
                }
                (FillFailed::Answer(_), None) => {
                    self.fetch_alone(headers, rest, id, Alone::Waiter).await
                }
            },
        }
    }

    /// A fetch for this request alone: `no-cache`, `no-store`, or a waiter
    /// whose shared fill got nothing to share. A user it gets is stored
    /// unless `no-store` asked otherwise.
    pub(super) async fn fetch_alone(
        &self,
        headers: &HeaderMap,
        rest: &str,
        id: &str,
        why: Alone,
    ) -> Result<(Response<BoxBody>, CacheStatus)> {
        let key = self.cache.key(id);
        let mut upstream_id = None;
        let (stored, unstored) = why.statuses();
        if matches!(why, Alone::Waiter | Alone::Offline) {
            self.metrics.cache_miss();
        }
        match self.fetch(headers, rest, id, &mut upstream_id).await {
            Ok(u) => {
                let r = fetched_response(&u, upstream_id);
                if matches!(why, Alone::NoStore | Alone::Offline) {
                    return Ok((r, unstored));
                }
                self.cache.insert(key, u).await;
                Ok((r, stored))
            }
            Err(unstored_answer) => Ok((unstored_answer?, unstored)),
        }
    }
}

/// Why a request fetches for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Alone {
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

/// A stored user as a response (no cache headers yet).
pub(super) fn stored_response(u: &CachedUser) -> Response<BoxBody> {
    stored_with(u, u.body(), u.date())
}

/// [`stored_response`] with `body`, `u`'s body, already in hand.
fn stored_with(u: &CachedUser, body: Bytes, date: Option<HeaderValue>) -> Response<BoxBody> {
    let len = body.len() as u64;
    let mut r = Response::new(full(body));
    // Room for everything a hit gets (cache headers, request id, rate
    // limit headers) without growing the map.
    *r.headers_mut() = HeaderMap::with_capacity(8);
    let h = r.headers_mut();
    if let Some(ct) = u.content_type() {
        h.insert(CONTENT_TYPE, ct);
    }
    if let Some(ce) = u.content_encoding() {
        h.insert(CONTENT_ENCODING, ce);
    }
    // The stored response's `Date`, beside `Age` (RFC 9111 §4.2.3); hyper
    // adds its own only when there is none.
    if let Some(date) = date {
        h.insert(http::header::DATE, date);
    }
    h.insert(CONTENT_LENGTH, int_value(len));
    r
}

/// A user this request fetched: the stored form, with the upstream's
/// request id (a forwarded response keeps it).
pub(super) fn fetched_response(
    u: &CachedUser,
    upstream_id: Option<HeaderValue>,
) -> Response<BoxBody> {
    let mut r = stored_response(u);
    if let Some(id) = upstream_id {
        r.headers_mut().insert(X_REQUEST_ID, id);
    }
    r
}

/// A hit: the stored bytes plus `Cache-Status: ...; hit; ttl=N` and `Age`.
/// Takes the looked-up copy, whose body moves into the response: cloning it
/// again would write the body's reference count (a line every core reading
/// this user writes) twice more.
pub fn hit_response(mut u: CachedUser) -> Response<BoxBody> {
    let now = Instant::now();
    let (body, date) = u.take_body();
    let mut r = stored_with(&u, body, date);
    // Age floors to whole seconds; ttl is counted from the same figure so
    // that age + ttl always equals the stored TTL.
    let age = u.age_secs(now);
    let ttl = u.ttl().as_secs().saturating_sub(age);
    let h = r.headers_mut();
    h.insert(CACHE_STATUS, hit_status(ttl));
    h.insert(http::header::AGE, int_value(age));
    r
}

impl crate::cluster::Evict for UserRoute {
    fn evict<'a>(
        &'a self,
        id: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(self.cache.invalidate(id))
    }

    fn evict_all(&self) {
        self.cache.invalidate_all();
    }

    fn set_serving(&self, serving: bool) {
        self.cache.set_serving(serving);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::fill::is_user;
    use super::*;
    use bytes::Bytes;
    use http::header::CACHE_CONTROL;
    use http::StatusCode;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
    pub(in crate::cache) async fn route() -> (UserRoute, Arc<AtomicUsize>) {
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
        let (resp, status) = r.get_user(headers, &rest, id).await.expect("answer");
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

    #[test]
    fn user_bodies_are_recognised() {
        let ok = br#"{"object":"organization.user","id":"user_abc","name":"A","email":"a@x","role":"owner","added_at":1711471533}"#;
        assert!(is_user(ok, "user_abc"));
        assert!(!is_user(ok, "user_other"), "wrong id");
        assert!(!is_user(
            br#"{"object":"organization.user.deleted","id":"user_abc"}"#,
            "user_abc"
        ));
        assert!(
            !is_user(
                br#"{"object":"organization.user","id":"user_abc""#,
                "user_abc"
            ),
            "truncated"
        );
        assert!(
            !is_user(
                br#"{"object":"organization.user","id":"user_abc","added_at":"x"}"#,
                "user_abc"
            ),
            "bad type"
        );
        assert!(!is_user(b"[]", "user_abc"));
        assert!(
            is_user(
                br#"{"object":"organization.user","id":"user\u005fabc"}"#,
                "user_abc"
            ),
            "escaped id"
        );
    }

    #[test]
    fn cache_control_directives() {
        let mut h = HeaderMap::new();
        assert_eq!(directive(&h), Directive::Normal);
        h.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("max-age=0, No-Cache"),
        );
        assert_eq!(directive(&h), Directive::Refresh);
        h.append(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        assert_eq!(directive(&h), Directive::NoStore);
    }

    /// Found by `fuzz/` (cache_control): a non-ASCII byte elsewhere in the
    /// value made the whole value unreadable as text, and its `no-store` was
    /// ignored, so the response was stored.
    #[test]
    fn no_store_beside_a_non_ascii_byte_is_honoured() {
        for (raw, want) in [
            (&b"\x9e,No-Store"[..], Directive::NoStore),
            (b"ncache\xf6\x92=0, No-Store", Directive::NoStore),
            (b"no-cache, x=\xff", Directive::Refresh),
            (b"\xff", Directive::Normal),
        ] {
            let mut h = HeaderMap::new();
            h.insert(CACHE_CONTROL, HeaderValue::from_bytes(raw).unwrap());
            assert_eq!(directive(&h), want, "{raw:?}");
        }
    }

    #[test]
    fn hit_response_carries_ttl_and_age() {
        let u = CachedUser::new(
            Bytes::from_static(b"{}"),
            Some(HeaderValue::from_static("application/json")),
            false,
            std::time::Duration::from_secs(300),
        )
        .backdated(std::time::Duration::from_secs(10));
        let r = hit_response(u);
        assert_eq!(
            r.headers()[CACHE_STATUS],
            "openai-admin-gateway; hit; ttl=290"
        );
        assert_eq!(r.headers()["age"], "10");
        let long = hit_status(100_000);
        assert_eq!(long, "openai-admin-gateway; hit; ttl=100000");
        assert_eq!(r.headers()[CONTENT_LENGTH], "2");
    }

    #[tokio::test]
    async fn hits_and_stored_responses_keep_the_upstream_date() {
        let date = HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT");
        let u = CachedUser::new(
            Bytes::from_static(b"{\"id\":\"u\"}"),
            None,
            false,
            Duration::from_secs(300),
        )
        .with_date(Some(&date))
        .backdated(Duration::from_secs(10));
        assert_eq!(u.body().as_ref(), b"{\"id\":\"u\"}");
        assert_eq!(u.thread_copy().date(), Some(date.clone()));
        let stored = stored_response(&u);
        assert_eq!(stored.headers()[http::header::DATE], date);
        let r = hit_response(u);
        assert_eq!(r.headers()[http::header::DATE], date);
        assert_eq!(r.headers()["age"], "10");
        assert_eq!(r.headers()[CONTENT_LENGTH], "10");
        let body = http_body_util::BodyExt::collect(r.into_body())
            .await
            .expect("body");
        assert_eq!(body.to_bytes().as_ref(), b"{\"id\":\"u\"}");
        // Without one, none is made up here (hyper adds the current date).
        let plain = CachedUser::new(
            Bytes::from_static(b"{}"),
            None,
            false,
            Duration::from_secs(1),
        );
        assert!(hit_response(plain)
            .headers()
            .get(http::header::DATE)
            .is_none());
    }
}
