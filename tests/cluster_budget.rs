//! The organization's budget shared through Redis, at the store's own surface: two
//! `SharedBudget`s on two connections to one real `redis-server` take from one GCRA and see
//! each other's pauses; Redis frozen means `None` within `redis.timeout_ms`, counted. And
//! `Bus::live_replicas`, the share a replica takes while Redis can not answer: buses on one
//! Redis count each other from their heartbeats.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openai_admin_gateway::cluster::{self, BudgetReply, Bus, Evict, SharedBudget, SILENCE};
use openai_admin_gateway::config::{RateLimit, RedisConfig};
use openai_admin_gateway::metrics::Metrics;
use support::metrics::metric;
use support::redis::Redis;

/// The `redis.timeout_ms` of these tests.
const TIMEOUT: Duration = Duration::from_millis(200);

const BURST_3: RateLimit = RateLimit {
    requests_per_minute: 60,
    burst: 3,
};

fn redis_config(redis: &Redis, prefix: &str) -> RedisConfig {
    RedisConfig {
        url: redis.url(),
        key_prefix: prefix.to_owned(),
        channel: format!("{prefix}bus"),
        timeout: TIMEOUT,
    }
}

/// A `SharedBudget` on a connection of its own, and its metrics.
fn budget(cfg: &RedisConfig) -> (Arc<SharedBudget>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let conn = cluster::connect(cfg).expect("redis url");
    (SharedBudget::new(conn, cfg, metrics.clone()), metrics)
}

fn store_errors(metrics: &Metrics) -> f64 {
    metric(
        &metrics.encode(0),
        "gateway_ratelimit_store_errors_total",
        &[],
    )
}

fn paused_left(reply: Option<BudgetReply>) -> Duration {
    match reply {
        Some(BudgetReply::Paused { left }) => left,
        other => panic!("expected Paused, got {other:?}"),
    }
}

#[tokio::test]
async fn two_stores_take_from_one_gcra() {
    let redis = Redis::start();
    let cfg = redis_config(&redis, "gcra:");
    let ((a, _), (b, _)) = (budget(&cfg), budget(&cfg));

    let mut replies = Vec::new();
    for store in [&a, &b, &a, &b] {
        replies.push(store.take("default", Some(BURST_3)).await);
    }
    println!("burst 3 at 60/min, A B A B: {replies:?}");
    assert_eq!(
        replies[..3],
        [
            Some(BudgetReply::Allowed { remaining: 2 }),
            Some(BudgetReply::Allowed { remaining: 1 }),
            Some(BudgetReply::Allowed { remaining: 0 }),
        ]
    );
    match replies[3] {
        Some(BudgetReply::Limited { wait }) => {
            assert!(
                wait > Duration::ZERO && wait <= Duration::from_secs(1),
                "{wait:?}"
            )
        }
        other => panic!("the 4th take (from B) must be Limited, got {other:?}"),
    }
    assert!(matches!(
        a.take("default", Some(BURST_3)).await,
        Some(BudgetReply::Limited { .. })
    ));

    // Another organization, or another key prefix, is another budget; no limit takes from
    // none.
    assert_eq!(
        b.take("research", Some(BURST_3)).await,
        Some(BudgetReply::Allowed { remaining: 2 })
    );
    let (other_prefix, _) = budget(&redis_config(&redis, "other:"));
    assert_eq!(
        other_prefix.take("default", Some(BURST_3)).await,
        Some(BudgetReply::Allowed { remaining: 2 })
    );
    assert_eq!(
        a.take("default", None).await,
        Some(BudgetReply::Allowed { remaining: 0 })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_takes_from_two_stores_allow_exactly_the_burst() {
    let redis = Redis::start();
    let cfg = redis_config(&redis, "race:");
    let ((a, _), (b, _)) = (budget(&cfg), budget(&cfg));
    let mut takes = tokio::task::JoinSet::new();
    for i in 0..40 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        takes.spawn(async move { store.take("default", Some(BURST_3)).await });
    }
    let mut allowed = 0;
    while let Some(reply) = takes.join_next().await {
        match reply.expect("take task") {
            Some(BudgetReply::Allowed { .. }) => allowed += 1,
            Some(BudgetReply::Limited { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(allowed, 3, "40 concurrent takes from two stores, burst 3");
}

#[tokio::test]
async fn a_pause_is_shared_and_never_shortened() {
    let redis = Redis::start();
    let cfg = redis_config(&redis, "pause:");
    let ((a, _), (b, _)) = (budget(&cfg), budget(&cfg));

    a.pause("default", Duration::from_secs(3)).await;
    let left = paused_left(b.take("default", None).await);
    println!("B sees A's 3 s pause with {left:?} left");
    assert!(
        left > Duration::from_secs(2) && left <= Duration::from_secs(3),
        "{left:?}"
    );
    // Paused with or without a limit, and for this organization only.
    paused_left(b.take("default", Some(BURST_3)).await);
    assert_eq!(
        b.take("research", None).await,
        Some(BudgetReply::Allowed { remaining: 0 })
    );

    // A shorter pause from B does not shorten it; a longer one lengthens it.
    b.pause("default", Duration::from_millis(100)).await;
    let left = paused_left(a.take("default", None).await);
    assert!(left > Duration::from_secs(2), "shortened to {left:?}");
    b.pause("default", Duration::from_secs(10)).await;
    let left = paused_left(a.take("default", None).await);
    assert!(left > Duration::from_secs(9), "not lengthened: {left:?}");
}

#[tokio::test]
async fn a_paused_organization_spends_no_turns() {
    let redis = Redis::start();
    let cfg = redis_config(&redis, "spend:");
    let ((a, _), (b, _)) = (budget(&cfg), budget(&cfg));

    a.pause("default", Duration::from_millis(300)).await;
    for _ in 0..5 {
        paused_left(b.take("default", Some(BURST_3)).await);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let first = loop {
        match b.take("default", Some(BURST_3)).await {
            Some(BudgetReply::Paused { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => break other,
        }
    };
    assert_eq!(
        first,
        Some(BudgetReply::Allowed { remaining: 2 }),
        "the whole burst is left after the pause"
    );
}

#[tokio::test]
async fn redis_frozen_answers_none_within_the_timeout_and_counts_it() {
    let redis = Redis::start();
    let cfg = redis_config(&redis, "down:");
    let (a, metrics) = budget(&cfg);
    assert!(a.take("default", Some(BURST_3)).await.is_some());
    assert_eq!(store_errors(&metrics), 0.0);

    redis.pause();
    let start = Instant::now();
    let reply = a.take("default", Some(BURST_3)).await;
    let took = start.elapsed();
    println!("take with Redis frozen: {reply:?} after {took:?} (timeout {TIMEOUT:?})");
    assert_eq!(reply, None);
    assert!(took < TIMEOUT + Duration::from_millis(300), "{took:?}");
    assert_eq!(store_errors(&metrics), 1.0);

    // For a second after a failure Redis is not tried: at once, and not counted again.
    let start = Instant::now();
    assert_eq!(a.take("default", Some(BURST_3)).await, None);
    a.pause("default", Duration::from_secs(1)).await;
    assert!(start.elapsed() < TIMEOUT, "{:?}", start.elapsed());
    assert_eq!(store_errors(&metrics), 1.0);

    redis.resume();
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.take("default", Some(BURST_3)).await.is_none() {
        assert!(Instant::now() < deadline, "Redis never answered again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_pause_that_fails_is_counted() {
    let mut redis = Redis::start();
    let cfg = redis_config(&redis, "gone:");
    let (a, metrics) = budget(&cfg);
    redis.stop();
    let start = Instant::now();
    a.pause("default", Duration::from_secs(2)).await;
    assert!(start.elapsed() < TIMEOUT + Duration::from_millis(300));
    assert_eq!(store_errors(&metrics), 1.0);
}

/// The bus's cache side, unused here.
struct NoCache;

impl Evict for NoCache {
    fn evict<'a>(
        &'a self,
        _org: &'a str,
        _id: &'a str,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async {})
    }
    fn evict_all(&self, _org: Option<&str>) {}
    fn set_serving(&self, _serving: bool) {}
}

/// A bus on a connection of its own (needs a Tokio runtime).
fn bus(cfg: &RedisConfig) -> Bus {
    let conn = cluster::connect(cfg).expect("redis url");
    let metrics = Arc::new(Metrics::new());
    Bus::start(
        cfg,
        conn,
        metrics,
        Arc::new(NoCache),
        Duration::from_secs(60),
    )
    .expect("bus")
}

/// Waits (up to 10 s) until every bus counts `n` live replicas.
async fn wait_count(buses: &[&Bus], n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counts: Vec<usize> = buses.iter().map(|b| b.live_replicas()).collect();
        if counts.iter().all(|&c| c == n) {
            return;
        }
        assert!(Instant::now() < deadline, "counts {counts:?}, want {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_buses_count_three_and_two_once_one_is_gone() {
    let redis = Redis::start();
    let cfg = redis_config(&redis, "live:");
    let (a, b) = (bus(&cfg), bus(&cfg));
    // C runs on a runtime of its own, so that it can be stopped: its tasks end with it.
    let c_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let c = {
        let _entered = c_runtime.enter();
        bus(&cfg)
    };
    wait_count(&[&a, &b, &c], 3).await;

    c_runtime.shutdown_background();
    let stopped = Instant::now();
    wait_count(&[&a, &b], 2).await;
    println!(
        "C stopped: A and B count 2 after {:?} (SILENCE {SILENCE:?})",
        stopped.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_keeps_the_last_count() {
    let redis = Redis::start();
    let cfg = redis_config(&redis, "frozen:");
    let (a, b, c) = (bus(&cfg), bus(&cfg), bus(&cfg));
    wait_count(&[&a, &b, &c], 3).await;

    // Nothing is heard from anyone while Redis is frozen: that is when the count is used
    // (each replica takes a third of the budget), and it must not fall to 1.
    redis.pause();
    tokio::time::sleep(SILENCE * 2).await;
    let counts = [a.live_replicas(), b.live_replicas(), c.live_replicas()];
    redis.resume();
    println!("counts after {:?} of frozen Redis: {counts:?}", SILENCE * 2);
    assert_eq!(counts, [3, 3, 3]);
    wait_count(&[&a, &b, &c], 3).await;
}
