//! TLS termination on the public listener (`server.tls_cert` / `server.tls_key`): HTTP/1.1 and
//! HTTP/2 (ALPN) over TLS with rustls clients, the official OpenAI Python SDK over TLS, the
//! certificate reloaded on SIGHUP by the real binary (new connections get the new one, open
//! connections keep working), and `check-config` / startup refusing a bad pair.
//!
//! Certificates are made fresh for every test with rcgen: a CA, and leaves for `localhost` and
//! `127.0.0.1` signed by it.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Request, Version};
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use support::pki::{client_config, with_tls, Leaf, Pki};
use support::process::{
    drain, output_text, run_cli, text_of, wait_timeout, Captured, GatewayProcess,
};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

// === TLS clients ===

/// Connects to `addr` and completes a TLS handshake for `server_name`.
async fn tls_connect(
    addr: SocketAddr,
    cfg: rustls::ClientConfig,
    server_name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(server_name.to_string()).expect("server name");
    let fut = async {
        let tcp = TcpStream::connect(addr).await?;
        TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await
    };
    within(30, "a TLS handshake", fut).await
}

/// The certificate the server presented on `stream`.
fn served_cert(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    let certs = stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("the server presented no certificate");
    certs[0].clone().into_owned()
}

/// The ALPN protocol the handshake settled on, as text.
fn alpn(stream: &TlsStream<TcpStream>) -> Option<String> {
    stream
        .get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
}

/// HTTP/1.1 on an established TLS stream.
async fn h1_over(stream: TlsStream<TcpStream>) -> http1::SendRequest<TestBody> {
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake over TLS");
    tokio::spawn(conn);
    sender
}

/// HTTP/2 on an established TLS stream.
async fn h2_over(stream: TlsStream<TcpStream>) -> http2::SendRequest<TestBody> {
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("HTTP/2 handshake over TLS");
    tokio::spawn(conn);
    sender
}

fn get_request(uri: &str, key: &str) -> Request<TestBody> {
    Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header("host", "localhost")
        .header("authorization", format!("Bearer {key}"))
        .body(empty())
        .expect("request")
}

async fn h1_get(conn: &mut http1::SendRequest<TestBody>, path: &str) -> TestResponse {
    within(30, "a response over HTTP/1.1 + TLS", async {
        conn.ready().await.expect("the connection was closed");
        let resp = conn
            .send_request(get_request(path, CLIENT_KEY))
            .await
            .expect("request over HTTP/1.1 + TLS");
        TestResponse::collect(resp).await.expect("body")
    })
    .await
}

async fn h2_get(conn: &mut http2::SendRequest<TestBody>, url: &str) -> TestResponse {
    within(30, "a response over HTTP/2 + TLS", async {
        conn.ready().await.expect("the connection was closed");
        let resp = conn
            .send_request(get_request(url, CLIENT_KEY))
            .await
            .expect("request over HTTP/2 + TLS");
        TestResponse::collect(resp).await.expect("body")
    })
    .await
}

/// A fake upstream, a CA with one leaf installed, and an in-process gateway terminating TLS.
async fn tls_pair(tag: &str) -> (Upstream, Pki, Leaf, TestGateway) {
    let upstream = start_upstream().await;
    let pki = Pki::new(tag);
    let leaf = pki.leaf("gateway");
    let (cert, key) = pki.install(&leaf.cert_pem, &leaf.key_pem);
    let toml = with_tls(
        &GatewayConfig::new(&upstream.base_url()).toml(),
        &cert,
        &key,
    );
    let gw = start_gateway(&toml).await;
    (upstream, pki, leaf, gw)
}

// === in-process: HTTP/1.1 and HTTP/2 over TLS ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_over_tls_with_a_client_trusting_the_ca() {
    let (upstream, pki, leaf, gw) = tls_pair("tls-h1").await;

    for (alpn_offer, server_name) in [
        (&["http/1.1"][..], "localhost"),
        (&[][..], "localhost"),
        (&["http/1.1"][..], "127.0.0.1"),
    ] {
        let stream = tls_connect(
            gw.addr,
            client_config(&pki.ca_der(), alpn_offer),
            server_name,
        )
        .await
        .unwrap_or_else(|e| panic!("TLS handshake ({alpn_offer:?}, {server_name}): {e}"));
        assert_eq!(served_cert(&stream), leaf.der, "the configured certificate");
        let expected_alpn = (!alpn_offer.is_empty()).then(|| "http/1.1".to_string());
        assert_eq!(alpn(&stream), expected_alpn);
        let mut conn = h1_over(stream).await;
        // Several requests on one keep-alive TLS connection: a miss, then hits.
        let first = h1_get(&mut conn, USER_PATH).await;
        first.assert_status(200);
        assert_eq!(first.version, Version::HTTP_11);
        assert_eq!(first.body, upstream.user_body("user_abc"));
        let second = h1_get(&mut conn, USER_PATH).await;
        second.assert_status(200);
        second.hit_ttl();
        let fwd = h1_get(&mut conn, "/v1/organization/users?limit=1").await;
        fwd.assert_status(200);
        assert_eq!(fwd.json()["object"], "list");
        assert_eq!(fwd.version, Version::HTTP_11);
    }
    assert_eq!(upstream.count("GET", USER_PATH), 1);
    // Gateway errors come back over TLS in OpenAI's shape too.
    let stream = tls_connect(gw.addr, client_config(&pki.ca_der(), &[]), "localhost")
        .await
        .expect("TLS handshake");
    let mut conn = h1_over(stream).await;
    let outside = h1_get(&mut conn, "/healthz").await;
    assert_openai_error(&outside, 404, "invalid_request_error", "not_found");

    // The admin listener stays plain HTTP.
    gw.admin(Method::GET, "/healthz")
        .send()
        .await
        .assert_status(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_real_untrusted_or_cleartext_clients_get_nothing() {
    let (upstream, pki, _leaf, gw) = tls_pair("tls-untrusted").await;

    // A client trusting another CA refuses the handshake.
    let other = Pki::new("tls-other-ca");
    let err = tls_connect(gw.addr, client_config(&other.ca_der(), &[]), "localhost").await;
    assert!(
        err.is_err(),
        "a client trusting another CA completed the handshake"
    );
    // A name the certificate does not cover is refused.
    let err = tls_connect(gw.addr, client_config(&pki.ca_der(), &[]), "example.com").await;
    assert!(err.is_err(), "the certificate was accepted for example.com");

    // Cleartext HTTP on the TLS port is never answered with an HTTP response.
    let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let request = format!(
        "GET {USER_PATH} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {CLIENT_KEY}\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let read = within(30, "the gateway to close a cleartext connection", async {
        tcp.read_to_end(&mut buf).await
    })
    .await;
    let text = String::from_utf8_lossy(&buf);
    assert!(
        !text.starts_with("HTTP/"),
        "cleartext request answered in cleartext ({read:?}): {text}"
    );
    assert!(!text.contains("organization.user"), "{text}");
    assert_eq!(upstream.total(), 0, "{:?}", upstream.requests());

    // The gateway still serves proper TLS clients afterwards.
    let stream = tls_connect(gw.addr, client_config(&pki.ca_der(), &[]), "localhost")
        .await
        .expect("TLS handshake");
    let mut conn = h1_over(stream).await;
    h1_get(&mut conn, USER_PATH).await.assert_status(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_negotiated_over_alpn() {
    let (upstream, pki, leaf, gw) = tls_pair("tls-h2").await;
    let port = gw.addr.port();

    // A hand-made connection offering h2 first: the server picks h2.
    let stream = tls_connect(
        gw.addr,
        client_config(&pki.ca_der(), &["h2", "http/1.1"]),
        "localhost",
    )
    .await
    .expect("TLS handshake");
    assert_eq!(alpn(&stream).as_deref(), Some("h2"));
    assert_eq!(served_cert(&stream), leaf.der);
    let mut conn = h2_over(stream).await;
    let url = |path: &str| format!("https://localhost:{port}{path}");
    // Concurrent streams on the one connection.
    let mut handles = Vec::new();
    for id in ["user_abc", "user_def", "user_ghi", "user_0001"] {
        let mut c = conn.clone();
        let u = url(&format!("/v1/organization/users/{id}"));
        handles.push(tokio::spawn(async move { (id, h2_get(&mut c, &u).await) }));
    }
    for h in handles {
        let (id, resp) = h.await.expect("task");
        resp.assert_status(200);
        assert_eq!(resp.version, Version::HTTP_2, "{id}");
        assert_eq!(resp.json()["id"], id);
    }
    let hit = h2_get(&mut conn, &url(USER_PATH)).await;
    assert_eq!(hit.version, Version::HTTP_2);
    hit.hit_ttl();
    let fwd = h2_get(&mut conn, &url("/v1/organization/users?limit=3")).await;
    fwd.assert_status(200);
    assert_eq!(fwd.version, Version::HTTP_2);
    assert_eq!(fwd.json()["data"].as_array().map(Vec::len), Some(3));

    // A general-purpose client (hyper-rustls, both versions enabled) ends up on HTTP/2.
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_config(&pki.ca_der(), &[]))
        .https_only()
        .enable_all_versions()
        .build();
    let client = Client::builder(TokioExecutor::new()).build::<_, TestBody>(https);
    for path in [USER_PATH, "/v1/organization/users/user_def"] {
        let resp = within(30, "a hyper-rustls response", async {
            let resp = client
                .request(get_request(&url(path), CLIENT_KEY))
                .await
                .expect("hyper-rustls request");
            TestResponse::collect(resp).await.expect("body")
        })
        .await;
        resp.assert_status(200);
        assert_eq!(resp.version, Version::HTTP_2, "{path}");
        resp.hit_ttl();
    }
    assert_eq!(upstream.count("GET", USER_PATH), 1);
}

// === the official Python SDK over TLS ===

/// Retrieves a user through the gateway with the official SDK over TLS, trusting the test CA
/// through `DefaultHttpxClient(verify=...)`, and prints what it got.
const SDK_SCRIPT: &str = r#"
import os
import sys

for var in ("OPENAI_API_KEY", "OPENAI_ADMIN_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID",
            "OPENAI_PROJECT_ID", "SSL_CERT_FILE", "SSL_CERT_DIR"):
    os.environ.pop(var, None)

import openai

kwargs = {"verify": os.environ["T_CA"]}
if os.environ["T_HTTP2"] == "1":
    kwargs["http2"] = True
client = openai.OpenAI(
    admin_api_key=os.environ["T_KEY"],
    base_url=os.environ["T_BASE_URL"],
    http_client=openai.DefaultHttpxClient(**kwargs),
    max_retries=0,
    timeout=30,
)
user = client.admin.organization.users.retrieve(os.environ["T_USER"])
print("id=" + user.id)
raw = client.admin.organization.users.with_raw_response.retrieve(os.environ["T_USER"])
print("http_version=" + raw.http_response.http_version)
print("id_again=" + raw.parse().id)
sys.stdout.flush()
"#;

/// Runs `python -c script` with `env`, killing it after `limit`. Returns (success, stdout,
/// stderr). Blocking: call from `spawn_blocking`.
fn run_python(
    python: &Path,
    args: &[&str],
    env: &[(&str, String)],
    limit: Duration,
) -> (bool, String, String) {
    let mut cmd = Command::new(python);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    for var in support::sdk::STEERING_VARS {
        cmd.env_remove(var);
    }
    cmd.env("NO_PROXY", "*");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
    let out = Captured::default();
    let err = Captured::default();
    drain(child.stdout.take().expect("stdout"), out.clone());
    drain(child.stderr.take().expect("stderr"), err.clone());
    let status = wait_timeout(&mut child, limit);
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "python did not finish within {limit:?}; stderr so far:\n{}",
            text_of(&err)
        );
    });
    // The pipes close when the process exits; give the reader threads a moment.
    std::thread::sleep(Duration::from_millis(50));
    (status.success(), text_of(&out), text_of(&err))
}

/// Runs [`SDK_SCRIPT`] against a TLS gateway; `http2` turns on HTTP/2 in httpx.
async fn sdk_over_tls(python: PathBuf, http2: bool) {
    let (upstream, pki, _leaf, gw) = tls_pair("tls-sdk").await;
    let base_url = format!("https://localhost:{}/v1", gw.addr.port());
    let env = vec![
        ("T_CA", pki.ca_path.to_str().expect("utf-8").to_string()),
        ("T_KEY", CLIENT_KEY.to_string()),
        ("T_BASE_URL", base_url.clone()),
        ("T_USER", "user_abc".to_string()),
        ("T_HTTP2", if http2 { "1" } else { "0" }.to_string()),
    ];
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run_python(&python, &["-c", SDK_SCRIPT], &env, Duration::from_secs(180))
    })
    .await
    .expect("python runner panicked");
    assert!(
        ok,
        "the SDK call over TLS ({base_url}, http2={http2}) failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.contains(&"id=user_abc"), "stdout:\n{stdout}");
    assert!(lines.contains(&"id_again=user_abc"), "stdout:\n{stdout}");
    let version = if http2 { "HTTP/2" } else { "HTTP/1.1" };
    assert!(
        lines.contains(&format!("http_version={version}").as_str()),
        "expected {version}; stdout:\n{stdout}"
    );
    // Two retrieves, one upstream call: the second was a cache hit.
    assert_eq!(upstream.count("GET", USER_PATH), 1);
    let last = upstream.last_request(USER_PATH);
    assert_eq!(
        last.headers
            .get("authorization")
            .map(|v| v.as_bytes().to_vec()),
        Some(format!("Bearer {ADMIN_KEY}").into_bytes()),
        "the admin key replaced the SDK's key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_over_tls() {
    let Some(python) = support::sdk::test_python("the OpenAI Python SDK TLS test") else {
        return;
    };
    sdk_over_tls(python, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_over_tls_with_http2_when_h2_is_installed() {
    let Some(python) = support::sdk::test_python("the OpenAI Python SDK TLS test") else {
        return;
    };
    let probe = python.clone();
    let (has_h2, _, _) = tokio::task::spawn_blocking(move || {
        run_python(&probe, &["-c", "import h2"], &[], Duration::from_secs(60))
    })
    .await
    .expect("probe panicked");
    if !has_h2 {
        println!(
            "note: the `h2` package is not installed in {}; skipping the SDK-over-HTTP/2 variant \
             (pip install 'httpx[http2]' or h2 to run it)",
            python.display()
        );
        return;
    }
    sdk_over_tls(python, true).await;
}

// === the real binary: SIGHUP reload, bad pairs ===

/// A fake upstream, a CA with leaf `A` installed, and the real binary serving TLS with it.
async fn served_with_tls(
    tag: &str,
) -> (Upstream, Pki, Leaf, GatewayProcess, SocketAddr, SocketAddr) {
    let upstream = start_upstream().await;
    let pki = Pki::new(tag);
    let a = pki.leaf("certificate A");
    let (cert, key) = pki.install(&a.cert_pem, &a.key_pem);
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    let (addr, admin) = cfg.free_ports();
    let config = pki
        .dir
        .write("gateway.toml", &with_tls(&cfg.toml(), &cert, &key));
    let env = [("NO_COLOR", "1"), (ADMIN_KEY_ENV, ADMIN_KEY)];
    let mut gw = GatewayProcess::spawn_logged(&config, &env);
    gw.wait_listening(addr).await;
    gw.wait_listening(admin).await;
    (upstream, pki, a, gw, addr, admin)
}

/// The certificate a fresh connection to `addr` is served.
async fn fresh_cert(addr: SocketAddr, pki: &Pki) -> CertificateDer<'static> {
    let stream = tls_connect(addr, client_config(&pki.ca_der(), &[]), "localhost")
        .await
        .expect("TLS handshake");
    served_cert(&stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_the_new_certificate_to_new_connections_and_keeps_old_ones() {
    let (upstream, pki, a, mut gw, addr, admin) = served_with_tls("tls-reload").await;
    let port = addr.port();

    // Connections opened before the reload: HTTP/1.1 and HTTP/2, both served A.
    let old_h1 = tls_connect(
        addr,
        client_config(&pki.ca_der(), &["http/1.1"]),
        "localhost",
    )
    .await
    .expect("TLS handshake");
    assert_eq!(served_cert(&old_h1), a.der, "certificate A at start");
    let mut old_h1 = h1_over(old_h1).await;
    h1_get(&mut old_h1, USER_PATH).await.assert_status(200);
    let old_h2 = tls_connect(addr, client_config(&pki.ca_der(), &["h2"]), "localhost")
        .await
        .expect("TLS handshake");
    assert_eq!(served_cert(&old_h2), a.der);
    let mut old_h2 = h2_over(old_h2).await;
    let h2_url = format!("https://localhost:{port}{USER_PATH}");
    h2_get(&mut old_h2, &h2_url).await.assert_status(200);

    // Replace the files with certificate B and reload.
    let b = pki.leaf("certificate B");
    assert_ne!(a.der, b.der);
    pki.install(&b.cert_pem, &b.key_pem);
    gw.signal("HUP");
    let sent = Instant::now();
    loop {
        gw.assert_running();
        if fresh_cert(addr, &pki).await == b.der {
            break;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "new connections still get certificate A 5s after SIGHUP; stderr:\n{}",
            gw.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("certificate B served {:?} after SIGHUP", sent.elapsed());

    // A new connection with B serves requests (from the cache kept across the reload).
    let new = tls_connect(addr, client_config(&pki.ca_der(), &[]), "localhost")
        .await
        .expect("TLS handshake");
    assert_eq!(served_cert(&new), b.der);
    let mut new = h1_over(new).await;
    let resp = h1_get(&mut new, USER_PATH).await;
    resp.assert_status(200);
    resp.hit_ttl();

    // The connections opened before the reload still work.
    let resp = h1_get(&mut old_h1, USER_PATH).await;
    resp.assert_status(200);
    resp.hit_ttl();
    h1_get(&mut old_h1, "/v1/organization/users?limit=1")
        .await
        .assert_status(200);
    let resp = h2_get(&mut old_h2, &h2_url).await;
    resp.assert_status(200);
    assert_eq!(resp.version, Version::HTTP_2);
    assert_eq!(upstream.count("GET", USER_PATH), 1);

    assert_eq!(config_reloads(admin, "ok").await, 1.0);
    assert_eq!(config_reloads(admin, "error").await, 0.0);
    let status = gw.terminate(30);
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_mismatched_pair_keeps_the_running_certificate() {
    let (_upstream, pki, a, mut gw, addr, admin) = served_with_tls("tls-bad-reload").await;
    assert_eq!(fresh_cert(addr, &pki).await, a.der);

    // Certificate B with a key that belongs to neither certificate.
    let b = pki.leaf("certificate B");
    let stranger = pki.leaf("stranger");
    pki.install(&b.cert_pem, &stranger.key_pem);
    gw.signal("HUP");
    let start = Instant::now();
    while config_reloads(admin, "error").await < 1.0 {
        gw.assert_running();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the bad reload was not counted within 10s; stderr:\n{}",
            gw.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(config_reloads(admin, "ok").await, 0.0);
    gw.assert_running();
    let log = gw.stderr_text();
    assert!(
        log.contains("server.tls_key"),
        "the refused reload does not name server.tls_key:\n{log}"
    );
    assert!(!log.contains(ADMIN_KEY), "the admin key is in the log");

    // Still certificate A, still serving.
    let stream = tls_connect(addr, client_config(&pki.ca_der(), &[]), "localhost")
        .await
        .expect("TLS handshake after a refused reload");
    assert_eq!(served_cert(&stream), a.der);
    let mut conn = h1_over(stream).await;
    h1_get(&mut conn, USER_PATH).await.assert_status(200);

    // Fixing the files and reloading again installs B.
    pki.install(&b.cert_pem, &b.key_pem);
    gw.signal("HUP");
    let start = Instant::now();
    while fresh_cert(addr, &pki).await != b.der {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "certificate B not served 5s after a good SIGHUP; stderr:\n{}",
            gw.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = gw.terminate(30);
    assert!(status.success(), "exit status {status}");
}

// === check-config and startup ===

/// Writes a config using `cert` / `key` and runs `check-config` on it.
fn check_config(pki: &Pki, cert: &Path, key: &Path) -> std::process::Output {
    let toml = with_tls(
        &GatewayConfig::new("http://127.0.0.1:9/v1").toml(),
        cert,
        key,
    );
    let config = pki.dir.write("check.toml", &toml);
    run_cli(
        &["check-config", "--config", config.to_str().expect("utf-8")],
        &[(ADMIN_KEY_ENV, ADMIN_KEY)],
        "",
    )
}

/// The lines of stderr that name `key`.
fn problem_lines(out: &std::process::Output, key: &str) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains(key))
        .map(str::to_string)
        .collect()
}

#[test]
fn check_config_accepts_a_matching_pair() {
    let pki = Pki::new("tls-check-ok");
    let leaf = pki.leaf("gateway");
    let (cert, key) = pki.install(&leaf.cert_pem, &leaf.key_pem);
    let out = check_config(&pki, &cert, &key);
    assert!(out.status.success(), "{}", output_text(&out));
}

#[test]
fn check_config_names_server_tls_cert_when_the_certificate_is_missing_or_not_a_certificate() {
    let pki = Pki::new("tls-check-cert");
    let leaf = pki.leaf("gateway");
    let (_, key) = pki.install(&leaf.cert_pem, &leaf.key_pem);

    let missing = pki.dir.path().join("no-such-cert.pem");
    let out = check_config(&pki, &missing, &key);
    assert!(!out.status.success(), "{}", output_text(&out));
    let lines = problem_lines(&out, "server.tls_cert");
    assert!(
        lines.iter().any(|l| l.contains("no-such-cert.pem")),
        "no problem naming server.tls_cert and the path: {}",
        output_text(&out)
    );
    assert!(
        problem_lines(&out, "server.tls_key").is_empty(),
        "the key is fine: {}",
        output_text(&out)
    );

    // A file that holds no certificate (the key in its place).
    let not_a_cert = pki.dir.write("not-a-cert.pem", &leaf.key_pem);
    let out = check_config(&pki, &not_a_cert, &key);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        !problem_lines(&out, "server.tls_cert").is_empty(),
        "{}",
        output_text(&out)
    );
}

#[test]
fn check_config_names_server_tls_key_when_the_key_is_missing_or_does_not_match() {
    let pki = Pki::new("tls-check-key");
    let a = pki.leaf("certificate A");
    let b = pki.leaf("certificate B");
    let (cert, _) = pki.install(&a.cert_pem, &a.key_pem);

    let missing = pki.dir.path().join("no-such-key.pem");
    let out = check_config(&pki, &cert, &missing);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        problem_lines(&out, "server.tls_key")
            .iter()
            .any(|l| l.contains("no-such-key.pem")),
        "{}",
        output_text(&out)
    );

    // B's key with A's certificate.
    let wrong_key = pki.dir.write("wrong-key.pem", &b.key_pem);
    let out = check_config(&pki, &cert, &wrong_key);
    assert!(!out.status.success(), "{}", output_text(&out));
    let lines = problem_lines(&out, "server.tls_key");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("does not match") || l.contains("mismatch")),
        "no clear problem naming server.tls_key for a key that does not match: {}",
        output_text(&out)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("configuration OK"),
        "{}",
        output_text(&out)
    );

    // A file that holds no key (the certificate in its place).
    let not_a_key = pki.dir.write("not-a-key.pem", &a.cert_pem);
    let out = check_config(&pki, &cert, &not_a_key);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        !problem_lines(&out, "server.tls_key").is_empty(),
        "{}",
        output_text(&out)
    );
}

#[test]
fn the_binary_refuses_to_start_with_a_mismatched_pair() {
    let pki = Pki::new("tls-refuse");
    let a = pki.leaf("certificate A");
    let b = pki.leaf("certificate B");
    let (cert, key) = pki.install(&a.cert_pem, &b.key_pem);
    let mut cfg = GatewayConfig::new("http://127.0.0.1:9/v1");
    let (addr, _) = cfg.free_ports();
    let config = pki
        .dir
        .write("gateway.toml", &with_tls(&cfg.toml(), &cert, &key));
    // Serving is the default command; run_cli fails the test if it does not exit within 30 s.
    let out = run_cli(
        &["--config", config.to_str().expect("utf-8")],
        &[(ADMIN_KEY_ENV, ADMIN_KEY), ("RUST_LOG", "info")],
        "",
    );
    assert!(
        !out.status.success(),
        "the gateway started with a mismatched pair: {}",
        output_text(&out)
    );
    assert!(
        !problem_lines(&out, "server.tls_key").is_empty(),
        "the startup error does not name server.tls_key: {}",
        output_text(&out)
    );
    assert!(std::net::TcpStream::connect(addr).is_err());
}
