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

/// Why configured key bytes can not be an admin key. Never holds the key
/// or any byte of it: only what is wrong and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    /// Nothing but ASCII white space.
    #[error("the admin key is empty")]
    Empty,
    /// UTF-8's byte-order mark (`EF BB BF`), which some editors save first.
    #[error("the admin key starts with a byte-order mark (EF BB BF); save it without one")]
    ByteOrderMark,
    /// A byte outside ASCII, at this offset of the trimmed key.
    #[error("the admin key holds a non-ASCII byte at offset {0}; keys are visible ASCII")]
    NonAscii(usize),
    /// A control character or an inner space, at this offset.
    #[error(
        "the admin key holds a control character or space at offset {0}; keys are visible ASCII"
    )]
    Control(usize),
}

impl AdminKey {
    /// Wraps a key; `None` when it is not a usable key (see [`AdminKey::from_bytes`]).
    pub fn new(key: &str) -> Option<Self> {
        Self::from_bytes(key.as_bytes()).ok()
    }

    /// The key in `raw` (an environment variable's or a file's bytes) after
    /// trimming ASCII white space. Every byte left must be visible ASCII
    /// (`!` to `~`), as every API key is: a byte-order mark, any other
    /// non-ASCII byte or a control character is refused, so a key file
    /// saved by the wrong editor is a config problem, not an upstream 401
    /// on every request.
    pub fn from_bytes(raw: &[u8]) -> Result<Self, KeyProblem> {
        let key = raw.trim_ascii();
        if key.starts_with(&[0xEF, 0xBB, 0xBF]) {
            return Err(KeyProblem::ByteOrderMark);
        }
        if key.is_empty() {
            return Err(KeyProblem::Empty);
        }
        if let Some((at, b)) = key.iter().enumerate().find(|(_, b)| !b.is_ascii_graphic()) {
            return Err(if b.is_ascii() {
                KeyProblem::Control(at)
            } else {
                KeyProblem::NonAscii(at)
            });
        }
        // Every byte is visible ASCII, so both conversions hold.
        let key = String::from_utf8_lossy(key).into_owned();
        let mut header =
            HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| KeyProblem::Control(0))?;
        header.set_sensitive(true);
        Ok(Self { key, header })
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

    #[test]
    fn key_bytes_must_be_visible_ascii_after_trimming() {
        let ok = AdminKey::from_bytes(b"  sk-admin-abc\r\n").unwrap();
        assert_eq!(ok.expose(), "sk-admin-abc");
        let cases: &[(&[u8], KeyProblem)] = &[
            (b"\xEF\xBB\xBFsk-admin-abc\n", KeyProblem::ByteOrderMark),
            (b" \t\r\n", KeyProblem::Empty),
            (b"", KeyProblem::Empty),
            (b"sk-admin-\xC3\xA9", KeyProblem::NonAscii(9)),
            (b"sk-\xE2\x80\x8Badmin", KeyProblem::NonAscii(3)),
            (b"sk-admin\x00abc", KeyProblem::Control(8)),
            (b"sk admin", KeyProblem::Control(2)),
            (b"sk-admin\x7F", KeyProblem::Control(8)),
        ];
        for (raw, want) in cases {
            assert_eq!(AdminKey::from_bytes(raw).err(), Some(*want), "{raw:?}");
        }
    }

    #[test]
    fn key_problems_never_show_the_key() {
        let e = AdminKey::from_bytes(b"\xEF\xBB\xBFsk-admin-secret").unwrap_err();
        assert!(!e.to_string().contains("secret"));
        let e = AdminKey::from_bytes(b"sk-admin-secret\x01").unwrap_err();
        assert!(!e.to_string().contains("secret"));
    }
}
