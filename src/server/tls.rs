//! TLS termination for the public listener (rustls).
//!
//! The certificate and key are loaded through `rustls-pki-types` PEM
//! parsing and checked to match at start. They sit behind an `ArcSwap`, so a
//! reload installs a new pair for new handshakes while open connections
//! keep theirs.

use std::io;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// Loads and checks a certificate chain and its private key.
pub fn load(files: &TlsFiles) -> io::Result<CertifiedKey> {
    let bad = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what}: {}: {e}", path.display()),
        )
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| bad("server.tls_cert", &files.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("server.tls_cert", &files.cert, &e))?;
    if certs.is_empty() {
        return Err(bad("server.tls_cert", &files.cert, &"no certificate found"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            bad("server.tls_key", &files.key, &"no PEM private key found")
        }
        e => bad("server.tls_key", &files.key, &e),
    })?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    CertifiedKey::from_der(certs, key, &provider).map_err(|e| {
        bad(
            "server.tls_key",
            &files.key,
            &format!("does not match server.tls_cert or is unusable: {e}"),
        )
    })
}

/// The current certificate, swappable on reload.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl CertStore {
    /// Loads `files` into a new store.
    pub fn new(files: &TlsFiles) -> io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(load(files)?),
        }))
    }

    /// Re-reads `files`; keeps the current pair if they are bad.
    pub fn reload(&self, files: &TlsFiles) -> io::Result<()> {
        let next = load(files)?;
        self.current.store(Arc::new(next));
        Ok(())
    }

    /// A rustls acceptor serving this store, offering h2 and http/1.1.
    pub fn acceptor(self: &Arc<Self>) -> io::Result<TlsAcceptor> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(cfg)))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
