//! The kinds of request the cancellation tests cancel, and the seeded random points.

use bytes::Bytes;
use http::{Method, Request};
use openai_admin_gateway::cache::CachedUser;
use openai_admin_gateway::proxy::Gateway;

use crate::support::{full, TestBody, CLIENT_KEY};

/// Requests of one kind cancelled at once (they contend for slots and single flights).
pub const BATCH: usize = 8;

/// Waits (30 s at most) for a batch of cases and adds where each was cut to `tally`.
pub async fn tally_batch(what: &str, mut batch: tokio::task::JoinSet<Cut>, tally: &mut Tally) {
    crate::support::within(30, what, async {
        while let Some(r) = batch.join_next().await {
            tally.add(r.expect("case task"));
        }
    })
    .await;
}

const SECOND: std::time::Duration = std::time::Duration::from_secs(1);

/// A kind of request, by what it holds while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A cached user: nothing but the account.
    Hit,
    /// A miss for a different user each time: a single-flight fill, an upstream slot.
    Miss,
    /// Every request of a batch misses the same user: one fills, the others wait on it.
    FillWaiter,
    /// A forward with a small body (read whole, then sent; the answer read whole too).
    SmallForward,
    /// A forward whose answer streams (server-sent events): the slot rides in the body.
    Streamed,
    /// A user write: its own task, which the client's cancellation must not stop.
    Write,
    /// A forward the upstream answers slowly, so that a batch queues for the 2 slots.
    Queued,
    /// An expired user past `stale_while_revalidate_secs`: one shared refetch under the
    /// entry's refresh key (in-process only: the test backdates entries).
    StaleRefetch,
    /// An expired user within `stale_while_revalidate_secs`: served at once while one
    /// background refresh runs (in-process only).
    Revalidate,
}

impl Kind {
    /// Every kind, in the order the tests run them.
    pub const ALL: [Kind; 7] = [
        Kind::Hit,
        Kind::Miss,
        Kind::FillWaiter,
        Kind::SmallForward,
        Kind::Streamed,
        Kind::Write,
        Kind::Queued,
    ];

    /// The kinds that need an expired entry put in the cache (in-process only).
    pub const STALE: [Kind; 2] = [Kind::StaleRefetch, Kind::Revalidate];

    /// The kind's name in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Hit => "hit",
            Kind::Miss => "miss",
            Kind::FillWaiter => "fill waiter",
            Kind::SmallForward => "forward with a small body",
            Kind::Streamed => "streamed forward",
            Kind::Write => "write",
            Kind::Queued => "queued for an upstream slot",
            Kind::StaleRefetch => "stale, refetched",
            Kind::Revalidate => "stale, revalidated in the background",
        }
    }

    /// Method, path and body of case `n` of this kind.
    pub fn parts(self, n: usize) -> (Method, String, Option<Bytes>) {
        let user = |i: usize| format!("/v1/organization/users/user_{:04}", i % 30 + 1);
        match self {
            Kind::Hit => (Method::GET, "/v1/organization/users/user_abc".into(), None),
            Kind::Miss => (Method::GET, user(n), None),
            Kind::FillWaiter => (Method::GET, user(n / 8), None),
            Kind::SmallForward => (
                Method::POST,
                format!("/v1/echo/cancel/{n}"),
                Some(Bytes::from(format!("{{\"n\":{n}}}"))),
            ),
            Kind::Streamed => (Method::GET, "/v1/_test/sse?n=6&interval_ms=1".into(), None),
            Kind::Write => (
                Method::POST,
                "/v1/organization/users/user_def".into(),
                Some(Bytes::from_static(b"{\"role\":\"reader\"}")),
            ),
            Kind::Queued => (Method::GET, format!("/v1/echo/queued/{n}"), None),
            Kind::StaleRefetch | Kind::Revalidate => (Method::GET, user(n / 2), None),
        }
    }

    /// Headers every request of this kind carries besides the client key.
    pub fn headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Kind::Queued => &[("x-fake-delay-ms", "3")],
            Kind::SmallForward | Kind::Write => &[("content-type", "application/json")],
            _ => &[],
        }
    }

    /// Case `n` as a request for `Gateway::handle`, or for an h2 client (which sends the
    /// body itself: the request's own body is then ignored).
    pub fn in_process_request(self, n: usize) -> Request<TestBody> {
        let (method, path, body) = self.parts(n);
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://gateway{path}"))
            .header("authorization", format!("Bearer {CLIENT_KEY}"));
        for (name, value) in self.headers() {
            b = b.header(*name, *value);
        }
        if let Some(body) = &body {
            b = b.header("content-length", body.len());
        }
        b.body(full(body.unwrap_or_default())).expect("request")
    }

    /// Brings the cache to where this kind starts: the user cached for a hit, nothing
    /// cached for a miss or a fill waiter.
    /// `first` is the first case of the batch about to run.
    pub async fn prepare(self, gw: &Gateway, first: usize) {
        match self {
            Kind::Hit => {
                let resp = gw.handle(self.in_process_request(0)).await;
                assert_eq!(resp.status(), 200, "the user to hit");
            }
            Kind::Miss | Kind::FillWaiter => gw.cache().invalidate_all(),
            // Users past their TTL by more (refetch) or less (revalidate) than the
            // gateway's `stale_while_revalidate_secs` (30); pairs of cases share one.
            Kind::StaleRefetch | Kind::Revalidate => {
                let past = if self == Kind::StaleRefetch { 100 } else { 10 };
                for i in (0..BATCH).step_by(2) {
                    let id = format!("user_{:04}", (first + i) / 2 % 30 + 1);
                    let body = format!(r#"{{"object":"organization.user","id":"{id}"}}"#);
                    let user = CachedUser::new(Bytes::from(body), None, false, SECOND, None)
                        .backdated(SECOND * (past + 1));
                    let org = gw.org("default").expect("the default organization");
                    gw.cache().insert(gw.cache().key(&org, &id), user).await;
                }
            }
            _ => {}
        }
    }
}

/// A small seeded generator (splitmix64): the cancellation points are random but
/// replayable.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from `CANCEL_SEED`, else from the clock; prints the seed under `test`.
    pub fn from_env(test: &str) -> Rng {
        let seed = std::env::var("CANCEL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("{test}: CANCEL_SEED={seed}");
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// An independent generator for one case (the cases run concurrently).
    pub fn split(&mut self) -> Rng {
        Rng(self.next())
    }
}

/// Where a case was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Before the response head: the request's future was dropped (or its stream reset).
    BeforeHead,
    /// After the head, with the body not yet ended (over HTTP/1.1: after some of the
    /// response was read).
    MidBody,
    /// Too late: the response had ended (or failed) before the drop.
    AfterEnd,
}

/// How many cases of a kind were cut where, for the printed summary.
#[derive(Debug, Default)]
pub struct Tally([usize; 3]);

impl Tally {
    /// Counts one case.
    pub fn add(&mut self, cut: Cut) {
        self.0[cut as usize] += 1;
    }

    /// Cases cut before the response head.
    pub fn before_head(&self) -> usize {
        self.0[0]
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [head, body, end] = self.0;
        write!(
            f,
            "{} cases: {head} cut before the head, {body} mid-body, {end} after the end",
            head + body + end
        )
    }
}
