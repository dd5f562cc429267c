//! The admin listener beyond `tests/admin.rs`: metric values that move by exact amounts as
//! requests happen, bounded label values, cache purges (with their upstream cost, the
//! entries gauge and invalid ids), admin paths that do not exist on the public listener
//! (and proxy paths that do not exist on the admin listener), and `/readyz` during a drain.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Method, Request};
use support::process::free_addr;
use support::*;
use tokio::net::TcpStream;

const USER_PATH: &str = "/v1/organization/users/user_abc";

fn user_path(id: &str) -> String {
    format!("/v1/organization/users/{id}")
}

// === a small Prometheus / OpenMetrics text parser ===

/// One sample line: `name{k="v",...} value`.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// One `/metrics` scrape, raw and parsed.
struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| parse_sample(l).unwrap_or_else(|| panic!("unparsable sample line {l:?}")))
            .collect();
        Scrape { text, samples }
    }

    /// The value of the series `name` whose label set is exactly `labels` (0 when absent: a
    /// labelled counter appears only once something was counted).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == want)
            .collect();
        assert!(
            found.len() <= 1,
            "{name}{labels:?} appears {} times:\n{}",
            found.len(),
            self.text
        );
        found.first().map_or(0.0, |s| s.value)
    }

    /// The sum of every series of `name`, whatever its labels.
    fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }

    /// Every sample of `name`.
    fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    /// Fails the test unless `name` is present as a series (even at 0).
    #[track_caller]
    fn assert_present(&self, name: &str) {
        assert!(
            self.samples.iter().any(|s| s.name == name),
            "{name} missing from /metrics:\n{}",
            self.text
        );
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after_brace) = rest.strip_prefix('{') {
        let mut chars = after_brace.char_indices().peekable();
        let mut end = None;
        loop {
            // `}` closes the set; `,` separates pairs.
            match chars.peek() {
                Some((i, '}')) => {
                    end = Some(*i + 1);
                    break;
                }
                Some((_, ',')) => {
                    chars.next();
                    continue;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut value = String::new();
            let mut escaped = false;
            for (_, c) in chars.by_ref() {
                match (escaped, c) {
                    (true, 'n') => {
                        value.push('\n');
                        escaped = false;
                    }
                    (true, c) => {
                        value.push(c);
                        escaped = false;
                    }
                    (false, '\\') => escaped = true,
                    (false, '"') => break,
                    (false, c) => value.push(c),
                }
            }
            labels.insert(key, value);
        }
        rest = &after_brace[end?..];
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

async fn scrape(gw: &TestGateway) -> Scrape {
    let resp = gw.admin(Method::GET, "/metrics").send().await;
    resp.assert_status(200);
    Scrape::parse(resp.text())
}

/// `after - before` of one exact series.
fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.value(name, labels) - before.value(name, labels)
}

/// `after - before` of the sum over every series of `name`.
fn delta_sum(before: &Scrape, after: &Scrape, name: &str) -> f64 {
    after.sum(name) - before.sum(name)
}

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

// === metric values ===

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
        delta(&a0, &a1, "gateway_cache_hits_total", &[]),
        1.0,
        "{}",
        a1.text
    );
    assert_eq!(
        delta(&a0, &a1, "gateway_cache_misses_total", &[]),
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
        delta(&a0, &a1, upstream_total, &[("status", "200")]),
        2.0,
        "{}",
        a1.text
    );
    assert_eq!(
        delta(&a0, &a1, upstream_total, &[("status", "500")]),
        1.0,
        "{}",
        a1.text
    );
    assert_eq!(delta(&a0, &a1, upstream_total, &[("status", "error")]), 0.0);
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
        delta(&b0, &b1, upstream_total, &[("status", "error")]),
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
    assert_eq!(delta(&b0, &b1, "gateway_cache_hits_total", &[]), 0.0);
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

// === purges ===

#[tokio::test]
async fn purging_one_user_costs_exactly_one_upstream_fetch_for_that_user() {
    let (upstream, gw) = start_pair().await;
    let (abc, def) = (user_path("user_abc"), user_path("user_def"));
    gw.get_user("user_abc").await.assert_status(200);
    gw.get_user("user_def").await.assert_status(200);
    gw.get_user("user_abc").await.hit_ttl();
    gw.get_user("user_def").await.hit_ttl();
    assert_eq!(
        (upstream.count("GET", &abc), upstream.count("GET", &def)),
        (1, 1)
    );
    let m0 = scrape(&gw).await;
    assert_eq!(m0.value("gateway_cache_entries", &[]), 2.0, "{}", m0.text);

    let total = upstream.total();
    let purge = gw
        .admin(Method::DELETE, "/cache/users/user_abc")
        .send()
        .await;
    assert!(purge.status.is_success(), "{}", purge.describe());
    assert_eq!(upstream.total(), total, "a purge never calls the upstream");

    let m1 = scrape(&gw).await;
    assert_eq!(m1.value("gateway_cache_entries", &[]), 1.0, "{}", m1.text);
    assert_eq!(
        delta(
            &m0,
            &m1,
            "gateway_cache_invalidations_total",
            &[("reason", "purge")]
        ),
        1.0,
        "{}",
        m1.text
    );

    // Next GET of the purged user is a miss: exactly one more upstream call for it.
    let again = gw.get_user("user_abc").await;
    again.assert_status(200);
    assert_eq!(again.cache_status(), stored_miss());
    assert_eq!(again.body, upstream.user_body("user_abc"));
    assert_eq!(upstream.count("GET", &abc), 2);
    // The other user was not touched.
    gw.get_user("user_def").await.hit_ttl();
    assert_eq!(upstream.count("GET", &def), 1);
    // And the refetched one is cached again.
    gw.get_user("user_abc").await.hit_ttl();
    assert_eq!(upstream.count("GET", &abc), 2);

    // Purging a user that is not cached succeeds and changes nothing.
    let absent = gw
        .admin(Method::DELETE, "/cache/users/user_ghi")
        .send()
        .await;
    assert!(absent.status.is_success(), "{}", absent.describe());
    gw.get_user("user_abc").await.hit_ttl();
    gw.get_user("user_def").await.hit_ttl();
    assert_eq!(
        (upstream.count("GET", &abc), upstream.count("GET", &def)),
        (2, 1)
    );

    let m2 = scrape(&gw).await;
    let d = |name: &str| delta(&m1, &m2, name, &[]);
    assert_eq!(d("gateway_cache_misses_total"), 1.0, "{}", m2.text);
    assert_eq!(d("gateway_cache_hits_total"), 4.0, "{}", m2.text);
    assert_eq!(m2.value("gateway_cache_entries", &[]), 2.0, "{}", m2.text);
}

#[tokio::test]
async fn purging_everything_makes_every_user_a_miss_once() {
    let (upstream, gw) = start_pair().await;
    let ids = ["user_abc", "user_def", "user_0001", "user_0002"];
    for id in ids {
        gw.get_user(id).await.assert_status(200);
    }
    let m0 = scrape(&gw).await;
    assert_eq!(m0.value("gateway_cache_entries", &[]), 4.0, "{}", m0.text);

    let total = upstream.total();
    let purge = gw.admin(Method::DELETE, "/cache").send().await;
    assert!(purge.status.is_success(), "{}", purge.describe());
    assert_eq!(upstream.total(), total, "a purge never calls the upstream");
    let m1 = scrape(&gw).await;
    assert_eq!(
        m1.value("gateway_cache_entries", &[]),
        0.0,
        "entries after DELETE /cache:\n{}",
        m1.text
    );
    assert_eq!(
        delta(
            &m0,
            &m1,
            "gateway_cache_invalidations_total",
            &[("reason", "purge_all")]
        ),
        1.0,
        "{}",
        m1.text
    );

    for id in ids {
        let resp = gw.get_user(id).await;
        assert_eq!(resp.cache_status(), stored_miss(), "{id}");
        assert_eq!(upstream.count("GET", &user_path(id)), 2, "{id}");
    }
    for id in ids {
        gw.get_user(id).await.hit_ttl();
        assert_eq!(upstream.count("GET", &user_path(id)), 2, "{id}");
    }
    let m2 = scrape(&gw).await;
    assert_eq!(m2.value("gateway_cache_entries", &[]), 4.0, "{}", m2.text);
    assert_eq!(
        delta(&m1, &m2, "gateway_cache_misses_total", &[]),
        4.0,
        "{}",
        m2.text
    );
}

#[tokio::test]
async fn purging_any_spelling_of_an_id_purges_its_one_entry() {
    let (upstream, gw) = start_pair().await;
    gw.get_user("user_abc").await.assert_status(200);
    let resp = gw
        .admin(Method::DELETE, "/cache/users/%75ser%5Fabc")
        .send()
        .await;
    resp.assert_status(200);
    assert_eq!(resp.json()["purged"], "user_abc");
    gw.get_user("user_abc").await.assert_status(200);
    assert_eq!(
        upstream.count("GET", USER_PATH),
        2,
        "the purge evicted user_abc"
    );
}

#[tokio::test]
async fn purging_an_invalid_id_is_400_and_evicts_nothing() {
    let (upstream, gw) = start_pair().await;
    gw.get_user("user_abc").await.assert_status(200);
    let too_long = "a".repeat(257);
    let invalid = [
        // Spellings that are not one canonical path segment.
        "user%2Fabc",
        "user%5Cabc",
        "user_abc%00",
        "%2e%2e",
        "user%zz",
        // A second path segment.
        "user_abc/roles",
        "user_abc/",
        // Empty.
        "",
        too_long.as_str(),
    ];
    for id in invalid {
        let resp = gw
            .admin(Method::DELETE, &format!("/cache/users/{id}"))
            .send()
            .await;
        assert_eq!(
            resp.status.as_u16(),
            400,
            "DELETE /cache/users/{id}: {}",
            resp.describe()
        );
        assert!(!resp.text().contains("purged"), "{id}: {}", resp.describe());
    }
    // Nothing was evicted.
    gw.get_user("user_abc").await.hit_ttl();
    assert_eq!(upstream.count("GET", USER_PATH), 1);

    // The longest valid id (256 bytes) is accepted.
    let longest = "a".repeat(256);
    let ok = gw
        .admin(Method::DELETE, &format!("/cache/users/{longest}"))
        .send()
        .await;
    assert!(ok.status.is_success(), "{}", ok.describe());

    // Only DELETE evicts: other methods on the purge paths leave the entry alone.
    for method in [Method::GET, Method::POST, Method::PUT] {
        for path in ["/cache/users/user_abc", "/cache"] {
            let resp = gw.admin(method.clone(), path).send().await;
            assert!(
                resp.status.is_client_error(),
                "{method} {path}: {}",
                resp.describe()
            );
        }
    }
    gw.get_user("user_abc").await.hit_ttl();
    assert_eq!(upstream.count("GET", USER_PATH), 1);
    let m = scrape(&gw).await;
    assert_eq!(
        m.sum("gateway_cache_invalidations_total"),
        1.0,
        "only the valid purge counts:\n{}",
        m.text
    );
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
