//! One request's account: what it did, written once, whichever way it ends.
//!
//! [`Access`] is opened when a request arrives and raises the in-flight
//! gauge. The phases fill in what they learn (route, client, limit
//! decision, cache outcome, upstream status). [`Access::respond`] stamps the
//! common headers on the response, records its status and moves the account
//! into the response body, which counts the bytes sent. When the account is
//! dropped (the body ended or broke off, or hyper dropped the request future
//! because the client hung up or reset the stream) it counts the request,
//! lowers the gauge and writes the access line, plus an audit line for
//! anything but GET/HEAD that reached the upstream. This is the one place
//! those are written, as Pingora's `logging()` phase is.
//!
//! [`ConnectionAccount`] is what a request tells the connection it came on
//! (opened, closed, abandoned after it was forwarded) and asks of it (was
//! it cut for the send deadline); the server's connection implements it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tracing::{info, warn};

use crate::body::{BoxBody, BoxError};
use crate::cache::CacheStatus;
use crate::headers::{RequestIds, X_REQUEST_ID};
use crate::metrics::{ClientLabel, Metrics, Opened};
use crate::per_thread::{Handle, Handles};
use crate::policy::{Client, Decision};
use crate::telemetry::span::{self as trace_span, TraceId, Traced};
use crate::upstream::Caller;

use super::route::RouteClass;

/// The status logged and counted for a request whose client left before
/// the gateway answered (nginx's "client closed request").
pub const CLIENT_CLOSED: u16 = 499;

/// The access line's `error` for a request whose connection was closed
/// because its client took nothing of a response for
/// `server.send_timeout_ms`.
pub const SEND_TIMEOUT: &str =
    "send_timeout: the client took nothing for server.send_timeout_ms; connection closed";

// === ConnectionAccount ===

/// What a request tells the connection it came on, and asks of it. The
/// server's connection implements it (the idle, first-request and GOAWAY
/// logic live there); the proxy sees only this, as imports run server →
/// proxy.
pub trait ConnectionAccount: Send + Sync {
    /// A request on this connection opened its account.
    fn request_opened(&self);

    /// A request's account was written. `abandoned_forward`: it was handed
    /// to the upstream and its client left before the answer.
    fn request_closed(&self, abandoned_forward: bool);

    /// True once the connection was closed because its client took
    /// nothing of a response for `server.send_timeout_ms`.
    fn cut_for_send_timeout(&self) -> bool;
}

/// A request's handle on its connection's account: one thin pointer, as
/// the `Arc<Connection>` it replaces was. Every request's future is boxed
/// and moved, and a bare `Arc<dyn ConnectionAccount>` (two words), held
/// by both the handler's argument and the account, would add 16 bytes to
/// it; this costs one allocation per connection instead.
#[derive(Clone)]
pub struct ConnectionRef(
    /// The account, behind a second `Arc` so that the pointer is thin.
    Arc<Arc<dyn ConnectionAccount>>,
);

impl ConnectionRef {
    /// A handle on `account`, made once per connection.
    pub fn new(account: Arc<dyn ConnectionAccount>) -> Self {
        Self(Arc::new(account))
    }
}

impl std::ops::Deref for ConnectionRef {
    type Target = dyn ConnectionAccount;

    fn deref(&self) -> &Self::Target {
        &**self.0
    }
}

// === Access ===

/// How the response body ended, for the access line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyEnd {
    /// Not answered, or the body was never reached.
    None,
    /// Sent in full.
    Complete,
    /// Broke off (the upstream failed mid-body, or the client left).
    Incomplete,
}

/// One request's account; see the module docs.
pub(super) struct Access {
    /// Where the request is counted (this thread's handle: no shared
    /// count is written).
    metrics: Handle<Metrics>,
    /// The in-flight count this request raised, handed back to
    /// `Metrics::request` exactly once when the account is written.
    opened: Option<Opened>,
    /// The connection it came on, when served by the server.
    conn: Option<ConnectionRef>,
    /// When it arrived.
    start: Instant,
    /// Its method.
    method: Method,
    /// Its path, for the audit line (anything but GET/HEAD); `None` once a
    /// write task has taken it to write the audit line itself.
    /// (A `Box<str>`, 8 bytes less than a `String`, pays for `traced`.)
    audit_path: Option<Box<str>>,
    /// The route class (`rejected` until routed).
    pub route: RouteClass,
    /// The authenticated client.
    pub client: Option<Handle<Client>>,
    /// The organization it acts on: a position in the client's `callers`
    /// (a byte, so the account, part of every request's future, does not
    /// grow; a client lists at most 255 organizations).
    pub org: u8,
    /// The rate-limit decision, for the `x-ratelimit-*` headers.
    pub limit: Option<Decision>,
    /// What the cache did.
    pub cache: Option<CacheStatus>,
    /// The upstream's status, when it answered.
    pub upstream_status: Option<StatusCode>,
    /// The request was handed to the upstream (it may have changed something).
    pub forwarded: bool,
    /// Why the upstream exchange failed (502/503/504), for the log line.
    pub failure: Option<String>,
    /// The answer's status and request id, and the milliseconds the
    /// request waited for turns of the organization's budget (kept here,
    /// in the status's padding: every request's future carries this);
    /// `None` while unanswered.
    answered: Option<(StatusCode, Option<HeaderValue>, u32)>,
    /// How the body ended, and the body bytes sent.
    body: (BodyEnd, u64),
    /// The request's SERVER span and the trace id of its lines (`None`:
    /// neither). The span ends when the account is written, or when the
    /// work it caused (a write's task, a refresh) ends.
    pub traced: Option<Arc<Traced>>,
}

impl Access {
    /// Opens the account of a request with `method` on `path`.
    pub(super) fn open(
        metrics: &Handles<Metrics>,
        conn: Option<ConnectionRef>,
        method: &Method,
        path: &str,
        traced: Option<Arc<Traced>>,
    ) -> Self {
        let opened = Some(metrics.request_opened());
        if let Some(c) = &conn {
            c.request_opened();
        }
        Self {
            metrics: metrics.local(),
            opened,
            conn,
            start: Instant::now(),
            method: method.clone(),
            audit_path: (!matches!(*method, Method::GET | Method::HEAD)).then(|| Box::from(path)),
            route: RouteClass::Rejected,
            client: None,
            org: 0,
            limit: None,
            cache: None,
            upstream_status: None,
            forwarded: false,
            failure: None,
            answered: None,
            body: (BodyEnd::None, 0),
            traced,
        }
    }

    /// The client's name as logged.
    /// The authenticated client's [`Caller`]. Only routes reached after
    /// authentication ask; without a client the answer is 401, not a panic.
    pub(super) fn caller(&self) -> crate::error::Result<&Caller> {
        match &self.client {
            Some(c) => c
                .callers
                .get(usize::from(self.org))
                .ok_or(crate::error::GatewayError::OrganizationNotAllowed),
            None => Err(crate::error::GatewayError::Unauthorized),
        }
    }

    /// The trace id the request's lines carry (none: all zeros).
    pub(super) fn trace_id(&self) -> TraceId {
        self.traced
            .as_ref()
            .map_or_else(TraceId::default, |t| t.trace_id)
    }

    pub(super) fn client_label(&self) -> ClientLabel {
        match &self.client {
            Some(c) => c.name.clone(),
            None => ClientLabel::anonymous(),
        }
    }

    /// Hands the audit line to someone who will write it whatever happens
    /// to this request (a write's own task).
    pub(super) fn take_audit(&mut self) -> Option<String> {
        self.audit_path.take().map(String::from)
    }

    /// Stamps the common headers (a request id when the upstream gave
    /// none, the client's `x-ratelimit-*`), records the answer and moves
    /// the account into the body, which finishes it.
    pub(super) fn respond(
        mut self,
        mut resp: Response<BoxBody>,
        ids: &RequestIds,
    ) -> Response<BoxBody> {
        if !resp.headers().contains_key(X_REQUEST_ID) {
            resp.headers_mut().insert(X_REQUEST_ID, ids.next());
        }
        if let (Some(c), Some(d)) = (&self.client, self.limit) {
            if let Some(l) = &c.limiter {
                l.annotate(d, resp.headers_mut());
            }
        }
        let id = resp.headers().get(X_REQUEST_ID).cloned();
        let waited = wait_ms(crate::budget::waited());
        self.answered = Some((resp.status(), id, waited));
        let (parts, inner) = resp.into_parts();
        let body = Accounted {
            inner,
            access: self,
            sent: 0,
            ended: false,
        };
        Response::from_parts(parts, BoxBody::new(body))
    }
}

impl Drop for Access {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        // Borrowed: cloning the label would write its shared refcount on
        // every request.
        let anonymous;
        let client = match &self.client {
            Some(c) => &c.name,
            None => {
                anonymous = ClientLabel::anonymous();
                &anonymous
            }
        };
        let (status, request_id) = match &self.answered {
            Some((s, id, _)) => (s.as_u16(), id.as_ref().map_or("-", header_str)),
            None => (CLIENT_CLOSED, "-"),
        };
        if let Some(conn) = &self.conn {
            conn.request_closed(self.answered.is_none() && self.forwarded);
        }
        let counted = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        let route = self.route.as_str();
        if let Some(opened) = self.opened.take() {
            self.metrics
                .request(opened, self.route, &self.method, counted, client, elapsed);
        }

        let cache = self.cache.map_or("-", CacheStatus::as_str);
        // The organization acted on, once admitted (`-` before that).
        let org = match &self.client {
            Some(c) => c
                .callers
                .get(usize::from(self.org))
                .map_or("-", |c| c.org().name()),
            None => "-",
        };
        let latency_us = elapsed.as_micros() as u64;
        let budget_wait_ms = match self.answered {
            Some((_, _, waited)) => waited,
            None => wait_ms(crate::budget::waited()),
        };
        let (method, client) = (self.method.as_str(), client.as_str());
        trace_span::finished(
            self.traced.as_deref(),
            method,
            route,
            status,
            client,
            cache,
            org,
        );
        let trace_id = self.trace_id().field();
        // Cut for the send deadline while this body was still being sent:
        // whatever it had handed over, the client did not get it all.
        let cut = self.conn.as_ref().is_some_and(|c| c.cut_for_send_timeout());
        let (body, bytes) = match self.body {
            (BodyEnd::None, _) => ("-", 0),
            (BodyEnd::Complete, n) if !cut => ("complete", n),
            (BodyEnd::Complete | BodyEnd::Incomplete, n) => ("incomplete", n),
        };
        let error = match (&self.failure, &self.answered) {
            (Some(e), _) => Some(e.as_str()),
            _ if cut => Some(SEND_TIMEOUT),
            (None, None) => Some("client closed the connection before the answer"),
            (None, Some(_)) if self.body.0 == BodyEnd::Incomplete => {
                Some("response body broke off")
            }
            (None, Some(_)) => None,
        };
        match error {
            None => info!(
                target: "openai_admin_gateway::access",
                request_id, client, org, method, route, status, cache, latency_us, budget_wait_ms,
                body, bytes, trace_id,
            ),
            Some(error) => warn!(
                target: "openai_admin_gateway::access",
                request_id, client, org, method, route, status, cache, latency_us, budget_wait_ms,
                body, bytes, error, trace_id,
            ),
        }
        if let (Some(path), true) = (&self.audit_path, self.forwarded) {
            audit(
                request_id,
                client,
                org,
                method,
                path,
                self.upstream_status,
                status,
                "none",
                self.trace_id(),
            );
        }
    }
}

/// A wait in whole milliseconds, as the access line carries it.
fn wait_ms(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// The audit line of a request that may have changed something upstream.
/// `upstream_status` 0: no response (error, timeout, the client left first,
/// or the process stopped first: then `status` is the 504 its client gets).
/// `outcome`: `applied` (2xx), `refused` (another answer below 500) or
/// `unknown` (no answer, or a 5xx: the change may or may not have
/// happened). `evict` says which rule of the dependency table matched:
/// `user:ID`, `all` or `none`. `trace_id`: the request's (omitted if none).
#[allow(clippy::too_many_arguments)]
pub(super) fn audit(
    request_id: &str,
    client: &str,
    org: &str,
    method: &str,
    path: &str,
    upstream_status: Option<StatusCode>,
    status: u16,
    evict: &str,
    trace_id: TraceId,
) {
    let outcome = match upstream_status {
        Some(s) if s.is_success() => "applied",
        Some(s) if !s.is_server_error() => "refused",
        _ => "unknown",
    };
    info!(
        target: "openai_admin_gateway::audit",
        request_id,
        client,
        org,
        method,
        path,
        upstream_status = upstream_status.map_or(0, |s| s.as_u16()),
        status,
        outcome,
        evict,
        trace_id = trace_id.field(),
    );
}

fn header_str(v: &HeaderValue) -> &str {
    v.to_str().unwrap_or("-")
}

// === Accounted ===

/// A response body carrying its request's account: counts the bytes sent
/// and, when dropped, tells the account whether the body ended.
struct Accounted {
    /// The body.
    inner: BoxBody,
    /// Finished when this body is dropped.
    access: Access,
    /// Data bytes handed to hyper.
    sent: u64,
    /// The body reached its end.
    ended: bool,
}

impl Body for Accounted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.ended = true,
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Accounted {
    fn drop(&mut self) {
        let ended = self.ended || self.inner.is_end_stream();
        let end = if ended {
            BodyEnd::Complete
        } else {
            BodyEnd::Incomplete
        };
        self.access.body = (end, self.sent);
    }
}
