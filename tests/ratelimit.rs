//! Per-client rate limits: `rate_limit = { requests_per_minute, burst }`.
//!
//! Every request a limited client makes counts (cache hits too); over the budget it gets 429
//! in OpenAI's shape (`type: "requests"`, `code: "rate_limit_exceeded"`) with `retry-after`
//! and `retry-after-ms`, and the request never reaches the upstream. Every response to a
//! limited client carries `x-ratelimit-{limit,remaining,reset}-requests`; unlimited clients
//! get none of them.

mod support;

use std::time::{Duration, Instant};

use http::Method;
use support::*;

const LIMITED_KEY: &str = "gwk_limited_client_key_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const LIMITED_B_KEY: &str = "gwk_limited_client_key_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn rate_limited_total(text: &str, client: &str) -> f64 {
    metric(text, "gateway_rate_limited_total", &[("client", client)])
}

/// Checks a gateway 429: OpenAI error shape, `retry-after` (whole seconds, at least 1,
/// consistent with `retry-after-ms`) and the rate-limit headers. Returns `retry-after-ms`.
#[track_caller]
fn assert_gateway_429(resp: &TestResponse, limit: u64) -> Duration {
    assert_openai_error(resp, 429, "requests", "rate_limit_exceeded");
    let secs = resp
        .header("retry-after")
        .unwrap_or_else(|| panic!("429 without retry-after: {}", resp.describe()));
    let secs: u64 = secs
        .parse()
        .unwrap_or_else(|_| panic!("retry-after {secs:?} is not whole seconds"));
    assert!(secs >= 1, "retry-after must be at least 1, got {secs}");
    let ms = resp
        .header("retry-after-ms")
        .unwrap_or_else(|| panic!("429 without retry-after-ms: {}", resp.describe()));
    let ms: u64 = ms
        .parse()
        .unwrap_or_else(|_| panic!("retry-after-ms {ms:?} is not an integer"));
    assert!(ms >= 1, "retry-after-ms must be positive");
    assert_eq!(
        secs,
        ms.div_ceil(1000).max(1),
        "retry-after {secs} disagrees with retry-after-ms {ms}"
    );
    let (l, remaining, reset) = ratelimit_headers(resp);
    assert_eq!(l, limit, "x-ratelimit-limit-requests on the 429");
    assert_eq!(remaining, 0, "x-ratelimit-remaining-requests on the 429");
    assert!(
        reset + Duration::from_millis(1) >= Duration::from_millis(ms),
        "x-ratelimit-reset-requests {reset:?} is sooner than retry-after-ms {ms}"
    );
    Duration::from_millis(ms)
}

/// Sends `send()` until a 429 comes back (at most `burst + 10` tries). Returns the passed
/// responses, the 429 and the time from the first send to the 429.
async fn until_refused<F, Fut>(burst: usize, mut send: F) -> (Vec<TestResponse>, TestResponse)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = TestResponse>,
{
    let mut passed = Vec::new();
    for _ in 0..burst + 10 {
        let resp = send().await;
        if resp.status.as_u16() == 429 {
            return (passed, resp);
        }
        passed.push(resp);
    }
    panic!("no 429 after {} requests", passed.len());
}

#[tokio::test]
async fn burst_passes_then_429_with_retry_after_and_headers_on_every_response() {
    let (upstream, gw) = start_pair_with(|c| {
        c.extra = client_toml("limited", LIMITED_KEY, &rate_limit(60, 3));
    })
    .await;
    // Warm the cache through an unlimited client: the limited client's requests are all hits.
    gw.req(Method::GET, USER_PATH)
        .bearer(OTHER_CLIENT_KEY)
        .send()
        .await
        .assert_status(200);
    let upstream_before = upstream.total();
    assert_eq!(rate_limited_total(&gw.metrics_text().await, "limited"), 0.0);

    let start = Instant::now();
    let (passed, refused) = until_refused(3, || {
        gw.req(Method::GET, USER_PATH).bearer(LIMITED_KEY).send()
    })
    .await;
    let elapsed = start.elapsed();

    // 60/min = one request back per second: exactly 3 pass unless the machine took over a
    // second for these requests (then one more may legitimately pass per second).
    assert!(
        passed.len() >= 3,
        "only {} requests passed before the 429 (burst 3)",
        passed.len()
    );
    let extra = passed.len() - 3;
    assert!(
        extra == 0 || elapsed >= Duration::from_secs(extra as u64),
        "{} requests passed within {elapsed:?} with burst 3 at 60/min",
        passed.len()
    );
    let mut remaining = Vec::new();
    for resp in &passed {
        resp.assert_status(200);
        resp.hit_ttl();
        let (limit, left, _reset) = ratelimit_headers(resp);
        assert_eq!(limit, 60, "x-ratelimit-limit-requests");
        remaining.push(left);
    }
    if extra == 0 {
        assert_eq!(remaining, [2, 1, 0], "x-ratelimit-remaining-requests");
    } else {
        assert!(remaining.iter().all(|&r| r <= 2), "{remaining:?}");
        assert_eq!(remaining[0], 2);
    }

    let wait = assert_gateway_429(&refused, 60);
    assert!(
        wait <= Duration::from_secs(1),
        "at 60/min one request comes back within 1 s, retry-after-ms says {wait:?}"
    );
    assert_eq!(
        upstream.total(),
        upstream_before,
        "hits and the 429 must not reach the upstream"
    );
    let text = gw.metrics_text().await;
    assert_eq!(
        rate_limited_total(&text, "limited"),
        1.0,
        "gateway_rate_limited_total{{client=\"limited\"}}"
    );
    assert!(
        metric(
            &text,
            "gateway_requests_total",
            &[("client", "limited"), ("status", "429")]
        ) >= 1.0,
        "gateway_requests_total has no 429 for the limited client:\n{text}"
    );

    // Waiting the advertised time is enough.
    tokio::time::sleep(wait).await;
    let again = gw
        .req(Method::GET, USER_PATH)
        .bearer(LIMITED_KEY)
        .send()
        .await;
    again.assert_status(200);
    again.hit_ttl();
    let (_, left, _) = ratelimit_headers(&again);
    assert_eq!(left, 0, "one request came back and was used");
}

#[tokio::test]
async fn a_refused_request_never_reaches_the_upstream() {
    // 6/min: a request comes back only every 10 s, far longer than this test.
    let (upstream, gw) = start_pair_with(|c| {
        c.extra = client_toml("limited", LIMITED_KEY, &rate_limit(6, 2));
    })
    .await;
    let echo = "/v1/echo/limited";
    for _ in 0..2 {
        let resp = gw
            .req(Method::POST, echo)
            .bearer(LIMITED_KEY)
            .body("payload")
            .send()
            .await;
        resp.assert_status(200);
        ratelimit_headers(&resp);
    }
    assert_eq!(upstream.count("POST", echo), 2);

    let refused = gw
        .req(Method::POST, echo)
        .bearer(LIMITED_KEY)
        .body("payload")
        .send()
        .await;
    assert_gateway_429(&refused, 6);
    // A cache miss is refused before the cache too.
    let miss = gw
        .req(Method::GET, "/v1/organization/users/user_def")
        .bearer(LIMITED_KEY)
        .send()
        .await;
    assert_gateway_429(&miss, 6);
    assert_eq!(
        upstream.count("POST", echo),
        2,
        "the 429 reached the upstream"
    );
    assert_eq!(
        upstream.count("GET", "/v1/organization/users/user_def"),
        0,
        "the 429 reached the upstream"
    );
    let text = gw.metrics_text().await;
    assert_eq!(rate_limited_total(&text, "limited"), 2.0);
}

#[tokio::test]
async fn clients_have_separate_budgets_and_unlimited_clients_get_no_headers() {
    let (upstream, gw) = start_pair_with(|c| {
        c.extra = format!(
            "{}{}",
            client_toml("limited-a", LIMITED_KEY, &rate_limit(6, 3)),
            client_toml("limited-b", LIMITED_B_KEY, &rate_limit(6, 3)),
        );
    })
    .await;
    gw.get_user("user_abc").await.assert_status(200);

    let send_a = || gw.req(Method::GET, USER_PATH).bearer(LIMITED_KEY).send();
    let (passed_a, refused_a) = until_refused(3, send_a).await;
    assert_eq!(passed_a.len(), 3, "limited-a: burst 3 at 6/min");
    assert_gateway_429(&refused_a, 6);

    // limited-b still has its whole burst.
    let send_b = || gw.req(Method::GET, USER_PATH).bearer(LIMITED_B_KEY).send();
    let (passed_b, refused_b) = until_refused(3, send_b).await;
    let remaining: Vec<u64> = passed_b.iter().map(|r| ratelimit_headers(r).1).collect();
    assert_eq!(remaining, [2, 1, 0], "limited-b was slowed by limited-a");
    assert_gateway_429(&refused_b, 6);
    assert_gateway_429(
        &gw.req(Method::GET, USER_PATH)
            .bearer(LIMITED_KEY)
            .send()
            .await,
        6,
    );

    // The unlimited client is never slowed and never told about limits.
    for _ in 0..12 {
        let hit = gw.get_user("user_abc").await;
        hit.assert_status(200);
        assert_no_ratelimit_headers(&hit);
    }
    let fwd = gw.get("/v1/echo/unlimited").await;
    fwd.assert_status(200);
    assert_no_ratelimit_headers(&fwd);
    let miss = gw.get_user("user_def").await;
    miss.assert_status(200);
    assert_no_ratelimit_headers(&miss);
    assert_eq!(upstream.count("GET", USER_PATH), 1);

    let text = gw.metrics_text().await;
    assert_eq!(rate_limited_total(&text, "limited-a"), 2.0);
    assert_eq!(rate_limited_total(&text, "limited-b"), 1.0);
    assert_eq!(rate_limited_total(&text, "test-client"), 0.0);
}

#[tokio::test]
async fn every_response_to_a_limited_client_carries_the_headers() {
    let (upstream, gw) = start_pair_with(|c| {
        let more = format!(
            "{}\n{}",
            rate_limit(600, 50),
            allow(&["GET /organization/users/*", "* /echo/**"])
        );
        c.extra = client_toml("limited", LIMITED_KEY, &more);
    })
    .await;
    upstream.inject("GET", "/v1/echo/broken", Fault::new().status(500));
    let as_limited = |m: Method, p: &str| gw.req(m, p).bearer(LIMITED_KEY);
    let responses = vec![
        // stored miss, hit, forwarded, upstream 404, upstream 500, scope 403
        as_limited(Method::GET, USER_PATH).send().await,
        as_limited(Method::GET, USER_PATH).send().await,
        as_limited(Method::PUT, "/v1/echo/x").body("b").send().await,
        as_limited(Method::GET, "/v1/organization/users/user_nope")
            .send()
            .await,
        as_limited(Method::GET, "/v1/echo/broken").send().await,
        as_limited(Method::GET, "/v1/organization/users")
            .send()
            .await,
    ];
    let statuses: Vec<u16> = responses.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 200, 404, 500, 403]);
    let mut last = u64::MAX;
    for resp in &responses {
        let (limit, remaining, reset) = ratelimit_headers(resp);
        assert_eq!(limit, 600, "{}", resp.describe());
        assert!(
            remaining < last,
            "remaining must go down with every request: {remaining} after {last}"
        );
        assert!(
            reset <= Duration::from_secs(60),
            "reset {reset:?} exceeds a minute for a 50-request burst at 600/min"
        );
        last = remaining;
    }
    assert!(last <= 44, "six requests used; remaining {last}");
}

#[tokio::test]
async fn all_keys_of_one_client_share_its_budget() {
    // key rotation: one client, two keys, one budget.
    let (upstream, gw) = start_pair_with(|c| {
        c.extra = format!(
            "\n[[clients]]\nname = \"rotating\"\nkey_sha256 = [{:?}, {:?}]\n{}\n",
            sha256_hex(LIMITED_KEY),
            sha256_hex(LIMITED_B_KEY),
            rate_limit(6, 3),
        );
    })
    .await;
    let send = |key: &'static str| gw.req(Method::GET, "/v1/echo/rot").bearer(key).send();
    let mut remaining = Vec::new();
    for key in [LIMITED_KEY, LIMITED_B_KEY, LIMITED_KEY] {
        let resp = send(key).await;
        resp.assert_status(200);
        remaining.push(ratelimit_headers(&resp).1);
    }
    assert_eq!(remaining, [2, 1, 0], "the two keys have separate budgets");
    assert_gateway_429(&send(LIMITED_B_KEY).await, 6);
    assert_gateway_429(&send(LIMITED_KEY).await, 6);
    assert_eq!(upstream.count("GET", "/v1/echo/rot"), 3);
    assert_eq!(
        rate_limited_total(&gw.metrics_text().await, "rotating"),
        2.0
    );
}
