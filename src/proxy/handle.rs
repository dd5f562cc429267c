//! [`Gateway::handle`] and its phases, each free to answer early:
//! 1 route (method, prefix, canonical path, classification),
//! 2 authenticate, 3 the client's rate limit and scope, 4 serve.

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderMap, Request, Response, StatusCode};
use tracing::{debug, Instrument};

use super::access::{audit, Access, ConnectionRef};
use super::canon::{canonicalize, decode_segment};
use super::eviction::{resolve, Eviction, Outcome, Planned};
use super::route::{allowed_method, classify, strip_prefix, Route};
use super::unfinished::Unfinished;
use super::Gateway;
use crate::body::{BoxBody, RequestBody};
use crate::cache::{bypasses, CacheStatus, CACHE_STATUS};
use crate::error::{GatewayError, Result};
use crate::headers::X_REQUEST_ID;
use crate::path::CanonicalPath;
use crate::policy::Decision;
use crate::runtime::spawn_lasting;
use crate::telemetry::span::{self as trace_span, TraceId};
use crate::upstream::{buffer, Caller};

/// What a request's phases need to know about where it is going.
struct Target<'a> {
    /// The path after the prefix as the client sent it (what is forwarded;
    /// routing and scopes read its canonical spelling).
    raw: &'a str,
    /// The raw query, if any.
    query: Option<&'a str>,
}

impl Gateway {
    /// Answers one request. Never fails: an error becomes an OpenAI-shaped
    /// response. The request's account is written when it ends: after the
    /// response body, or wherever hyper drops this future.
    pub async fn handle<B: RequestBody>(&self, req: Request<B>) -> Response<BoxBody> {
        self.handle_on(req, None).await
    }

    /// [`Gateway::handle`] for a request that came on `conn`.
    pub async fn handle_on<B: RequestBody>(
        &self,
        req: Request<B>,
        conn: Option<ConnectionRef>,
    ) -> Response<BoxBody> {
        let shared = &*self.shared;
        let traced = trace_span::server(req.method(), req.uri().path(), req.headers());
        let mut access = Access::open(
            &shared.metrics_handles,
            conn,
            req.method(),
            req.uri().path(),
            traced,
        );
        // In the SERVER span when there is one. Boxed then: the span
        // wrapper would add its pointer to every request's future.
        let handled = if let Some(t) = &access.traced {
            let t = Arc::clone(t);
            Box::pin(trace_span::InSpan::new(
                t,
                self.handle_inner(req, &mut access),
            ))
            .await
        } else {
            self.handle_inner(req, &mut access).await
        };
        let resp = match handled {
            Ok(r) => r,
            Err(e) => self.refused(e, &mut access),
        };
        access.respond(resp, &shared.ids)
    }

    async fn handle_inner<B: RequestBody>(
        &self,
        req: Request<B>,
        access: &mut Access,
    ) -> Result<Response<BoxBody>> {
        // 1. Route. The URI is cloned (reference counts, no copy) so that
        //    the request can move on while the path is borrowed.
        if !allowed_method(req.method()) {
            return Err(GatewayError::MethodNotAllowed);
        }
        let uri = req.uri().clone();
        let raw = strip_prefix(uri.path(), &self.shared.prefix).ok_or(GatewayError::NotFound)?;
        let canonical = canonicalize(raw)?;
        let route = classify(req.method(), &canonical, uri.query().is_some())?;
        access.route = route.class();
        // 2, 3. Who is asking, and may they?
        self.admit(&req, &canonical, access).await?;
        // 4. Serve.
        let target = Target {
            raw,
            query: uri.query(),
        };
        self.serve(route, req, &target, access).await
    }

    /// Authenticates the client, then takes one request from its budget
    /// (every request counts) and checks its scope against the canonical
    /// path.
    async fn admit<B: RequestBody>(
        &self,
        req: &Request<B>,
        canonical: &CanonicalPath<'_>,
        access: &mut Access,
    ) -> Result<()> {
        let client = self.shared.clients.load().authenticate(req.headers())?;
        let client = &**access.client.insert(client);
        access.org = u8::try_from(client.select_org(req.headers())?)
            .map_err(|_| GatewayError::OrganizationNotAllowed)?;
        if let Some(limiter) = &client.limiter {
            let d = limiter.decide().await;
            access.limit = Some(d);
            if let Decision::Deny { retry_after } = d {
                return Err(GatewayError::RateLimited { retry_after });
            }
        }
        match &client.scope {
            Some(scope) if !scope.allows(req.method(), canonical) => Err(GatewayError::Forbidden),
            _ => Ok(()),
        }
    }

    async fn serve<B: RequestBody>(
        &self,
        route: Route<'_>,
        req: Request<B>,
        target: &Target<'_>,
        access: &mut Access,
    ) -> Result<Response<BoxBody>> {
        match route {
            Route::GetUser { user_id } => match cacheable_id(user_id, req.headers()) {
                Some(id) => self.get_user(&req, target, &id, access).await,
                // Comment on every bypass: a header that changes the
                // answer, or an id that is not UTF-8 once decoded (it can
                // never match a stored user). Forwarded as sent.
                None => Box::pin(self.forward(req, target, access)).await,
            },
            // Boxed: a write's and a forward's futures (body buffering, the
            // upstream exchange) would otherwise make every hit's future
            // larger.
            Route::Write { plan } => match Planned::of(plan) {
                Some(plan) => Box::pin(self.write_user(req, target, plan, access)).await,
                None => Box::pin(self.forward(req, target, access)).await,
            },
            Route::GetUserUncached | Route::Forward => {
                Box::pin(self.forward(req, target, access)).await
            }
        }
    }

    async fn get_user<B: RequestBody>(
        &self,
        req: &Request<B>,
        target: &Target<'_>,
        id: &str,
        access: &mut Access,
    ) -> Result<Response<BoxBody>> {
        access.forwarded = true;
        let users = &self.shared.users;
        let caller = access.caller()?;
        let (resp, status) = users
            .get_user(caller, req.headers(), target.raw, id)
            .await?;
        access.cache = Some(status);
        if status != CacheStatus::Hit {
            access.upstream_status = Some(resp.status());
        }
        Ok(with_cache_status(resp, status))
    }

    /// Forwards unchanged (bar hop-by-hop headers and credentials), streaming.
    async fn forward<B: RequestBody>(
        &self,
        req: Request<B>,
        target: &Target<'_>,
        access: &mut Access,
    ) -> Result<Response<BoxBody>> {
        let (parts, body) = req.into_parts();
        let upstream = &self.shared.upstream;
        let body = buffer::request(body, &parts.headers, upstream.timeout()).await?;
        access.forwarded = true;
        let resp = upstream
            .send(
                access.caller()?,
                parts.method,
                target.raw,
                target.query,
                parts.headers,
                body,
            )
            .await?;
        access.upstream_status = Some(resp.status());
        let resp = buffer::response(resp).await?;
        access.cache = Some(CacheStatus::Bypass);
        Ok(with_cache_status(resp, CacheStatus::Bypass))
    }

    /// A write that can change cached users (see `evict`). The exchange
    /// and everything that must follow it (the evictions, the audit line)
    /// run on a task of their own, so a client that hangs up can not undo
    /// them; this request only awaits the result. The evicted generations
    /// (or the epoch) are bumped before the write is sent and again once it
    /// answers 2xx or its outcome is unknown (see `eviction`), so no fill
    /// racing the write can store the old user.
    async fn write_user<B: RequestBody>(
        &self,
        req: Request<B>,
        target: &Target<'_>,
        plan: Planned,
        access: &mut Access,
    ) -> Result<Response<BoxBody>> {
        let write = Write {
            gateway: self.clone(),
            plan,
            raw: target.raw.to_owned(),
            query: target.query.map(str::to_owned),
            audit_path: access.take_audit(),
            client: access.client_label(),
            caller: access.caller()?.clone(),
            trace_id: access.trace_id(),
        };
        access.forwarded = true;
        // In the request's span: the write's exchange is a CLIENT span
        // under it even when the client has left.
        let done = spawn_lasting(write.run(req).in_current_span())
            .await
            .map_err(|e| match e.is_cancelled() {
                // Stopped at the end of the shutdown grace period: no answer in time.
                true => GatewayError::UpstreamTimeout,
                false => {
                    GatewayError::UpstreamUnavailable(format!("write task failed: {e}").into())
                }
            })?;
        access.upstream_status = done.upstream_status;
        access.cache = Some(CacheStatus::Bypass);
        if let Some(f) = done.failure {
            access.failure = Some(f);
        }
        Ok(done.response)
    }

    /// The response for a refused or failed request; upstream failures are
    /// kept for the access line (with its request id), refusals logged at
    /// debug.
    fn refused(&self, e: GatewayError, access: &mut Access) -> Response<BoxBody> {
        if e.status().is_server_error() {
            access.failure = Some(e.to_string());
        } else {
            debug!(cause = %e, "request refused");
        }
        if let (GatewayError::RateLimited { .. }, Some(c)) = (&e, &access.client) {
            self.shared.metrics.rate_limited(&c.name);
        }
        e.into_response()
    }
}

/// The decoded id when the request may use the cache: no header that
/// changes the answer, and an id that decodes to UTF-8.
fn cacheable_id<'a>(user_id: &'a str, headers: &HeaderMap) -> Option<Cow<'a, str>> {
    if bypasses(headers) {
        return None;
    }
    decode_segment(user_id)
}

/// A user write, owned by its own task.
struct Write {
    /// The gateway (cache, upstream, bus, metrics).
    gateway: Gateway,
    /// What the write evicts, as read from its path.
    plan: Planned,
    /// The path after the prefix as sent.
    raw: String,
    /// The raw query.
    query: Option<String>,
    /// The path for the audit line.
    audit_path: Option<String>,
    /// The client's name for the audit line.
    client: crate::metrics::ClientLabel,
    /// Who the write is sent for.
    caller: Caller,
    /// The request's trace id, for the audit line.
    trace_id: TraceId,
}

/// What a write task hands back.
struct Written {
    /// The answer, with its `x-request-id` already set.
    response: Response<BoxBody>,
    /// The upstream's status, when it answered.
    upstream_status: Option<StatusCode>,
    /// Why the exchange failed, for the access line.
    failure: Option<String>,
}

impl Write {
    async fn run<B: RequestBody>(self, req: Request<B>) -> Written {
        let shared = &*self.gateway.shared;
        let (parts, body) = req.into_parts();
        let method = parts.method.clone();
        let window = shared.upstream.timeout();
        // Evicts and audits the write if this task is dropped unfinished.
        let mut unfinished = Unfinished::new(
            &self.gateway,
            &method,
            self.audit_path.as_deref(),
            &self.client,
            self.caller.org(),
        );
        unfinished.trace_id = self.trace_id;
        let mut upstream_status = None;
        let (mut eviction, mut outcome) = (Eviction::Nothing, Outcome::NotSent);
        let result = async {
            let upstream = &shared.upstream;
            let (body, e) = resolve(&self.plan, body, &parts.headers, window).await?;
            eviction = e;
            unfinished.eviction = eviction.clone();
            eviction.before(&self.gateway, self.caller.org()).await;
            outcome = Outcome::Unknown;
            let resp = upstream
                .send(
                    &self.caller,
                    parts.method,
                    &self.raw,
                    self.query.as_deref(),
                    parts.headers,
                    body,
                )
                .await?;
            upstream_status = Some(resp.status());
            outcome = Outcome::of(upstream_status);
            Ok::<_, GatewayError>(resp)
        }
        .await;
        unfinished.upstream_status = upstream_status;
        eviction
            .after(&self.gateway, self.caller.org(), outcome, window)
            .await;
        let result = match result {
            Ok(resp) => buffer::response(resp).await,
            Err(e) => Err(e),
        };
        let (mut response, failure) = match result {
            Ok(resp) => (resp, None),
            Err(e) => {
                let failure = e.status().is_server_error().then(|| e.to_string());
                (e.into_response(), failure)
            }
        };
        if !response.headers().contains_key(X_REQUEST_ID) {
            response
                .headers_mut()
                .insert(X_REQUEST_ID, shared.ids.next());
        }
        if let Some(path) = &self.audit_path {
            let id = response.headers().get(X_REQUEST_ID);
            let request_id = id.and_then(|v| v.to_str().ok()).unwrap_or("-");
            let status = response.status().as_u16();
            audit(
                request_id,
                self.client.as_str(),
                self.caller.org().name(),
                method.as_str(),
                path,
                upstream_status,
                status,
                &eviction.audit(),
                self.trace_id,
            );
        }
        unfinished.finished();
        Written {
            response: with_cache_status(response, CacheStatus::Bypass),
            upstream_status,
            failure,
        }
    }
}

/// Adds `Cache-Status` unless the route set its own (hits and stale
/// answers carry a `ttl`).
fn with_cache_status(mut resp: Response<BoxBody>, status: CacheStatus) -> Response<BoxBody> {
    if !resp.headers().contains_key(CACHE_STATUS) {
        resp.headers_mut().insert(CACHE_STATUS, status.header());
    }
    resp
}
