//! Request classification: a pure function of method and raw path.
//!
//! Matching works on the raw, still percent-encoded path and never decodes
//! it, so an encoded `/` or `.` can not make one route look like another.

use http::Method;

use crate::error::{GatewayError, Result};

/// What the gateway does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET {prefix}/organization/users/{id}` without a query: the cached route.
    GetUser {
        /// The raw id segment.
        user_id: &'a str,
    },
    /// `GET` of that path with a query string: forwarded, never cached.
    GetUserWithQuery,
    /// `POST`/`DELETE` of a user: forwarded, then the id is evicted on 2xx.
    UserWrite {
        /// The raw id segment.
        user_id: &'a str,
    },
    /// Anything else under the prefix, forwarded unchanged.
    Forward,
}

/// The route class label used in logs and metrics (bounded set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// The cached retrieve-user route.
    GetUser,
    /// A user modify/delete.
    UserWrite,
    /// Plain forwarding (including `GetUserWithQuery`).
    Forward,
    /// Rejected before routing (outside prefix, bad path).
    Rejected,
}

impl RouteClass {
    /// Stable name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GetUser => "get_user",
            Self::UserWrite => "user_write",
            Self::Forward => "forward",
            Self::Rejected => "rejected",
        }
    }
}

impl Route<'_> {
    /// This route's class.
    pub fn class(&self) -> RouteClass {
        match self {
            Route::GetUser { .. } => RouteClass::GetUser,
            Route::UserWrite { .. } => RouteClass::UserWrite,
            Route::GetUserWithQuery | Route::Forward => RouteClass::Forward,
        }
    }
}

/// Longest user id accepted on the users routes.
pub const MAX_USER_ID_LEN: usize = 256;

/// Strips `prefix` from `path`; `None` when the path is outside it.
/// The rest is empty or starts with `/`.
pub fn strip_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// Classifies a request. `path` is the raw path (no query), `has_query`
/// whether a query string was present.
pub fn classify<'a>(
    method: &Method,
    path: &'a str,
    has_query: bool,
    prefix: &str,
) -> Result<(Route<'a>, &'a str)> {
    let rest = strip_prefix(path, prefix).ok_or(GatewayError::NotFound)?;
    if has_dot_segment(rest) {
        return Err(GatewayError::InvalidPath);
    }
    let Some(user_id) = user_segment(rest) else {
        return Ok((Route::Forward, rest));
    };
    let route = match *method {
        Method::GET if has_query => Route::GetUserWithQuery,
        Method::GET => Route::GetUser { user_id },
        Method::POST | Method::DELETE => Route::UserWrite { user_id },
        _ => return Ok((Route::Forward, rest)),
    };
    if !valid_user_id(user_id) {
        return Err(GatewayError::InvalidUserId);
    }
    Ok((route, rest))
}

/// `Some(id)` when `rest` is exactly `/organization/users/{id}` with one
/// non-empty segment.
fn user_segment(rest: &str) -> Option<&str> {
    let id = rest.strip_prefix("/organization/users/")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// A plain id: unreserved characters only, no escapes, not `.`/`..`.
pub fn valid_user_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= MAX_USER_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}

/// True when any segment is `.` or `..`, literally or percent-encoded
/// (`%2e`, either case), which an upstream or an intermediary might resolve.
fn has_dot_segment(rest: &str) -> bool {
    rest.split('/').any(|seg| {
        let mut dots = 0;
        let b = seg.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'.' {
                i += 1;
            } else if b.len() >= i + 3
                && b[i] == b'%'
                && b[i + 1] == b'2'
                && b[i + 2] | 0x20 == b'e'
            {
                i += 3;
            } else {
                return false;
            }
            dots += 1;
        }
        dots == 1 || dots == 2
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(m: Method, p: &str) -> std::result::Result<Route<'_>, &'static str> {
        classify(&m, p, false, "/v1")
            .map(|(r, _)| r)
            .map_err(|e| e.kind().1)
    }

    #[test]
    fn cached_route_is_exactly_one_segment() {
        assert_eq!(
            c(Method::GET, "/v1/organization/users/user_abc"),
            Ok(Route::GetUser {
                user_id: "user_abc"
            })
        );
        assert_eq!(
            c(Method::GET, "/v1/organization/users/user_abc/roles"),
            Ok(Route::Forward)
        );
        assert_eq!(
            c(Method::GET, "/v1/organization/users/"),
            Ok(Route::Forward)
        );
        assert_eq!(c(Method::GET, "/v1/organization/users"), Ok(Route::Forward));
        assert_eq!(
            c(Method::GET, "/v1/organization/users/a/b/c"),
            Ok(Route::Forward)
        );
    }

    #[test]
    fn query_string_is_forwarded_not_cached() {
        let r = classify(&Method::GET, "/v1/organization/users/u1", true, "/v1")
            .unwrap()
            .0;
        assert_eq!(r, Route::GetUserWithQuery);
        assert_eq!(r.class(), RouteClass::Forward);
    }

    #[test]
    fn writes_are_user_writes() {
        assert_eq!(
            c(Method::POST, "/v1/organization/users/u1"),
            Ok(Route::UserWrite { user_id: "u1" })
        );
        assert_eq!(
            c(Method::DELETE, "/v1/organization/users/u1"),
            Ok(Route::UserWrite { user_id: "u1" })
        );
        assert_eq!(
            c(Method::PUT, "/v1/organization/users/u1"),
            Ok(Route::Forward)
        );
        assert_eq!(
            c(Method::HEAD, "/v1/organization/users/u1"),
            Ok(Route::Forward)
        );
    }

    #[test]
    fn percent_encoded_ids_are_rejected() {
        assert_eq!(
            c(Method::GET, "/v1/organization/users/user%2Froles"),
            Err("invalid_user_id")
        );
        assert_eq!(
            c(Method::GET, "/v1/organization/users/user%2D1"),
            Err("invalid_user_id")
        );
        assert_eq!(
            c(Method::DELETE, "/v1/organization/users/a%20b"),
            Err("invalid_user_id")
        );
        let long = format!("/v1/organization/users/{}", "a".repeat(257));
        assert_eq!(c(Method::GET, &long), Err("invalid_user_id"));
    }

    #[test]
    fn outside_prefix_is_not_found() {
        assert_eq!(c(Method::GET, "/organization/users/u1"), Err("not_found"));
        assert_eq!(
            c(Method::GET, "/v10/organization/users/u1"),
            Err("not_found")
        );
        assert_eq!(c(Method::GET, "/"), Err("not_found"));
        assert_eq!(c(Method::GET, "/v1"), Ok(Route::Forward));
    }

    #[test]
    fn dot_segments_are_rejected() {
        for p in [
            "/v1/../admin",
            "/v1/organization/users/..",
            "/v1/a/./b",
            "/v1/%2e%2E/x",
            "/v1/.%2e/x",
            "/v1/organization/users/.",
        ] {
            assert_eq!(c(Method::GET, p), Err("invalid_path"), "{p}");
        }
        assert_eq!(
            c(Method::GET, "/v1/organization/users/a.b"),
            Ok(Route::GetUser { user_id: "a.b" })
        );
        assert_eq!(c(Method::GET, "/v1/files/..."), Ok(Route::Forward));
    }

    #[test]
    fn empty_prefix_works() {
        let r = classify(&Method::GET, "/organization/users/u1", false, "").unwrap();
        assert_eq!(
            r,
            (Route::GetUser { user_id: "u1" }, "/organization/users/u1")
        );
    }
}
