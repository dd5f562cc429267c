//! Client scopes: `allow = ["METHOD PATH", ...]`, PATH relative to the prefix; `*` matches one
//! segment, a final `/**` any rest, `*` as METHOD any method. Anything else gets 403
//! `insufficient_scope` and never reaches the upstream (nor the cache). Matching is on the raw
//! path: a percent-encoded path never matches a literal pattern.

mod support;

use http::Method;
use support::*;

const SCOPED_KEY: &str = "gwk_scoped_client_key_ssssssssssssssssssssssssssssssss";

async fn scoped_pair(patterns: &[&str]) -> (Upstream, TestGateway) {
    let more = allow(patterns);
    start_pair_with(|c| c.extra = client_toml("scoped", SCOPED_KEY, &more)).await
}

fn as_scoped(gw: &TestGateway, method: Method, path: &str) -> Req {
    gw.req(method, path).bearer(SCOPED_KEY)
}

#[track_caller]
fn assert_forbidden(resp: &TestResponse) {
    assert_openai_error(resp, 403, "invalid_request_error", "insufficient_scope");
}

/// Sends each `(method, path)` as the scoped client and checks it is refused with 403
/// without reaching the upstream.
async fn assert_all_forbidden(upstream: &Upstream, gw: &TestGateway, cases: &[(Method, &str)]) {
    for (method, path) in cases {
        let before = upstream.total();
        let resp = as_scoped(gw, method.clone(), path)
            .body("{\"role\":\"reader\"}")
            .send()
            .await;
        assert_eq!(
            resp.status.as_u16(),
            403,
            "{method} {path} should be outside the scope: {}",
            resp.describe()
        );
        assert_forbidden(&resp);
        assert_eq!(
            upstream.total(),
            before,
            "{method} {path} was refused but reached the upstream"
        );
    }
}

#[tokio::test]
async fn star_segment_matches_exactly_one_segment() {
    let (upstream, gw) = scoped_pair(&["GET /organization/users/*"]).await;

    let miss = as_scoped(&gw, Method::GET, USER_PATH).send().await;
    miss.assert_status(200);
    assert_eq!(miss.body, upstream.user_body("user_abc"));
    as_scoped(&gw, Method::GET, USER_PATH)
        .send()
        .await
        .assert_status(200);
    as_scoped(&gw, Method::GET, "/v1/organization/users/user_def")
        .send()
        .await
        .assert_status(200);
    // One segment also with a query (forwarded, not cached).
    as_scoped(&gw, Method::GET, "/v1/organization/users/user_ghi?x=1")
        .send()
        .await
        .assert_status(200);

    assert_all_forbidden(
        &upstream,
        &gw,
        &[
            (Method::GET, "/v1/organization/users"),
            (Method::GET, "/v1/organization/users?limit=2"),
            (Method::GET, "/v1/organization/users/user_abc/roles"),
            (Method::POST, USER_PATH),
            (Method::DELETE, USER_PATH),
            (Method::GET, "/v1/organization/invites/inv_1"),
            (Method::GET, "/v1/echo/x"),
        ],
    )
    .await;
    // The refused write did not happen.
    let still = gw.req(Method::GET, USER_PATH).send().await;
    still.assert_status(200);
    assert_eq!(still.json()["role"], "owner");

    // A client without `allow` may call all of it.
    gw.get("/v1/organization/users/user_abc/roles")
        .await
        .assert_status(200);
    gw.get("/v1/organization/users").await.assert_status(200);
}

#[tokio::test]
async fn final_double_star_matches_any_rest() {
    let (upstream, gw) = scoped_pair(&["POST /echo/**"]).await;
    for path in ["/v1/echo", "/v1/echo/a", "/v1/echo/a/b/c", "/v1/echo/a?q=1"] {
        let resp = as_scoped(&gw, Method::POST, path).body("x").send().await;
        resp.assert_status(200);
        assert_eq!(resp.json()["method"], "POST");
    }
    assert_all_forbidden(
        &upstream,
        &gw,
        &[
            (Method::GET, "/v1/echo/a"),
            (Method::PUT, "/v1/echo/a/b"),
            (Method::POST, "/v1/echoes/a"),
            (Method::POST, "/v1/x/echo/a"),
            (Method::POST, USER_PATH),
        ],
    )
    .await;
}

#[tokio::test]
async fn star_method_matches_any_method() {
    let (upstream, gw) = scoped_pair(&["* /echo/any/*"]).await;
    for method in [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ] {
        let resp = as_scoped(&gw, method.clone(), "/v1/echo/any/thing")
            .send()
            .await;
        resp.assert_status(200);
        assert_eq!(
            resp.header("x-echo-method").as_deref(),
            Some(method.as_str())
        );
    }
    assert_eq!(upstream.count("GET", "/v1/echo/any/thing"), 1);
    assert_all_forbidden(
        &upstream,
        &gw,
        &[
            (Method::GET, "/v1/echo/any"),
            (Method::DELETE, "/v1/echo/any/thing/more"),
            (Method::POST, "/v1/echo/other/thing"),
        ],
    )
    .await;
}

#[tokio::test]
async fn literal_path_matches_only_itself_and_cache_hits_are_scoped_too() {
    let (upstream, gw) = scoped_pair(&["GET /organization/users"]).await;
    let list = as_scoped(&gw, Method::GET, "/v1/organization/users")
        .send()
        .await;
    list.assert_status(200);
    assert_eq!(list.json()["object"], "list");
    let page = as_scoped(&gw, Method::GET, "/v1/organization/users?limit=2")
        .send()
        .await;
    page.assert_status(200);
    assert_eq!(page.json()["data"].as_array().map(Vec::len), Some(2));

    // user_abc is in the cache (fetched by another client); the scope still refuses it.
    gw.get_user("user_abc").await.assert_status(200);
    assert_all_forbidden(
        &upstream,
        &gw,
        &[
            (Method::GET, USER_PATH),
            (Method::GET, "/v1/organization/users/user_def"),
            (Method::POST, "/v1/organization/users"),
            (Method::GET, "/v1/organization"),
            (Method::GET, "/v1/organization/users/"),
        ],
    )
    .await;
    assert_eq!(upstream.count("GET", USER_PATH), 1);
    let text = gw.admin(Method::GET, "/metrics").send().await.text();
    assert!(
        metric(
            &text,
            "gateway_requests_total",
            &[("client", "scoped"), ("status", "403")]
        ) >= 5.0,
        "403s not counted for the scoped client:\n{text}"
    );
}

#[tokio::test]
async fn scopes_match_the_canonical_path_and_encoded_slashes_are_refused() {
    let (upstream, gw) = scoped_pair(&["GET /organization/users", "POST /echo/open/**"]).await;
    // Escapes of unreserved characters are decoded before the scope check: these name
    // exactly the resources the patterns allow, and are forwarded as sent.
    for path in [
        "/v1/organization/users",
        "/v1/organization/user%73",
        "/v1/organization/%75sers",
        "/v1/%6Frganization/users",
    ] {
        as_scoped(&gw, Method::GET, path)
            .send()
            .await
            .assert_status(200);
    }
    as_scoped(&gw, Method::POST, "/v1/echo/%6Fpen/x")
        .body("{}")
        .send()
        .await
        .assert_status(200);
    assert_eq!(upstream.count("GET", "/v1/organization/user%73"), 1);
    // An encoded slash could name another resource after any hop that decodes it.
    let before = upstream.total();
    for (method, path) in [
        (Method::GET, "/v1/organization%2Fusers"),
        (Method::GET, "/v1/organization%2fusers"),
        (Method::POST, "/v1/echo%2Fopen/x"),
    ] {
        let resp = as_scoped(&gw, method, path).body("{}").send().await;
        assert_openai_error(&resp, 400, "invalid_request_error", "invalid_path");
    }
    assert_eq!(upstream.total(), before, "{:?}", upstream.requests());
    // Other spellings of other resources stay outside the scope.
    assert_all_forbidden(
        &upstream,
        &gw,
        &[
            (Method::GET, "/v1/organization/user%73/u1"),
            (Method::POST, "/v1/echo/%6Fpenx/x"),
        ],
    )
    .await;
}
