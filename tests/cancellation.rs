//! Cancellation at any `.await` gives back everything a request holds (docs/ledger.md).
//!
//! hyper drops a request's future when its client resets the stream or hangs up, at
//! whichever `.await` it is parked on, and drops the response body when the client stops
//! reading it. For every kind of request (hit, miss, fill waiter, forward with a small body,
//! streamed forward, write, queued for an upstream slot, queued for the organization's
//! budget (`cancellation/budget.rs`); in-process also an expired user
//! refetched, and one served while revalidated in the background) these tests drop it at
//! random points, many times, and then check that the in-flight gauges, the upstream slots
//! and the queue are back at 0 and that a normal request of each kind still succeeds:
//! - in-process, by dropping `Gateway::handle`'s future after a random delay, or its
//!   response body after a random number of frames (this file);
//! - over real sockets (`cancellation/sockets.rs`): an HTTP/2 client (the `h2` crate) sends
//!   RST_STREAM at random points, and HTTP/1.1 clients close their TCP connection while
//!   queued for an upstream slot (the queue-leak regression);
//! - over HTTP/1.1 (`cancellation/hangups.rs`): clients close their TCP connection at
//!   random points.
//!
//! The random points come from a seeded generator: the seed is printed, and
//! `CANCEL_SEED=<n>` replays a run.
//!
//! No kind waits for the client's rate limiter: a limit is a decision, not a queue
//! (`Decision::Deny` answers 429 at once), so there is no limiter wait to cancel.

mod support;

#[path = "cancellation/budget.rs"]
mod budget;
#[path = "cancellation/hangups.rs"]
mod hangups;
#[path = "cancellation/kinds.rs"]
mod kinds;
#[path = "cancellation/sockets.rs"]
mod sockets;

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Body as _;
use openai_admin_gateway::metrics::Metrics;
use openai_admin_gateway::proxy::Gateway;
use support::*;
use tokio::task::JoinSet;

use kinds::{tally_batch, Cut, Kind, Rng, Tally, BATCH};

/// Cases per kind in the in-process test.
const CASES: usize = 200;

/// The gauges that read 0 when nothing is held: requests in flight, upstream slots held,
/// requests queued for a slot, requests queued for a turn of the organization's budget.
const IDLE_GAUGES: [&str; 4] = [
    "gateway_requests_in_flight",
    "gateway_upstream_in_flight",
    "gateway_upstream_queued",
    "gateway_budget_queued",
];

/// Waits (up to 10 s) until every gauge in [`IDLE_GAUGES`] of `text()` reads 0.
pub async fn settle<F, Fut>(what: &str, mut text: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let start = std::time::Instant::now();
    loop {
        let t = text().await;
        let held: Vec<String> = IDLE_GAUGES
            .iter()
            .map(|g| (g, metric(&t, g, &[])))
            .filter(|(_, v)| *v != 0.0)
            .map(|(g, v)| format!("{g}={v}"))
            .collect();
        if held.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: still held after 10 s: {}",
            held.join(", ")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An in-process gateway (no listener) in front of `upstream`: 2 upstream slots and room
/// for 4 waiters, so batches of [`BATCH`] queue; expired users are served within 30 s
/// while revalidated, within 600 s when the refetch fails.
fn in_process_gateway(upstream: &Upstream) -> Gateway {
    let cfg = GatewayConfig::new(&upstream.base_url());
    let toml = with_upstream_keys(
        &cfg.toml(),
        "max_concurrent_requests = 2\nmax_queued_requests = 4",
    )
    .replacen(
        "[cache]\n",
        "[cache]\nstale_while_revalidate_secs = 30\nstale_if_error_secs = 600\n",
        1,
    );
    Gateway::new(&parse_config(&toml), Arc::new(Metrics::new())).expect("gateway")
}

/// Runs one request of `kind` and cancels it at a random point: its future dropped after
/// up to 4 ms, or its response body dropped after a few frames.
async fn cancelled(gw: Gateway, kind: Kind, n: usize, mut rng: Rng) -> Cut {
    let req = kind.in_process_request(n);
    let delay = Duration::from_micros(rng.below(4_000));
    let Ok(resp) = tokio::time::timeout(delay, gw.handle(req)).await else {
        return Cut::BeforeHead; // dropped while the request future was parked
    };
    let mut body = resp.into_body();
    for _ in 0..rng.below(4) {
        let delay = Duration::from_micros(rng.below(2_000));
        match tokio::time::timeout(delay, body.frame()).await {
            Ok(Some(Ok(_))) => {}
            Err(_) => return Cut::MidBody,
            Ok(_) => return Cut::AfterEnd,
        }
    }
    if body.is_end_stream() {
        Cut::AfterEnd
    } else {
        Cut::MidBody
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_request_cancelled_anywhere_in_process_leaves_nothing_held() {
    let mut rng = Rng::from_env("in-process");
    let upstream = start_upstream().await;
    // Every upstream answer waits a moment, so cancellations land before headers too.
    upstream.inject("*", "*", Fault::new().delay_ms(1));
    let gw = in_process_gateway(&upstream);
    let text = || {
        let gw = gw.clone();
        async move { gw.metrics().encode(0) }
    };
    let kinds = || Kind::ALL.into_iter().chain(Kind::STALE);
    for kind in kinds() {
        let (mut done, mut tally) = (0, Tally::default());
        while done < CASES {
            kind.prepare(&gw, done).await;
            let mut batch = JoinSet::new();
            for i in 0..BATCH {
                batch.spawn(cancelled(gw.clone(), kind, done + i, rng.split()));
            }
            tally_batch(kind.as_str(), batch, &mut tally).await;
            done += BATCH;
        }
        settle(kind.as_str(), text).await;
        wait_until(10, "the upstream to finish what was cancelled", || {
            upstream.in_flight() == 0
        })
        .await;
        eprintln!("in-process, {}: {tally}; all released", kind.as_str());
        if !matches!(kind, Kind::Hit | Kind::Revalidate) {
            assert!(tally.before_head() > 0, "{}: {tally}", kind.as_str());
        }
    }
    // And every kind still works.
    for kind in kinds() {
        kind.prepare(&gw, 0).await;
        let resp = gw.handle(kind.in_process_request(0)).await;
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(status, 200, "{}: {body:?}", kind.as_str());
    }
    settle("after the normal requests", text).await;
}
