//! The fault matrix: what a client sees, what the cache holds afterwards and whether the
//! gateway stays healthy when the upstream refuses connections, resets, stalls, storms with
//! 5xx/429, answers malformed JSON or another user, or flaps.
//!
//! Every case runs twice, with stale serving off and with `cache.stale_if_error_secs` on (a
//! primed entry, just expired), and prints one table row per mode:
//! `| case | stale | what the clients saw | upstream GETs |`. Run with
//! `cargo nextest run --test faults --success-output immediate` (or `cargo test --test faults
//! -- --nocapture`) to see the table.
//!
//! Invariants checked in every case: every request is answered within a bound; every 200 that
//! came from the cache (hit, stale, stored) is the upstream's truth for the requested id; a
//! 200 that is not the user is only ever relayed unstored (`fwd=miss`); after the upstream
//! heals the next request stores the truth and the one after is a hit; another id still
//! works; the in-flight gauges return to 0.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use serde_json::Value;
use support::upstream::{Fault, RetryAfter};
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const USER: &str = "user_abc";
/// Concurrent clients per fault burst.
const CLIENTS: usize = 8;
/// `upstream.timeout_ms` in every case.
const TIMEOUT_MS: u64 = 600;
/// `cache.stale_if_error_secs` when stale serving is on.
const STALE_SECS: u64 = 5;
/// After a fill with `ttl_secs = 1`, the entry is just past its TTL.
const EXPIRE: Duration = Duration::from_millis(1_200);
/// How long the flapping upstream flaps, per mode (both modes run one after the other).
const FLAP_SECS: u64 = 3;
/// The flapping upstream fails for this long, then answers for this long, and so on.
const FLAP_PERIOD: Duration = Duration::from_millis(200);
/// Concurrent clients against the flapping upstream.
const FLAP_CLIENTS: usize = 32;
/// Users the flap clients read (odd ones flap with 503, even ones with resets).
const FLAP_USERS: &[&str] = &["user_0001", "user_0002", "user_0003", "user_0004"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Off,
    On,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::On => "stale_if_error_secs = 5",
        }
    }
}

/// The faults of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Nothing listens on the upstream's port any more.
    Refused,
    ResetBeforeHeaders,
    ResetMidBody,
    /// Headers later than `timeout_ms`.
    SlowHeaders,
    /// Headers and half the body, then nothing.
    StalledBody,
    /// Every request answered with this status (429 with `retry-after: 1`, which pauses
    /// the organization for a second each time: requests wait for the pause's end, within
    /// `budget_wait_ms`, then meet the next 429).
    Storm(u16),
    MalformedJson,
    WrongId,
}

impl Kind {
    fn name(self) -> String {
        match self {
            Kind::Refused => "connection refused".into(),
            Kind::ResetBeforeHeaders => "reset before headers".into(),
            Kind::ResetMidBody => "reset mid-body".into(),
            Kind::SlowHeaders => format!("headers after timeout_ms ({TIMEOUT_MS} ms)"),
            Kind::StalledBody => "body stalls".into(),
            Kind::Storm(s) => format!("{s} storm"),
            Kind::MalformedJson => "malformed JSON (200)".into(),
            Kind::WrongId => "a User with another id (200)".into(),
        }
    }

    fn fault(self) -> Option<Fault> {
        Some(match self {
            Kind::Refused => return None,
            Kind::ResetBeforeHeaders => Fault::new().reset_before_headers(),
            Kind::ResetMidBody => Fault::new().drop_mid_body(),
            Kind::SlowHeaders => Fault::new().delay_ms(TIMEOUT_MS + 1_500),
            Kind::StalledBody => Fault::new().stall_mid_body("never"),
            Kind::Storm(429) => Fault::new().too_many(RetryAfter::Seconds(1)),
            Kind::Storm(s) => Fault::new().status(s),
            Kind::MalformedJson => Fault::new().malformed_json(),
            Kind::WrongId => Fault::new().wrong_id(),
        })
    }

    /// The `fwd-status` a stale answer carries: the upstream's status when it answered.
    fn fwd_status(self) -> Option<u16> {
        match self {
            Kind::Refused
            | Kind::ResetBeforeHeaders
            | Kind::ResetMidBody
            | Kind::SlowHeaders
            | Kind::StalledBody => None,
            Kind::MalformedJson | Kind::WrongId => Some(200),
            Kind::Storm(s) => Some(s),
        }
    }

    /// True when the failure is the gateway's deadline.
    fn times_out(self) -> bool {
        matches!(self, Kind::SlowHeaders | Kind::StalledBody)
    }
}

// === a TCP relay that can refuse connections ===

/// Relays TCP from its own loopback port to `target`. [`Relay::close`] drops the listener and
/// every relayed connection, so the port refuses connections until [`Relay::reopen`].
struct Relay {
    addr: SocketAddr,
    target: SocketAddr,
    running: Mutex<Option<Relaying>>,
}

/// A listening relay: its accept task and the tasks of the connections it relays.
type Relaying = (JoinHandle<()>, Arc<Mutex<Vec<JoinHandle<()>>>>);

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let relay = Relay {
            addr,
            target,
            running: Mutex::new(None),
        };
        relay.serve(listener);
        relay
    }

    fn serve(&self, listener: TcpListener) {
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (target, tracked) = (self.target, conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tracked.lock().unwrap().push(task);
            }
        });
        *self.running.lock().unwrap() = Some((accept, conns));
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Stops listening and cuts every relayed connection; returns once the port is closed.
    async fn close(&self) {
        let (accept, conns) = self.running.lock().unwrap().take().expect("relay running");
        accept.abort();
        let _ = accept.await;
        let conns: Vec<_> = conns.lock().unwrap().drain(..).collect();
        for c in conns {
            c.abort();
            let _ = c.await;
        }
        assert!(
            TcpStream::connect(self.addr).await.is_err(),
            "the closed relay port still accepts"
        );
    }

    /// Listens on the same port again.
    async fn reopen(&self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind relay");
        self.serve(listener);
    }
}

// === the gateway under test ===

async fn start_gateway_for(base_url: &str, mode: Mode) -> TestGateway {
    let mut cfg = GatewayConfig::new(base_url);
    cfg.ttl_secs = 1;
    cfg.timeout_ms = TIMEOUT_MS;
    let stale = match mode {
        Mode::Off => 0,
        Mode::On => STALE_SECS,
    };
    let toml = cfg.toml().replacen(
        "[cache]\n",
        &format!("[cache]\nstale_if_error_secs = {stale}\n"),
        1,
    );
    start_gateway(&toml).await
}

/// What one client saw.
struct Seen {
    status: u16,
    cache: String,
    age: Option<u64>,
    retry_after: Option<String>,
    /// The body, or how it broke off.
    body: Result<Bytes, String>,
    took: Duration,
}

impl Seen {
    /// `status Cache-Status`, plus how the body ended when it did not end well.
    fn label(&self, truth: &Bytes) -> String {
        if self.status == 0 {
            return "connection cut, no response".into();
        }
        let mut s = format!("{} {}", self.status, self.cache);
        match &self.body {
            Err(_) => s.push_str(" (body broken off)"),
            Ok(b) if self.status == 200 && b != truth => s.push_str(" (not the user, relayed)"),
            Ok(_) => {}
        }
        s
    }

    fn json(&self) -> Value {
        let body = self.body.as_ref().expect("a whole body");
        serde_json::from_slice(body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(body)
            )
        })
    }
}

/// `GET` `id` through `gw`, every step bounded; a transport error is status 0.
async fn fetch(gw: &TestGateway, id: &str) -> Seen {
    let path = format!("/v1/organization/users/{id}");
    let start = Instant::now();
    within(10, "a GET through the gateway", async {
        let resp = match gw.req(Method::GET, &path).send_streaming().await {
            Ok(r) => r,
            Err(e) => {
                return Seen {
                    status: 0,
                    cache: "<no response>".into(),
                    age: None,
                    retry_after: None,
                    body: Err(e),
                    took: start.elapsed(),
                }
            }
        };
        let (parts, body) = resp.into_parts();
        let h = |n: &str| {
            parts
                .headers
                .get(n)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| format!("{e:?}"));
        Seen {
            status: parts.status.as_u16(),
            cache: h("cache-status").unwrap_or_else(|| "<no Cache-Status>".into()),
            age: h("age").and_then(|a| a.parse().ok()),
            retry_after: h("retry-after"),
            body,
            took: start.elapsed(),
        }
    })
    .await
}

/// `n` concurrent GETs of `id`, released together.
async fn burst(gw: &Arc<TestGateway>, id: &str, n: usize) -> Vec<Seen> {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (gw, barrier, id) = (gw.clone(), barrier.clone(), id.to_string());
            tokio::spawn(async move {
                barrier.wait().await;
                fetch(&gw, &id).await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(within(15, "a burst task", t).await.expect("task"));
    }
    out
}

/// Fails unless `body` is the upstream's truth for `id`: same bytes, and (for a readable
/// message) the same `id`, `role` and `name`.
#[track_caller]
fn assert_truth(body: &Bytes, id: &str, truth: &Bytes, what: &str) {
    let got: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{what}: a 200 that is not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        )
    });
    let want: Value = serde_json::from_slice(truth).expect("truth is JSON");
    assert_eq!(got["id"], id, "{what}: another user's body: {got}");
    assert_eq!(got["role"], want["role"], "{what}: role differs: {got}");
    assert_eq!(got["name"], want["name"], "{what}: name differs: {got}");
    assert_eq!(body, truth, "{what}: not the upstream's bytes");
}

/// `fwd=stale` with the optional `fwd-status`; returns the seconds past the TTL.
#[track_caller]
fn parse_stale(cache: &str, fwd_status: Option<u16>) -> u64 {
    let prefix = match fwd_status {
        Some(s) => format!("{CACHE_NAME}; fwd=stale; fwd-status={s}; ttl=-"),
        None => format!("{CACHE_NAME}; fwd=stale; ttl=-"),
    };
    cache
        .strip_prefix(&prefix)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("expected {prefix}N, got Cache-Status {cache:?}"))
}

/// Checks one answer given while `kind` is in force, in `mode`.
#[track_caller]
fn check_during(kind: Kind, mode: Mode, s: &Seen, truth: &Bytes, stored: &Bytes) {
    let what = format!("{} / stale {:?}", kind.name(), mode);
    assert_ne!(s.status, 0, "{what}: no response: {:?}", s.body);
    if kind.times_out() {
        assert!(
            s.took >= Duration::from_millis(TIMEOUT_MS - 50)
                && s.took < Duration::from_millis(TIMEOUT_MS + 1_500),
            "{what}: answered after {:?}, timeout_ms {TIMEOUT_MS}",
            s.took
        );
    }
    if mode == Mode::On {
        assert_eq!(s.status, 200, "{what}: {}", s.cache);
        // While the organization is paused after a 429 the stale user is served at once,
        // without a refetch: no fwd-status then.
        let paused = kind == Kind::Storm(429) && !s.cache.contains("fwd-status");
        let past = parse_stale(&s.cache, kind.fwd_status().filter(|_| !paused));
        assert!((1..=STALE_SECS).contains(&past), "{what}: ttl=-{past}");
        let age = s.age.expect("a stale answer has an Age");
        assert!(
            age == past || age == past + 1,
            "{what}: Age {age} for an entry {past} s past its 1 s TTL"
        );
        let body = s.body.as_ref().expect("a whole stale body");
        assert_eq!(body, stored, "{what}: the stale entry's bytes");
        assert_truth(body, USER, truth, &what);
        return;
    }
    assert!(
        !s.cache.contains("hit") && !s.cache.contains("stale") && !s.cache.contains("stored"),
        "{what}: with stale serving off nothing may come from the cache: {}",
        s.cache
    );
    match kind {
        // A fill that read a broken body has no answer to relay: 502, as if none came.
        Kind::Refused | Kind::ResetBeforeHeaders | Kind::ResetMidBody => {
            assert_eq!(s.status, 502, "{what}");
            assert_eq!(s.json()["error"]["code"], "upstream_unavailable", "{what}");
        }
        Kind::SlowHeaders | Kind::StalledBody => {
            assert_eq!(s.status, 504, "{what}");
            assert_eq!(s.json()["error"]["code"], "upstream_timeout", "{what}");
        }
        // After the first 429 the organization is paused: a fill whose deadline
        // (timeout_ms) ends before the pause does gets the gateway's own 429 at once.
        Kind::Storm(429) if s.json()["error"]["code"] == "organization_budget_exceeded" => {
            assert_eq!(s.status, 429, "{what}");
            assert!(s.retry_after.is_some(), "{what}: retry-after");
        }
        Kind::Storm(status) => {
            assert_eq!(
                s.status, status,
                "{what}: the upstream's status passes through"
            );
            assert_eq!(s.cache, format!("{CACHE_NAME}; fwd=miss"), "{what}");
            assert_eq!(s.json()["error"]["code"], "injected", "{what}: its body");
            if status == 429 {
                assert_eq!(s.retry_after.as_deref(), Some("1"), "{what}: retry-after");
            }
        }
        Kind::MalformedJson | Kind::WrongId => {
            // Relayed as the upstream sent it, never stored (the follow-ups check that).
            assert_eq!(s.status, 200, "{what}");
            assert_eq!(s.cache, format!("{CACHE_NAME}; fwd=miss"), "{what}");
            let body = s.body.as_ref().expect("whole body");
            assert_ne!(body, truth, "{what}");
            if kind == Kind::WrongId {
                assert_eq!(s.json()["id"], "user_someone_else", "{what}");
            }
        }
    }
}

async fn scrape(gw: &TestGateway) -> String {
    within(10, "/metrics", gw.metrics_text()).await
}

fn delta(before: &str, after: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(after, name, labels) - metric(before, name, labels)
}

/// Counts of each label, as `N× label` joined.
fn summary(labels: impl IntoIterator<Item = String>) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for l in labels {
        *counts.entry(l).or_default() += 1;
    }
    counts
        .iter()
        .map(|(l, n)| format!("{n}× {l}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One case in one mode; returns its table row.
async fn run_case(kind: Kind, mode: Mode) -> String {
    let what = format!("{} / stale {:?}", kind.name(), mode);
    let upstream = start_upstream().await;
    let relay = match kind {
        Kind::Refused => Some(Relay::start(upstream.addr).await),
        _ => None,
    };
    let base = relay
        .as_ref()
        .map_or_else(|| upstream.base_url(), Relay::base_url);
    let gw = Arc::new(start_gateway_for(&base, mode).await);
    let truth = upstream.user_body(USER);

    // A primed entry, just expired.
    let primed = fetch(&gw, USER).await;
    assert_eq!(primed.status, 200, "{what}: prime");
    assert_eq!(primed.cache, format!("{CACHE_NAME}; fwd=miss; stored"));
    let stored = primed.body.expect("primed body");
    assert_truth(&stored, USER, &truth, &what);
    tokio::time::sleep(EXPIRE).await;

    // The fault, a burst of clients, and one more request while it lasts.
    let before = scrape(&gw).await;
    let gets_before = upstream.count("GET", USER_PATH);
    match (&relay, kind.fault()) {
        (Some(relay), _) => relay.close().await,
        (None, Some(fault)) => upstream.inject("GET", USER_PATH, fault),
        (None, None) => unreachable!("every case but Refused injects a fault"),
    }
    let seen = burst(&gw, USER, CLIENTS).await;
    for s in &seen {
        check_during(kind, mode, s, &truth, &stored);
    }
    let again = fetch(&gw, USER).await;
    check_during(kind, mode, &again, &truth, &stored);
    let gets = upstream.count("GET", USER_PATH) - gets_before;
    let during = scrape(&gw).await;

    // Healed: the next request stores the truth, the one after is a hit.
    match &relay {
        Some(relay) => relay.reopen().await,
        None => upstream.clear_faults(),
    }
    if kind == Kind::Storm(429) {
        // The last 429's pause (retry-after: 1) outlasts a fill's deadline (timeout_ms).
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let healed = fetch(&gw, USER).await;
    assert_eq!(
        healed.status, 200,
        "{what}: after healing: {}",
        healed.cache
    );
    assert_eq!(
        healed.cache,
        format!("{CACHE_NAME}; fwd=miss; stored"),
        "{what}: after healing"
    );
    assert_truth(healed.body.as_ref().expect("body"), USER, &truth, &what);
    let hit = fetch(&gw, USER).await;
    assert!(
        hit.cache.starts_with(&format!("{CACHE_NAME}; hit; ttl=")),
        "{what}: {}",
        hit.cache
    );
    assert_truth(hit.body.as_ref().expect("body"), USER, &truth, &what);
    // Another id works.
    let other = fetch(&gw, "user_def").await;
    assert_eq!(other.status, 200, "{what}: another id");
    assert_truth(
        other.body.as_ref().expect("body"),
        "user_def",
        &upstream.user_body("user_def"),
        &what,
    );
    assert_settled(gw.admin_addr, &what).await;

    // Metrics over the fault.
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &during, name, labels);
    let stale_served = d("gateway_cache_stale_served_total", &[("reason", "error")]);
    let refresh_errors = d("gateway_cache_refreshes_total", &[("result", "error")]);
    let answers = (CLIENTS + 1) as f64;
    match mode {
        Mode::Off => {
            assert_eq!(stale_served, 0.0, "{what}");
            assert_eq!(refresh_errors, 0.0, "{what}: no entry to refresh");
        }
        Mode::On => {
            assert_eq!(stale_served, answers, "{what}: every answer was stale");
            assert!(
                (1.0..=answers).contains(&refresh_errors),
                "{what}: {refresh_errors} failed refreshes for {answers} stale answers"
            );
        }
    }
    let headers = d("gateway_upstream_timeouts_total", &[("phase", "headers")]);
    let body = d("gateway_upstream_timeouts_total", &[("phase", "body")]);
    let (want_headers, want_body) = match kind {
        Kind::SlowHeaders => (true, false),
        Kind::StalledBody => (false, true),
        _ => (false, false),
    };
    assert_eq!(
        headers > 0.0,
        want_headers,
        "{what}: headers timeouts {headers}"
    );
    assert_eq!(body > 0.0, want_body, "{what}: body timeouts {body}");
    let refreshed = delta(
        &during,
        &scrape(&gw).await,
        "gateway_cache_refreshes_total",
        &[("result", "ok")],
    );
    let want_refreshed = if mode == Mode::On { 1.0 } else { 0.0 };
    assert_eq!(refreshed, want_refreshed, "{what}: refreshes after healing");

    let mut labels: Vec<String> = seen.iter().map(|s| s.label(&truth)).collect();
    labels.push(again.label(&truth));
    let upstream_gets = match kind {
        Kind::Refused => "0 (refused)".to_string(),
        _ => gets.to_string(),
    };
    format!(
        "| {} | {} | {} | {} |",
        kind.name(),
        mode.label(),
        summary(labels),
        upstream_gets
    )
}

/// Runs `kind` with stale serving off and on (at the same time, on separate gateways) and
/// prints both rows.
async fn both_modes(kind: Kind) {
    let (off, on) = tokio::join!(run_case(kind, Mode::Off), run_case(kind, Mode::On));
    println!("{off}\n{on}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused() {
    both_modes(Kind::Refused).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_before_headers() {
    both_modes(Kind::ResetBeforeHeaders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_mid_body() {
    both_modes(Kind::ResetMidBody).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_slower_than_timeout_ms() {
    both_modes(Kind::SlowHeaders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_stalls() {
    both_modes(Kind::StalledBody).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_500s() {
    both_modes(Kind::Storm(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_503s() {
    both_modes(Kind::Storm(503)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_429s_with_retry_after() {
    both_modes(Kind::Storm(429)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json() {
    both_modes(Kind::MalformedJson).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_with_another_id() {
    both_modes(Kind::WrongId).await;
}

// === the flapping upstream ===

/// [`FLAP_CLIENTS`] clients read [`FLAP_USERS`] for [`FLAP_SECS`] while the upstream fails
/// for [`FLAP_PERIOD`], answers for as long, and so on. Returns the table row.
async fn flap(mode: Mode) -> String {
    let what = format!("flapping upstream / stale {mode:?}");
    let upstream = start_upstream().await;
    let gw = Arc::new(start_gateway_for(&upstream.base_url(), mode).await);
    let truths: BTreeMap<&str, Bytes> = FLAP_USERS
        .iter()
        .map(|id| (*id, upstream.user_body(id)))
        .collect();
    for id in FLAP_USERS {
        let s = fetch(&gw, id).await;
        assert_eq!(s.status, 200, "{what}: prime {id}");
    }
    let before = scrape(&gw).await;
    for (i, id) in FLAP_USERS.iter().enumerate() {
        let fault = if i % 2 == 0 {
            Fault::new().status(503)
        } else {
            Fault::new().reset_before_headers()
        };
        let path = format!("/v1/organization/users/{id}");
        upstream.inject("GET", &path, fault.flapping(FLAP_PERIOD));
    }
    let until = Instant::now() + Duration::from_secs(FLAP_SECS);
    let tasks: Vec<_> = (0..FLAP_CLIENTS)
        .map(|c| {
            let (gw, truths) = (gw.clone(), truths.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut n = c;
                while Instant::now() < until {
                    let id = FLAP_USERS[n % FLAP_USERS.len()];
                    let s = fetch(&gw, id).await;
                    seen.push((id, s));
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (seen, truths)
            })
        })
        .collect();
    let mut labels = Vec::new();
    let mut stale = 0usize;
    for t in tasks {
        let (seen, truths) = within(FLAP_SECS + 15, "a flap client", t)
            .await
            .expect("task");
        for (id, s) in seen {
            assert_ne!(s.status, 0, "{what}: no response for {id}: {:?}", s.body);
            let truth = &truths[id];
            if s.status == 200 {
                let body = s.body.as_ref().expect("a whole 200 body");
                assert_truth(body, id, truth, &what);
            } else {
                assert_eq!(mode, Mode::Off, "{what}: {id} got {} {}", s.status, s.cache);
                assert!(
                    [502, 503].contains(&s.status),
                    "{what}: {id} got {} {}",
                    s.status,
                    s.cache
                );
            }
            if s.cache.contains("fwd=stale") {
                stale += 1;
            }
            // Cache-Status varies in its ttl; group by outcome only.
            let outcome = s.cache.split("; ttl=").next().unwrap_or("").to_string();
            labels.push(format!("{} {outcome}", s.status));
        }
    }
    upstream.clear_faults();
    for id in FLAP_USERS {
        let s = fetch(&gw, id).await;
        assert_eq!(s.status, 200, "{what}: {id} after the flapping stopped");
        assert_truth(s.body.as_ref().expect("body"), id, &truths[id], &what);
    }
    assert_settled(gw.admin_addr, &what).await;
    let after = scrape(&gw).await;
    let served = delta(
        &before,
        &after,
        "gateway_cache_stale_served_total",
        &[("reason", "error")],
    );
    assert_eq!(served, stale as f64, "{what}: stale answers counted");
    if mode == Mode::Off {
        assert_eq!(stale, 0, "{what}");
    }
    let total = labels.len();
    let gets: usize = FLAP_USERS
        .iter()
        .map(|id| upstream.count("GET", &format!("/v1/organization/users/{id}")))
        .sum();
    format!(
        "| flapping every {} ms for {FLAP_SECS} s, {FLAP_CLIENTS} clients ({total} requests) | {} | {} | {gets} |",
        FLAP_PERIOD.as_millis(),
        mode.label(),
        summary(labels),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_upstream_under_32_clients() {
    let off = flap(Mode::Off).await;
    let on = flap(Mode::On).await;
    println!("{off}\n{on}");
}
