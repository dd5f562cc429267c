//! Client scopes: `allow = ["METHOD PATH", ...]`, compiled with the file
//! (a bad pattern is a config problem) and applied by the request policy.
//!
//! PATH is relative to `server.path_prefix`; `*` matches one path segment, a
//! final `/**` any rest (zero or more segments); `*` as METHOD matches any
//! method. Matching is on the canonical path (unreserved escapes decoded,
//! the others' hex upper-cased), so an escape that remains never matches a
//! literal pattern segment: an escape can only narrow access.

use http::Method;

use crate::path::CanonicalPath;

/// A compiled allow list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Any of these admits a request.
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// `None` for `*`.
    method: Option<Method>,
    /// Segment patterns, in order.
    segments: Vec<Segment>,
    /// A final `/**` was given.
    any_rest: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Any,
}

impl Scope {
    /// Compiles the patterns, or says which one is wrong and why.
    pub fn parse(patterns: &[String]) -> Result<Scope, String> {
        let rules = patterns
            .iter()
            .map(|p| Rule::parse(p).map_err(|why| format!("{p:?}: {why}")))
            .collect::<Result<_, _>>()?;
        Ok(Scope { rules })
    }

    /// True when some rule admits `method` on `path` (relative to the prefix).
    pub fn allows(&self, method: &Method, path: &CanonicalPath<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(method, path.as_str()))
    }
}

impl Rule {
    fn parse(p: &str) -> Result<Rule, &'static str> {
        let (m, path) = p
            .split_once(' ')
            .ok_or("expected \"METHOD PATH\", e.g. \"GET /organization/users/*\"")?;
        let method = match m {
            "*" => None,
            m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
                Some(Method::from_bytes(m.as_bytes()).map_err(|_| "invalid method")?)
            }
            _ => return Err("METHOD must be upper-case (GET, POST, ...) or *"),
        };
        let path = path.trim();
        if !path.starts_with('/') {
            return Err("PATH must start with '/'");
        }
        let (path, any_rest) = match path.strip_suffix("/**") {
            Some(p) => (p, true),
            None => (path, false),
        };
        let mut segments = Vec::new();
        for seg in path.split('/').skip(1) {
            match seg {
                "" if path.len() <= 1 => {}
                "" => return Err("empty path segment"),
                "*" => segments.push(Segment::Any),
                s if s.contains('*') => {
                    return Err("'*' must be a whole segment; '**' only at the end")
                }
                s => segments.push(Segment::Literal(s.to_string())),
            }
        }
        Ok(Rule {
            method,
            segments,
            any_rest,
        })
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        // "" and "/" have no segments at all.
        let mut parts = (!trimmed.is_empty())
            .then(|| trimmed.split('/'))
            .into_iter()
            .flatten();
        for seg in &self.segments {
            match (seg, parts.next()) {
                (_, None) => return false,
                (Segment::Any, Some(s)) if !s.is_empty() => {}
                (Segment::Literal(l), Some(s)) if l == s => {}
                _ => return false,
            }
        }
        self.any_rest || parts.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path as the matchers see it (taken as canonical).
    fn cp(s: &str) -> CanonicalPath<'_> {
        CanonicalPath::unchecked(s)
    }

    fn scope(p: &[&str]) -> Scope {
        Scope::parse(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn star_matches_one_segment() {
        let s = scope(&["GET /organization/users/*"]);
        assert!(s.allows(&Method::GET, &cp("/organization/users/u1")));
        assert!(!s.allows(&Method::GET, &cp("/organization/users")));
        assert!(!s.allows(&Method::GET, &cp("/organization/users/")));
        assert!(!s.allows(&Method::GET, &cp("/organization/users/u1/roles")));
        assert!(!s.allows(&Method::POST, &cp("/organization/users/u1")));
    }

    #[test]
    fn double_star_matches_any_rest() {
        let s = scope(&["POST /organization/**"]);
        assert!(s.allows(&Method::POST, &cp("/organization")));
        assert!(s.allows(&Method::POST, &cp("/organization/users/u1/roles")));
        assert!(!s.allows(&Method::POST, &cp("/organizations")));
        assert!(!s.allows(&Method::GET, &cp("/organization/users")));
    }

    #[test]
    fn star_method_matches_any_method() {
        let s = scope(&["* /organization/invites/*"]);
        assert!(s.allows(&Method::DELETE, &cp("/organization/invites/i1")));
        assert!(s.allows(&Method::PATCH, &cp("/organization/invites/i1")));
        assert!(!s.allows(&Method::GET, &cp("/organization/invites")));
    }

    #[test]
    fn literal_path_is_exact() {
        let s = scope(&["GET /organization/users"]);
        assert!(s.allows(&Method::GET, &cp("/organization/users")));
        assert!(!s.allows(&Method::GET, &cp("/organization/users/u1")));
        assert!(!s.allows(&Method::GET, &cp("/organization/user%73")));
        let all = scope(&["* /**"]);
        assert!(all.allows(&Method::GET, &cp("")));
        assert!(all.allows(&Method::PUT, &cp("/anything/at/all")));
    }

    #[test]
    fn bad_patterns_are_errors() {
        for p in [
            "GET",
            "get /x",
            "GET x",
            "GET /a/**/b",
            "GET /a*",
            "GET /a//b",
        ] {
            assert!(Scope::parse(&[p.to_string()]).is_err(), "{p}");
        }
    }
}
