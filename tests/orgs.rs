//! Several organizations behind one gateway (`[[orgs]]`, `clients.orgs`), against a fake
//! upstream that scopes its data by admin key and `OpenAI-Organization`, as the real API
//! does.

mod support;

#[path = "orgs/upstream.rs"]
mod org_upstream;

use http::Method;
use org_upstream::{user_name, OrgUpstream};
use support::*;

/// The research organization's admin key (read from a file, as `admin_key_file` does).
const RESEARCH_KEY: &str = "sk-admin-RESEARCH-do-not-leak-9876543210";
const USER: &str = "user_1";

/// The path of a fresh file holding the research key.
fn research_key_file(tag: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "oag-orgs-{}-{tag}-research-key",
        std::process::id()
    ));
    std::fs::write(&path, RESEARCH_KEY).expect("write key file");
    path
}

/// The research organization's table.
fn research_toml(key_file: &std::path::Path) -> String {
    format!(
        "\n[[orgs]]\nname = \"research\"\norganization_id = \"org-research\"\n\
         admin_key_file = {:?}\n",
        key_file.display().to_string()
    )
}

/// A config with the default organization `org-main` and, unless `orgs` is empty, the
/// research one: `test-client` may act on `clients_orgs`, `other-client` on the default.
fn config(upstream: &OrgUpstream, orgs: &str, clients_orgs: &str) -> String {
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    cfg.default_clients = false;
    cfg.extra = format!(
        "{}{}{orgs}",
        client_toml("test-client", CLIENT_KEY, &format!("orgs = {clients_orgs}")),
        client_toml("other-client", OTHER_CLIENT_KEY, ""),
    );
    with_upstream_keys(&cfg.toml(), "organization_id = \"org-main\"")
}

/// `GET` the user as `key`, naming `org` (an `organization_id`) or no organization.
async fn get(gw: &TestGateway, key: &str, org: Option<&str>) -> TestResponse {
    let mut r = req(Method::GET, &gw.url(&user_path(USER))).bearer(key);
    if let Some(org) = org {
        r = r.header("OpenAI-Organization", org);
    }
    r.send().await
}

fn name(resp: &TestResponse) -> String {
    resp.assert_status(200);
    resp.json()["name"].as_str().expect("a name").to_string()
}

fn is_hit(resp: &TestResponse) -> bool {
    resp.cache_status().contains("; hit")
}

#[tokio::test]
async fn two_organizations_are_served_cached_evicted_and_purged_apart() {
    let upstream = OrgUpstream::start().await;
    let key_file = research_key_file("apart");
    let toml = config(
        &upstream,
        &research_toml(&key_file),
        "[\"default\", \"research\"]",
    );
    let gw = start_gateway(&toml).await;
    let main_name = user_name(ADMIN_KEY, "org-main");
    let research_name = user_name(RESEARCH_KEY, "org-research");

    // Each organization's own user, fetched with its own key and id.
    let main = get(&gw, CLIENT_KEY, None).await;
    assert_eq!(name(&main), main_name);
    assert_eq!(main.cache_status(), stored_miss());
    let research = get(&gw, CLIENT_KEY, Some("org-research")).await;
    assert_eq!(name(&research), research_name);
    assert_eq!(research.cache_status(), stored_miss(), "its own entry");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        (seen[0].auth.as_str(), seen[0].org.as_str()),
        (format!("Bearer {ADMIN_KEY}").as_str(), "org-main")
    );
    assert_eq!(
        (seen[1].auth.as_str(), seen[1].org.as_str()),
        (format!("Bearer {RESEARCH_KEY}").as_str(), "org-research")
    );

    // Both are hits now; naming the default organization by its id is the same entry.
    for (org, want) in [
        (None, &main_name),
        (Some("org-main"), &main_name),
        (Some("org-research"), &research_name),
    ] {
        let r = get(&gw, CLIENT_KEY, org).await;
        assert!(is_hit(&r), "{org:?}: {}", r.cache_status());
        assert_eq!(&name(&r), want);
        r.assert_no_admin_key();
    }
    assert_eq!(upstream.count(), 2);
    let text = gw.metrics_text().await;
    for org in ["default", "research"] {
        let labels = [("org", org)];
        assert_eq!(
            metric(&text, "gateway_cache_misses_total", &labels),
            1.0,
            "{org}\n{text}"
        );
        assert_eq!(
            metric(&text, "gateway_cache_hits_total", &labels),
            if org == "default" { 2.0 } else { 1.0 },
            "{org}"
        );
        let sent = [("org", org), ("status", "200")];
        assert_eq!(
            metric(&text, "gateway_upstream_requests_total", &sent),
            1.0,
            "{org}"
        );
    }

    // A write in research evicts there only.
    let write = gw
        .req(Method::POST, &user_path(USER))
        .header("OpenAI-Organization", "org-research")
        .json(&serde_json::json!({ "role": "owner" }))
        .send()
        .await;
    write.assert_status(200);
    let last = upstream.seen().pop().expect("the write");
    assert_eq!(
        (last.method.as_str(), last.auth.as_str(), last.org.as_str()),
        (
            "POST",
            format!("Bearer {RESEARCH_KEY}").as_str(),
            "org-research"
        )
    );
    assert!(
        is_hit(&get(&gw, CLIENT_KEY, None).await),
        "the default keeps its entry"
    );
    let refetched = get(&gw, CLIENT_KEY, Some("org-research")).await;
    assert_eq!(refetched.cache_status(), stored_miss());

    // A client allowed only the default is refused the other, and so is an unknown id:
    // never forwarded.
    let before = upstream.count();
    for org in ["org-research", "org-unknown"] {
        let r = get(&gw, OTHER_CLIENT_KEY, Some(org)).await;
        assert_openai_error(&r, 403, "invalid_request_error", "organization_not_allowed");
    }
    assert!(is_hit(&get(&gw, OTHER_CLIENT_KEY, Some("org-main")).await));
    assert_eq!(
        upstream.count(),
        before,
        "nothing refused reached the upstream"
    );

    // A purge with ?org= drops that organization's entry only.
    let purge = gw
        .admin(Method::DELETE, &format!("/cache/users/{USER}?org=research"))
        .send()
        .await;
    purge.assert_status(200);
    let text = gw.metrics_text().await;
    let purged = [("reason", "purge"), ("org", "research")];
    assert_eq!(
        metric(&text, "gateway_cache_invalidations_total", &purged),
        1.0
    );
    assert!(is_hit(&get(&gw, CLIENT_KEY, None).await));
    assert_eq!(
        get(&gw, CLIENT_KEY, Some("org-research"))
            .await
            .cache_status(),
        stored_miss()
    );
    let all = gw.admin(Method::DELETE, "/cache?org=research").send().await;
    all.assert_status(200);
    assert!(is_hit(&get(&gw, CLIENT_KEY, None).await));
    assert!(!is_hit(&get(&gw, CLIENT_KEY, Some("org-research")).await));
    for (path, status, code) in [
        ("/cache?org=nope", 404, "unknown_org"),
        ("/cache/users/user_1?org=nope", 404, "unknown_org"),
        ("/cache?orgs=research", 400, "invalid_org"),
    ] {
        let r = gw.admin(Method::DELETE, path).send().await;
        r.assert_status(status);
        let e = &r.json()["error"];
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("invalid_request_error"), Some(code)),
            "{path}"
        );
    }
    let _ = std::fs::remove_file(key_file);
}

#[tokio::test]
async fn an_organization_added_by_reload_is_used_and_once_removed_gone() {
    let upstream = OrgUpstream::start().await;
    let key_file = research_key_file("reload");
    let without = config(&upstream, "", "[\"default\"]");
    let gw = start_gateway(&without).await;
    let r = get(&gw, CLIENT_KEY, Some("org-research")).await;
    assert_openai_error(&r, 403, "invalid_request_error", "organization_not_allowed");
    assert_eq!(upstream.count(), 0);

    let with = config(
        &upstream,
        &research_toml(&key_file),
        "[\"default\", \"research\"]",
    );
    gw.reloader.reload(parse_config(&with)).expect("reload");
    let added = get(&gw, CLIENT_KEY, Some("org-research")).await;
    assert_eq!(name(&added), user_name(RESEARCH_KEY, "org-research"));
    assert!(is_hit(&get(&gw, CLIENT_KEY, Some("org-research")).await));

    // Its key rotated: the cache is kept, and the next exchange carries the new key.
    const ROTATED: &str = "sk-admin-RESEARCH-rotated-0000000000";
    std::fs::write(&key_file, ROTATED).expect("rotate");
    gw.reloader.reload(parse_config(&with)).expect("reload");
    assert!(
        is_hit(&get(&gw, CLIENT_KEY, Some("org-research")).await),
        "cache kept"
    );
    let fresh = req(Method::GET, &gw.url(&user_path(USER)))
        .bearer(CLIENT_KEY)
        .header("OpenAI-Organization", "org-research")
        .header("Cache-Control", "no-cache")
        .send()
        .await;
    assert_eq!(name(&fresh), user_name(ROTATED, "org-research"));
    let last = upstream.seen().pop().expect("the refresh");
    assert_eq!(last.auth, format!("Bearer {ROTATED}"));
    std::fs::write(&key_file, RESEARCH_KEY).expect("rotate back");

    gw.reloader.reload(parse_config(&without)).expect("reload");
    let before = upstream.count();
    let r = get(&gw, CLIENT_KEY, Some("org-research")).await;
    assert_openai_error(&r, 403, "invalid_request_error", "organization_not_allowed");
    get(&gw, CLIENT_KEY, None).await.assert_status(200);
    assert!(
        upstream.seen()[before..]
            .iter()
            .all(|s| s.auth == format!("Bearer {ADMIN_KEY}") && s.org != "org-research"),
        "the removed organization's key is no longer sent"
    );

    // Added back: its old entry is gone (a new organization, a new cache).
    gw.reloader.reload(parse_config(&with)).expect("reload");
    let back = get(&gw, CLIENT_KEY, Some("org-research")).await;
    assert_eq!(
        back.cache_status(),
        stored_miss(),
        "the removed organization's cache is gone"
    );
    let _ = std::fs::remove_file(key_file);
}

/// Reads the user on `gw` in `org` until it is not a hit (an eviction arrived).
async fn until_evicted(gw: &TestGateway, org: Option<&str>) {
    let start = std::time::Instant::now();
    loop {
        let r = get(gw, CLIENT_KEY, org).await;
        if !is_hit(&r) {
            return;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{org:?} still {}",
            r.describe()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn writes_evict_in_their_own_organization_on_every_replica() {
    let redis = support::redis::Redis::start();
    let upstream = OrgUpstream::start().await;
    let key_file = research_key_file("replicas");
    let toml = config(
        &upstream,
        &format!(
            "{}\n[redis]\nurl = {:?}\ntimeout_ms = 200\n",
            research_toml(&key_file),
            redis.url()
        ),
        "[\"default\", \"research\"]",
    );
    let (a, b) = (start_gateway(&toml).await, start_gateway(&toml).await);
    a.wait_bus_connected().await;
    b.wait_bus_connected().await;
    for org in [None, Some("org-research")] {
        // Under a loaded machine a replica can still be answering as one
        // without a cache (`fwd=miss`, not stored) for a moment after its
        // bus gauge reads 1; the setup waits for a stored miss.
        let start = std::time::Instant::now();
        loop {
            let r = get(&b, CLIENT_KEY, org).await;
            if r.cache_status() == stored_miss() {
                break;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(5),
                "{org:?} never stored: {}",
                r.describe()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(is_hit(&get(&b, CLIENT_KEY, org).await));
    }

    // A write in research through `a`: `b` evicts research's entry, not the default's.
    let write = |org: Option<&'static str>| {
        let mut w = a
            .req(Method::POST, &user_path(USER))
            .json(&serde_json::json!({ "role": "owner" }));
        if let Some(org) = org {
            w = w.header("OpenAI-Organization", org);
        }
        w.send()
    };
    write(Some("org-research")).await.assert_status(200);
    until_evicted(&b, Some("org-research")).await;
    assert!(
        is_hit(&get(&b, CLIENT_KEY, None).await),
        "the default kept its entry"
    );
    assert!(is_hit(&get(&b, CLIENT_KEY, Some("org-research")).await));

    // And a write in the default organization evicts there only.
    write(None).await.assert_status(200);
    until_evicted(&b, None).await;
    assert!(is_hit(&get(&b, CLIENT_KEY, Some("org-research")).await));
    let _ = std::fs::remove_file(key_file);
}

/// Each organization has its own budget: research's (one request a minute) runs out while
/// the default organization, with none, keeps sending; research's refusals never reach the
/// upstream.
#[tokio::test]
async fn each_organization_spends_its_own_budget() {
    let upstream = OrgUpstream::start().await;
    let key_file = research_key_file("budget");
    let research = format!(
        "{}rate_limit = {{ requests_per_minute = 1, burst = 1 }}\n",
        research_toml(&key_file)
    );
    let toml = with_upstream_keys(
        &config(&upstream, &research, "[\"default\", \"research\"]"),
        "budget_wait_ms = 100",
    );
    let gw = start_gateway(&toml).await;
    // `no-store`: every retrieve goes upstream, so every one needs a turn.
    let fetch = |org: Option<&'static str>| {
        let mut r = req(Method::GET, &gw.url(&user_path(USER)))
            .bearer(CLIENT_KEY)
            .header("Cache-Control", "no-store");
        if let Some(org) = org {
            r = r.header("OpenAI-Organization", org);
        }
        r.send()
    };
    fetch(Some("org-research")).await.assert_status(200);
    let refused = fetch(Some("org-research")).await;
    refused.assert_status(429);
    assert_eq!(
        refused.json()["error"]["code"],
        "organization_budget_exceeded",
        "{}",
        refused.describe()
    );
    assert!(refused.header("retry-after").is_some());
    for _ in 0..3 {
        fetch(None).await.assert_status(200);
    }
    let seen = upstream.seen();
    let research_sent = seen.iter().filter(|s| s.org == "org-research").count();
    let default_sent = seen.iter().filter(|s| s.org == "org-main").count();
    assert_eq!(
        (research_sent, default_sent),
        (1, 3),
        "research spent its one turn, the default was not held by it"
    );
    let _ = std::fs::remove_file(key_file);
}
