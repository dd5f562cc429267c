//! The cached route: `GET /v1/organization/users/{id}`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_json::json;
use support::metrics::scrape;
use support::upstream::gzip_stored;
use support::*;

const USER: &str = "user_abc";

#[tokio::test]
async fn miss_then_hit_serves_stored_bytes_with_one_upstream_call() {
    let (upstream, gw) = start_pair().await;

    let first = gw.get_user(USER).await;
    first.assert_status(200);
    assert_eq!(first.cache_status(), stored_miss());
    assert_eq!(
        first.body,
        upstream.user_body(USER),
        "a miss returns the upstream's bytes"
    );
    assert_eq!(
        first.header("content-type").as_deref(),
        Some("application/json")
    );
    let upstream_id = upstream.last_request(USER_PATH).request_id;
    assert_eq!(
        first.request_id(),
        upstream_id,
        "a miss carries the upstream's request id"
    );

    let second = gw.get_user(USER).await;
    second.assert_status(200);
    let ttl = second.hit_ttl();
    assert!(ttl <= 60, "ttl left {ttl} exceeds ttl_secs 60");
    let age = second.header("age").expect("a hit carries an Age header");
    let age: u64 = age
        .parse()
        .unwrap_or_else(|_| panic!("Age {age:?} is not whole seconds"));
    assert!(age <= 60, "Age {age} exceeds ttl_secs");
    assert_eq!(
        second.body, first.body,
        "a hit returns the stored bytes unchanged"
    );
    assert_eq!(second.header("content-type"), first.header("content-type"));
    let hit_id = second.request_id();
    assert!(
        !hit_id.starts_with("upstream-req-"),
        "a hit gets a fresh gateway id, got {hit_id}"
    );

    let third = gw.get_user(USER).await;
    third.hit_ttl();
    assert_ne!(
        third.request_id(),
        hit_id,
        "every hit gets its own request id"
    );
    assert_eq!(
        upstream.count("GET", USER_PATH),
        1,
        "hits must not reach the upstream"
    );
    second.assert_no_admin_key();
}

#[tokio::test]
async fn hit_age_grows_and_ttl_shrinks() {
    let (upstream, gw) = start_pair().await;
    gw.get_user(USER).await.assert_status(200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let hit = gw.get_user(USER).await;
    let ttl = hit.hit_ttl();
    let age: u64 = hit
        .header("age")
        .expect("Age")
        .parse()
        .expect("Age integer");
    assert!(age >= 1, "stored 1.2s ago, Age {age}");
    assert!(
        ttl <= 59,
        "stored 1.2s ago with ttl_secs 60, ttl left {ttl}"
    );
    assert_eq!(upstream.count("GET", USER_PATH), 1);
}

#[tokio::test]
async fn entries_expire_after_ttl_secs() {
    let (upstream, gw) = start_pair_with(|c| c.ttl_secs = 1).await;
    assert_eq!(gw.get_user(USER).await.cache_status(), stored_miss());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = gw.get_user(USER).await;
    after.assert_status(200);
    assert_eq!(
        after.cache_status(),
        stored_miss(),
        "the entry should have expired"
    );
    assert_eq!(upstream.count("GET", USER_PATH), 2);
}

/// 50 GETs of `USER`, released together, and their answers.
async fn fifty_reads_at_once(gw: &Arc<TestGateway>) -> Vec<TestResponse> {
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (gw, barrier) = (gw.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                gw.get_user(USER).await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(within(60, "50 concurrent GETs", task).await.expect("task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_cold_misses_make_one_upstream_call() {
    let (upstream, gw) = start_pair().await;
    // A slow upstream keeps the first fetch in flight while the others arrive.
    upstream.inject("GET", USER_PATH, Fault::new().delay_ms(600));
    let gw = Arc::new(gw);
    let expected = upstream.user_body(USER);
    for resp in fifty_reads_at_once(&gw).await {
        resp.assert_status(200);
        assert_eq!(resp.body, expected);
    }
    assert_eq!(
        upstream.count("GET", USER_PATH),
        1,
        "concurrent misses must share one fetch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_reads_of_an_expired_user_make_one_upstream_call() {
    // The expired entry is still in moka (its end of life is judged on
    // read): no read may serve it, and they share one refetch.
    let (upstream, gw) = start_pair_with(|c| c.ttl_secs = 1).await;
    assert_eq!(gw.get_user(USER).await.cache_status(), stored_miss());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    upstream.inject("GET", USER_PATH, Fault::new().delay_ms(600));
    let gw = Arc::new(gw);
    for resp in fifty_reads_at_once(&gw).await {
        resp.assert_status(200);
        let status = resp.cache_status();
        assert!(
            status == stored_miss() || status.contains("; hit; ttl="),
            "an expired user served: {status}"
        );
        if status != stored_miss() {
            // Panics unless a fresh hit (a served expired one has ttl=-N).
            resp.hit_ttl();
        }
    }
    assert_eq!(
        upstream.count("GET", USER_PATH),
        2,
        "the first fill and one shared refetch"
    );
    // The first fill and the refetch's leader count as misses; the rest
    // were answered by the refetch.
    let m = scrape(&gw).await;
    assert_eq!(m.sum("gateway_cache_misses_total"), 2.0, "{}", m.text);
    assert_eq!(m.sum("gateway_cache_hits_total"), 49.0, "{}", m.text);
}

#[tokio::test]
async fn an_expired_user_nobody_reads_leaves_memory() {
    // With ttl_secs = 1 and no stale window, moka drops an entry nobody
    // read for a second.
    let (_upstream, gw) = start_pair_with(|c| c.ttl_secs = 1).await;
    gw.get_user(USER).await.assert_status(200);
    assert_eq!(scrape(&gw).await.value("gateway_cache_entries", &[]), 1.0);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let m = scrape(&gw).await;
    assert_eq!(m.value("gateway_cache_entries", &[]), 0.0, "{}", m.text);
}

#[tokio::test]
async fn post_through_the_gateway_evicts_the_user() {
    let (upstream, gw) = start_pair().await;
    assert_eq!(gw.get_user(USER).await.json()["role"], "owner");

    let post = gw
        .req(Method::POST, USER_PATH)
        .json(&json!({"role": "reader"}))
        .send()
        .await;
    post.assert_status(200);
    assert_eq!(post.json()["role"], "reader");
    assert_eq!(
        post.request_id(),
        upstream.last_request(USER_PATH).request_id
    );

    let after = gw.get_user(USER).await;
    assert_eq!(
        after.cache_status(),
        stored_miss(),
        "the POST should have evicted the user"
    );
    assert_eq!(after.json()["role"], "reader");
    assert_eq!(upstream.count("GET", USER_PATH), 2);
}

#[tokio::test]
async fn delete_through_the_gateway_evicts_the_user() {
    let (upstream, gw) = start_pair().await;
    gw.get_user(USER).await.assert_status(200);

    let delete = gw.req(Method::DELETE, USER_PATH).send().await;
    delete.assert_status(200);
    assert_eq!(
        delete.json(),
        json!({"object": "organization.user.deleted", "id": USER, "deleted": true})
    );

    let after = gw.get_user(USER).await;
    after.assert_status(404);
    assert_eq!(
        after.json()["error"]["code"],
        "user_not_found",
        "{}",
        after.describe()
    );
    assert_eq!(after.cache_status(), unstored_miss());
    assert_eq!(upstream.count("GET", USER_PATH), 2);
}

#[tokio::test]
async fn write_evicts_only_that_user() {
    let (upstream, gw) = start_pair().await;
    gw.get_user("user_abc").await.assert_status(200);
    gw.get_user("user_def").await.assert_status(200);
    gw.req(Method::POST, USER_PATH)
        .json(&json!({"role": "reader"}))
        .send()
        .await
        .assert_status(200);
    gw.get_user("user_def").await.hit_ttl();
    assert_eq!(upstream.count("GET", "/v1/organization/users/user_def"), 1);
}

#[tokio::test]
async fn failed_write_is_passed_through() {
    let (upstream, gw) = start_pair().await;
    let bad = gw
        .req(Method::POST, USER_PATH)
        .json(&json!({"role": "emperor"}))
        .send()
        .await;
    bad.assert_status(400);
    assert_eq!(bad.json()["error"]["code"], "invalid_role");
    assert_eq!(
        bad.request_id(),
        upstream.last_request(USER_PATH).request_id
    );
}

/// A GET that reached the upstream before a POST, and answers after it, must not put the
/// old version back.
#[tokio::test]
async fn fetch_started_before_a_post_cannot_restore_the_old_version() {
    let (upstream, gw) = start_pair().await;
    upstream.inject("GET", USER_PATH, Fault::new().gate("slow-get").times(1));
    let gw = Arc::new(gw);
    let slow = tokio::spawn({
        let gw = gw.clone();
        async move { gw.get_user(USER).await }
    });
    upstream.wait_for_count("GET", USER_PATH, 1).await;

    let post = gw
        .req(Method::POST, USER_PATH)
        .json(&json!({"role": "reader"}))
        .send()
        .await;
    post.assert_status(200);
    upstream.gate("slow-get").open();
    let slow = within(30, "the slow GET", slow).await.expect("task");
    slow.assert_status(200);
    assert_eq!(
        slow.json()["role"],
        "owner",
        "the slow fetch read the old version"
    );

    let next = gw.get_user(USER).await;
    next.assert_status(200);
    assert_eq!(
        next.json()["role"],
        "reader",
        "the stale fetch was stored after the POST (Cache-Status {})",
        next.cache_status()
    );
}

#[tokio::test]
async fn fetch_started_before_a_delete_cannot_restore_the_user() {
    let (upstream, gw) = start_pair().await;
    upstream.inject("GET", USER_PATH, Fault::new().gate("slow-get").times(1));
    let gw = Arc::new(gw);
    let slow = tokio::spawn({
        let gw = gw.clone();
        async move { gw.get_user(USER).await }
    });
    upstream.wait_for_count("GET", USER_PATH, 1).await;
    gw.req(Method::DELETE, USER_PATH)
        .send()
        .await
        .assert_status(200);
    upstream.gate("slow-get").open();
    within(30, "the slow GET", slow)
        .await
        .expect("task")
        .assert_status(200);

    let next = gw.get_user(USER).await;
    assert_eq!(
        next.status.as_u16(),
        404,
        "the deleted user came back from the cache: {}",
        next.describe()
    );
}

// === what is never stored ===

/// The first GET meets `fault`; it must come back as the upstream sent it and not be stored,
/// so the second GET is a stored miss.
async fn first_answer_not_stored(fault: Fault) -> (Upstream, TestResponse) {
    let (upstream, gw) = start_pair_with(|c| c.max_body_bytes = Some(1024)).await;
    upstream.inject("GET", USER_PATH, fault.times(1));
    let first = gw.get_user(USER).await;
    let second = gw.get_user(USER).await;
    assert_eq!(
        second.cache_status(),
        stored_miss(),
        "the first answer was stored: first {}",
        first.describe()
    );
    assert_eq!(second.body, upstream.user_body(USER));
    assert_eq!(upstream.count("GET", USER_PATH), 2);
    drop(gw);
    (upstream, first)
}

#[tokio::test]
async fn upstream_500_is_passed_through_and_not_stored() {
    let (upstream, first) = first_answer_not_stored(Fault::new().status(500)).await;
    first.assert_status(500);
    assert_eq!(first.cache_status(), unstored_miss());
    assert_eq!(
        first.json()["error"]["code"],
        "injected",
        "the upstream's own body"
    );
    let first_id = upstream.requests()[0].request_id.clone();
    assert_eq!(first.request_id(), first_id);
}

#[tokio::test]
async fn upstream_429_keeps_retry_after_and_is_not_stored() {
    // The 429 pauses the organization for its retry-after (1 s, within budget_wait_ms):
    // the second GET waits for the pause's end, then is a stored miss.
    let fault = Fault::new().too_many(RetryAfter::Seconds(1));
    let (_upstream, first) = first_answer_not_stored(fault).await;
    first.assert_status(429);
    assert_eq!(first.header("retry-after").as_deref(), Some("1"));
    assert_eq!(first.json()["error"]["type"], "requests");
}

#[tokio::test]
async fn upstream_503_is_not_stored() {
    let (_upstream, first) = first_answer_not_stored(Fault::new().status(503)).await;
    first.assert_status(503);
}

#[tokio::test]
async fn unknown_user_404_is_not_stored() {
    let (upstream, gw) = start_pair().await;
    for _ in 0..2 {
        let resp = gw.get_user("user_nobody").await;
        resp.assert_status(404);
        assert_eq!(resp.cache_status(), unstored_miss());
        assert_eq!(resp.json()["error"]["code"], "user_not_found");
    }
    assert_eq!(
        upstream.count("GET", "/v1/organization/users/user_nobody"),
        2
    );
}

#[tokio::test]
async fn malformed_json_is_passed_through_and_not_stored() {
    let (upstream, first) = first_answer_not_stored(Fault::new().malformed_json()).await;
    first.assert_status(200);
    let full_body = upstream.user_body(USER);
    assert_eq!(
        first.body,
        full_body.slice(..full_body.len() / 2),
        "bytes as the upstream sent"
    );
    assert_eq!(first.cache_status(), unstored_miss());
}

#[tokio::test]
async fn body_with_another_id_is_not_stored() {
    let (_upstream, first) = first_answer_not_stored(Fault::new().wrong_id()).await;
    first.assert_status(200);
    assert_eq!(first.json()["id"], "user_someone_else");
    assert_eq!(first.cache_status(), unstored_miss());
}

#[tokio::test]
async fn body_that_is_not_an_organization_user_is_not_stored() {
    let (_upstream, first) = first_answer_not_stored(Fault::new().wrong_object()).await;
    first.assert_status(200);
    assert_eq!(first.json()["object"], "organization.project");
    assert_eq!(first.cache_status(), unstored_miss());
}

#[tokio::test]
async fn body_over_max_body_bytes_passes_through_unstored() {
    let (_upstream, first) = first_answer_not_stored(Fault::new().pad_to(1025)).await;
    first.assert_status(200);
    assert_eq!(
        first.body.len(),
        1025,
        "the whole oversized body reaches the client"
    );
    assert_eq!(first.json()["id"], USER);
    assert_eq!(first.cache_status(), unstored_miss());
}

#[tokio::test]
async fn body_of_exactly_max_body_bytes_is_stored() {
    let (upstream, gw) = start_pair_with(|c| c.max_body_bytes = Some(1024)).await;
    upstream.inject("GET", USER_PATH, Fault::new().pad_to(1024));
    let first = gw.get_user(USER).await;
    assert_eq!(first.body.len(), 1024);
    assert_eq!(first.cache_status(), stored_miss());
    let second = gw.get_user(USER).await;
    second.hit_ttl();
    assert_eq!(second.body, first.body);
}

#[tokio::test]
async fn body_broken_mid_way_is_not_a_complete_200_and_not_stored() {
    let (upstream, gw) = start_pair().await;
    upstream.inject("GET", USER_PATH, Fault::new().drop_mid_body().times(1));
    match gw.req(Method::GET, USER_PATH).try_send().await {
        Err(_) => {}
        Ok(resp) => assert!(
            resp.status.as_u16() >= 500,
            "a broken upstream body came back as a complete response: {}",
            resp.describe()
        ),
    }
    let second = gw.get_user(USER).await;
    assert_eq!(second.cache_status(), stored_miss());
    assert_eq!(upstream.count("GET", USER_PATH), 2);
}

#[tokio::test]
async fn hit_keeps_the_upstream_content_type() {
    let (upstream, gw) = start_pair().await;
    let ct = "application/json; charset=utf-8";
    upstream.inject("GET", USER_PATH, Fault::new().content_type(ct));
    let first = gw.get_user(USER).await;
    assert_eq!(first.cache_status(), stored_miss());
    let second = gw.get_user(USER).await;
    second.hit_ttl();
    assert_eq!(second.header("content-type").as_deref(), Some(ct));
}

#[tokio::test]
async fn content_encoded_user_body_comes_back_byte_identical() {
    let (upstream, gw) = start_pair().await;
    upstream.inject("GET", USER_PATH, Fault::new().gzip());
    let expected = gzip_stored(&upstream.user_body(USER));
    for _ in 0..2 {
        let resp = gw.get_user(USER).await;
        resp.assert_status(200);
        assert_eq!(resp.header("content-encoding").as_deref(), Some("gzip"));
        assert_eq!(
            resp.body, expected,
            "gzip bytes must pass unchanged (hit or miss)"
        );
    }
}

// === routes that bypass the cache ===

#[tokio::test]
async fn roles_subresource_is_not_cached() {
    let (upstream, gw) = start_pair().await;
    let path = "/v1/organization/users/user_abc/roles";
    for _ in 0..2 {
        let resp = gw.get(path).await;
        resp.assert_status(200);
        assert_eq!(resp.json()["object"], "list");
        assert_eq!(resp.cache_status(), bypass());
    }
    assert_eq!(upstream.count("GET", path), 2);
    assert_eq!(gw.get_user(USER).await.cache_status(), stored_miss());
}

#[tokio::test]
async fn deeper_or_empty_id_paths_are_not_the_cached_route() {
    let (upstream, gw) = start_pair().await;
    for path in [
        "/v1/organization/users/user_abc/",
        "/v1/organization/users/user_abc/roles/role_1",
        "/v1/organization/users/",
    ] {
        for _ in 0..2 {
            let resp = gw.get(path).await;
            resp.assert_status(200);
            assert_eq!(resp.cache_status(), bypass(), "{path}");
        }
        assert_eq!(upstream.count("GET", path), 2, "{path} must not be cached");
        assert_eq!(upstream.last_request(path).path_and_query, path);
    }
}

#[tokio::test]
async fn query_string_bypasses_the_cache() {
    let (upstream, gw) = start_pair().await;
    let with_query = "/v1/organization/users/user_abc?include=projects&x=%20y";
    for _ in 0..2 {
        let resp = gw.get(with_query).await;
        resp.assert_status(200);
        assert_eq!(resp.cache_status(), bypass());
    }
    assert_eq!(upstream.last_request(USER_PATH).path_and_query, with_query);
    assert_eq!(upstream.count("GET", USER_PATH), 2);

    assert_eq!(gw.get_user(USER).await.cache_status(), stored_miss());
    assert_eq!(gw.get(with_query).await.cache_status(), bypass());
    assert_eq!(
        upstream.count("GET", USER_PATH),
        4,
        "a query GET never comes from the cache"
    );
}

#[tokio::test]
async fn no_cache_refetches_and_stores() {
    let (upstream, gw) = start_pair().await;
    gw.get_user(USER).await.assert_status(200);
    upstream.set_role(USER, "reader");
    assert_eq!(
        gw.get_user(USER).await.json()["role"],
        "owner",
        "served from the cache"
    );

    let fresh = gw
        .req(Method::GET, USER_PATH)
        .header("cache-control", "no-cache")
        .send()
        .await;
    fresh.assert_status(200);
    assert_eq!(
        fresh.cache_status(),
        format!("{CACHE_NAME}; fwd=request; stored")
    );
    assert_eq!(fresh.json()["role"], "reader");
    assert_eq!(upstream.count("GET", USER_PATH), 2);

    let hit = gw.get_user(USER).await;
    hit.hit_ttl();
    assert_eq!(
        hit.json()["role"],
        "reader",
        "no-cache stores the fresh response"
    );
    assert_eq!(upstream.count("GET", USER_PATH), 2);
}

#[tokio::test]
async fn no_store_fetches_without_storing() {
    let (upstream, gw) = start_pair().await;
    let no_store = || {
        gw.req(Method::GET, USER_PATH)
            .header("cache-control", "no-store")
    };
    let cold = no_store().send().await;
    cold.assert_status(200);
    let status = cold.cache_status();
    assert!(
        status.starts_with(&format!("{CACHE_NAME}; fwd=")) && !status.contains("stored"),
        "no-store must not store, Cache-Status {status:?}"
    );
    assert_eq!(upstream.count("GET", USER_PATH), 1);
    assert_eq!(gw.get_user(USER).await.cache_status(), stored_miss());

    upstream.set_role(USER, "reader");
    let warm = no_store().send().await;
    assert_eq!(
        warm.json()["role"],
        "reader",
        "no-store fetches from the upstream"
    );
    assert_eq!(upstream.count("GET", USER_PATH), 3);
}

// === ids: every spelling of one id is one entry ===

#[tokio::test]
async fn percent_encoded_ids_share_one_entry_and_are_forwarded_as_sent() {
    let (upstream, gw) = start_pair().await;
    upstream.add_user("user-1", "One", "reader");
    gw.get("/v1/organization/users/user-1")
        .await
        .assert_status(200);
    // The same id spelled with escapes of unreserved characters: a hit.
    for spelling in ["user%2D1", "%75ser-1", "user%2d1"] {
        let resp = gw.get(&format!("/v1/organization/users/{spelling}")).await;
        resp.assert_status(200);
        resp.hit_ttl();
    }
    assert_eq!(upstream.count("GET", "/v1/organization/users/user-1"), 1);
    // One write through any spelling evicts every spelling.
    gw.req(Method::POST, "/v1/organization/users/user%2D1")
        .json(&serde_json::json!({"role": "owner"}))
        .send()
        .await
        .assert_status(200);
    assert_eq!(
        upstream.count("POST", "/v1/organization/users/user%2D1"),
        1,
        "forwarded as sent"
    );
    let after = gw.get("/v1/organization/users/user-1").await;
    after.assert_status(200);
    assert_eq!(after.json()["role"], "owner");
}

#[tokio::test]
async fn ids_that_need_encoding_are_cached_by_their_decoded_value() {
    let (upstream, gw) = start_pair().await;
    upstream.add_user("user a", "Spaced", "reader");
    let first = gw.get("/v1/organization/users/user%20a").await;
    first.assert_status(200);
    assert_eq!(first.json()["id"], "user a");
    gw.get("/v1/organization/users/user%20a").await.hit_ttl();
    assert_eq!(upstream.count("GET", "/v1/organization/users/user%20a"), 1);
}

#[tokio::test]
async fn encoded_slashes_and_over_long_ids_are_400_and_never_reach_upstream() {
    let (upstream, gw) = start_pair().await;
    let long = "a".repeat(257);
    for method in [Method::GET, Method::POST, Method::DELETE] {
        let path = "/v1/organization/users/user%2Fabc";
        let resp = gw.req(method.clone(), path).send().await;
        assert_openai_error(&resp, 400, "invalid_request_error", "invalid_path");
        let path = format!("/v1/organization/users/{long}");
        let resp = gw.req(method.clone(), &path).send().await;
        assert_openai_error(&resp, 400, "invalid_request_error", "invalid_user_id");
    }
    assert_eq!(upstream.total(), 0, "{:?}", upstream.requests());
}

#[tokio::test]
async fn id_of_256_bytes_is_accepted() {
    let (upstream, gw) = start_pair().await;
    let id = "a".repeat(256);
    let resp = gw.get_user(&id).await;
    resp.assert_status(404);
    assert_eq!(
        resp.json()["error"]["code"],
        "user_not_found",
        "came from the upstream"
    );
    assert_eq!(upstream.total(), 1);
}

#[tokio::test]
async fn dot_segments_are_400_and_never_reach_upstream() {
    let (upstream, gw) = start_pair().await;
    let strict = [
        "/v1/organization/users/..",
        "/v1/organization/users/.",
        "/v1/organization/./users/user_abc",
        "/v1/organization/users/../users/user_abc",
        "/v1/echo/../organization/users/user_abc",
        "/v1/echo/%2e%2e/x",
        "/v1/echo/%2E/x",
        "/v1/echo/.%2e/x",
    ];
    for path in strict {
        for method in [Method::GET, Method::POST] {
            let resp = gw.req(method, path).send().await;
            assert_openai_error(&resp, 400, "invalid_request_error", "invalid_path");
        }
    }
    // An encoded dot segment in the id position is a dot segment.
    for path in [
        "/v1/organization/users/%2e%2e",
        "/v1/organization/users/%2E",
    ] {
        let resp = gw.get(path).await;
        assert_openai_error(&resp, 400, "invalid_request_error", "invalid_path");
    }
    assert_eq!(upstream.total(), 0, "{:?}", upstream.requests());
}

/// RFC 9111 §4.2.3: a hit carries the stored response's `Date` with `Age` added, not the
/// time of the hit (before: a fresh `Date` beside `Age`).
#[tokio::test]
async fn hits_keep_the_upstream_date() {
    let (_upstream, gw) = start_pair().await;
    let miss = gw.get_user(USER).await;
    let date = miss.header("date").expect("the upstream sends a Date");
    loop {
        let hit = gw.get_user(USER).await;
        hit.hit_ttl();
        assert_eq!(hit.header("date").as_deref(), Some(date.as_str()));
        if hit.header("age").as_deref() != Some("0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
