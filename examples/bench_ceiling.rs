//! The ceiling for the load benchmark (`benches/load/run.sh`): a bare hyper
//! HTTP/1.1 server that answers every request with the same stored bytes
//! (`content-type: application/json`), with no auth, cache, routing,
//! metrics or logging. Whatever the gateway does on a cache hit costs the
//! difference between this and the gateway.
//!
//! With `--bodies N` it keeps N copies of the bytes, each its own
//! allocation, and answers a path ending in digits with copy
//! `digits % N`: the ceiling for hits spread over N users, whose bytes
//! are not all hot in the CPU's caches (the kernel copies each answer from
//! wherever it lies), as a cache's are.
//!
//! With `--contract KEY` it also does what the gateway's contract asks of
//! every hit, and nothing else: it checks `Authorization: Bearer KEY` by
//! its SHA-256 (401 otherwise) and sends `Cache-Status: ...; hit; ttl=N`,
//! `Age`, `Date` and a fresh `x-request-id`, as a gateway hit does. No
//! cache, routing, scopes, rate limit, metrics or logs: the ceiling for a
//! hit that keeps the contract (issue 23's goal 6 asks against the bare
//! one above).
//!
//! Usage: `bench_ceiling --listen 127.0.0.1:PORT --body-file PATH [--bodies N] [--contract KEY]`.
//! Worker threads = the CPUs it may run on (`taskset` restricts them), the
//! same rule the gateway's runtime follows.

#[path = "support/mod.rs"]
mod support;
use support::arg;

use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{AGE, AUTHORIZATION, CONTENT_TYPE, DATE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

fn main() -> std::io::Result<()> {
    let listen: SocketAddr = arg("--listen")
        .unwrap_or_else(|| "127.0.0.1:18082".into())
        .parse()
        .map_err(std::io::Error::other)?;
    let body = match arg("--body-file") {
        Some(p) => Bytes::from(std::fs::read(p)?),
        None => Bytes::from_static(br#"{"object":"organization.user","id":"user-x"}"#),
    };
    let n: usize = arg("--bodies")
        .map(|v| v.parse().map_err(std::io::Error::other))
        .transpose()?
        .unwrap_or(1)
        .max(1);
    // The key's digest, as the gateway keeps its clients' keys.
    let contract: Option<[u8; 32]> = arg("--contract").map(|k| Sha256::digest(k).into());
    // Copied one by one, so each is an allocation of its own.
    let bodies: std::sync::Arc<[Bytes]> = (0..n).map(|_| Bytes::copy_from_slice(&body)).collect();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(listen).await?;
            eprintln!("bench_ceiling listening on {}", listener.local_addr()?);
            loop {
                let stream = support::accept(&listener).await;
                let bodies = bodies.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let body = bodies[pick(req.uri().path(), bodies.len())].clone();
                        let r = match &contract {
                            None => {
                                let mut r = Response::new(Full::new(body));
                                r.headers_mut().insert(
                                    CONTENT_TYPE,
                                    HeaderValue::from_static("application/json"),
                                );
                                r
                            }
                            Some(digest) => contract_hit(&req, digest, body),
                        };
                        async move { Ok::<_, Infallible>(r) }
                    });
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
}

/// The copy a path asks for: its trailing digits modulo `n` (0 without any).
fn pick(path: &str, n: usize) -> usize {
    let digits = path
        .bytes()
        .rev()
        .take_while(u8::is_ascii_digit)
        .take(18)
        .fold((0u64, 1u64), |(v, m), d| {
            (v + u64::from(d - b'0') * m, m * 10)
        })
        .0;
    (digits % n as u64) as usize
}

/// A hit as the contract asks for it (see the module docs).
fn contract_hit(req: &Request<Incoming>, digest: &[u8; 32], body: Bytes) -> Response<Full<Bytes>> {
    let key = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    if key.is_none_or(|k| Sha256::digest(k).as_slice() != digest) {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    }
    thread_local! {
        static NEXT_ID: Cell<u64> = const { Cell::new(0) };
    }
    static STORED: std::sync::OnceLock<(Instant, HeaderValue)> = std::sync::OnceLock::new();
    let (stored, date) = STORED.get_or_init(|| {
        let date = httpdate::fmt_http_date(SystemTime::now());
        (
            Instant::now(),
            HeaderValue::from_str(&date).unwrap_or(HeaderValue::from_static("")),
        )
    });
    let age = stored.elapsed().as_secs();
    let id = NEXT_ID.with(|n| {
        let v = n.get().wrapping_add(1);
        n.set(v);
        v
    });
    let mut r = Response::new(Full::new(body));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(DATE, date.clone());
    if let Ok(v) = HeaderValue::from_str(&format!(
        "openai-admin-gateway; hit; ttl={}",
        3600u64.saturating_sub(age)
    )) {
        h.insert("cache-status", v);
    }
    h.insert(AGE, HeaderValue::from(age));
    if let Ok(v) = HeaderValue::from_str(&format!("gw-{id:016x}")) {
        h.insert("x-request-id", v);
    }
    r
}
