//! The cached route: `GET {prefix}/organization/users/{user_id}`.
//!
//! A miss runs one upstream fetch shared by every concurrent request for the
//! id. The fetch reads the body up to `cache.max_body_bytes`; only a 200 that
//! parses as an `organization.user` with the requested id is stored, as the
//! upstream's bytes. Anything else is handed to the waiting requests as it
//! came (small bodies shared, a larger one streamed to one request while the
//! others fetch for themselves), never stored.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{
    HeaderValue, ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE,
};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;

use arc_swap::ArcSwap;

use super::status::{hit_status, CacheStatus, CACHE_STATUS};
use super::store::{CacheKey, CachedUser, Lookup, UserCache};
use crate::body::{empty, full, prefixed, truncated, BoxBody};
use crate::config::CacheConfig;
use crate::error::{GatewayError, Result};
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
}

impl From<&CacheConfig> for Settings {
    fn from(c: &CacheConfig) -> Self {
        Self {
            ttl: c.ttl,
            max_body_bytes: c.max_body_bytes,
        }
    }
}

/// The cached route and everything it needs: the cache, the upstream it
/// fills from, metrics and its live settings. Nothing else of the gateway.
#[derive(Debug)]
pub struct UserRoute {
    /// The stored users.
    cache: UserCache,
    /// Where misses are fetched.
    upstream: Arc<Upstream>,
    /// Hit and miss counters.
    metrics: Arc<Metrics>,
    /// TTL and body bound, replaced on reload.
    settings: ArcSwap<Settings>,
}

/// A fetch that produced nothing to store, shared among its waiters.
#[derive(Debug)]
enum FetchFailure {
    /// The upstream failed (502/504/503 for everyone).
    Upstream(GatewayError),
    /// A complete (or broken-off) small response, replayed to every waiter.
    Replay(Replay),
    /// A large response: the first waiter streams it, the others refetch.
    Stream(Mutex<Option<Response<BoxBody>>>),
}

/// A buffered upstream response.
#[derive(Debug)]
struct Replay {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// The upstream broke off after `body`.
    broken: bool,
}

impl Replay {
    fn response(&self) -> Response<BoxBody> {
        let body = if self.broken {
            truncated(self.body.clone())
        } else {
            full(self.body.clone())
        };
        let mut r = Response::new(body);
        *r.status_mut() = self.status;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// What `Cache-Control` on the request asks of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directive {
    /// No directive that changes what the cache does.
    Normal,
    /// `no-cache`: fetch, then store.
    Refresh,
    /// `no-store`: fetch, don't store.
    NoStore,
}

/// Reads the request's `Cache-Control`: `no-store` wins over `no-cache`;
/// other directives are ignored.
pub fn directive(headers: &HeaderMap) -> Directive {
    let mut d = Directive::Normal;
    for v in headers.get_all(CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { continue };
        for token in v.split(',').map(str::trim) {
            if token.eq_ignore_ascii_case("no-store") {
                return Directive::NoStore;
            }
            if token.eq_ignore_ascii_case("no-cache") {
                d = Directive::Refresh;
            }
        }
    }
    d
}

impl UserRoute {
    /// The route over `cache`, filling from `upstream`.
    pub fn new(
        cache: UserCache,
        upstream: Arc<Upstream>,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Self {
        Self {
            cache,
            upstream,
            metrics,
            settings: ArcSwap::from_pointee(settings),
        }
    }

    /// The cache (purges, the entry gauge, evictions after writes).
    pub fn cache(&self) -> &UserCache {
        &self.cache
    }

    /// Applies reloaded settings; entries already stored keep their TTL.
    pub fn set_settings(&self, settings: Settings) {
        self.settings.store(Arc::new(settings));
    }

    /// Serves the cached route.
    pub async fn get_user(
        &self,
        headers: &HeaderMap,
        rest: &str,
        user_id: &str,
    ) -> Result<(Response<BoxBody>, CacheStatus)> {
        // The fetch paths are boxed: their futures (the upstream exchange,
        // moka's single-flight entry) are kilobytes, and inline they would make
        // every hit's request future that large too.
        match directive(headers) {
            Directive::Normal => {
                let key = self.cache.key(user_id);
                if let Some(u) = self.cache.get(&key).await {
                    self.metrics.cache_hit();
                    return Ok((hit_response(&u), CacheStatus::Hit));
                }
                Box::pin(self.lookup(headers, rest, user_id, key)).await
            }
            Directive::Refresh => Box::pin(self.refresh(headers, rest, user_id, true)).await,
            Directive::NoStore => Box::pin(self.refresh(headers, rest, user_id, false)).await,
        }
    }

    /// A miss (or a hit that turned up while this request got here): one
    /// shared fetch per key.
    async fn lookup(
        &self,
        headers: &HeaderMap,
        rest: &str,
        user_id: &str,
        key: CacheKey,
    ) -> Result<(Response<BoxBody>, CacheStatus)> {
        let mut upstream_id = None;
        let fetch = self.fetch(headers, rest, user_id, &mut upstream_id);
        // get_user has just looked the key up: go straight to the shared fetch.
        match self.cache.fetch_once(key, fetch).await {
            Lookup::Hit(u) => {
                self.metrics.cache_hit();
                Ok((hit_response(&u), CacheStatus::Hit))
            }
            Lookup::Filled(u) => {
                self.metrics.cache_miss();
                Ok((fetched_response(&u, upstream_id), CacheStatus::MissStored))
            }
            Lookup::Failed(f) => {
                self.metrics.cache_miss();
                let r = match &*f {
                    FetchFailure::Upstream(e) => return Err(e.duplicate()),
                    FetchFailure::Replay(replay) => replay.response(),
                    FetchFailure::Stream(slot) => match take(slot) {
                        Some(r) => r,
                        // Another waiter streams the shared response; this one
                        // fetches its own copy (large responses are not shared).
                        None => {
                            self.upstream
                                .send(Method::GET, rest, None, headers.clone(), empty())
                                .await?
                        }
                    },
                };
                Ok((r, CacheStatus::Miss))
            }
        }
    }

    /// `no-cache` (store = true) and `no-store` (store = false): always fetch.
    async fn refresh(
        &self,
        headers: &HeaderMap,
        rest: &str,
        user_id: &str,
        store: bool,
    ) -> Result<(Response<BoxBody>, CacheStatus)> {
        let key = self.cache.key(user_id);
        let mut upstream_id = None;
        match self.fetch(headers, rest, user_id, &mut upstream_id).await {
            Ok(u) => {
                let r = fetched_response(&u, upstream_id);
                if store {
                    self.cache.insert(key, u).await;
                    Ok((r, CacheStatus::RequestStored))
                } else {
                    Ok((r, CacheStatus::Request))
                }
            }
            Err(FetchFailure::Upstream(e)) => Err(e),
            Err(FetchFailure::Replay(replay)) => Ok((replay.response(), CacheStatus::Request)),
            Err(FetchFailure::Stream(slot)) => match take(&slot) {
                Some(r) => Ok((r, CacheStatus::Request)),
                None => Err(GatewayError::UpstreamUnavailable(
                    "response already taken".into(),
                )),
            },
        }
    }

    /// One upstream retrieve. Asks for an identity encoding so the body can be
    /// checked; records the upstream's request id for the caller.
    async fn fetch(
        &self,
        headers: &HeaderMap,
        rest: &str,
        user_id: &str,
        upstream_id: &mut Option<HeaderValue>,
    ) -> std::result::Result<CachedUser, FetchFailure> {
        let mut headers = headers.clone();
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        let resp = self
            .upstream
            .send(Method::GET, rest, None, headers, empty())
            .await
            .map_err(FetchFailure::Upstream)?;
        // Copy what is needed instead of holding the reload guard across awaits.
        let Settings {
            max_body_bytes: max,
            ttl,
        } = **self.settings.load();
        let (parts, mut body) = resp.into_parts();
        *upstream_id = parts.headers.get(X_REQUEST_ID).cloned();
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(stream(Response::from_parts(parts, body)));
        }
        let mut buf = BytesMut::with_capacity(declared.map_or(1024, |n| n as usize));
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return Err(replay(parts, buf.freeze(), true));
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            if buf.len() > max {
                let r = Response::from_parts(parts, prefixed(buf.freeze(), body));
                return Err(stream(r));
            }
        }
        // Stored bodies get an exact-size allocation (the buffer may have grown
        // past the body when no content-length was sent).
        let bytes = if buf.capacity() > buf.len() + 64 {
            Bytes::copy_from_slice(&buf)
        } else {
            buf.freeze()
        };
        if parts.status == StatusCode::OK && is_user(&bytes, user_id) && !encoded(&parts.headers) {
            Ok(CachedUser::new(
                bytes,
                parts.headers.get(CONTENT_TYPE).map(own),
                parts.headers.contains_key(CONTENT_ENCODING),
                ttl,
            ))
        } else {
            Err(replay(parts, bytes, false))
        }
    }
}

fn take(slot: &Mutex<Option<Response<BoxBody>>>) -> Option<Response<BoxBody>> {
    slot.lock().ok().and_then(|mut g| g.take())
}

/// A header value that owns its bytes. Values parsed by hyper are slices of
/// the connection's read buffer; storing one would pin that whole buffer
/// (kilobytes) for the life of the cache entry. The usual JSON type is a
/// static and costs nothing.
fn own(v: &HeaderValue) -> HeaderValue {
    if v == "application/json" {
        return HeaderValue::from_static("application/json");
    }
    HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| v.clone())
}

fn stream(r: Response<BoxBody>) -> FetchFailure {
    FetchFailure::Stream(Mutex::new(Some(r)))
}

fn replay(parts: http::response::Parts, body: Bytes, broken: bool) -> FetchFailure {
    FetchFailure::Replay(Replay {
        status: parts.status,
        headers: parts.headers,
        body,
        broken,
    })
}

/// A body we cannot check (compressed despite `identity`) is never stored.
fn encoded(h: &HeaderMap) -> bool {
    h.get(CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// The fields of `User` (OpenAPI `components.schemas.User`) that decide
/// whether a body is one, with their types.
#[derive(Deserialize)]
struct UserProbe<'a> {
    #[serde(borrow)]
    object: Cow<'a, str>,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow, default)]
    email: Option<Cow<'a, str>>,
    #[serde(default)]
    added_at: Option<i64>,
}

/// True when `body` is an `organization.user` whose id is `user_id`.
pub fn is_user(body: &[u8], user_id: &str) -> bool {
    match serde_json::from_slice::<UserProbe<'_>>(body) {
        // email and added_at are read only to reject bodies whose types are wrong.
        Ok(u) => {
            let _ = (u.email, u.added_at);
            u.object == "organization.user" && u.id == user_id
        }
        Err(_) => false,
    }
}

/// A stored user as a response (no cache headers yet).
fn stored_response(u: &CachedUser) -> Response<BoxBody> {
    let body = u.body();
    let mut r = Response::new(full(body.clone()));
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
    h.insert(CONTENT_LENGTH, int_value(body.len() as u64));
    r
}

/// A user this request fetched: the stored form, with the upstream's
/// request id (a forwarded response keeps it).
fn fetched_response(u: &CachedUser, upstream_id: Option<HeaderValue>) -> Response<BoxBody> {
    let mut r = stored_response(u);
    if let Some(id) = upstream_id {
        r.headers_mut().insert(X_REQUEST_ID, id);
    }
    r
}

/// A hit: the stored bytes plus `Cache-Status: ...; hit; ttl=N` and `Age`.
pub fn hit_response(u: &CachedUser) -> Response<BoxBody> {
    let now = Instant::now();
    let mut r = stored_response(u);
    // Age floors to whole seconds; ttl is counted from the same figure so
    // that age + ttl always equals the stored TTL.
    let age = u.age_secs(now);
    let ttl = u.ttl().as_secs().saturating_sub(age);
    let h = r.headers_mut();
    h.insert(CACHE_STATUS, hit_status(ttl));
    h.insert(http::header::AGE, int_value(age));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn hit_response_carries_ttl_and_age() {
        let u = CachedUser::new(
            Bytes::from_static(b"{}"),
            Some(HeaderValue::from_static("application/json")),
            false,
            std::time::Duration::from_secs(300),
        )
        .backdated(std::time::Duration::from_secs(10));
        let r = hit_response(&u);
        assert_eq!(
            r.headers()[CACHE_STATUS],
            "openai-admin-gateway; hit; ttl=290"
        );
        assert_eq!(r.headers()["age"], "10");
        let long = hit_status(100_000);
        assert_eq!(long, "openai-admin-gateway; hit; ttl=100000");
        assert_eq!(r.headers()[CONTENT_LENGTH], "2");
    }
}
