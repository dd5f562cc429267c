//! A test PKI made fresh by rcgen: a CA written to `ca.pem` in a temp directory, and leaf
//! certificates for `localhost` and `127.0.0.1` signed by it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::process::TempDir;

/// A leaf certificate and its key, PEM, plus the certificate's DER to compare with what a
/// server presents.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Leaf {
    /// The private key, for a rustls server.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

/// A test CA and the directory its files live in.
pub struct Pki {
    pub dir: TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    /// `ca.pem` in [`Pki::dir`].
    pub ca_path: PathBuf,
}

impl Pki {
    /// A CA named "openai-admin-gateway test CA" in a fresh temp dir tagged `tag`.
    pub fn new(tag: &str) -> Pki {
        Self::with_ca_name(tag, "openai-admin-gateway test CA")
    }

    /// A CA with common name `ca_name` in a fresh temp dir tagged `tag`.
    pub fn with_ca_name(tag: &str, ca_name: &str) -> Pki {
        let dir = TempDir::new(tag);
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, ca_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let ca_path = dir.write("ca.pem", &ca.pem());
        Pki { dir, ca, ca_path }
    }

    /// A new leaf for `localhost` and `127.0.0.1` with its own key, signed by the CA.
    pub fn leaf(&self, common_name: &str) -> Leaf {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    /// The CA certificate, for a rustls client's roots.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// Writes `cert` and `key` PEM to `cert.pem` / `key.pem` (replacing them) and returns the
    /// two paths.
    pub fn install(&self, cert_pem: &str, key_pem: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.write("cert.pem", cert_pem),
            self.dir.write("key.pem", key_pem),
        )
    }
}

/// `toml` (a test config, which starts with `[server]`) serving TLS with `cert` and `key`.
pub fn with_tls(toml: &str, cert: &Path, key: &Path) -> String {
    assert!(toml.starts_with("[server]\n"), "unexpected config:\n{toml}");
    let lines = format!(
        "[server]\ntls_cert = {:?}\ntls_key = {:?}\n",
        cert.to_str().expect("utf-8 path"),
        key.to_str().expect("utf-8 path")
    );
    toml.replacen("[server]\n", &lines, 1)
}

/// A rustls client config trusting only `ca`, offering `alpn`.
pub fn client_config(ca: &CertificateDer<'static>, alpn: &[&str]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("add the test CA");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    cfg
}
