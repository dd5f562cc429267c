//! Request classification: a pure function of method and canonical path.
//!
//! The path it reads has been through [`super::canon::canonicalize`]: one
//! spelling per resource, no encoded `/`, no dot or empty segments. So
//! `/organization/%75sers/u1` is the user route, and nothing spelled
//! differently can reach another.

use http::Method;

use super::evict::{is_write, plan, Plan};
use crate::error::{GatewayError, Result};
use crate::path::CanonicalPath;

/// What the gateway does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET {prefix}/organization/users/{id}` without a query: the cached route.
    GetUser {
        /// The id segment, canonical (unreserved escapes decoded).
        user_id: &'a str,
    },
    /// `GET` of a user that must not use the cache (a query string, or a
    /// trailing `/`): forwarded as sent.
    GetUserUncached,
    /// A write that can change cached users (a row of
    /// [`super::evict::RULES`], or an unnamed write where users live):
    /// forwarded on its own task, and what it changes is evicted before
    /// and after. Writes that change no user are `Forward`.
    Write {
        /// What it evicts (a `User` id segment is canonical, unreserved
        /// escapes decoded).
        plan: Plan<'a>,
    },
    /// Anything else under the prefix, forwarded unchanged.
    Forward,
}

/// The route class, which logs and metrics label requests with (a closed
/// set, defined with the other metric labels).
pub use crate::metrics::RouteClass;

impl Route<'_> {
    /// This route's class.
    pub fn class(&self) -> RouteClass {
        match self {
            Route::GetUser { .. } => RouteClass::GetUser,
            Route::Write { .. } => RouteClass::UserWrite,
            Route::GetUserUncached | Route::Forward => RouteClass::Forward,
        }
    }
}

/// Longest user id accepted on the users routes, in bytes as spelled
/// canonically.
pub const MAX_USER_ID_LEN: usize = 256;

/// Strips `prefix` from `path`; `None` when the path is outside it.
/// The rest is empty or starts with `/`.
pub fn strip_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// True for the methods the gateway forwards: the Admin API's own (GET,
/// POST, DELETE) and the other standard verbs a REST API may grow (HEAD,
/// PUT, PATCH, OPTIONS). `CONNECT` would open a tunnel with the admin key,
/// `TRACE` would echo the admin key back, and extension methods mean
/// nothing to the API: they get 405.
pub fn allowed_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::PATCH
            | Method::DELETE
            | Method::OPTIONS
    )
}

/// Classifies a request. `rest` is the canonical path after the prefix
/// (no query), `has_query` whether a query string was present.
pub fn classify<'a>(
    method: &Method,
    rest: &'a CanonicalPath<'_>,
    has_query: bool,
) -> Result<Route<'a>> {
    if is_write(method) {
        return match plan(method, rest) {
            Plan::Nothing => Ok(Route::Forward),
            Plan::User(id) if id.len() > MAX_USER_ID_LEN => Err(GatewayError::InvalidUserId),
            plan => Ok(Route::Write { plan }),
        };
    }
    let Some((user_id, trailing_slash)) = user_segment(rest.as_str()) else {
        return Ok(Route::Forward);
    };
    let route = match *method {
        Method::GET if has_query || trailing_slash => Route::GetUserUncached,
        Method::GET => Route::GetUser { user_id },
        _ => return Ok(Route::Forward),
    };
    if user_id.len() > MAX_USER_ID_LEN {
        return Err(GatewayError::InvalidUserId);
    }
    Ok(route)
}

/// `Some((id, trailing_slash))` when `rest` is `/organization/users/{id}`
/// with one non-empty segment, optionally followed by one `/`.
fn user_segment(rest: &str) -> Option<(&str, bool)> {
    let id = rest.strip_prefix("/organization/users/")?;
    let (id, trailing) = match id.strip_suffix('/') {
        Some(id) => (id, true),
        None => (id, false),
    };
    (!id.is_empty() && !id.contains('/')).then_some((id, trailing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(m: Method, p: &str) -> std::result::Result<Route<'_>, &'static str> {
        // A route borrows its path: leaked so that it can be returned (a
        // few bytes per test).
        let p: &CanonicalPath<'_> = Box::leak(Box::new(CanonicalPath::unchecked(p)));
        classify(&m, p, false).map_err(|e| e.kind().1)
    }

    #[test]
    fn cached_route_is_exactly_one_segment() {
        assert_eq!(
            c(Method::GET, "/organization/users/user_abc"),
            Ok(Route::GetUser {
                user_id: "user_abc"
            })
        );
        assert_eq!(
            c(Method::GET, "/organization/users/user_abc/roles"),
            Ok(Route::Forward)
        );
        assert_eq!(c(Method::GET, "/organization/users/"), Ok(Route::Forward));
        assert_eq!(c(Method::GET, "/organization/users"), Ok(Route::Forward));
        assert_eq!(
            c(Method::GET, "/organization/users/a/b/c"),
            Ok(Route::Forward)
        );
    }

    #[test]
    fn query_string_or_trailing_slash_is_forwarded_not_cached() {
        let p = CanonicalPath::unchecked("/organization/users/u1");
        let r = classify(&Method::GET, &p, true).unwrap();
        assert_eq!(r, Route::GetUserUncached);
        assert_eq!(r.class(), RouteClass::Forward);
        assert_eq!(
            c(Method::GET, "/organization/users/u1/"),
            Ok(Route::GetUserUncached)
        );
    }

    #[test]
    fn writes_are_user_writes_with_or_without_a_trailing_slash() {
        let user = Ok(Route::Write {
            plan: Plan::User("u1"),
        });
        assert_eq!(c(Method::POST, "/organization/users/u1"), user);
        assert_eq!(c(Method::DELETE, "/organization/users/u1/"), user);
        // Not in the spec, but where users live: everything is evicted.
        assert_eq!(
            c(Method::PUT, "/organization/users/u1"),
            Ok(Route::Write {
                plan: Plan::All { listed: false }
            })
        );
        // A write that changes no user is a plain forward.
        assert_eq!(c(Method::POST, "/organization/invites"), Ok(Route::Forward));
        assert_eq!(
            c(Method::HEAD, "/organization/users/u1"),
            Ok(Route::Forward)
        );
    }

    #[test]
    fn long_ids_are_refused() {
        let ok = format!("/organization/users/{}", "a".repeat(256));
        assert!(c(Method::GET, &ok).is_ok());
        let long = format!("/organization/users/{}", "a".repeat(257));
        assert_eq!(c(Method::GET, &long), Err("invalid_user_id"));
        assert_eq!(c(Method::DELETE, &long), Err("invalid_user_id"));
        let member = format!("/organization/projects/p1/users/{}", "a".repeat(257));
        assert_eq!(c(Method::POST, &member), Err("invalid_user_id"));
    }

    #[test]
    fn outside_prefix_is_none() {
        assert_eq!(strip_prefix("/organization/users/u1", "/v1"), None);
        assert_eq!(strip_prefix("/v10/organization", "/v1"), None);
        assert_eq!(strip_prefix("/", "/v1"), None);
        assert_eq!(strip_prefix("/v1", "/v1"), Some(""));
        assert_eq!(strip_prefix("/v1/x", ""), Some("/v1/x"));
    }

    #[test]
    fn tunnels_traces_and_extension_methods_are_refused() {
        for m in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
            assert!(
                allowed_method(&Method::from_bytes(m.as_bytes()).unwrap()),
                "{m}"
            );
        }
        for m in ["CONNECT", "TRACE", "PROPFIND", "BREW", "get"] {
            assert!(
                !allowed_method(&Method::from_bytes(m.as_bytes()).unwrap()),
                "{m}"
            );
        }
    }
}
