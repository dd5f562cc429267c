//! Expired users served while the upstream struggles (`cache.stale_if_error_secs`) or while one
//! background refresh runs (`cache.stale_while_revalidate_secs`), fills bounded by
//! `upstream.timeout_ms`, streamed bodies cut after `upstream.body_idle_timeout_ms`, and idle
//! connections closed after `server.idle_timeout_secs`.
//!
//! TTLs run on moka's own clock, so entries expire in real time: `ttl_secs = 1` and a sleep of
//! [`EXPIRE`] makes an entry one second past its TTL (`ttl=-1`, `Age: 1`).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use support::upstream::Fault;
use support::*;

const USER: &str = "user_abc";
/// Sleep after a fill with `ttl_secs = 1` so the entry is just past its TTL: between 1 and 2
/// seconds old, so `Age: 1` and `ttl=-1` for a while.
const EXPIRE: Duration = Duration::from_millis(1_200);

/// The settings these tests vary beyond [`GatewayConfig`]'s.
#[derive(Clone, Copy)]
struct Knobs {
    ttl_secs: u64,
    stale_if_error_secs: u64,
    stale_while_revalidate_secs: u64,
    timeout_ms: u64,
    body_idle_timeout_ms: u64,
    idle_timeout_secs: u64,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            ttl_secs: 1,
            stale_if_error_secs: 0,
            stale_while_revalidate_secs: 0,
            timeout_ms: 5_000,
            body_idle_timeout_ms: 60_000,
            idle_timeout_secs: 120,
        }
    }
}

/// A fake upstream and a gateway in front of it with `knobs`.
async fn start(knobs: Knobs) -> (Upstream, TestGateway) {
    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    cfg.ttl_secs = knobs.ttl_secs;
    cfg.timeout_ms = knobs.timeout_ms;
    let toml = with_upstream_keys(
        &cfg.toml(),
        &format!("body_idle_timeout_ms = {}", knobs.body_idle_timeout_ms),
    )
    .replacen(
        "[cache]\n",
        &format!(
            "[cache]\nstale_if_error_secs = {}\nstale_while_revalidate_secs = {}\n",
            knobs.stale_if_error_secs, knobs.stale_while_revalidate_secs
        ),
        1,
    )
    .replacen(
        "[server]\n",
        &format!(
            "[server]\nidle_timeout_secs = {}\n",
            knobs.idle_timeout_secs
        ),
        1,
    );
    let gw = start_gateway(&toml).await;
    (upstream, gw)
}

/// `Cache-Status` of stale-if-error, `past` seconds after the TTL.
fn stale_error(fwd_status: Option<u16>, past: u64) -> String {
    match fwd_status {
        Some(s) => format!("{CACHE_NAME}; fwd=stale; fwd-status={s}; ttl=-{past}"),
        None => format!("{CACHE_NAME}; fwd=stale; ttl=-{past}"),
    }
}

/// `Cache-Status` of stale-while-revalidate, `past` seconds after the TTL.
fn stale_revalidate(past: u64) -> String {
    format!("{CACHE_NAME}; hit; ttl=-{past}")
}

/// `GET` the user, bounded.
async fn get_user(gw: &TestGateway, id: &str) -> TestResponse {
    within(10, "a retrieve-user request", gw.get_user(id)).await
}

/// Fills `id` (a stored miss) and returns its bytes.
async fn prime(gw: &TestGateway, id: &str) -> Bytes {
    let r = get_user(gw, id).await;
    r.assert_status(200);
    assert_eq!(r.cache_status(), stored_miss(), "{}", r.describe());
    r.body
}

fn age(r: &TestResponse) -> u64 {
    let age = r
        .header("age")
        .unwrap_or_else(|| panic!("no Age: {}", r.describe()));
    age.parse()
        .unwrap_or_else(|_| panic!("Age {age:?} is not whole seconds"))
}

/// One `/metrics` scrape, read by series.
struct Scrape(String);

impl Scrape {
    async fn of(gw: &TestGateway) -> Scrape {
        Scrape(within(10, "/metrics", gw.metrics_text()).await)
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.0, name, labels)
    }
}

/// The series the tests here check, as (name, labels).
const SERIES: &[(&str, &[(&str, &str)])] = &[
    ("gateway_cache_stale_served_total", &[("reason", "error")]),
    (
        "gateway_cache_stale_served_total",
        &[("reason", "revalidate")],
    ),
    ("gateway_cache_refreshes_total", &[("result", "ok")]),
    ("gateway_cache_refreshes_total", &[("result", "error")]),
    ("gateway_cache_refreshes_total", &[("result", "gone")]),
    ("gateway_cache_refreshes_total", &[("result", "unstorable")]),
    ("gateway_upstream_timeouts_total", &[("phase", "headers")]),
    ("gateway_upstream_timeouts_total", &[("phase", "body")]),
    ("gateway_cache_hits_total", &[]),
    ("gateway_cache_misses_total", &[]),
];

/// Fails unless every series in [`SERIES`] moved by exactly what `expected` says between
/// `before` and now (series not named must not move).
#[track_caller]
fn assert_deltas(before: &Scrape, after: &Scrape, expected: &[(&str, (&str, &str), f64)]) {
    let mut wrong = Vec::new();
    for (name, labels) in SERIES {
        let want = expected
            .iter()
            .find(|(n, l, _)| n == name && labels.first().copied().unwrap_or(("", "")) == *l)
            .map_or(0.0, |(_, _, d)| *d);
        let got = after.get(name, labels) - before.get(name, labels);
        if got != want {
            wrong.push(format!("{name}{labels:?}: moved by {got}, expected {want}"));
        }
    }
    assert!(wrong.is_empty(), "metric deltas:\n{}", wrong.join("\n"));
}

/// Waits until `name{labels}` reached `at_least` (bounded).
async fn wait_metric(gw: &TestGateway, name: &str, labels: &[(&str, &str)], at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = Scrape::of(gw).await;
        if s.get(name, labels) >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} did not reach {at_least}:\n{}",
            s.0
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` concurrent GETs of `id`, released together; each is bounded and timed.
async fn concurrent_gets(
    gw: &Arc<TestGateway>,
    id: &str,
    n: usize,
) -> Vec<(TestResponse, Duration)> {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (gw, barrier, id) = (gw.clone(), barrier.clone(), id.to_string());
            tokio::spawn(async move {
                barrier.wait().await;
                let start = Instant::now();
                let r = within(10, "a concurrent GET", gw.get_user(&id)).await;
                (r, start.elapsed())
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(within(15, "a concurrent GET task", t).await.expect("task"));
    }
    out
}

// === stale-if-error ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_the_expired_entry_on_a_503_with_its_true_age() {
    const CLIENTS: usize = 8;
    let (upstream, gw) = start(Knobs {
        stale_if_error_secs: 5,
        ..Knobs::default()
    })
    .await;
    let gw = Arc::new(gw);
    let stored = prime(&gw, USER).await;
    tokio::time::sleep(EXPIRE).await;
    // Slow enough that every client joins the one refetch.
    upstream.inject("GET", USER_PATH, Fault::new().status(503).delay_ms(300));
    let before = Scrape::of(&gw).await;
    for (r, _) in concurrent_gets(&gw, USER, CLIENTS).await {
        r.assert_status(200);
        assert_eq!(
            r.cache_status(),
            stale_error(Some(503), 1),
            "{}",
            r.describe()
        );
        assert_eq!(age(&r), 1, "Age is the entry's true age");
        assert_eq!(r.body, stored, "the stale entry's bytes");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        assert!(
            !r.request_id().starts_with("upstream-req-"),
            "a stale answer is the gateway's own"
        );
    }
    assert_eq!(
        upstream.count("GET", USER_PATH),
        2,
        "concurrent requests for an expired entry share one refetch"
    );
    let after = Scrape::of(&gw).await;
    assert_deltas(
        &before,
        &after,
        &[
            (
                "gateway_cache_stale_served_total",
                ("reason", "error"),
                CLIENTS as f64,
            ),
            ("gateway_cache_refreshes_total", ("result", "error"), 1.0),
        ],
    );

    // Healthy again: the next request refetches, stores and answers the fresh user.
    upstream.clear_faults();
    upstream.set_role(USER, "reader");
    let fresh = get_user(&gw, USER).await;
    fresh.assert_status(200);
    assert_eq!(fresh.cache_status(), stored_miss(), "{}", fresh.describe());
    assert_eq!(fresh.body, upstream.user_body(USER));
    let hit = get_user(&gw, USER).await;
    hit.hit_ttl();
    assert_eq!(hit.json()["role"], "reader");
    assert_deltas(
        &after,
        &Scrape::of(&gw).await,
        &[
            ("gateway_cache_refreshes_total", ("result", "ok"), 1.0),
            ("gateway_cache_misses_total", ("", ""), 1.0),
            ("gateway_cache_hits_total", ("", ""), 1.0),
        ],
    );
    assert_settled(gw.admin_addr, "after the test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_an_expired_entry_share_one_refetch() {
    const CLIENTS: usize = 8;
    let (upstream, gw) = start(Knobs {
        stale_if_error_secs: 5,
        ..Knobs::default()
    })
    .await;
    let gw = Arc::new(gw);
    prime(&gw, USER).await;
    upstream.set_role(USER, "member");
    tokio::time::sleep(EXPIRE).await;
    // A healthy but slow upstream: every client arrives while the refetch runs.
    upstream.inject("GET", USER_PATH, Fault::new().delay_ms(300).times(1));
    let before = Scrape::of(&gw).await;
    let seen = concurrent_gets(&gw, USER, CLIENTS).await;
    let fresh = upstream.user_body(USER);
    let mut statuses: Vec<String> = seen.iter().map(|(r, _)| r.cache_status()).collect();
    statuses.sort();
    for (r, _) in &seen {
        r.assert_status(200);
        assert_eq!(r.body, fresh, "every client gets the refetched user");
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == stored_miss()).count(),
        1,
        "the request that ran the refetch is the stored miss: {statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| s.starts_with(&format!("{CACHE_NAME}; hit; ttl=")))
            .count(),
        CLIENTS - 1,
        "the others are hits on what it stored: {statuses:?}"
    );
    assert_eq!(upstream.count("GET", USER_PATH), 2, "one refetch");
    assert_deltas(
        &before,
        &Scrape::of(&gw).await,
        &[
            ("gateway_cache_refreshes_total", ("result", "ok"), 1.0),
            ("gateway_cache_misses_total", ("", ""), 1.0),
            ("gateway_cache_hits_total", ("", ""), (CLIENTS - 1) as f64),
        ],
    );
}

#[tokio::test]
async fn stale_if_error_covers_429_and_a_200_that_is_not_the_user() {
    let (upstream, gw) = start(Knobs {
        stale_if_error_secs: 5,
        ..Knobs::default()
    })
    .await;
    let stored = prime(&gw, USER).await;
    tokio::time::sleep(EXPIRE).await;
    let before = Scrape::of(&gw).await;
    let faults = [
        // A 1 ms pause, over before the next case: the loop sleeps past it (a pause
        // serves stale users at once, without a refetch: see tests/budget.rs).
        (429, Fault::new().too_many(RetryAfter::Millis(1))),
        (500, Fault::new().status(500)),
        (200, Fault::new().wrong_id()),
        (200, Fault::new().malformed_json()),
        (200, Fault::new().wrong_object()),
    ];
    let n = faults.len();
    for (status, fault) in faults {
        upstream.inject("GET", USER_PATH, fault.times(1));
        let r = get_user(&gw, USER).await;
        r.assert_status(200);
        assert_eq!(
            r.cache_status(),
            stale_error(Some(status), 1),
            "{}",
            r.describe()
        );
        assert_eq!(age(&r), 1);
        assert_eq!(r.body, stored);
        if status == 429 {
            // The pause began before this answer was sent; without the sleep the
            // next request can arrive inside that 1 ms and be served stale unasked.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_deltas(
        &before,
        &Scrape::of(&gw).await,
        &[
            (
                "gateway_cache_stale_served_total",
                ("reason", "error"),
                n as f64,
            ),
            (
                "gateway_cache_refreshes_total",
                ("result", "error"),
                n as f64,
            ),
        ],
    );
}

#[tokio::test]
async fn stale_if_error_without_a_response_has_no_fwd_status() {
    let (upstream, gw) = start(Knobs {
        stale_if_error_secs: 5,
        timeout_ms: 400,
        ..Knobs::default()
    })
    .await;
    let stored = prime(&gw, USER).await;
    tokio::time::sleep(EXPIRE).await;

    // A reset before any response.
    let before = Scrape::of(&gw).await;
    upstream.inject(
        "GET",
        USER_PATH,
        Fault::new().reset_before_headers().times(1),
    );
    let r = get_user(&gw, USER).await;
    r.assert_status(200);
    assert_eq!(r.cache_status(), stale_error(None, 1), "{}", r.describe());
    assert_eq!(age(&r), 1);
    assert_eq!(r.body, stored);
    let after_reset = Scrape::of(&gw).await;
    assert_deltas(
        &before,
        &after_reset,
        &[
            ("gateway_cache_stale_served_total", ("reason", "error"), 1.0),
            ("gateway_cache_refreshes_total", ("result", "error"), 1.0),
        ],
    );

    // No headers within timeout_ms.
    upstream.inject("GET", USER_PATH, Fault::new().delay_ms(2_000).times(1));
    let start = Instant::now();
    let r = get_user(&gw, USER).await;
    let took = start.elapsed();
    r.assert_status(200);
    assert_eq!(r.cache_status(), stale_error(None, 1), "{}", r.describe());
    assert_eq!(r.body, stored);
    assert!(
        (Duration::from_millis(350)..Duration::from_millis(1_500)).contains(&took),
        "served stale after the 400 ms deadline, took {took:?}"
    );
    assert_deltas(
        &after_reset,
        &Scrape::of(&gw).await,
        &[
            ("gateway_cache_stale_served_total", ("reason", "error"), 1.0),
            ("gateway_cache_refreshes_total", ("result", "error"), 1.0),
            ("gateway_upstream_timeouts_total", ("phase", "headers"), 1.0),
        ],
    );
    assert_settled(gw.admin_addr, "after the test").await;
}

#[tokio::test]
async fn a_404_or_other_4xx_on_refetch_is_passed_through_and_drops_the_entry() {
    let (upstream, gw) = start(Knobs {
        stale_if_error_secs: 5,
        ..Knobs::default()
    })
    .await;
    for (id, status) in [("user_abc", 404), ("user_def", 410)] {
        let path = format!("/v1/organization/users/{id}");
        prime(&gw, id).await;
        tokio::time::sleep(EXPIRE).await;
        upstream.inject("GET", &path, Fault::new().status(status).times(1));
        let before = Scrape::of(&gw).await;
        let r = get_user(&gw, id).await;
        r.assert_status(status);
        assert_eq!(r.cache_status(), unstored_miss(), "{}", r.describe());
        assert_eq!(r.json()["error"]["code"], "injected", "the upstream's body");
        assert_eq!(
            r.request_id(),
            upstream.last_request(&path).request_id,
            "the upstream's answer, passed through"
        );
        // The entry is gone: the next request is a miss, not a stale answer.
        let next = get_user(&gw, id).await;
        next.assert_status(200);
        assert_eq!(next.cache_status(), stored_miss(), "{}", next.describe());
        assert_eq!(next.body, upstream.user_body(id));
        assert_eq!(upstream.count("GET", &path), 3);
        assert_deltas(
            &before,
            &Scrape::of(&gw).await,
            &[
                ("gateway_cache_refreshes_total", ("result", "gone"), 1.0),
                ("gateway_cache_misses_total", ("", ""), 2.0),
            ],
        );
    }
}

// === stale-while-revalidate ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    const CLIENTS: usize = 16;
    let (upstream, gw) = start(Knobs {
        stale_while_revalidate_secs: 5,
        ..Knobs::default()
    })
    .await;
    let gw = Arc::new(gw);
    let stored = prime(&gw, USER).await;
    upstream.set_role(USER, "reader");
    tokio::time::sleep(EXPIRE).await;
    // The refresh hangs until the gate opens: every answer below is the stale entry, at once.
    upstream.inject("GET", USER_PATH, Fault::new().gate("refresh").times(1));
    let before = Scrape::of(&gw).await;
    for (r, took) in concurrent_gets(&gw, USER, CLIENTS).await {
        r.assert_status(200);
        assert_eq!(r.cache_status(), stale_revalidate(1), "{}", r.describe());
        assert_eq!(age(&r), 1);
        assert_eq!(r.body, stored);
        assert!(
            took < Duration::from_millis(1_000),
            "a stale-while-revalidate answer waited {took:?} on the refresh"
        );
    }
    upstream.wait_for_count("GET", USER_PATH, 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        upstream.count("GET", USER_PATH),
        2,
        "one background refresh for all the stale answers"
    );
    let mid = Scrape::of(&gw).await;
    assert_deltas(
        &before,
        &mid,
        &[(
            "gateway_cache_stale_served_total",
            ("reason", "revalidate"),
            CLIENTS as f64,
        )],
    );

    upstream.gate("refresh").open();
    let ok = mid.get("gateway_cache_refreshes_total", &[("result", "ok")]);
    wait_metric(
        &gw,
        "gateway_cache_refreshes_total",
        &[("result", "ok")],
        ok + 1.0,
    )
    .await;
    // The refreshed entry is a plain hit with the new body.
    let hit = get_user(&gw, USER).await;
    hit.assert_status(200);
    assert!(hit.hit_ttl() <= 1, "{}", hit.describe());
    assert_eq!(hit.body, upstream.user_body(USER));
    assert_eq!(hit.json()["role"], "reader");
    assert_eq!(upstream.count("GET", USER_PATH), 2);
    assert_deltas(
        &mid,
        &Scrape::of(&gw).await,
        &[
            ("gateway_cache_refreshes_total", ("result", "ok"), 1.0),
            ("gateway_cache_hits_total", ("", ""), 1.0),
        ],
    );
    assert_settled(gw.admin_addr, "after the test").await;
}

#[tokio::test]
async fn a_write_during_a_slow_refresh_wins() {
    let (upstream, gw) = start(Knobs {
        stale_while_revalidate_secs: 5,
        ..Knobs::default()
    })
    .await;
    assert_eq!(get_user(&gw, USER).await.json()["role"], "owner");
    tokio::time::sleep(EXPIRE).await;
    // The refresh reads the user (owner) now and answers only once the gate opens.
    upstream.inject("GET", USER_PATH, Fault::new().gate("refresh").times(1));
    let stale = get_user(&gw, USER).await;
    assert_eq!(stale.cache_status(), stale_revalidate(1));
    assert_eq!(stale.json()["role"], "owner");
    upstream.wait_for_count("GET", USER_PATH, 2).await;

    let post = within(
        10,
        "the POST",
        gw.req(Method::POST, USER_PATH)
            .json(&json!({"role": "reader"}))
            .send(),
    )
    .await;
    post.assert_status(200);
    assert_eq!(post.json()["role"], "reader");

    // Before the refresh ends: the write evicted the entry.
    let after_write = get_user(&gw, USER).await;
    assert_eq!(after_write.cache_status(), stored_miss());
    assert_eq!(after_write.json()["role"], "reader");

    // The refresh ends with the pre-write user; it must not come back.
    let before = Scrape::of(&gw).await;
    upstream.gate("refresh").open();
    let ok = before.get("gateway_cache_refreshes_total", &[("result", "ok")]);
    wait_metric(
        &gw,
        "gateway_cache_refreshes_total",
        &[("result", "ok")],
        ok + 1.0,
    )
    .await;
    for _ in 0..3 {
        let r = get_user(&gw, USER).await;
        r.assert_status(200);
        assert_eq!(r.json()["role"], "reader", "{}", r.describe());
    }
    assert_eq!(upstream.count("GET", USER_PATH), 3);
}

#[tokio::test]
async fn a_background_refresh_that_gets_404_drops_the_entry() {
    let (upstream, gw) = start(Knobs {
        stale_while_revalidate_secs: 5,
        ..Knobs::default()
    })
    .await;
    let stored = prime(&gw, USER).await;
    tokio::time::sleep(EXPIRE).await;
    upstream.inject("GET", USER_PATH, Fault::new().status(404).times(1));
    let before = Scrape::of(&gw).await;
    let stale = get_user(&gw, USER).await;
    assert_eq!(stale.cache_status(), stale_revalidate(1));
    assert_eq!(stale.body, stored);
    let gone = before.get("gateway_cache_refreshes_total", &[("result", "gone")]);
    wait_metric(
        &gw,
        "gateway_cache_refreshes_total",
        &[("result", "gone")],
        gone + 1.0,
    )
    .await;
    let next = get_user(&gw, USER).await;
    assert_eq!(next.cache_status(), stored_miss(), "{}", next.describe());
    assert_eq!(upstream.count("GET", USER_PATH), 3);
    assert_deltas(
        &before,
        &Scrape::of(&gw).await,
        &[
            (
                "gateway_cache_stale_served_total",
                ("reason", "revalidate"),
                1.0,
            ),
            ("gateway_cache_refreshes_total", ("result", "gone"), 1.0),
            ("gateway_cache_misses_total", ("", ""), 1.0),
        ],
    );
}

// === bounded fills ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_stalls_mid_body_is_504_for_every_waiter_within_timeout_ms() {
    const CLIENTS: usize = 8;
    const TIMEOUT_MS: u64 = 500;
    let (upstream, gw) = start(Knobs {
        ttl_secs: 60,
        timeout_ms: TIMEOUT_MS,
        ..Knobs::default()
    })
    .await;
    let gw = Arc::new(gw);
    // Headers and half the body, then nothing (the gate never opens).
    upstream.inject("GET", USER_PATH, Fault::new().stall_mid_body("never"));
    let before = Scrape::of(&gw).await;
    let started = Instant::now();
    let late = {
        let gw = gw.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(TIMEOUT_MS / 2)).await;
            within(10, "a late waiter", gw.get_user(USER)).await
        })
    };
    for (r, took) in concurrent_gets(&gw, USER, CLIENTS).await {
        assert_openai_error(&r, 504, "gateway_error", "upstream_timeout");
        assert!(
            (Duration::from_millis(TIMEOUT_MS - 50)..Duration::from_millis(TIMEOUT_MS + 1_000))
                .contains(&took),
            "a waiter got its 504 after {took:?} (timeout_ms {TIMEOUT_MS})"
        );
    }
    let late = within(10, "the late waiter", late).await.expect("task");
    assert_openai_error(&late, 504, "gateway_error", "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_millis(TIMEOUT_MS + 1_000),
        "the late waiter waited for the fill it joined, not a deadline of its own"
    );
    assert_eq!(upstream.count("GET", USER_PATH), 1, "one shared fill");
    assert_deltas(
        &before,
        &Scrape::of(&gw).await,
        &[
            ("gateway_upstream_timeouts_total", ("phase", "body"), 1.0),
            ("gateway_cache_misses_total", ("", ""), (CLIENTS + 1) as f64),
        ],
    );
    assert_settled(gw.admin_addr, "after the test").await;

    // The stalled fill is over: the next request fills afresh.
    upstream.clear_faults();
    let r = get_user(&gw, USER).await;
    r.assert_status(200);
    assert_eq!(r.cache_status(), stored_miss(), "{}", r.describe());
    assert_eq!(r.body, upstream.user_body(USER));
    assert_eq!(upstream.count("GET", USER_PATH), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_without_headers_within_timeout_ms_is_504_counted_as_headers() {
    const CLIENTS: usize = 4;
    const TIMEOUT_MS: u64 = 400;
    let (upstream, gw) = start(Knobs {
        ttl_secs: 60,
        timeout_ms: TIMEOUT_MS,
        ..Knobs::default()
    })
    .await;
    let gw = Arc::new(gw);
    // Run a few rounds: which deadline fires first must not decide the phase.
    for round in 1..=3 {
        upstream.inject("GET", USER_PATH, Fault::new().delay_ms(2_000).times(1));
        let before = Scrape::of(&gw).await;
        for (r, took) in concurrent_gets(&gw, USER, CLIENTS).await {
            assert_openai_error(&r, 504, "gateway_error", "upstream_timeout");
            assert!(
                took < Duration::from_millis(TIMEOUT_MS + 1_000),
                "504 after {took:?}"
            );
        }
        let after = Scrape::of(&gw).await;
        assert_deltas(
            &before,
            &after,
            &[
                ("gateway_upstream_timeouts_total", ("phase", "headers"), 1.0),
                ("gateway_cache_misses_total", ("", ""), CLIENTS as f64),
            ],
        );
        let timeouts =
            |s: &Scrape| s.get("gateway_upstream_requests_total", &[("status", "timeout")]);
        assert_eq!(
            timeouts(&after) - timeouts(&before),
            1.0,
            "round {round}: the timed-out fill is an upstream request with status=timeout"
        );
        assert_eq!(upstream.count("GET", USER_PATH), round);
    }
    assert_settled(gw.admin_addr, "after the test").await;
}

// === idle bodies and connections ===

#[tokio::test]
async fn a_streamed_body_that_goes_idle_is_cut_after_body_idle_timeout_ms() {
    const IDLE_MS: u64 = 300;
    let (upstream, gw) = start(Knobs {
        timeout_ms: 500,
        body_idle_timeout_ms: IDLE_MS,
        ..Knobs::default()
    })
    .await;
    let before = Scrape::of(&gw).await;
    // 1 MiB declared, the first 16 KiB at once, the rest behind a gate that never opens.
    let path = "/v1/_test/bytes?n=1048576&chunk=16384&gate=never";
    let resp = gw
        .req(Method::GET, path)
        .send_streaming()
        .await
        .expect("response headers");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0usize;
    let mut last_frame = Instant::now();
    let outcome = within(10, "the idle body to be cut", async {
        loop {
            match body.frame().await {
                Some(Ok(f)) => {
                    got += f.data_ref().map_or(0, |d| d.len());
                    last_frame = Instant::now();
                }
                Some(Err(e)) => return Err(format!("{e:?}")),
                None => return Ok(()),
            }
        }
    })
    .await;
    let idle = last_frame.elapsed();
    assert!(outcome.is_err(), "the cut body must not end cleanly");
    assert_eq!(got, 16_384, "the bytes sent before the stall arrive");
    assert!(
        (Duration::from_millis(IDLE_MS - 50)..Duration::from_millis(IDLE_MS + 1_500))
            .contains(&idle),
        "cut {idle:?} after the last frame (body_idle_timeout_ms {IDLE_MS})"
    );
    assert_deltas(
        &before,
        &Scrape::of(&gw).await,
        &[("gateway_upstream_timeouts_total", ("phase", "body"), 1.0)],
    );
    drop(body);
    assert_settled(gw.admin_addr, "after the test").await;

    // A body that keeps flowing is never cut, though it outlasts timeout_ms.
    let sse = within(
        10,
        "the SSE stream",
        gw.req(Method::GET, "/v1/_test/sse?n=8&interval_ms=120")
            .send(),
    )
    .await;
    sse.assert_status(200);
    assert_eq!(sse.text().matches("event: message").count(), 8);
    drop(upstream);
}

/// Opens an h2c connection, makes one request on it and returns how long after that
/// response the gateway closed the connection.
async fn h2_idle_close_after(gw: &TestGateway) -> Duration {
    let stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(gw.url(USER_PATH))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .body(empty())
        .expect("request");
    let resp = within(10, "the h2 response", sender.send_request(req))
        .await
        .expect("h2 request");
    assert_eq!(resp.status(), 200);
    within(10, "the h2 body", resp.into_body().collect())
        .await
        .expect("body");
    let done = Instant::now();
    let ended = within(20, "the gateway to close the idle h2 connection", conn)
        .await
        .expect("conn task");
    assert!(ended.is_ok(), "a graceful close: {ended:?}");
    done.elapsed()
}

/// The contract: a connection with no open request is closed `idle_timeout_secs` after its
/// last response.
#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_idle_timeout_secs() {
    let (_upstream, gw) = start(Knobs {
        idle_timeout_secs: 1,
        ..Knobs::default()
    })
    .await;
    let took = h2_idle_close_after(&gw).await;
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2_500)).contains(&took),
        "closed {took:?} after the last response (idle_timeout_secs = 1)"
    );
    assert_settled(gw.admin_addr, "after the test").await;
}

/// What holds today: with a short `header_read_timeout_ms` the idle close comes within a
/// second or so of `idle_timeout_secs`, gracefully (GOAWAY, then the connection ends cleanly).
#[tokio::test]
async fn an_idle_http2_connection_is_closed_gracefully() {
    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    cfg.extra = String::new();
    let toml = cfg.toml().replacen(
        "[server]\n",
        "[server]\nidle_timeout_secs = 1\nheader_read_timeout_ms = 500\n",
        1,
    );
    let gw = start_gateway(&toml).await;
    let took = h2_idle_close_after(&gw).await;
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2_500)).contains(&took),
        "closed {took:?} after the last response (idle_timeout_secs = 1, \
         header_read_timeout_ms = 500)"
    );
    assert_settled(gw.admin_addr, "after the test").await;
}
