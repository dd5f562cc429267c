//! `Scope::parse` and `Scope::allows` on arbitrary patterns and requests.
//!
//! Input: the first line is the request, `METHOD PATH`; every further line is
//! an allow pattern. The path is brought to its canonical spelling first
//! (`Scope::allows` takes nothing else; a refused path only exercises the
//! compiler). Never panics, and:
//! - a scope allows a request exactly when one of its patterns alone does;
//! - adding `* /**` allows every request;
//! - `* PATH` allows whatever `METHOD PATH` allows;
//! - the request written as a pattern, when it compiles, allows the request
//!   (for paths without surrounding whitespace, which patterns trim).
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use openai_admin_gateway::config::Scope;
use openai_admin_gateway::proxy::canonicalize;

fn scope(patterns: &[&str]) -> Result<Scope, String> {
    let owned: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
    Scope::parse(&owned)
}

fuzz_target!(|text: &str| {
    let mut lines = text.split('\n');
    let request = lines.next().unwrap_or_default();
    let patterns: Vec<&str> = lines.collect();
    let (method, path) = request.split_once(' ').unwrap_or((request, ""));
    let (Ok(method), Ok(canonical)) = (Method::from_bytes(method.as_bytes()), canonicalize(path))
    else {
        // Still exercise the compiler on its own.
        let _ = scope(&patterns);
        return;
    };
    let path = canonical.as_str();

    assert!(
        !scope(&[])
            .expect("no patterns compile")
            .allows(&method, &canonical),
        "an empty scope allowed {method} {path:?}"
    );

    if let Ok(all) = scope(&patterns) {
        let allowed = all.allows(&method, &canonical);
        let one_allows = patterns.iter().any(|p| {
            scope(&[p])
                .expect("a pattern of a valid scope compiles alone")
                .allows(&method, &canonical)
        });
        assert_eq!(allowed, one_allows, "{patterns:?} on {method} {path:?}");

        let mut wider = patterns.clone();
        wider.push("* /**");
        let wider = scope(&wider).expect("adding \"* /**\" keeps a scope valid");
        assert!(
            wider.allows(&method, &canonical),
            "\"* /**\" refused {method} {path:?}"
        );

        for p in &patterns {
            let Some((_, rest)) = p.split_once(' ') else {
                continue;
            };
            let any_method = scope(&[&format!("* {rest}")])
                .expect("a valid pattern with its METHOD as * compiles");
            if scope(&[p]).is_ok_and(|s| s.allows(&method, &canonical)) {
                assert!(
                    any_method.allows(&method, &canonical),
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
            assert!(
                s.allows(&method, &canonical),
                "{exact:?} refused its own request"
            );
        }
    }
});
