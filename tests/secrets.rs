//! The admin key never leaves the gateway: not in responses, metrics or logs (the real binary,
//! traced at `RUST_LOG=trace`).

mod support;

use http::Method;
use serde_json::json;
use support::process::{free_addr, GatewayProcess, TempDir};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_key_never_appears_in_responses_metrics_or_logs() {
    let upstream = start_upstream().await;
    upstream.inject("*", "/v1/echo/reset", Fault::new().reset_before_headers());
    upstream.inject("*", "/v1/echo/slow", Fault::new().delay_ms(5000));
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    let (addr, admin) = cfg.free_ports();
    cfg.timeout_ms = 2000;
    let dir = TempDir::new("secrets");
    let path = dir.write("gateway.toml", &cfg.toml());
    let env = [(ADMIN_KEY_ENV, ADMIN_KEY), ("RUST_LOG", "trace")];
    let mut gateway = GatewayProcess::spawn(&path, &env);
    gateway.wait_listening(addr).await;
    gateway.wait_listening(admin).await;

    let url = |p: &str| format!("http://{addr}{p}");
    let admin_url = |p: &str| format!("http://{admin}{p}");
    let user = url("/v1/organization/users/user_abc");
    let as_client = |m: Method, u: &str| req(m, u).bearer(CLIENT_KEY);
    let mut responses = vec![
        as_client(Method::GET, &user).send().await,
        as_client(Method::GET, &user).send().await,
        as_client(Method::GET, &user)
            .header("cache-control", "no-cache")
            .send()
            .await,
        as_client(Method::POST, &user)
            .json(&json!({"role": "reader"}))
            .send()
            .await,
        as_client(Method::DELETE, &url("/v1/organization/users/user_def"))
            .send()
            .await,
        as_client(Method::GET, &url("/v1/organization/users/user_def"))
            .send()
            .await,
        as_client(Method::GET, &url("/v1/organization/users?limit=3"))
            .send()
            .await,
        as_client(Method::GET, &url("/v1/organization/users/user_ghi/roles"))
            .send()
            .await,
        as_client(Method::GET, &url("/v1/organization/users/user%5Fabc"))
            .send()
            .await,
        as_client(Method::GET, &url("/v1/organization/../x"))
            .send()
            .await,
        as_client(Method::PATCH, &url("/v1/echo/p?q=1"))
            .body("x")
            .send()
            .await,
        as_client(Method::GET, &url("/v1/echo/e"))
            .header("x-fake-status", "500")
            .send()
            .await,
        as_client(Method::GET, &url("/v1/echo/reset")).send().await,
        as_client(Method::GET, &url("/v1/echo/slow")).send().await,
        as_client(Method::GET, &url("/v1/_test/sse?n=3&interval_ms=10"))
            .send()
            .await,
        as_client(Method::GET, &user).h2c().send().await,
        as_client(Method::GET, &url("/v2/outside")).send().await,
        req(Method::GET, &user).send().await,
        req(Method::GET, &user).bearer(ADMIN_KEY).send().await,
        req(Method::GET, &user).bearer(UNKNOWN_KEY).send().await,
        req(Method::GET, &admin_url("/healthz")).send().await,
        req(Method::GET, &admin_url("/readyz")).send().await,
        req(Method::DELETE, &admin_url("/cache/users/user_abc"))
            .send()
            .await,
        req(Method::DELETE, &admin_url("/cache")).send().await,
    ];
    let broken = url("/v1/_test/bytes?n=100000&chunk=10000&break_after=30000");
    let _ = as_client(Method::GET, &broken).try_send().await;
    let statuses: Vec<u16> = responses.iter().map(|r| r.status.as_u16()).collect();
    for expected in [200, 400, 401, 404, 500, 502, 504] {
        assert!(
            statuses.contains(&expected),
            "no {expected} among {statuses:?}"
        );
    }
    let metrics = req(Method::GET, &admin_url("/metrics")).send().await;
    metrics.assert_status(200);
    responses.push(metrics);
    for resp in &responses {
        resp.assert_no_admin_key();
    }
    let metrics = responses.last().expect("metrics").text();
    assert!(
        !metrics.contains("user_abc"),
        "user ids in metric labels:\n{metrics}"
    );
    assert!(!metrics.contains(CLIENT_KEY), "client key in metrics");
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| r.headers.get("authorization").is_some()),
        "every forwarded request carried the admin key"
    );

    let status = gateway.terminate(20);
    let logs = format!("{}\n{}", gateway.stderr_text(), gateway.stdout_text());
    assert!(
        status.success(),
        "SIGTERM must exit 0, got {status}; logs:\n{}",
        tail(&logs)
    );
    assert!(
        logs.lines().count() >= 10,
        "expected trace logging on stderr, got:\n{logs}"
    );
    let needle = ADMIN_KEY.trim_start_matches("sk-admin-");
    for (n, line) in logs.lines().enumerate() {
        assert!(
            !line.contains(ADMIN_KEY) && !line.contains(needle),
            "the admin key appears in log line {n}: {line}"
        );
    }
}

fn tail(logs: &str) -> String {
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[tokio::test]
async fn gateway_errors_do_not_reveal_the_admin_key() {
    // Errors built from upstream failures are the likeliest place for a key to slip out
    // (an error's Debug output of a request, say).
    let closed = free_addr();
    let gw = start_gateway(&config_toml(&format!("http://{closed}/v1"), "")).await;
    for path in ["/v1/organization/users/user_abc", "/v1/echo/x"] {
        let resp = gw.get(path).await;
        resp.assert_status(502);
        resp.assert_no_admin_key();
    }
}
