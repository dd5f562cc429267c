//! Cache purges on the admin listener: one user or all, their upstream cost, the entries
//! gauge, any spelling of an id, and invalid ids.

mod support;

use http::Method;
use support::metrics::{delta, scrape};
use support::*;

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
            &[("reason", "purge"), ("org", "*")]
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
    let d = |name: &str| delta(&m1, &m2, name, &[("org", "default")]);
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
            &[("reason", "purge_all"), ("org", "*")]
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
        delta(
            &m1,
            &m2,
            "gateway_cache_misses_total",
            &[("org", "default")]
        ),
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
