//! The dependency table's evictions reach every replica: two in-process gateways sharing a
//! real `redis-server` (installed by scripts/test.sh) and one fake upstream.

mod support;

use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use support::redis::Redis;
use support::upstream::Fault;
use support::*;

async fn replica(upstream: &Upstream, redis: &Redis, timeout_ms: u64) -> TestGateway {
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    cfg.timeout_ms = timeout_ms;
    cfg.extra = format!("[redis]\nurl = {:?}\ntimeout_ms = 200\n", redis.url());
    let gw = start_gateway(&cfg.toml()).await;
    gw.wait_bus_connected().await;
    gw
}

/// Reads `id` on `gw` until it is not a hit (the eviction arrived), then checks it is what
/// the upstream holds now.
async fn until_evicted(upstream: &Upstream, gw: &TestGateway, id: &str, within: Duration) {
    let start = Instant::now();
    loop {
        let r = gw.get_user(id).await;
        if !r.cache_status().contains("; hit") {
            assert_eq!(r.body, upstream.user_body(id), "{id}: {}", r.describe());
            return;
        }
        assert!(start.elapsed() < within, "{id} still {}", r.describe());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn membership_and_project_writes_through_one_replica_evict_on_the_other() {
    let redis = Redis::start();
    let upstream = start_upstream().await;
    let (a, b) = (
        replica(&upstream, &redis, 5000).await,
        replica(&upstream, &redis, 5000).await,
    );
    b.prime(&["user_abc", "user_0002"]).await;
    // A user named by the body: only that user, on the other replica too.
    let add = json!({"user_id": "user_0002", "role": "owner"});
    let w = a.req(Method::POST, "/v1/organization/projects/p1/users");
    w.json(&add).send().await.assert_status(200);
    until_evicted(&upstream, &b, "user_0002", Duration::from_secs(3)).await;
    b.get_user("user_abc").await.hit_ttl();
    // A rename: everyone, on the other replica too.
    let w = a.req(Method::POST, "/v1/organization/projects/p1");
    w.json(&json!({"name": "Renamed"}))
        .send()
        .await
        .assert_status(200);
    for id in ["user_abc", "user_0002"] {
        until_evicted(&upstream, &b, id, Duration::from_secs(3)).await;
    }
    let u = b.get_user("user_abc").await;
    assert_eq!(u.json()["projects"]["data"][0]["name"], "Renamed");
}

/// A write with unknown outcome through one replica: the other replica, which stored the old
/// user in a racing read, is told again once the window has passed.
#[tokio::test]
async fn a_late_write_is_evicted_again_on_the_other_replica() {
    let redis = Redis::start();
    let upstream = start_upstream().await;
    let (a, b) = (
        replica(&upstream, &redis, 1000).await,
        replica(&upstream, &redis, 1000).await,
    );
    let path = "/v1/organization/projects/p1/users/user_def";
    b.prime(&["user_def"]).await;
    upstream.inject("POST", path, Fault::new().apply_after_ms(1700).times(1));
    let w = a.req(Method::POST, path).json(&json!({"role": "owner"}));
    w.send().await.assert_status(504);
    // Racing read on the other replica: the old role, stored again.
    let start = Instant::now();
    loop {
        let r = b.get_user("user_def").await;
        if !r.cache_status().contains("; hit") {
            assert_eq!(r.json()["projects"]["data"][0]["role"], "member");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(3), "{}", r.describe());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = Instant::now();
    loop {
        let r = b.get_user("user_def").await;
        if r.json()["projects"]["data"][0]["role"] == "owner" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{}", r.describe());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
