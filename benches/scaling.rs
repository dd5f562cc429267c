//! The whole hit path from 1 and from 2 threads, in process: does it scale
//! with cores, or does something every core writes hold it back?
//!
//! Each thread runs its own current-thread runtime (as a server worker
//! does) and calls [`Gateway::handle`] in a loop on requests built from
//! pre-parsed parts, then reads the response body to its end and drops it,
//! which writes the request's account (metrics, in-flight gauge, access
//! line; no log subscriber is installed, as at `RUST_LOG=warn`). No
//! sockets: what is measured is the gateway's own code. Ids are spread over
//! 10,000 cached users, each thread walking them in its own order.
//!
//! The upstream is a real HTTP server on 127.0.0.1, used only to fill the
//! cache; the run fails if it sees a request while hits are measured, or if
//! an answer is not a 200 hit.
//!
//! Run: `cargo bench --bench scaling [-- --secs 3 --repeats 5 --json PATH]`
//! (`-- --only N --secs S`: one run of N threads, for a profiler).
//! 1-thread and 2-thread runs alternate; the medians and their ratio are
//! printed, and written as JSON to PATH (`benches/load/report.py
//! --scaling PATH` puts them in the README's table).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use openai_admin_gateway::config::Config;
use openai_admin_gateway::metrics::Metrics;
use openai_admin_gateway::proxy::Gateway;
use openai_admin_gateway::secret::digest;

/// The server's allocator, so the figures are the server's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const IDS: usize = 10_000;
const CLIENT_KEY: &str = "sk-bench-client";
const ADMIN_KEY: &str = "sk-admin-bench";

/// What the hit path writes per request, and where; printed with the
/// figures and written to the JSON (the README's list).
const WRITES: &[&str] = &[
    "requests_total, request latency histogram: the thread's own metrics slot (summed at scrape)",
    "in-flight gauge: the thread's own slot",
    "cache hit counter: the thread's own slot",
    "request id: the thread's own sequence counter",
    "client and metrics handles: the thread's own reference count (per_thread::Handles)",
    "Cache-Status and Age values: static, their clones write nothing",
    "the user: the thread's own front copy (body, reference count); moka is read only when the front misses",
    "on a front miss only: moka's read log (one per cache shard), the entry's access time and count, the copy into the front",
    "rate limiter (limited clients only): one CAS on the client's GCRA cell, by design (a global limit)",
];

/// A minimal spec-shaped upstream: the retrieve-user endpoint only.
async fn upstream(listener: tokio::net::TcpListener, seen: Arc<AtomicU64>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let seen = seen.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                seen.fetch_add(1, Ordering::Relaxed);
                let id = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
                let ok = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes)
                    == Some(format!("Bearer {ADMIN_KEY}").as_bytes());
                async move {
                    let (status, body) = if ok {
                        (
                            StatusCode::OK,
                            format!(
                                r#"{{"object":"organization.user","id":"{id}","name":"Bench User","email":"{id}@example.com","role":"reader","added_at":1711471533}}"#
                            ),
                        )
                    } else {
                        (StatusCode::UNAUTHORIZED, r#"{"error":{"message":"bad key","type":"invalid_request_error","param":null,"code":null}}"#.to_owned())
                    };
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .header(CONTENT_TYPE, "application/json")
                            .body(Full::new(Bytes::from(body)))
                            .expect("static response"),
                    )
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One thread's prepared requests: URIs and the auth header, parsed once.
struct Prepared {
    uris: Vec<Uri>,
    auth: HeaderValue,
}

impl Prepared {
    fn new(stride: usize, offset: usize) -> Self {
        let uris = (0..IDS)
            .map(|i| (i * stride + offset) % IDS)
            .map(|i| {
                format!("/v1/organization/users/user_{i:08}")
                    .parse()
                    .expect("uri")
            })
            .collect();
        Self {
            uris,
            auth: HeaderValue::from_str(&format!("Bearer {CLIENT_KEY}")).expect("header"),
        }
    }

    fn request(&self, i: usize) -> Request<Empty<Bytes>> {
        let mut req = Request::new(Empty::new());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = self.uris[i % self.uris.len()].clone();
        req.headers_mut().insert(AUTHORIZATION, self.auth.clone());
        req
    }
}

/// Calls the gateway once and reads the answer; true for a 200 hit.
async fn one(gw: &Gateway, req: Request<Empty<Bytes>>) -> bool {
    let resp = gw.handle(req).await;
    let hit = resp.status() == StatusCode::OK
        && resp
            .headers()
            .get("cache-status")
            .is_some_and(|v| v.as_bytes().starts_with(b"openai-admin-gateway; hit"));
    let mut body = resp.into_body();
    while let Some(Ok(_)) = body.frame().await {}
    hit
}

/// Runs `work` on `threads` threads, each on a current-thread runtime of
/// its own, for `secs`; total operations per second. `work(t, stop)` is
/// thread `t`'s loop: it runs until `stop` and returns how many it did.
fn timed<W, F>(threads: usize, secs: f64, work: W) -> f64
where
    W: Fn(usize, Arc<AtomicBool>) -> F + Sync,
    F: std::future::Future<Output = usize>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let start = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (work, stop, start) = (&work, stop.clone(), &start);
                s.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    start.wait();
                    rt.block_on(work(t, stop))
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
        let n: usize = handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .sum();
        n as f64 / t0.elapsed().as_secs_f64()
    })
}

/// The whole hit path on `threads` threads for `secs`; requests per second.
fn run(gw: &Gateway, threads: usize, secs: f64) -> f64 {
    let prepared: Vec<Prepared> = (0..threads)
        .map(|t| Prepared::new(7919, t * 5003))
        .collect();
    timed(threads, secs, |t, stop| {
        let prepared = &prepared[t];
        async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..64 {
                    assert!(
                        one(gw, prepared.request(n)).await,
                        "every answer must be a 200 hit"
                    );
                    n += 1;
                }
            }
            n
        }
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: f64 = arg(&args, "--secs")
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let repeats: usize = arg(&args, "--repeats")
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let json = arg(&args, "--json");
    // `--only N`: run N threads for --secs once and print req/s (for a
    // profiler attached to one configuration).
    let only: Option<usize> = arg(&args, "--only").and_then(|s| s.parse().ok());

    // The upstream on its own thread and runtime.
    let seen = Arc::new(AtomicU64::new(0));
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let port = std_listener.local_addr().expect("addr").port();
    {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                upstream(l, seen).await;
            });
        });
    }

    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [upstream]\nbase_url = \"http://127.0.0.1:{port}/v1\"\nadmin_key_env = \"BENCH_ADMIN_KEY\"\n\
         [cache]\nttl_secs = 3600\nmax_entries = 100000\n\
         [[clients]]\nname = \"bench\"\nkey_sha256 = [\"{}\"]\n",
        hex(&digest(CLIENT_KEY.as_bytes()))
    );
    let env = |k: &str| (k == "BENCH_ADMIN_KEY").then(|| ADMIN_KEY.to_owned());
    let config = Config::parse(&toml, std::path::Path::new("."), &env).expect("bench config");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let gw = rt.block_on(async {
        let gw = Gateway::new(&config, Arc::new(Metrics::new())).expect("gateway");
        let p = Prepared::new(1, 0);
        for i in 0..IDS {
            one(&gw, p.request(i)).await;
        }
        gw
    });
    let filled = seen.load(Ordering::Relaxed);
    assert_eq!(filled, IDS as u64, "one fill per user");
    // Drop the fill runtime's pooled upstream connections' driver: the
    // measured threads never need them.
    drop(rt);

    if args.iter().any(|a| a == "--moka-alone") {
        moka_alone(secs, repeats);
        return;
    }
    if let Some(n) = only {
        run(&gw, n, 0.5);
        let r = run(&gw, n, secs);
        println!("{n} threads: {r:.0} req/s");
        return;
    }
    // Warm-up: both thread counts once, unrecorded.
    run(&gw, 1, 0.5);
    run(&gw, 2, 0.5);
    let (mut one_t, mut two_t) = (Vec::new(), Vec::new());
    for r in 0..repeats {
        let a = run(&gw, 1, secs);
        let b = run(&gw, 2, secs);
        println!(
            "repeat {}: 1 thread {:>9.0} req/s   2 threads {:>9.0} req/s   ratio {:.3}",
            r + 1,
            a,
            b,
            b / a
        );
        one_t.push(a);
        two_t.push(b);
    }
    assert_eq!(
        seen.load(Ordering::Relaxed),
        filled,
        "the upstream saw a request while hits were measured"
    );
    let (m1, m2) = (median(&mut one_t.clone()), median(&mut two_t.clone()));
    let per_thread_ns = 1e9 / m1;
    println!(
        "median: 1 thread {m1:.0} req/s ({per_thread_ns:.0} ns/request), 2 threads {m2:.0} req/s, ratio {:.3} (goal >= 1.85)",
        m2 / m1
    );
    println!("what the hit path writes:");
    for w in WRITES {
        println!("  - {w}");
    }
    if let Some(path) = json {
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let writes = WRITES
            .iter()
            .map(|w| format!("{w:?}"))
            .collect::<Vec<_>>()
            .join(",\n    ");
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let text = format!(
            "{{\n  \"bench\": \"scaling\",\n  \"secs\": {secs},\n  \"cpus\": {cpus},\n  \"threads\": {{\n    \"1\": {{\"req_per_s\": [{}], \"median\": {m1:.0}}},\n    \"2\": {{\"req_per_s\": [{}], \"median\": {m2:.0}}}\n  }},\n  \"ratio\": {:.3},\n  \"shared_writes\": [\n    {writes}\n  ]\n}}\n",
            list(&one_t),
            list(&two_t),
            m2 / m1
        );
        std::fs::write(&path, text).expect("write json");
        println!("wrote {path}");
    }
}

/// `--moka-alone`: the same 1-vs-2-thread runs on moka alone (a moka
/// cache built here as the gateway builds each of its shards: the same key,
/// value and hasher, no per-thread front; 10k stored users, keys built
/// beforehand): how far a hit path that reads moka on every hit could scale.
fn moka_alone(secs: f64, repeats: usize) {
    use openai_admin_gateway::cache::{CacheKey, CachedUser, KeyBits, UserCache};
    let keys_of = UserCache::new(100_000);
    let cache: moka::future::Cache<CacheKey, CachedUser, KeyBits> = moka::future::Cache::builder()
        .max_capacity(100_000)
        .build_with_hasher(KeyBits);
    let ids: Vec<String> = (0..IDS).map(|i| format!("user_{i:08}")).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for id in &ids {
            let body = Bytes::from(format!(r#"{{"object":"organization.user","id":"{id}"}}"#));
            let u = CachedUser::new(body, None, false, Duration::from_secs(3600), None);
            cache.insert(keys_of.key(&bench_org(), id), u).await;
        }
    });
    let keys: Vec<_> = ids.iter().map(|id| keys_of.key(&bench_org(), id)).collect();
    let run = |threads: usize| {
        timed(threads, secs, |t, stop| {
            let (cache, keys) = (&cache, &keys);
            async move {
                let (mut n, mut i) = (0usize, t * 5003);
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..64 {
                        i = (i + 7919) % IDS;
                        assert!(cache.get(&keys[i]).await.is_some());
                        n += 1;
                    }
                }
                n
            }
        })
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for r in 0..repeats {
        let (x, y) = (run(1), run(2));
        println!("moka alone, repeat {}: 1 thread {x:>10.0} gets/s   2 threads {y:>10.0} gets/s   ratio {:.3}", r + 1, y / x);
        a.push(x);
        b.push(y);
    }
    let (m1, m2) = (median(&mut a), median(&mut b));
    println!("moka alone, median: 1 thread {m1:.0} gets/s ({:.0} ns/get), 2 threads {m2:.0} gets/s, ratio {:.3}", 1e9 / m1, m2 / m1);
}

/// The organization the benches cache in.
fn bench_org() -> openai_admin_gateway::org::Org {
    static ORG: std::sync::OnceLock<openai_admin_gateway::org::Org> = std::sync::OnceLock::new();
    ORG.get_or_init(|| {
        let key =
            openai_admin_gateway::secret::AdminKey::from_bytes(b"sk-admin-bench").expect("key");
        openai_admin_gateway::org::Org::new("default", None, key)
    })
    .clone()
}
