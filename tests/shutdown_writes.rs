//! One grace period: on SIGTERM the real binary is gone within `shutdown_grace_secs` plus a
//! second, even with a user write still at the upstream; that write gets its audit line
//! (outcome unknown) and its eviction, published to the other replicas before the exit.

mod support;

use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Value};
use support::redis::Redis;
use support::replica::Replica;
use support::*;

const GRACE_SECS: u64 = 2;

/// A write the fake upstream holds for `hold_ms` through replica A while B has the user
/// cached; SIGTERM to A once the upstream has the write (with Redis frozen first when
/// `redis_stuck`, so that A's last eviction can not be published).
async fn a_held_write_at_shutdown(hold_ms: u64, redis_stuck: bool) {
    let upstream = start_upstream().await;
    let redis = Redis::start();
    let settings = |c: &mut GatewayConfig| {
        c.shutdown_grace_secs = GRACE_SECS;
        c.ttl_secs = 300;
        // Only the grace period may end the held write.
        c.timeout_ms = 60_000;
    };
    let mut a = Replica::start(&upstream, &redis.url(), settings).await;
    let b = Replica::start(&upstream, &redis.url(), settings).await;
    b.get(USER_PATH).await.assert_status(200);
    b.get(USER_PATH).await.hit_ttl();

    upstream.inject("POST", USER_PATH, Fault::new().delay_ms(hold_ms));
    let write = {
        let url = a.url(USER_PATH);
        tokio::spawn(async move {
            req(Method::POST, &url)
                .bearer(CLIENT_KEY)
                .json(&json!({ "role": "owner" }))
                .try_send()
                .await
        })
    };
    wait_until(5, "the write to reach the upstream", || {
        upstream.count("POST", USER_PATH) == 1
    })
    .await;

    if redis_stuck {
        redis.pause();
    }
    let signalled = Instant::now();
    a.gw.signal("TERM");
    let status = a.gw.wait_exit(GRACE_SECS + 10);
    let took = signalled.elapsed();
    let client_saw = match within(5, "the write's client", write).await {
        Ok(Ok(resp)) => format!("{} {}", resp.status, resp.text()),
        Ok(Err(e)) => format!("no answer: {e}"),
        Err(e) => format!("task: {e}"),
    };
    println!(
        "write held {hold_ms} ms: exited {took:?} after SIGTERM ({status}); client: {client_saw}"
    );
    assert!(status.success(), "{status}");
    assert!(
        client_saw.starts_with("504") && client_saw.contains("upstream_timeout"),
        "the write's client: {client_saw}"
    );
    assert!(
        took < Duration::from_secs(GRACE_SECS + 1),
        "exited {took:?} after SIGTERM with shutdown_grace_secs = {GRACE_SECS}"
    );

    let log = a.gw.stderr_text();
    let audit: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "openai_admin_gateway::audit")
        .collect();
    assert_eq!(audit.len(), 1, "one audit line for the write:\n{log}");
    assert_eq!(audit[0]["outcome"], "unknown", "{log}");
    assert_eq!(audit[0]["upstream_status"], 0, "{log}");
    assert_eq!(audit[0]["status"], 504, "{log}");
    assert_eq!(audit[0]["method"], "POST", "{log}");
    assert_eq!(audit[0]["path"], USER_PATH, "{log}");
    if redis_stuck {
        assert!(log.contains("evictions not published"), "{log}");
        // B lost its link too: it serves no hits, and empties its cache once Redis is back.
        redis.resume();
        b.wait_metric("gateway_cache_epoch_resets_total", &[], 1.0)
            .await;
        b.assert_idle().await;
        return;
    }

    // Treated as applied: B heard the eviction A published on its way out.
    b.wait_metric("gateway_invalidations_received_total", &[], 1.0)
        .await;
    let after = b.get(USER_PATH).await;
    assert!(
        !after.cache_status().contains("hit"),
        "{}",
        after.cache_status()
    );
    b.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_held_past_the_grace_period_is_audited_evicted_and_cut_at_its_end() {
    a_held_write_at_shutdown(5_000, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_held_far_past_the_grace_period_is_cut_at_its_end_too() {
    a_held_write_at_shutdown(9_000, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_does_not_hold_the_exit_past_grace_plus_a_second() {
    a_held_write_at_shutdown(9_000, true).await;
}
