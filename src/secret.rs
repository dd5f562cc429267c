//! The admin key: held once, shown nowhere.
//!
//! `AdminKey` keeps the key and its ready-made `Authorization` header value
//! (marked sensitive so HTTP/2 HPACK never indexes it). `Debug` and `Display`
//! print a placeholder, so the key cannot reach a log line or a panic message
//! through formatting.

use std::fmt;

use http::HeaderValue;

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

#[cfg(test)]
mod tests {
    use super::*;

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
