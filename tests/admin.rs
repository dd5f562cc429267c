//! The admin listener (health, metrics, cache admin) and config reload.

mod support;

use http::Method;
use support::*;

const USER_PATH: &str = "/v1/organization/users/user_abc";

#[tokio::test]
async fn health_and_readiness_are_on_the_admin_listener_only() {
    let (_upstream, gw) = start_pair().await;
    for path in ["/healthz", "/readyz"] {
        gw.admin(Method::GET, path).send().await.assert_status(200);
        let public = gw.get(path).await;
        assert_openai_error(&public, 404, "invalid_request_error", "not_found");
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

#[tokio::test]
async fn cache_admin_evicts_one_user_or_all() {
    let (upstream, gw) = start_pair().await;
    gw.get_user("user_abc").await.assert_status(200);
    gw.get_user("user_def").await.assert_status(200);

    let evict = gw
        .admin(Method::DELETE, "/cache/users/user_abc")
        .send()
        .await;
    assert!(evict.status.is_success(), "{}", evict.describe());
    assert_eq!(gw.get_user("user_abc").await.cache_status(), stored_miss());
    gw.get_user("user_def").await.hit_ttl();

    let evict_all = gw.admin(Method::DELETE, "/cache").send().await;
    assert!(evict_all.status.is_success(), "{}", evict_all.describe());
    assert_eq!(gw.get_user("user_abc").await.cache_status(), stored_miss());
    assert_eq!(gw.get_user("user_def").await.cache_status(), stored_miss());
    assert_eq!(upstream.count("GET", USER_PATH), 3);

    let public = gw.req(Method::DELETE, "/cache/users/user_abc").send().await;
    assert_openai_error(&public, 404, "invalid_request_error", "not_found");
}

#[tokio::test]
async fn reload_swaps_clients_and_keeps_the_cache() {
    let upstream = start_upstream().await;
    let new_key = "gwk_reloaded_client_key_000000000000000000000000000";
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    let gw = start_gateway(&cfg.toml()).await;
    gw.get_user("user_abc").await.assert_status(200);

    cfg.default_clients = false;
    cfg.extra = client_toml("reloaded", new_key, "");
    gw.reload_toml(&cfg.toml()).expect("reload");

    let old = gw.req(Method::GET, USER_PATH).send().await;
    assert_openai_error(&old, 401, "invalid_request_error", "invalid_api_key");
    let hit = gw.req(Method::GET, USER_PATH).bearer(new_key).send().await;
    hit.assert_status(200);
    hit.hit_ttl();
    assert_eq!(upstream.count("GET", USER_PATH), 1);
}
