//! Replicas that agree: three real gateway processes sharing one real `redis-server`, with
//! the invalidation bus (`[redis]`) and shared rate limits, against one fake upstream.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Value};
use support::process::{GatewayProcess, TempDir};
use support::redis::Redis;
use support::replica::role;
use support::upstream::Fault;
use support::*;

const USER: &str = "user_abc";

struct Replica {
    gw: GatewayProcess,
    addr: SocketAddr,
    admin: SocketAddr,
    _dir: TempDir,
}

impl Replica {
    async fn start(upstream: &Upstream, redis: &Redis, extra_client: &str) -> Replica {
        let dir = TempDir::new("replica");
        let mut cfg = GatewayConfig::new(&upstream.base_url());
        let (addr, admin) = cfg.free_ports();
        cfg.extra = format!(
            "{extra_client}\n[redis]\nurl = {:?}\ntimeout_ms = 200\n",
            redis.url()
        );
        let log = "info,openai_admin_gateway::cluster=debug";
        let gw = GatewayProcess::spawn_json(&dir, &cfg.toml(), log, addr, admin).await;
        let r = Replica {
            gw,
            addr,
            admin,
            _dir: dir,
        };
        r.wait_metric("gateway_invalidation_bus_connected", 1.0)
            .await;
        r
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get_user(&self) -> TestResponse {
        req(Method::GET, &self.url(USER_PATH))
            .bearer(CLIENT_KEY)
            .send()
            .await
    }

    async fn set_role(&self, role: &str) -> TestResponse {
        req(Method::POST, &self.url(USER_PATH))
            .bearer(CLIENT_KEY)
            .json(&json!({ "role": role }))
            .send()
            .await
    }

    async fn admin_delete(&self, path: &str) -> TestResponse {
        req(Method::DELETE, &format!("http://{}{path}", self.admin))
            .send()
            .await
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = req(Method::GET, &format!("http://{}/metrics", self.admin))
            .send()
            .await
            .text();
        metric(&text, name, &[])
    }

    async fn wait_metric(&self, name: &str, at_least: f64) {
        let start = Instant::now();
        loop {
            let v = self.metric(name).await;
            if v >= at_least {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{name} stayed at {v} (< {at_least})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_metric_at_most(&self, name: &str, at_most: f64) {
        let start = Instant::now();
        loop {
            let v = self.metric(name).await;
            if v <= at_most {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{name} stayed at {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Messages a replica took off the bus (its own are not counted).
const RECEIVED: &str = "gateway_invalidations_received_total";

async fn three(upstream: &Upstream, redis: &Redis) -> [Replica; 3] {
    [
        Replica::start(upstream, redis, "").await,
        Replica::start(upstream, redis, "").await,
        Replica::start(upstream, redis, "").await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_replica_is_seen_by_the_others() {
    let upstream = start_upstream().await;
    let redis = Redis::start();
    let [a, b, c] = three(&upstream, &redis).await;
    for r in [&b, &c] {
        r.get_user().await;
        r.get_user().await.hit_ttl();
    }
    let before = role(&b.get_user().await);
    let new_role = if before == "owner" { "reader" } else { "owner" };
    a.set_role(new_role).await.assert_status(200);
    // The write's eviction reaches each replica over the bus; wait for it
    // to land rather than for a fixed time (a loaded machine is slower).
    for r in [&b, &c] {
        r.wait_metric(RECEIVED, 1.0).await;
    }
    for r in [&b, &c] {
        let resp = r.get_user().await;
        assert_eq!(role(&resp), new_role, "{}", resp.describe());
        assert!(
            !resp.cache_status().contains("hit"),
            "{}",
            resp.cache_status()
        );
    }
    assert_eq!(b.metric("gateway_invalidations_received_total").await, 1.0);
    assert_eq!(
        a.metric("gateway_invalidations_received_total").await,
        0.0,
        "its own"
    );
}

async fn prime(rs: &[&Replica]) {
    for r in rs {
        r.get_user().await.assert_status(200);
        r.get_user().await.hit_ttl();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_on_one_admin_listener_reach_every_replica() {
    let upstream = start_upstream().await;
    let redis = Redis::start();
    let [a, b, c] = three(&upstream, &redis).await;
    prime(&[&a, &b, &c]).await;
    a.admin_delete(&format!("/cache/users/{USER}"))
        .await
        .assert_status(200);
    for r in [&b, &c] {
        r.wait_metric(RECEIVED, 1.0).await;
    }
    for r in [&b, &c] {
        let resp = r.get_user().await;
        assert!(
            !resp.cache_status().contains("hit"),
            "purge: {}",
            resp.cache_status()
        );
    }
    prime(&[&a, &b, &c]).await;
    a.admin_delete("/cache").await.assert_status(200);
    for r in [&b, &c] {
        r.wait_metric(RECEIVED, 2.0).await;
    }
    for r in [&b, &c] {
        let resp = r.get_user().await;
        assert!(
            !resp.cache_status().contains("hit"),
            "purge-all: {}",
            resp.cache_status()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_redis_serves_no_hits_and_resyncs_after() {
    let upstream = start_upstream().await;
    let mut redis = Redis::start();
    let port = redis.port;
    let [a, b, _c] = three(&upstream, &redis).await;
    b.get_user().await;
    let before = role(&b.get_user().await);
    b.get_user().await.hit_ttl();
    let new_role = if before == "owner" { "reader" } else { "owner" };

    redis.stop();
    b.wait_metric_at_most("gateway_invalidation_bus_connected", 0.0)
        .await;
    let mut seen = Vec::new();
    let during = b.get_user().await;
    seen.push(format!(
        "outage, before the write: {} {}",
        during.status.as_u16(),
        during.cache_status()
    ));
    assert!(
        !during.cache_status().contains("hit"),
        "{}",
        during.cache_status()
    );

    let started = Instant::now();
    a.set_role(new_role).await.assert_status(200);
    println!("a write with Redis down took {:?}", started.elapsed());
    // Publishing is queued (and retried) off the write's path.
    a.wait_metric("gateway_invalidations_published_total", 1.0)
        .await;
    for _ in 0..3 {
        let resp = b.get_user().await;
        seen.push(format!(
            "outage, after the write: {} {} role={}",
            resp.status.as_u16(),
            resp.cache_status(),
            role(&resp)
        ));
        assert_eq!(role(&resp), new_role);
        assert!(
            !resp.cache_status().contains("hit"),
            "{}",
            resp.cache_status()
        );
    }

    let _redis = Redis::start_on(port);
    b.wait_metric("gateway_invalidation_bus_connected", 1.0)
        .await;
    b.wait_metric("gateway_cache_epoch_resets_total", 1.0).await;
    // A's eviction from the outage is retried until Redis takes it, so it may
    // reach B just after B resynced and evict once more: hits resume once
    // it has landed, and the old user never comes back meanwhile.
    let back = Instant::now();
    loop {
        let resp = b.get_user().await;
        seen.push(format!(
            "after Redis is back: {} {} role={}",
            resp.status.as_u16(),
            resp.cache_status(),
            role(&resp)
        ));
        assert_eq!(role(&resp), new_role, "the old user came back");
        if resp.cache_status().contains("hit") || back.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for line in &seen {
        println!("through B: {line}");
    }
    assert!(
        seen.last().is_some_and(|l| l.contains("hit")),
        "hits resume: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_link_is_noticed_within_about_a_second() {
    let upstream = start_upstream().await;
    let redis = Redis::start();
    let [a, b, _c] = three(&upstream, &redis).await;
    b.get_user().await;
    b.get_user().await.hit_ttl();

    // A partition, not a closed socket: Redis stops answering.
    redis.pause();
    let paused = Instant::now();
    b.wait_metric_at_most("gateway_invalidation_bus_connected", 0.0)
        .await;
    let noticed = paused.elapsed();
    println!("a silent Redis was noticed after {noticed:?}");
    assert!(noticed < Duration::from_secs(3), "{noticed:?}");
    let during = b.get_user().await;
    assert!(
        !during.cache_status().contains("hit"),
        "{}",
        during.cache_status()
    );
    // A write still answers within redis.timeout_ms of waiting on Redis.
    let started = Instant::now();
    a.set_role("owner").await.assert_status(200);
    let took = started.elapsed();
    println!("a write with Redis silent took {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");

    redis.resume();
    b.wait_metric("gateway_invalidation_bus_connected", 1.0)
        .await;
    b.wait_metric("gateway_cache_epoch_resets_total", 1.0).await;
    let after = b.get_user().await;
    assert_eq!(role(&after), "owner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_racing_a_remote_invalidation_never_stores_the_old_user() {
    let upstream = start_upstream().await;
    let redis = Redis::start();
    let [a, b, _c] = three(&upstream, &redis).await;
    let before = role(&a.get_user().await);
    let new_role = if before == "owner" { "reader" } else { "owner" };

    // B's fill reads the old user, then waits at the gate.
    upstream.inject("GET", USER_PATH, Fault::new().gate("fill"));
    let fill = {
        let url = b.url(USER_PATH);
        tokio::spawn(async move { req(Method::GET, &url).bearer(CLIENT_KEY).send().await })
    };
    wait_until(5, "B's fill to reach the upstream", || {
        upstream.count("GET", USER_PATH) == 2
    })
    .await;
    a.set_role(new_role).await.assert_status(200);
    b.wait_metric("gateway_invalidations_received_total", 1.0)
        .await;
    upstream.gate("fill").open();
    let old = fill.await.expect("fill");
    assert_eq!(role(&old), before, "the fill began before the write");

    let next = b.get_user().await;
    assert_eq!(
        role(&next),
        new_role,
        "the old user was stored: {}",
        next.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_budget_is_one_budget_across_three_replicas() {
    const BUDGET: u32 = 4;
    const LIMITED_KEY: &str = "gwk_cluster_limited_key_0123456789abcdefghijklmnopq";
    let upstream = start_upstream().await;
    let redis = Redis::start();
    let client = client_toml("limited", LIMITED_KEY, &rate_limit(1, BUDGET));
    let rs = [
        Replica::start(&upstream, &redis, &client).await,
        Replica::start(&upstream, &redis, &client).await,
        Replica::start(&upstream, &redis, &client).await,
    ];
    let mut allowed = 0;
    for i in 0..(3 * BUDGET as usize) {
        let r = &rs[i % 3];
        let resp = req(Method::GET, &r.url("/v1/echo/x"))
            .bearer(LIMITED_KEY)
            .send()
            .await;
        match resp.status.as_u16() {
            200 => allowed += 1,
            429 => {}
            s => panic!("unexpected {s}: {}", resp.describe()),
        }
    }
    assert_eq!(allowed, BUDGET, "a budget of {BUDGET} is {BUDGET} in total");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_latency_over_1000_writes() {
    const WRITES: usize = 1000;
    let upstream = start_upstream().await;
    let redis = Redis::start();
    let [a, mut b, _c] = three(&upstream, &redis).await;
    for i in 0..WRITES {
        let role = if i % 2 == 0 { "owner" } else { "reader" };
        a.set_role(role).await.assert_status(200);
    }
    // A later eviction of the same user replaces one still queued, so
    // A publishes at most one message per write; B applies each.
    a.wait_metric_at_most("gateway_invalidation_outbox", 0.0)
        .await;
    let published = a.metric("gateway_invalidations_published_total").await;
    assert!((1.0..=WRITES as f64).contains(&published), "{published}");
    b.wait_metric("gateway_invalidations_received_total", published)
        .await;
    let status = b.gw.terminate(30);
    let log = b.gw.stderr_text();
    assert!(status.success(), "{status}");
    let mut delays: Vec<u64> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "remote invalidation applied")
        .filter_map(|v| v["delay_us"].as_u64())
        .collect();
    assert_eq!(
        delays.len() as f64,
        published,
        "one applied eviction per publish"
    );
    delays.sort_unstable();
    let pct = |p: usize| delays[(delays.len() * p / 100).min(delays.len() - 1)];
    println!(
        "evict here -> evict on another replica, {} publishes for {WRITES} writes: p50 {} us, p99 {} us, max {} us",
        delays.len(),
        pct(50),
        pct(99),
        delays[delays.len() - 1]
    );
}
