//! Client authentication: `Authorization: Bearer <key>` → the holder of
//! that key.
//!
//! Only SHA-256 digests of client keys are held. The presented key is
//! hashed and compared against every digest with a constant-time equality,
//! so neither the comparison nor its position leaks how close a guess was.

use http::header::AUTHORIZATION;
use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::error::{GatewayError, Result};
use crate::secret::digest;

/// Key digests and whoever holds each key.
#[derive(Debug)]
pub(super) struct Keys<T> {
    /// (digest, holder) pairs; a holder appears once per key.
    entries: Vec<([u8; 32], T)>,
}

impl<T> Default for Keys<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<T> Keys<T> {
    /// Adds a key's digest for `holder`.
    pub(super) fn push(&mut self, digest: [u8; 32], holder: T) {
        self.entries.push((digest, holder));
    }

    /// Every holder, once per key.
    pub(super) fn holders(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|(_, h)| h)
    }

    /// The holder of the request's bearer key, or 401. Every digest is
    /// compared, whatever matched first.
    pub(super) fn find(&self, headers: &HeaderMap) -> Result<&T> {
        let key = bearer(headers).ok_or(GatewayError::Unauthorized)?;
        let d = digest(key);
        let mut found = None;
        for (k, holder) in &self.entries {
            if bool::from(k.ct_eq(&d)) {
                found = Some(holder);
            }
        }
        found.ok_or(GatewayError::Unauthorized)
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
pub fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let v = headers.get(AUTHORIZATION)?.as_bytes();
    if v.len() < 7 || !v[..7].eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = v[7..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn keys() -> Keys<&'static str> {
        let mut k = Keys::default();
        k.push(digest(b"k-old"), "dash");
        k.push(digest(b"k-new"), "dash");
        k
    }

    fn auth(k: &Keys<&'static str>, v: &str) -> Option<&'static str> {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        k.find(&h).ok().copied()
    }

    #[test]
    fn known_keys_authenticate_unknown_do_not() {
        let k = keys();
        assert_eq!(auth(&k, "Bearer k-old"), Some("dash"));
        assert_eq!(auth(&k, "bearer k-new"), Some("dash"));
        assert_eq!(auth(&k, "Bearer k-other"), None);
        assert_eq!(auth(&k, "Basic k-old"), None);
        assert_eq!(auth(&k, "Bearer "), None);
        assert!(k.find(&HeaderMap::new()).is_err());
    }
}
