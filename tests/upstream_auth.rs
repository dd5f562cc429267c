//! The upstream refusing the admin key is the gateway's problem, not its client's: an upstream
//! 401 (a revoked key: OpenAI quotes it masked, `sk-admin-****…` plus its last four
//! characters), or a 403 naming the key, becomes 502 `gateway_error`/`upstream_auth_failed` on
//! every route, is logged at ERROR and counted in `gateway_upstream_auth_failures_total`, and no
//! part of the key reaches a response or a log line. A 403 that names no key (a missing
//! permission) is relayed as it came.

mod support;

use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Map, Value};
use support::process::{GatewayProcess, TempDir};
use support::upstream::{masked_admin_key, KeyRefusal};
use support::*;

const AUTH_FAILURES: &str = "gateway_upstream_auth_failures_total";

// === what a leak would look like ===

/// The pieces of the admin key a leak would show, found in `text`: the key, its masked form,
/// its first 8 characters (`sk-admin`), the part after `sk-admin-`, and its last 4 characters
/// where they start a word (as after the stars of the masked form; inside a longer number,
/// such as a timestamp's microseconds or a hex id, they are not the key's).
fn key_fragments_in(text: &str) -> Vec<String> {
    let last4 = &ADMIN_KEY[ADMIN_KEY.len() - 4..];
    let mut found: Vec<String> = [
        ADMIN_KEY,
        masked_admin_key().as_str(),
        &ADMIN_KEY[..8],
        ADMIN_KEY.trim_start_matches("sk-admin-"),
    ]
    .iter()
    .filter(|f| text.contains(**f))
    .map(|f| f.to_string())
    .collect();
    let bytes = text.as_bytes();
    let starts_word = |i: usize| i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
    if text.match_indices(last4).any(|(i, _)| starts_word(i)) {
        found.push(format!("last four characters {last4:?}"));
    }
    found
}

/// Fails the test when `resp`'s status line, headers or body hold a piece of the admin key.
#[track_caller]
fn assert_no_key_fragment(what: &str, resp: &TestResponse) {
    let mut text = String::new();
    for (name, value) in &resp.headers {
        text.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    text.push_str(&resp.text());
    let found = key_fragments_in(&text);
    assert!(
        found.is_empty(),
        "{what}: the response shows {found:?} of the admin key:\n{}",
        resp.describe()
    );
}

#[track_caller]
fn assert_refused(what: &str, resp: &TestResponse) {
    assert_eq!(resp.status, 502, "{what}: {}", resp.describe());
    assert_openai_error(resp, 502, "gateway_error", "upstream_auth_failed");
    let message = resp.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("admin key") && !message.contains("Incorrect API key"),
        "{what}: not the gateway's own message: {message}"
    );
    assert_no_key_fragment(what, resp);
}

// === metrics ===

fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(text, name, labels)
}

/// Waits until both in-flight gauges at `metrics_url` read 0 (the last request's account is
/// written as its handler finishes, which may trail the client's read of the body a little);
/// returns the last `/metrics` text.
async fn settled_metrics(metrics_url: &str) -> String {
    let start = Instant::now();
    loop {
        let resp = req(Method::GET, metrics_url).send().await;
        resp.assert_status(200);
        let text = resp.text();
        let requests = sample(&text, "gateway_requests_in_flight", &[]);
        let upstream = sample(&text, "gateway_upstream_in_flight", &[]);
        if requests == 0.0 && upstream == 0.0 {
            return text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "in-flight gauges stuck at requests={requests} upstream={upstream}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// === the real binary: responses, metrics and every log line ===

/// Every request path the gateway has (cached route: miss, repeat, no-cache, h2c; list,
/// roles, writes) meets a revoked key, then a 403 naming the key. The binary runs at
/// `RUST_LOG=trace` with JSON logs so every line can be checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_admin_key_is_502_everywhere_counted_logged_and_never_shown() {
    let upstream = start_upstream().await;
    upstream.inject("*", "*", Fault::new().refuse_key(KeyRefusal::Revoked));
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    let (addr, admin) = cfg.free_ports();
    let dir = TempDir::new("upstream-auth");
    let mut gw = GatewayProcess::spawn_json(&dir, &cfg.toml(), "trace", addr, admin).await;
    let url = |p: &str| format!("http://{addr}{p}");
    let as_client = |m: Method, p: &str| req(m, &url(p)).bearer(CLIENT_KEY);

    // 1. A revoked key: the upstream answers 401 quoting it masked.
    let revoked = [
        ("cached route, miss", as_client(Method::GET, USER_PATH)),
        ("cached route, again", as_client(Method::GET, USER_PATH)),
        (
            "cached route, no-cache",
            as_client(Method::GET, USER_PATH).header("cache-control", "no-cache"),
        ),
        ("cached route, h2c", as_client(Method::GET, USER_PATH).h2c()),
        (
            "forwarded list",
            as_client(Method::GET, "/v1/organization/users?limit=1"),
        ),
        (
            "forwarded roles",
            as_client(Method::GET, "/v1/organization/users/user_ghi/roles"),
        ),
        (
            "write (POST)",
            as_client(Method::POST, USER_PATH).json(&json!({"role": "reader"})),
        ),
        (
            "write (DELETE)",
            as_client(Method::DELETE, "/v1/organization/users/user_def"),
        ),
        (
            "forwarded PATCH with a body",
            as_client(Method::PATCH, "/v1/echo/x").body("{}"),
        ),
    ];
    let n_revoked = revoked.len();
    for (what, r) in revoked {
        assert_refused(what, &r.send().await);
    }
    assert_eq!(
        upstream.total(),
        n_revoked,
        "each request reached the upstream once: {:?}",
        upstream.requests()
    );

    // 2. A 403 that names the key (by its masked form only).
    upstream.clear_faults();
    upstream.inject(
        "*",
        "*",
        Fault::new().refuse_key(KeyRefusal::ForbiddenNamingKey),
    );
    let naming = [
        ("cached route", as_client(Method::GET, USER_PATH)),
        (
            "forwarded list",
            as_client(Method::GET, "/v1/organization/users?limit=1"),
        ),
        (
            "write (POST)",
            as_client(Method::POST, USER_PATH).json(&json!({"role": "owner"})),
        ),
    ];
    let n_naming = naming.len();
    for (what, r) in naming {
        assert_refused(&format!("403 naming the key, {what}"), &r.send().await);
    }

    // Counted once per upstream refusal, by status; nothing left in flight.
    let metrics = settled_metrics(&format!("http://{admin}/metrics")).await;
    assert_eq!(
        sample(&metrics, AUTH_FAILURES, &[("status", "401")]),
        n_revoked as f64,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, AUTH_FAILURES, &[("status", "403")]),
        n_naming as f64,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "gateway_requests_total", &[("status", "502")]),
        (n_revoked + n_naming) as f64,
        "{metrics}"
    );
    let found = key_fragments_in(&metrics);
    assert!(found.is_empty(), "metrics show {found:?}:\n{metrics}");

    // The log: one ERROR line per refusal with the upstream status, no body, no key.
    let status = gw.terminate(20);
    let log = gw.stderr_text();
    assert!(status.success(), "exit status {status}; stderr:\n{log}");
    let lines = json_lines(&log);
    assert!(lines.len() >= 20, "expected trace logging, got:\n{log}");
    let refusals: Vec<&Map<String, Value>> = lines
        .iter()
        .filter(|l| l.get("target") == Some(&json!("openai_admin_gateway::upstream")))
        .filter(|l| l.get("level") == Some(&json!("ERROR")))
        .collect();
    let with_status = |s: u16| {
        refusals
            .iter()
            .filter(|l| l.get("status") == Some(&json!(s)))
            .count()
    };
    assert_eq!(
        (with_status(401), with_status(403), refusals.len()),
        (n_revoked, n_naming, n_revoked + n_naming),
        "ERROR lines for the refusals:\n{refusals:#?}"
    );
    for (n, line) in log.lines().enumerate() {
        let found = key_fragments_in(line);
        assert!(
            found.is_empty(),
            "log line {n} shows {found:?} of the admin key: {line}"
        );
        for body_text in ["Incorrect API key", "has been disabled", "api-keys"] {
            assert!(
                !line.contains(body_text),
                "log line {n} holds the upstream's body: {line}"
            );
        }
    }
}

// === in process: what is relayed, what is cached ===

#[tokio::test]
async fn a_403_that_names_no_key_is_relayed_as_it_came() {
    let (upstream, gw) = start_pair().await;
    upstream.inject(
        "*",
        "*",
        Fault::new().refuse_key(KeyRefusal::ForbiddenWithoutKey),
    );
    let (_, expected) = KeyRefusal::ForbiddenWithoutKey.response();
    let cases = [
        ("cached route", gw.req(Method::GET, USER_PATH), "fwd=miss"),
        (
            "cached route, h2c",
            gw.req(Method::GET, "/v1/organization/users/user_ghi").h2c(),
            "fwd=miss",
        ),
        (
            "forwarded list",
            gw.req(Method::GET, "/v1/organization/users?limit=1"),
            "fwd=bypass",
        ),
        (
            "write (POST)",
            gw.req(Method::POST, USER_PATH)
                .json(&json!({"role": "owner"})),
            "fwd=bypass",
        ),
    ];
    let n = cases.len();
    for (what, r, cache) in cases {
        let resp = r.send().await;
        assert_eq!(resp.status, 403, "{what}: {}", resp.describe());
        assert_eq!(resp.body, expected, "{what}: the body changed");
        assert_eq!(
            resp.header("content-length"),
            Some(expected.len().to_string()),
            "{what}: {}",
            resp.describe()
        );
        assert_eq!(
            resp.header("content-type").as_deref(),
            Some("application/json")
        );
        assert!(
            resp.request_id().starts_with("upstream-req-"),
            "{what}: the upstream's request id is kept: {}",
            resp.describe()
        );
        assert_eq!(
            resp.cache_status(),
            format!("{CACHE_NAME}; {cache}"),
            "{what}"
        );
        assert_no_key_fragment(what, &resp);
    }
    assert_eq!(upstream.total(), n);

    // Not counted as a refusal; the permission error is not cached either.
    let metrics = settled_metrics(&gw.admin_url("/metrics")).await;
    assert_eq!(sample(&metrics, AUTH_FAILURES, &[]), 0.0, "{metrics}");
    upstream.clear_faults();
    let resp = gw.get(USER_PATH).await;
    resp.assert_status(200);
    assert_eq!(
        resp.cache_status(),
        format!("{CACHE_NAME}; fwd=miss; stored")
    );
}

#[tokio::test]
async fn a_refusal_is_not_cached_and_the_route_recovers_with_the_key() {
    let (upstream, gw) = start_pair().await;
    upstream.inject(
        "GET",
        USER_PATH,
        Fault::new().refuse_key(KeyRefusal::Revoked).times(2),
    );
    for what in ["first", "second"] {
        assert_refused(what, &gw.get(USER_PATH).await);
    }
    let resp = gw.get(USER_PATH).await;
    resp.assert_status(200);
    assert_eq!(
        resp.cache_status(),
        format!("{CACHE_NAME}; fwd=miss; stored")
    );
    assert_eq!(resp.body, upstream.user_body("user_abc"));
    gw.get(USER_PATH).await.hit_ttl();
    assert_eq!(upstream.count("GET", USER_PATH), 3);

    let metrics = settled_metrics(&gw.admin_url("/metrics")).await;
    assert_eq!(
        sample(&metrics, AUTH_FAILURES, &[("status", "401")]),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "gateway_upstream_requests_total",
            &[("status", "401")]
        ),
        2.0,
        "the upstream's own status stays visible: {metrics}"
    );
}

#[tokio::test]
async fn a_refused_write_is_502_and_the_next_read_is_fresh() {
    let (upstream, gw) = start_pair().await;
    gw.get(USER_PATH).await.assert_status(200);
    upstream.inject(
        "POST",
        USER_PATH,
        Fault::new().refuse_key(KeyRefusal::Revoked),
    );
    let resp = gw
        .req(Method::POST, USER_PATH)
        .json(&json!({"role": "reader"}))
        .send()
        .await;
    assert_refused("refused write", &resp);
    // A write evicts before it is sent (a fill racing it must not store the old user), so
    // the next read is fetched again; evicting too often is harmless, too rarely is not.
    let next = gw.get(USER_PATH).await;
    next.assert_status(200);
    assert!(
        next.cache_status().contains("stored"),
        "{}",
        next.cache_status()
    );
    assert_eq!(upstream.count("GET", USER_PATH), 2);
    let metrics = settled_metrics(&gw.admin_url("/metrics")).await;
    assert_eq!(sample(&metrics, AUTH_FAILURES, &[]), 1.0, "{metrics}");
}
