//! `proxy::canonicalize` (and `proxy::decode_segment` on what it accepts) on
//! any UTF-8 path after the prefix.
//!
//! Never panics, and what it accepts is canonical:
//! - empty or starting with `/`; no `\`, no `%2F`/`%5C` in either case, no
//!   `//` (a single trailing `/` is the only empty segment), no `.` or `..`
//!   segment, no ASCII control character;
//! - every `%` starts an escape with two upper-case hex digits whose byte is
//!   not unreserved, `/`, `\` or an ASCII control;
//! - canonicalising it again gives it back (idempotent), and it means the
//!   same bytes as the input once fully percent-decoded;
//! - accepted exactly when a char-by-char model of the rules accepts, with
//!   the same spelling.
//!
//! On every accepted segment `decode_segment` never panics, borrows a
//! segment without escapes, and agrees with a full percent-decode.
#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use openai_admin_gateway::path::CanonicalPath;
use openai_admin_gateway::proxy::{canonicalize, decode_segment};

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_ascii_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// Every valid `%XY` decoded; anything else kept as it is.
fn full_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The rules of `canon.rs` written again, char by char: the canonical
/// spelling, or `None` where the gateway must refuse.
fn model(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => return None,
            c if c.is_ascii() && is_ascii_control(c as u8) => return None,
            '%' => {
                let h = chars.next().and_then(|c| c.to_digit(16))?;
                let l = chars.next().and_then(|c| c.to_digit(16))?;
                let v = (h << 4 | l) as u8;
                if v == b'/' || v == b'\\' || is_ascii_control(v) {
                    return None;
                }
                if is_unreserved(v) {
                    out.push(char::from(v));
                } else {
                    out.push_str(&format!("%{v:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    if out.is_empty() || out == "/" {
        return Some(out);
    }
    let body = out.strip_prefix('/')?;
    let body = body.strip_suffix('/').unwrap_or(body);
    let segments_ok = body
        .split('/')
        .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    // Unicode controls (C1) and line/paragraph separators, raw or encoded.
    let decoded = String::from_utf8_lossy(&full_decode(&out)).into_owned();
    let no_controls = !decoded
        .chars()
        .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}');
    (segments_ok && no_controls).then_some(out)
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let result = canonicalize(input);
    let want = model(input);
    let Ok(canon) = result.map(CanonicalPath::into_inner) else {
        assert_eq!(want, None, "{input:?} refused, but the model accepts it");
        return;
    };
    let c: &str = &canon;
    assert_eq!(want.as_deref(), Some(c), "{input:?}: spelling differs");

    assert!(c.is_empty() || c.starts_with('/'), "{input:?} -> {c:?}");
    assert!(!c.contains('\\'), "{input:?} -> {c:?}");
    for bad in ["%2F", "%2f", "%5C", "%5c", "//"] {
        assert!(!c.contains(bad), "{input:?} -> {c:?} holds {bad}");
    }
    assert!(!c.bytes().any(is_ascii_control), "{input:?} -> {c:?}");

    let b = c.as_bytes();
    for (i, _) in c.match_indices('%') {
        let (Some(&h), Some(&l)) = (b.get(i + 1), b.get(i + 2)) else {
            panic!("{input:?} -> {c:?}: '%' at {i} without two digits");
        };
        assert!(
            matches!(h, b'0'..=b'9' | b'A'..=b'F') && matches!(l, b'0'..=b'9' | b'A'..=b'F'),
            "{input:?} -> {c:?}: escape at {i} is not two upper-case hex digits"
        );
        let v = hex(h).unwrap() << 4 | hex(l).unwrap();
        assert!(
            !is_unreserved(v) && v != b'/' && v != b'\\' && !is_ascii_control(v),
            "{input:?} -> {c:?}: escape at {i} should not be there"
        );
    }

    if !input.contains('%') {
        assert!(
            matches!(canon, Cow::Borrowed(_)),
            "{input:?} copied without an escape"
        );
    }
    assert_eq!(full_decode(input), full_decode(c), "{input:?} -> {c:?}");
    match canonicalize(c) {
        Ok(again) => assert_eq!(again, c, "not idempotent on {input:?}"),
        Err(e) => panic!("{input:?} -> {c:?}, which is then refused: {e}"),
    }

    if c.is_empty() || c == "/" {
        return;
    }
    let body = &c[1..];
    let body = body.strip_suffix('/').unwrap_or(body);
    for seg in body.split('/') {
        assert!(
            !seg.is_empty() && seg != "." && seg != "..",
            "{input:?} -> {c:?} has segment {seg:?}"
        );
        let decoded = decode_segment(seg);
        if !seg.contains('%') {
            assert!(
                matches!(decoded, Some(Cow::Borrowed(s)) if s == seg),
                "{seg:?}"
            );
        }
        let want = String::from_utf8(full_decode(seg)).ok();
        assert_eq!(decoded.as_deref(), want.as_deref(), "{seg:?}");
    }
});
