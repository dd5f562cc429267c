//! Everything that is not the cached route is forwarded unchanged, streamed both ways.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;
use support::upstream::{sse_event, REDACTED_ADMIN_AUTH};
use support::*;

const ECHO_PATH: &str = "/v1/echo/a%20b/~c/x.y%3A";
const ECHO_QUERY: &str = "?q=1&q=2&enc=%20%2B&empty=&flag";

fn odd_body(tag: &str) -> Bytes {
    let mut body: Vec<u8> = (0..=255u8).collect();
    body.extend_from_slice(b"\r\n\0 tail ");
    body.extend_from_slice(tag.as_bytes());
    Bytes::from(body)
}

fn values(headers: &http::HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

#[tokio::test]
async fn methods_paths_queries_headers_and_bodies_pass_through_unchanged() {
    let (upstream, gw) = start_pair().await;
    let target = format!("{ECHO_PATH}{ECHO_QUERY}");
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ];
    for method in methods {
        let body = if method == Method::GET {
            Bytes::new()
        } else {
            odd_body(method.as_str())
        };
        let resp = gw
            .req(method.clone(), &target)
            .header("x-custom", "v1")
            .header("x-custom", "v2")
            .header("content-type", "application/octet-stream")
            .header("openai-beta", "assistants=v2")
            .header("user-agent", "OpenAI/Python 1.99.0")
            .body(body.clone())
            .send()
            .await;
        resp.assert_status(200);
        assert_eq!(
            resp.header("x-echo-method").as_deref(),
            Some(method.as_str())
        );

        let seen = upstream.requests().pop().expect("a request");
        assert_eq!(seen.method, method);
        assert_eq!(seen.path_and_query, target, "raw path and query");
        assert_eq!(
            seen.body.as_ref(),
            Some(&body),
            "{method} body must be byte-identical"
        );
        assert_eq!(values(&seen.headers, "x-custom"), ["v1", "v2"]);
        assert_eq!(
            values(&seen.headers, "content-type"),
            ["application/octet-stream"]
        );
        // The default organization has no organization_id here: none is sent (tests/orgs.rs
        // covers the header when one is configured).
        assert!(values(&seen.headers, "openai-organization").is_empty());
        assert_eq!(values(&seen.headers, "openai-beta"), ["assistants=v2"]);
        assert_eq!(
            values(&seen.headers, "user-agent"),
            ["OpenAI/Python 1.99.0"]
        );

        assert_eq!(
            resp.request_id(),
            seen.request_id,
            "the upstream's x-request-id"
        );
        assert_eq!(resp.header("x-fake-response").as_deref(), Some("yes"));
        assert_eq!(resp.header_all("x-fake-multi"), ["one", "two"]);
        let echo = resp.json();
        assert_eq!(echo["path"], target.as_str());
        assert_eq!(echo["body_len"], body.len());
        resp.assert_no_admin_key();
    }
}

#[tokio::test]
async fn head_passes_through() {
    let (upstream, gw) = start_pair().await;
    let resp = gw.req(Method::HEAD, "/v1/echo/head?x=1").send().await;
    resp.assert_status(200);
    assert_eq!(resp.header("x-echo-method").as_deref(), Some("HEAD"));
    assert!(resp.body.is_empty());
    let seen = upstream.last_request("/v1/echo/head");
    assert_eq!(seen.method, Method::HEAD);
    assert_eq!(seen.path_and_query, "/v1/echo/head?x=1");
    assert_eq!(resp.request_id(), seen.request_id);
}

#[tokio::test]
async fn upstream_status_and_error_bodies_pass_through_unchanged() {
    let (upstream, gw) = start_pair().await;
    for status in [201u16, 204, 400, 404, 409, 429, 500, 503] {
        let resp = gw
            .req(Method::POST, "/v1/echo/status")
            .header("x-fake-status", &status.to_string())
            .body("payload")
            .send()
            .await;
        resp.assert_status(status);
        let seen = upstream.last_request("/v1/echo/status");
        assert_eq!(resp.request_id(), seen.request_id, "status {status}");
        if status != 204 {
            assert_eq!(
                resp.json()["method"],
                "POST",
                "status {status}: upstream body"
            );
        }
    }
}

#[tokio::test]
async fn upstream_sees_the_admin_key_its_own_host_and_no_client_key() {
    let (upstream, gw) = start_pair().await;
    for h2 in [false, true] {
        let mut r = gw.req(Method::POST, "/v1/echo/auth").body("x");
        if h2 {
            r = r.h2c();
        }
        let resp = r.send().await;
        resp.assert_status(200);
        resp.assert_no_admin_key();

        let seen = upstream.last_request("/v1/echo/auth");
        let auth = values(&seen.headers, "authorization");
        assert_eq!(auth, [format!("Bearer {ADMIN_KEY}")], "h2={h2}");
        assert_eq!(
            values(&seen.headers, "host"),
            [upstream.authority()],
            "h2={h2}"
        );
        for (name, value) in &seen.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            assert!(
                !value.contains(CLIENT_KEY),
                "client key forwarded in {name}"
            );
        }
        let echoed = resp.json()["headers"].to_string();
        assert!(
            echoed.contains(REDACTED_ADMIN_AUTH),
            "the echo saw the admin key"
        );
        assert!(!echoed.contains(CLIENT_KEY));
    }
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_dropped() {
    let (upstream, gw) = start_pair().await;
    gw.req(Method::POST, "/v1/echo/hop")
        .header("connection", "keep-alive, x-hop-named")
        .header("x-hop-named", "hop-value")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("trailer", "x-checksum")
        .header("x-end-to-end", "kept")
        .body("hop body")
        .send()
        .await
        .assert_status(200);
    let seen = upstream.last_request("/v1/echo/hop");
    for name in [
        "x-hop-named",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
    ] {
        assert!(
            !seen.headers.contains_key(name),
            "hop-by-hop {name} reached the upstream"
        );
    }
    for value in values(&seen.headers, "connection") {
        assert!(
            !value.contains("x-hop-named"),
            "connection: {value} forwarded"
        );
    }
    assert_eq!(values(&seen.headers, "x-end-to-end"), ["kept"]);
    assert_eq!(seen.body.as_deref(), Some(&b"hop body"[..]));
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_dropped() {
    let (_upstream, gw) = start_pair().await;
    let resp = gw
        .req(Method::GET, "/v1/echo/hop-response")
        .header("x-fake-hop-response", "1")
        .send()
        .await;
    resp.assert_status(200);
    for name in ["x-resp-hop", "keep-alive", "proxy-authenticate"] {
        assert!(
            resp.header(name).is_none(),
            "hop-by-hop {name} reached the client"
        );
    }
    for value in resp.header_all("connection") {
        assert!(
            !value.contains("x-resp-hop"),
            "connection: {value} came back"
        );
    }
    assert_eq!(resp.header("x-fake-response").as_deref(), Some("yes"));
}

#[tokio::test]
async fn list_users_is_forwarded_with_its_query() {
    let (upstream, gw) = start_pair().await;
    let path = "/v1/organization/users?limit=2&after=user_0001";
    for _ in 0..2 {
        let resp = gw.get(path).await;
        resp.assert_status(200);
        let body = resp.json();
        assert_eq!(body["object"], "list");
        let ids: Vec<&str> = body["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|u| u["id"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(ids, ["user_0002", "user_0003"]);
        assert!(
            !resp.cache_status().contains("hit"),
            "{}",
            resp.cache_status()
        );
    }
    assert_eq!(upstream.count("GET", "/v1/organization/users"), 2);
    assert_eq!(
        upstream
            .last_request("/v1/organization/users")
            .path_and_query,
        path
    );
}

#[tokio::test]
async fn path_prefix_and_base_path_are_mapped() {
    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&format!("http://{}/base/v2", upstream.addr));
    cfg.path_prefix = "/openai/v1".into();
    let gw = start_gateway(&cfg.toml()).await;

    gw.get("/openai/v1/echo/x?y=1").await.assert_status(200);
    let seen = upstream.requests().pop().expect("a request");
    assert_eq!(seen.path_and_query, "/base/v2/echo/x?y=1");

    for outside in ["/v1/echo/x", "/openai/v1x/echo", "/openai/echo"] {
        let resp = gw.get(outside).await;
        assert_openai_error(&resp, 404, "invalid_request_error", "not_found");
    }
    assert_eq!(upstream.total(), 1);
}

#[tokio::test]
async fn cached_route_follows_a_custom_prefix() {
    let upstream = start_upstream().await;
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    cfg.path_prefix = "/openai/v1".into();
    let gw = start_gateway(&cfg.toml()).await;
    let path = "/openai/v1/organization/users/user_abc";
    let first = gw.get(path).await;
    first.assert_status(200);
    assert_eq!(
        first.cache_status(),
        format!("{CACHE_NAME}; fwd=miss; stored")
    );
    gw.get(path).await.hit_ttl();
    assert_eq!(upstream.count("GET", "/v1/organization/users/user_abc"), 1);
}

// === streaming ===

/// Reads frames until `pred(total bytes so far)` holds; returns the bytes read.
async fn read_until(
    body: &mut Incoming,
    what: &str,
    mut pred: impl FnMut(&[u8]) -> bool,
) -> Vec<u8> {
    let mut seen = Vec::new();
    within(20, what, async {
        while !pred(&seen) {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        seen.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => panic!("body error while waiting for {what}: {e}"),
                None => panic!(
                    "body ended while waiting for {what}; got {} bytes",
                    seen.len()
                ),
            }
        }
    })
    .await;
    seen
}

#[tokio::test]
async fn sse_is_streamed_event_by_event() {
    let (upstream, gw) = start_pair().await;
    let resp = gw
        .req(Method::GET, "/v1/_test/sse?n=4&interval_ms=20&gate=sse")
        .header("accept", "text/event-stream")
        .send_streaming()
        .await
        .expect("SSE request");
    assert_eq!(resp.status(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.as_bytes().to_vec());
    assert_eq!(ct.as_deref(), Some(&b"text/event-stream"[..]));
    let mut body = resp.into_body();
    // The upstream holds the rest of the stream until the gate opens, so the first event can
    // only arrive if the gateway passes it on as it comes.
    let first = sse_event(0);
    let got = read_until(
        &mut body,
        "the first SSE event before the stream ends",
        |s| s.len() >= first.len(),
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&got), first);
    upstream.gate("sse").open();
    let rest = body.collect().await.expect("rest of the stream").to_bytes();
    let expected: String = (1..4).map(sse_event).collect();
    assert_eq!(String::from_utf8_lossy(&rest), expected);
}

#[tokio::test]
async fn timeout_ms_does_not_cut_a_flowing_body() {
    let (_upstream, gw) = start_pair_with(|c| c.timeout_ms = 1000).await;
    let resp = gw.get("/v1/_test/sse?n=5&interval_ms=500").await;
    resp.assert_status(200);
    let expected: String = (0..5).map(sse_event).collect();
    assert_eq!(
        resp.text(),
        expected,
        "the stream outlived timeout_ms and must be whole"
    );
}

const BIG: u64 = 64 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_of_64_mib_is_streamed() {
    let (upstream, gw) = start_pair().await;
    let path = format!("/v1/_test/bytes?n={BIG}&chunk={CHUNK}&gate=download");
    let resp = gw
        .req(Method::GET, &path)
        .send_streaming()
        .await
        .expect("download");
    assert_eq!(resp.status(), 200);
    let length = resp
        .headers()
        .get("content-length")
        .map(|v| v.as_bytes().to_vec());
    assert_eq!(
        length.as_deref(),
        Some(BIG.to_string().as_bytes()),
        "content-length kept"
    );
    let mut body = resp.into_body();
    let first = read_until(
        &mut body,
        "the first chunk while the upstream holds the rest",
        |s| s.len() >= CHUNK,
    )
    .await;
    assert_eq!(
        upstream.downloaded(),
        CHUNK as u64,
        "the upstream sent only one chunk so far"
    );
    upstream.gate("download").open();

    let mut received = first.len() as u64;
    assert_eq!(first[..], pattern_chunk(0, first.len())[..]);
    while let Some(frame) = within(60, "the rest of the download", body.frame()).await {
        let frame = frame.unwrap_or_else(|e| panic!("download broke after {received} bytes: {e}"));
        if let Ok(data) = frame.into_data() {
            assert!(
                data == pattern_chunk(received, data.len()),
                "corrupt at {received}"
            );
            received += data.len() as u64;
        }
    }
    assert_eq!(received, BIG);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_of_64_mib_is_streamed() {
    let (upstream, gw) = start_pair().await;
    let upstream = Arc::new(upstream);
    let (tx, body) = channel_body(4);
    let saw_first_chunk_early = Arc::new(AtomicBool::new(false));
    let producer = tokio::spawn({
        let (upstream, early) = (upstream.clone(), saw_first_chunk_early.clone());
        async move {
            tx.send(pattern_chunk(0, CHUNK)).await;
            // Hold the rest back until the upstream has the first chunk: a gateway that
            // buffers the whole upload never gets there.
            let arrived = tokio::time::timeout(std::time::Duration::from_secs(20), async {
                while upstream.uploaded() < CHUNK as u64 {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            })
            .await;
            if arrived.is_err() {
                tx.fail("the upstream never saw the first chunk").await;
                return;
            }
            early.store(true, Ordering::SeqCst);
            let mut sent = CHUNK as u64;
            while sent < BIG {
                if !tx.send(pattern_chunk(sent, CHUNK)).await {
                    return;
                }
                sent += CHUNK as u64;
            }
        }
    });
    let result = gw
        .req(Method::POST, "/v1/_test/upload")
        .header("content-type", "application/octet-stream")
        .stream(body)
        .try_send()
        .await;
    producer.await.expect("producer");
    assert!(
        saw_first_chunk_early.load(Ordering::SeqCst),
        "the upstream did not receive the first chunk before the client sent the rest \
         (the gateway buffers uploads); result: {result:?}"
    );
    let resp = result.expect("upload response");
    resp.assert_status(200);
    let report: Value = resp.json();
    assert_eq!(report["len"], BIG);
    assert_eq!(
        report["pattern_ok"], true,
        "upload bytes corrupted: {report}"
    );
}

#[tokio::test]
async fn upstream_body_broken_mid_way_reaches_the_client_broken() {
    let (_upstream, gw) = start_pair().await;
    let path = "/v1/_test/bytes?n=1048576&chunk=16384&break_after=262144";
    for h2 in [false, true] {
        let mut r = gw.req(Method::GET, path);
        if h2 {
            r = r.h2c();
        }
        match r.try_send().await {
            Err(_) => {}
            Ok(resp) => panic!(
                "h2={h2}: a broken upstream body arrived as a complete response: status {}, \
                 {} of 1048576 bytes",
                resp.status,
                resp.body.len()
            ),
        }
    }
}

// === HTTP/2 ===

#[tokio::test]
async fn h2c_requests_work() {
    let (upstream, gw) = start_pair().await;
    let user = gw
        .req(Method::GET, "/v1/organization/users/user_abc")
        .h2c()
        .send()
        .await;
    user.assert_status(200);
    assert_eq!(user.version, Version::HTTP_2);
    assert_eq!(user.body, upstream.user_body("user_abc"));
    let hit = gw
        .req(Method::GET, "/v1/organization/users/user_abc")
        .h2c()
        .send()
        .await;
    hit.hit_ttl();

    let body = odd_body("h2");
    let echo = gw
        .req(Method::PUT, "/v1/echo/h2?z=9")
        .h2c()
        .body(body.clone())
        .send()
        .await;
    echo.assert_status(200);
    assert_eq!(echo.version, Version::HTTP_2);
    let seen = upstream.last_request("/v1/echo/h2");
    assert_eq!(seen.method, Method::PUT);
    assert_eq!(seen.path_and_query, "/v1/echo/h2?z=9");
    assert_eq!(seen.body.as_ref(), Some(&body));
    assert_eq!(echo.request_id(), seen.request_id);
}

// === small bodies ===

#[tokio::test]
async fn small_body_cut_short_is_refused_and_never_reaches_the_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (upstream, gw) = start_pair().await;
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/organization/invites HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"email\":"
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.shutdown().await.expect("half-close");
    let mut raw = Vec::new();
    within(10, "the gateway's answer", s.read_to_end(&mut raw))
        .await
        .expect("read");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 400"), "got: {text}");
    assert!(text.contains(r#""code":"incomplete_body""#), "got: {text}");
    assert_eq!(
        upstream.count("POST", "/v1/organization/invites"),
        0,
        "a request body known to be incomplete was forwarded"
    );
}
