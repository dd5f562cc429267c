//! The organization's budget under load: 8 greedy clients and 1 polite one, for a bounded
//! time, against an in-process fake upstream, twice:
//! - **fair turns**: the polite client sends with its own key (its own queue in the round
//!   robin);
//! - **plain FIFO**: the polite client sends with the greedy client's key, so its requests
//!   wait in the greedy queue, behind everything queued before them (the gateway has no
//!   FIFO switch; sharing a queue is what FIFO is).
//!
//! It prints the upstream's requests per second against the budget, and the polite
//! client's p50/p99 latency (and refusals) in each run.
//!
//! Usage: `cargo run --example budget_fairness -- [SECS] [RPM] [BURST]`
//! (defaults: 60 s per run, 600/min, burst 10; `budget_wait_ms` is 5000).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use openai_admin_gateway::secret::hash_key;
use openai_admin_gateway::{Config, Server};
use tokio::net::TcpListener;

const GREEDY_KEY: &str = "gwk_budget_example_greedy_aaaaaaaaaaaaaaaaaaaaaaaaaaa";
const POLITE_KEY: &str = "gwk_budget_example_polite_bbbbbbbbbbbbbbbbbbbbbbbbbbb";
const GREEDY_CLIENTS: usize = 8;

/// A fake upstream that answers 200 `{}` to everything and counts.
async fn upstream() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicU64::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counted = counted.clone();
            let svc = service_fn(move |_req: Request<Incoming>| {
                counted.fetch_add(1, Ordering::Relaxed);
                async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}")))) }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
        }
    });
    (addr, count)
}

/// What one run measured.
struct Run {
    /// Requests the upstream saw per second.
    upstream_rps: f64,
    /// The polite client's answered latencies, sorted.
    polite: Vec<Duration>,
    /// The polite client's refusals (429 organization_budget_exceeded).
    polite_refused: usize,
    /// The greedy clients' answers and refusals.
    greedy: (u64, u64),
}

async fn run(secs: u64, rpm: u32, burst: u32, polite_key: &'static str) -> Run {
    let (up, count) = upstream().await;
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nworkers = 1\n\
         [upstream]\nbase_url = \"http://{up}/v1\"\n\
         rate_limit = {{ requests_per_minute = {rpm}, burst = {burst} }}\nbudget_wait_ms = 5000\n\
         max_queued_requests = 100000\n\
         [[clients]]\nname = \"greedy\"\nkey_sha256 = \"{}\"\n\
         [[clients]]\nname = \"polite\"\nkey_sha256 = \"{}\"\n",
        hash_key(GREEDY_KEY),
        hash_key(POLITE_KEY),
    );
    let env = |n: &str| (n == "OPENAI_ADMIN_KEY").then(|| "sk-admin-example".to_string());
    let config = Config::parse(&toml, Path::new("."), &env).expect("config");
    let server = Server::bind(config).await.expect("bind");
    let base = format!("http://{}/v1/organization/projects", server.public_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let send = {
        let (client, base) = (client.clone(), base.clone());
        move |key: &'static str| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let req = Request::get(base)
                    .header("authorization", format!("Bearer {key}"))
                    .body(Empty::new())
                    .expect("request");
                match client.request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let _ = resp.into_body().collect().await;
                        status
                    }
                    Err(_) => StatusCode::BAD_GATEWAY,
                }
            }
        }
    };
    let done = Arc::new(AtomicBool::new(false));
    let (ok, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut greedy = Vec::new();
    for _ in 0..GREEDY_CLIENTS {
        let (send, done, ok, refused) = (send.clone(), done.clone(), ok.clone(), refused.clone());
        greedy.push(tokio::spawn(async move {
            // Each greedy client keeps 8 requests outstanding.
            let mut set = tokio::task::JoinSet::new();
            while !done.load(Ordering::Relaxed) {
                while set.len() < 8 {
                    set.spawn(send(GREEDY_KEY));
                }
                if let Some(Ok(status)) = set.join_next().await {
                    let n = if status == StatusCode::OK {
                        &ok
                    } else {
                        &refused
                    };
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let start = Instant::now();
    let before = count.load(Ordering::Relaxed);
    let (mut polite, mut polite_refused) = (Vec::new(), 0);
    while start.elapsed() < Duration::from_secs(secs) {
        let sent = Instant::now();
        match send(polite_key).await {
            StatusCode::OK => polite.push(sent.elapsed()),
            _ => polite_refused += 1,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let upstream_rps =
        (count.load(Ordering::Relaxed) - before) as f64 / start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    for g in greedy {
        g.abort();
    }
    let _ = stop_tx.send(());
    let _ = gateway.await;
    polite.sort();
    Run {
        upstream_rps,
        polite,
        polite_refused,
        greedy: (ok.load(Ordering::Relaxed), refused.load(Ordering::Relaxed)),
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let secs = args.first().copied().unwrap_or(60);
    let rpm = args.get(1).copied().unwrap_or(600) as u32;
    let burst = args.get(2).copied().unwrap_or(10) as u32;
    println!(
        "budget {rpm}/min ({:.1}/s), burst {burst}; {GREEDY_CLIENTS} greedy clients x 8 outstanding, \
         1 polite client (one request every 0.5 s); {secs} s per run",
        f64::from(rpm) / 60.0
    );
    for (name, key) in [("fair turns", POLITE_KEY), ("plain FIFO", GREEDY_KEY)] {
        let r = run(secs, rpm, burst, key).await;
        println!(
            "{name:>10}: upstream {:.2} req/s (budget {:.2}/s); polite p50 {:?} p99 {:?} \
             ({} answered, {} refused); greedy {} answered, {} refused",
            r.upstream_rps,
            f64::from(rpm) / 60.0,
            quantile(&r.polite, 0.5),
            quantile(&r.polite, 0.99),
            r.polite.len(),
            r.polite_refused,
            r.greedy.0,
            r.greedy.1,
        );
    }
}
