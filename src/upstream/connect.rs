//! Reaching the upstream: the rustls client config, and one deadline on
//! the whole connect (TCP and TLS) of the pooled client's connector.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

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

/// Bounds the whole connect (TCP and TLS) of the wrapped connector.
#[derive(Clone)]
pub(super) struct ConnectTimeout<C> {
    /// The connector (TCP, then TLS).
    inner: C,
    /// `connect_timeout_ms`.
    timeout: Duration,
}

impl<C> ConnectTimeout<C> {
    /// `inner`, bounded by `timeout`.
    pub(super) fn new(inner: C, timeout: Duration) -> Self {
        Self { inner, timeout }
    }
}

/// The connect did not finish within `connect_timeout_ms`.
#[derive(Debug, thiserror::Error)]
#[error("connect (TCP + TLS) timed out")]
struct ConnectTimedOut;

impl<C> tower_service::Service<Uri> for ConnectTimeout<C>
where
    C: tower_service::Service<Uri> + Send,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<
        Box<dyn std::future::Future<Output = std::result::Result<C::Response, BoxError>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connect = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connect).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(Box::new(ConnectTimedOut) as BoxError),
            }
        })
    }
}
