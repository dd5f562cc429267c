//! The send deadline over TLS.

use super::*;
use support::pki::{client_config, with_tls};

// === 6. TLS ===

/// A TLS connection over `tcp` trusting `ca`, offering `alpn`.
async fn tls_over(
    tcp: TcpStream,
    ca: &rustls::pki_types::CertificateDer<'static>,
    alpn: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let cfg = client_config(ca, &[alpn]);
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let connect = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp);
    within(10, "a TLS handshake", connect).await.expect("TLS")
}

/// Over TLS: a keyed HTTP/1.1 client leaving a large forward unread (small receive buffer),
/// and an HTTP/2 client with a zero window and no key. Both are cut after `send_timeout_ms`,
/// the upstream slot comes back, and a normal request over TLS is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_clients_that_never_read_are_cut() {
    let upstream = start_upstream().await;
    let pki = support::pki::Pki::new("send-deadline-tls");
    let leaf = pki.leaf("gateway");
    let (cert, key) = pki.install(&leaf.cert_pem, &leaf.key_pem);
    let toml = GatewayConfig::new(&upstream.base_url()).toml().replacen(
        "[server]\n",
        &format!("[server]\nsend_timeout_ms = {SEND_TIMEOUT_MS}\n"),
        1,
    );
    let gw = start_gateway(&with_tls(&toml, &cert, &key)).await;
    let ca = pki.ca_der();

    let mut h1 = tls_over(small_window_tcp(gw.addr).await, &ca, "http/1.1").await;
    let request = format!(
        "GET /v1/_test/bytes?n=50000000 HTTP/1.1\r\nhost: localhost\r\n\
         authorization: Bearer {CLIENT_KEY}\r\n\r\n"
    );
    h1.write_all(request.as_bytes()).await.expect("write");
    let head = read_head(&mut h1).await;
    assert!(head.starts_with("HTTP/1.1 200"), "unexpected head: {head}");

    let heads = Arc::new(AtomicUsize::new(0));
    let tls = tls_over(
        TcpStream::connect(gw.addr).await.expect("connect"),
        &ca,
        "h2",
    )
    .await;
    let h2 = tokio::spawn(zero_window_h2(
        tls,
        USER_PATH,
        None,
        heads.clone(),
        Instant::now(),
    ));
    wait_until(10, "the HTTP/2 response head", || {
        heads.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(gauge(&gw, "gateway_upstream_in_flight").await, 1.0);

    wait_metric(&gw, 10, "gateway_send_timeouts_total", 2.0).await;
    let (status, _) = within(10, "the HTTP/2 connection to be cut", h2)
        .await
        .expect("h2 client");
    assert_eq!(status, 401);
    read_to_close(&mut h1, 10).await;
    wait_metric(&gw, 5, "gateway_upstream_in_flight", 0.0).await;

    let tls = tls_over(
        TcpStream::connect(gw.addr).await.expect("connect"),
        &ca,
        "http/1.1",
    )
    .await;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("HTTP/1.1 over TLS");
    tokio::spawn(conn);
    send_on(&mut sender, Method::GET, USER_PATH, CLIENT_KEY)
        .await
        .assert_status(200);
    assert_settled(gw.admin_addr, "after the test").await;
}
