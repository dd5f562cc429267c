//! The global cap on concurrent upstream requests (`upstream.max_concurrent_requests`) with
//! its bounded wait queue (`upstream.max_queued_requests`), and upstream 429s passing through
//! unchanged.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_never_sees_more_than_the_cap_and_every_request_succeeds() {
    const CAP: usize = 4;
    const REQUESTS: usize = 200;
    let upstream = start_upstream().await;
    // Every response takes 30 ms, so the parallel requests overlap at the upstream.
    upstream.inject("*", "*", Fault::new().delay_ms(30));
    // The cache misses below (`i % 4 == 0`) ask for users the upstream must know.
    for i in (0..REQUESTS).step_by(4) {
        upstream.add_user(&format!("user_cap_{i}"), "Counted User", "reader");
    }
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    // Queued requests wait up to timeout_ms for a slot: generous for a loaded machine.
    cfg.timeout_ms = 120_000;
    let toml = with_upstream_keys(
        &cfg.toml(),
        &format!("max_concurrent_requests = {CAP}\nmax_queued_requests = 1000"),
    );
    let gw = Arc::new(start_gateway(&toml).await);

    let mut tasks = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            // Mostly forwarded requests, some cache misses (distinct ids), some writes.
            let resp = match i % 4 {
                0 => gw.get_user(&format!("user_cap_{i}")).await,
                1 => {
                    gw.req(Method::POST, &format!("/v1/echo/cap/{i}"))
                        .json(&json!({"i": i}))
                        .send()
                        .await
                }
                _ => gw.get(&format!("/v1/echo/cap/{i}")).await,
            };
            (i, resp)
        }));
    }
    let mut failed = Vec::new();
    for task in tasks {
        let (i, resp) = within(180, "the parallel requests", task)
            .await
            .expect("request task panicked");
        if resp.status.as_u16() != 200 {
            failed.push(format!("#{i}: {}", resp.describe()));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {REQUESTS} requests failed, first: {}",
        failed.len(),
        failed[0]
    );
    assert_eq!(
        upstream.total(),
        REQUESTS,
        "every request reached the upstream once"
    );
    assert_eq!(
        upstream.bad_auth(),
        0,
        "the upstream saw a wrong Authorization"
    );
    let max = upstream.max_in_flight();
    eprintln!("most requests in flight at the upstream at once: {max} (cap {CAP})");
    assert!(
        max <= CAP,
        "the upstream saw {max} requests at once; max_concurrent_requests is {CAP}"
    );
    assert!(
        max >= 2,
        "200 parallel requests never overlapped at the upstream (max {max}): the test proves nothing"
    );
    // Slots are released as the bodies finish; give the last ones a moment.
    let mut text = gw.metrics_text().await;
    for _ in 0..100 {
        if metric(&text, "gateway_upstream_in_flight", &[]) == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = gw.metrics_text().await;
    }
    assert_eq!(
        metric(&text, "gateway_upstream_in_flight", &[]),
        0.0,
        "slots leaked:\n{text}"
    );
    assert_eq!(
        metric(
            &text,
            "gateway_upstream_requests_total",
            &[("status", "200")]
        ),
        REQUESTS as f64
    );
}

#[tokio::test]
async fn a_full_queue_answers_503_upstream_overloaded_without_reaching_the_upstream() {
    let upstream = start_upstream().await;
    let cfg = GatewayConfig::new(&upstream.base_url());
    let toml = with_upstream_keys(
        &cfg.toml(),
        "max_concurrent_requests = 1\nmax_queued_requests = 0",
    );
    let gw = Arc::new(start_gateway(&toml).await);

    // One slow request holds the only slot.
    let slow = {
        let gw = gw.clone();
        tokio::spawn(async move {
            gw.req(Method::GET, "/v1/echo/slow")
                .header("x-fake-gate", "hold")
                .send()
                .await
        })
    };
    upstream.wait_for_count("GET", "/v1/echo/slow", 1).await;

    for path in ["/v1/echo/next", "/v1/organization/users/user_abc"] {
        let resp = gw.get(path).await;
        assert_openai_error(&resp, 503, "gateway_error", "upstream_overloaded");
        assert_eq!(
            upstream.count("GET", path),
            0,
            "the 503 reached the upstream"
        );
    }
    let posted = gw
        .req(Method::POST, "/v1/organization/users/user_abc")
        .json(&json!({"role": "reader"}))
        .send()
        .await;
    assert_openai_error(&posted, 503, "gateway_error", "upstream_overloaded");
    assert_eq!(upstream.count("POST", "/v1/organization/users/user_abc"), 0);
    assert_eq!(upstream.total(), 1);

    upstream.gate("hold").open();
    let slow = within(30, "the slow request", slow).await.expect("task");
    slow.assert_status(200);

    // The slot is free again.
    gw.get("/v1/echo/next").await.assert_status(200);
    let user = gw.get_user("user_abc").await;
    user.assert_status(200);
    assert_eq!(user.json()["role"], "owner", "the refused write happened");
    let text = gw.metrics_text().await;
    assert!(
        metric(
            &text,
            "gateway_requests_total",
            &[("status", "503"), ("client", "test-client")]
        ) >= 3.0,
        "503s not counted:\n{text}"
    );
}

#[tokio::test]
async fn an_upstream_429_passes_through_unchanged() {
    let (upstream, gw) = start_pair().await;
    // Each 429 pauses the organization for its retry-after-ms (300 ms, shorter than
    // budget_wait_ms): the next request waits for the pause's end, then goes upstream.
    let too_many = || Fault::new().too_many(RetryAfter::Both(1, 300));
    upstream.inject("GET", "/v1/echo/limited", too_many());
    upstream.inject(
        "GET",
        "/v1/organization/users/user_abc",
        too_many().times(1),
    );
    // The fake's injected error body, byte for byte.
    let expected = serde_json::to_vec_pretty(&json!({"error": {
        "message": "injected failure",
        "type": "requests",
        "param": null,
        "code": "injected",
    }}))
    .expect("json");

    let fwd = gw.get("/v1/echo/limited").await;
    let miss = gw.get_user("user_abc").await;
    for resp in [&fwd, &miss] {
        resp.assert_status(429);
        assert_eq!(resp.body, expected, "body changed: {}", resp.text());
        assert_eq!(resp.header("retry-after").as_deref(), Some("1"));
        assert_eq!(resp.header("retry-after-ms").as_deref(), Some("300"));
        assert_eq!(
            resp.header("content-type").as_deref(),
            Some("application/json")
        );
        assert!(
            resp.request_id().starts_with("upstream-req-"),
            "a forwarded 429 carries the upstream's request id: {}",
            resp.describe()
        );
        assert_no_ratelimit_headers(resp);
    }
    assert_eq!(
        miss.cache_status(),
        format!("{CACHE_NAME}; fwd=miss"),
        "a 429 must not be stored"
    );
    // Not stored: the next lookup goes upstream and is stored.
    let next = gw.get_user("user_abc").await;
    next.assert_status(200);
    assert_eq!(
        next.cache_status(),
        format!("{CACHE_NAME}; fwd=miss; stored")
    );
    assert_eq!(upstream.count("GET", "/v1/organization/users/user_abc"), 2);

    let text = gw.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            "gateway_upstream_requests_total",
            &[("status", "429")]
        ),
        2.0,
        "gateway_upstream_requests_total{{status=\"429\"}}:\n{text}"
    );
    assert_eq!(
        metric(&text, "gateway_rate_limited_total", &[]),
        0.0,
        "an upstream 429 is not a gateway rate limit"
    );
    assert!(
        metric(
            &text,
            "gateway_requests_total",
            &[("status", "429"), ("client", "test-client")]
        ) >= 2.0
    );
}

#[tokio::test]
async fn an_upstream_429_to_a_limited_client_keeps_its_retry_after() {
    const KEY: &str = "gwk_limited_client_key_uuuuuuuuuuuuuuuuuuuuuuuuuuuuuu";
    let (upstream, gw) = start_pair_with(|c| {
        c.extra = client_toml("limited", KEY, &rate_limit(600, 50));
    })
    .await;
    upstream.inject("POST", "/v1/echo/limited", Fault::new().status(429));
    let resp = gw
        .req(Method::POST, "/v1/echo/limited")
        .bearer(KEY)
        .body("x")
        .send()
        .await;
    resp.assert_status(429);
    assert_eq!(resp.json()["error"]["code"], "injected");
    assert_eq!(resp.header("retry-after").as_deref(), Some("7"));
    assert_eq!(resp.header("retry-after-ms").as_deref(), Some("7000"));
    assert!(resp.request_id().starts_with("upstream-req-"));
    // The client's own budget is still described (it was not exhausted).
    let (limit, remaining, _) = ratelimit_headers(&resp);
    assert_eq!((limit, remaining), (600, 49));
    let text = gw.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            "gateway_rate_limited_total",
            &[("client", "limited")]
        ),
        0.0
    );
    assert_eq!(
        metric(
            &text,
            "gateway_upstream_requests_total",
            &[("status", "429")]
        ),
        1.0
    );
}
