//! Live reload: clients, keys, limits, scopes and the cache TTL change without a restart, a
//! dropped connection or a cold cache; an invalid file leaves the running config in place.
//! In-process through `Reloader::reload`, then once with the real binary and a real SIGHUP.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use http::Method;
use openai_admin_gateway::Config;
use serde_json::json;
use support::process::{GatewayProcess, TempDir};
use support::*;

const ADDED_KEY: &str = "gwk_added_by_reload_key_000000000000000000000000000000";
const DOOMED_KEY: &str = "gwk_doomed_client_key_dddddddddddddddddddddddddddddddd";
const LIMITED_KEY: &str = "gwk_limited_client_key_llllllllllllllllllllllllllllll";

fn as_key(gw: &TestGateway, key: &str, method: Method, path: &str) -> Req {
    gw.req(method, path).bearer(key)
}

fn parse_with_admin_key(toml: &str) -> Result<Config, String> {
    let env = |name: &str| (name == ADMIN_KEY_ENV).then(|| ADMIN_KEY.to_string());
    Config::parse(toml, Path::new("."), &env).map_err(|e| e.to_string())
}

#[tokio::test]
async fn reload_adds_a_client_whose_key_works_at_once() {
    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    let gw = start_gateway(&cfg.toml()).await;
    gw.get_user("user_abc").await.assert_status(200);
    let before = as_key(&gw, ADDED_KEY, Method::GET, USER_PATH).send().await;
    assert_openai_error(&before, 401, "invalid_request_error", "invalid_api_key");

    cfg.extra = client_toml("added", ADDED_KEY, "");
    gw.reload_toml(&cfg.toml()).expect("reload");

    let hit = as_key(&gw, ADDED_KEY, Method::GET, USER_PATH).send().await;
    hit.assert_status(200);
    hit.hit_ttl();
    as_key(&gw, ADDED_KEY, Method::POST, "/v1/echo/added")
        .body("x")
        .send()
        .await
        .assert_status(200);
    // The clients that were there stay.
    gw.get_user("user_abc").await.assert_status(200);
    as_key(&gw, OTHER_CLIENT_KEY, Method::GET, USER_PATH)
        .send()
        .await
        .assert_status(200);
    assert_eq!(upstream.count("GET", USER_PATH), 1);
    let text = gw.metrics_text().await;
    assert_eq!(
        metric(&text, "gateway_config_reloads_total", &[("result", "ok")]),
        1.0,
        "gateway_config_reloads_total{{result=\"ok\"}}:\n{text}"
    );
}

#[tokio::test]
async fn a_removed_key_is_refused_on_the_very_next_request_on_the_same_connection() {
    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    cfg.extra = client_toml("doomed", DOOMED_KEY, "");
    let gw = start_gateway(&cfg.toml()).await;

    let mut conn = h1_connect(gw.addr).await;
    send_on(&mut conn, Method::GET, USER_PATH, DOOMED_KEY)
        .await
        .assert_status(200);
    send_on(&mut conn, Method::GET, "/v1/echo/doomed", DOOMED_KEY)
        .await
        .assert_status(200);

    cfg.extra.clear();
    gw.reload_toml(&cfg.toml()).expect("reload");
    let upstream_before = upstream.total();

    let refused = send_on(&mut conn, Method::GET, USER_PATH, DOOMED_KEY).await;
    assert_openai_error(&refused, 401, "invalid_request_error", "invalid_api_key");
    let refused = send_on(&mut conn, Method::GET, "/v1/echo/doomed", DOOMED_KEY).await;
    assert_openai_error(&refused, 401, "invalid_request_error", "invalid_api_key");
    assert_eq!(
        upstream.total(),
        upstream_before,
        "a 401 reached the upstream"
    );
    // The connection survived the reload and still serves the remaining clients.
    let hit = send_on(&mut conn, Method::GET, USER_PATH, CLIENT_KEY).await;
    hit.assert_status(200);
    hit.hit_ttl();
}

#[tokio::test]
async fn a_changed_limit_applies_at_once() {
    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    // 6/min: nothing comes back during the test.
    cfg.extra = client_toml("limited", LIMITED_KEY, &rate_limit(6, 2));
    let gw = start_gateway(&cfg.toml()).await;
    let send = || as_key(&gw, LIMITED_KEY, Method::GET, "/v1/echo/rl").send();
    send().await.assert_status(200);
    send().await.assert_status(200);
    assert_openai_error(&send().await, 429, "requests", "rate_limit_exceeded");

    // A bigger budget: the client may go on right away, and the headers say so.
    cfg.extra = client_toml("limited", LIMITED_KEY, &rate_limit(600, 5));
    gw.reload_toml(&cfg.toml()).expect("reload");
    let resp = send().await;
    resp.assert_status(200);
    let (limit, remaining, _) = ratelimit_headers(&resp);
    assert_eq!((limit, remaining), (600, 4));

    // No limit at all: no headers, no refusals.
    cfg.extra = client_toml("limited", LIMITED_KEY, "");
    gw.reload_toml(&cfg.toml()).expect("reload");
    for _ in 0..10 {
        let resp = send().await;
        resp.assert_status(200);
        assert_no_ratelimit_headers(&resp);
    }

    // A tighter limit than before.
    cfg.extra = client_toml("limited", LIMITED_KEY, &rate_limit(6, 1));
    gw.reload_toml(&cfg.toml()).expect("reload");
    let resp = send().await;
    resp.assert_status(200);
    assert_eq!(ratelimit_headers(&resp).0, 6);
    let refused = send().await;
    assert_openai_error(&refused, 429, "requests", "rate_limit_exceeded");
    assert_eq!(ratelimit_headers(&refused).0, 6);
}

#[tokio::test]
async fn a_reload_that_keeps_a_limit_neither_refills_nor_empties_the_budget() {
    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    cfg.extra = client_toml("limited", LIMITED_KEY, &rate_limit(6, 2));
    let gw = start_gateway(&cfg.toml()).await;
    let send = || as_key(&gw, LIMITED_KEY, Method::GET, "/v1/echo/rl").send();
    send().await.assert_status(200);
    send().await.assert_status(200);
    assert_openai_error(&send().await, 429, "requests", "rate_limit_exceeded");

    // Same limit, other changes (a client added, the TTL changed).
    cfg.extra.push_str(&client_toml("added", ADDED_KEY, ""));
    cfg.ttl_secs = 120;
    gw.reload_toml(&cfg.toml()).expect("reload");
    let refused = send().await;
    assert_openai_error(&refused, 429, "requests", "rate_limit_exceeded");
}

#[tokio::test]
async fn a_changed_scope_applies_at_once() {
    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    let scoped = |patterns: &[&str]| client_toml("scoped", ADDED_KEY, &allow(patterns));
    cfg.extra = scoped(&["GET /organization/users/*"]);
    let gw = start_gateway(&cfg.toml()).await;
    let post = || {
        as_key(&gw, ADDED_KEY, Method::POST, USER_PATH)
            .json(&json!({"role": "reader"}))
            .send()
    };
    assert_openai_error(
        &post().await,
        403,
        "invalid_request_error",
        "insufficient_scope",
    );
    assert_eq!(upstream.count("POST", USER_PATH), 0);

    cfg.extra = scoped(&["* /organization/users/*"]);
    gw.reload_toml(&cfg.toml()).expect("reload");
    post().await.assert_status(200);
    assert_eq!(upstream.count("POST", USER_PATH), 1);
    let list = as_key(&gw, ADDED_KEY, Method::GET, "/v1/organization/users")
        .send()
        .await;
    assert_openai_error(&list, 403, "invalid_request_error", "insufficient_scope");

    cfg.extra = client_toml("scoped", ADDED_KEY, "");
    gw.reload_toml(&cfg.toml()).expect("reload");
    as_key(&gw, ADDED_KEY, Method::GET, "/v1/organization/users")
        .send()
        .await
        .assert_status(200);
}

#[tokio::test]
async fn cached_users_stay_hits_across_a_reload() {
    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    let gw = start_gateway(&cfg.toml()).await;
    for id in ["user_abc", "user_def"] {
        let miss = gw.get_user(id).await;
        assert_eq!(miss.cache_status(), stored_miss());
    }

    // Clients, limits, scopes and the TTL all change.
    cfg.ttl_secs = 30;
    cfg.default_clients = false;
    cfg.extra = format!(
        "{}{}",
        client_toml("test-client", CLIENT_KEY, &rate_limit(600, 100)),
        client_toml("added", ADDED_KEY, &allow(&["GET /organization/users/*"])),
    );
    gw.reload_toml(&cfg.toml()).expect("reload");

    for (key, id) in [
        (CLIENT_KEY, "user_abc"),
        (CLIENT_KEY, "user_def"),
        (ADDED_KEY, "user_abc"),
    ] {
        let path = format!("/v1/organization/users/{id}");
        let hit = as_key(&gw, key, Method::GET, &path).send().await;
        hit.assert_status(200);
        let ttl = hit.hit_ttl();
        assert!(ttl <= 60, "ttl {ttl} for an entry stored with ttl_secs 60");
        assert_eq!(hit.body, upstream.user_body(id));
    }
    assert_eq!(
        upstream.count("GET", USER_PATH),
        1,
        "the reload cooled the cache"
    );
    assert_eq!(upstream.count("GET", "/v1/organization/users/user_def"), 1);
}

#[tokio::test]
async fn a_new_cache_ttl_applies_to_entries_stored_after_the_reload() {
    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    cfg.ttl_secs = 300;
    let gw = start_gateway(&cfg.toml()).await;
    assert_eq!(gw.get_user("user_abc").await.cache_status(), stored_miss());

    cfg.ttl_secs = 2;
    gw.reload_toml(&cfg.toml()).expect("reload");
    assert_eq!(gw.get_user("user_def").await.cache_status(), stored_miss());
    let short = gw.get_user("user_def").await.hit_ttl();
    assert!(
        short <= 2,
        "entry stored after the reload has ttl {short} > 2"
    );
    let long = gw.get_user("user_abc").await.hit_ttl();
    assert!(
        long > 200,
        "the entry stored before the reload lost its TTL: {long}"
    );

    // The short-lived entry expires; the old one does not.
    within(20, "user_def to expire", async {
        while gw.get_user("user_def").await.cache_status() != stored_miss() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    assert_eq!(upstream.count("GET", "/v1/organization/users/user_def"), 2);
    gw.get_user("user_abc").await.hit_ttl();
    assert_eq!(upstream.count("GET", USER_PATH), 1);
}

#[tokio::test]
async fn a_longer_ttl_after_a_reload_keeps_users_read_within_the_old_idle_bound() {
    // Started with ttl_secs = 1: moka drops a user nobody read for 1 s.
    // After a reload to 60 s, a user read at least that often is served
    // for its new TTL; one left unread longer is fetched again (README,
    // Reload), until a restart.
    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    cfg.ttl_secs = 1;
    let gw = start_gateway(&cfg.toml()).await;
    cfg.ttl_secs = 60;
    gw.reload_toml(&cfg.toml()).expect("reload");
    assert_eq!(gw.get_user("user_abc").await.cache_status(), stored_miss());
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let ttl = gw.get_user("user_abc").await.hit_ttl();
        assert!(ttl > 50, "stored with the reloaded TTL, {ttl} left");
    }
    assert_eq!(upstream.count("GET", USER_PATH), 1);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(gw.get_user("user_abc").await.cache_status(), stored_miss());
    assert_eq!(upstream.count("GET", USER_PATH), 2);
}

#[tokio::test]
async fn an_invalid_config_is_refused_and_the_running_config_stays() {
    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    cfg.extra = client_toml("doomed", DOOMED_KEY, "");
    let gw = start_gateway(&cfg.toml()).await;
    gw.get_user("user_abc").await.assert_status(200);

    // Each file drops the `doomed` client and has one problem; none may be applied.
    let mut next = cfg.clone();
    next.extra.clear();
    let base = next.toml();
    let broken = [
        (
            base.replace("[cache]\n", "[cache]\nttl_minutes = 5\n"),
            "ttl_minutes",
        ),
        (
            format!(
                "{base}{}",
                client_toml("bad-limit", ADDED_KEY, &rate_limit(0, 1))
            ),
            "requests_per_minute",
        ),
        (
            format!(
                "{base}{}",
                client_toml("bad-scope", ADDED_KEY, "allow = [\"get /organization\"]")
            ),
            "allow",
        ),
        (
            base.replace("ttl_secs = 60", "ttl_secs = \"sixty\""),
            "ttl_secs",
        ),
    ];
    for (toml, key) in &broken {
        match parse_with_admin_key(toml) {
            Ok(_) => panic!("a config with a bad {key} was accepted:\n{toml}"),
            Err(e) => assert!(e.contains(key), "the error does not name {key}: {e}"),
        }
    }

    // The running config still serves every client it had.
    let hit = as_key(&gw, DOOMED_KEY, Method::GET, USER_PATH).send().await;
    hit.assert_status(200);
    hit.hit_ttl();
    gw.get_user("user_abc").await.assert_status(200);
    assert_eq!(upstream.count("GET", USER_PATH), 1);
}

// === the real binary ===

async fn get(url: &str, key: &str) -> TestResponse {
    req(Method::GET, url).bearer(key).send().await
}

/// Polls until `key` gets `status` on `url`, for at most `secs`.
async fn wait_status(url: &str, key: &str, status: u16, secs: u64) -> TestResponse {
    let start = Instant::now();
    loop {
        let resp = get(url, key).await;
        if resp.status.as_u16() == status {
            return resp;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "still {} instead of {status} on {url} after {secs}s",
            resp.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file_and_an_invalid_file_keeps_the_running_config() {
    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    let (addr, admin) = cfg.free_ports();
    cfg.extra = client_toml("doomed", DOOMED_KEY, "");
    let dir = TempDir::new("sighup");
    let path = dir.write("gateway.toml", &cfg.toml());
    let mut gw = GatewayProcess::spawn_logged(&path, &[(ADMIN_KEY_ENV, ADMIN_KEY)]);
    gw.wait_listening(addr).await;
    gw.wait_listening(admin).await;

    let user = format!("http://{addr}{USER_PATH}");
    get(&user, DOOMED_KEY).await.assert_status(200);
    get(&user, CLIENT_KEY).await.assert_status(200);
    get(&user, OTHER_CLIENT_KEY).await.assert_status(200);

    // 1. Remove `doomed` from the file and send SIGHUP.
    cfg.extra.clear();
    dir.write("gateway.toml", &cfg.toml());
    gw.signal("HUP");
    let refused = wait_status(&user, DOOMED_KEY, 401, 5).await;
    assert_openai_error(&refused, 401, "invalid_request_error", "invalid_api_key");
    let hit = get(&user, CLIENT_KEY).await;
    hit.assert_status(200);
    hit.hit_ttl();
    assert_eq!(
        upstream.count("GET", USER_PATH),
        1,
        "the reload cooled the cache"
    );
    assert_eq!(config_reloads(admin, "ok").await, 1.0);

    // 2. An invalid file (it would also drop `other-client`): logged, running config kept.
    let mut bad = cfg.clone();
    bad.default_clients = false;
    bad.extra = client_toml("test-client", CLIENT_KEY, &rate_limit(0, 1));
    dir.write("gateway.toml", &bad.toml());
    gw.signal("HUP");
    let start = Instant::now();
    while config_reloads(admin, "error").await < 1.0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the invalid reload was not counted within 5s; stderr:\n{}",
            gw.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.wait_for_line(5, "naming rate_limit.requests_per_minute", |l| {
        l.contains("rate_limit.requests_per_minute")
    })
    .await;
    gw.assert_running();
    get(&user, OTHER_CLIENT_KEY).await.assert_status(200);
    for _ in 0..5 {
        let resp = get(&user, CLIENT_KEY).await;
        resp.assert_status(200);
        assert_no_ratelimit_headers(&resp);
    }
    get(&user, DOOMED_KEY).await.assert_status(401);
    assert_eq!(config_reloads(admin, "ok").await, 1.0);

    let status = gw.terminate(15);
    assert!(status.success(), "exit status {status}");
    let log = strip_ansi(&gw.stderr_text());
    let problem = log
        .lines()
        .find(|l| l.contains("rate_limit.requests_per_minute"))
        .expect("problem line");
    assert!(
        problem.contains("clients[0].rate_limit.requests_per_minute"),
        "the problem line should name the full key: {problem}"
    );
    for secret in [ADMIN_KEY, CLIENT_KEY, DOOMED_KEY, OTHER_CLIENT_KEY] {
        assert!(!log.contains(secret), "a key appears in the log:\n{log}");
    }
}

/// SIGHUP's default action is to terminate the process, so the gateway must handle it before it
/// accepts connections. A reload sent as soon as the port answers (a deploy script, `systemctl
/// reload` right after start) must reload, not kill the gateway. The race window is small, so
/// this tries many times with tight polling.
#[test]
fn sighup_as_soon_as_the_port_answers_does_not_kill_the_gateway() {
    const ROUNDS: usize = 60;
    let mut died = Vec::new();
    for round in 0..ROUNDS {
        // The upstream is never contacted.
        let mut cfg = GatewayConfig::new("http://127.0.0.1:9/v1");
        let (addr, _) = cfg.free_ports();
        let dir = TempDir::new("early-hup");
        let path = dir.write("gateway.toml", &cfg.toml());
        let mut gw = GatewayProcess::spawn_logged(
            &path,
            &[(ADMIN_KEY_ENV, ADMIN_KEY), ("RUST_LOG", "info")],
        );
        let start = Instant::now();
        loop {
            gw.assert_running();
            if std::net::TcpStream::connect(addr).is_ok() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "round {round}: the gateway never listened; stderr:\n{}",
                gw.stderr_text()
            );
        }
        gw.signal("HUP");
        // Either the signal killed it or it logs the reload: wait for whichever comes first.
        let sent = Instant::now();
        let died_with = loop {
            if let Some(status) = gw.exit_status() {
                break Some(status);
            }
            if gw.stderr_text().contains("configuration reloaded") {
                break None;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(10),
                "round {round}: neither a reload nor an exit 10s after SIGHUP:\n{}",
                gw.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        if let Some(status) = died_with {
            died.push(format!("round {round}: {status}"));
            continue;
        }
        let status = gw.terminate(15);
        assert!(status.success(), "round {round}: exit status {status}");
    }
    assert!(
        died.is_empty(),
        "SIGHUP right after the listener opened killed the gateway in {} of {ROUNDS} rounds: {died:?}",
        died.len()
    );
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
