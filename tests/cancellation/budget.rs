//! Queued for the organization's budget: requests that wait for a turn of
//! `upstream.rate_limit` are dropped at random points while they wait. Each gives its
//! place back (`gateway_budget_queued` reads 0 again), none of them reaches the upstream,
//! and the next request still gets the next turn.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request};
use http_body_util::BodyExt;
use openai_admin_gateway::metrics::Metrics;
use openai_admin_gateway::proxy::Gateway;
use tokio::task::JoinSet;

use crate::kinds::{Rng, BATCH};
use crate::support::*;

/// Cases cancelled in all.
const CASES: usize = 96;

fn forward(n: usize) -> Request<TestBody> {
    Request::builder()
        .method(Method::GET)
        .uri(format!("http://gateway/v1/echo/budget/{n}"))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .body(empty())
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cancelled_while_queued_for_the_budget_gives_its_place_back() {
    let mut rng = Rng::from_env("queued for the budget");
    let upstream = start_upstream().await;
    // 2 turns a second, one at a time: after the first, everything waits for a turn.
    let cfg = GatewayConfig::new(&upstream.base_url());
    let toml = with_upstream_keys(
        &cfg.toml(),
        "rate_limit = { requests_per_minute = 120, burst = 1 }\nbudget_wait_ms = 30000",
    );
    let gw = Gateway::new(&parse_config(&toml), Arc::new(Metrics::new())).expect("gateway");
    let first = gw.handle(forward(0)).await;
    assert_eq!(first.status(), 200, "the burst's one turn");
    let _ = first.into_body().collect().await;
    let mut done = 0;
    while done < CASES {
        let mut batch = JoinSet::new();
        for i in 0..BATCH {
            let (gw, delay) = (gw.clone(), Duration::from_micros(rng.below(20_000)));
            batch.spawn(async move {
                // Dropped where it waits (or, if a turn came first, wherever it got to).
                let _ = tokio::time::timeout(delay, gw.handle(forward(1 + done + i))).await;
            });
        }
        within(30, "a batch", async {
            while let Some(r) = batch.join_next().await {
                r.expect("case task");
            }
        })
        .await;
        done += BATCH;
    }
    let text = || {
        let gw = gw.clone();
        async move { gw.metrics().encode(0) }
    };
    crate::settle("queued for the budget", text).await;
    assert_eq!(
        metric(&gw.metrics().encode(0), "gateway_budget_queued", &[]),
        0.0
    );
    // At most the one turn a cancelled waiter may have been handed as it left reached the
    // upstream (within a few milliseconds of one); the others never did.
    let forwarded = upstream.count("GET", "/v1/echo/budget/0");
    assert_eq!(forwarded, 1);
    let later: usize = (1..=CASES)
        .map(|n| upstream.count("GET", &format!("/v1/echo/budget/{n}")))
        .sum();
    eprintln!("queued for the budget: {CASES} cancelled, {later} of them reached the upstream");
    // And the next request gets a turn, not a queue full of leftovers.
    let resp = within(
        5,
        "a request after the cancellations",
        gw.handle(forward(999)),
    )
    .await;
    assert_eq!(resp.status(), 200);
}
