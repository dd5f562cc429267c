//! `server.workers`: the real binary with two worker threads, each on its own listener
//! (`SO_REUSEPORT`). Which worker took a connection is read from the gateway's own debug line
//! `connection accepted` (fields `worker` and `peer`), matched to the client's local port.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use http::{Method, Request};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use support::process::{output_text, run_cli, GatewayProcess, TempDir};
use support::upstream::Fault;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const WORKERS: usize = 2;
/// Connections opened at most while waiting for the kernel to hand both workers one.
const MAX_TRIES: usize = 64;

/// `cfg` as TOML with `workers` and JSON logs in `[server]`.
fn toml_with_workers(cfg: &GatewayConfig, workers: usize) -> String {
    cfg.toml().replacen(
        "[server]\n",
        &format!("[server]\nworkers = {workers}\nlog_format = \"json\"\n"),
        1,
    )
}

/// The binary serving `cfg` with two workers, logging each accepted connection.
struct Running {
    gw: GatewayProcess,
    addr: SocketAddr,
    admin: SocketAddr,
    path: PathBuf,
    _dir: TempDir,
}

async fn start(mut cfg: GatewayConfig, tag: &str) -> Running {
    let dir = TempDir::new(tag);
    let (addr, admin) = cfg.free_ports();
    let path = dir.write("gateway.toml", &toml_with_workers(&cfg, WORKERS));
    let mut gw = GatewayProcess::spawn_args(
        &["--config", path.to_str().expect("utf-8 path")],
        &[
            (ADMIN_KEY_ENV, ADMIN_KEY),
            ("RUST_LOG", "info,openai_admin_gateway::server=debug"),
        ],
    );
    gw.wait_listening(addr).await;
    gw.wait_listening(admin).await;
    Running {
        gw,
        addr,
        admin,
        path,
        _dir: dir,
    }
}

/// The JSON log lines so far.
fn json_lines(gw: &GatewayProcess) -> Vec<Value> {
    gw.stderr_text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The worker that logged accepting a connection from `peer`, if it has.
fn worker_of(gw: &GatewayProcess, peer: SocketAddr) -> Option<u64> {
    let peer = peer.to_string();
    json_lines(gw)
        .iter()
        .find(|v| v["message"] == "connection accepted" && v["peer"] == peer.as_str())
        .and_then(|v| v["worker"].as_u64())
}

/// Waits for the accept line of `peer` and returns its worker.
async fn wait_worker_of(gw: &mut GatewayProcess, peer: SocketAddr) -> u64 {
    let start = Instant::now();
    loop {
        if let Some(w) = worker_of(gw, peer) {
            return w;
        }
        gw.assert_running();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no `connection accepted` line for {peer}; stderr:\n{}",
            gw.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One kept-alive HTTP/1.1 connection and the worker that accepted it.
struct Conn {
    sender: http1::SendRequest<TestBody>,
    worker: u64,
}

async fn connect(gw: &mut GatewayProcess, addr: SocketAddr) -> Conn {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let local = stream.local_addr().expect("local addr");
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let worker = wait_worker_of(gw, local).await;
    Conn { sender, worker }
}

/// Opens connections until every worker has accepted at least one (the kernel picks the
/// listener by a hash of the addresses), and at least `min` in all.
async fn connect_to_every_worker(
    gw: &mut GatewayProcess,
    addr: SocketAddr,
    min: usize,
) -> Vec<Conn> {
    let mut conns = Vec::new();
    while conns.len() < min || per_worker(&conns).len() < WORKERS {
        assert!(
            conns.len() < MAX_TRIES,
            "{MAX_TRIES} connections and still not every worker accepted one: {:?}",
            per_worker(&conns)
        );
        conns.push(connect(gw, addr).await);
    }
    conns
}

/// Connections per worker index.
fn per_worker(conns: &[Conn]) -> BTreeMap<u64, usize> {
    let mut by = BTreeMap::new();
    for c in conns {
        *by.entry(c.worker).or_insert(0) += 1;
    }
    by
}

fn get(path: &str, key: &str) -> Request<TestBody> {
    Request::builder()
        .method(Method::GET)
        .uri(path)
        .header("host", "gateway")
        .header("authorization", format!("Bearer {key}"))
        .body(empty())
        .expect("request")
}

#[tokio::test]
async fn connections_are_spread_over_both_workers_and_all_served() {
    let upstream = start_upstream().await;
    let mut run = start(GatewayConfig::new(&upstream.base_url()), "workers-spread").await;
    let listening: Vec<Value> = json_lines(&run.gw)
        .into_iter()
        .filter(|v| v["message"] == "gateway listening")
        .collect();
    assert_eq!(listening.len(), 1, "{}", run.gw.stderr_text());
    assert_eq!(listening[0]["workers"], WORKERS);

    // 40 fresh connections, one request each: every one is served, by one of the two.
    let mut conns = Vec::new();
    for i in 0..40 {
        let mut c = connect(&mut run.gw, run.addr).await;
        let resp = within(10, "a response", async {
            c.sender.ready().await.expect("connection ready");
            let resp = c
                .sender
                .send_request(get(&format!("/v1/echo/spread-{i}"), CLIENT_KEY))
                .await
                .expect("request");
            TestResponse::collect(resp).await.expect("body")
        })
        .await;
        resp.assert_status(200);
        assert!(c.worker < WORKERS as u64, "worker index {}", c.worker);
        conns.push(c);
    }
    let by = per_worker(&conns);
    // All 40 on one listener would be a 1 in 2^39 draw of the kernel's hash.
    assert_eq!(by.len(), WORKERS, "connections per worker: {by:?}");
    assert_eq!(upstream.total(), 40);

    let status = run.gw.terminate(30);
    assert!(status.success(), "{status}\n{}", run.gw.stderr_text());
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_on_both_workers() {
    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    cfg.shutdown_grace_secs = 20;
    cfg.timeout_ms = 30_000;
    let mut run = start(cfg, "workers-drain").await;
    let conns = connect_to_every_worker(&mut run.gw, run.addr, 4).await;
    let by = per_worker(&conns);

    // One slow request in flight on every connection, so on both workers.
    let mut in_flight = Vec::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("/v1/echo/slow-{i}"))
            .header("host", "gateway")
            .header("authorization", format!("Bearer {CLIENT_KEY}"))
            .header("x-fake-gate", "slow")
            .body(full("in-flight body"))
            .expect("request");
        in_flight.push(tokio::spawn(async move {
            c.sender.ready().await.expect("connection ready");
            let resp = c
                .sender
                .send_request(req)
                .await
                .map_err(|e| e.to_string())?;
            TestResponse::collect(resp).await
        }));
    }
    let n = in_flight.len();
    wait_until(10, "every slow request to reach the upstream", || {
        upstream.in_flight() == n
    })
    .await;

    run.gw.signal("TERM");
    // Every worker has closed its listener: new connections are refused.
    let start = Instant::now();
    while TcpStream::connect(run.addr).await.is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the public port still accepts 5s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both workers are draining with their in-flight connections open (a probe above may
    // have been accepted as the signal landed: at least that many, not exactly).
    for w in 0..WORKERS as u64 {
        let open = by.get(&w).copied().unwrap_or(0) as u64;
        let what = format!("worker {w} draining at least {open} connection(s)");
        run.gw
            .wait_for_line(5, &what, |l| {
                serde_json::from_str::<Value>(l).is_ok_and(|v| {
                    v["message"] == "draining"
                        && v["worker"] == w
                        && v["open_connections"].as_u64() >= Some(open)
                })
            })
            .await;
    }
    assert!(
        in_flight.iter().all(|t| !t.is_finished()),
        "an in-flight request was cut at shutdown"
    );

    upstream.gate("slow").open();
    for t in in_flight {
        let resp = within(10, "an in-flight response", t)
            .await
            .expect("task")
            .expect("an in-flight request failed during the drain");
        resp.assert_status(200);
        assert_eq!(resp.json()["body_len"], "in-flight body".len());
    }
    let status = run.gw.wait_exit(15);
    let log = run.gw.stderr_text();
    assert!(status.success(), "{status}\n{log}");
    for w in 0..WORKERS as u64 {
        assert!(
            json_lines(&run.gw)
                .iter()
                .any(|v| v["message"] == "all connections closed" && v["worker"] == w),
            "worker {w} did not report a complete drain:\n{log}"
        );
    }
}

#[tokio::test]
async fn a_reload_reaches_the_open_connections_of_every_worker() {
    let upstream = start_upstream().await;
    let cfg = GatewayConfig::new(&upstream.base_url());
    let mut run = start(cfg.clone(), "workers-reload").await;
    let mut conns = connect_to_every_worker(&mut run.gw, run.addr, 4).await;
    for c in &mut conns {
        send_on(
            &mut c.sender,
            Method::GET,
            "/v1/echo/before",
            OTHER_CLIENT_KEY,
        )
        .await
        .assert_status(200);
    }

    // `other-client` is removed; `test-client` stays.
    let mut next = cfg.clone();
    next.listen = run.addr.to_string();
    next.admin_listen = run.admin.to_string();
    next.default_clients = false;
    next.extra = client_toml("test-client", CLIENT_KEY, "");
    std::fs::write(&run.path, toml_with_workers(&next, WORKERS)).expect("rewrite config");
    run.gw.signal("HUP");
    run.gw
        .wait_for_line(10, "configuration reloaded", |l| {
            l.contains("configuration reloaded")
        })
        .await;

    // The same kept-alive connections, on both workers, see the new clients at once.
    for c in &mut conns {
        let refused = send_on(
            &mut c.sender,
            Method::GET,
            "/v1/echo/after",
            OTHER_CLIENT_KEY,
        )
        .await;
        assert_openai_error(&refused, 401, "invalid_request_error", "invalid_api_key");
        send_on(&mut c.sender, Method::GET, "/v1/echo/after", CLIENT_KEY)
            .await
            .assert_status(200);
    }
    assert_eq!(per_worker(&conns).len(), WORKERS);
    assert_eq!(upstream.count("GET", "/v1/echo/after"), conns.len());
    let status = run.gw.terminate(30);
    assert!(status.success(), "{status}\n{}", run.gw.stderr_text());
}

#[test]
fn zero_workers_is_a_config_error_naming_the_key() {
    let dir = TempDir::new("workers-zero");
    let cfg = GatewayConfig::new("http://127.0.0.1:9/v1");
    let path = dir.write("gateway.toml", &toml_with_workers(&cfg, 0));
    let path = path.to_str().expect("utf-8 path");
    let env = [(ADMIN_KEY_ENV, ADMIN_KEY)];
    for args in [
        vec!["check-config", "--config", path],
        vec!["--config", path],
    ] {
        let out = run_cli(&args, &env, "");
        let text = output_text(&out);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.lines().any(|l| l.contains("server.workers:")),
            "{args:?}: {text}"
        );
    }
}

/// Sends a user write and hangs up as soon as the upstream has it (its `nth` write), before the
/// upstream (which applies it at once and answers after `delay_ms`) has answered.
async fn write_and_hang_up(addr: SocketAddr, role: &str, upstream: &Upstream, nth: usize) {
    let body = format!(r#"{{"role":"{role}"}}"#);
    let raw = format!(
        "POST {USER_PATH} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {CLIENT_KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    sock.write_all(raw.as_bytes()).await.expect("write");
    wait_until(5, "the upstream to receive the write", || {
        upstream.count("POST", USER_PATH) == nth
    })
    .await;
    drop(sock);
}

/// The audit lines of user writes so far.
fn audit_lines(gw: &GatewayProcess) -> Vec<Value> {
    json_lines(gw)
        .into_iter()
        .filter(|v| v["target"] == "openai_admin_gateway::audit" && v["method"] == "POST")
        .collect()
}

// Multi-threaded: `terminate` blocks this thread while the fake upstream still has to answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_client_hangs_up_still_evicts_and_outlives_the_drain() {
    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    cfg.timeout_ms = 30_000;
    let mut run = start(cfg, "workers-hangup").await;
    let base = format!("http://{}", run.addr);
    let fetch = || req(Method::GET, &format!("{base}{USER_PATH}")).bearer(CLIENT_KEY);

    // Cached with the old role, then a write whose client leaves before the answer.
    let first = fetch().send().await;
    first.assert_status(200);
    let old_role = first.json()["role"].as_str().unwrap_or("").to_string();
    let new_role = if old_role == "owner" {
        "reader"
    } else {
        "owner"
    };
    upstream.inject("POST", USER_PATH, Fault::new().delay_ms(600).times(1));
    write_and_hang_up(run.addr, new_role, &upstream, 1).await;
    run.gw
        .wait_for_line(5, "the audit line of the write", |l| {
            l.contains("openai_admin_gateway::audit") && l.contains("\"method\":\"POST\"")
        })
        .await;
    // Whichever worker takes this connection, the user is no longer cached.
    let next = fetch().send().await;
    next.assert_status(200);
    assert!(
        !next.cache_status().contains("hit"),
        "the old user was served from the cache: {}",
        next.cache_status()
    );
    assert_eq!(next.json()["role"], new_role);
    assert_eq!(upstream.count("GET", USER_PATH), 2);

    // Again, with SIGTERM while the upstream still holds the write: the worker that took it
    // has no connection left and stops at once, and the write still completes before exit.
    upstream.inject("POST", USER_PATH, Fault::new().delay_ms(1500).times(1));
    write_and_hang_up(run.addr, &old_role, &upstream, 2).await;
    let status = run.gw.terminate(30);
    let log = run.gw.stderr_text();
    assert!(status.success(), "{status}\n{log}");
    let audit = audit_lines(&run.gw);
    assert_eq!(audit.len(), 2, "an audit line per write:\n{log}");
    for a in &audit {
        assert_eq!(a["upstream_status"], 200, "{log}");
    }
    assert!(
        log.contains("waiting for writes whose clients left"),
        "the second write was not waited for:\n{log}"
    );
    let _ = run.admin;
}
