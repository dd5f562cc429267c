//! One request's account: what it did, written once, whichever way it ends.
//!
//! [`Access`] is opened when a request arrives and raises the in-flight
//! gauge. The phases fill in what they learn (route, client, limit
//! decision, cache outcome, upstream status). [`Access::respond`] stamps the
//! common headers on the response and records its status. When the
//! `Access` is dropped (at the end of `Gateway::handle`, or earlier because
//! hyper dropped the request future when the client hung up) it counts the
//! request, lowers the gauge and writes the access line, plus an audit line
//! for anything but GET/HEAD that reached the upstream. This is the one
//! place those are written, as Pingora's `logging()` phase is.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Response, StatusCode};
use tracing::{info, warn};

use crate::body::BoxBody;
use crate::cache::CacheStatus;
use crate::headers::{RequestIds, X_REQUEST_ID};
use crate::metrics::{ClientLabel, Metrics};
use crate::policy::{Client, Decision};

use super::route::RouteClass;

/// The status logged and counted for a request whose client left before
/// the gateway answered (nginx's "client closed request").
pub const CLIENT_CLOSED: u16 = 499;

/// One request's account; see the module docs.
pub(super) struct Access<'a> {
    /// Where the request is counted.
    metrics: &'a Metrics,
    /// When it arrived.
    start: Instant,
    /// Its method.
    method: Method,
    /// Its path, for the audit line (anything but GET/HEAD).
    audit_path: Option<String>,
    /// The route class (`rejected` until routed).
    pub route: RouteClass,
    /// The authenticated client.
    pub client: Option<Arc<Client>>,
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
    /// The answer's status and request id; `None` while unanswered.
    answered: Option<(StatusCode, Option<HeaderValue>)>,
}

impl<'a> Access<'a> {
    /// Opens the account of a request with `method` on `path`.
    pub(super) fn open(metrics: &'a Metrics, method: &Method, path: &str) -> Self {
        metrics.in_flight().inc();
        Self {
            metrics,
            start: Instant::now(),
            method: method.clone(),
            audit_path: (!matches!(*method, Method::GET | Method::HEAD)).then(|| path.to_owned()),
            route: RouteClass::Rejected,
            client: None,
            limit: None,
            cache: None,
            upstream_status: None,
            forwarded: false,
            failure: None,
            answered: None,
        }
    }

    /// Stamps the common headers (a request id when the upstream gave
    /// none, the client's `x-ratelimit-*`) and records the answer.
    pub(super) fn respond(
        &mut self,
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
        self.answered = Some((resp.status(), id));
        resp
    }
}

impl Drop for Access<'_> {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        let anonymous;
        let client = match &self.client {
            Some(c) => &c.name,
            None => {
                anonymous = ClientLabel::anonymous();
                &anonymous
            }
        };
        let (status, request_id) = match &self.answered {
            Some((s, id)) => (s.as_u16(), id.as_ref().map_or("-", header_str)),
            None => (CLIENT_CLOSED, "-"),
        };
        let counted = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        let route = self.route.as_str();
        self.metrics
            .request(route, &self.method, counted, client, elapsed);
        self.metrics.in_flight().dec();

        let cache = self.cache.map_or("-", CacheStatus::as_str);
        let latency_us = elapsed.as_micros() as u64;
        let (method, client) = (self.method.as_str(), client.as_str());
        let error = match (&self.failure, &self.answered) {
            (Some(e), _) => Some(e.as_str()),
            (None, None) => Some("client closed the connection before the answer"),
            (None, Some(_)) => None,
        };
        match error {
            None => info!(
                target: "openai_admin_gateway::access",
                request_id, client, method, route, status, cache, latency_us,
            ),
            Some(error) => warn!(
                target: "openai_admin_gateway::access",
                request_id, client, method, route, status, cache, latency_us, error,
            ),
        }
        if let (Some(path), true) = (&self.audit_path, self.forwarded) {
            // Anything but GET/HEAD may have changed something upstream.
            // upstream_status 0: no response (error, timeout, or the client
            // left first), so the change may or may not have happened.
            info!(
                target: "openai_admin_gateway::audit",
                request_id,
                client,
                method,
                path = path.as_str(),
                upstream_status = self.upstream_status.map_or(0, |s| s.as_u16()),
                status,
            );
        }
    }
}

fn header_str(v: &HeaderValue) -> &str {
    v.to_str().unwrap_or("-")
}
