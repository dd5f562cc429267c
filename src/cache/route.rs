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

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{
    HeaderValue, ACCEPT, ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH,
    CONTENT_TYPE,
};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;

use arc_swap::ArcSwap;

use super::status::{hit_status, CacheStatus, CACHE_STATUS};
use super::store::{CacheKey, CachedUser, Lookup, UserCache};
use crate::body::{empty, full, prefixed, BoxBody};
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

/// What a fetch got that is not a user to store: the answer for the
/// request that made it (the upstream's response, streamed on when large or
/// broken off) or the failure to report.
pub(super) type Unstored = Result<Response<BoxBody>>;

/// How a shared fill ended when it stored nothing, as every request that
/// waited on it sees it.
#[derive(Debug)]
pub(super) enum FillFailed {
    /// No answer: the upstream was unreachable, slow past the deadline,
    /// overloaded or refused the key. Shared: nobody's headers shaped it.
    Error(GatewayError),
    /// The upstream answered something that is not the user, with this
    /// status. The request that fetched it answers with it; a waiter
    /// fetches for itself (or serves a stale entry, when allowed).
    Answer(StatusCode),
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
///
/// Works on the bytes: a value with a non-ASCII byte elsewhere in it
/// (`to_str` fails on those) still has its `no-store` honoured.
pub fn directive(headers: &HeaderMap) -> Directive {
    let mut d = Directive::Normal;
    for v in headers.get_all(CACHE_CONTROL) {
        for token in v.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"no-store") {
                return Directive::NoStore;
            }
            if token.eq_ignore_ascii_case(b"no-cache") {
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
                        return Ok((hit_response(&u), CacheStatus::Hit));
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
                Ok((hit_response(&u), CacheStatus::Hit))
            }
            Lookup::Filled(u) => {
                self.metrics.cache_miss();
                Ok((fetched_response(&u, upstream_id), CacheStatus::MissStored))
            }
            Lookup::Failed(failed) => match (&*failed, mine) {
                (FillFailed::Error(e), _) => {
                    self.metrics.cache_miss();
                    Err(e.duplicate())
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

    /// The shared fill: a [`fetch`](Self::fetch) whose user is stored and
    /// shared; anything else is kept in `mine` for the request that ran it
    /// (only it, the leader, runs this), and what the waiters learn is a
    /// [`FillFailed`].
    pub(super) async fn fill(
        &self,
        headers: &HeaderMap,
        rest: &str,
        id: &str,
        upstream_id: &mut Option<HeaderValue>,
        mine: &mut Option<Response<BoxBody>>,
    ) -> std::result::Result<CachedUser, FillFailed> {
        match self.fetch(headers, rest, id, upstream_id).await {
            Ok(u) => Ok(u),
            Err(Err(e)) => Err(FillFailed::Error(e)),
            Err(Ok(answer)) => {
                let status = answer.status();
                *mine = Some(answer);
                Err(FillFailed::Answer(status))
            }
        }
    }

    /// One upstream retrieve, as the gateway's own request, done within
    /// `upstream.timeout_ms` from start to the last byte read (504 for a
    /// fill that stalls). One deadline bounds the whole fill: the exchange
    /// waits for its slot and headers until it (a headers timeout, counted
    /// by the exchange), the body is read until it (a body timeout). The
    /// body is read up to `cache.max_body_bytes`; a 200 that is the user
    /// asked for comes back as a [`CachedUser`], anything else as this
    /// request's answer. Records the upstream's request id for the caller.
    pub(super) async fn fetch(
        &self,
        headers: &HeaderMap,
        rest: &str,
        id: &str,
        upstream_id: &mut Option<HeaderValue>,
    ) -> std::result::Result<CachedUser, Unstored> {
        let deadline = tokio::time::Instant::now() + self.upstream.timeout();
        let resp = self
            .upstream
            .send_by(deadline, Method::GET, rest, fill_headers(headers), empty())
            .await
            .map_err(Err)?;
        match tokio::time::timeout_at(deadline, self.read_fill(resp, id, upstream_id)).await {
            Ok(r) => r,
            Err(_) => {
                self.metrics.upstream_timeout("body");
                Err(Err(GatewayError::UpstreamTimeout))
            }
        }
    }

    /// Reads a fill's response: the user to store, or this request's answer.
    async fn read_fill(
        &self,
        resp: Response<BoxBody>,
        id: &str,
        upstream_id: &mut Option<HeaderValue>,
    ) -> std::result::Result<CachedUser, Unstored> {
        // Copy what is needed instead of holding the reload guard across awaits.
        let Settings {
            max_body_bytes: max,
            ttl,
            ..
        } = **self.settings.load();
        let (parts, mut body) = resp.into_parts();
        *upstream_id = parts.headers.get(X_REQUEST_ID).cloned();
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(Ok(Response::from_parts(parts, body)));
        }
        let mut buf = BytesMut::with_capacity(declared.map_or(1024, |n| n as usize));
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                // Nothing has been sent yet: a broken answer is no answer.
                // Relayed as a 200, hyper would cut the connection before its
                // head and the client would get nothing at all.
                let broke = "upstream body broke off before its end";
                return Err(Err(GatewayError::UpstreamUnavailable(broke.into())));
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            if buf.len() > max {
                return Err(Ok(Response::from_parts(
                    parts,
                    prefixed(buf.freeze(), body),
                )));
            }
        }
        // Stored bodies get an exact-size allocation (the buffer may have grown
        // past the body when no content-length was sent).
        let bytes = if buf.capacity() > buf.len() + 64 {
            Bytes::copy_from_slice(&buf)
        } else {
            buf.freeze()
        };
        if parts.status == StatusCode::OK && is_user(&bytes, id) && !encoded(&parts.headers) {
            Ok(CachedUser::new(
                bytes,
                parts.headers.get(CONTENT_TYPE).map(own),
                parts.headers.contains_key(CONTENT_ENCODING),
                ttl,
            ))
        } else {
            Err(Ok(Response::from_parts(parts, full(bytes))))
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

/// The gateway's user agent on its own requests.
const USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("openai-admin-gateway/", env!("CARGO_PKG_VERSION")));

/// The headers of a cache fill: fixed, so no client's headers shape what
/// other clients are served. The upstream adds the admin key. The client's
/// `x-request-id` rides along when it is a plain token (for tracing).
pub fn fill_headers(client: &HeaderMap) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(4);
    h.insert(ACCEPT, HeaderValue::from_static("application/json"));
    h.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    h.insert(http::header::USER_AGENT, USER_AGENT);
    if let Some(id) = client.get(X_REQUEST_ID).filter(|v| valid_request_id(v)) {
        h.insert(X_REQUEST_ID, id.clone());
    }
    h
}

/// 1 to 128 visible ASCII characters.
fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=128).contains(&b.len()) && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

/// True when the request carries a header that changes the answer: a
/// `Range`, any `If-*` precondition, or an `OpenAI-Organization` /
/// `OpenAI-Project` that picks another tenant. Such a request bypasses the
/// cache and is forwarded as sent.
pub fn bypasses(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::RANGE)
        || headers.contains_key("openai-organization")
        || headers.contains_key("openai-project")
        || headers.keys().any(|k| k.as_str().starts_with("if-"))
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
pub(super) fn stored_response(u: &CachedUser) -> Response<BoxBody> {
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
