//! What a request's headers ask of the cache: its `Cache-Control`, and
//! whether it carries a header that changes the answer (and so bypasses
//! the cache).

use http::header::CACHE_CONTROL;
use http::HeaderMap;

/// What `Cache-Control` on the request asks of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directive {
    /// No directive that changes what the cache does.
    Normal,
    /// `no-cache`: fetch, then store.
    Refresh,
    /// `no-store`: fetch, don't store.
    NoStore,
}

/// Reads the request's `Cache-Control`: `no-store` wins over `no-cache`;
/// other directives are ignored.
///
/// Works on the bytes: a value with a non-ASCII byte elsewhere in it
/// (`to_str` fails on those) still has its `no-store` honoured.
pub fn directive(headers: &HeaderMap) -> Directive {
    let mut d = Directive::Normal;
    for v in headers.get_all(CACHE_CONTROL) {
        for token in v.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"no-store") {
                return Directive::NoStore;
            }
            if token.eq_ignore_ascii_case(b"no-cache") {
                d = Directive::Refresh;
            }
        }
    }
    d
}

/// True when the request carries a header that changes the answer: a
/// `Range`, any `If-*` precondition, or an `OpenAI-Project` that picks
/// another tenant. Such a request bypasses the cache and is forwarded as
/// sent. `OpenAI-Organization` does not: by the time a request gets here it
/// names the organization it was admitted to, which is part of the cache
/// key, and a fill sends that organization's own id.
pub fn bypasses(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::RANGE)
        || headers.contains_key("openai-project")
        || headers.keys().any(|k| k.as_str().starts_with("if-"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn cache_control_directives() {
        let mut h = HeaderMap::new();
        assert_eq!(directive(&h), Directive::Normal);
        h.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("max-age=0, No-Cache"),
        );
        assert_eq!(directive(&h), Directive::Refresh);
        h.append(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        assert_eq!(directive(&h), Directive::NoStore);
    }

    #[test]
    fn a_project_bypasses_and_an_admitted_organization_does_not() {
        let mut h = HeaderMap::new();
        h.insert("openai-organization", HeaderValue::from_static("org-main"));
        assert!(!bypasses(&h));
        h.insert("openai-project", HeaderValue::from_static("proj_1"));
        assert!(bypasses(&h));
    }

    /// Found by `fuzz/` (cache_control): a non-ASCII byte elsewhere in the
    /// value made the whole value unreadable as text, and its `no-store` was
    /// ignored, so the response was stored.
    #[test]
    fn no_store_beside_a_non_ascii_byte_is_honoured() {
        for (raw, want) in [
            (&b"\x9e,No-Store"[..], Directive::NoStore),
            (b"ncache\xf6\x92=0, No-Store", Directive::NoStore),
            (b"no-cache, x=\xff", Directive::Refresh),
            (b"\xff", Directive::Normal),
        ] {
            let mut h = HeaderMap::new();
            h.insert(CACHE_CONTROL, HeaderValue::from_bytes(raw).unwrap());
            assert_eq!(directive(&h), want, "{raw:?}");
        }
    }
}
