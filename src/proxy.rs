//! The request handler: [`Gateway`] is the hyper service for the public
//! listener.
//!
//! [`Gateway::handle`] never fails: it runs [`Gateway::handle_inner`], turns
//! any [`GatewayError`] into an OpenAI-shaped response, then adds the
//! common headers, counts the request and writes one access log line (plus
//! an audit line for requests that change something upstream).
//!
//! `handle_inner` reads as numbered phases, each free to answer early:
//! 1 classify the route, 2 authenticate, 3 apply the client's rate limit and
//! scope, 4 serve (cache / write-then-evict / forward).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tracing::{debug, info, warn};

use crate::auth::{Client, ClientTable};
use crate::body::BoxBody;
use crate::buffer;
use crate::cache::UserCache;
use crate::config::Config;
use crate::error::{GatewayError, Result};
use crate::headers::{RequestIds, X_REQUEST_ID};
use crate::metrics::{ClientLabel, Metrics};
use crate::ratelimit::Decision;
use crate::route::{classify, Route, RouteClass};
use crate::store::RedisStore;
use crate::upstream::Upstream;
use crate::users::{self, CacheStatus, CACHE_STATUS};

/// Settings that a reload replaces as one unit.
#[derive(Debug)]
pub struct Live {
    /// Clients by key digest, with their limiters and scopes.
    pub clients: ClientTable,
    /// TTL for newly stored users.
    pub cache_ttl: Duration,
    /// Larger user responses are passed through unstored.
    pub max_body_bytes: usize,
}

/// State shared by every request.
#[derive(Debug)]
pub struct Shared {
    /// Client-facing path prefix.
    pub prefix: String,
    /// Reloadable settings.
    pub live: ArcSwap<Live>,
    /// The retrieve-user cache.
    pub cache: UserCache,
    /// The upstream client.
    pub upstream: Upstream,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Request id source for gateway-made responses.
    pub ids: RequestIds,
    /// Shared rate-limit store (`[redis]`), fixed for the process lifetime.
    pub store: Option<Arc<RedisStore>>,
}

/// The public listener's service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// Everything requests share.
    shared: Arc<Shared>,
}

/// What one request did, gathered for the log line and metrics.
struct Outcome {
    route: RouteClass,
    client: Option<Arc<Client>>,
    limit: Option<Decision>,
    cache: Option<CacheStatus>,
    upstream_status: Option<StatusCode>,
    /// The request was handed to the upstream (it may have changed something).
    forwarded: bool,
    /// Why the upstream exchange failed (502/503/504), for the log line.
    failure: Option<String>,
}

impl Gateway {
    /// Builds the gateway's shared state from a validated config.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> std::io::Result<Gateway> {
        let upstream = Upstream::new(&config.upstream, metrics.clone())?;
        let store = match &config.redis {
            Some(r) => Some(RedisStore::new(r, metrics.clone()).map_err(std::io::Error::other)?),
            None => None,
        };
        Ok(Gateway {
            shared: Arc::new(Shared {
                prefix: config.server.path_prefix.clone(),
                live: ArcSwap::from_pointee(Self::live(config, None, store.as_ref())),
                store,
                cache: UserCache::new(config.cache.max_entries),
                upstream,
                metrics,
                ids: RequestIds::new(),
            }),
        })
    }

    fn live(config: &Config, previous: Option<&Live>, store: Option<&Arc<RedisStore>>) -> Live {
        Live {
            clients: ClientTable::build(&config.clients, previous.map(|p| &p.clients), store),
            cache_ttl: config.cache.ttl,
            max_body_bytes: config.cache.max_body_bytes,
        }
    }

    /// Applies the reloadable parts of `config`: clients, keys, limits,
    /// scopes, cache TTL and body bound, the admin key. The cache is kept.
    pub fn apply(&self, config: &Config) {
        let previous = self.shared.live.load();
        let next = Self::live(config, Some(&previous), self.shared.store.as_ref());
        self.shared.live.store(Arc::new(next));
        self.shared
            .upstream
            .set_admin_key(config.upstream.admin_key.clone());
    }

    /// The shared state (admin listener, tests).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Answers one request. Never fails.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody> {
        let start = Instant::now();
        let method = req.method().clone();
        let audit_path =
            (!matches!(method, Method::GET | Method::HEAD)).then(|| req.uri().path().to_owned());
        let metrics = &self.shared.metrics;
        metrics.in_flight().inc();
        let mut out = Outcome {
            route: RouteClass::Rejected,
            client: None,
            limit: None,
            cache: None,
            upstream_status: None,
            forwarded: false,
            failure: None,
        };
        let resp = match self.handle_inner(req, &mut out).await {
            Ok(r) => r,
            Err(e) => {
                if e.status().is_server_error() {
                    // Logged with the access line (and its request id) in finish().
                    out.failure = Some(e.to_string());
                } else {
                    debug!(cause = %e, "request refused");
                }
                if let GatewayError::RateLimited { .. } = e {
                    if let Some(c) = &out.client {
                        metrics.rate_limited(&c.name);
                    }
                }
                e.into_response()
            }
        };
        let resp = self.finish(resp, &method, &out, start, audit_path);
        metrics.in_flight().dec();
        resp
    }

    async fn handle_inner(
        &self,
        req: Request<Incoming>,
        out: &mut Outcome,
    ) -> Result<Response<BoxBody>> {
        let shared = &*self.shared;
        // 1. Route (no allocation: borrows the raw path).
        let uri = req.uri().clone();
        let (route, rest) = classify(
            req.method(),
            uri.path(),
            uri.query().is_some(),
            &shared.prefix,
        )?;
        out.route = route.class();

        // 2. Authenticate.
        let live = shared.live.load();
        let client = live.clients.authenticate(req.headers())?;
        out.client = Some(client.clone());

        // 3. Limits: every request counts against the budget, then the scope.
        if let Some(limiter) = &client.limiter {
            let d = limiter.decide().await;
            out.limit = Some(d);
            if let Decision::Deny { retry_after } = d {
                return Err(GatewayError::RateLimited { retry_after });
            }
        }
        if let Some(scope) = &client.scope {
            if !scope.allows(req.method(), rest) {
                return Err(GatewayError::Forbidden);
            }
        }
        drop(live);

        // 4. Serve.
        match route {
            Route::GetUser { user_id } => {
                out.forwarded = true;
                let (resp, status) = users::get_user(shared, req.headers(), rest, user_id).await?;
                out.cache = Some(status);
                if status != CacheStatus::Hit {
                    out.upstream_status = Some(resp.status());
                }
                Ok(with_cache_status(resp, status))
            }
            // Forwarding is boxed: its future (body buffering, the upstream
            // exchange) would otherwise make every cache hit's future larger.
            Route::UserWrite { user_id } => {
                let resp = Box::pin(self.forward(req, rest, uri.query(), out)).await?;
                if resp.status().is_success() {
                    Box::pin(shared.cache.invalidate(user_id)).await;
                    shared.metrics.invalidation("write");
                }
                Ok(resp)
            }
            Route::GetUserWithQuery | Route::Forward => {
                Box::pin(self.forward(req, rest, uri.query(), out)).await
            }
        }
    }

    /// Forwards unchanged (bar hop-by-hop headers and credentials), streaming.
    async fn forward(
        &self,
        req: Request<Incoming>,
        rest: &str,
        query: Option<&str>,
        out: &mut Outcome,
    ) -> Result<Response<BoxBody>> {
        let (parts, body) = req.into_parts();
        let upstream = &self.shared.upstream;
        let body = buffer::request(body, &parts.headers, upstream.timeout()).await?;
        out.forwarded = true;
        let resp = upstream
            .send(parts.method, rest, query, parts.headers, body)
            .await?;
        out.upstream_status = Some(resp.status());
        let resp = buffer::response(resp).await;
        out.cache = Some(CacheStatus::Bypass);
        Ok(with_cache_status(resp, CacheStatus::Bypass))
    }

    /// Common headers, metrics and the log lines.
    fn finish(
        &self,
        mut resp: Response<BoxBody>,
        method: &Method,
        out: &Outcome,
        start: Instant,
        audit_path: Option<String>,
    ) -> Response<BoxBody> {
        let shared = &self.shared;
        if !resp.headers().contains_key(X_REQUEST_ID) {
            resp.headers_mut().insert(X_REQUEST_ID, shared.ids.next());
        }
        if let (Some(c), Some(d)) = (&out.client, out.limit) {
            if let Some(l) = &c.limiter {
                l.annotate(d, resp.headers_mut());
            }
        }
        let elapsed = start.elapsed();
        let anonymous;
        let client = match &out.client {
            Some(c) => &c.name,
            None => {
                anonymous = ClientLabel::anonymous();
                &anonymous
            }
        };
        let status = resp.status();
        shared
            .metrics
            .request(out.route.as_str(), method, status, client, elapsed);
        let request_id = resp
            .headers()
            .get(X_REQUEST_ID)
            .map(header_str)
            .unwrap_or("-");
        let cache = out.cache.map_or("-", CacheStatus::as_str);
        let latency_us = elapsed.as_micros() as u64;
        let (route, status_code) = (out.route.as_str(), status.as_u16());
        match &out.failure {
            None => info!(
                target: "openai_admin_gateway::access",
                request_id, client = client.as_str(), method = method.as_str(), route,
                status = status_code, cache, latency_us,
            ),
            Some(error) => warn!(
                target: "openai_admin_gateway::access",
                request_id, client = client.as_str(), method = method.as_str(), route,
                status = status_code, cache, latency_us, error = error.as_str(),
            ),
        }
        if let (Some(path), true) = (audit_path, out.forwarded) {
            // Anything but GET/HEAD may have changed something upstream.
            // upstream_status 0: no response (error or timeout), so the
            // change may or may not have happened.
            info!(
                target: "openai_admin_gateway::audit",
                request_id,
                client = client.as_str(),
                method = method.as_str(),
                path,
                upstream_status = out.upstream_status.map_or(0, |s| s.as_u16()),
                status = status.as_u16(),
            );
        }
        resp
    }
}

fn header_str(v: &HeaderValue) -> &str {
    v.to_str().unwrap_or("-")
}

fn with_cache_status(mut resp: Response<BoxBody>, status: CacheStatus) -> Response<BoxBody> {
    if status != CacheStatus::Hit {
        resp.headers_mut().insert(CACHE_STATUS, status.header());
    }
    resp
}

impl hyper::service::Service<Request<Incoming>> for Gateway {
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let gw = self.clone();
        Box::pin(async move { Ok(gw.handle(req).await) })
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
        // Every request's future is boxed and moved: the fetch, forward and
        // Redis paths are boxed so that a hit does not carry their
        // kilobytes (it was 6.6 KiB before they were).
        let cfg = Config::parse("", std::path::Path::new("."), &|n| {
            (n == "OPENAI_ADMIN_KEY").then(|| "sk-admin-x".to_string())
        })
        .expect("default config");
        let gw = Gateway::new(&cfg, Arc::new(Metrics::new())).expect("gateway");
        let size = future_size(|r: Request<Incoming>| gw.handle(r));
        assert!(size <= 3072, "Gateway::handle's future is {size} bytes");
    }
}
