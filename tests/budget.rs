//! The organization's budget (`upstream.rate_limit`, `upstream.budget_wait_ms`,
//! `[[clients]] budget_weight`): one ceiling on everything sent upstream by all clients,
//! fair turns while it is empty, and the pause after an upstream 429.
//!
//! A request with no turn in time gets 429 `requests` / `organization_budget_exceeded`
//! with `retry-after` and `retry-after-ms`, and never reaches the upstream; cache hits take
//! no turn.

mod support;

use std::time::{Duration, Instant};

use http::Method;
use support::*;
use tokio::task::JoinSet;

/// A gateway whose `[upstream]` gets `upstream_lines` and `[cache]` gets `cache_lines`,
/// with the two default (unlimited) clients.
async fn start_budget(
    upstream_lines: &str,
    cache_lines: &str,
    ttl_secs: u64,
) -> (Upstream, TestGateway) {
    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    cfg.ttl_secs = ttl_secs;
    let toml = with_upstream_keys(&cfg.toml(), upstream_lines);
    let toml = toml.replacen("[cache]\n", &format!("[cache]\n{cache_lines}\n"), 1);
    let gw = start_gateway(&toml).await;
    (upstream, gw)
}

/// Checks the gateway's budget refusal and returns its `retry-after-ms`.
#[track_caller]
fn assert_budget_429(resp: &TestResponse) -> Duration {
    assert_openai_error(resp, 429, "requests", "organization_budget_exceeded");
    let secs: u64 = resp
        .header("retry-after")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no whole-second retry-after: {}", resp.describe()));
    let ms: u64 = resp
        .header("retry-after-ms")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no retry-after-ms: {}", resp.describe()));
    assert!(secs >= 1 && ms >= 1, "{}", resp.describe());
    assert_eq!(
        secs,
        ms.div_ceil(1000).max(1),
        "retry-after agrees with retry-after-ms"
    );
    Duration::from_millis(ms)
}

/// Requests the fake saw whose path starts with `prefix`.
fn seen(upstream: &Upstream, prefix: &str) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|r| r.path_and_query.starts_with(prefix))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_budget() {
    let (upstream, gw) = start_budget(
        "rate_limit = { requests_per_minute = 60, burst = 3 }\nbudget_wait_ms = 200",
        "",
        60,
    )
    .await;
    // Primed with one turn of the burst: its hits take none.
    gw.get_user("user_abc").await.assert_status(200);
    let mut sent = JoinSet::new();
    for i in 0..10 {
        let key = if i % 2 == 0 {
            CLIENT_KEY
        } else {
            OTHER_CLIENT_KEY
        };
        let req = gw
            .req(Method::GET, &format!("/v1/echo/shared/{i}"))
            .bearer(key);
        sent.spawn(req.send());
    }
    let (mut passed, mut refused) = (0, 0);
    while let Some(resp) = sent.join_next().await {
        let resp = resp.expect("task");
        if resp.status == 200 {
            passed += 1;
        } else {
            assert_budget_429(&resp);
            refused += 1;
        }
    }
    let forwarded = seen(&upstream, "/v1/echo/shared/");
    eprintln!("10 forwards at burst 3 (one spent priming): {passed} passed, {refused} refused");
    assert_eq!(
        forwarded, passed,
        "every request that passed reached the upstream, no other"
    );
    assert!(forwarded <= 4, "the upstream saw {forwarded} forwards");
    assert!(refused >= 6, "{refused} refused");
    let hit = gw.get_user("user_abc").await;
    hit.assert_status(200);
    assert!(hit.cache_status().contains("hit"), "{}", hit.describe());
    let text = gw.metrics_text().await;
    let refusals = metric(&text, "gateway_budget_refusals_total", &[]);
    assert_eq!(
        refusals,
        f64::from(refused),
        "gateway_budget_refusals_total"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_turns() {
    // 2 turns a second, one at a time; long enough a wait for A's whole queue.
    let (upstream, gw) = start_budget(
        "rate_limit = { requests_per_minute = 120, burst = 1 }\nbudget_wait_ms = 20000",
        "",
        60,
    )
    .await;
    let start = Instant::now();
    let mut a = JoinSet::new();
    for i in 0..16 {
        let req = gw
            .req(Method::GET, &format!("/v1/echo/a/{i}"))
            .bearer(CLIENT_KEY);
        a.spawn(async move {
            let r = req.send().await;
            (r.status, start.elapsed())
        });
    }
    // A's burst turn has gone and the next is being waited for: A's queue is full.
    wait_until(10, "A's second turn", || {
        seen(&upstream, "/v1/echo/a/") >= 2
    })
    .await;
    let mut b_latency = Vec::new();
    for j in 0..3 {
        let before = upstream.requests().len();
        let sent = Instant::now();
        let resp = gw
            .req(Method::GET, &format!("/v1/echo/b/{j}"))
            .bearer(OTHER_CLIENT_KEY)
            .send()
            .await;
        resp.assert_status(200);
        b_latency.push(sent.elapsed());
        let log = upstream.requests();
        let at = log
            .iter()
            .position(|r| r.path_and_query == format!("/v1/echo/b/{j}"))
            .expect("B's request reached the upstream");
        let a_between = log[before..at]
            .iter()
            .filter(|r| r.path_and_query.starts_with("/v1/echo/a/"))
            .count();
        eprintln!("B#{j}: {a_between} of A's requests went upstream before it");
        // One turn per other waiting client (A), plus the one A may have been handed
        // while B's request was on its way in.
        assert!(
            a_between <= 2,
            "B#{j} waited behind {a_between} of A's requests"
        );
    }
    let mut a_latency = Vec::new();
    while let Some(done) = a.join_next().await {
        let (status, took) = done.expect("task");
        assert_eq!(
            status, 200,
            "A's requests all get a turn within budget_wait_ms"
        );
        a_latency.push(took);
    }
    a_latency.sort();
    eprintln!("B's latencies: {b_latency:?}");
    eprintln!("A's latencies (sorted): {a_latency:?}");
}

/// One upstream 429 scripted with `how`: it reaches its client unchanged; for `pause` no
/// request reaches the upstream and clients get the gateway's 429 with the time left;
/// afterwards requests flow. Hits are served throughout.
async fn pause_case(how: RetryAfter, pause: Duration, slack: Duration) {
    let (upstream, gw) = start_budget("budget_wait_ms = 100", "", 60).await;
    gw.prime(&["user_abc"]).await;
    upstream.inject(
        "GET",
        "/v1/echo/trigger",
        Fault::new().too_many(how).times(1),
    );
    let caused = gw.get("/v1/echo/trigger").await;
    let paused_at = Instant::now();
    caused.assert_status(429);
    assert_eq!(
        caused.json()["error"]["code"],
        "injected",
        "the upstream's own 429"
    );
    assert_eq!(
        caused.header("retry-after-ms").is_some(),
        matches!(how, RetryAfter::Millis(_)),
        "its headers as sent"
    );
    let mut refusals = 0;
    loop {
        let resp = gw.get("/v1/echo/after").await;
        if resp.status == 200 {
            break;
        }
        let left = assert_budget_429(&resp);
        assert!(
            left <= pause + slack,
            "retry-after-ms {left:?} beyond the pause"
        );
        assert_eq!(
            seen(&upstream, "/v1/echo/after"),
            0,
            "nothing sent during the pause"
        );
        refusals += 1;
        let hit = gw.get_user("user_abc").await;
        assert!(
            hit.cache_status().contains("hit"),
            "hits are served: {}",
            hit.describe()
        );
        // Honours the gateway's retry-after-ms, in small steps.
        tokio::time::sleep(left.min(Duration::from_millis(250))).await;
    }
    let flowed = paused_at.elapsed();
    eprintln!("{how:?}: {refusals} refusals, requests flowed after {flowed:?}");
    assert!(refusals >= 1, "the pause refused requests");
    assert!(
        flowed + slack >= pause,
        "flowed after {flowed:?}, before the pause's end"
    );
    assert_eq!(seen(&upstream, "/v1/echo/after"), 1);
    let text = gw.metrics_text().await;
    assert_eq!(metric(&text, "gateway_budget_pauses_total", &[]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_retry_after_seconds() {
    let ms = Duration::from_millis;
    pause_case(RetryAfter::Seconds(2), ms(2000), ms(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_retry_after_ms() {
    let ms = Duration::from_millis;
    pause_case(RetryAfter::Millis(1500), ms(1500), ms(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_retry_after_http_date() {
    // An HTTP date has whole seconds: 2 s from now is a pause of 2 to 3 s.
    let ms = Duration::from_millis;
    pause_case(RetryAfter::Date(ms(2000)), ms(2000), ms(1100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_without_retry_headers_is_one_second() {
    let ms = Duration::from_millis;
    pause_case(RetryAfter::Absent, ms(1000), ms(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_user_is_served_at_once_during_a_pause() {
    // budget_wait_ms is longer than the pause: a refetch would wait for the pause's end
    // and then fetch. Within stale_if_error_secs the stale user is served at once instead.
    let (upstream, gw) =
        start_budget("budget_wait_ms = 10000", "stale_if_error_secs = 60", 1).await;
    gw.get_user("user_abc").await.assert_status(200);
    let fetched = upstream.count("GET", USER_PATH);
    // Past its 1 s TTL, well within stale_if_error_secs.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let how = RetryAfter::Seconds(4);
    upstream.inject(
        "GET",
        "/v1/echo/trigger",
        Fault::new().too_many(how).times(1),
    );
    gw.get("/v1/echo/trigger").await.assert_status(429);
    let asked = Instant::now();
    let stale = gw.get_user("user_abc").await;
    let took = asked.elapsed();
    stale.assert_status(200);
    assert!(
        stale.cache_status().contains("fwd=stale"),
        "{}",
        stale.describe()
    );
    assert_eq!(
        upstream.count("GET", USER_PATH),
        fetched,
        "nothing sent during the pause"
    );
    eprintln!("stale user served {took:?} into a 4 s pause");
    assert!(
        took < Duration::from_secs(4),
        "served at once, not after the pause"
    );
}

/// `gateway_budget_queued` now.
async fn queued(gw: &TestGateway) -> f64 {
    metric(&gw.metrics_text().await, "gateway_budget_queued", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_waiters_and_an_unchanged_budget() {
    let upstream = start_upstream().await;
    let cfg = GatewayConfig::new(&upstream.base_url());
    let limited = |wait_ms: u64| {
        with_upstream_keys(
            &cfg.toml(),
            &format!(
                "rate_limit = {{ requests_per_minute = 30, burst = 1 }}\nbudget_wait_ms = {wait_ms}"
            ),
        )
    };
    let gw = start_gateway(&limited(10_000)).await;
    gw.get("/v1/echo/reload/0").await.assert_status(200);
    // Same limit, a shorter wait: the budget keeps its state (still empty for 2 s; a
    // fresh budget would have a turn at once).
    gw.reload_toml(&limited(100)).expect("reload");
    assert_budget_429(&gw.get("/v1/echo/reload/refused").await);
    gw.reload_toml(&limited(10_000)).expect("reload");
    // The next turn is under 2 s away: this one waits for it.
    let waiter = tokio::spawn(gw.req(Method::GET, "/v1/echo/reload/1").send());
    within(5, "the waiter to queue", async {
        while queued(&gw).await != 1.0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Reloaded while it waits: it keeps its place and gets its turn.
    gw.reload_toml(&limited(100)).expect("reload");
    let waited = within(10, "the waiter", waiter).await.expect("task");
    waited.assert_status(200);
    // No limit at all: requests go at once.
    let unlimited = with_upstream_keys(&cfg.toml(), "budget_wait_ms = 100");
    gw.reload_toml(&unlimited).expect("reload");
    for i in 3..6 {
        gw.get(&format!("/v1/echo/reload/{i}"))
            .await
            .assert_status(200);
    }
    assert_eq!(
        seen(&upstream, "/v1/echo/reload/"),
        5,
        "none of the refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refetch_the_budget_refuses_serves_the_stale_user() {
    // One turn a minute: the prime takes it, and the refetch after the TTL gets none.
    let (upstream, gw) = start_budget(
        "rate_limit = { requests_per_minute = 1, burst = 1 }\nbudget_wait_ms = 100",
        "stale_if_error_secs = 60",
        1,
    )
    .await;
    gw.get_user("user_abc").await.assert_status(200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stale = gw.get_user("user_abc").await;
    stale.assert_status(200);
    // No fwd-status: nothing was sent.
    assert!(
        stale
            .cache_status()
            .starts_with(&format!("{CACHE_NAME}; fwd=stale; ttl=-")),
        "a refused refetch is an error for stale-if-error: {}",
        stale.describe()
    );
    assert_eq!(upstream.count("GET", USER_PATH), 1);
    // Outside the cached route the refusal is the client's answer.
    assert_budget_429(&gw.get("/v1/echo/refused").await);
}
