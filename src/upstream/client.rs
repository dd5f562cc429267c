//! The upstream client: one [`Pool`] per server worker (picked by
//! [`crate::runtime::index`]) plus one for every other thread, over
//! hyper's `client::conn`.
//!
//! - HTTP/1.1 (plain `http://`, or TLS where ALPN chose it): a request
//!   checks an idle connection out of its worker's pool, or opens one, and
//!   drives it in its own task (`conn`).
//! - HTTP/2 (TLS where ALPN chose `h2`): one connection per pool, its task
//!   spawned (multiplexing needs one), its sender shared; a new one is
//!   opened when it closed.
//! - Retry only where safe: a request that hyper gave back unsent on a
//!   REUSED connection (it turned out closed) is sent once more on a fresh
//!   connection. A request that may have left is never sent again.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::header::HOST;
use http::uri::{Parts, PathAndQuery};
use http::{HeaderValue, Request, Response, Uri};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::debug;

use super::conn::{unsent, ConnBody, Failure, H1};
use super::connect::Connector;
use super::pool::{sweep, Checked, Pool};
use crate::body::{BoxBody, BoxError};
use crate::config::UpstreamConfig;
use crate::runtime;

/// An HTTP/2 request hyper gave back on a new connection.
#[derive(Debug, thiserror::Error)]
#[error("new upstream HTTP/2 connection closed before the request was sent")]
struct H2Closed;

/// The pooled HTTP/1.1 + HTTP/2 client.
pub(super) struct Client {
    /// One pool per server worker.
    workers: Box<[Arc<Pool>]>,
    /// The pool of every other thread (the main runtime, tests).
    shared: Arc<Pool>,
    /// Opens connections (TCP, TLS, one deadline).
    connector: Connector,
    /// HTTP/1.1 connection settings.
    h1: http1::Builder,
    /// HTTP/2 connection settings.
    h2: http2::Builder<TokioExecutor>,
    /// `Host` of every HTTP/1.1 request (the base URL's authority).
    host: HeaderValue,
    /// Scheme and authority, for HTTP/2's absolute request URIs.
    origin: Uri,
}

impl Client {
    /// The client for `cfg`: `cfg.pools` worker pools, each keeping at most
    /// `max_concurrent_requests` idle connections.
    pub(super) fn new(cfg: &UpstreamConfig, tls: rustls::ClientConfig) -> std::io::Result<Self> {
        let base = &cfg.base_url;
        let connector = Connector::new(base, tls, cfg.connect_timeout)?;
        let authority = base.authority().map_or("", |a| a.as_str());
        let host = HeaderValue::from_str(authority).map_err(std::io::Error::other)?;
        let origin = Uri::builder()
            .scheme(base.scheme_str().unwrap_or("https"))
            .authority(authority)
            .path_and_query("/")
            .build()
            .map_err(std::io::Error::other)?;
        let mut h1 = http1::Builder::new();
        // Head and a small body leave in one `writev`, with no copy of the
        // body. The read buffer stays hyper's adaptive one: it starts at
        // 8 KiB, which holds the common Admin API response (a head and one
        // object, or a short list page) in one read, and grows for 100-item
        // pages instead of costing a read per 8 KiB as an exact size would.
        h1.writev(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new());
        let pool = || {
            Arc::new(Pool::new(
                cfg.max_concurrent_requests,
                cfg.pool_idle_timeout,
            ))
        };
        let workers: Box<[Arc<Pool>]> = (0..cfg.pools).map(|_| pool()).collect();
        let shared = pool();
        let weak = workers
            .iter()
            .chain(std::iter::once(&shared))
            .map(Arc::downgrade)
            .collect();
        let every =
            (cfg.pool_idle_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(15));
        sweep(weak, every);
        Ok(Self {
            workers,
            shared,
            connector,
            h1,
            h2,
            host,
            origin,
        })
    }

    /// Sends `req` (absolute URI) and resolves at response headers.
    pub(super) async fn request(
        &self,
        req: Request<BoxBody>,
    ) -> Result<Response<ConnBody>, BoxError> {
        let pool = self.pool();
        let checked = std::future::poll_fn(|cx| Poll::Ready(pool.checkout(cx))).await;
        let failed = match checked {
            None => return self.fresh(pool, req).await,
            Some(Checked::H2(send)) => self.send_h2(send, req).await,
            Some(Checked::H1(h1)) => h1.exchange(self.for_h1(req), pool.clone()).await,
        };
        match failed {
            Ok(resp) => Ok(resp),
            // A reused connection closed before the request left: once
            // more, on a fresh connection.
            Err(Failure::Unsent(req)) => {
                debug!("reused upstream connection was closed; sending on a new one");
                self.fresh(pool, req).await
            }
            Err(Failure::Failed(e)) => Err(e),
        }
    }

    /// Opens a connection and sends `req` on it (no retry).
    async fn fresh(
        &self,
        pool: &Arc<Pool>,
        req: Request<BoxBody>,
    ) -> Result<Response<ConnBody>, BoxError> {
        let (io, is_h2) = self.connector.connect().await?;
        let sent = if is_h2 {
            let (send, conn) = self.h2.handshake(TokioIo::new(io)).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            pool.set_h2(&send);
            self.send_h2(send, req).await
        } else {
            let h1 = H1::handshake(&self.h1, io).await?;
            h1.exchange(self.for_h1(req), pool.clone()).await
        };
        match sent {
            Ok(resp) => Ok(resp),
            Err(Failure::Unsent(_)) => Err(Box::new(H2Closed)),
            Err(Failure::Failed(e)) => Err(e),
        }
    }

    /// Sends `req` on the shared HTTP/2 connection.
    async fn send_h2(
        &self,
        mut send: http2::SendRequest<BoxBody>,
        req: Request<BoxBody>,
    ) -> Result<Response<ConnBody>, Failure> {
        match send.try_send_request(self.for_h2(req)).await {
            Ok(resp) => Ok(resp.map(ConnBody::detached)),
            Err(e) => Err(unsent(e)),
        }
    }

    /// HTTP/1.1 wants the origin form (`/v1/...`) and a `Host`.
    fn for_h1(&self, mut req: Request<BoxBody>) -> Request<BoxBody> {
        if req.uri().scheme().is_some() {
            let pq = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(pq);
        }
        req.headers_mut().insert(HOST, self.host.clone());
        req
    }

    /// HTTP/2 wants the absolute form (`:scheme`, `:authority`), no `Host`.
    fn for_h2(&self, mut req: Request<BoxBody>) -> Request<BoxBody> {
        if req.uri().scheme().is_none() {
            let mut parts = Parts::default();
            parts.scheme = self.origin.scheme().cloned();
            parts.authority = self.origin.authority().cloned();
            parts.path_and_query = req.uri().path_and_query().cloned();
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
        req.headers_mut().remove(HOST);
        req
    }

    /// The calling worker's pool, or the shared one off the workers.
    fn pool(&self) -> &Arc<Pool> {
        runtime::index()
            .and_then(|i| self.workers.get(i))
            .unwrap_or(&self.shared)
    }
}
