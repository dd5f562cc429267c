//! The upstream: everything between a request the gateway decided to send
//! and the OpenAI API.
//!
//! - [`Upstream`]: pooled keep-alive connections, HTTPS via rustls (webpki
//!   roots plus an optional extra CA), HTTP/2 when the upstream offers it
//!   over ALPN, the admin key swapped in, a time-to-headers timeout, and a
//!   global cap on concurrent upstream requests with a bounded wait queue.
//!   One pool per server worker (picked by the calling thread's
//!   [`crate::runtime::index`]) plus a shared one for every other thread;
//!   the cap and the queue stay global.
//! - Every exchange first takes a turn of the organization's budget
//!   ([`crate::budget`]; before the concurrency slot, so nobody holds a
//!   slot while waiting for a turn), and an upstream 429 pauses it.
//! - `connect`: the rustls client config and a deadline on the whole
//!   connect (TCP and TLS).
//! - `queue`: the concurrency cap and its bounded wait queue; a waiting
//!   request holds a `QueuePlace`, given back on drop (cancellation
//!   included).
//! - [`Caller`]: on whose behalf an exchange is sent (every exchange
//!   names one).
//! - `slot`: the concurrency slot a response body holds until it ends.
//!
//! Everything a request holds here is a guard released on drop; the
//! gateway's whole list is `docs/ledger.md`.
//! - [`buffer`]: small bodies read whole before they are passed on.
//! - `auth`: an upstream 401, or a 403 naming the key, means the upstream
//!   refused the admin key; such a response never reaches a client.
//!
//! Public surface: [`Upstream`], [`Caller`], [`tls_client_config`], [`buffer`].

mod auth;
pub mod buffer;
mod caller;
mod connect;
mod queue;
mod slot;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{AUTHORIZATION, HOST};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tracing::error;

use crate::body::{is_client_body_error, BoxBody, BoxError};
use crate::budget::{pause_for, Budgets};
use crate::config::UpstreamConfig;
use crate::error::{GatewayError, Result};
use crate::headers::strip_hop_by_hop;
use crate::metrics::{Metrics, TimeoutPhase, UpstreamOutcome};
use crate::runtime;
use crate::telemetry::span as trace_span;

use auth::Forbidden;
pub use caller::Caller;
pub use connect::tls_client_config;
use connect::ConnectTimeout;
use queue::Slots;
use slot::SlotBody;

/// The pooled HTTP/1.1 + HTTP/2 client.
type Pool = Client<ConnectTimeout<HttpsConnector<HttpConnector>>, BoxBody>;

/// The upstream API.
pub struct Upstream {
    /// One pool per server worker: a pool spawns its connection tasks on
    /// the runtime that opens them, so each worker keeps its own.
    workers: Box<[Pool]>,
    /// The pool of every other thread (the main runtime, tests).
    shared: Pool,
    /// `scheme://authority` of `base_url`.
    origin: String,
    /// Path of `base_url` without a trailing slash (e.g. `/v1`).
    base_path: String,
    /// Time allowed until response headers.
    timeout: Duration,
    /// A streamed body is cut after this long without a frame.
    body_idle: Duration,
    /// The concurrency cap and its bounded wait queue.
    slots: Slots,
    /// The organizations' budgets: every exchange takes a turn first.
    budgets: Budgets,
    /// Where exchanges are counted.
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("origin", &self.origin)
            .finish()
    }
}

impl Upstream {
    /// Builds the client for `cfg`.
    pub fn new(cfg: &UpstreamConfig, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_client_config(cfg.ca_file.as_deref())?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        // HttpConnector's own timeout covers TCP only; this one covers the
        // TLS handshake too, so a peer that accepts and then stalls costs
        // connect_timeout_ms (502), not timeout_ms (504).
        let https = ConnectTimeout::new(https, cfg.connect_timeout);
        let pool = || {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(cfg.pool_idle_timeout)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .build(https.clone())
        };
        let base = &cfg.base_url;
        let origin = format!(
            "{}://{}",
            base.scheme_str().unwrap_or("https"),
            base.authority().map_or("", |a| a.as_str())
        );
        Ok(Self {
            workers: (0..cfg.pools).map(|_| pool()).collect(),
            shared: pool(),
            origin,
            base_path: base.path().trim_end_matches('/').to_string(),
            timeout: cfg.timeout,
            body_idle: cfg.body_idle_timeout,
            slots: Slots::new(
                cfg.max_concurrent_requests,
                cfg.max_queued_requests,
                metrics.clone(),
            ),
            budgets: Budgets::new(cfg, metrics.clone()),
            metrics,
        })
    }

    /// `timeout_ms`: the wait for response headers.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The organizations' budgets (reload, `[redis]`, the stale path).
    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// Sends `method {base}{rest}?{query}` with `headers` (client credential
    /// replaced by the admin key, hop-by-hop headers dropped) and streams
    /// `body`. Resolves at response headers; the body streams on.
    ///
    /// An upstream 401, or a 403 whose body names the key, is
    /// [`GatewayError::UpstreamAuthFailed`]: the upstream refused the admin
    /// key, and its body (which quotes the key, masked) is dropped. Any
    /// other 403 is read whole first (see `auth`) and then relayed.
    pub async fn send(
        &self,
        caller: &Caller,
        method: Method,
        rest: &str,
        query: Option<&str>,
        headers: HeaderMap,
        body: BoxBody,
    ) -> Result<Response<BoxBody>> {
        self.exchange(caller, None, method, rest, query, headers, body)
            .await
    }

    /// [`send`](Self::send) with every wait (for a slot, for the headers,
    /// for a 403's body) ending at `deadline` instead of `timeout_ms` from
    /// its own start: a cache fill is bounded as a whole, and a fill that
    /// gets no headers in time is still a headers timeout of this exchange.
    pub async fn send_by(
        &self,
        caller: &Caller,
        deadline: tokio::time::Instant,
        method: Method,
        rest: &str,
        headers: HeaderMap,
        body: BoxBody,
    ) -> Result<Response<BoxBody>> {
        self.exchange(caller, Some(deadline), method, rest, None, headers, body)
            .await
    }

    /// The one way upstream: a turn of the organization's budget first
    /// (before the concurrency slot, so nobody holds a slot while waiting
    /// for a turn), then a slot, then the request. An upstream 429 pauses
    /// the organization and is relayed unchanged.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        caller: &Caller,
        deadline: Option<tokio::time::Instant>,
        method: Method,
        rest: &str,
        query: Option<&str>,
        mut headers: HeaderMap,
        body: BoxBody,
    ) -> Result<Response<BoxBody>> {
        let uri = self.uri(rest, query)?;
        strip_hop_by_hop(&mut headers);
        headers.remove(HOST);
        // This exchange's CLIENT span, under the span that caused it; its
        // `traceparent` goes upstream. It ends with this call (at headers).
        let span = trace_span::upstream(&method, &uri, &mut headers);
        // The key this request carries, for checking a 403 against it even
        // if a reload swaps the key meanwhile.
        let admin = caller.org().admin_key();
        headers.insert(AUTHORIZATION, admin.header().clone());
        caller.org().identify(&mut headers);
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;

        let budget = self.budgets.get(caller.org().name());
        if let Some(b) = &budget {
            if let Err(e) = b
                .turn(caller.client(), caller.budget_weight(), deadline)
                .await
            {
                trace_span::answered(&span, Err("organization_budget_exceeded"));
                return Err(e);
            }
        }
        let slot = match self.slots.acquire(deadline, self.timeout).await {
            Ok(slot) => slot,
            Err(e) => {
                trace_span::answered(&span, Err("no_upstream_slot"));
                return Err(e);
            }
        };
        let start = Instant::now();
        let headers_by = deadline.unwrap_or_else(|| tokio::time::Instant::now() + self.timeout);
        let result = tokio::time::timeout_at(headers_by, self.pool().request(req)).await;
        let outcome = match &result {
            Ok(Ok(r)) => UpstreamOutcome::Status(r.status().as_u16()),
            // The client's body broke: not the upstream's failure.
            Ok(Err(e)) if is_client_body_error(e) => UpstreamOutcome::ClientAborted,
            Ok(Err(_)) => UpstreamOutcome::Error,
            Err(_) => UpstreamOutcome::Timeout,
        };
        self.metrics
            .upstream(outcome, caller.org().metric(), start.elapsed());
        trace_span::answered(
            &span,
            match outcome {
                UpstreamOutcome::Status(s) => Ok(s),
                UpstreamOutcome::ClientAborted => Err("client_body"),
                UpstreamOutcome::Error => Err("unavailable"),
                UpstreamOutcome::Timeout => Err("timeout"),
            },
        );
        let resp = match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) if is_client_body_error(&e) => {
                return Err(GatewayError::InvalidBody(describe(e).into()))
            }
            Ok(Err(e)) => return Err(GatewayError::UpstreamUnavailable(describe(e).into())),
            Err(_) => {
                self.metrics.upstream_timeout(TimeoutPhase::Headers);
                return Err(GatewayError::UpstreamTimeout);
            }
        };
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if parts.status == StatusCode::TOO_MANY_REQUESTS {
            if let Some(b) = budget {
                b.pause(pause_for(&parts.headers, std::time::SystemTime::now()));
            }
        }
        // On the refusal paths the body is dropped unread and the slot is
        // released when this returns; a relayed 403 is whole, so it needs
        // the slot no longer either.
        let body = match parts.status {
            StatusCode::UNAUTHORIZED => return Err(self.key_refused(401, "401 from the upstream")),
            StatusCode::FORBIDDEN => {
                let key = admin.expose();
                let window = deadline.map_or(self.timeout, |d| {
                    d.saturating_duration_since(tokio::time::Instant::now())
                });
                match auth::check_forbidden(&parts.headers, body, key, window).await {
                    Forbidden::Relay(body) => body,
                    Forbidden::KeyRefused(reason) => return Err(self.key_refused(403, reason)),
                    Forbidden::Failed(e) => return Err(e),
                }
            }
            _ => BoxBody::new(SlotBody::new(body, slot, self.body_idle)),
        };
        Ok(Response::from_parts(parts, body))
    }

    /// The calling worker's pool, or the shared one off the workers.
    fn pool(&self) -> &Pool {
        runtime::index()
            .and_then(|i| self.workers.get(i))
            .unwrap_or(&self.shared)
    }

    /// Counts and logs an upstream refusal of the admin key. The log line
    /// carries the status and why, never the upstream's body.
    fn key_refused(&self, status: u16, reason: &'static str) -> GatewayError {
        self.metrics.upstream_auth_failure(status);
        error!(
            status,
            reason,
            "the upstream refused the admin key; requests fail with 502 upstream_auth_failed until it is replaced"
        );
        GatewayError::UpstreamAuthFailed(status)
    }

    fn uri(&self, rest: &str, query: Option<&str>) -> Result<Uri> {
        let mut s = String::with_capacity(
            self.origin.len()
                + self.base_path.len()
                + rest.len()
                + query.map_or(0, |q| q.len() + 1),
        );
        s.push_str(&self.origin);
        s.push_str(&self.base_path);
        s.push_str(rest);
        if let Some(q) = query {
            s.push('?');
            s.push_str(q);
        }
        // Both parts came from already-parsed URIs, so this only fails on
        // pathological input; treat it as a bad request path.
        s.parse().map_err(|_| GatewayError::InvalidPath)
    }
}

/// The error chain as one line, for logs (never for clients). Request URIs
/// and headers are not part of hyper's errors, so the admin key cannot be.
fn describe(e: hyper_util::client::legacy::Error) -> BoxError {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;

    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    /// An HTTP/1.1 upstream on loopback, on `rt`, answering 200 to everything and counting
    /// the connections it accepts.
    fn upstream(rt: &tokio::runtime::Runtime) -> (String, Arc<AtomicUsize>) {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let svc = service_fn(|_req: Request<hyper::body::Incoming>| async {
                    Ok::<_, std::convert::Infallible>(Response::new(crate::body::full("ok")))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        (format!("http://{addr}/v1"), accepted)
    }

    /// Sends `GET /x` and reads the body to its end (so the connection goes back to its pool).
    async fn get(up: &Upstream) -> std::result::Result<(), String> {
        let caller = Caller::for_tests("test");
        let resp = up
            .send(
                &caller,
                Method::GET,
                "/x",
                None,
                HeaderMap::new(),
                crate::body::empty(),
            )
            .await
            .map_err(|e| e.to_string())?;
        if resp.status() != StatusCode::OK {
            return Err(format!("status {}", resp.status()));
        }
        resp.into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    #[test]
    fn each_worker_thread_keeps_its_own_pool() {
        let main = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (base, accepted) = upstream(&main);
        let text = format!(
            "[server]\nworkers = 2\n[upstream]\nbase_url = \"{base}\"\ntimeout_ms = 3000\n"
        );
        let cfg = crate::config::Config::parse(&text, std::path::Path::new("."), &|n| {
            (n == "OPENAI_ADMIN_KEY").then(|| "sk-admin-x".to_string())
        })
        .expect("config");
        let up = Arc::new(Upstream::new(&cfg.upstream, Arc::new(Metrics::new())).expect("client"));
        let lasting = main.block_on(async { runtime::Lasting::current() });
        // Worker 0 sends twice and then stops polling its runtime (parked on the barrier)
        // while worker 1 sends: a connection worker 1 borrowed from worker 0 would hang.
        let (w0_done, all_done) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let workers: Vec<_> = (0..2)
            .map(|index| {
                let (up, lasting) = (up.clone(), lasting.clone());
                let (w0_done, all_done) = (w0_done.clone(), all_done.clone());
                std::thread::spawn(move || {
                    runtime::enter(index, lasting);
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    if index == 1 {
                        w0_done.wait();
                    }
                    // Errors are returned, not raised, so both threads pass the barriers.
                    let sent = rt.block_on(async {
                        get(&up).await?;
                        get(&up).await
                    });
                    if index == 0 {
                        w0_done.wait();
                    }
                    all_done.wait();
                    sent.map_err(|e| format!("worker {index}: {e}"))
                })
            })
            .collect();
        for w in workers {
            let sent = w.join().expect("worker thread");
            sent.expect("both requests answered");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "one upstream connection per worker, each reused by its own worker"
        );
    }
}
