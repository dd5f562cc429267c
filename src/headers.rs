//! Header rules for forwarding: hop-by-hop headers (RFC 9110 §7.6.1) and
//! request ids.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::per_thread::{self, PerThread};

use http::header::{HeaderName, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue};

/// `x-request-id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Removes `Connection`, the headers it names, `Keep-Alive`, `Proxy-*`,
/// `TE`, `Trailer`, `Transfer-Encoding` and `Upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named by Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in [CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(n);
    }
    headers.remove("keep-alive");
    if headers.keys().any(|k| k.as_str().starts_with("proxy-")) {
        let proxy: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for n in proxy {
            headers.remove(n);
        }
    }
}

/// Makes gateway request ids: `req_` + a random per-process prefix + a counter,
/// unique across replicas and restarts without a syscall per request.
#[derive(Debug)]
pub struct RequestIds {
    /// Random per process.
    prefix: u64,
    /// Next sequence number, per thread (see [`crate::per_thread`]): a shared
    /// counter would be a line every core writes on every request.
    next: PerThread<AtomicU64>,
}

impl RequestIds {
    /// Seeds the prefix from the OS RNG (falls back to the clock).
    pub fn new() -> Self {
        let mut b = [0u8; 8];
        let prefix = match getrandom::fill(&mut b) {
            Ok(()) => u64::from_le_bytes(b),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        };
        Self {
            prefix,
            next: PerThread::default(),
        }
    }

    /// A fresh id header value: `req_` + 16 hex digits of prefix + 12 of
    /// counter, written without the formatting machinery. The counter is
    /// the slot's sequence number times the number of slots plus the slot,
    /// so no two threads hand out the same one.
    pub fn next(&self) -> HeaderValue {
        let slot = per_thread::slot();
        let seq = self.next.local().fetch_add(1, Ordering::Relaxed);
        let n = seq
            .wrapping_mul(per_thread::slots() as u64)
            .wrapping_add(slot as u64);
        let mut buf = *b"req_0000000000000000000000000000";
        hex_into(&mut buf[4..20], self.prefix);
        hex_into(&mut buf[20..32], n);
        HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("req_unknown"))
    }
}

/// Writes the low `out.len()` hex digits of `v` into `out`.
fn hex_into(out: &mut [u8], mut v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// Header values of the integers below this are built once and shared.
const SMALL_INTS: usize = 4096;

/// `n` as a header value. Values below 4096 (ages, remaining requests) are
/// built once and cloned after, so the hit path does not allocate them.
pub fn int_value(n: u64) -> HeaderValue {
    static TABLE: OnceLock<Box<[OnceLock<HeaderValue>]>> = OnceLock::new();
    let table = TABLE.get_or_init(|| (0..SMALL_INTS).map(|_| OnceLock::new()).collect());
    match table.get(n as usize) {
        Some(slot) => slot.get_or_init(|| static_value(n.to_string())).clone(),
        None => HeaderValue::from(n),
    }
}

/// A header value kept for the life of the process, for the bounded
/// tables of shared values ([`int_value`], the `Cache-Status` of hits).
/// Cloning a value built from a `String` writes a reference count that
/// every core shares; cloning a static one writes nothing.
pub fn static_value(s: String) -> HeaderValue {
    let s: &'static str = Box::leak(s.into_boxed_str());
    match HeaderValue::from_str(s) {
        Ok(_) => HeaderValue::from_static(s),
        Err(_) => HeaderValue::from_static("-"),
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_and_well_formed() {
        let ids = RequestIds::new();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        let a = a.to_str().unwrap();
        assert!(a.starts_with("req_") && a.len() == 32, "{a}");
        assert!(a[4..].bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(&a[20..], &b.to_str().unwrap()[20..]);
    }

    #[test]
    fn request_ids_from_many_threads_never_repeat() {
        let ids = RequestIds::new();
        let all: Vec<HeaderValue> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| (0..1000).map(|_| ids.next()).collect::<Vec<_>>()))
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let mut uniq: Vec<&[u8]> = all.iter().map(HeaderValue::as_bytes).collect();
        uniq.sort_unstable();
        uniq.dedup();
        assert_eq!(uniq.len(), 8000);
    }

    #[test]
    fn shared_values_are_static() {
        // A static value's clone points at the same bytes and writes no
        // count; both copies must be the process-wide one.
        let (a, b) = (int_value(7), int_value(7));
        assert_eq!(a.as_bytes().as_ptr(), b.as_bytes().as_ptr());
        assert_eq!(static_value("a b".into()), "a b");
        assert_eq!(static_value("bad\n".into()), "-");
    }

    #[test]
    fn int_values_match_their_numbers() {
        for n in [0, 1, 299, 4095, 4096, 1 << 40] {
            assert_eq!(int_value(n), n.to_string().as_str());
            assert_eq!(int_value(n), n.to_string().as_str(), "second (shared) copy");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-kept", "yes"),
            ("content-type", "application/json"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept", "content-type"]);
    }

    #[test]
    fn request_ids_are_unique() {
        let ids = RequestIds::new();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        assert!(a.to_str().unwrap().starts_with("req_"));
    }
}
