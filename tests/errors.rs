//! Errors the gateway makes itself: exact OpenAI shape, and never reaching the upstream
//! where the request is refused.

mod support;

use std::time::{Duration, Instant};

use http::Method;
use support::process::free_addr;
use support::*;

#[tokio::test]
async fn missing_or_malformed_client_key_is_401_and_never_reaches_upstream() {
    let (upstream, gw) = start_pair().await;
    let cases: [(&str, Option<&str>); 4] = [
        ("no header", None),
        ("basic", Some("Basic dGVzdDp0ZXN0")),
        ("empty bearer", Some("Bearer ")),
        ("bare key", Some(CLIENT_KEY)),
    ];
    for (what, auth) in cases {
        for (method, path) in [
            (Method::GET, USER_PATH),
            (Method::POST, USER_PATH),
            (Method::GET, "/v1/echo/x"),
        ] {
            let mut r = gw.req(method, path).no_auth();
            if let Some(auth) = auth {
                r = r.header("authorization", auth);
            }
            let resp = r.send().await;
            assert_eq!(resp.status, 401, "{what}: {}", resp.describe());
            assert_openai_error(&resp, 401, "invalid_request_error", "invalid_api_key");
        }
    }
    assert_eq!(upstream.total(), 0, "{:?}", upstream.requests());
}

#[tokio::test]
async fn unknown_client_key_is_401() {
    let (upstream, gw) = start_pair().await;
    for path in [USER_PATH, "/v1/echo/x"] {
        let resp = gw.req(Method::GET, path).bearer(UNKNOWN_KEY).send().await;
        assert_openai_error(&resp, 401, "invalid_request_error", "invalid_api_key");
        assert!(
            !resp.text().contains(UNKNOWN_KEY),
            "the key is echoed: {}",
            resp.text()
        );
    }
    assert_eq!(upstream.total(), 0);
}

#[tokio::test]
async fn admin_key_is_not_a_client_key() {
    let (upstream, gw) = start_pair().await;
    for path in [USER_PATH, "/v1/echo/x"] {
        let resp = gw.req(Method::GET, path).bearer(ADMIN_KEY).send().await;
        assert_openai_error(&resp, 401, "invalid_request_error", "invalid_api_key");
    }
    assert_eq!(upstream.total(), 0);
}

#[tokio::test]
async fn a_cached_user_is_still_refused_without_a_key() {
    let (_upstream, gw) = start_pair().await;
    gw.get(USER_PATH).await.assert_status(200);
    let resp = gw.req(Method::GET, USER_PATH).no_auth().send().await;
    assert_openai_error(&resp, 401, "invalid_request_error", "invalid_api_key");
    let resp = gw
        .req(Method::GET, USER_PATH)
        .bearer(UNKNOWN_KEY)
        .send()
        .await;
    assert_openai_error(&resp, 401, "invalid_request_error", "invalid_api_key");
}

#[tokio::test]
async fn each_configured_client_key_works() {
    let (upstream, gw) = start_pair().await;
    for key in [CLIENT_KEY, OTHER_CLIENT_KEY] {
        let resp = gw.req(Method::GET, "/v1/echo/x").bearer(key).send().await;
        resp.assert_status(200);
    }
    assert_eq!(upstream.total(), 2);
}

#[tokio::test]
async fn gateway_errors_get_distinct_request_ids() {
    let (_upstream, gw) = start_pair().await;
    let a = gw.req(Method::GET, USER_PATH).no_auth().send().await;
    let b = gw.req(Method::GET, USER_PATH).no_auth().send().await;
    assert_ne!(a.request_id(), b.request_id());
}

#[tokio::test]
async fn paths_outside_the_prefix_are_404_and_never_reach_upstream() {
    let (upstream, gw) = start_pair().await;
    let paths = [
        "/",
        "/v2/models",
        "/v1x/organization/users",
        "/organization/users/user_abc",
        "/healthz",
        "/readyz",
        "/metrics",
        "/cache/users/user_abc",
    ];
    for path in paths {
        for method in [Method::GET, Method::POST, Method::DELETE] {
            let resp = gw.req(method.clone(), path).send().await;
            assert_eq!(resp.status, 404, "{method} {path}: {}", resp.describe());
            assert_openai_error(&resp, 404, "invalid_request_error", "not_found");
        }
    }
    assert_eq!(upstream.total(), 0, "{:?}", upstream.requests());
}

#[tokio::test]
async fn closed_upstream_port_is_502() {
    let closed = free_addr();
    let gw = start_gateway(&config_toml(&format!("http://{closed}/v1"), "")).await;
    for (method, path) in [
        (Method::GET, USER_PATH),
        (Method::POST, USER_PATH),
        (Method::GET, "/v1/echo/x"),
        (Method::PUT, "/v1/echo/x"),
    ] {
        let resp = gw.req(method, path).body("{}").send().await;
        assert_openai_error(&resp, 502, "gateway_error", "upstream_unavailable");
    }
}

#[tokio::test]
async fn upstream_closing_without_a_response_is_502() {
    let (upstream, gw) = start_pair().await;
    upstream.inject("*", "*", Fault::new().reset_before_headers());
    for path in ["/v1/echo/x", USER_PATH] {
        let resp = gw.get(path).await;
        assert_openai_error(&resp, 502, "gateway_error", "upstream_unavailable");
    }
    upstream.clear_faults();
    let resp = gw.get(USER_PATH).await;
    resp.assert_status(200);
    assert_eq!(
        resp.cache_status(),
        format!("{CACHE_NAME}; fwd=miss; stored")
    );
}

#[tokio::test]
async fn upstream_slower_than_timeout_ms_is_504() {
    let (upstream, gw) = start_pair_with(|c| c.timeout_ms = 300).await;
    upstream.inject("*", "*", Fault::new().delay_ms(4000));
    for path in ["/v1/echo/slow", USER_PATH] {
        let start = Instant::now();
        let resp = gw.get(path).await;
        assert_openai_error(&resp, 504, "gateway_error", "upstream_timeout");
        assert!(
            start.elapsed() < Duration::from_millis(3500),
            "the 504 came only after the upstream answered ({:?})",
            start.elapsed()
        );
    }
    // The timed-out fetch left nothing behind in the cache.
    upstream.clear_faults();
    let resp = gw.get(USER_PATH).await;
    resp.assert_status(200);
    assert_eq!(
        resp.cache_status(),
        format!("{CACHE_NAME}; fwd=miss; stored")
    );
}

#[tokio::test]
async fn client_over_its_rate_limit_gets_429() {
    let limited = "gwk_limited_client_key_0000000000000000000000000000";
    let (upstream, gw) = start_pair_with(|c| {
        c.extra = client_toml(
            "limited",
            limited,
            "rate_limit = { requests_per_minute = 1, burst = 2 }",
        );
    })
    .await;
    for _ in 0..2 {
        let resp = gw
            .req(Method::GET, "/v1/echo/x")
            .bearer(limited)
            .send()
            .await;
        resp.assert_status(200);
    }
    let resp = gw
        .req(Method::GET, "/v1/echo/x")
        .bearer(limited)
        .send()
        .await;
    assert_openai_error(&resp, 429, "requests", "rate_limit_exceeded");
    let retry: u64 = resp
        .header("retry-after")
        .expect("429 carries retry-after")
        .parse()
        .expect("retry-after in whole seconds");
    assert!(retry >= 1, "retry-after {retry}");
    let hit = gw.req(Method::GET, USER_PATH).bearer(limited).send().await;
    assert_openai_error(&hit, 429, "requests", "rate_limit_exceeded");
    assert_eq!(upstream.total(), 2);

    // Other clients have their own budget.
    gw.get("/v1/echo/x").await.assert_status(200);
}

#[tokio::test]
async fn request_outside_the_client_scope_is_403() {
    let scoped = "gwk_scoped_client_key_00000000000000000000000000000";
    let (upstream, gw) = start_pair_with(|c| {
        c.extra = client_toml("scoped", scoped, "allow = [\"GET /organization/users/*\"]");
    })
    .await;
    let ok = gw.req(Method::GET, USER_PATH).bearer(scoped).send().await;
    ok.assert_status(200);
    for (method, path) in [
        (Method::POST, USER_PATH),
        (Method::DELETE, USER_PATH),
        (Method::GET, "/v1/organization/users"),
        (Method::GET, "/v1/organization/users/user_abc/roles"),
        (Method::GET, "/v1/echo/x"),
    ] {
        let resp = gw.req(method, path).bearer(scoped).send().await;
        assert_openai_error(&resp, 403, "invalid_request_error", "insufficient_scope");
    }
    assert_eq!(upstream.total(), 1);
}
