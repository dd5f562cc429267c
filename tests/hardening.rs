//! Trust, tried as a hostile client would: path spellings that could name another resource,
//! writes whose client hangs up, and headers that must not shape another client's answer.
//! The fake upstream counts every request it sees.

mod support;

use http::Method;
use serde_json::json;
use support::process::{GatewayProcess, TempDir};
use support::upstream::Fault;
use support::*;
use tokio::io::AsyncWriteExt;

/// Every hostile spelling tried, for the scoped reader (`GET /organization/users/**`) and a
/// full client. Each must be 400 `invalid_path` and never reach the upstream.
const HOSTILE: &[&str] = &[
    "/v1/organization/users/x/..\\..\\admin_api_keys",
    "/v1/organization/users/x/..%2f..%2fprojects",
    "/v1/organization/users/x/..%2F..%2Fprojects",
    "/v1/organization/users/x/%2e%2e/%2e%2e/projects",
    "/v1/organization/users/x/.%2E/.%2e/projects",
    "/v1/organization/users/x/../../projects",
    "/v1/organization/users/./x",
    "/v1/organization/users/x%5c..%5c..%5cprojects",
    "/v1/organization/users/x%5C..%5C..%5Cprojects",
    "/v1/organization/users\\x",
    "/v1//organization/users/user_abc",
    "/v1/organization//users/user_abc",
    "/v1/organization/users//user_abc",
    "/v1/organization/users/user_abc//",
    "/v1/organization/users%2Fuser_abc",
    "/v1/organization/users/user%2Fabc",
    "/v1/organization/users/user_abc%00",
    "/v1/organization/users/user_abc%0A",
    "/v1/organization/users/user_abc%0d%0aX-Injected:%201",
    "/v1/organization/users/user_abc%7F",
    "/v1/organization/users/user_abc%",
    "/v1/organization/users/user_abc%2",
    "/v1/organization/users/user_abc%zz",
    "/v1/organization/users/%2e",
    "/v1/organization/users/..",
];

#[tokio::test]
async fn hostile_spellings_are_invalid_path_for_scoped_and_full_clients() {
    const READER_KEY: &str = "gwk_scoped_reader_key_0123456789abcdefghijklmnopqr";
    let (upstream, gw) = start_pair_with(|cfg| {
        cfg.extra = client_toml(
            "reader",
            READER_KEY,
            &allow(&["GET /organization/users/**"]),
        );
    })
    .await;
    println!("| spelling | scoped reader | full client |");
    println!("|---|---|---|");
    for path in HOSTILE {
        let mut answers = Vec::new();
        for key in [READER_KEY, CLIENT_KEY] {
            for method in [Method::GET, Method::POST] {
                let before = upstream.total();
                let resp = gw
                    .req(method.clone(), path)
                    .bearer(key)
                    .body("{}")
                    .send()
                    .await;
                assert_openai_error(&resp, 400, "invalid_request_error", "invalid_path");
                assert_eq!(
                    upstream.total(),
                    before,
                    "{method} {path} reached the upstream"
                );
                if method == Method::GET {
                    let code = resp.json()["error"]["code"]
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                    answers.push(format!("{} {code}", resp.status.as_u16()));
                }
            }
        }
        println!("| `{path}` | {} | {} |", answers[0], answers[1]);
    }
    // The scoped reader still reads users, and nothing else.
    gw.req(Method::GET, USER_PATH)
        .bearer(READER_KEY)
        .send()
        .await
        .assert_status(200);
    let other = gw
        .req(Method::GET, "/v1/organization/projects")
        .bearer(READER_KEY)
        .send()
        .await;
    assert_openai_error(&other, 403, "invalid_request_error", "insufficient_scope");
    assert_eq!(upstream.total(), 1, "{:?}", upstream.requests());
    assert_settled(gw.admin_addr, "after the test").await;
}

#[tokio::test]
async fn writes_through_other_spellings_evict_the_user() {
    let (upstream, gw) = start_pair().await;
    for (i, path) in [
        "/v1/organization/%75sers/user_abc",
        "/v1/organization/users/user%5Fabc",
        "/v1/organization/users/user_abc/",
    ]
    .iter()
    .enumerate()
    {
        gw.get_user("user_abc").await.assert_status(200);
        gw.get_user("user_abc").await.hit_ttl();
        let resp = gw
            .req(Method::POST, path)
            .json(&json!({"role": "owner"}))
            .send()
            .await;
        assert!(resp.status.as_u16() < 500, "{path}: {}", resp.describe());
        let after = gw.get_user("user_abc").await;
        assert!(
            !after.cache_status().contains("hit"),
            "{path}: the write left the user cached: {}",
            after.cache_status()
        );
        // The first round fills twice; each later one starts from a hit and refills once.
        assert_eq!(upstream.count("GET", USER_PATH), i + 2, "{path}");
    }
    assert_settled(gw.admin_addr, "after the test").await;
}

#[tokio::test]
async fn a_write_whose_client_hangs_up_still_evicts_and_is_logged() {
    let upstream = start_upstream().await;
    let dir = TempDir::new("hangup-write");
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    let (addr, admin) = cfg.free_ports();
    cfg.timeout_ms = 30_000;
    let mut gw = GatewayProcess::spawn_json(&dir, &cfg.toml(), "info", addr, admin).await;
    let base = format!("http://{addr}");

    // Cached with the old role.
    let first = req(Method::GET, &format!("{base}{USER_PATH}"))
        .bearer(CLIENT_KEY)
        .send()
        .await;
    first.assert_status(200);
    let old_role = first.json()["role"].as_str().unwrap_or("").to_string();
    let new_role = if old_role == "owner" {
        "reader"
    } else {
        "owner"
    };

    // The upstream applies the write at once but answers only after 600 ms; the client
    // sends the write and hangs up after 100 ms.
    upstream.inject("POST", USER_PATH, Fault::new().delay_ms(600));
    let body = format!(r#"{{"role":"{new_role}"}}"#);
    let raw = format!(
        "POST {USER_PATH} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {CLIENT_KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    sock.write_all(raw.as_bytes()).await.expect("write");
    // Hang up once the write is at the upstream, before it answers.
    wait_until(5, "the upstream to receive the write", || {
        upstream.count("POST", USER_PATH) == 1
    })
    .await;
    drop(sock);

    // The write task finishes on its own: the audit line arrives once the upstream answers.
    gw.wait_for_line(5, "the audit line of the write", |l| {
        l.contains("openai_admin_gateway::audit") && l.contains("\"method\":\"POST\"")
    })
    .await;
    let next = req(Method::GET, &format!("{base}{USER_PATH}"))
        .bearer(CLIENT_KEY)
        .send()
        .await;
    next.assert_status(200);
    assert!(
        !next.cache_status().contains("hit"),
        "the old user was served from the cache: {}",
        next.cache_status()
    );
    assert_eq!(next.json()["role"], new_role);
    assert_eq!(upstream.count("GET", USER_PATH), 2);

    let metrics = req(Method::GET, &format!("http://{admin}/metrics"))
        .send()
        .await
        .text();
    assert_eq!(
        metric(&metrics, "gateway_requests_in_flight", &[]),
        0.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "gateway_upstream_in_flight", &[]),
        0.0,
        "{metrics}"
    );

    let status = gw.terminate(30);
    let log = gw.stderr_text();
    assert!(status.success(), "{status}\n{log}");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let of = |target: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|v| v["target"] == target && v["method"] == "POST")
            .collect()
    };
    let access = of("openai_admin_gateway::access");
    assert_eq!(access.len(), 1, "one access line for the write:\n{log}");
    assert_eq!(access[0]["status"], 499, "the client left first:\n{log}");
    let audit = of("openai_admin_gateway::audit");
    assert_eq!(audit.len(), 1, "one audit line for the write:\n{log}");
    assert_eq!(audit[0]["upstream_status"], 200, "{log}");
    assert_eq!(audit[0]["path"], USER_PATH, "{log}");
}

#[tokio::test]
async fn a_range_request_bypasses_and_plain_waiters_get_the_whole_user() {
    let (upstream, gw) = start_pair().await;
    // Hold the fill so that both requests are in flight together.
    upstream.inject("GET", USER_PATH, Fault::new().delay_ms(300));
    let ranged = gw
        .req(Method::GET, USER_PATH)
        .header("range", "bytes=0-10")
        .send();
    let conditional = gw
        .req(Method::GET, USER_PATH)
        .header("if-none-match", "\"abc\"")
        .send();
    let plain = gw.req(Method::GET, USER_PATH).send();
    let plain2 = gw.req(Method::GET, USER_PATH).send();
    let (ranged, conditional, plain, plain2) = tokio::join!(ranged, conditional, plain, plain2);
    for p in [&plain, &plain2] {
        p.assert_status(200);
        assert_eq!(
            p.json()["id"],
            "user_abc",
            "the whole user: {}",
            p.describe()
        );
    }
    for r in [&ranged, &conditional] {
        assert!(
            r.cache_status().contains("fwd=bypass"),
            "{}",
            r.cache_status()
        );
    }
    // The fill carried none of the clients' answer-changing headers.
    let fills: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.path_and_query == USER_PATH)
        .collect();
    let with = |name: &str| {
        fills
            .iter()
            .filter(|r| r.headers.contains_key(name))
            .count()
    };
    assert_eq!(with("range"), 1, "only the Range request itself carried it");
    assert_eq!(with("if-none-match"), 1);
    assert!(fills.len() <= 4, "{}", fills.len());
    assert_settled(gw.admin_addr, "after the test").await;
}

#[tokio::test]
async fn another_organizations_answer_is_never_served_from_the_cache() {
    // Only the default organization is configured (without an organization_id): a request
    // naming any organization is refused before it could reach the cache or the upstream
    // (tests/orgs.rs: organizations that are configured are cached apart).
    let (upstream, gw) = start_pair().await;
    let as_org = |org: &'static str| {
        gw.req(Method::GET, USER_PATH)
            .header("openai-organization", org)
    };
    for org in ["org-OTHER", "org-MINE"] {
        let r = as_org(org).send().await;
        assert_openai_error(&r, 403, "invalid_request_error", "organization_not_allowed");
    }
    assert_eq!(upstream.count("GET", USER_PATH), 0, "never forwarded");

    let plain = gw.get_user("user_abc").await;
    assert!(
        plain.cache_status().contains("stored"),
        "{}",
        plain.cache_status()
    );
    let r = as_org("org-OTHER").send().await;
    assert_openai_error(&r, 403, "invalid_request_error", "organization_not_allowed");
    gw.get_user("user_abc").await.hit_ttl();
    assert_eq!(upstream.count("GET", USER_PATH), 1);
    assert_settled(gw.admin_addr, "after the test").await;
}

#[tokio::test]
async fn a_fill_is_the_gateways_own_request() {
    let (upstream, gw) = start_pair().await;
    gw.req(Method::GET, USER_PATH)
        .header("x-request-id", "trace-123")
        .header("x-custom", "client-only")
        .header("accept-encoding", "gzip")
        .header("cookie", "a=b")
        .send()
        .await
        .assert_status(200);
    let fill = upstream.last_request(USER_PATH);
    let h = &fill.headers;
    assert_eq!(h["accept"], "application/json");
    assert_eq!(h["accept-encoding"], "identity");
    assert_eq!(h["x-request-id"], "trace-123");
    assert!(h["user-agent"]
        .to_str()
        .unwrap_or("")
        .starts_with("openai-admin-gateway/"));
    for name in ["x-custom", "cookie"] {
        assert!(!h.contains_key(name), "{name} reached the fill");
    }
}
