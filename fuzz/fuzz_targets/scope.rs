//! `Scope::parse` and `Scope::allows` on arbitrary patterns and requests.
//!
//! Input: the first line is the request, `METHOD PATH`; every further line is
//! an allow pattern. Never panics, and:
//! - a scope allows a request exactly when one of its patterns alone does;
//! - adding `* /**` allows every request;
//! - `* PATH` allows whatever `METHOD PATH` allows;
//! - the request written as a pattern, when it compiles, allows the request
//!   (for paths without surrounding whitespace, which patterns trim).
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use openai_admin_gateway::config::Scope;

fn scope(patterns: &[&str]) -> Result<Scope, String> {
    let owned: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
    Scope::parse(&owned)
}

fuzz_target!(|text: &str| {
    let mut lines = text.split('\n');
    let request = lines.next().unwrap_or_default();
    let patterns: Vec<&str> = lines.collect();
    let (method, path) = request.split_once(' ').unwrap_or((request, ""));
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        // Still exercise the compiler on its own.
        let _ = scope(&patterns);
        return;
    };

    assert!(
        !scope(&[])
            .expect("no patterns compile")
            .allows(&method, path),
        "an empty scope allowed {method} {path:?}"
    );

    if let Ok(all) = scope(&patterns) {
        let allowed = all.allows(&method, path);
        let one_allows = patterns.iter().any(|p| {
            scope(&[p])
                .expect("a pattern of a valid scope compiles alone")
                .allows(&method, path)
        });
        assert_eq!(allowed, one_allows, "{patterns:?} on {method} {path:?}");

        let mut wider = patterns.clone();
        wider.push("* /**");
        let wider = scope(&wider).expect("adding \"* /**\" keeps a scope valid");
        assert!(
            wider.allows(&method, path),
            "\"* /**\" refused {method} {path:?}"
        );

        for p in &patterns {
            let Some((_, rest)) = p.split_once(' ') else {
                continue;
            };
            let any_method = scope(&[&format!("* {rest}")])
                .expect("a valid pattern with its METHOD as * compiles");
            if scope(&[p]).is_ok_and(|s| s.allows(&method, path)) {
                assert!(
                    any_method.allows(&method, path),
                    "\"* {rest}\" is narrower than {p:?}"
                );
            }
        }
    } else {
        assert!(
            patterns.iter().any(|p| scope(&[p]).is_err()),
            "{patterns:?} fails to compile but each pattern compiles alone"
        );
    }

    // Patterns are trimmed; request paths never hold whitespace (HTTP has
    // none in a request-target), so only such paths are compared.
    let exact = format!("{method} {path}");
    if path == path.trim() {
        if let Ok(s) = scope(&[&exact]) {
            assert!(s.allows(&method, path), "{exact:?} refused its own request");
        }
    }
});
