//! What the fake counts: requests in total and per route, wrong `Authorization`, requests in
//! flight and their peak, bytes up- and downloaded, and every request as received.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;

use super::{Recorded, State, Upstream};

impl Upstream {
    /// Requests received in total.
    pub fn total(&self) -> usize {
        self.state.total.load(Ordering::SeqCst)
    }

    /// Requests that did not carry exactly one `Authorization: Bearer ADMIN_KEY` (they were
    /// answered 401).
    pub fn bad_auth(&self) -> usize {
        self.state.bad_auth.load(Ordering::SeqCst)
    }

    /// Requests in the handler right now (arrived, response headers not yet ready).
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests that were in the handler at the same time, since the start.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Requests received for `method` and `path` (path without query).
    pub fn count(&self, method: &str, path: &str) -> usize {
        let key = format!("{method} {path}");
        let routes = self.state.per_route.lock().unwrap();
        routes.get(&key).map_or(0, |c| c.load(Ordering::SeqCst))
    }

    /// Waits until at least `n` requests for `method path` arrived.
    pub async fn wait_for_count(&self, method: &str, path: &str, n: usize) {
        let what = format!("{n} upstream request(s) for {method} {path}");
        super::super::wait_until(10, &what, || self.count(method, path) >= n).await;
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The last request whose path (without query) is `path`.
    pub fn last_request(&self, path: &str) -> Recorded {
        let requests = self.requests();
        requests
            .into_iter()
            .rev()
            .find(|r| r.path_and_query.split('?').next() == Some(path))
            .unwrap_or_else(|| panic!("the upstream never received a request for {path}"))
    }

    /// Bytes consumed by the upload route so far.
    pub fn uploaded(&self) -> u64 {
        self.state.uploaded.load(Ordering::SeqCst)
    }

    /// Bytes produced by the bytes route so far.
    pub fn downloaded(&self) -> u64 {
        self.state.downloaded.load(Ordering::SeqCst)
    }
}

impl State {
    pub(super) fn record(&self, req: &Request<Incoming>, request_id: &str) -> usize {
        self.total.fetch_add(1, Ordering::SeqCst);
        let key = format!("{} {}", req.method(), req.uri().path());
        self.per_route
            .lock()
            .unwrap()
            .entry(key)
            .or_default()
            .fetch_add(1, Ordering::SeqCst);
        let mut requests = self.requests.lock().unwrap();
        requests.push(Recorded {
            method: req.method().clone(),
            path_and_query: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
            version: req.version(),
            headers: req.headers().clone(),
            body: None,
            request_id: request_id.to_string(),
        });
        requests.len() - 1
    }
}

/// Counts a request in [`State::in_flight`] (and the peak) while it lives.
pub(super) struct InFlight(Arc<State>);

impl InFlight {
    pub(super) fn enter(state: &Arc<State>) -> InFlight {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
