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

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::body::{channel_body, full, TestBody};

pub mod projects;
use super::ADMIN_KEY;

/// What the echo route reports instead of the admin key (so the echo never leaks it).
pub const REDACTED_ADMIN_AUTH: &str = "Bearer <the-admin-key>";

// === Fault ===

/// A failure to inject into matching requests. Build with the methods below.
#[derive(Clone, Debug, Default)]
pub struct Fault {
    /// Wait this long before sending response headers.
    pub delay: Option<Duration>,
    /// Wait this long before handling the request at all (a write applied late).
    pub apply_after: Option<Duration>,
    /// Wait for this named gate to open before sending response headers.
    pub gate: Option<String>,
    /// Answer with this status and an OpenAI error body (429 adds `retry-after`).
    pub status: Option<u16>,
    /// Refuse the admin key the way OpenAI does (takes precedence over `status`).
    pub refusal: Option<KeyRefusal>,
    /// Close the connection without any response.
    pub reset_before_headers: bool,
    /// Send headers (with the full `content-length`) and half the body, then break off.
    pub drop_mid_body: bool,
    /// Send headers (with the full `content-length`) and half the body, then send nothing
    /// more until this named gate opens (a body that stalls).
    pub stall_mid_body: Option<String>,
    /// Apply only in every other `period` since the fault was built (the first period
    /// fails, the next answers normally, ...): an upstream that flaps. While it does not
    /// apply the rule is skipped (a later rule may match) and its `times` is not used up.
    pub flap: Option<Flap>,
    /// Replace the body with truncated JSON (status stays).
    pub malformed_json: bool,
    /// Rewrite the JSON body's `id` to another user's.
    pub wrong_id: bool,
    /// Rewrite the JSON body's `object` to something that is not `organization.user`.
    pub wrong_object: bool,
    /// Pad the JSON body (with an extra string field) to exactly this many bytes.
    pub pad_to: Option<usize>,
    /// Gzip the body and send `content-encoding: gzip`.
    pub gzip: bool,
    /// Use this `content-type` instead of `application/json`.
    pub content_type: Option<String>,
    /// Apply to this many matching requests, then disappear (None: forever).
    pub times: Option<usize>,
}

impl Fault {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn delay_ms(mut self, ms: u64) -> Self {
        self.delay = Some(Duration::from_millis(ms));
        self
    }
    pub fn apply_after_ms(mut self, ms: u64) -> Self {
        self.apply_after = Some(Duration::from_millis(ms));
        self
    }
    pub fn gate(mut self, name: &str) -> Self {
        self.gate = Some(name.to_string());
        self
    }
    pub fn status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }
    pub fn refuse_key(mut self, how: KeyRefusal) -> Self {
        self.refusal = Some(how);
        self
    }
    pub fn reset_before_headers(mut self) -> Self {
        self.reset_before_headers = true;
        self
    }
    pub fn drop_mid_body(mut self) -> Self {
        self.drop_mid_body = true;
        self
    }
    pub fn stall_mid_body(mut self, gate: &str) -> Self {
        self.stall_mid_body = Some(gate.to_string());
        self
    }
    /// Flaps from now on: applies for `period`, then not for `period`, and so on.
    pub fn flapping(mut self, period: Duration) -> Self {
        self.flap = Some(Flap {
            since: std::time::Instant::now(),
            period,
        });
        self
    }
    pub fn malformed_json(mut self) -> Self {
        self.malformed_json = true;
        self
    }
    pub fn wrong_id(mut self) -> Self {
        self.wrong_id = true;
        self
    }
    pub fn wrong_object(mut self) -> Self {
        self.wrong_object = true;
        self
    }
    pub fn pad_to(mut self, bytes: usize) -> Self {
        self.pad_to = Some(bytes);
        self
    }
    pub fn gzip(mut self) -> Self {
        self.gzip = true;
        self
    }
    pub fn content_type(mut self, ct: &str) -> Self {
        self.content_type = Some(ct.to_string());
        self
    }
    pub fn times(mut self, n: usize) -> Self {
        self.times = Some(n);
        self
    }
}

/// When a [`Fault::flapping`] fault applies.
#[derive(Clone, Copy, Debug)]
pub struct Flap {
    /// When the first (failing) period began.
    pub since: std::time::Instant,
    /// Length of each failing and each healthy period.
    pub period: Duration,
}

impl Flap {
    /// True during the failing periods (the 1st, 3rd, ...).
    pub fn failing_now(&self) -> bool {
        let n = self.since.elapsed().as_nanos() / self.period.as_nanos().max(1);
        n.is_multiple_of(2)
    }
}

/// How [`Fault::refuse_key`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRefusal {
    /// 401 `invalid_api_key`, "Incorrect API key provided: sk-admin-****…6789. You can find
    /// your API key at …", as OpenAI answers a revoked key.
    Revoked,
    /// 403 whose message quotes the key masked (no "API key" phrase: only the key's own
    /// characters give it away).
    ForbiddenNamingKey,
    /// 403 about a missing permission that names no key (relayed by the gateway).
    ForbiddenWithoutKey,
}

impl KeyRefusal {
    /// The status and exact body the fake answers with.
    pub fn response(self) -> (StatusCode, Bytes) {
        let masked = masked_admin_key();
        let (status, message, code) = match self {
            Self::Revoked => (
                StatusCode::UNAUTHORIZED,
                format!(
                    "Incorrect API key provided: {masked}. You can find your API key at \
                     https://platform.openai.com/account/api-keys."
                ),
                "invalid_api_key",
            ),
            Self::ForbiddenNamingKey => (
                StatusCode::FORBIDDEN,
                format!("Key {masked} has been disabled for organization org-test."),
                "access_denied",
            ),
            Self::ForbiddenWithoutKey => (
                StatusCode::FORBIDDEN,
                "You have insufficient permissions for this operation. Missing scopes: \
                 api.management.read. Check that you have the correct role in your organization."
                    .to_string(),
                "insufficient_permissions",
            ),
        };
        let body = json!({"error": {"message": message, "type": "invalid_request_error",
            "param": null, "code": code}});
        (status, json_bytes(&body))
    }
}

/// [`ADMIN_KEY`] masked as OpenAI quotes a key: its `sk-admin-` prefix, stars, and its last
/// four characters.
pub fn masked_admin_key() -> String {
    let prefix = "sk-admin-";
    let last4 = &ADMIN_KEY[ADMIN_KEY.len() - 4..];
    let stars = "*".repeat(ADMIN_KEY.len() - prefix.len() - 4);
    format!("{prefix}{stars}{last4}")
}

struct FaultRule {
    method: Option<Method>,
    path: Option<String>,
    fault: Fault,
}

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
    /// `user` with its `projects` as they are now.
    fn with_projects(&self, id: &str, user: &Value) -> Value {
        let mut user = user.clone();
        user["projects"] = self.org.lock().unwrap().projects_of(id);
        user
    }

    fn seeded() -> Self {
        let mut users = BTreeMap::new();
        let mut add = |id: &str, name: &str, role: &str, added_at: i64| {
            users.insert(id.to_string(), user_value(id, name, role, added_at));
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

    fn take_fault(&self, method: &Method, path: &str) -> Option<Fault> {
        let mut faults = self.faults.lock().unwrap();
        let pos = faults.iter().position(|r| {
            r.method.as_ref().is_none_or(|m| m == method)
                && r.path.as_deref().is_none_or(|p| p == path)
                && r.fault.flap.is_none_or(|f| f.failing_now())
        })?;
        let fault = faults[pos].fault.clone();
        if let Some(n) = &mut faults[pos].fault.times {
            *n -= 1;
            if *n == 0 {
                faults.remove(pos);
            }
        }
        Some(fault)
    }

    fn record(&self, req: &Request<Incoming>, request_id: &str) -> usize {
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
        super::wait_until(10, &what, || self.count(method, path) >= n).await;
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

    /// Changes a user's role directly in the fake (not through the gateway).
    pub fn set_role(&self, id: &str, role: &str) {
        let mut users = self.state.users.lock().unwrap();
        let user = users.get_mut(id).unwrap_or_else(|| panic!("no user {id}"));
        user["role"] = json!(role);
    }

    /// Adds (or replaces) a user.
    pub fn add_user(&self, id: &str, name: &str, role: &str) {
        let value = user_value(id, name, role, 1711479999);
        self.state
            .users
            .lock()
            .unwrap()
            .insert(id.to_string(), value);
    }

    /// The exact bytes `GET /v1/organization/users/{id}` answers right now (no faults).
    pub fn user_body(&self, id: &str) -> Bytes {
        let users = self.state.users.lock().unwrap();
        let user = users.get(id).unwrap_or_else(|| panic!("no user {id}"));
        json_bytes(&self.state.with_projects(id, user))
    }
}

// === request handling ===

type Resp = Response<TestBody>;

/// Counts a request in [`State::in_flight`] (and the peak) while it lives.
struct InFlight(Arc<State>);

impl InFlight {
    fn enter(state: &Arc<State>) -> InFlight {
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
        respond(&state, index, req, fault).await?
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

async fn respond(
    state: &Arc<State>,
    index: usize,
    req: Request<Incoming>,
    fault: Option<Fault>,
) -> io::Result<Resp> {
    let Some(fault) = fault else {
        return route(state, index, req).await;
    };
    if let Some(wait) = fault.apply_after {
        // Applied on a task of its own, so that it lands even when the client has gone.
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let state = state.clone();
        let late = tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            apply_late(&state, &parts.method, parts.uri.path(), &body).await
        });
        return late.await.map_err(io::Error::other);
    }
    // The response (and with it the user's state) is taken before waiting, as a real server
    // that read the database and then stalled would do.
    let resp = match (fault.refusal, fault.status) {
        (Some(how), _) => {
            let (status, body) = how.response();
            Response::builder()
                .status(status)
                .header(CONTENT_TYPE, "application/json")
                .body(full(body))
                .expect("response")
        }
        (None, Some(status)) => status_error(status),
        (None, None) => route(state, index, req).await?,
    };
    if let Some(gate) = &fault.gate {
        state.gate(gate).wait().await;
    }
    if let Some(delay) = fault.delay {
        tokio::time::sleep(delay).await;
    }
    if fault.reset_before_headers {
        return Err(io::Error::other("injected: reset before headers"));
    }
    apply_fault(state, resp, &fault).await
}

async fn route(state: &Arc<State>, index: usize, req: Request<Incoming>) -> io::Result<Resp> {
    let path = req.uri().path().to_string();
    if path.ends_with('/') {
        // No users route ends in a slash (an empty id is no id).
        return Ok(echo(state, index, req).await);
    }
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let method = req.method().clone();
    // Percent-decoded, as the real API's router does.
    let decoded: Vec<String> = segments.iter().map(|s| decode(s)).collect();
    let decoded: Vec<&str> = decoded.iter().map(String::as_str).collect();
    if let ["v1", rest @ ..] = decoded.as_slice() {
        if projects::handles(rest, &method) {
            return Ok(projects::route(state, rest, req).await);
        }
    }
    Ok(match (segments.as_slice(), &method) {
        (["v1", "organization", "users"], &Method::GET) => list_users(state, req.uri().query()),
        (["v1", "organization", "users"], _) => not_allowed(),
        // Path parameters are percent-decoded, as the real API's router does.
        (["v1", "organization", "users", id], &Method::GET) => {
            let org = req.headers().get("openai-organization");
            let org = org.and_then(|v| v.to_str().ok());
            get_user(state, &decode(id), org)
        }
        (["v1", "organization", "users", id], &Method::POST) => {
            modify_user(state, &decode(id), req).await
        }
        (["v1", "organization", "users", id], &Method::DELETE) => delete_user(state, &decode(id)),
        (["v1", "organization", "users", _], _) => not_allowed(),
        (["v1", "organization", "users", id, "roles"], &Method::GET) => {
            user_roles(state, &decode(id))
        }
        (["v1", "organization", "users", _, "roles"], _) => not_allowed(),
        (["v1", "_test", "sse"], _) => sse(state, req.uri().query()),
        (["v1", "_test", "bytes"], _) => bytes_route(state, req.uri().query()),
        (["v1", "_test", "upload"], _) => upload(state, req).await,
        _ => echo(state, index, req).await,
    })
}

/// A write to a user, a project or a group, from its parts (see [`Fault::apply_after`]).
async fn apply_late(state: &Arc<State>, method: &Method, path: &str, body: &Bytes) -> Resp {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match (segments.as_slice(), method) {
        (["v1", "organization", "users", id], &Method::POST) => {
            modify_user_with(state, &decode(id), body)
        }
        (["v1", "organization", "users", id], &Method::DELETE) => delete_user(state, &decode(id)),
        (["v1", rest @ ..], _) if projects::handles(rest, method) => {
            let value = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
            projects::route_with(state, rest, method, &value)
        }
        _ => not_allowed(),
    }
}

/// A percent-decoded path segment (invalid escapes and non-UTF-8 kept as they are).
fn decode(segment: &str) -> String {
    let b = segment.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|c| hex(*c)),
            b.get(i + 2).and_then(|c| hex(*c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| segment.to_string())
}

// === users routes ===

fn user_value(id: &str, name: &str, role: &str, added_at: i64) -> Value {
    json!({
        "object": "organization.user",
        "id": id,
        "name": name,
        "email": format!("{}@example.com", id),
        "role": role,
        "added_at": added_at,
    })
}

/// Pretty-printed, so byte-for-byte comparisons notice any re-serialization.
fn json_bytes(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec_pretty(value).expect("serialize"))
}

fn json_response(status: StatusCode, value: &Value) -> Resp {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(full(json_bytes(value)))
        .expect("response")
}

fn error(status: StatusCode, message: &str, code: &str) -> Resp {
    let kind = match status.as_u16() {
        429 => "requests",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    json_response(status, &body)
}

fn status_error(status: u16) -> Resp {
    let status = StatusCode::from_u16(status).expect("fault status");
    let mut resp = error(status, "injected failure", "injected");
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from_static("7"));
        resp.headers_mut()
            .insert("retry-after-ms", HeaderValue::from_static("7000"));
    }
    resp
}

fn not_allowed() -> Resp {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed",
        "method_not_allowed",
    )
}

fn user_not_found(id: &str) -> Resp {
    let msg = format!("No user with id '{id}' in this organization.");
    error(StatusCode::NOT_FOUND, &msg, "user_not_found")
}

/// A user as the organization `org` (the `OpenAI-Organization` header) sees it: its `name`
/// says which organization answered, so a test can tell tenants' answers apart.
fn get_user(state: &State, id: &str, org: Option<&str>) -> Resp {
    match state.users.lock().unwrap().get(id) {
        Some(user) => match org {
            Some(org) => {
                let mut seen = state.with_projects(id, user);
                let name = seen["name"].as_str().unwrap_or_default().to_string();
                seen["name"] = json!(format!("{name} (as seen by {org})"));
                json_response(StatusCode::OK, &seen)
            }
            None => json_response(StatusCode::OK, &state.with_projects(id, user)),
        },
        None => user_not_found(id),
    }
}

async fn modify_user(state: &State, id: &str, req: Request<Incoming>) -> Resp {
    match req.into_body().collect().await {
        Ok(b) => modify_user_with(state, id, &b.to_bytes()),
        Err(_) => error(StatusCode::BAD_REQUEST, "Unreadable body", "bad_body"),
    }
}

fn modify_user_with(state: &State, id: &str, body: &Bytes) -> Resp {
    let role = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("role").and_then(Value::as_str).map(str::to_string));
    let Some(role) = role.filter(|r| ["owner", "reader", "member"].contains(&r.as_str())) else {
        let msg = "Invalid body: 'role' must be one of owner, reader, member";
        return error(StatusCode::BAD_REQUEST, msg, "invalid_role");
    };
    let mut users = state.users.lock().unwrap();
    match users.get_mut(id) {
        Some(user) => {
            user["role"] = json!(role);
            json_response(StatusCode::OK, user)
        }
        None => user_not_found(id),
    }
}

fn delete_user(state: &State, id: &str) -> Resp {
    match state.users.lock().unwrap().remove(id) {
        Some(_) => {
            let body = json!({"object": "organization.user.deleted", "id": id, "deleted": true});
            json_response(StatusCode::OK, &body)
        }
        None => user_not_found(id),
    }
}

fn list_users(state: &State, query: Option<&str>) -> Resp {
    let params = query_params(query);
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        None => 20,
        Some(Ok(l)) if (1..=100).contains(&l) => l,
        Some(_) => {
            let msg = "limit must be an integer between 1 and 100";
            return error(StatusCode::BAD_REQUEST, msg, "invalid_limit");
        }
    };
    let users = state.users.lock().unwrap();
    let after = params.get("after").cloned().unwrap_or_default();
    let rest: Vec<&Value> = users
        .iter()
        .filter(|(id, _)| after.is_empty() || id.as_str() > after.as_str())
        .map(|(_, u)| u)
        .collect();
    let page: Vec<&Value> = rest.iter().take(limit).copied().collect();
    let id_of = |u: Option<&&Value>| u.map(|u| u["id"].clone()).unwrap_or(Value::Null);
    let body = json!({
        "object": "list",
        "data": page,
        "first_id": id_of(page.first()),
        "last_id": id_of(page.last()),
        "has_more": rest.len() > page.len(),
    });
    json_response(StatusCode::OK, &body)
}

fn user_roles(state: &State, id: &str) -> Resp {
    if !state.users.lock().unwrap().contains_key(id) {
        return user_not_found(id);
    }
    let body = json!({
        "object": "list",
        "data": [{
            "id": "role_01J1F8ROLE01",
            "name": "API Group Manager",
            "permissions": ["api.groups.read", "api.groups.write"],
            "resource_type": "api.organization",
            "predefined_role": false,
            "description": "Allows managing organization groups",
            "created_at": 1711471533,
            "updated_at": 1711472599,
            "created_by": id,
            "metadata": {}
        }],
        "has_more": false,
        "next": null
    });
    json_response(StatusCode::OK, &body)
}

// === fault transforms ===

async fn apply_fault(state: &State, resp: Resp, fault: &Fault) -> io::Result<Resp> {
    let rewrites = fault.malformed_json
        || fault.wrong_id
        || fault.wrong_object
        || fault.pad_to.is_some()
        || fault.gzip
        || fault.content_type.is_some()
        || fault.drop_mid_body
        || fault.stall_mid_body.is_some();
    if !rewrites {
        return Ok(resp);
    }
    let (mut parts, body) = resp.into_parts();
    let mut bytes = body.collect().await?.to_bytes();
    bytes = rewrite_json(bytes, fault);
    if let Some(ct) = &fault.content_type {
        parts.headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(ct).expect("content-type"),
        );
    }
    if fault.gzip {
        bytes = Bytes::from(gzip_stored(&bytes));
        parts
            .headers
            .insert("content-encoding", HeaderValue::from_static("gzip"));
    }
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    let body = match (&fault.stall_mid_body, fault.drop_mid_body) {
        (_, true) => broken_body(bytes),
        (Some(gate), false) => stalled_body(bytes, state.gate(gate)),
        (None, false) => full(bytes),
    };
    Ok(Response::from_parts(parts, body))
}

fn rewrite_json(bytes: Bytes, fault: &Fault) -> Bytes {
    if fault.malformed_json {
        let cut = bytes.len() / 2;
        return bytes.slice(..cut);
    }
    if !(fault.wrong_id || fault.wrong_object || fault.pad_to.is_some()) {
        return bytes;
    }
    let mut value: Value = serde_json::from_slice(&bytes).expect("fault on a JSON route");
    if fault.wrong_id {
        value["id"] = json!("user_someone_else");
    }
    if fault.wrong_object {
        value["object"] = json!("organization.project");
    }
    if let Some(target) = fault.pad_to {
        value["padding"] = json!("");
        let len = json_bytes(&value).len();
        assert!(
            len <= target,
            "pad_to({target}) is below the body's own size {len}"
        );
        value["padding"] = json!("x".repeat(target - len));
    }
    json_bytes(&value)
}

/// Half of `bytes`, then an error: hyper aborts the message, so a client sees a body that is
/// shorter than its `content-length`.
fn broken_body(bytes: Bytes) -> TestBody {
    let (tx, body) = channel_body(2);
    tokio::spawn(async move {
        let half = bytes.slice(..bytes.len() / 2);
        tx.send(half).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.fail("injected: connection dropped mid-body").await;
    });
    body
}

/// Half of `bytes`, then nothing until `gate` opens, then the rest: a body that stalls with
/// its `content-length` unmet. Gone with the client: a dropped receiver ends the task.
fn stalled_body(bytes: Bytes, gate: Arc<Gate>) -> TestBody {
    let (tx, body) = channel_body(2);
    tokio::spawn(async move {
        let half = bytes.len() / 2;
        if !tx.send(bytes.slice(..half)).await {
            return;
        }
        gate.wait().await;
        tx.send(bytes.slice(half..)).await;
    });
    body
}

/// A valid gzip member using stored (uncompressed) deflate blocks.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[][..]]
    } else {
        data.chunks(65535).collect()
    };
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.iter().enumerate() {
        out.push(u8::from(i == last));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

// === streaming test routes ===

fn query_params(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

fn param<T: std::str::FromStr>(params: &HashMap<String, String>, name: &str, default: T) -> T {
    params
        .get(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One SSE event, as the fake sends it.
pub fn sse_event(seq: usize) -> String {
    format!("event: message\ndata: {{\"seq\":{seq}}}\n\n")
}

fn sse(state: &Arc<State>, query: Option<&str>) -> Resp {
    let params = query_params(query);
    let n: usize = param(&params, "n", 5);
    let interval = Duration::from_millis(param(&params, "interval_ms", 50));
    let gate = params.get("gate").map(|g| state.gate(g));
    let (tx, body) = channel_body(1);
    tokio::spawn(async move {
        for seq in 0..n {
            if seq == 1 {
                if let Some(gate) = &gate {
                    gate.wait().await;
                }
            }
            if seq > 0 {
                tokio::time::sleep(interval).await;
            }
            if !tx.send(sse_event(seq)).await {
                return;
            }
        }
    });
    Response::builder()
        .header(CONTENT_TYPE, "text/event-stream")
        .header("cache-control", "no-cache")
        .body(body)
        .expect("response")
}

/// Bytes `offset..offset+len` of the endless pattern the bytes and upload routes use.
pub fn pattern_chunk(offset: u64, len: usize) -> Bytes {
    let start = (offset % 251) as usize;
    let mut buf = BytesMut::with_capacity(len + 251);
    let cycle: Vec<u8> = (0..251u32).map(|b| b as u8).collect();
    while buf.len() < start + len {
        buf.extend_from_slice(&cycle);
    }
    buf.freeze().slice(start..start + len)
}

fn bytes_route(state: &Arc<State>, query: Option<&str>) -> Resp {
    let params = query_params(query);
    let n: u64 = param(&params, "n", 1024);
    let chunk: usize = param(&params, "chunk", 64 * 1024);
    let break_after: Option<u64> = params.get("break_after").and_then(|v| v.parse().ok());
    let gate = params.get("gate").map(|g| state.gate(g));
    let (tx, body) = channel_body(2);
    let state = state.clone();
    tokio::spawn(async move {
        let mut sent = 0u64;
        let limit = break_after.unwrap_or(n).min(n);
        while sent < limit {
            let len = chunk.min((limit - sent) as usize);
            state.downloaded.fetch_add(len as u64, Ordering::SeqCst);
            if !tx.send(pattern_chunk(sent, len)).await {
                return;
            }
            if sent == 0 {
                if let Some(gate) = &gate {
                    gate.wait().await;
                }
            }
            sent += len as u64;
        }
        if break_after.is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.fail("injected: body broken off").await;
        }
    });
    Response::builder()
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_LENGTH, n)
        .body(body)
        .expect("response")
}

/// FNV-1a 64 over a stream of chunks.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

async fn upload(state: &Arc<State>, req: Request<Incoming>) -> Resp {
    let mut body = req.into_body();
    let (mut len, mut fnv, mut pattern_ok) = (0u64, Fnv::default(), true);
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                let msg = format!("upload broke off after {len} bytes: {e}");
                return error(StatusCode::BAD_REQUEST, &msg, "upload_broken");
            }
        };
        if let Ok(data) = frame.into_data() {
            fnv.update(&data);
            pattern_ok &= data == pattern_chunk(len, data.len());
            len += data.len() as u64;
            state
                .uploaded
                .fetch_add(data.len() as u64, Ordering::SeqCst);
        }
    }
    let body = json!({"len": len, "fnv1a": fnv.hex(), "pattern_ok": pattern_ok});
    json_response(StatusCode::OK, &body)
}

// === echo ===

async fn echo(state: &Arc<State>, index: usize, req: Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let msg = format!("request body broke off: {e}");
            return error(StatusCode::BAD_REQUEST, &msg, "body_broken");
        }
    };
    state.requests.lock().unwrap()[index].body = Some(body.clone());
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(gate) = header("x-fake-gate") {
        state.gate(gate).wait().await;
    }
    if let Some(ms) = header("x-fake-delay-ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = header("x-fake-status")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let report = echo_report(&parts, &body);
    let mut resp = json_response(status, &report);
    let headers = resp.headers_mut();
    headers.insert(
        "x-echo-method",
        HeaderValue::from_str(parts.method.as_str()).unwrap(),
    );
    headers.insert("x-fake-response", HeaderValue::from_static("yes"));
    headers.append("x-fake-multi", HeaderValue::from_static("one"));
    headers.append("x-fake-multi", HeaderValue::from_static("two"));
    if header("x-fake-hop-response").is_some() {
        add_response_hop_headers(headers);
    }
    if parts.method == Method::HEAD {
        *resp.body_mut() = super::body::empty();
    }
    resp
}

/// Hop-by-hop headers on a response: none of them may reach the gateway's client.
fn add_response_hop_headers(headers: &mut HeaderMap) {
    let pairs = [
        ("connection", "x-resp-hop"),
        ("x-resp-hop", "must-not-pass"),
        ("keep-alive", "timeout=5"),
        ("proxy-authenticate", "Basic realm=\"upstream\""),
    ];
    for (name, value) in pairs {
        headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
}

fn echo_report(parts: &http::request::Parts, body: &Bytes) -> Value {
    let admin_auth = format!("Bearer {ADMIN_KEY}");
    let headers: Vec<Value> = parts
        .headers
        .iter()
        .map(|(name, value)| {
            let value = if value.as_bytes() == admin_auth.as_bytes() {
                REDACTED_ADMIN_AUTH.to_string()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            json!([name.as_str(), value])
        })
        .collect();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
    json!({
        "method": parts.method.as_str(),
        "path": path,
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_hex": hex(body),
        "body_len": body.len(),
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
