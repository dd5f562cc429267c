//! Canonical paths: decided once, at the door, before any policy.
//!
//! The path after the prefix is brought to one spelling (RFC 3986 §6.2.2):
//! percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//! decoded and every other escape's hex is upper-cased. Routing, the scope
//! check and the cache key all read that spelling; the upstream gets the
//! path as the client sent it, which means the same thing to any server.
//!
//! Spellings that a server, a CDN or a framework in front of the upstream
//! could read as another path are refused instead of guessed at (Envoy's
//! `normalize_path` + `merge_slashes` + `REJECT_REQUEST` for escaped
//! slashes): a raw `\` or `%5C`, an encoded slash `%2F`, an empty segment
//! (`//`; a single trailing `/` is allowed), a `.` or `..` segment raw or
//! encoded, control characters raw or encoded, and broken escapes. What is
//! accepted therefore names exactly one resource, whichever of those
//! normalisers a hop applies.

use std::borrow::Cow;

use crate::error::{GatewayError, Result};
use crate::path::CanonicalPath;

/// The canonical spelling of `rest` (the raw path after the prefix: empty
/// or starting with `/`), or 400 `invalid_path`. Borrows when `rest` has no
/// escapes to rewrite. The only maker of a [`CanonicalPath`].
pub fn canonicalize(rest: &str) -> Result<CanonicalPath<'_>> {
    let bytes = rest.as_bytes();
    let mut out: Option<String> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\\' => return Err(GatewayError::InvalidPath),
            b if b < 0x20 || b == 0x7f => return Err(GatewayError::InvalidPath),
            b'%' => {
                let v = escape_at(bytes, i).ok_or(GatewayError::InvalidPath)?;
                if v == b'/' || v == b'\\' || v < 0x20 || v == 0x7f {
                    return Err(GatewayError::InvalidPath);
                }
                let buf = out.get_or_insert_with(|| {
                    let mut s = String::with_capacity(rest.len());
                    s.push_str(&rest[..i]);
                    s
                });
                if is_unreserved(v) {
                    buf.push(char::from(v));
                } else {
                    buf.push('%');
                    buf.push(char::from(HEX[usize::from(v >> 4)]));
                    buf.push(char::from(HEX[usize::from(v & 0xf)]));
                }
                i += 3;
                continue;
            }
            _ => {}
        }
        if let Some(buf) = out.as_mut() {
            // Everything else is copied as it is (a multi-byte char, which
            // the URI parser admits, is copied whole).
            let len = utf8_len(b);
            buf.push_str(&rest[i..i + len]);
            i += len;
        } else {
            i += 1;
        }
    }
    let path = match out {
        Some(s) => Cow::Owned(s),
        None => Cow::Borrowed(rest),
    };
    check_segments(&path)?;
    if has_unicode_control(&path) {
        return Err(GatewayError::InvalidPath);
    }
    Ok(CanonicalPath::checked(path))
}

/// True when `path`, escapes decoded, holds a control character beyond
/// ASCII's (C1 controls such as U+0085, which some stacks read as a line
/// break) or a line or paragraph separator. ASCII controls are refused
/// earlier, raw or encoded. A plain ASCII path without escapes costs one
/// scan.
fn has_unicode_control(path: &str) -> bool {
    if path.is_ascii() && !path.contains('%') {
        return false;
    }
    String::from_utf8_lossy(&percent_decode(path))
        .chars()
        .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
}

/// Refuses empty segments (but a single trailing `/`) and dot segments.
fn check_segments(path: &str) -> Result<()> {
    let Some(body) = path.strip_prefix('/') else {
        // Only the empty path (the prefix itself) has no leading slash.
        return if path.is_empty() {
            Ok(())
        } else {
            Err(GatewayError::InvalidPath)
        };
    };
    let body = body.strip_suffix('/').unwrap_or(body);
    if body.is_empty() {
        // "/" alone, or "//" (an empty segment).
        return if path.len() <= 1 {
            Ok(())
        } else {
            Err(GatewayError::InvalidPath)
        };
    }
    for seg in body.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(GatewayError::InvalidPath);
        }
    }
    Ok(())
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The byte an escape at `i` (`%XY`) stands for.
fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    let hi = hex_value(*bytes.get(i + 1)?)?;
    let lo = hex_value(*bytes.get(i + 2)?)?;
    Some(hi << 4 | lo)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 unreserved characters.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

/// A canonical path segment fully percent-decoded (the user id of the
/// cache key and of the stored body's check). `None` when the decoded bytes
/// are not UTF-8: such an id can never equal a JSON id, and is not cached.
pub fn decode_segment(seg: &str) -> Option<Cow<'_, str>> {
    if !seg.contains('%') {
        return Some(Cow::Borrowed(seg));
    }
    String::from_utf8(percent_decode(seg)).ok().map(Cow::Owned)
}

/// Every `%XY` escape in `s` decoded; anything else kept as it is.
fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match escape_at(bytes, i).filter(|_| bytes[i] == b'%') {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// The id a single path segment names, as the cache keys it (canonical,
/// then fully decoded): what an admin's `DELETE /cache/users/{id}` purges.
/// `None` when `raw` is not one canonical, non-empty segment of at most
/// [`super::MAX_USER_ID_LEN`] bytes, or does not decode to UTF-8.
pub fn user_id_of(raw: &str) -> Option<String> {
    if raw.is_empty() || raw.contains('/') {
        return None;
    }
    let path = format!("/{raw}");
    let canonical = canonicalize(&path).ok()?;
    let seg = &canonical[1..];
    if seg.len() > super::MAX_USER_ID_LEN {
        return None;
    }
    decode_segment(seg).map(Cow::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: &str) -> String {
        canonicalize(p)
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .into_inner()
            .into_owned()
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_upper_cased() {
        assert_eq!(
            ok("/organization/%75sers/user%2D1"),
            "/organization/users/user-1"
        );
        assert_eq!(ok("/organization/user%73"), "/organization/users");
        assert_eq!(ok("/echo/a%20b%2b%3a"), "/echo/a%20b%2B%3A");
        assert_eq!(ok("/x/%7E%5f"), "/x/~_");
        assert!(matches!(
            canonicalize("/plain/path").map(CanonicalPath::into_inner),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn the_prefix_itself_and_a_trailing_slash_are_fine() {
        assert_eq!(ok(""), "");
        assert_eq!(ok("/"), "/");
        assert_eq!(ok("/organization/users/u1/"), "/organization/users/u1/");
    }

    #[test]
    fn ambiguous_spellings_are_refused() {
        for p in [
            "/a\\b",
            "/a/..\\..\\admin_api_keys",
            "/a%5cb",
            "/a%5Cb",
            "/users/x/..%2f..%2fprojects",
            "/a%2Fb",
            "//a",
            "/a//b",
            "/a/",
            "/a//",
            "//",
            "/.",
            "/..",
            "/a/./b",
            "/a/../b",
            "/a/%2e%2E/b",
            "/a/.%2e",
            "/a/%2E",
            "/a/%00",
            "/a/%1f",
            "/a/%7F",
            "/a/\u{1}",
            "/a/%",
            "/a/%4",
            "/a/%zz",
            "/a/\u{85}b",
            "/a/%C2%85b",
            "/a/%c2%9Fb",
            "/a/\u{2028}",
            "/a/%E2%80%A9",
            "x",
        ] {
            if p == "/a/" {
                // A trailing slash is allowed.
                assert!(canonicalize(p).is_ok());
                continue;
            }
            assert!(canonicalize(p).is_err(), "{p:?} was accepted");
        }
    }

    #[test]
    fn other_non_ascii_characters_are_fine() {
        assert_eq!(
            ok("/organization/users/%C3%A9"),
            "/organization/users/%C3%A9"
        );
        assert_eq!(
            ok("/organization/users/\u{e9}t\u{e9}"),
            "/organization/users/\u{e9}t\u{e9}"
        );
    }

    #[test]
    fn dots_inside_a_segment_are_not_dot_segments() {
        assert_eq!(ok("/files/.../a.b/..c/%2E%2E%2E"), "/files/.../a.b/..c/...");
    }

    #[test]
    fn purge_ids_name_the_cached_id() {
        assert_eq!(user_id_of("%75ser_abc").as_deref(), Some("user_abc"));
        assert_eq!(user_id_of("user%20a").as_deref(), Some("user a"));
        for bad in ["", "a/b", "a%2Fb", "..", "%2e", "a%00", "a\\b"] {
            assert_eq!(user_id_of(bad), None, "{bad:?}");
        }
        assert_eq!(user_id_of(&"a".repeat(257)), None);
    }

    #[test]
    fn segments_decode_fully() {
        assert_eq!(decode_segment("user%20a").as_deref(), Some("user a"));
        assert_eq!(decode_segment("user-1").as_deref(), Some("user-1"));
        assert_eq!(decode_segment("%C3%A9").as_deref(), Some("é"));
        assert_eq!(decode_segment("%FF"), None);
    }

    // === the property: what is accepted names one resource for every hop ===

    use crate::config::Scope;
    use http::Method;
    use proptest::prelude::*;

    const SEGMENTS: &[&str] = &[
        "organization",
        "users",
        "x",
        "user_abc",
        "admin_api_keys",
        "projects",
        ".",
        "..",
        "",
        "%2e",
        "%2E%2e",
        ".%2e",
        "%2f",
        "%2F",
        "%5c",
        "%5C",
        "%75sers",
        "user%73",
        "a%20b",
        "%00",
        "%",
        "~",
        "a.b",
        "%2D",
    ];
    const SEPARATORS: &[&str] = &["/", "\\", "//", "%2F", "%5C", "%2f"];
    const PREFIXES: &[&str] = &[
        "",
        "/organization/users",
        "/organization/users/x",
        "/organization",
    ];

    fn paths() -> impl Strategy<Value = String> {
        let pieces = prop::collection::vec((0..SEPARATORS.len(), 0..SEGMENTS.len()), 1..7);
        (0..PREFIXES.len(), pieces, any::<bool>()).prop_map(|(p, pieces, trailing)| {
            let mut s = PREFIXES[p].to_string();
            for (sep, seg) in pieces {
                s.push_str(SEPARATORS[sep]);
                s.push_str(SEGMENTS[seg]);
            }
            if trailing {
                s.push('/');
            }
            s
        })
    }

    /// `\` → `/`.
    fn backslashes(p: &str) -> String {
        p.replace('\\', "/")
    }

    /// `%2F` → `/` and `%5C` → `\`, then backslashes as slashes.
    fn decode_slashes(p: &str) -> String {
        let s = p.replace("%2F", "/").replace("%2f", "/");
        backslashes(&s.replace("%5C", "\\").replace("%5c", "\\"))
    }

    /// `//` → `/`.
    fn merge_slashes(p: &str) -> String {
        let mut s = p.to_string();
        while s.contains("//") {
            s = s.replace("//", "/");
        }
        s
    }

    /// RFC 3986 §5.2.4 remove_dot_segments, with `%2E` read as `.`.
    fn resolve_dots(p: &str) -> String {
        let mut out: Vec<&str> = Vec::new();
        let decoded = p.replace("%2e", ".").replace("%2E", ".");
        let segs: Vec<&str> = decoded.split('/').collect();
        for (i, seg) in segs.iter().enumerate().skip(1) {
            match *seg {
                "." => {}
                ".." => {
                    out.pop();
                }
                s => out.push(s),
            }
            if (*seg == "." || *seg == "..") && i == segs.len() - 1 {
                out.push("");
            }
        }
        format!("/{}", out.join("/"))
    }

    /// Unreserved escapes decoded: how any server reads the result.
    fn unreserved(p: &str) -> String {
        let b = p.as_bytes();
        let mut out = String::new();
        let mut i = 0;
        while i < b.len() {
            match escape_at(b, i).filter(|v| b[i] == b'%' && is_unreserved(*v)) {
                Some(v) => {
                    out.push(char::from(v));
                    i += 3;
                }
                None => {
                    out.push(char::from(b[i]));
                    i += 1;
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// For every path the gateway accepts for a scoped reader, each common normaliser
        /// (and all of them in a row) leaves a path the reader's patterns still allow.
        #[test]
        fn accepted_paths_stay_in_scope_under_every_normaliser(path in paths()) {
            let scope = Scope::parse(&[
                "GET /organization/users/*".to_string(),
                "GET /organization/users".to_string(),
            ]).expect("patterns");
            let Ok(canonical) = canonicalize(&path) else { return Ok(()) };
            if !scope.allows(&Method::GET, &canonical) {
                return Ok(());
            }
            let all = resolve_dots(&merge_slashes(&decode_slashes(&backslashes(&path))));
            for (name, normalised) in [
                ("backslashes", backslashes(&path)),
                ("decode_slashes", decode_slashes(&path)),
                ("merge_slashes", merge_slashes(&path)),
                ("resolve_dots", resolve_dots(&path)),
                ("all", all),
            ] {
                let seen = unreserved(&normalised);
                prop_assert!(
                    scope.allows(&Method::GET, &CanonicalPath::unchecked(&seen)),
                    "{path:?} accepted as {canonical:?}, but {name} makes it {seen:?}"
                );
            }
        }
    }
}
