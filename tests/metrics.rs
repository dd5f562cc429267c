//! Prometheus metrics on the admin listener: the contract series with no ids or keys in
//! them, values that move by exact amounts as requests happen, bounded label values, and
//! admin requests left out of the request counters.

mod support;

/// The label of the default organization's series.
const DEFAULT_ORG: &[(&str, &str)] = &[("org", "default")];

use std::collections::BTreeSet;

use http::Method;
use support::metrics::{delta, delta_sum, scrape, Scrape};
use support::process::free_addr;
use support::*;

fn req_labels<'a>(
    route: &'a str,
    method: &'a str,
    status: &'a str,
    client: &'a str,
) -> [(&'a str, &'a str); 4] {
    [
        ("route", route),
        ("method", method),
        ("status", status),
        ("client", client),
    ]
}

/// Fails the test if `needle` appears anywhere in the scrape.
#[track_caller]
fn assert_absent(scrape: &Scrape, needle: &str, what: &str) {
    assert!(
        !scrape.text.contains(needle),
        "{what} ({needle:?}) appears in /metrics:\n{}",
        scrape.text
    );
}

/// Every label value in the scrape comes from a bounded set: route classes, known methods,
/// numeric statuses (or error/timeout upstream), configured client names or `-`.
#[track_caller]
fn assert_bounded_labels(scrape: &Scrape) {
    let routes: BTreeSet<&str> = ["get_user", "user_write", "forward", "rejected"].into();
    let methods: BTreeSet<&str> = [
        "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "OTHER",
    ]
    .into();
    let clients: BTreeSet<&str> = ["test-client", "other-client", "-"].into();
    for s in &scrape.samples {
        for (k, v) in &s.labels {
            let ok = match k.as_str() {
                "route" => routes.contains(v.as_str()),
                "method" => methods.contains(v.as_str()),
                "client" => clients.contains(v.as_str()),
                "status" if s.name.starts_with("gateway_upstream_requests") => {
                    ["error", "timeout", "client_aborted"].contains(&v.as_str())
                        || v.parse::<u16>().is_ok()
                }
                "status" => v.parse::<u16>().is_ok(),
                "le" => v == "+Inf" || v.parse::<f64>().is_ok(),
                "reason" if s.name.starts_with("gateway_cache_stale_served") => {
                    ["error", "revalidate"].contains(&v.as_str())
                }
                "reason" => ["write", "purge", "purge_all"].contains(&v.as_str()),
                "result" if s.name.starts_with("gateway_cache_refreshes") => {
                    ["ok", "error", "gone", "unstorable"].contains(&v.as_str())
                }
                "result" => ["ok", "error"].contains(&v.as_str()),
                "phase" => ["headers", "body"].contains(&v.as_str()),
                "trigger" => ["signal", "file"].contains(&v.as_str()),
                // Organization names come from the config (`*`: a purge of every one).
                "org" => ["default", "*"].contains(&v.as_str()),
                _ => false,
            };
            assert!(
                ok,
                "unexpected label {k}={v:?} on {}:\n{}",
                s.name, scrape.text
            );
        }
    }
}

#[tokio::test]
async fn metrics_name_the_contract_series_without_ids_or_keys() {
    let (_upstream, gw) = start_pair().await;
    gw.get_user("user_abc").await.assert_status(200);
    gw.get_user("user_abc").await.assert_status(200);
    gw.get("/v1/echo/x").await.assert_status(200);
    gw.req(Method::GET, USER_PATH)
        .no_auth()
        .send()
        .await
        .assert_status(401);
    let metrics = gw.admin(Method::GET, "/metrics").send().await;
    metrics.assert_status(200);
    let text = metrics.text();
    for name in [
        "gateway_requests_total",
        "gateway_request_duration_seconds",
        "gateway_cache_hits_total",
        "gateway_cache_misses_total",
        "gateway_cache_entries",
        "gateway_upstream_requests_total",
        "gateway_upstream_duration_seconds",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    for secret in ["user_abc", CLIENT_KEY, ADMIN_KEY] {
        assert!(!text.contains(secret), "{secret} appears in /metrics");
    }
    let public = gw.get("/metrics").await;
    assert_openai_error(&public, 404, "invalid_request_error", "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_exact_deltas_for_miss_hit_500_502_and_401() {
    let (upstream, gw) = start_pair().await;
    // A second gateway whose upstream port is closed: every upstream attempt fails.
    let closed = free_addr();
    let down = start_gateway(&config_toml(&format!("http://{closed}/v1"), "")).await;

    let a0 = scrape(&gw).await;
    let b0 = scrape(&down).await;
    for name in [
        "gateway_cache_hits_total",
        "gateway_cache_misses_total",
        "gateway_cache_entries",
        "gateway_upstream_duration_seconds_count",
        "gateway_requests_in_flight",
    ] {
        a0.assert_present(name);
    }

    // A miss (stored), then a hit.
    let miss = gw.get_user("user_abc").await;
    miss.assert_status(200);
    assert_eq!(miss.cache_status(), stored_miss());
    let hit = gw.get_user("user_abc").await;
    hit.assert_status(200);
    hit.hit_ttl();
    // The upstream answers 500 on the cached route (passed through, not stored).
    upstream.inject(
        "GET",
        &user_path("user_def"),
        Fault::new().status(500).times(1),
    );
    gw.get_user("user_def").await.assert_status(500);
    // A forwarded request.
    gw.get("/v1/organization/users?limit=2")
        .await
        .assert_status(200);
    // Two 401s: no key, and a key nobody configured.
    let no_key = gw.req(Method::GET, &user_path("user_ghi")).no_auth();
    assert_openai_error(
        &no_key.send().await,
        401,
        "invalid_request_error",
        "invalid_api_key",
    );
    let unknown = gw
        .req(Method::GET, &user_path("user_ghi"))
        .bearer(UNKNOWN_KEY);
    assert_openai_error(
        &unknown.send().await,
        401,
        "invalid_request_error",
        "invalid_api_key",
    );
    // Upstream down: 502.
    let bad = down.get_user("user_0007").await;
    assert_openai_error(&bad, 502, "gateway_error", "upstream_unavailable");

    assert_eq!(upstream.count("GET", USER_PATH), 1, "the hit went upstream");
    assert_eq!(upstream.count("GET", &user_path("user_ghi")), 0);
    assert_eq!(upstream.total(), 3, "{:?}", upstream.requests());

    let a1 = scrape(&gw).await;
    let b1 = scrape(&down).await;
    let requests = "gateway_requests_total";

    // --- gateway A ---
    let cases: [([(&str, &str); 4], f64); 4] = [
        (req_labels("get_user", "GET", "200", "test-client"), 2.0),
        (req_labels("get_user", "GET", "500", "test-client"), 1.0),
        (req_labels("forward", "GET", "200", "test-client"), 1.0),
        (req_labels("get_user", "GET", "401", "-"), 2.0),
    ];
    for (labels, want) in &cases {
        assert_eq!(
            delta(&a0, &a1, requests, labels),
            *want,
            "{requests}{labels:?}:\n{}",
            a1.text
        );
    }
    assert_eq!(
        delta_sum(&a0, &a1, requests),
        6.0,
        "six requests, counted once each:\n{}",
        a1.text
    );
    assert_eq!(
        delta(&a0, &a1, "gateway_cache_hits_total", DEFAULT_ORG),
        1.0,
        "{}",
        a1.text
    );
    assert_eq!(
        delta(&a0, &a1, "gateway_cache_misses_total", DEFAULT_ORG),
        2.0,
        "the stored miss and the 500:\n{}",
        a1.text
    );
    assert_eq!(a0.value("gateway_cache_entries", &[]), 0.0);
    assert_eq!(
        a1.value("gateway_cache_entries", &[]),
        1.0,
        "only user_abc is stored (the 500 is not):\n{}",
        a1.text
    );
    let upstream_total = "gateway_upstream_requests_total";
    assert_eq!(
        delta(
            &a0,
            &a1,
            upstream_total,
            &[("status", "200"), ("org", "default")]
        ),
        2.0,
        "{}",
        a1.text
    );
    assert_eq!(
        delta(
            &a0,
            &a1,
            upstream_total,
            &[("status", "500"), ("org", "default")]
        ),
        1.0,
        "{}",
        a1.text
    );
    assert_eq!(
        delta(
            &a0,
            &a1,
            upstream_total,
            &[("status", "error"), ("org", "default")]
        ),
        0.0
    );
    assert_eq!(delta_sum(&a0, &a1, upstream_total), 3.0, "{}", a1.text);
    let duration_count = "gateway_request_duration_seconds_count";
    assert_eq!(
        delta(&a0, &a1, duration_count, &[("route", "get_user")]),
        5.0,
        "{}",
        a1.text
    );
    assert_eq!(
        delta(&a0, &a1, duration_count, &[("route", "forward")]),
        1.0,
        "{}",
        a1.text
    );
    assert_eq!(delta_sum(&a0, &a1, duration_count), 6.0, "{}", a1.text);
    assert_eq!(
        delta(&a0, &a1, "gateway_upstream_duration_seconds_count", &[]),
        3.0,
        "{}",
        a1.text
    );
    // Histogram consistency: the +Inf bucket equals the count.
    assert_eq!(
        a1.value(
            "gateway_upstream_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        a1.value("gateway_upstream_duration_seconds_count", &[]),
        "{}",
        a1.text
    );
    assert_eq!(
        a1.value(
            "gateway_request_duration_seconds_bucket",
            &[("route", "get_user"), ("le", "+Inf")]
        ),
        a1.value(duration_count, &[("route", "get_user")]),
        "{}",
        a1.text
    );
    assert_eq!(a1.value("gateway_requests_in_flight", &[]), 0.0);

    // --- gateway B (upstream down) ---
    assert_eq!(
        delta(
            &b0,
            &b1,
            requests,
            &req_labels("get_user", "GET", "502", "test-client")
        ),
        1.0,
        "{}",
        b1.text
    );
    assert_eq!(delta_sum(&b0, &b1, requests), 1.0, "{}", b1.text);
    assert_eq!(
        delta(
            &b0,
            &b1,
            upstream_total,
            &[("status", "error"), ("org", "default")]
        ),
        1.0,
        "a refused connection is status=\"error\":\n{}",
        b1.text
    );
    assert_eq!(delta_sum(&b0, &b1, upstream_total), 1.0, "{}", b1.text);
    assert_eq!(
        delta(&b0, &b1, "gateway_upstream_duration_seconds_count", &[]),
        1.0,
        "{}",
        b1.text
    );
    assert_eq!(
        delta(&b0, &b1, duration_count, &[("route", "get_user")]),
        1.0,
        "{}",
        b1.text
    );
    assert_eq!(
        delta(&b0, &b1, "gateway_cache_hits_total", DEFAULT_ORG),
        0.0
    );
    assert_eq!(b1.value("gateway_cache_entries", &[]), 0.0, "{}", b1.text);

    // --- labels never carry ids, paths or keys ---
    for scrape in [&a1, &b1] {
        for (needle, what) in [
            ("user_abc", "a user id"),
            ("user_def", "a user id"),
            ("user_ghi", "a user id"),
            ("user_0007", "a user id"),
            ("/v1", "a path"),
            ("organization", "a path"),
            ("limit=2", "a query"),
            (CLIENT_KEY, "the client key"),
            (UNKNOWN_KEY, "an unknown client key"),
            (ADMIN_KEY, "the admin key"),
            (&sha256_hex(CLIENT_KEY), "the client key's hash"),
            (&sha256_hex(UNKNOWN_KEY), "the unknown key's hash"),
            (&closed.to_string(), "the upstream address"),
        ] {
            assert_absent(scrape, needle, what);
        }
        assert_bounded_labels(scrape);
        for s in scrape.series(requests) {
            let keys: Vec<&str> = s.labels.keys().map(String::as_str).collect();
            assert_eq!(keys, ["client", "method", "route", "status"], "{s:?}");
        }
    }
}

#[tokio::test]
async fn admin_requests_are_not_counted_as_gateway_requests() {
    let (upstream, gw) = start_pair().await;
    let before = scrape(&gw).await;
    for path in ["/healthz", "/readyz", "/metrics", "/nope"] {
        gw.admin(Method::GET, path).send().await;
    }
    gw.admin(Method::DELETE, "/cache/users/user_abc")
        .send()
        .await;
    let after = scrape(&gw).await;
    assert_eq!(
        delta_sum(&before, &after, "gateway_requests_total"),
        0.0,
        "admin-listener requests are not client requests:\n{}",
        after.text
    );
    assert_eq!(
        delta_sum(&before, &after, "gateway_request_duration_seconds_count"),
        0.0
    );
    assert_eq!(upstream.total(), 0);
}
