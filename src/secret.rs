//! Secrets: the admin key, held once and shown nowhere, and the SHA-256
//! digests that stand in for client keys.
//!
//! `AdminKey` keeps the key and its ready-made `Authorization` header value
//! (marked sensitive so HTTP/2 HPACK never indexes it). Its `Debug` prints a
//! placeholder and it has no `Display`, so the key cannot reach a log line
//! or a panic message through formatting.
//!
//! Client keys are never stored: [`digest`] and [`hash_key`] give the
//! SHA-256 the config holds, and [`new_key`] makes a fresh random key.

use std::fmt;
use std::fmt::Write as _;

use http::HeaderValue;
use sha2::{Digest, Sha256};

/// The organization's admin key.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminKey {
    /// The raw key, only read to build headers and in config checks.
    key: String,
    /// `Bearer <key>`, sensitive.
    header: HeaderValue,
}

impl AdminKey {
    /// Wraps a key; `None` when it is empty or cannot be a header value.
    pub fn new(key: &str) -> Option<Self> {
        if key.is_empty() {
            return None;
        }
        let mut header = HeaderValue::from_str(&format!("Bearer {key}")).ok()?;
        header.set_sensitive(true);
        Some(Self {
            key: key.to_string(),
            header,
        })
    }

    /// The `Authorization` value to send upstream.
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }

    /// The raw key. Only for comparisons; never format it.
    pub fn expose(&self) -> &str {
        &self.key
    }
}

impl fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminKey(<redacted>)")
    }
}

/// SHA-256 of `bytes`.
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Lower-case SHA-256 hex of a key, as `key_sha256` expects.
pub fn hash_key(key: &str) -> String {
    hex(&digest(key.as_bytes()))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A fresh random client key: `prefix` followed by 256 bits from the OS
/// RNG as 64 hex characters.
pub fn new_key(prefix: &str) -> std::io::Result<String> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(format!("{prefix}{}", hex(&raw)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_key_is_sha256_hex() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn new_keys_are_long_and_distinct() {
        let a = new_key("oag_").unwrap();
        let b = new_key("oag_").unwrap();
        assert!(a.starts_with("oag_") && a.len() == 4 + 64);
        assert_ne!(a, b);
    }

    #[test]
    fn debug_is_redacted_and_header_sensitive() {
        let k = AdminKey::new("sk-admin-xyz").unwrap();
        assert_eq!(format!("{k:?}"), "AdminKey(<redacted>)");
        assert!(k.header().is_sensitive());
        assert!(!format!("{:?}", k.header()).contains("sk-admin-xyz"));
        assert!(AdminKey::new("").is_none());
        assert!(AdminKey::new("bad\nkey").is_none());
    }
}
