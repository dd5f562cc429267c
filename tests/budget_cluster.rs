//! The organization's budget across replicas: three real gateway processes, one real
//! `redis-server`, one fake upstream. The budget is one budget (three replicas send the
//! upstream what one would), a pause after an upstream 429 seen by one replica holds the
//! others, and with Redis down each replica keeps within its share (the budget divided by
//! the replicas it heard on the bus).

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::redis::Redis;
use support::replica::Replica;
use support::*;

/// A forward (never cached): each one the gateway lets through is one upstream request.
const FORWARD: &str = "/v1/organization/projects";

/// Burst 3, then one turn every 10 s: no turn comes back while a test runs.
const BURST_3: &str = "rate_limit = { requests_per_minute = 6, burst = 3 }";

/// Refused rather than queued: no turn can come within 100 ms.
const WAIT_100: &str = "budget_wait_ms = 100";

async fn replicas(upstream: &Upstream, redis_url: &str, n: usize, keys: &str) -> Vec<Replica> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Replica::start_with(upstream, redis_url, keys, |_| {}).await);
    }
    for r in &out {
        r.wait_metric("gateway_replicas_live", &[], n as f64).await;
    }
    out
}

async fn forward(r: &Replica) -> TestResponse {
    r.get(FORWARD).await
}

/// Asserts the gateway's own refusal, and returns its `retry-after-ms`.
fn refused(resp: &TestResponse) -> u64 {
    assert_openai_error(resp, 429, "requests", "organization_budget_exceeded");
    assert!(resp.header("retry-after").is_some(), "no retry-after");
    resp.header("retry-after-ms")
        .and_then(|v| v.parse().ok())
        .expect("retry-after-ms")
}

/// Sends `n` forwards round the replicas; returns how many were let through.
async fn burst(replicas: &[Replica], n: usize) -> usize {
    let mut passed = 0;
    for i in 0..n {
        let resp = forward(&replicas[i % replicas.len()]).await;
        if resp.status == 200 {
            passed += 1;
        } else {
            refused(&resp);
        }
    }
    passed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_send_what_one_replica_sends() {
    let keys = format!("{BURST_3}\n{WAIT_100}");
    let (redis_1, upstream_1) = (Redis::start(), start_upstream().await);
    let one = replicas(&upstream_1, &redis_1.url(), 1, &keys).await;
    let passed_1 = burst(&one, 12).await;
    let (redis_3, upstream_3) = (Redis::start(), start_upstream().await);
    let three = replicas(&upstream_3, &redis_3.url(), 3, &keys).await;
    let passed_3 = burst(&three, 12).await;

    let (sent_1, sent_3) = (
        upstream_1.count("GET", FORWARD),
        upstream_3.count("GET", FORWARD),
    );
    println!(
        "12 forwards, burst 3: one replica let {passed_1} through (upstream saw {sent_1}); \
         three replicas let {passed_3} through (upstream saw {sent_3})"
    );
    assert_eq!(sent_1, 3);
    assert_eq!(sent_3, sent_1, "three replicas spend one budget");
    assert_eq!((passed_1, passed_3), (3, 3));
}

/// The pause key's time to live in ms (negative: none), read with `redis-cli`.
fn pause_pttl(redis: &Redis) -> i64 {
    let out = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .args([
            "PTTL",
            "openai-admin-gateway:ratelimit:budget:default:pause",
        ])
        .output()
        .expect("redis-cli (installed with redis-server)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().expect("PTTL answers a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_seen_by_one_replica_holds_the_others() {
    let (redis, upstream) = (Redis::start(), start_upstream().await);
    let three = replicas(&upstream, &redis.url(), 3, WAIT_100).await;
    upstream.inject(
        "GET",
        FORWARD,
        Fault::new().too_many(RetryAfter::Seconds(2)).times(1),
    );

    let first = forward(&three[0]).await;
    let paused_at = Instant::now();
    assert_eq!(first.status, 429);
    assert_eq!(first.header("retry-after").as_deref(), Some("2"));
    assert_eq!(
        first.json()["error"]["code"],
        "injected",
        "the upstream's 429, relayed"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while pause_pttl(&redis) <= 0 {
        assert!(Instant::now() < deadline, "the pause never reached Redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    for r in &three[1..] {
        for _ in 0..2 {
            let ms = refused(&forward(r).await);
            assert!(ms > 0 && ms <= 2000, "retry-after-ms {ms}");
        }
    }
    assert_eq!(
        upstream.count("GET", FORWARD),
        1,
        "nothing reached the upstream during the pause"
    );

    // Once it ends, requests flow again, from any replica.
    let deadline = Instant::now() + Duration::from_secs(10);
    let resumed = loop {
        let resp = forward(&three[2]).await;
        if resp.status == 200 {
            break paused_at.elapsed();
        }
        refused(&resp);
        assert!(Instant::now() < deadline, "requests never flowed again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("replica 3 served again {resumed:?} after replica 1's upstream 429 (retry-after: 2)");
    assert!(resumed >= Duration::from_millis(1900), "{resumed:?}");
    forward(&three[1]).await.assert_status(200);
    assert_eq!(upstream.count("GET", FORWARD), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_each_replica_keeps_within_its_share() {
    let (mut redis, upstream) = (Redis::start(), start_upstream().await);
    // Six at once for the organization: two each while Redis is away.
    let keys = format!("rate_limit = {{ requests_per_minute = 6, burst = 6 }}\n{WAIT_100}");
    let three = replicas(&upstream, &redis.url(), 3, &keys).await;
    redis.stop();

    let mut passed = Vec::new();
    for r in &three {
        let mut through = 0;
        for _ in 0..6 {
            let resp = forward(r).await;
            if resp.status == 200 {
                through += 1;
            } else {
                refused(&resp);
            }
        }
        passed.push(through);
    }
    let sent = upstream.count("GET", FORWARD);
    println!("Redis down, burst 6 over 3 replicas, 6 forwards each: let through {passed:?}, upstream saw {sent}");
    assert_eq!(passed, [2, 2, 2], "each replica its share of the burst");
    assert_eq!(sent, 6, "the replicas together within the budget");
    for r in &three {
        assert!(r.metric("gateway_ratelimit_store_errors_total", &[]).await >= 1.0);
        assert_eq!(r.metric("gateway_replicas_live", &[]).await, 3.0);
    }
}
