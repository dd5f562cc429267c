//! What the admin listener serves and what the public one does not: health and readiness
//! (also during a drain), admin paths that do not exist on the public listener, and proxy
//! paths that do not exist on the admin listener.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Method, Request};
use support::metrics::scrape;
use support::*;
use tokio::net::TcpStream;

#[tokio::test]
async fn health_and_readiness_are_on_the_admin_listener_only() {
    let (_upstream, gw) = start_pair().await;
    for path in ["/healthz", "/readyz"] {
        gw.admin(Method::GET, path).send().await.assert_status(200);
        let public = gw.get(path).await;
        assert_openai_error(&public, 404, "invalid_request_error", "not_found");
    }
}

// === which listener serves what ===

#[tokio::test]
async fn admin_paths_outside_the_prefix_are_404_on_the_public_listener_over_h1_and_h2c() {
    let (upstream, gw) = start_pair().await;
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/cache",
        "/cache/users/user_abc",
    ] {
        for h2c in [false, true] {
            for key in [Some(CLIENT_KEY), None] {
                let mut r = req(Method::GET, &gw.url(path));
                if let Some(key) = key {
                    r = r.bearer(key);
                }
                if h2c {
                    r = r.h2c();
                }
                let resp = r.send().await;
                assert_openai_error(&resp, 404, "invalid_request_error", "not_found");
                assert_ne!(resp.text(), "ok\n");
            }
        }
    }
    assert_eq!(upstream.total(), 0, "{:?}", upstream.requests());
}

#[tokio::test]
async fn admin_paths_under_the_prefix_are_forwarded_not_answered_by_the_admin_handler() {
    let (upstream, gw) = start_pair().await;
    // A cached user, to show a forwarded "purge" does not touch the cache.
    gw.get_user("user_abc").await.assert_status(200);

    let cases = [
        (Method::GET, "/v1/healthz"),
        (Method::GET, "/v1/readyz"),
        (Method::GET, "/v1/metrics"),
        (Method::DELETE, "/v1/cache"),
        (Method::DELETE, "/v1/cache/users/user_abc"),
    ];
    for (method, path) in cases {
        let resp = gw.req(method.clone(), path).send().await;
        resp.assert_status(200);
        assert!(
            resp.request_id().starts_with("upstream-req-"),
            "{method} {path} was not answered by the upstream: {}",
            resp.describe()
        );
        assert_eq!(resp.cache_status(), format!("{CACHE_NAME}; fwd=bypass"));
        let echo = resp.json();
        assert_eq!(echo["method"], method.as_str(), "{}", resp.describe());
        assert_eq!(echo["path"], path, "{}", resp.describe());
        assert!(!resp.text().contains("gateway_requests_total"));
        assert_eq!(upstream.count(method.as_str(), path), 1, "{method} {path}");
    }
    // The forwarded DELETEs evicted nothing.
    gw.get_user("user_abc").await.hit_ttl();
    assert_eq!(upstream.count("GET", USER_PATH), 1);
    let m = scrape(&gw).await;
    assert_eq!(
        m.sum("gateway_cache_invalidations_total"),
        0.0,
        "{}",
        m.text
    );
    assert_eq!(m.value("gateway_cache_entries", &[]), 1.0, "{}", m.text);
}

#[tokio::test]
async fn the_admin_listener_does_not_proxy() {
    let (upstream, gw) = start_pair().await;
    for (method, path) in [
        (Method::GET, USER_PATH),
        (Method::GET, "/v1/organization/users"),
        (Method::DELETE, USER_PATH),
        (Method::POST, "/v1/echo/x"),
    ] {
        let resp = gw
            .admin(method.clone(), path)
            .bearer(CLIENT_KEY)
            .send()
            .await;
        assert_eq!(
            resp.status.as_u16(),
            404,
            "{method} {path} on the admin listener: {}",
            resp.describe()
        );
        resp.assert_no_admin_key();
    }
    assert_eq!(upstream.total(), 0, "{:?}", upstream.requests());
}

// === readiness during a drain ===

/// True once connecting to `addr` is refused.
async fn refused(addr: SocketAddr) -> bool {
    TcpStream::connect(addr).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_never_answers_200_once_draining_begins() {
    let (upstream, gw) = start_pair_with(|c| c.shutdown_grace_secs = 20).await;
    gw.admin(Method::GET, "/readyz")
        .send()
        .await
        .assert_status(200);

    // Hold a request in flight so the drain lasts until the gate opens.
    let mut conn = h1_connect(gw.addr).await;
    let slow = Request::builder()
        .method(Method::POST)
        .uri("/v1/echo/slow")
        .header("host", "gateway")
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .header("x-fake-gate", "drain")
        .body(full("x"))
        .expect("request");
    let in_flight = tokio::spawn(async move { conn.send_request(slow).await });
    upstream.wait_for_count("POST", "/v1/echo/slow", 1).await;

    gw.shutdown();
    let start = Instant::now();
    while !refused(gw.addr).await {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the public listener still accepts 10s after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The server flips to draining right after the listener closes: wait for the first
    // answer that is not 200.
    let start = Instant::now();
    while let Ok(resp) = req(Method::GET, &gw.admin_url("/readyz")).try_send().await {
        if resp.status.as_u16() != 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "/readyz still 200 10s after the listener closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // While the request is still in flight, /readyz is 503 or not reachable at all.
    let mut seen = Vec::new();
    for _ in 0..10 {
        match req(Method::GET, &gw.admin_url("/readyz")).try_send().await {
            Ok(resp) => {
                assert_eq!(
                    resp.status.as_u16(),
                    503,
                    "/readyz while draining: {}",
                    resp.describe()
                );
                seen.push("503");
            }
            Err(_) => seen.push("unreachable"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !in_flight.is_finished(),
        "the in-flight request ended early"
    );
    println!("/readyz during the drain: {seen:?}");

    upstream.gate("drain").open();
    let resp = within(15, "the in-flight response", in_flight)
        .await
        .expect("task")
        .expect("the in-flight request failed during the drain");
    TestResponse::collect(resp)
        .await
        .expect("body")
        .assert_status(200);
    gw.wait_stopped(20).await.expect("Server::run failed");
}
