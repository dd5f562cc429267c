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
//! Usage: `bench_ceiling --listen 127.0.0.1:PORT --body-file PATH [--bodies N]`.
//! Worker threads = the CPUs it may run on (`taskset` restricts them), the
//! same rule the gateway's runtime follows.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == name {
            return args.next();
        }
    }
    None
}

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
    // Copied one by one, so each is an allocation of its own.
    let bodies: std::sync::Arc<[Bytes]> = (0..n).map(|_| Bytes::copy_from_slice(&body)).collect();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(listen).await?;
            eprintln!("bench_ceiling listening on {}", listener.local_addr()?);
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let bodies = bodies.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let body = bodies[pick(req.uri().path(), bodies.len())].clone();
                        let mut r = Response::new(Full::new(body));
                        r.headers_mut()
                            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
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
