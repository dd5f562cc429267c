//! An in-process fake of the OpenAI Admin API, served by a real hyper server (HTTP/1.1 and
//! HTTP/2) on `127.0.0.1:0`.
//!
//! Routes (all need `Authorization: Bearer ADMIN_KEY`, else 401 in OpenAI's error shape):
//! - `GET /v1/organization/users?limit=&after=`: `UserListResponse`.
//! - `GET|POST|DELETE /v1/organization/users/{id}`: retrieve / modify role (`{"role":..}`) /
//!   delete; unknown id → 404. The id is percent-decoded; a retrieve with
//!   `OpenAI-Organization: X` answers the user with `(as seen by X)` after its name.
//! - `GET /v1/organization/users/{id}/roles`: a role list.
//! - project, group and role-assignment writes, and each user's `projects`: see [`projects`].
//! - `GET /v1/_test/sse?n=&interval_ms=&gate=`: `n` SSE events; with `gate` the first event is
//!   sent at once and the rest only after the gate opens.
//! - `GET /v1/_test/bytes?n=&chunk=&gate=&break_after=`: `n` bytes of [`pattern_chunk`] with a
//!   `content-length` of `n`; first chunk at once, the rest after `gate` opens; with
//!   `break_after` the body fails after that many bytes.
//! - `POST|PUT /v1/_test/upload`: consumes the body frame by frame (never whole) and answers
//!   `{"len":..,"fnv1a":"..","pattern_ok":..}`; progress is visible in [`Upstream::uploaded`].
//! - anything else: echo. Answers JSON `{"method","path","version","headers","body_hex",
//!   "body_len"}` and records the body. Request headers `x-fake-status`, `x-fake-delay-ms`,
//!   `x-fake-gate`, `x-fake-hop-response` control it.
//!
//! Every response carries its own `x-request-id: upstream-req-N`.
//!
//! A [`Fault::refuse_key`] makes the fake answer as OpenAI does when the admin key is revoked
//! or lacks a permission ([`KeyRefusal`]): the 401 and the first 403 quote the key masked
//! ([`masked_admin_key`]), the other 403 names no key.
//!
//! Besides the recorded requests, the fake counts requests with a wrong `Authorization`
//! ([`Upstream::bad_auth`]) and how many it is handling at once ([`Upstream::in_flight`],
//! [`Upstream::max_in_flight`]); a `Fault` with only a delay, injected for `"*" "*"`, makes
//! every response take that long, so parallel requests overlap.

//!
//! # Parts
//! - this file: the server, its [`State`], [`Gate`]s and the handler every request enters.
//! - [`routes`]: which route answers, or how an injected fault answers instead.
//! - [`faults`]: [`Fault`], [`Flap`], [`KeyRefusal`] and the rules that match them;
//!   [`rewrite`]: how a fault breaks an otherwise right response.
//! - [`counters`]: requests per route, wrong auth, in flight and peak, bytes moved.
//! - [`users`], [`projects`]: the organization's users and its projects and groups.
//! - [`streams`]: SSE, downloads and uploads; [`echo`]: everything else.
//! - [`reply`]: JSON bodies, OpenAI errors and query parameters shared by the routes.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::ADMIN_KEY;

mod counters;
mod echo;
mod faults;
pub mod projects;
mod reply;
mod rewrite;
mod routes;
mod streams;
mod users;

use counters::InFlight;
use faults::FaultRule;
use reply::{error, Resp};

pub use echo::{hex, REDACTED_ADMIN_AUTH};
pub use faults::{masked_admin_key, Fault, Flap, KeyRefusal, RetryAfter};
pub use rewrite::gzip_stored;
pub use streams::{pattern_chunk, sse_event, Fnv};

// === Gate ===

/// A one-shot barrier the fake waits on; the test opens it to let a response go on.
pub struct Gate(watch::Sender<bool>);

impl Gate {
    pub fn open(&self) {
        self.0.send_replace(true);
    }
    async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

// === Recorded ===

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    /// Raw path and query, exactly as received.
    pub path_and_query: String,
    pub version: Version,
    pub headers: HeaderMap,
    /// The body, for echo requests only.
    pub body: Option<Bytes>,
    /// The `x-request-id` the fake answered with.
    pub request_id: String,
}

// === State ===

/// Everything a test can inspect or change while the fake runs.
pub struct State {
    /// The organization's users by id, as `User` JSON objects.
    users: Mutex<BTreeMap<String, Value>>,
    /// Projects and groups, which each user's `projects` reflects.
    org: Mutex<projects::Org>,
    /// Requests received (any route, any outcome).
    total: AtomicUsize,
    /// Requests that did not carry exactly one `Authorization: Bearer ADMIN_KEY`.
    bad_auth: AtomicUsize,
    /// Requests in the handler right now: from arrival until the response headers are
    /// ready (for the JSON and echo routes that is the whole response).
    in_flight: AtomicUsize,
    /// The most requests that were in the handler at the same time.
    max_in_flight: AtomicUsize,
    /// Requests received per `"METHOD /path"` (no query).
    per_route: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    /// Every request, in arrival order.
    requests: Mutex<Vec<Recorded>>,
    /// Source of `upstream-req-N` ids.
    next_id: AtomicUsize,
    /// Injected failures, first match wins.
    faults: Mutex<Vec<FaultRule>>,
    /// Named gates.
    gates: Mutex<HashMap<String, Arc<Gate>>>,
    /// Bytes the upload route has consumed so far (all uploads together).
    uploaded: AtomicU64,
    /// Bytes the `bytes` route has handed to hyper so far (all downloads together).
    downloaded: AtomicU64,
}

/// A running fake upstream. Dropping it stops accepting connections.
pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    accept: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Starts a fake upstream with the seeded users `user_abc` (owner), `user_def` (reader),
/// `user_ghi` (reader) and `user_0001`..`user_0030` (reader).
pub async fn start_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind fake upstream");
    let addr = listener.local_addr().expect("fake upstream addr");
    let state = Arc::new(State::seeded());
    let accept = tokio::spawn(accept_loop(listener, state.clone()));
    Upstream {
        addr,
        state,
        accept,
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(state.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

impl State {
    fn seeded() -> Self {
        let mut users = BTreeMap::new();
        let mut add = |id: &str, name: &str, role: &str, added_at: i64| {
            users.insert(id.to_string(), users::user_value(id, name, role, added_at));
        };
        add("user_abc", "First Last", "owner", 1711471533);
        add("user_def", "Ada Lovelace", "reader", 1711471534);
        add("user_ghi", "Grace Hopper", "reader", 1711471535);
        for i in 1..=30 {
            add(
                &format!("user_{i:04}"),
                &format!("User {i}"),
                "reader",
                1711470000 + i,
            );
        }
        State {
            users: Mutex::new(users),
            org: Mutex::new(projects::Org::seeded()),
            total: AtomicUsize::new(0),
            bad_auth: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            per_route: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            next_id: AtomicUsize::new(1),
            faults: Mutex::new(Vec::new()),
            gates: Mutex::new(HashMap::new()),
            uploaded: AtomicU64::new(0),
            downloaded: AtomicU64::new(0),
        }
    }

    fn gate(&self, name: &str) -> Arc<Gate> {
        let mut gates = self.gates.lock().unwrap();
        gates
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Gate(watch::channel(false).0)))
            .clone()
    }
}

// === impl Upstream ===

impl Upstream {
    /// The `upstream.base_url` for the gateway: `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `host:port` as the gateway must send it in `Host`.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// Injects `fault` into requests matching `method` ("*" = any) and `path` ("*" = any; else
    /// the exact path without query, e.g. `/v1/organization/users/user_abc`).
    pub fn inject(&self, method: &str, path: &str, fault: Fault) {
        let rule = FaultRule {
            method: (method != "*").then(|| method.parse().expect("fault method")),
            path: (path != "*").then(|| path.to_string()),
            fault,
        };
        self.state.faults.lock().unwrap().push(rule);
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        self.state.faults.lock().unwrap().clear();
    }

    /// The named gate (created closed on first use).
    pub fn gate(&self, name: &str) -> Arc<Gate> {
        self.state.gate(name)
    }
}

// === request handling ===

async fn handle(state: Arc<State>, req: Request<Incoming>) -> io::Result<Resp> {
    let request_id = format!(
        "upstream-req-{}",
        state.next_id.fetch_add(1, Ordering::SeqCst)
    );
    let index = state.record(&req, &request_id);
    let _in_flight = InFlight::enter(&state);
    let mut resp = if !authorized(req.headers()) {
        state.bad_auth.fetch_add(1, Ordering::SeqCst);
        error(
            StatusCode::UNAUTHORIZED,
            "Invalid authorization header",
            "invalid_api_key",
        )
    } else {
        let fault = state.take_fault(req.method(), req.uri().path());
        routes::respond(&state, index, req, fault).await?
    };
    let id = HeaderValue::from_str(&request_id).expect("request id");
    resp.headers_mut().insert("x-request-id", id);
    Ok(resp)
}

fn authorized(headers: &HeaderMap) -> bool {
    let expected = format!("Bearer {ADMIN_KEY}");
    let mut values = headers.get_all(AUTHORIZATION).iter();
    matches!((values.next(), values.next()), (Some(v), None) if v.as_bytes() == expected.as_bytes())
}
