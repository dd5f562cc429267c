//! The admin listener: `/healthz`, `/readyz`, `/metrics`, and cache purges.
//! Plain HTTP/1.1 on `server.admin_listen`; none of these paths exist on the
//! public listener.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::body::{full, BoxBody};
use crate::proxy::user_id_of;
use crate::proxy::Gateway;

/// What the admin endpoints need.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The gateway whose cache and metrics are shown.
    gateway: Gateway,
    /// Set once shutdown begins; `/readyz` then answers 503.
    draining: Arc<AtomicBool>,
}

impl Admin {
    /// Admin endpoints over `gateway`.
    pub fn new(gateway: Gateway, draining: Arc<AtomicBool>) -> Self {
        Self { gateway, draining }
    }

    /// Serves until `stop` turns true.
    pub async fn serve(self, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.changed() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(cause = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let admin = self.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, std::convert::Infallible>(admin.handle(req).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = stop.changed() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
        info!("admin listener closed");
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody> {
        let path = req.uri().path();
        match (req.method(), path) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") if self.draining.load(Ordering::Acquire) => {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
            (&Method::GET, "/readyz") => text(StatusCode::OK, "ready\n"),
            (&Method::GET, "/metrics") => self.metrics().await,
            (&Method::DELETE, "/cache") => {
                let org = match org_param(req.uri().query()) {
                    Ok(org) => org,
                    Err(r) => return r,
                };
                if self.gateway.purge_all(org.as_deref()).await.is_err() {
                    return unknown_org();
                }
                let org = org.as_deref().unwrap_or("*");
                info!(target: "openai_admin_gateway::audit", action = "purge_all", org, "cache purged");
                json(
                    StatusCode::OK,
                    serde_json::json!({ "purged": "all", "org": org }).to_string(),
                )
            }
            (&Method::DELETE, p) if p.starts_with("/cache/users/") => {
                let org = match org_param(req.uri().query()) {
                    Ok(org) => org,
                    Err(r) => return r,
                };
                self.purge_user(&p["/cache/users/".len()..], org.as_deref())
                    .await
            }
            (_, "/healthz" | "/readyz" | "/metrics" | "/cache") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// Purges the user `raw` names, spelled as in a request path: every
    /// spelling of one id (`user%2D1`, `user-1`) purges the same entry.
    async fn purge_user(&self, raw: &str, org: Option<&str>) -> Response<BoxBody> {
        let Some(id) = user_id_of(raw) else {
            return text(StatusCode::BAD_REQUEST, "invalid user id\n");
        };
        if self.gateway.purge(org, &id).await.is_err() {
            return unknown_org();
        }
        let org = org.unwrap_or("*");
        info!(target: "openai_admin_gateway::audit", action = "purge", org, user_id = id.as_str(), "cache entry purged");
        json(
            StatusCode::OK,
            serde_json::json!({ "purged": id, "org": org }).to_string(),
        )
    }

    async fn metrics(&self) -> Response<BoxBody> {
        let cache = self.gateway.cache();
        cache.sync().await;
        let body = self.gateway.metrics().encode(cache.entry_count());
        let mut r = Response::new(full(body));
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        r
    }
}

/// The `org` a purge is limited to (`?org=NAME`), `None` for every
/// organization; a query with anything else, or an empty or repeated
/// `org`, is 400 in OpenAI's error shape.
#[allow(clippy::result_large_err)]
fn org_param(query: Option<&str>) -> Result<Option<String>, Response<BoxBody>> {
    let Some(query) = query else {
        return Ok(None);
    };
    let mut org = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("org", v)) if !v.is_empty() && org.is_none() => {
                org = Some(crate::proxy::decode_segment(v).map(|v| v.into_owned()))
            }
            _ => return Err(bad_org()),
        }
    }
    match org {
        Some(Some(name)) => Ok(Some(name)),
        Some(None) => Err(bad_org()),
        None => Ok(None),
    }
}

fn bad_org() -> Response<BoxBody> {
    openai_error(
        StatusCode::BAD_REQUEST,
        "invalid_org",
        "The only query parameter is org=NAME, once, naming a configured organization.",
    )
}

fn unknown_org() -> Response<BoxBody> {
    openai_error(
        StatusCode::NOT_FOUND,
        "unknown_org",
        "No configured organization has this name.",
    )
}

/// An error in OpenAI's shape (the admin listener's own, not a
/// `GatewayError`: these never reach a client of the public listener).
fn openai_error(status: StatusCode, code: &str, message: &str) -> Response<BoxBody> {
    let body = serde_json::json!({
        "error": { "message": message, "type": "invalid_request_error", "param": null, "code": code }
    });
    json(status, body.to_string())
}

fn text(status: StatusCode, body: &'static str) -> Response<BoxBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, body: String) -> Response<BoxBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
