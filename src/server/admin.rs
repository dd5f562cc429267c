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
                self.gateway.purge_all().await;
                info!(target: "openai_admin_gateway::audit", action = "purge_all", "cache purged");
                json(StatusCode::OK, r#"{"purged":"all"}"#.to_string())
            }
            (&Method::DELETE, p) if p.starts_with("/cache/users/") => {
                self.purge_user(&p["/cache/users/".len()..]).await
            }
            (_, "/healthz" | "/readyz" | "/metrics" | "/cache") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// Purges the user `raw` names, spelled as in a request path: every
    /// spelling of one id (`user%2D1`, `user-1`) purges the same entry.
    async fn purge_user(&self, raw: &str) -> Response<BoxBody> {
        let Some(id) = user_id_of(raw) else {
            return text(StatusCode::BAD_REQUEST, "invalid user id\n");
        };
        self.gateway.purge(&id).await;
        info!(target: "openai_admin_gateway::audit", action = "purge", user_id = id.as_str(), "cache entry purged");
        json(
            StatusCode::OK,
            serde_json::json!({ "purged": id }).to_string(),
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
