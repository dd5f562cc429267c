//! Reaching the upstream: the rustls client config, and [`Connector`]:
//! TCP (no delay, keep-alive 60 s), then TLS with ALPN `h2`/`http/1.1` for
//! `https://`, all under one deadline (`connect_timeout_ms`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::body::BoxError;

/// Builds the rustls client config: webpki roots plus `ca_file`'s certificates.
pub fn tls_client_config(
    ca_file: Option<&std::path::Path>,
) -> std::io::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(pem_error(path))? {
            roots
                .add(cert.map_err(pem_error(path))?)
                .map_err(std::io::Error::other)?;
            added += 1;
        }
        if added == 0 {
            return Err(std::io::Error::other(format!(
                "upstream.ca_file: no certificate in {}",
                path.display()
            )));
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn pem_error(
    path: &std::path::Path,
) -> impl Fn(rustls::pki_types::pem::Error) -> std::io::Error + '_ {
    move |e| std::io::Error::other(format!("{}: {e}", path.display()))
}

/// TCP keep-alive probes start after this long idle (as hyper-util's
/// connector was set).
const KEEPALIVE: Duration = Duration::from_secs(60);

/// Opens connections to the upstream's origin.
pub(super) struct Connector {
    /// Host to connect to (brackets of an IPv6 literal removed).
    host: String,
    /// Port to connect to.
    port: u16,
    /// TLS with this server name, for `https://`; None for `http://`.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// `connect_timeout_ms`: one deadline over TCP and TLS.
    timeout: Duration,
}

/// A connected socket, plain or TLS.
pub(super) enum Stream {
    /// `http://`.
    Plain(TcpStream),
    /// `https://` (boxed: the TLS state is large).
    Tls(Box<TlsStream<TcpStream>>),
}

/// The connect did not finish within `connect_timeout_ms`.
#[derive(Debug, thiserror::Error)]
#[error("connect (TCP + TLS) timed out")]
struct ConnectTimedOut;

impl Connector {
    /// A connector for `base`'s origin, trusting `tls`'s roots for `https://`.
    pub(super) fn new(
        base: &Uri,
        mut tls: rustls::ClientConfig,
        timeout: Duration,
    ) -> io::Result<Self> {
        let https = base.scheme_str() != Some("http");
        let raw_host = base.host().unwrap_or("localhost");
        let host = raw_host.trim_start_matches('[').trim_end_matches(']');
        let port = base.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| io::Error::other(format!("upstream.base_url host: {e}")))?;
            Some((TlsConnector::from(Arc::new(tls)), name))
        } else {
            None
        };
        Ok(Self {
            host: host.to_string(),
            port,
            tls,
            timeout,
        })
    }

    /// Connects (TCP, then TLS for `https://`) within `connect_timeout_ms`.
    /// Returns the stream and whether ALPN chose HTTP/2.
    pub(super) async fn connect(&self) -> Result<(Stream, bool), BoxError> {
        match tokio::time::timeout(self.timeout, self.open()).await {
            Ok(r) => r.map_err(Into::into),
            Err(_) => Err(Box::new(ConnectTimedOut)),
        }
    }

    async fn open(&self) -> io::Result<(Stream, bool)> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        socket2::SockRef::from(&tcp)
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(KEEPALIVE))?;
        let Some((tls, name)) = &self.tls else {
            return Ok((Stream::Plain(tcp), false));
        };
        let tls = tls.connect(name.clone(), tcp).await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        Ok((Stream::Tls(Box::new(tls)), h2))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
