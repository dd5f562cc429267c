//! [`Gateway::handle`] and its phases, each free to answer early:
//! 1 route, 2 authenticate, 3 the client's rate limit and scope, 4 serve.

use http::{Request, Response};
use hyper::body::Incoming;
use tracing::debug;

use super::access::Access;
use super::route::{classify, Route};
use super::Gateway;
use crate::body::BoxBody;
use crate::cache::{CacheStatus, CACHE_STATUS};
use crate::error::{GatewayError, Result};
use crate::policy::Decision;
use crate::upstream::buffer;

impl Gateway {
    /// Answers one request. Never fails: an error becomes an OpenAI-shaped
    /// response. The request's account is written when `access` drops,
    /// here or wherever hyper drops this future.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody> {
        let shared = &*self.shared;
        let mut access = Access::open(&shared.metrics, req.method(), req.uri().path());
        let resp = match self.handle_inner(req, &mut access).await {
            Ok(r) => r,
            Err(e) => self.refused(e, &mut access),
        };
        access.respond(resp, &shared.ids)
    }

    async fn handle_inner(
        &self,
        req: Request<Incoming>,
        access: &mut Access<'_>,
    ) -> Result<Response<BoxBody>> {
        // 1. Route. The URI is cloned (reference counts, no copy) so that
        //    the request can move on while the path is borrowed.
        let uri = req.uri().clone();
        let has_query = uri.query().is_some();
        let (route, rest) = classify(req.method(), uri.path(), has_query, &self.shared.prefix)?;
        access.route = route.class();
        // 2, 3. Who is asking, and may they?
        self.admit(&req, rest, access).await?;
        // 4. Serve.
        self.serve(route, req, rest, uri.query(), access).await
    }

    /// Authenticates the client, then takes one request from its budget
    /// (every request counts) and checks its scope.
    async fn admit(
        &self,
        req: &Request<Incoming>,
        rest: &str,
        access: &mut Access<'_>,
    ) -> Result<()> {
        let client = self.shared.clients.load().authenticate(req.headers())?;
        access.client = Some(client.clone());
        if let Some(limiter) = &client.limiter {
            let d = limiter.decide().await;
            access.limit = Some(d);
            if let Decision::Deny { retry_after } = d {
                return Err(GatewayError::RateLimited { retry_after });
            }
        }
        match &client.scope {
            Some(scope) if !scope.allows(req.method(), rest) => Err(GatewayError::Forbidden),
            _ => Ok(()),
        }
    }

    async fn serve(
        &self,
        route: Route<'_>,
        req: Request<Incoming>,
        rest: &str,
        query: Option<&str>,
        access: &mut Access<'_>,
    ) -> Result<Response<BoxBody>> {
        match route {
            Route::GetUser { user_id } => {
                access.forwarded = true;
                let users = &self.shared.users;
                let (resp, status) = users.get_user(req.headers(), rest, user_id).await?;
                access.cache = Some(status);
                if status != CacheStatus::Hit {
                    access.upstream_status = Some(resp.status());
                }
                Ok(with_cache_status(resp, status))
            }
            // Forwarding is boxed: its future (body buffering, the upstream
            // exchange) would otherwise make every cache hit's future larger.
            Route::UserWrite { user_id } => {
                let resp = Box::pin(self.forward(req, rest, query, access)).await?;
                if resp.status().is_success() {
                    Box::pin(self.shared.users.cache().invalidate(user_id)).await;
                    self.shared.metrics.invalidation("write");
                }
                Ok(resp)
            }
            Route::GetUserWithQuery | Route::Forward => {
                Box::pin(self.forward(req, rest, query, access)).await
            }
        }
    }

    /// Forwards unchanged (bar hop-by-hop headers and credentials), streaming.
    async fn forward(
        &self,
        req: Request<Incoming>,
        rest: &str,
        query: Option<&str>,
        access: &mut Access<'_>,
    ) -> Result<Response<BoxBody>> {
        let (parts, body) = req.into_parts();
        let upstream = &self.shared.upstream;
        let body = buffer::request(body, &parts.headers, upstream.timeout()).await?;
        access.forwarded = true;
        let resp = upstream
            .send(parts.method, rest, query, parts.headers, body)
            .await?;
        access.upstream_status = Some(resp.status());
        let resp = buffer::response(resp).await;
        access.cache = Some(CacheStatus::Bypass);
        Ok(with_cache_status(resp, CacheStatus::Bypass))
    }

    /// The response for a refused or failed request; upstream failures are
    /// kept for the access line (with its request id), refusals logged at
    /// debug.
    fn refused(&self, e: GatewayError, access: &mut Access<'_>) -> Response<BoxBody> {
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

fn with_cache_status(mut resp: Response<BoxBody>, status: CacheStatus) -> Response<BoxBody> {
    if status != CacheStatus::Hit {
        resp.headers_mut().insert(CACHE_STATUS, status.header());
    }
    resp
}
