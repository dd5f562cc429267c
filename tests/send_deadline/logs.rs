//! The access line of a cut request (the real binary).

use super::*;

// === 7. the access line ===

/// The real binary, JSON logs: a keyed HTTP/2 client with a zero window is cut, and its
/// request's access line says why (`error` starting with `send_timeout`), with its status
/// and `body="incomplete"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_line_of_a_cut_response_says_send_timeout() {
    use support::process::{GatewayProcess, TempDir};
    let upstream = start_upstream().await;
    let dir = TempDir::new("send-deadline-logs");
    let mut cfg = GatewayConfig::new(&upstream.base_url());
    let (addr, admin) = cfg.free_ports();
    let toml = cfg.toml().replacen(
        "[server]\n",
        &format!("[server]\nsend_timeout_ms = {SEND_TIMEOUT_MS}\n"),
        1,
    );
    let mut gw = GatewayProcess::spawn_json(&dir, &toml, "info", addr, admin).await;

    let heads = Arc::new(AtomicUsize::new(0));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let client = zero_window_h2(tcp, USER_PATH, Some(CLIENT_KEY), heads, Instant::now());
    let (status, _) = within(10, "the connection to be cut", client).await;
    assert_eq!(status, 200);

    let is_cut = |l: &str| l.contains("openai_admin_gateway::access") && l.contains("send_timeout");
    gw.wait_for_line(10, "the access line of the cut request", is_cut)
        .await;
    let text = gw.stderr_text();
    let line = text.lines().find(|l| is_cut(l)).expect("the line");
    let json: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
    let field = |k: &str| {
        json.get(k)
            .or_else(|| json.get("fields").and_then(|f| f.get(k)))
    };
    assert_eq!(
        field("status").and_then(|v| v.as_u64()),
        Some(200),
        "{line}"
    );
    assert_eq!(
        field("body").and_then(|v| v.as_str()),
        Some("incomplete"),
        "{line}"
    );
    let error = field("error").and_then(|v| v.as_str()).unwrap_or_default();
    assert!(error.starts_with("send_timeout"), "{line}");
    assert!(!text.contains(ADMIN_KEY), "the admin key was logged");
    let metrics = req(Method::GET, &format!("http://{admin}/metrics"))
        .send()
        .await;
    assert_eq!(
        metric(&metrics.text(), "gateway_send_timeouts_total", &[]),
        1.0
    );
    assert_settled(admin, "after the test").await;
}
