//! Client authentication: `Authorization: Bearer <key>` → [`Client`].
//!
//! Only SHA-256 digests of client keys are held. The presented key is
//! hashed and compared against every digest with a constant-time equality,
//! so neither the comparison nor its position leaks how close a guess was.

use std::fmt::Write as _;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ClientConfig;
use crate::error::{GatewayError, Result};
use crate::metrics::ClientLabel;
use crate::ratelimit::Limiter;
use crate::scope::Scope;
use crate::store::RedisStore;

/// An authenticated client and what it may do.
#[derive(Debug)]
pub struct Client {
    /// Name for logs and metrics.
    pub name: ClientLabel,
    /// Its rate limiter, when limited.
    pub limiter: Option<Arc<Limiter>>,
    /// Its scope, when restricted.
    pub scope: Option<Scope>,
}

/// All clients, by key digest. Rebuilt (not mutated) on reload.
#[derive(Debug, Default)]
pub struct ClientTable {
    /// (digest, client) pairs; a client appears once per key.
    entries: Vec<([u8; 32], Arc<Client>)>,
}

impl ClientTable {
    /// Builds the table; limiters of clients whose name and budget did not
    /// change are carried over from `previous`, so a reload neither refills
    /// nor empties anyone's budget.
    /// With a `store`, limits are shared by every replica using it.
    pub fn build(
        configs: &[ClientConfig],
        previous: Option<&ClientTable>,
        store: Option<&Arc<RedisStore>>,
    ) -> ClientTable {
        let mut entries = Vec::new();
        for c in configs {
            let limiter = c.rate_limit.map(|rl| {
                previous
                    .and_then(|p| p.limiter_of(&c.name))
                    .filter(|l| l.limit() == rl && l.is_shared() == store.is_some())
                    .unwrap_or_else(|| {
                        Arc::new(match store {
                            Some(s) => Limiter::shared(rl, s.clone(), &c.name),
                            None => Limiter::new(rl),
                        })
                    })
            });
            let client = Arc::new(Client {
                name: ClientLabel::new(&c.name),
                limiter,
                scope: c.allow.clone(),
            });
            for k in &c.key_sha256 {
                entries.push((*k, client.clone()));
            }
        }
        ClientTable { entries }
    }

    fn limiter_of(&self, name: &str) -> Option<Arc<Limiter>> {
        self.entries
            .iter()
            .find(|(_, c)| c.name.as_str() == name)
            .and_then(|(_, c)| c.limiter.clone())
    }

    /// The client holding the request's bearer key, or 401.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Client>> {
        let key = bearer(headers).ok_or(GatewayError::Unauthorized)?;
        let d = digest(key);
        let mut found = None;
        for (k, c) in &self.entries {
            if bool::from(k.ct_eq(&d)) {
                found = Some(c);
            }
        }
        found.cloned().ok_or(GatewayError::Unauthorized)
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
    use http::HeaderValue;

    fn table() -> ClientTable {
        let cfg = ClientConfig {
            name: "dash".into(),
            key_sha256: vec![digest(b"k-old"), digest(b"k-new")],
            rate_limit: None,
            allow: None,
        };
        ClientTable::build(&[cfg], None, None)
    }

    fn auth(t: &ClientTable, v: &str) -> Option<String> {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        t.authenticate(&h).ok().map(|c| c.name.as_str().to_string())
    }

    #[test]
    fn known_keys_authenticate_unknown_do_not() {
        let t = table();
        assert_eq!(auth(&t, "Bearer k-old").as_deref(), Some("dash"));
        assert_eq!(auth(&t, "bearer k-new").as_deref(), Some("dash"));
        assert_eq!(auth(&t, "Bearer k-other"), None);
        assert_eq!(auth(&t, "Basic k-old"), None);
        assert_eq!(auth(&t, "Bearer "), None);
        assert!(t.authenticate(&HeaderMap::new()).is_err());
    }

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
}
