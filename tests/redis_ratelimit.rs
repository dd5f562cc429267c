//! Rate limits shared by replicas through a real Redis server.
//!
//! Starts `redis-server` (installed by scripts/test.sh) on a free loopback
//! port, runs two gateways ("replicas") with the same `[redis]` section, and
//! checks that a client's budget is one budget across both, and that a Redis
//! outage falls back to per-replica limits instead of failing requests.

mod support;

use std::time::Duration;

use support::redis::Redis;
use support::*;

fn replica_config(upstream: &Upstream, redis_url: &str, prefix: &str) -> String {
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    cfg.default_clients = false;
    cfg.extra = format!(
        "{}\n[redis]\nurl = {redis_url:?}\nkey_prefix = {prefix:?}\ntimeout_ms = 200\n",
        client_toml("limited", CLIENT_KEY, &rate_limit(60, 4))
    );
    cfg.toml()
}

async fn status(gw: &TestGateway) -> u16 {
    gw.req(http::Method::GET, "/v1/organization/users/user_abc")
        .bearer(CLIENT_KEY)
        .send()
        .await
        .status
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_budget() {
    let redis = Redis::start();
    let upstream = start_upstream().await;
    let cfg = replica_config(&upstream, &redis.url(), "t1:");
    let (a, b) = (start_gateway(&cfg).await, start_gateway(&cfg).await);

    let mut allowed = 0;
    let mut refused = 0;
    for i in 0..8 {
        let gw = if i % 2 == 0 { &a } else { &b };
        match status(gw).await {
            200 => allowed += 1,
            429 => refused += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(allowed, 4, "burst 4 shared by both replicas, not 4 each");
    assert_eq!(refused, 4);

    let refused_resp = b
        .req(http::Method::GET, "/v1/organization/users/user_abc")
        .bearer(CLIENT_KEY)
        .send()
        .await;
    assert_openai_error(&refused_resp, 429, "requests", "rate_limit_exceeded");
    let ms: u64 = refused_resp
        .header("retry-after-ms")
        .unwrap()
        .parse()
        .unwrap();
    assert!(ms > 0 && ms <= 1000, "retry-after-ms {ms}");

    tokio::time::sleep(Duration::from_millis(ms + 50)).await;
    assert_eq!(status(&a).await, 200, "the shared budget refills");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_falls_back_to_local_limits() {
    let mut redis = Redis::start();
    let upstream = start_upstream().await;
    let cfg = replica_config(&upstream, &redis.url(), "t2:");
    let gw = start_gateway(&cfg).await;
    assert_eq!(status(&gw).await, 200);
    redis.stop();

    // Requests keep being served, limited by the replica's own GCRA
    // (burst 4, untouched so far), and the fallback is counted.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(status(&gw).await);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "{statuses:?}"
    );

    let scrape = gw.admin(http::Method::GET, "/metrics").send().await.text();
    assert!(
        metric(&scrape, "gateway_ratelimit_store_errors_total", &[]) >= 1.0,
        "{scrape}"
    );
}
