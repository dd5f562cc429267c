//! `upstream.ca_file`: extra trusted roots for the upstream (a TLS-inspecting corporate proxy,
//! a private endpoint).
//!
//! A small HTTPS fake of the Admin API (tokio-rustls + hyper, ALPN `h2` and `http/1.1`) with a
//! certificate for `localhost` / `127.0.0.1` from a CA made fresh by rcgen. A gateway with
//! `base_url = "https://localhost:PORT/v1"` and `ca_file = <the CA>` reaches it (over HTTP/2,
//! which the gateway's client negotiates when offered) and caches what it gets; the same
//! gateway without `ca_file` trusts only the webpki roots, refuses the certificate and answers
//! 502 `upstream_unavailable`. `check-config` names `upstream.ca_file` when the file is missing
//! or holds no certificate.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use support::pki::{Leaf, Pki};
use support::process::{output_text, run_cli, TempDir};
use support::*;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

const USER_ID: &str = "user_abc";

// === certificates ===

/// A fresh CA (written to `ca.pem`) and the fake upstream's leaf for `localhost` /
/// `127.0.0.1`, signed by it.
fn upstream_pki(tag: &str) -> (Pki, Leaf) {
    let pki = Pki::with_ca_name(tag, "openai-admin-gateway upstream test CA");
    let leaf = pki.leaf("fake upstream");
    (pki, leaf)
}

// === an HTTPS fake upstream ===

/// One request as the HTTPS fake received it.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path_and_query: String,
    version: Version,
    /// `:authority` (HTTP/2) or `Host` (HTTP/1.1).
    authority: String,
    /// `Authorization` was exactly `Bearer ADMIN_KEY`.
    admin_auth: bool,
}

#[derive(Default)]
struct TlsState {
    requests: Mutex<Vec<Seen>>,
    /// ALPN protocol of every completed handshake (`-` for none).
    handshakes: Mutex<Vec<String>>,
    /// Handshakes that failed (e.g. the client refused the certificate).
    failed_handshakes: AtomicUsize,
    next_id: AtomicUsize,
}

/// An HTTPS server on `127.0.0.1:0` answering like the Admin API for `user_abc`.
struct TlsUpstream {
    addr: SocketAddr,
    state: Arc<TlsState>,
    accept: JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl TlsUpstream {
    async fn start(leaf: &Leaf, alpn: &[&str]) -> TlsUpstream {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der.clone()], leaf.private_key())
            .expect("server certificate");
        cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the HTTPS fake");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(TlsState::default());
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, st) = (acceptor.clone(), st.clone());
                tokio::spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(_) => {
                            st.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    let negotiated = tls
                        .get_ref()
                        .1
                        .alpn_protocol()
                        .map_or("-".to_string(), |p| String::from_utf8_lossy(p).into_owned());
                    st.handshakes.lock().unwrap().push(negotiated);
                    let svc = service_fn(move |req| answer(st.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsUpstream {
            addr,
            state,
            accept,
        }
    }

    /// The gateway's `upstream.base_url`: by name, so the certificate's DNS name is checked.
    fn base_url(&self) -> String {
        format!("https://localhost:{}/v1", self.addr.port())
    }

    fn requests(&self) -> Vec<Seen> {
        self.state.requests.lock().unwrap().clone()
    }

    fn handshakes(&self) -> Vec<String> {
        self.state.handshakes.lock().unwrap().clone()
    }

    fn failed_handshakes(&self) -> usize {
        self.state.failed_handshakes.load(Ordering::SeqCst)
    }
}

fn user_json(id: &str) -> serde_json::Value {
    json!({
        "object": "organization.user",
        "id": id,
        "name": "First Last",
        "email": format!("{id}@example.com"),
        "role": "owner",
        "added_at": 1711471533,
    })
}

/// The exact bytes the fake answers for `GET {USER_PATH}`.
fn user_body() -> Vec<u8> {
    serde_json::to_vec_pretty(&user_json(USER_ID)).expect("json")
}

async fn answer(
    st: Arc<TlsState>,
    req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get("host")
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        })
        .unwrap_or_default();
    let auths: Vec<_> = req.headers().get_all(AUTHORIZATION).iter().collect();
    let admin_auth =
        auths.len() == 1 && auths[0].as_bytes() == format!("Bearer {ADMIN_KEY}").as_bytes();
    st.requests.lock().unwrap().push(Seen {
        method: req.method().clone(),
        path_and_query: req
            .uri()
            .path_and_query()
            .map_or(String::new(), |p| p.as_str().to_string()),
        version: req.version(),
        authority,
        admin_auth,
    });
    let id = st.next_id.fetch_add(1, Ordering::SeqCst) + 1;
    let (status, body) = if !admin_auth {
        let err = json!({"error": {"message": "Invalid authorization header",
            "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}});
        (
            StatusCode::UNAUTHORIZED,
            serde_json::to_vec(&err).expect("json"),
        )
    } else if req.method() == Method::GET && req.uri().path() == USER_PATH {
        (StatusCode::OK, user_body())
    } else if req.method() == Method::GET && req.uri().path() == "/v1/organization/users" {
        let list = json!({"object": "list", "data": [user_json(USER_ID)],
            "first_id": USER_ID, "last_id": USER_ID, "has_more": false});
        (StatusCode::OK, serde_json::to_vec(&list).expect("json"))
    } else {
        let err = json!({"error": {"message": "not found", "type": "invalid_request_error",
            "param": null, "code": "not_found"}});
        (
            StatusCode::NOT_FOUND,
            serde_json::to_vec(&err).expect("json"),
        )
    };
    let resp = Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .header("x-request-id", format!("tls-upstream-req-{id}"))
        .body(full(body))
        .expect("response");
    Ok(resp)
}

// === gateway config ===

/// The test config for `base_url`, with `ca_file` in `[upstream]` when given, and timeouts
/// generous enough for a loaded machine.
fn gateway_toml(base_url: &str, ca_file: Option<&Path>) -> String {
    let mut cfg = GatewayConfig::new(base_url);
    cfg.connect_timeout_ms = 10_000;
    cfg.timeout_ms = 30_000;
    let toml = cfg.toml();
    match ca_file {
        Some(path) => with_upstream_keys(
            &toml,
            &format!("ca_file = {:?}", path.to_str().expect("utf-8 path")),
        ),
        None => toml,
    }
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_file_makes_a_private_upstream_trusted_and_h2_is_used_when_offered() {
    let (pki, leaf) = upstream_pki("upstream-ca");
    let upstream = TlsUpstream::start(&leaf, &["h2", "http/1.1"]).await;
    // One worker, so one upstream pool: each worker has its own, and the
    // client's two connections could land on two workers.
    let toml = gateway_toml(&upstream.base_url(), Some(&pki.ca_path)).replacen(
        "[server]\n",
        "[server]\nworkers = 1\n",
        1,
    );
    assert!(toml.contains("workers = 1"), "{toml}");
    let gw = start_gateway(&toml).await;

    // A miss goes to the HTTPS upstream and is stored with the upstream's exact bytes.
    let first = gw.get_user(USER_ID).await;
    first.assert_status(200);
    assert_eq!(
        first.body.as_ref(),
        user_body().as_slice(),
        "{}",
        first.describe()
    );
    assert_eq!(
        first.cache_status(),
        format!("{CACHE_NAME}; fwd=miss; stored"),
        "{}",
        first.describe()
    );
    assert_eq!(first.request_id(), "tls-upstream-req-1");
    first.assert_no_admin_key();

    // The next one is a hit: no second upstream call.
    let second = gw.get_user(USER_ID).await;
    second.assert_status(200);
    second.hit_ttl();
    assert_eq!(second.body, first.body);

    // Forwarded requests use the same trusted upstream.
    let list = gw.get("/v1/organization/users?limit=1").await;
    list.assert_status(200);
    assert_eq!(list.json()["object"], "list", "{}", list.describe());
    assert_eq!(list.cache_status(), format!("{CACHE_NAME}; fwd=bypass"));

    let seen = upstream.requests();
    let user_gets: Vec<&Seen> = seen
        .iter()
        .filter(|r| r.method == Method::GET && r.path_and_query == USER_PATH)
        .collect();
    assert_eq!(
        user_gets.len(),
        1,
        "one upstream call for the user: {seen:?}"
    );
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        seen[1].path_and_query, "/v1/organization/users?limit=1",
        "{seen:?}"
    );
    let authority = format!("localhost:{}", upstream.addr.port());
    for r in &seen {
        // The upstream offered h2 over ALPN and the gateway's client took it.
        assert_eq!(r.version, Version::HTTP_2, "{r:?}");
        assert!(r.admin_auth, "the admin key replaced the client key: {r:?}");
        assert_eq!(r.authority, authority, "{r:?}");
    }
    // One pooled HTTP/2 connection carried both requests.
    assert_eq!(upstream.handshakes(), ["h2"], "{seen:?}");
    assert_eq!(upstream.failed_handshakes(), 0);

    let text = gw.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            "gateway_upstream_requests_total",
            &[("status", "200")]
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "gateway_upstream_requests_total",
            &[("status", "error")]
        ),
        0.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_offering_only_http1_is_spoken_to_over_http1() {
    let (pki, leaf) = upstream_pki("upstream-ca-h1");
    let upstream = TlsUpstream::start(&leaf, &["http/1.1"]).await;
    let gw = start_gateway(&gateway_toml(&upstream.base_url(), Some(&pki.ca_path))).await;

    gw.get_user(USER_ID).await.assert_status(200);
    gw.get_user(USER_ID).await.hit_ttl();
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].version, Version::HTTP_11, "{seen:?}");
    assert_eq!(
        seen[0].authority,
        format!("localhost:{}", upstream.addr.port())
    );
    assert!(seen[0].admin_auth);
    assert_eq!(upstream.handshakes(), ["http/1.1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ca_file_the_private_upstream_is_untrusted_and_answers_502() {
    let (pki, leaf) = upstream_pki("upstream-no-ca");
    let upstream = TlsUpstream::start(&leaf, &["h2", "http/1.1"]).await;
    let gw = start_gateway(&gateway_toml(&upstream.base_url(), None)).await;

    let resp = gw.get_user(USER_ID).await;
    assert_openai_error(&resp, 502, "gateway_error", "upstream_unavailable");
    // The message is the gateway's fixed text, no TLS detail.
    let message = resp.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        !message.contains("certificate") && !message.contains("localhost"),
        "{message}"
    );
    // Nothing was stored: the next request tries again and fails the same way.
    let again = gw.get_user(USER_ID).await;
    assert_openai_error(&again, 502, "gateway_error", "upstream_unavailable");
    let list = gw.get("/v1/organization/users?limit=1").await;
    assert_openai_error(&list, 502, "gateway_error", "upstream_unavailable");

    // The gateway did try TLS and refused the certificate: no HTTP request got through.
    wait_until(10, "the fake to see the refused handshakes", || {
        upstream.failed_handshakes() >= 1
    })
    .await;
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
    assert!(
        upstream.handshakes().is_empty(),
        "{:?}",
        upstream.handshakes()
    );

    let text = gw.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            "gateway_upstream_requests_total",
            &[("status", "error")]
        ),
        3.0,
        "{text}"
    );

    // The same upstream, the same gateway config plus ca_file: trusted.
    let trusted = start_gateway(&gateway_toml(&upstream.base_url(), Some(&pki.ca_path))).await;
    trusted.get_user(USER_ID).await.assert_status(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_from_another_ca_does_not_help() {
    let (_pki, leaf) = upstream_pki("upstream-ca-a");
    let (other, _) = upstream_pki("upstream-ca-b");
    let upstream = TlsUpstream::start(&leaf, &["h2", "http/1.1"]).await;
    let gw = start_gateway(&gateway_toml(&upstream.base_url(), Some(&other.ca_path))).await;
    let resp = gw.get_user(USER_ID).await;
    assert_openai_error(&resp, 502, "gateway_error", "upstream_unavailable");
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
}

// === check-config ===

fn check_config(dir: &TempDir, ca_file: &Path) -> std::process::Output {
    let toml = gateway_toml("https://localhost:9/v1", Some(ca_file));
    let config = dir.write("check.toml", &toml);
    run_cli(
        &["check-config", "--config", config.to_str().expect("utf-8")],
        &[(ADMIN_KEY_ENV, ADMIN_KEY)],
        "",
    )
}

#[test]
fn check_config_accepts_a_ca_file_and_names_a_bad_one() {
    let (pki, _) = upstream_pki("upstream-ca-check");
    let ok = check_config(&pki.dir, &pki.ca_path);
    assert!(ok.status.success(), "{}", output_text(&ok));

    let missing = pki.dir.path().join("no-such-ca.pem");
    let out = check_config(&pki.dir, &missing);
    assert!(!out.status.success(), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("upstream.ca_file") && l.contains("no-such-ca.pem")),
        "{}",
        output_text(&out)
    );

    let not_pem = pki.dir.write("not-a-ca.pem", "this is not a certificate\n");
    let out = check_config(&pki.dir, &not_pem);
    assert!(!out.status.success(), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.lines().any(|l| l.contains("upstream.ca_file")),
        "{}",
        output_text(&out)
    );
}

/// A peer that accepts TCP and then never speaks TLS: `connect_timeout_ms` covers the TLS
/// handshake too, so the gateway gives up with 502 `upstream_unavailable` instead of
/// waiting for `timeout_ms` and answering 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_covers_a_stalled_tls_handshake() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let held = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = silent.accept().await {
            keep.lock().await.push(sock); // accept, hold open, never answer
        }
    });
    let mut cfg = GatewayConfig::new(&format!("https://localhost:{port}/v1"));
    cfg.connect_timeout_ms = 300;
    cfg.timeout_ms = 30_000;
    let gw = start_gateway(&cfg.toml()).await;
    let resp = within(
        20,
        "the gateway to give up on the handshake",
        gw.get_user("user_abc"),
    )
    .await;
    assert_openai_error(&resp, 502, "gateway_error", "upstream_unavailable");
    assert!(!held.lock().await.is_empty(), "the TCP connect did happen");
}
